"""Hostile calls against a real server on loopback: telemetry payloads, label cardinality,
per-device memory, shedding that is counted, and property-based inputs for every RPC."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcrec.cloud.models.backends import load_generator
from dcrec.cloud.serving.device_telemetry import TelemetryConfig, TelemetryItem, TelemetrySink
from dcrec.cloud.serving.metrics import LABEL_VALUES, Telemetry
from dcrec.cloud.serving.server import CloudServer, ServerConfig, build_server
from dcrec.cloud.serving.service import CandidateService, ServiceConfig
from dcrec.shared.proto.dcrec.v1 import recommend_pb2 as pb
from dcrec.shared.proto.dcrec.v1 import recommend_pb2_grpc as pb_grpc

NESTED = '{"a":' + "[" * 2040 + "]" * 2040 + "}"  # ~4 KB: json.loads raises RecursionError


def record(seq: int, reason: str = "expired", ok: bool = True, kind: str = "request",
           **extra: object) -> pb.TelemetryRecord:
    payload = json.dumps({"reason": reason, "ok": ok, "latency_ms": 3.0, **extra})
    return pb.TelemetryRecord(sequence=seq, kind=kind, payload_json=payload, created_at=1.0)


@pytest.fixture(scope="module")
def server(cloud_model_dir: Path) -> Iterator[CloudServer]:
    service = CandidateService(load_generator(cloud_model_dir), ServiceConfig(max_count=100))
    cs = build_server("127.0.0.1:0", service, config=ServerConfig(insecure=True)).start()
    yield cs
    cs.stop(0)


@pytest.fixture(scope="module")
def raw_channel(server: CloudServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(raw_channel: grpc.Channel) -> pb_grpc.RecommenderStub:
    return pb_grpc.RecommenderStub(raw_channel)


def requests_counted(t: Telemetry, reason: str = "expired") -> float:
    return t.value("dcrec_device_requests_total", outcome="ok", reason=reason)


# --- telemetry payloads -------------------------------------------------------------------------
def test_deeply_nested_telemetry_is_refused_and_the_batch_acked(server: CloudServer,
                                                                stub: pb_grpc.RecommenderStub) -> None:
    before = requests_counted(server.telemetry)
    batch = [record(1), record(2), pb.TelemetryRecord(sequence=3, kind="request", payload_json=NESTED,
                                                       created_at=1.0), record(4)]
    call = pb.ReportTelemetryRequest(device_id="nest", stream="s", records=batch)
    resp = stub.ReportTelemetry(call, timeout=5)  # an answer, not INTERNAL
    assert list(resp.acked) == [1, 2, 4]
    assert list(resp.rejected) == [3] and "nests deeper" in resp.rejected_reasons[0]
    for _ in range(2):  # the device retries as if the answer were lost: nothing counted twice
        assert list(stub.ReportTelemetry(call, timeout=5).acked) == [1, 2, 3, 4]
    assert requests_counted(server.telemetry) - before == 3
    assert server.telemetry.value("dcrec_errors_total", code="INTERNAL") == 0


@pytest.mark.parametrize("payload,why", [
    ('{"reason": "expired", "ok": true, "latency_ms": NaN}', "not JSON"),
    ('{"reason": "expired", "ok": "yes"}', "ok must be"),
    ('{"reason": 7, "ok": true}', "reason must be"),
    ('{"reason": "expired", "ok": true, "latency_ms": -1}', "latency_ms"),
    ('{"reason": "expired", "ok": true, "latency_ms": true}', "latency_ms"),
    ("[" * 40 + "]" * 40, "JSON object"),
    ('{"a": ' + "[" * 17 + "]" * 17 + "}", "nests deeper"),
])
def test_request_records_outside_the_schema_are_refused(payload: str, why: str) -> None:
    sink = TelemetrySink(Telemetry())
    acked, rejected = sink.accept("d", [TelemetryItem(1, "request", payload, 1.0)], "s")
    assert acked == [] and len(rejected) == 1 and why in rejected[0][1]


def test_sequences_out_of_range_are_refused_and_never_poison_the_stream() -> None:
    t = Telemetry()
    sink = TelemetrySink(t)
    ok = '{"reason": "expired", "ok": true}'
    acked, rejected = sink.accept("d", [TelemetryItem(0, "request", ok, 1.0),
                                        TelemetryItem(-5, "request", ok, 1.0),
                                        TelemetryItem(2**63 - 1, "request", ok, 1.0)], "s")
    assert acked == [] and [s for s, _ in rejected] == [0, -5, 2**63 - 1]
    # A malformed record with a huge sequence does not make later records look like resends.
    acked, rejected = sink.accept("d", [TelemetryItem(2**53, "request", "{bad", 1.0)], "s")
    assert acked == [] and rejected
    acked, _ = sink.accept("d", [TelemetryItem(1, "request", ok, 1.0)], "s")
    assert acked == [1] and requests_counted(t) == 1
    assert t.value("dcrec_device_telemetry_rejected_total") == 4


def test_one_device_cannot_flush_another_devices_dedupe_memory() -> None:
    t = Telemetry()
    sink = TelemetrySink(t, TelemetryConfig(max_devices=50, max_streams_per_device=4))
    ok = '{"reason": "expired", "ok": true}'
    sink.accept("victim", [TelemetryItem(1, "request", ok, 1.0)], "mine")
    for n in range(2_000):  # the attacker's own token, 2,000 distinct stream ids
        sink.accept("attacker", [TelemetryItem(1, "request", ok, 1.0)], f"s{n}")
    assert sink.remembered() == 1 + 4
    sink.accept("victim", [TelemetryItem(1, "request", ok, 1.0)], "mine")  # a resend
    assert requests_counted(t) == 1 + 2_000  # the victim's record counted once


# --- cardinality ---------------------------------------------------------------------------------
def test_hostile_labels_fold_into_other_and_metrics_stay_small(server: CloudServer,
                                                                stub: pb_grpc.RecommenderStub) -> None:
    rng = random.Random(0)
    seq = 0
    for n in range(40):  # 20,000 records, each with a fresh reason or kind
        batch = []
        for _ in range(500):
            seq += 1
            batch.append(record(seq, reason=f"r{rng.getrandbits(48):x}",
                                kind="request" if n % 2 else f"k{rng.getrandbits(48):x}"))
        stub.ReportTelemetry(pb.ReportTelemetryRequest(device_id="card", stream="s", records=batch),
                             timeout=10)
    text = server.telemetry.render()
    assert len(text.encode()) < 100_000
    reasons = {line.split('reason="')[1].split('"')[0] for line in text.splitlines()
               if line.startswith("dcrec_device_requests_total{")}
    kinds = {line.split('kind="')[1].split('"')[0] for line in text.splitlines()
             if line.startswith("dcrec_device_telemetry_records_total{")}
    assert reasons <= LABEL_VALUES["reason"] | {"other"} and "other" in reasons
    assert kinds <= LABEL_VALUES["kind"] | {"other"}
    assert server.telemetry.value("dcrec_device_telemetry_records_total", kind="other") == 10_000
    assert server.telemetry.value("dcrec_device_requests_total", outcome="ok", reason="other") == 10_000
    # Unknown methods do not mint series either.
    raw = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    for n in range(20):
        with pytest.raises(grpc.RpcError) as e:
            raw.unary_unary(f"/dcrec.v1.Recommender/Nope{n}", request_serializer=lambda b: b,
                            response_deserializer=lambda b: b)(b"", timeout=5)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    methods = {line.split('method="')[1].split('"')[0]
               for line in server.telemetry.render().splitlines()
               if line.startswith("dcrec_grpc_requests_total{")}
    assert methods <= LABEL_VALUES["method"] | {"other"} and "other" in methods


# --- shedding ------------------------------------------------------------------------------------
def test_every_resource_exhausted_a_client_sees_is_counted(cloud_model_dir: Path) -> None:
    gate = threading.Event()
    inner = load_generator(cloud_model_dir)

    class Held:
        name, version, n_items = inner.name, inner.version, inner.n_items

        def generate(self, histories, count, exclude_seen=True):  # type: ignore[no-untyped-def]
            gate.wait(10)
            return inner.generate(histories, count, exclude_seen)

    cfg = ServerConfig(insecure=True, max_workers=2, max_inflight=2, max_queued=0)
    cs = build_server("127.0.0.1:0", CandidateService(Held(), ServiceConfig(max_count=50)),
                      config=cfg)
    # Calls outside the limited service that hold a thread each, to fill the server up.
    hold = grpc.unary_unary_rpc_method_handler(lambda req, ctx: gate.wait(10) and b"",
                                               request_deserializer=None, response_serializer=None)
    cs.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Hold",
                                                                             {"Hold": hold})])
    cs.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{cs.port}")
    stub = pb_grpc.RecommenderStub(channel)
    req = pb.GetCandidatesRequest(device_id="d", count=5, history=[pb.Event(item_id=3, timestamp=1.0)])

    def wait_for(cond: object) -> None:
        deadline = time.monotonic() + 5
        while not cond() and time.monotonic() < deadline:  # type: ignore[operator]
            time.sleep(0.01)

    try:
        held = [stub.GetCandidates.future(req, timeout=20) for _ in range(2)]
        wait_for(lambda: cs.limiter.inflight == 2)
        # The limiter refuses these on its spare threads.
        codes = [_answer(stub.GetCandidates, req) for _ in range(30)]
        # Fill every thread: gRPC core refuses the next calls itself, before any handler runs.
        holders = [channel.unary_unary("/test.Hold/Hold").future(b"", timeout=20)
                   for _ in range(cfg.threads - 2)]
        wait_for(lambda: cs.server._state.active_rpc_count >= cfg.threads)  # type: ignore[attr-defined]
        codes += [_answer(stub.GetCandidates, req) for _ in range(10)]
        gate.set()
        assert all(f.result(timeout=10) for f in held)
        for h in holders:
            h.result(timeout=10)
        exhausted = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert exhausted == 40, codes
        t = cs.telemetry
        assert t.value("dcrec_errors_total", code="RESOURCE_EXHAUSTED") == exhausted
        assert t.value("dcrec_shed_total", stage="limiter") == 30
        assert t.value("dcrec_shed_total", stage="server") == 10
    finally:
        gate.set()
        cs.stop(0)


# --- property-based inputs for every RPC ---------------------------------------------------------
ids = st.integers(min_value=-(2**63), max_value=2**63 - 1)
text = st.text(max_size=80)
floats = st.floats(allow_nan=True, allow_infinity=True)
events = st.builds(pb.Event, item_id=ids, timestamp=floats)
get_candidates = st.builds(
    pb.GetCandidatesRequest, device_id=text, count=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    history=st.lists(events, max_size=30), reason=st.integers(min_value=0, max_value=7),
    exclude_seen=st.booleans(), current_list_id=text)
telemetry = st.builds(
    pb.ReportTelemetryRequest, device_id=text, stream=text, records=st.lists(st.builds(
        pb.TelemetryRecord, sequence=ids, kind=text,
        payload_json=st.one_of(text, st.recursive(st.none() | st.booleans() | st.floats() | text,
                                                  lambda c: st.lists(c) | st.dictionaries(text, c),
                                                  max_leaves=20).map(json.dumps)),
        created_at=floats), max_size=20))
model = st.builds(pb.GetDeviceModelRequest, device_id=text, current_version=text,
                  current_sequence=ids)
ANSWERS = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.RESOURCE_EXHAUSTED}


def _answer(call: object, request: object) -> grpc.StatusCode:
    try:
        call(request, timeout=10)  # type: ignore[operator]
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()  # type: ignore[no-any-return]


@pytest.mark.parametrize("method,messages", [("GetCandidates", get_candidates),
                                             ("ReportTelemetry", telemetry),
                                             ("GetDeviceModel", model)])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_message_gets_a_deliberate_answer(stub: pb_grpc.RecommenderStub, method: str,
                                              messages: st.SearchStrategy[object],
                                              data: st.DataObject) -> None:
    assert _answer(getattr(stub, method), data.draw(messages)) in ANSWERS


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GetCandidates", "ReportTelemetry", "GetDeviceModel"]),
       data=st.binary(max_size=300))
def test_any_bytes_get_a_deliberate_answer(raw_channel: grpc.Channel, method: str, data: bytes) -> None:
    raw = raw_channel.unary_unary(
        f"/dcrec.v1.Recommender/{method}", request_serializer=lambda b: b,
        response_deserializer=lambda b: b)
    assert _answer(raw, data) in ANSWERS


def test_the_server_is_healthy_after_the_hostile_calls(server: CloudServer,
                                                       stub: pb_grpc.RecommenderStub) -> None:
    t = server.telemetry
    assert t.value("dcrec_errors_total", code="INTERNAL") == 0
    assert t.value("dcrec_errors_total", code="UNKNOWN") == 0
    resp = stub.GetCandidates(pb.GetCandidatesRequest(
        device_id="ok", count=10, history=[pb.Event(item_id=3, timestamp=1.0)]), timeout=5)
    assert len(resp.item_ids) == 10
