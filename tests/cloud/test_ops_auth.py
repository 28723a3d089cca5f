"""Tokens, the auth interceptor, TLS and mutual TLS, on a real server on loopback."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dcrec.cloud.cli import parse_duration
from dcrec.cloud.models.backends import load_generator
from dcrec.cloud.releases.registry import ModelRegistry
from dcrec.cloud.serving.auth import AuthError, TokenAuthority
from dcrec.cloud.serving.server import CloudServer, ServerConfig, TlsConfig, build_server
from dcrec.cloud.serving.service import CandidateService
from dcrec.device.client import ClientTls, CloudClient, CloudUnauthorized, CloudUnavailable
from dcrec.shared.contract import CandidatesRequest
from dcrec.shared.proto.dcrec.v1 import recommend_pb2 as pb
from dcrec.shared.proto.dcrec.v1 import recommend_pb2_grpc as pb_grpc

SECRET = b"k" * 32


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- tokens ------------------------------------------------------------------------------------
def test_tokens_verify_expire_and_resist_tampering() -> None:
    clock = Clock()
    auth = TokenAuthority(SECRET, clock)
    tok = auth.issue("dev-a", ttl_s=60)
    assert auth.verify(tok, "device").subject == "dev-a"
    head, payload, mac = tok.split(".")
    other = TokenAuthority(b"x" * 32, clock).issue("dev-a", 60)
    forged_payload = TokenAuthority(SECRET, clock).issue("dev-b", 60).split(".")[1]
    for bad in ["", "garbage", f"{head}.{payload}.{mac[:-2]}AA", other,
                f"{head}.{forged_payload}.{mac}", f"v2.{payload}.{mac}", "a.b.c.d", "x" * 5000]:
        with pytest.raises(AuthError) as e:
            auth.verify(bad)
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(AuthError) as e:
        auth.verify(tok, "operator")
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    clock.now += 61
    with pytest.raises(AuthError, match="expired"):
        auth.verify(tok)
    with pytest.raises(ValueError):
        TokenAuthority(b"short")
    assert parse_duration("30d") == 30 * 86400 and parse_duration("90") == 90.0


# --- the auth matrix over gRPC -------------------------------------------------------------------
@pytest.fixture
def secured(cloud_model_dir: Path, registry_dir: Path) -> Iterator[tuple[CloudServer, TokenAuthority, Clock]]:
    clock = Clock()
    auth = TokenAuthority(SECRET, clock)
    cs = build_server("127.0.0.1:0", CandidateService(load_generator(cloud_model_dir)),
                      ModelRegistry(registry_dir), ServerConfig(insecure=True), authority=auth)
    cs.start()
    yield cs, auth, clock
    cs.server.stop(0)


def call(cs: CloudServer, token: str | None, device_id: str = "", method: str = "GetCandidates"
         ) -> object:
    stub = pb_grpc.RecommenderStub(grpc.insecure_channel(f"127.0.0.1:{cs.port}"))
    md = [("authorization", f"Bearer {token}")] if token is not None else None
    if method == "GetCandidates":
        req = pb.GetCandidatesRequest(device_id=device_id, count=10, history=[
            pb.Event(item_id=i, timestamp=float(i)) for i in (3, 4, 5)])
        return stub.GetCandidates(req, timeout=5, metadata=md)
    if method == "ReportTelemetry":
        rec = pb.TelemetryRecord(sequence=1, kind="request", payload_json='{"reason": "expired", "ok": true}',
                                 created_at=1.0)
        return stub.ReportTelemetry(pb.ReportTelemetryRequest(device_id=device_id, stream="s",
                                                              records=[rec]), timeout=5, metadata=md)
    return stub.GetDeviceModel(pb.GetDeviceModelRequest(device_id=device_id), timeout=10, metadata=md)


def test_auth_matrix(secured) -> None:  # type: ignore[no-untyped-def]
    cs, auth, clock = secured
    good = auth.issue("dev-a", 3600)
    expired = auth.issue("dev-a", 10)
    clock.now += 11
    head, payload, mac = good.split(".")
    tampered = f"{head}.{TokenAuthority(b'z' * 32, clock).issue('dev-a', 3600).split('.')[1]}.{mac}"
    operator = auth.issue("alice", 3600, role="operator")
    cases = [
        (None, "dev-a", "GetCandidates", grpc.StatusCode.UNAUTHENTICATED),
        ("", "dev-a", "GetCandidates", grpc.StatusCode.UNAUTHENTICATED),
        (expired, "dev-a", "GetCandidates", grpc.StatusCode.UNAUTHENTICATED),
        (tampered, "dev-a", "GetCandidates", grpc.StatusCode.UNAUTHENTICATED),
        (good, "dev-b", "GetCandidates", grpc.StatusCode.PERMISSION_DENIED),
        (good, "dev-b", "GetDeviceModel", grpc.StatusCode.PERMISSION_DENIED),
        (None, "dev-a", "GetDeviceModel", grpc.StatusCode.UNAUTHENTICATED),
        (operator, "alice", "GetCandidates", grpc.StatusCode.PERMISSION_DENIED),
        (None, "dev-a", "ReportTelemetry", grpc.StatusCode.UNAUTHENTICATED),
        (good, "dev-b", "ReportTelemetry", grpc.StatusCode.PERMISSION_DENIED),
    ]
    for token, device, method, code in cases:
        with pytest.raises(grpc.RpcError) as e:
            call(cs, token, device, method)
        assert e.value.code() == code, (token, device, method)
    assert cs.servicer.events.devices() == []  # nothing refused was stored
    # Accepted: with the body naming the same device, or naming none; stored under the token's id.
    assert len(call(cs, good, "dev-a").item_ids) == 10  # type: ignore[attr-defined]
    assert len(call(cs, good, "").item_ids) == 10  # type: ignore[attr-defined]
    assert call(cs, good, "", "GetDeviceModel").updated  # type: ignore[attr-defined]
    assert cs.servicer.events.devices() == ["dev-a"]
    assert [i for i, _ in cs.servicer.events.history("dev-a")] == [3, 4, 5]
    assert cs.servicer.sink.accepted == 0  # no refused upload was taken
    assert list(call(cs, good, "", "ReportTelemetry").acked) == [1]  # type: ignore[attr-defined]
    assert cs.servicer.sink.accepted == 1
    metrics = cs.telemetry.render()
    assert 'code="UNAUTHENTICATED"' in metrics and 'code="PERMISSION_DENIED"' in metrics


def test_device_client_sends_its_token(secured) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    cs, auth, _ = secured
    req = CandidatesRequest("", np.array([3, 4]), np.array([1.0, 2.0]), 10)
    ok = CloudClient(f"127.0.0.1:{cs.port}", deadline_s=5, token=auth.issue("dev-c", 60))
    assert ok.get_candidates(req).items.size == 10
    assert cs.servicer.events.devices() == ["dev-c"]
    with pytest.raises(CloudUnauthorized):
        CloudClient(f"127.0.0.1:{cs.port}", deadline_s=5).get_candidates(req)


# --- TLS and mutual TLS ----------------------------------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue_cert(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], cn: str, out: Path,
               server: bool) -> tuple[str, str]:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1)))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    cert_path, key_path = out / f"{cn}.crt", out / f"{cn}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("pki")
    ca, rogue = make_ca("dcrec test CA"), make_ca("rogue CA")
    (out / "ca.pem").write_bytes(ca[1].public_bytes(serialization.Encoding.PEM))
    return {"ca": str(out / "ca.pem"), "server": issue_cert(ca, "localhost", out, True),
            "client": issue_cert(ca, "device-1", out, False),
            "rogue": issue_cert(rogue, "intruder", out, False)}


def _tls_server(cloud_model_dir: Path, pki: dict[str, object], mutual: bool) -> CloudServer:
    cert, key = pki["server"]  # type: ignore[misc]
    tls = TlsConfig(cert, key, pki["ca"] if mutual else None)  # type: ignore[arg-type]
    return build_server("127.0.0.1:0", CandidateService(load_generator(cloud_model_dir)),
                        config=ServerConfig(tls=tls)).start()


def _ask(port: int, tls: ClientTls) -> int:
    import numpy as np

    client = CloudClient(f"localhost:{port}", deadline_s=3, tls=tls)
    try:
        req = CandidatesRequest("d1", np.array([3]), np.array([1.0]), 5)
        return int(client.get_candidates(req).items.size)
    finally:
        client.close()


def test_tls_server_needs_tls_clients(cloud_model_dir: Path, pki) -> None:  # type: ignore[no-untyped-def]
    cs = _tls_server(cloud_model_dir, pki, mutual=False)
    try:
        assert _ask(cs.port, ClientTls(ca_file=pki["ca"])) == 5
        plain = CloudClient(f"localhost:{cs.port}", deadline_s=2)
        with pytest.raises(CloudUnavailable):
            plain.get_candidates(CandidatesRequest("d1", __import__("numpy").array([3]),
                                                   __import__("numpy").array([1.0]), 5))
    finally:
        cs.server.stop(0)
    with pytest.raises(ValueError, match="insecure"):
        ServerConfig().validate()  # no certificate and no explicit plaintext: refused


def test_mutual_tls_refuses_clients_without_a_cert_from_our_ca(cloud_model_dir: Path, pki) -> None:  # type: ignore[no-untyped-def]
    cs = _tls_server(cloud_model_dir, pki, mutual=True)
    try:
        cert, key = pki["client"]
        assert _ask(cs.port, ClientTls(ca_file=pki["ca"], cert_file=cert, key_file=key)) == 5
        with pytest.raises(CloudUnavailable):
            _ask(cs.port, ClientTls(ca_file=pki["ca"]))  # no client certificate
        rcert, rkey = pki["rogue"]
        with pytest.raises(CloudUnavailable):
            _ask(cs.port, ClientTls(ca_file=pki["ca"], cert_file=rcert, key_file=rkey))
    finally:
        cs.server.stop(0)
