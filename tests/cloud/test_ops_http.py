"""The operator HTTP surface beside a real gRPC server: health, metrics, registry, auth, limits, fuzzing."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from dcrec.cloud.models.backends import load_generator
from dcrec.cloud.releases.registry import CloudModelRegistry, ModelRegistry
from dcrec.cloud.releases.signing import Signer
from dcrec.cloud.serving.auth import TokenAuthority
from dcrec.cloud.serving.http.app import OpsState
from dcrec.cloud.serving.http.runner import HttpConfig, HttpServer
from dcrec.cloud.serving.server import CloudServer, build_server
from dcrec.cloud.serving.service import CandidateService
from dcrec.device.client import CloudClient
from dcrec.device.updates import TrustedKeys, update
from dcrec.shared.contract import CandidatesRequest, Reason

SECRET = b"s" * 32


class Renamed:
    """The cloud model from the fixture, reporting the registry version it was loaded as."""

    def __init__(self, path: Path) -> None:
        self.inner = load_generator(path)
        self.name, self.n_items, self.version = self.inner.name, self.inner.n_items, path.name
        self.generate = self.inner.generate


@dataclass
class Stack:
    grpc: CloudServer
    http: HttpServer
    state: OpsState
    auth: TokenAuthority
    signer: Signer
    base: str

    def get(self, path: str, token: str | None = None) -> tuple[int, str]:
        return self.send("GET", path, token)

    def send(self, method: str, path: str, token: str | None = None, body: object = None,
             raw: bytes | None = None) -> tuple[int, str]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


@pytest.fixture
def stack(tmp_path: Path, cloud_model_dir: Path, registry_dir: Path,
          device_model_dir: Path) -> Iterator[Stack]:
    signer = Signer.generate()
    devices = ModelRegistry(tmp_path / "devices", signer)
    config = json.loads((device_model_dir / "model.json").read_text())
    devices.publish(device_model_dir / "model.onnx", config, version="d1")
    devices.publish(device_model_dir / "model.onnx", config, version="d2", make_current=False)
    clouds = CloudModelRegistry(tmp_path / "clouds")
    clouds.publish(cloud_model_dir, version="c1")
    clouds.publish(cloud_model_dir, version="c2", make_current=False)
    auth = TokenAuthority(SECRET)
    service = CandidateService(Renamed(clouds.path("c1")))
    cs = build_server("127.0.0.1:0", service, devices, authority=auth).start()
    state = OpsState(service=service, telemetry=cs.telemetry, events=cs.servicer.events,
                     device_registry=devices, cloud_registry=clouds, authority=auth,
                     ready=cs.ready, load_generator=Renamed, max_body_bytes=4096)
    http = HttpServer(state, HttpConfig("127.0.0.1:0")).start()
    yield Stack(cs, http, state, auth, signer, f"http://127.0.0.1:{http.port}")
    http.stop()
    cs.server.stop(0)
    shutil.rmtree(tmp_path / "devices", ignore_errors=True)


def ask(stack: Stack, device: str, reason: Reason) -> str:
    client = CloudClient(f"127.0.0.1:{stack.grpc.port}", deadline_s=5,
                         token=stack.auth.issue(device, 60))
    resp = client.get_candidates(CandidatesRequest("", np.array([3, 4]), np.array([1.0, 2.0]), 10,
                                                   reason))
    client.close()
    return resp.model_version


def test_health_readiness_and_metrics(stack: Stack) -> None:
    assert stack.get("/healthz") == (200, '{"status":"ok"}')
    assert stack.get("/readyz")[0] == 200
    for device, reason in [("a", Reason.COLD_START), ("b", Reason.COLD_START),
                           ("a", Reason.DISAGREEMENT)]:
        ask(stack, device, reason)
    code, text = stack.get("/metrics")
    assert code == 200
    assert 'dcrec_candidate_requests_total{reason="cold_start"} 2' in text
    assert 'dcrec_candidate_requests_total{reason="disagreement"} 1' in text
    assert 'dcrec_grpc_requests_total{code="OK",method="GetCandidates"} 3' in text
    assert 'dcrec_grpc_latency_seconds_count{method="GetCandidates"} 3' in text
    assert 'dcrec_model_info{kind="cloud",version="c1"}' in text
    assert 'dcrec_model_info{kind="device",version="d1"} 1' in text
    assert "dcrec_request_history_events_bucket" in text
    assert 'dcrec_batch_size_count 3' in text
    stack.grpc.limiter.draining.set()  # shutting down: load balancers must stop sending
    assert stack.get("/readyz") == (503, '{"status":"draining"}')


def test_admin_routes_need_an_operator_token(stack: Stack) -> None:
    assert stack.get("/api/models")[0] == 401
    assert stack.get("/api/models", "v1.not.valid")[0] == 401
    assert stack.get("/api/models", stack.auth.issue("dev", 60))[0] == 403  # a device token
    assert stack.send("POST", "/api/models/device/rollback")[0] == 401
    code, body = stack.get("/api/models", stack.auth.issue("alice", 60, "operator"))
    assert code == 200 and json.loads(body)["device"]["current"] == "d1"
    assert stack.get("/dashboard")[0] == 200  # the page shell is public; its data is not


def test_promote_and_roll_back_both_kinds(stack: Stack, tmp_path: Path) -> None:
    op = stack.auth.issue("alice", 60, "operator")
    keys = TrustedKeys({stack.signer.key_id: stack.signer.public})
    client = CloudClient(f"127.0.0.1:{stack.grpc.port}", deadline_s=10,
                         token=stack.auth.issue("dev-1", 60))
    rr = update(client, "", tmp_path / "m", None, trusted=keys)
    assert rr is not None and rr.version == "d1"

    code, body = stack.send("POST", "/api/models/device/promote", op, {"version": "d2"})
    assert code == 200 and json.loads(body) == {"kind": "device", "version": "d2", "sequence": 2}
    rr = update(client, "", tmp_path / "m", rr, trusted=keys)
    assert rr is not None and rr.version == "d2"
    code, body = stack.send("POST", "/api/models/device/rollback", op)
    assert code == 200 and json.loads(body)["version"] == "d1" and json.loads(body)["sequence"] == 3
    rr = update(client, "", tmp_path / "m", rr, trusted=keys)  # a roll-back is a newer release
    assert rr is not None and rr.version == "d1"

    assert ask(stack, "a", Reason.MANUAL) == "c1"
    assert stack.send("POST", "/api/models/cloud/promote", op, {"version": "c2"})[0] == 200
    assert ask(stack, "a", Reason.MANUAL) == "c2"  # the live server switched models
    assert stack.send("POST", "/api/models/cloud/rollback", op)[0] == 200
    assert ask(stack, "a", Reason.MANUAL) == "c1"
    assert 'dcrec_model_info{kind="cloud",version="c1"} 3' in stack.get("/metrics")[1]

    assert stack.send("POST", "/api/models/cloud/promote", op, {"version": "nope"})[0] == 404
    assert stack.send("POST", "/api/models/cloud/promote", op, {"version": "../etc"})[0] == 422
    assert stack.send("POST", "/api/models/gpu/promote", op, {"version": "c1"})[0] == 422
    models = json.loads(stack.get("/api/models", op)[1])
    assert [h["action"] for h in models["device"]["history"]] == ["promote", "promote", "rollback"]


def test_request_bodies_over_the_limit_are_refused(stack: Stack) -> None:
    op = stack.auth.issue("alice", 60, "operator")
    code, body = stack.send("POST", "/api/models/device/promote", op,
                            raw=json.dumps({"version": "d2", "pad": "x" * 10_000}).encode())
    assert code == 413 and "too large" in body
    assert stack.get("/healthz")[0] == 200


def test_schemathesis_finds_no_server_error(stack: Stack) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(f"{stack.base}/openapi.json")
    op = stack.auth.issue("alice", 3600, "operator")
    failures: list[str] = []
    seen: set[int] = set()

    def fuzz(mode: object, headers: dict[str, str]) -> None:
        @given(case=schema.as_strategy(generation_mode=mode))
        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case) -> None:  # type: ignore[no-untyped-def]
            case.headers = {**(case.headers or {}), **headers}
            resp = case.call(base_url=stack.base, timeout=10)
            seen.add(resp.status_code)
            if resp.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {resp.status_code}")
            case.validate_response(resp, checks=[not_a_server_error])

        run()

    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
        for headers in ({"Authorization": f"Bearer {op}"}, {}):
            fuzz(mode, headers)
    assert failures == []
    assert {200, 401, 404} <= seen, seen  # the fuzzer got past auth and into the handlers
    assert seen & {400, 422}, seen  # and sent bodies the handlers refused
    assert stack.get("/healthz")[0] == 200


def test_a_torn_release_file_answers_503_naming_it(stack: Stack) -> None:
    op = stack.auth.issue("alice", 60, "operator")
    root = stack.state.device_registry.root  # type: ignore[union-attr]
    (root / "RELEASE.json").write_text('{"version": "d1", "sequ')  # a torn write
    code, body = stack.get("/api/models", op)
    assert code == 503, body
    detail = json.loads(body)["detail"]
    assert detail.startswith("model registry unavailable: ") and "RELEASE.json: not valid JSON" in detail
    code, body = stack.get("/api/fleet", op)  # the fleet's numbers need no registry
    fleet = json.loads(body)
    assert code == 200 and fleet["models"] == {"cloud": "c1", "device": None}
    assert "RELEASE.json" in fleet["problems"]["device"] and "series" in fleet
    assert stack.send("POST", "/api/models/device/rollback", op)[0] == 503
    (root / "RELEASE.json").write_text('["d1"]')
    assert "not a JSON object" in json.loads(stack.get("/api/models", op)[1])["detail"]
    # Promoting writes a new release over the torn one: the registry answers again.
    code, body = stack.send("POST", "/api/models/device/promote", op, {"version": "d1"})
    assert code == 200 and json.loads(body)["sequence"] == 2, body
    assert stack.get("/api/models", op)[0] == 200
    assert json.loads(stack.get("/api/fleet", op)[1])["problems"] == {}


def test_a_server_holding_only_the_public_key_refuses_to_release(stack: Stack) -> None:
    op = stack.auth.issue("alice", 60, "operator")
    stack.state.device_registry = ModelRegistry(stack.state.device_registry.root,  # type: ignore[union-attr]
                                                trusted=stack.signer.trusted())
    code, body = stack.send("POST", "/api/models/device/promote", op, {"version": "d2"})
    assert code == 409 and "no signing key" in json.loads(body)["detail"]
    assert json.loads(stack.get("/api/models", op)[1])["device"]["current"] == "d1"
