"""Mutual TLS on the HTTP operator port: the same CA as gRPC, no plaintext side door.

Certificates come from the recipe in docs/OPERATIONS.md, run with openssl as an
operator would (the device certificate of step 3 doubles as an operator's
client certificate: it has the clientAuth usage).
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dcrec.cloud.models.backends import load_generator
from dcrec.cloud.serving.auth import TokenAuthority, write_secret
from dcrec.cloud.serving.events import DeviceEventLog
from dcrec.cloud.serving.http.app import OpsState
from dcrec.cloud.serving.http.runner import HttpConfig, HttpServer
from dcrec.cloud.serving.metrics import Telemetry
from dcrec.cloud.serving.service import CandidateService
from dcrec.device.client import ClientTls, CloudClient
from dcrec.shared.contract import CandidatesRequest

DEVICE = "phone-123"  # the recipe's default DEVICE
# What a client sees when the server refuses its certificate (or sends none): TLS 1.3 reports
# the alert on the first read, so it may surface as a reset or an EOF rather than SSLError.
REFUSED = (urllib.error.URLError, ssl.SSLError, ConnectionError)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="the documented TLS recipe needs the openssl command")




def context(ca_dir: Path, cert_dir: Path | None = None) -> ssl.SSLContext:
    """A client context trusting ``ca_dir``'s CA, presenting ``cert_dir``'s device certificate."""
    ctx = ssl.create_default_context(cafile=str(ca_dir / "ca.pem"))
    if cert_dir is not None:
        ctx.load_cert_chain(str(cert_dir / f"{DEVICE}.crt"), str(cert_dir / f"{DEVICE}.key"))
    return ctx


def get(url: str, ctx: ssl.SSLContext) -> tuple[int, str]:
    with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
        return resp.status, resp.read().decode()


@pytest.fixture(scope="module")
def http(cloud_model_dir: Path, pki: tuple[Path, Path]) -> Iterator[HttpServer]:
    ours, _ = pki
    state = OpsState(service=CandidateService(load_generator(cloud_model_dir)),
                     telemetry=Telemetry(), events=DeviceEventLog())
    server = HttpServer(state, HttpConfig("127.0.0.1:0", str(ours / "server.crt"),
                                          str(ours / "server.key"), str(ours / "ca.pem"))).start()
    yield server
    server.stop()


def test_a_client_certificate_from_the_ca_gets_health_and_metrics(http: HttpServer,
                                                                  pki: tuple[Path, Path]) -> None:
    ours, _ = pki
    for host in ("127.0.0.1", "localhost"):
        assert get(f"https://{host}:{http.port}/healthz", context(ours, ours))[0] == 200
    status, page = get(f"https://127.0.0.1:{http.port}/metrics", context(ours, ours))
    assert status == 200 and "dcrec_grpc_requests_total" in page


def test_no_client_certificate_fails_the_handshake(http: HttpServer, pki: tuple[Path, Path]) -> None:
    ours, _ = pki
    for path in ("/healthz", "/metrics", "/dashboard", "/api/models"):
        with pytest.raises(REFUSED):
            get(f"https://127.0.0.1:{http.port}{path}", context(ours))


def test_another_cas_client_certificate_is_refused(http: HttpServer, pki: tuple[Path, Path]) -> None:
    ours, other = pki
    with pytest.raises(REFUSED):
        get(f"https://127.0.0.1:{http.port}/healthz", context(ours, other))


def test_plaintext_http_gets_no_answer(http: HttpServer) -> None:
    with pytest.raises(REFUSED):
        urllib.request.urlopen(f"http://127.0.0.1:{http.port}/healthz", timeout=10)


def test_a_client_ca_needs_the_servers_certificate(pki: tuple[Path, Path]) -> None:
    ours, _ = pki
    with pytest.raises(ValueError, match="needs its certificate"):
        HttpConfig("127.0.0.1:0", client_ca_file=str(ours / "ca.pem")).validate()


def wait_for(path: Path, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> int:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, f"server exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{path} not written within {timeout_s}s"
        time.sleep(0.05)
    return int(path.read_text())


def test_serve_puts_mutual_tls_on_both_ports(tmp_path: Path, cloud_model_dir: Path,
                                             pki: tuple[Path, Path]) -> None:
    """``dcrec cloud serve`` as OPERATIONS.md starts it: one --tls-client-ca for gRPC and HTTP."""
    ours, _ = pki
    secret = write_secret(tmp_path / "auth.secret")
    cmd = [sys.executable, "-m", "dcrec.shared.cli", "cloud", "serve",
           "--model-dir", str(cloud_model_dir), "--address", "127.0.0.1:0",
           "--ready-file", str(tmp_path / "port"), "--http-address", "127.0.0.1:0",
           "--http-ready-file", str(tmp_path / "http-port"),
           "--tls-cert", str(ours / "server.crt"), "--tls-key", str(ours / "server.key"),
           "--tls-client-ca", str(ours / "ca.pem"), "--auth-secret", str(secret)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        port = wait_for(tmp_path / "port", proc)
        http_port = wait_for(tmp_path / "http-port", proc)
        assert get(f"https://localhost:{http_port}/readyz", context(ours, ours))[0] == 200
        with pytest.raises(REFUSED):
            get(f"https://localhost:{http_port}/readyz", context(ours))
        token = TokenAuthority.from_file(secret).issue("d1", 60)
        client = CloudClient(f"localhost:{port}", deadline_s=5, token=token, tls=ClientTls(
            str(ours / "ca.pem"), str(ours / f"{DEVICE}.crt"), str(ours / f"{DEVICE}.key")))
        try:
            resp = client.get_candidates(CandidatesRequest("d1", np.array([3]), np.array([1.0]), 5))
            assert resp.items.size == 5
        finally:
            client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
