"""Bad input, crashing handlers and overload against a real server on loopback."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dcrec.cloud.models.backends import load_generator
from dcrec.cloud.models.generator import CandidateGenerator, CandidateList
from dcrec.cloud.serving.server import SERVICE_NAME, CloudServer, ServerConfig, build_server
from dcrec.cloud.serving.service import CandidateService, ServiceConfig
from dcrec.shared.proto.dcrec.v1 import recommend_pb2 as pb
from dcrec.shared.proto.dcrec.v1 import recommend_pb2_grpc as pb_grpc

SECRET = "postgres://admin:hunter2@db.internal"


class Wrapped:
    """A real generator with a hook before each call (sleep, raise)."""

    def __init__(self, inner: CandidateGenerator, before: object = None) -> None:
        self.inner = inner
        self.name, self.version, self.n_items = inner.name, inner.version, inner.n_items
        self.before = before

    def generate(self, histories: Sequence[np.ndarray], count: int,
                 exclude_seen: bool = True) -> list[CandidateList]:
        if callable(self.before):
            self.before()
        return self.inner.generate(histories, count, exclude_seen)


def _boom() -> None:
    raise RuntimeError(f"cannot reach {SECRET}")


@pytest.fixture
def make_server(cloud_model_dir: Path) -> Iterator[object]:
    servers: list[CloudServer] = []

    def make(before: object = None, **cfg: object) -> tuple[CloudServer, grpc.Channel]:
        gen = Wrapped(load_generator(cloud_model_dir), before)
        cs = build_server("127.0.0.1:0", CandidateService(gen, ServiceConfig(max_count=200)),
                          config=ServerConfig(insecure=True, **cfg))  # type: ignore[arg-type]
        servers.append(cs.start())
        return cs, grpc.insecure_channel(f"127.0.0.1:{cs.port}")

    yield make
    for cs in servers:
        cs.server.stop(0)


def request(items: list[int], count: int = 20, **kw: object) -> pb.GetCandidatesRequest:
    return pb.GetCandidatesRequest(device_id="d1", count=count, history=[
        pb.Event(item_id=i, timestamp=1.0 + n) for n, i in enumerate(items)], **kw)  # type: ignore[arg-type]


def healthy(channel: grpc.Channel) -> bool:
    ok = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
    served = pb_grpc.RecommenderStub(channel).GetCandidates(request([5, 6]), timeout=5)
    return ok.status == health_pb2.HealthCheckResponse.SERVING and len(served.item_ids) == 20


def test_garbage_bytes_are_refused_counted_and_server_stays_healthy(make_server) -> None:  # type: ignore[no-untyped-def]
    cs, channel = make_server()
    raw = channel.unary_unary("/dcrec.v1.Recommender/GetCandidates",
                              request_serializer=lambda b: b, response_deserializer=lambda b: b)
    for junk in [b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", bytes(range(256)) * 4]:
        with pytest.raises(grpc.RpcError) as e:
            raw(junk, timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "does not decode" in e.value.details()
    # Refused before any handler ran, and still in the operators' counts (gRPC's own
    # "Exception deserializing request!" path skipped every interceptor).
    assert cs.telemetry.value("dcrec_errors_total", code="INVALID_ARGUMENT") == 3
    assert healthy(channel)


def test_oversized_request_is_refused_with_resource_exhausted(make_server) -> None:  # type: ignore[no-untyped-def]
    cs, channel = make_server(max_request_bytes=64 * 1024)
    stub = pb_grpc.RecommenderStub(channel)
    big = pb.GetCandidatesRequest(device_id="d1", count=5, current_list_id="x" * 100_000,
                                  history=[pb.Event(item_id=1, timestamp=1.0)])
    with pytest.raises(grpc.RpcError) as e:
        stub.GetCandidates(big, timeout=5)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over the limit of 65536 bytes" in e.value.details()
    assert cs.telemetry.value("dcrec_shed_total", stage="size") == 1
    assert cs.telemetry.value("dcrec_errors_total", code="RESOURCE_EXHAUSTED") == 1
    assert healthy(channel)


@pytest.mark.parametrize("req,field", [
    (request([1, 2], current_list_id="y" * 500), "current_list_id"),
    (pb.GetCandidatesRequest(device_id="d1", count=5,
                             history=[pb.Event(item_id=3, timestamp=float("nan"))]),
     "history.timestamp"),
    (request([1, -7]), "history.item_id"),
    (request([1], count=-1), "count"),
    (request(list(range(1, 300))), "history"),
    (pb.GetCandidatesRequest(device_id="d" * 500, count=5, history=[pb.Event(item_id=1)]),
     "device_id"),
])
def test_out_of_range_fields_name_the_field(make_server, req, field) -> None:  # type: ignore[no-untyped-def]
    _, channel = make_server()
    with pytest.raises(grpc.RpcError) as e:
        pb_grpc.RecommenderStub(channel).GetCandidates(req, timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith(field + ":")
    assert healthy(channel)


def test_a_crashing_handler_never_leaks_its_message(make_server, caplog) -> None:  # type: ignore[no-untyped-def]
    cs, channel = make_server(before=_boom)
    with caplog.at_level(logging.ERROR, logger="dcrec.cloud.serving.interceptors"):
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.RecommenderStub(channel).GetCandidates(request([1, 2]), timeout=5)
    assert e.value.code() == grpc.StatusCode.INTERNAL
    details = e.value.details()
    assert "hunter2" not in details and "postgres" not in details and "RuntimeError" not in details
    assert "hunter2" not in str(e.value.debug_error_string())
    error_id = details.split("id ")[1].rstrip(")")
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # the traceback is in the log, with the id
    assert 'code="INTERNAL"' in cs.telemetry.render()


def test_load_beyond_capacity_is_shed_not_queued(make_server) -> None:  # type: ignore[no-untyped-def]
    gate = threading.Event()
    cs, channel = make_server(before=lambda: gate.wait(5), max_inflight=2, max_workers=8)
    stub = pb_grpc.RecommenderStub(channel)
    futures = [stub.GetCandidates.future(request([i + 1]), timeout=10) for i in range(8)]
    deadline = time.monotonic() + 5
    codes: list[grpc.StatusCode] = []
    while time.monotonic() < deadline:  # the shed calls come back while two are still held
        done = [f for f in futures if f.done()]
        if len(done) >= 6:
            break
        time.sleep(0.01)
    for f in futures:
        if f.done():
            codes.append(f.code())
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 6, codes
    gate.set()
    results = [f.code() for f in futures]
    assert results.count(grpc.StatusCode.OK) == 2
    assert cs.limiter.shed == 6
    assert healthy(channel)
