"""Devices upload their telemetry outbox to a real cloud server over loopback gRPC."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from dcrec.cloud.models.backends import load_generator
from dcrec.cloud.serving.device_telemetry import TelemetryConfig, TelemetryItem, TelemetrySink
from dcrec.cloud.serving.metrics import Telemetry
from dcrec.cloud.serving.server import CloudServer, ServerConfig, build_server
from dcrec.cloud.serving.service import CandidateService, InvalidRequest, ServiceConfig
from dcrec.device.client import Backoff, CloudClient
from dcrec.device.policy import NeverPolicy
from dcrec.device.runtime import DeviceRuntime
from dcrec.device.store import DeviceStore
from dcrec.device.telemetry import TelemetryUploader


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{" if labels else name + " "):
            head, value = line.rsplit(" ", 1)
            got = head[len(name):].strip("{}")
            if ",".join(sorted(got.split(","))) == want or (not labels and not got):
                return float(value)
    return 0.0


def _request_record(seq: int, reason: str = "expired", ok: bool = True) -> TelemetryItem:
    return TelemetryItem(seq, "request", json.dumps({"reason": reason, "ok": ok, "latency_ms": 12.5}),
                         1000.0 + seq)


def test_the_sink_counts_each_record_once_and_refuses_bad_ones(tmp_path: Path) -> None:
    t = Telemetry()
    sink = TelemetrySink(t, TelemetryConfig(max_records=6, log_path=str(tmp_path / "t.jsonl")))
    acked, rejected = sink.accept("d1", [_request_record(1), _request_record(2, ok=False)], "s")
    assert acked == [1, 2] and rejected == []
    # The same batch again (its acknowledgement was lost): acknowledged, not counted again.
    acked, _ = sink.accept("d1", [_request_record(1), _request_record(2, ok=False), _request_record(3)], "s")
    assert acked == [1, 2, 3]
    text = t.render()
    assert _metric(text, "dcrec_device_requests_total", reason="expired", outcome="ok") == 2
    assert _metric(text, "dcrec_device_requests_total", reason="expired", outcome="failed") == 1
    # Another stream of the same device (the app reinstalled) starts again at 1 and counts.
    assert sink.accept("d1", [_request_record(1)], "s2")[0] == [1]
    assert _metric(t.render(), "dcrec_device_requests_total", reason="expired", outcome="ok") == 3
    bad = [TelemetryItem(10, "request", "{not json", 1.0), TelemetryItem(11, "request", "[1, 2]", 1.0),
           TelemetryItem(12, "Bad Kind!", "{}", 1.0), TelemetryItem(13, "note", "x" * 5000, 1.0),
           TelemetryItem(14, "note", "{}", float("nan")), TelemetryItem(15, "note", '{"a": 1}', 2.0)]
    acked, rejected = sink.accept("d1", bad, "s")
    assert acked == [15]
    reasons = dict(rejected)
    assert "not JSON" in reasons[10] and "JSON object" in reasons[11] and "kind" in reasons[12]
    assert "longer than 4096" in reasons[13] and "finite" in reasons[14]
    with pytest.raises(InvalidRequest, match="records: at most 6"):
        sink.accept("d1", [_request_record(i) for i in range(20, 27)], "s")
    sink.close()
    lines = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [(x["stream"], x["sequence"]) for x in lines] == [("s", 1), ("s", 2), ("s", 3), ("s2", 1),
                                                             ("s", 15)]
    assert lines[0]["device_id"] == "d1" and lines[0]["payload"]["latency_ms"] == 12.5


@pytest.fixture
def cloud(cloud_model_dir: Path, tmp_path: Path) -> Iterator[CloudServer]:
    service = CandidateService(load_generator(cloud_model_dir), ServiceConfig(max_count=100))
    cs = build_server("127.0.0.1:0", service, config=ServerConfig(insecure=True),
                      device_telemetry=TelemetryConfig(log_path=str(tmp_path / "cloud" / "telemetry.jsonl")))
    cs.start()
    yield cs
    cs.stop(0)


def _runtime(path: Path, address: str) -> DeviceRuntime:
    client = CloudClient(address, deadline_s=5.0, backoff=Backoff(base_s=0.01, max_s=0.02))
    return DeviceRuntime("phone-1", DeviceStore(path), None, client, NeverPolicy())


def test_a_device_uploads_its_request_log_and_the_cloud_counts_it(cloud: CloudServer, tmp_path: Path) -> None:
    address = f"127.0.0.1:{cloud.port}"
    rt = _runtime(tmp_path / "phone.sqlite", address)
    for n, item in enumerate([3, 5, 7]):
        rt.record(item, 100.0 + n)  # the first event has no list: a cold-start request
    assert rt.requests >= 1
    queued = rt.store.pending_count()
    assert queued == rt.requests
    result = rt.upload_telemetry()
    assert result.sent == queued and result.pending == 0 and not result.error
    text = cloud.telemetry.render()
    assert _metric(text, "dcrec_device_requests_total", reason="cold_start", outcome="ok") == 1
    # The device's latency reached the operators' histogram.
    assert _metric(text, "dcrec_device_request_latency_seconds_count") == queued
    lines = (tmp_path / "cloud" / "telemetry.jsonl").read_text().splitlines()
    assert len(lines) == queued and json.loads(lines[0])["device_id"] == "phone-1"
    # Nothing left: a second flush sends nothing.
    assert rt.upload_telemetry().sent == 0
    rt.close()


def test_an_unreachable_cloud_loses_no_telemetry(cloud: CloudServer, tmp_path: Path) -> None:
    store = DeviceStore(tmp_path / "offline.sqlite")
    for n in range(5):
        store.log_request(float(n), "expired", n % 2 == 0, 3.0 + n)
    stream = store.telemetry_stream()
    assert len(stream) == 16
    dead = CloudClient("127.0.0.1:1", deadline_s=0.3, backoff=Backoff(base_s=0.01, max_s=0.02))
    result = TelemetryUploader(store, dead, "phone-2").flush()
    assert result.sent == 0 and result.pending == 5 and result.error
    live = CloudClient(f"127.0.0.1:{cloud.port}", deadline_s=5.0)
    result = TelemetryUploader(store, live, "phone-2", batch=2).flush()
    assert result.sent == 5 and result.pending == 0  # three batches of at most 2
    # New records after the outbox emptied get new, larger ids: the cloud counts them.
    store.log_request(10.0, "consumed", True, 1.0)
    assert store.pending()[0][0] == 6
    assert TelemetryUploader(store, live, "phone-2").flush().sent == 1
    text = cloud.telemetry.render()
    assert _metric(text, "dcrec_device_requests_total", reason="expired", outcome="ok") == 3
    assert _metric(text, "dcrec_device_requests_total", reason="expired", outcome="failed") == 2
    assert _metric(text, "dcrec_device_requests_total", reason="consumed", outcome="ok") == 1
    store.close()


def test_an_old_outbox_migrates_with_its_records(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    from dcrec.device.migrations import migrate

    migrate(conn, target=2)
    conn.execute("INSERT INTO outbox (kind, payload, created_at) VALUES ('request', '{}', 1.0)")
    conn.execute("INSERT INTO outbox (kind, payload, created_at) VALUES ('request', '{}', 2.0)")
    conn.close()
    store = DeviceStore(path)
    assert store.migrated_from == 2
    assert [r[0] for r in store.pending()] == [1, 2]
    store.ack([1, 2])
    store.enqueue("note", {"a": 1}, 3.0)
    assert [r[0] for r in store.pending()] == [3]  # ids are never reused
    assert store.telemetry_stream()
    store.close()
