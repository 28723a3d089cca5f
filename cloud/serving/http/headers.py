"""ASGI middleware that puts the same security headers on every operator HTTP response.

Every page this surface serves (the fleet page, the API docs) loads its
scripts, styles and data from this origin only, with no inline script or
style, so the Content-Security-Policy needs no ``'unsafe-inline'``: an
injected ``<script>`` or a script from elsewhere does not run. No page may be
framed (clickjacking on the roll-back buttons), content types are never
sniffed, and no URL (the fleet page's token fragment aside, which browsers
never send) leaks to another site in a ``Referer``.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",  # Swagger UI draws its icons from data: URLs in its stylesheet
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_RAW = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
_NAMES = {k for k, _ in _RAW}


class SecurityHeaders:
    """Sets :data:`SECURITY_HEADERS` on every HTTP response, replacing any a route set."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _NAMES]
                message = {**message, "headers": kept + _RAW}
            await send(message)

        await self.app(scope, receive, with_headers)
