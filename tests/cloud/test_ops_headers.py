"""Security headers on every operator HTTP response, and API docs that load nothing from elsewhere."""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dcrec.cloud.models.backends import load_generator
from dcrec.cloud.releases.registry import ModelRegistry
from dcrec.cloud.serving.auth import TokenAuthority
from dcrec.cloud.serving.events import DeviceEventLog
from dcrec.cloud.serving.http.app import STATIC, OpsState
from dcrec.cloud.serving.http.headers import SECURITY_HEADERS
from dcrec.cloud.serving.http.runner import HttpConfig, HttpServer
from dcrec.cloud.serving.metrics import Telemetry
from dcrec.cloud.serving.service import CandidateService

EXPECTED = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


class Crash:
    """A readiness probe that raises: the one way to make a route fail unexpectedly."""

    armed = False

    def __call__(self) -> bool:
        if self.armed:
            raise RuntimeError("boom")
        return True


@pytest.fixture
def http(tmp_path: Path, cloud_model_dir: Path, registry_dir: Path) -> Iterator[tuple[str, OpsState, Crash]]:
    crash = Crash()
    registry = tmp_path / "registry"
    shutil.copytree(registry_dir, registry)  # this test tears its release file
    state = OpsState(service=CandidateService(load_generator(cloud_model_dir)), telemetry=Telemetry(),
                     events=DeviceEventLog(), device_registry=ModelRegistry(registry),
                     authority=TokenAuthority(b"h" * 32), ready=crash, max_body_bytes=1024)
    server = HttpServer(state, HttpConfig("127.0.0.1:0")).start()
    yield f"http://127.0.0.1:{server.port}", state, crash
    server.stop()


def call(base: str, path: str, method: str = "GET", data: bytes | None = None,
         token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def test_every_response_carries_the_security_headers(http) -> None:  # type: ignore[no-untyped-def]
    base, state, crash = http
    op = state.authority.issue("alice", 60, "operator")
    seen = {}
    for path, method, data, token in [
        ("/healthz", "GET", None, None), ("/dashboard", "GET", None, None),
        ("/static/dashboard.js", "GET", None, None), ("/docs", "GET", None, None),
        ("/static/swagger-ui-bundle.js", "GET", None, None), ("/openapi.json", "GET", None, None),
        ("/metrics", "GET", None, None), ("/api/models", "GET", None, op),
        ("/api/models", "GET", None, None),  # 401
        ("/static/../../etc/passwd", "GET", None, None),  # 404
        ("/api/models/gpu/promote", "POST", b'{"version": "v1"}', op),  # 422
        ("/api/models/device/promote", "POST", b"x" * 5000, op),  # 413, from the body limit
    ]:
        code, headers, _ = call(base, path, method, data, token)
        seen[path, code] = {k: headers.get(k) for k in EXPECTED}
    state.device_registry.root.joinpath("RELEASE.json").write_text("{")  # type: ignore[union-attr]
    code, headers, body = call(base, "/api/models", token=op)
    assert code == 503 and b"RELEASE.json" in body
    seen["torn", code] = {k: headers.get(k) for k in EXPECTED}
    crash.armed = True
    code, headers, body = call(base, "/readyz")
    assert code == 500 and b"internal error" in body and b"boom" not in body
    seen["crash", code] = {k: headers.get(k) for k in EXPECTED}
    assert {code for _, code in seen} == {200, 401, 404, 413, 422, 500, 503}
    for key, headers in seen.items():
        assert headers == EXPECTED, key
    assert {k.lower(): v for k, v in SECURITY_HEADERS.items()} == EXPECTED
    assert "unsafe" not in EXPECTED["content-security-policy"]


@pytest.mark.parametrize("page", ["dashboard.html", "docs.html"])
def test_pages_need_no_inline_script_or_style(page: str) -> None:
    html = (STATIC / page).read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)  # every script is a file
    assert "<style" not in html and not re.search(r"\sstyle=", html)
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers


def test_docs_load_only_files_served_here(http) -> None:  # type: ignore[no-untyped-def]
    base, _, _ = http
    code, headers, body = call(base, "/docs")
    html = body.decode()
    assert code == 200 and headers["content-type"].startswith("text/html")
    assert not re.search(r"(?:https?:)?//", html.replace("<!doctype", "")), html  # no URL elsewhere
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert {"/static/swagger-ui-bundle.js", "/static/swagger-ui.css", "/static/docs.js"} <= set(assets)
    kinds = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
    for asset in assets:
        assert asset.startswith("/static/"), asset
        code, headers, data = call(base, asset)
        assert code == 200 and len(data) > 100, asset
        assert headers["content-type"].startswith(kinds[Path(asset).suffix]), (asset, headers)
    init = call(base, "/static/docs.js")[2].decode()
    assert '"/openapi.json"' in init and "validatorUrl: null" in init and "http" not in init
    spec = json.loads(call(base, "/openapi.json")[2])
    assert "/api/models" in spec["paths"]
    assert call(base, "/redoc")[0] == 404  # ReDoc is not offered: it needs inline styles
    assert call(base, "/static/swagger-ui.css.map")[0] == 404  # only the listed files
