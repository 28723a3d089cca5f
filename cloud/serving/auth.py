"""Bearer tokens for devices and operators, and the gRPC interceptor that checks them.

A token is ``v1.<payload>.<mac>``: ``payload`` is base64url JSON
``{"sub": id, "role": "device"|"operator", "iat": s, "exp": s}`` and ``mac`` the
HMAC-SHA256 of ``v1.<payload>`` under a server secret. Tokens are issued by an
operator command (``dcrec cloud token``), never by the server, and compared in
constant time. The device id a call acts for comes from the token, never from
the request body: the servicer reads :func:`current_identity`.

Example::

    auth = TokenAuthority.from_file("secret.key")
    token = auth.issue("device-42", ttl_s=30 * 86400)
    auth.verify(token).subject      # "device-42"
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc

Role = Literal["device", "operator"]
ROLES: tuple[str, ...] = ("device", "operator")
MIN_SECRET_BYTES = 32  # an HMAC key shorter than its output adds no strength and invites guessing
MAX_TOKEN_CHARS = 2048  # bounds the work an attacker's header can cause
_PREFIX = "v1"


class AuthError(Exception):
    """A token was refused; ``code`` is the gRPC status to answer with."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.UNAUTHENTICATED
                 ) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Identity:
    subject: str  # the device id, or the operator's name
    role: str
    expires_at: float  # seconds since the epoch


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def write_secret(path: str | Path) -> Path:
    """Create a fresh random secret file readable by its owner only."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    return p


class TokenAuthority:
    """Issues and verifies tokens with one secret (bytes, at least 32)."""

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"auth secret must be at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self.clock = clock

    @classmethod
    def from_file(cls, path: str | Path) -> TokenAuthority:
        text = Path(path).read_text().strip()
        try:
            secret = bytes.fromhex(text)
        except ValueError:
            secret = text.encode()
        return cls(secret)

    def _mac(self, signed: str) -> str:
        return _b64(hmac.new(self._secret, signed.encode(), hashlib.sha256).digest())

    def issue(self, subject: str, ttl_s: float, role: Role = "device") -> str:
        if not subject or len(subject) > 128:
            raise ValueError("token subject must be 1..128 characters")
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        if ttl_s <= 0:
            raise ValueError("ttl must be > 0 seconds")
        now = self.clock()
        payload = _b64(json.dumps({"sub": subject, "role": role, "iat": int(now),
                                   "exp": now + ttl_s}, separators=(",", ":")).encode())
        signed = f"{_PREFIX}.{payload}"
        return f"{signed}.{self._mac(signed)}"

    def verify(self, token: str, role: Role | None = None) -> Identity:
        """The token's identity; raises AuthError (UNAUTHENTICATED, or PERMISSION_DENIED for a wrong role)."""
        if not token:
            raise AuthError("missing bearer token")
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthError("malformed token")
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != _PREFIX:
            raise AuthError("malformed token")
        signed = f"{parts[0]}.{parts[1]}"
        if not hmac.compare_digest(self._mac(signed).encode(), parts[2].encode()):
            raise AuthError("invalid token signature")
        try:
            claims: Any = json.loads(_unb64(parts[1]))
            ident = Identity(str(claims["sub"]), str(claims["role"]), float(claims["exp"]))
        except (ValueError, KeyError, TypeError, binascii.Error) as e:
            raise AuthError("malformed token") from e
        if self.clock() >= ident.expires_at:
            raise AuthError("token expired")
        if role is not None and ident.role != role:
            raise AuthError(f"a {ident.role} token cannot do this; {role} token needed",
                            grpc.StatusCode.PERMISSION_DENIED)
        return ident


def bearer(value: str | None) -> str:
    """The token in an ``authorization`` header value, or '' when there is none."""
    if not value:
        return ""
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


_IDENTITY: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "dcrec_identity", default=None)


def current_identity() -> Identity | None:
    """The authenticated caller of the call being handled on this thread, if auth is on."""
    return _IDENTITY.get()


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls to ``protected`` services without a valid token of ``role``."""

    def __init__(self, authority: TokenAuthority, protected: tuple[str, ...] = ("dcrec.v1.",),
                 role: Role = "device") -> None:
        self.authority = authority
        self.protected = protected
        self.role = role

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        method = details.method  # type: ignore[attr-defined]
        if handler is None or handler.unary_unary is None or not any(
                method.lstrip("/").startswith(p) for p in self.protected):
            return handler
        inner = handler.unary_unary

        def behavior(request: Any, context: grpc.ServicerContext) -> Any:
            meta = dict(context.invocation_metadata())
            try:
                ident = self.authority.verify(bearer(str(meta.get("authorization", ""))), self.role)
            except AuthError as e:
                context.abort(e.code, str(e))
            token = _IDENTITY.set(ident)
            try:
                return inner(request, context)
            finally:
                _IDENTITY.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            behavior, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
