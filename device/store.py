"""The device's local store: one SQLite file per device (sqlite-utils).

Holds the behaviour log (append-only, durable before ``append`` returns), the
cached cloud candidate list, the request log (the telemetry outbox) and small
key-value metadata. WAL journaling lets the app read while it writes; with
``synchronous=NORMAL`` a committed event survives a killed process, with
``FULL`` also a power cut.

Example::

    store = DeviceStore("device.sqlite")
    store.append(item_id=42, ts=1700000000.0)
    store.recent(50)      # (<=50,) newest items, oldest first
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import sqlite_utils

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
Durability = Literal["NORMAL", "FULL"]


@dataclass(frozen=True)
class CachedList:
    """The cloud list the device holds: ``items`` (C,), ``scores`` (C,) best first."""

    items: np.ndarray
    scores: np.ndarray
    list_id: str
    model_version: str
    fetched_at: float  # seconds, the device's clock
    ttl_seconds: float

    def age(self, now: float) -> float:
        return max(0.0, now - self.fetched_at)

    def expired(self, now: float) -> bool:
        return self.age(now) > self.ttl_seconds


class StoreError(RuntimeError):
    """The SQLite file is unusable (corrupt, newer schema, unwritable)."""


class DeviceStore:
    def __init__(self, path: str | Path, durability: Durability = "NORMAL",
                 history_cache: int = 200) -> None:
        if durability not in ("NORMAL", "FULL"):
            raise ValueError(f"durability must be NORMAL or FULL, got {durability!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={durability}")
            conn.execute("PRAGMA busy_timeout=5000")  # ms; bounded wait on a locked file
            self.db = sqlite_utils.Database(conn)
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: cannot open device store: {e}") from e
        self.conn = conn
        self._tail: deque[int] = deque(maxlen=history_cache)
        self._tail_ts: deque[float] = deque(maxlen=history_cache)
        rows = conn.execute(
            "SELECT item_id, ts FROM (SELECT id, item_id, ts FROM events ORDER BY id DESC LIMIT ?) "
            "ORDER BY id", (history_cache,)).fetchall()
        for item, ts in rows:
            self._tail.append(int(item))
            self._tail_ts.append(float(ts))
        self._seen: set[int] = {int(r[0]) for r in conn.execute("SELECT DISTINCT item_id FROM events")}
        self._count = int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"store schema {version} is newer than this runtime's {SCHEMA_VERSION}")
        if version < 1:
            with self.db.conn:
                self.db["events"].create({"id": int, "item_id": int, "ts": float, "recorded_at": float},
                                         pk="id", if_not_exists=True)
                self.db["candidates"].create(
                    {"slot": str, "list_id": str, "model_version": str, "fetched_at": float,
                     "ttl": float, "items": bytes, "scores": bytes}, pk="slot", if_not_exists=True)
                self.db["requests"].create(
                    {"id": int, "ts": float, "reason": str, "ok": int, "latency_ms": float,
                     "list_id": str, "error": str}, pk="id", if_not_exists=True)
                self.db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
                self.db.execute("PRAGMA user_version=1")

    # --- events -------------------------------------------------------------------------------
    def append(self, item_id: int, ts: float) -> int:
        """Record one event; committed to disk before returning. Returns its row id."""
        cur = self.conn.execute("INSERT INTO events (item_id, ts, recorded_at) VALUES (?, ?, ?)",
                                (int(item_id), float(ts), time.time()))
        self._tail.append(int(item_id))
        self._tail_ts.append(float(ts))
        self._seen.add(int(item_id))
        self._count += 1
        return int(cur.lastrowid or 0)

    def append_many(self, items: np.ndarray, times: np.ndarray) -> None:
        """Record a batch of past events (e.g. history migrated onto a new device) in one transaction."""
        now = time.time()
        rows = [(int(i), float(t), now) for i, t in zip(items, times, strict=True)]
        self.conn.execute("BEGIN")
        try:
            self.conn.executemany("INSERT INTO events (item_id, ts, recorded_at) VALUES (?, ?, ?)", rows)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        for i, t, _ in rows:
            self._tail.append(i)
            self._tail_ts.append(t)
            self._seen.add(i)
        self._count += len(rows)

    def recent(self, n: int) -> np.ndarray:
        """(<=n,) the newest ``n`` item ids, oldest first."""
        if n <= 0:
            return np.zeros(0, dtype=np.int64)
        tail = list(self._tail)[-n:]
        return np.asarray(tail, dtype=np.int64)

    def recent_times(self, n: int) -> np.ndarray:
        return np.asarray(list(self._tail_ts)[-n:], dtype=np.float64)

    def seen(self) -> set[int]:
        return self._seen

    def event_count(self) -> int:
        return self._count

    def events(self) -> list[tuple[int, float]]:
        """Every stored event as (item_id, ts), oldest first (reads the file, not the cache)."""
        return [(int(i), float(t)) for i, t in
                self.conn.execute("SELECT item_id, ts FROM events ORDER BY id")]

    # --- candidate cache ---------------------------------------------------------------------
    def save_list(self, cached: CachedList) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO candidates (slot, list_id, model_version, fetched_at, ttl, items, scores)"
            " VALUES ('current', ?, ?, ?, ?, ?, ?)",
            (cached.list_id, cached.model_version, cached.fetched_at, cached.ttl_seconds,
             cached.items.astype("<i8").tobytes(), cached.scores.astype("<f4").tobytes()))

    def load_list(self) -> CachedList | None:
        row = self.conn.execute(
            "SELECT list_id, model_version, fetched_at, ttl, items, scores FROM candidates "
            "WHERE slot = 'current'").fetchone()
        if row is None:
            return None
        return CachedList(np.frombuffer(row[4], dtype="<i8").astype(np.int64),
                          np.frombuffer(row[5], dtype="<f4").astype(np.float32),
                          row[0], row[1], float(row[2]), float(row[3]))

    # --- request log (telemetry outbox) and metadata -----------------------------------------
    def log_request(self, ts: float, reason: str, ok: bool, latency_ms: float,
                    list_id: str = "", error: str = "") -> None:
        self.conn.execute("INSERT INTO requests (ts, reason, ok, latency_ms, list_id, error) "
                          "VALUES (?, ?, ?, ?, ?, ?)",
                          (ts, reason, int(ok), latency_ms, list_id, error[:500]))

    def request_log(self) -> list[dict[str, object]]:
        return list(self.db["requests"].rows)

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def integrity_ok(self) -> bool:
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def close(self) -> None:
        self.conn.close()
