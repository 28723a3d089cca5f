import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dcrec.device.store import CachedList, DeviceStore, StoreError, _Tail


def test_events_survive_reopen(tmp_path: Path) -> None:
    s = DeviceStore(tmp_path / "d.sqlite")
    for i, item in enumerate([5, 7, 5, 9]):
        s.append(item, 100.0 + i)
    s.close()
    s = DeviceStore(tmp_path / "d.sqlite")
    assert s.event_count() == 4
    assert s.recent(3).tolist() == [7, 5, 9]
    assert s.recent_times(2).tolist() == [102.0, 103.0]
    assert s.seen() == {5, 7, 9}
    assert s.events()[0] == (5, 100.0)
    assert s.integrity_ok()


@pytest.mark.parametrize("cap", [0, 1, 3, 7])
def test_tail_keeps_the_newest_values_like_a_bounded_deque(cap: int) -> None:
    from collections import deque

    tail, ref = _Tail(cap, np.int64), deque(maxlen=cap)
    for v in range(40):
        tail.append(v)
        ref.append(v)
        for n in (-1, 0, 1, 2, cap, cap + 5):
            want = list(ref)[-n:] if n > 0 else []
            got = tail.newest(n)
            assert got.dtype == np.int64 and got.tolist() == want
    tail.newest(cap)[:] = -1  # a copy: the caller cannot change the store's history
    assert tail.newest(cap).tolist() == list(ref)


def test_recent_follows_appends_past_the_history_cache(tmp_path: Path) -> None:
    s = DeviceStore(tmp_path / "d.sqlite", history_cache=5)
    s.append_many(np.arange(1, 4), np.arange(1, 4, dtype=float))
    for i in range(4, 13):
        s.append(i, float(i))
    assert s.recent(50).tolist() == [8, 9, 10, 11, 12]
    assert s.recent_times(2).tolist() == [11.0, 12.0]
    s.close()
    s = DeviceStore(tmp_path / "d.sqlite", history_cache=5)
    assert s.recent(3).tolist() == [10, 11, 12] and s.recent(0).size == 0


def test_candidate_cache_round_trip(tmp_path: Path) -> None:
    s = DeviceStore(tmp_path / "d.sqlite")
    assert s.load_list() is None
    c = CachedList(np.array([3, 1, 2]), np.array([0.9, 0.5, 0.1], dtype=np.float32), "L1", "m1",
                   1000.0, 60.0)
    s.save_list(c)
    s.close()
    got = DeviceStore(tmp_path / "d.sqlite").load_list()
    assert got is not None and got.items.tolist() == [3, 1, 2] and got.list_id == "L1"
    assert np.allclose(got.scores, c.scores)
    assert got.expired(1061.0) and not got.expired(1059.0)


