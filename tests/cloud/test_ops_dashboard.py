"""The fleet page and the API docs in headless Chromium, offline and under the server's CSP."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dcrec.cloud.models.backends import load_generator
from dcrec.cloud.releases.registry import ModelRegistry
from dcrec.cloud.serving.auth import TokenAuthority
from dcrec.cloud.serving.events import DeviceEventLog
from dcrec.cloud.serving.http.app import OpsState
from dcrec.cloud.serving.http.runner import HttpConfig, HttpServer
from dcrec.cloud.serving.metrics import Telemetry
from dcrec.cloud.serving.server import build_server
from dcrec.cloud.serving.service import CandidateService
from dcrec.device.client import CloudClient
from dcrec.shared.contract import CandidatesRequest, Reason

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium(tmp_path: Path, url: str, *args: str) -> str:
    return chromium_console(tmp_path, url, *args)[0]


def chromium_console(tmp_path: Path, url: str, *args: str) -> tuple[str, list[str]]:
    """What chromium printed, and the page's console messages (CSP violations show there)."""
    assert CHROMIUM is not None
    out = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          "--enable-logging=stderr", "--v=0",
                          # offline: any host but this one fails to resolve
                          "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                          "--virtual-time-budget=8000", *args, url],
                         capture_output=True, text=True, timeout=90)
    return out.stdout, [line for line in out.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_fleet_page_shows_live_traffic(tmp_path: Path, cloud_model_dir: Path,
                                       registry_dir: Path) -> None:
    auth = TokenAuthority(b"d" * 32)
    service = CandidateService(load_generator(cloud_model_dir))
    cs = build_server("127.0.0.1:0", service, ModelRegistry(registry_dir), authority=auth).start()
    state = OpsState(service=service, telemetry=cs.telemetry, events=cs.servicer.events,
                     device_registry=ModelRegistry(registry_dir), authority=auth, ready=cs.ready)
    http = HttpServer(state, HttpConfig("127.0.0.1:0")).start()
    try:
        sent = [Reason.COLD_START] * 4 + [Reason.DISAGREEMENT] * 2 + [Reason.EXPIRED]
        for n, reason in enumerate(sent):
            client = CloudClient(f"127.0.0.1:{cs.port}", deadline_s=5,
                                 token=auth.issue(f"dev-{n % 3}", 60))
            client.get_candidates(CandidatesRequest("", np.array([3, 4]), np.array([1.0, 2.0]),
                                                    10, reason))
            client.close()
        phone = CloudClient(f"127.0.0.1:{cs.port}", deadline_s=5, token=auth.issue("dev-0", 60))
        records = [(i, "request", json.dumps({"reason": "expired", "ok": i != 2, "latency_ms": 9.0}), 1.0)
                   for i in (1, 2, 3, 4)]  # one failed the server never saw, e.g. a timeout
        assert phone.report_telemetry("", "s1", records)[0] == [1, 2, 3, 4]
        phone.close()
        operator = auth.issue("alice", 600, "operator")
        base = f"http://127.0.0.1:{http.port}/dashboard"
        dom, console = chromium_console(tmp_path, f"{base}#token={operator}", "--dump-dom")
        assert 'data-loaded="1"' in dom, dom[:2000]  # the page's own script ran to the end
        assert not [m for m in console if "Content Security Policy" in m], console  # runs under the CSP
        assert re.search(r'id="total-requests"[^>]*>8<', dom)  # 7 GetCandidates + 1 upload: RPCs
        assert re.search(r'id="devices"[^>]*>3<', dom)
        assert re.search(r'id="error-rate"[^>]*>0.0 %<', dom)
        assert re.search(r'id="device-failed"[^>]*>25.0 %<', dom)
        assert re.search(r'id="device-reports"[^>]*>of 4 reported<', dom)
        counts = dict(re.findall(r'data-reason="(\w+)" data-count="(\d+)"', dom))
        assert counts == {"cold_start": "4", "disagreement": "2", "expired": "1"}
        assert re.search(r'<polyline points="[\d., ]+" class="line rate"', dom)
        assert dom.count('class="line p') == 2  # p50 and p95 latency lines
        assert service.generator.version in dom and re.search(r'<td>v1</td>', dom)
        assets = re.findall(r'(?:src|href)="([^"]+)"', dom)
        assert assets and all(a.startswith("/static/") for a in assets)  # nothing from a CDN
        no_token = chromium(tmp_path, base, "--dump-dom")
        assert re.search(r'id="auth-note"[^>]*>', no_token)
        assert 'id="auth-note" class="note" hidden' not in no_token  # the token hint is shown
        shot = tmp_path / "fleet.png"
        chromium(tmp_path, f"{base}#token={operator}", f"--screenshot={shot}",
                 "--window-size=1200,900")
        assert shot.is_file() and shot.stat().st_size > 10_000
    finally:
        http.stop()
        cs.server.stop(0)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_api_docs_render_offline_under_the_csp(tmp_path: Path, cloud_model_dir: Path,
                                               registry_dir: Path) -> None:
    service = CandidateService(load_generator(cloud_model_dir))
    state = OpsState(service=service, telemetry=Telemetry(), events=DeviceEventLog(),
                     device_registry=ModelRegistry(registry_dir))
    http = HttpServer(state, HttpConfig("127.0.0.1:0")).start()
    try:
        dom, console = chromium_console(tmp_path, f"http://127.0.0.1:{http.port}/docs", "--dump-dom")
    finally:
        http.stop()
    assert 'data-loaded="1"' in dom, dom[:2000]  # Swagger UI fetched /openapi.json and rendered
    paths = set(re.findall(r'data-path="([^"]+)"', dom))
    assert {"/healthz", "/api/models", "/api/models/{kind}/promote"} <= paths, paths
    assert not [m for m in console if "Content Security Policy" in m or "Failed to load" in m], console
