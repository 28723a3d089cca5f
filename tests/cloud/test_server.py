"""The real gRPC server on a free loopback port."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dcrec.cloud.models.backends import load_generator
from dcrec.cloud.releases.registry import ModelRegistry
from dcrec.cloud.serving.server import SERVICE_NAME, create_server, shutdown
from dcrec.cloud.serving.service import CandidateService, ServiceConfig
from dcrec.shared.proto.dcrec.v1 import recommend_pb2 as pb
from dcrec.shared.proto.dcrec.v1 import recommend_pb2_grpc as pb_grpc


@pytest.fixture
def server(cloud_model_dir: Path, registry_dir: Path) -> Iterator[tuple[str, object, object]]:
    service = CandidateService(load_generator(cloud_model_dir), ServiceConfig(max_count=200))
    srv, port, health = create_server("127.0.0.1:0", service, ModelRegistry(registry_dir))
    srv.start()
    yield f"127.0.0.1:{port}", srv, health
    srv.stop(0)


def stub(address: str) -> pb_grpc.RecommenderStub:
    return pb_grpc.RecommenderStub(grpc.insecure_channel(address))


def request(items: list[int], count: int = 50) -> pb.GetCandidatesRequest:
    return pb.GetCandidatesRequest(
        device_id="d1", count=count, exclude_seen=True,
        reason=pb.REQUEST_REASON_COLD_START,
        history=[pb.Event(item_id=i, timestamp=1.0 + n) for n, i in enumerate(items)])


def test_get_candidates(server) -> None:  # type: ignore[no-untyped-def]
    address, _, _ = server
    resp = stub(address).GetCandidates(request([1, 2, 3]), timeout=5)
    assert len(resp.item_ids) == 50 and len(resp.scores) == 50
    assert not {1, 2, 3} & set(resp.item_ids)
    assert list(resp.scores) == sorted(resp.scores, reverse=True)
    assert resp.list_id and resp.model_version.startswith("cooccurrence") and resp.ttl_seconds > 0


@pytest.mark.parametrize("req,field", [
    (request([1, 99999]), "history.item_id"),
    (request([0]), "history.item_id"),
    (request([1, 2], count=0), "count"),
    (request([1, 2], count=201), "count"),
    (request([]), "history"),
    (pb.GetCandidatesRequest(count=5, history=[pb.Event(item_id=1)]), "device_id"),
])
def test_bad_requests_name_the_field_and_server_stays_up(server, req, field) -> None:  # type: ignore[no-untyped-def]
    address, _, _ = server
    s = stub(address)
    with pytest.raises(grpc.RpcError) as e:
        s.GetCandidates(req, timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith(field + ":")
    assert len(s.GetCandidates(request([5]), timeout=5).item_ids) == 50


def test_device_model_download_verifies(server, registry_dir: Path) -> None:  # type: ignore[no-untyped-def]
    address, _, _ = server
    s = stub(address)
    resp = s.GetDeviceModel(pb.GetDeviceModelRequest(device_id="d1"), timeout=10)
    assert resp.updated and resp.version == "v1"
    assert hashlib.sha256(resp.onnx).hexdigest() == resp.sha256
    assert '"max_len"' in resp.config_json
    again = s.GetDeviceModel(pb.GetDeviceModelRequest(device_id="d1", current_version="v1"),
                             timeout=10)
    assert not again.updated and not again.onnx


def test_health_and_graceful_shutdown(server) -> None:  # type: ignore[no-untyped-def]
    address, srv, health = server
    channel = grpc.insecure_channel(address)
    check = health_pb2_grpc.HealthStub(channel).Check
    ok = check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
    assert ok.status == health_pb2.HealthCheckResponse.SERVING
    s = pb_grpc.RecommenderStub(channel)
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(
        len(s.GetCandidates(request([7, 8]), timeout=10).item_ids))) for _ in range(10)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    shutdown(srv, health, grace_s=5.0)
    for t in threads:
        t.join(10)
    assert results == [50] * len(results) and len(results) >= 1
    with pytest.raises(grpc.RpcError):
        s.GetCandidates(request([1]), timeout=2)


def test_many_concurrent_clients_get_distinct_list_ids(server) -> None:  # type: ignore[no-untyped-def]
    address, _, _ = server
    s = stub(address)
    futures = [s.GetCandidates.future(request([int(i)]), timeout=10)
               for i in np.arange(1, 41)]
    ids = {f.result().list_id for f in futures}
    assert len(ids) == 40


def test_an_empty_event_log_given_to_the_server_is_the_one_it_uses(cloud_model_dir: Path) -> None:
    from dcrec.cloud.serving.events import DeviceEventLog
    from dcrec.cloud.serving.metrics import Telemetry
    from dcrec.cloud.serving.server import RecommenderServicer, build_server

    events, telemetry = DeviceEventLog(), Telemetry()
    assert not events  # empty, so falsy: `events or DeviceEventLog()` used to swap it for another
    service = CandidateService(load_generator(cloud_model_dir))
    cs = build_server("127.0.0.1:0", service, telemetry=telemetry, events=events).start()
    try:
        assert cs.servicer.events is events and cs.servicer.telemetry is telemetry
        stub(f"127.0.0.1:{cs.port}").GetCandidates(request([1, 2]), timeout=5)
        assert events.devices() == ["d1"]  # the caller's log saw the call
    finally:
        cs.server.stop(0)
    servicer = RecommenderServicer(service, None, events=events)
    assert servicer.events is events