def test_killed_writer_loses_no_acknowledged_event(tmp_path: Path) -> None:
    """A child appends and acknowledges on stdout; we SIGKILL it mid-stream."""
    path = tmp_path / "d.sqlite"
    code = (
        "import sys; from device.store import DeviceStore\n"
        f"s = DeviceStore({str(path)!r})\n"
        "for i in range(1, 100000):\n"
        "    s.append(i, float(i)); print(i, flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    acked = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        acked = int(line)
        if acked >= 300:
            break
    proc.kill()
    proc.wait()
    s = DeviceStore(path)
    assert s.integrity_ok()
    assert s.event_count() >= acked
    assert [i for i, _ in s.events()[:acked]] == list(range(1, acked + 1))


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        DeviceStore(path, on_damage="raise")  # (the default moves it aside: test_hostile_files)
    assert path.read_bytes().startswith(b"this is not")  # nothing overwritten


def test_bad_durability_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DeviceStore(tmp_path / "d.sqlite", durability="OFF")  # type: ignore[arg-type]
    assert not os.path.exists(tmp_path / "d.sqlite")


def _make_v1_file(path: Path) -> None:
    """A store exactly as the first schema (user_version 1) wrote it."""
    import sqlite3

    import sqlite_utils

    conn = sqlite3.connect(str(path), isolation_level=None)
    db = sqlite_utils.Database(conn)
    db["events"].create({"id": int, "item_id": int, "ts": float, "recorded_at": float}, pk="id")
    db["candidates"].create({"slot": str, "list_id": str, "model_version": str, "fetched_at": float,
                             "ttl": float, "items": bytes, "scores": bytes}, pk="slot")
    db["requests"].create({"id": int, "ts": float, "reason": str, "ok": int, "latency_ms": float,
                           "list_id": str, "error": str}, pk="id")
    db["meta"].create({"key": str, "value": str}, pk="key")
    conn.executemany("INSERT INTO events (item_id, ts, recorded_at) VALUES (?, ?, 0)",
                     [(7, 1.0), (3, 2.0), (7, 3.0)])
    conn.execute("INSERT INTO requests (ts, reason, ok, latency_ms, list_id, error) "
                 "VALUES (1.5, 'cold_start', 1, 3.0, 'L', '')")
    conn.execute("PRAGMA user_version=1")
    conn.close()


def test_old_schema_file_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    from dcrec.device.migrations import SCHEMA_VERSION

    path = tmp_path / "old.sqlite"
    _make_v1_file(path)
    s = DeviceStore(path)
    assert s.migrated_from == 1
    assert s.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert s.events() == [(7, 1.0), (3, 2.0), (7, 3.0)]
    assert s.seen() == {3, 7}  # rebuilt from the old events
    assert s.request_log()[0]["reason"] == "cold_start"
    s.enqueue("hello", {"n": 1}, ts=5.0)
    assert [k for _, k, _ in s.outbox()] == ["hello"]
    s.close()
    # Reopening runs no migration again; a newer file is refused untouched.
    assert DeviceStore(path).migrated_from == SCHEMA_VERSION
    conn = sqlite3.connect(str(path))
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        DeviceStore(path)


def test_size_is_bounded_and_seen_items_outlive_pruning(tmp_path: Path) -> None:
    from dcrec.device.store import StoreLimits

    s = DeviceStore(tmp_path / "d.sqlite", limits=StoreLimits(max_events=100, max_requests=10,
                                                              max_outbox=20))
    for i in range(1, 501):
        s.append(i, float(i))
    assert s.event_count() <= 110
    assert s.events()[-1] == (500, 500.0) and s.events()[0][0] > 390  # the oldest went first
    assert s.recent(3).tolist() == [498, 499, 500]
    assert len(s.seen()) == 500  # pruned events are still never shown again
    for i in range(50):
        s.log_request(float(i), "disagreement", True, 1.0)
    assert 10 <= len(s.request_log()) <= 11
    assert len(s.outbox(1000)) <= 22
    s.close()
    reopened = DeviceStore(tmp_path / "d.sqlite")
    assert len(reopened.seen()) == 500 and reopened.event_count() <= 110


def test_outbox_ack_and_models(tmp_path: Path) -> None:
    from dcrec.device.store import InstalledModel

    s = DeviceStore(tmp_path / "d.sqlite")
    s.log_request(1.0, "expired", False, 12.5, error="UNAVAILABLE")
    s.enqueue("metric", {"ndcg": 0.1})
    rows = s.outbox()
    assert [k for _, k, _ in rows] == ["request", "metric"]
    assert rows[0][2]["reason"] == "expired" and rows[0][2]["ok"] is False
    s.ack([rows[0][0]])
    assert [k for _, k, _ in s.outbox()] == ["metric"]
    assert s.active_model() is None
    s.record_model(InstalledModel("v1", "/m/v1.onnx", "ab", 50, 1.0))
    s.record_model(InstalledModel("v2", "/m/v2.onnx", "cd", 20, 2.0))
    s.close()
    active = DeviceStore(tmp_path / "d.sqlite").active_model()
    assert active is not None and active.version == "v2" and active.max_len == 20
