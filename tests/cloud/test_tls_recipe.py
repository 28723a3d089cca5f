"""The certificate recipe in docs/OPERATIONS.md, run verbatim, gives a working mutual-TLS server.

The ``sh`` block after ``<!-- tls-recipe -->`` is extracted and run with bash in
a temporary directory (twice: ours, and an unrelated PKI to be refused).
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from dcrec.cloud.models.backends import load_generator
from dcrec.cloud.serving.events import DeviceEventLog
from dcrec.cloud.serving.http.app import OpsState
from dcrec.cloud.serving.http.runner import HttpConfig, HttpServer
from dcrec.cloud.serving.metrics import Telemetry
from dcrec.cloud.serving.server import CloudServer, ServerConfig, TlsConfig, build_server
from dcrec.cloud.serving.service import CandidateService
from dcrec.device.client import ClientTls, CloudClient, CloudUnavailable
from dcrec.shared.contract import CandidatesRequest

DEVICE = "phone-123"  # the recipe's default DEVICE

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="the documented TLS recipe needs the openssl command")





@pytest.fixture(scope="module")
def server(cloud_model_dir: Path, pki: tuple[Path, Path]) -> Iterator[CloudServer]:
    ours, _ = pki
    tls = TlsConfig(str(ours / "server.crt"), str(ours / "server.key"), str(ours / "ca.pem"))
    cs = build_server("127.0.0.1:0", CandidateService(load_generator(cloud_model_dir)),
                      config=ServerConfig(tls=tls)).start()
    yield cs
    cs.server.stop(0)


def ask(address: str, tls: ClientTls) -> int:
    """How many candidates one GetCandidates call returns (5 asked for)."""
    client = CloudClient(address, deadline_s=3, tls=tls)
    try:
        return int(client.get_candidates(CandidatesRequest("d1", np.array([3]), np.array([1.0]), 5))
                   .items.size)
    finally:
        client.close()


def device_tls(pki_dir: Path, ca_dir: Path | None = None) -> ClientTls:
    return ClientTls(ca_file=str((ca_dir or pki_dir) / "ca.pem"),
                     cert_file=str(pki_dir / f"{DEVICE}.crt"), key_file=str(pki_dir / f"{DEVICE}.key"))


def test_recipe_makes_modern_certificates_and_private_keys(pki: tuple[Path, Path]) -> None:
    ours, _ = pki
    server_cert = x509.load_pem_x509_certificate((ours / "server.crt").read_bytes())
    san = server_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = server_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    device_cert = x509.load_pem_x509_certificate((ours / f"{DEVICE}.crt").read_bytes())
    eku = device_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    for cert in (server_cert, device_cert):
        assert cert.signature_hash_algorithm is not None
        assert cert.signature_hash_algorithm.name == "sha256"
    for key in ("ca.key", "server.key", f"{DEVICE}.key"):
        assert (ours / key).stat().st_mode & 0o077 == 0, f"{key} is readable by others"


def test_device_with_the_recipes_certificate_gets_candidates(server: CloudServer,
                                                             pki: tuple[Path, Path]) -> None:
    ours, _ = pki
    for host in ("127.0.0.1", "localhost"):  # both names are in the recipe's SAN
        assert ask(f"{host}:{server.port}", device_tls(ours)) == 5


def test_device_without_a_client_certificate_is_refused(server: CloudServer,
                                                        pki: tuple[Path, Path]) -> None:
    ours, _ = pki
    with pytest.raises(CloudUnavailable):
        ask(f"127.0.0.1:{server.port}", ClientTls(ca_file=str(ours / "ca.pem")))


def test_another_cas_certificates_are_refused_both_ways(server: CloudServer,
                                                        pki: tuple[Path, Path]) -> None:
    ours, other = pki
    with pytest.raises(CloudUnavailable):  # the client trusts another CA: refuses our server
        ask(f"127.0.0.1:{server.port}", device_tls(other))
    with pytest.raises(CloudUnavailable):  # the client's certificate is from another CA
        ask(f"127.0.0.1:{server.port}", device_tls(other, ca_dir=ours))


def test_http_port_without_a_client_ca_asks_no_client_certificate(cloud_model_dir: Path,
                                                                   pki: tuple[Path, Path]) -> None:
    """Without a client CA the HTTP port serves TLS alone (test_http_mtls.py: the mutual case)."""
    ours, other = pki
    state = OpsState(service=CandidateService(load_generator(cloud_model_dir)),
                     telemetry=Telemetry(), events=DeviceEventLog())
    http = HttpServer(state, HttpConfig("127.0.0.1:0", str(ours / "server.crt"),
                                        str(ours / "server.key"))).start()
    try:
        ctx = ssl.create_default_context(cafile=str(ours / "ca.pem"))  # no client certificate
        with urllib.request.urlopen(f"https://127.0.0.1:{http.port}/healthz", context=ctx,
                                    timeout=10) as resp:
            assert resp.status == 200
        with pytest.raises(urllib.error.URLError):  # but it is TLS: a stranger's CA fails
            urllib.request.urlopen(f"https://127.0.0.1:{http.port}/healthz", timeout=10,
                                   context=ssl.create_default_context(cafile=str(other / "ca.pem")))
    finally:
        http.stop()


@pytest.mark.parametrize("key, cert, expected", [
    ("other/server.key", "ours/server.crt", "does not belong to the certificate"),
    ("ours/server.key", "ours/ca.pem", "does not belong to the certificate"),
    ("ours/server.crt", "ours/server.crt", "cannot load the certificate"),
])
def test_a_key_that_does_not_match_its_certificate_is_one_line(cloud_model_dir: Path,
                                                                pki: tuple[Path, Path], tmp_path: Path,
                                                                key: str, cert: str, expected: str) -> None:
    import sys

    roots = {"ours": pki[0], "other": pki[1]}

    def path(rel: str) -> str:
        folder, name = rel.split("/")
        return str(roots[folder] / name)

    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 32)
    out = subprocess.run([sys.executable, "-m", "dcrec.shared.cli", "cloud", "serve", "--model-dir",
                          str(cloud_model_dir), "--address", "127.0.0.1:0", "--tls-cert", path(cert),
                          "--tls-key", path(key), "--auth-secret", str(secret)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr
    assert lines[-1].startswith("dcrec: error: TLS: ") and expected in lines[-1], lines[-1]
    assert path(key) in lines[-1]
