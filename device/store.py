"""The device's local store: one SQLite file per device (sqlite-utils).

Holds the behaviour log (append-only, durable before ``append`` returns), the
set of consumed items, the cached cloud candidate list, the request log, a
telemetry outbox (records wait there until an uploader acknowledges them),
the installed model files, and small key-value metadata. WAL journaling lets
the app read while it writes; with ``synchronous=NORMAL`` a committed event
survives a killed process, with ``FULL`` also a power cut.

Size is bounded: beyond ``StoreLimits.max_events`` the oldest events are
pruned (the consumed-item set keeps them from being shown again), and the
request log and outbox keep only their newest rows. The schema is versioned
(:mod:`device.migrations`); an old file is upgraded in place on open.

Example::

    store = DeviceStore("device.sqlite")
    store.append(item_id=42, ts=1700000000.0)
    store.recent(50)      # (<=50,) newest items, oldest first
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import sqlite_utils

from device.migrations import SchemaTooNew, migrate

log = logging.getLogger(__name__)

HISTORY_CACHE = 200  # newest events a store keeps in memory by default

Durability = Literal["NORMAL", "FULL"]


@dataclass(frozen=True)
class StoreLimits:
    max_events: int = 10_000  # newest events kept; the reranker reads only the last few dozen
    max_requests: int = 2_000  # request-log rows kept
    max_outbox: int = 5_000  # telemetry rows kept while offline; the oldest are dropped first
    prune_slack: float = 0.1  # prune only when this share over a limit, so deletes are batched

    def validate(self) -> None:
        if min(self.max_events, self.max_requests, self.max_outbox) < 1 or self.prune_slack < 0:
            raise ValueError("store limits must be >= 1 and prune_slack >= 0")


@dataclass(frozen=True)
class InstalledModel:
    version: str
    path: str
    sha256: str
    max_len: int
    installed_at: float


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


class _Tail:
    """The newest ``cap`` values of a stream in a numpy buffer: O(1) appends, slices without conversion."""

    def __init__(self, cap: int, dtype: type[np.generic]) -> None:
        self.cap = max(cap, 0)
        self._buf = np.zeros(2 * self.cap, dtype=dtype)
        self._end = 0  # one past the newest value
        self._size = 0

    def append(self, value: float) -> None:
        if self.cap == 0:
            return
        if self._end == self._buf.size:  # full: move the newest cap - 1 values to the front
            keep = self.cap - 1
            self._buf[:keep] = self._buf[self._end - keep:self._end]
            self._end = keep
        self._buf[self._end] = value
        self._end += 1
        self._size = min(self._size + 1, self.cap)

    def newest(self, n: int) -> np.ndarray:
        """(<=n,) a copy of the newest ``n`` values, oldest first."""
        n = min(max(n, 0), self._size)
        return self._buf[self._end - n:self._end].copy()


class DeviceStore:
    def __init__(self, path: str | Path, durability: Durability = "NORMAL",
                 history_cache: int = HISTORY_CACHE, limits: StoreLimits | None = None) -> None:
        if durability not in ("NORMAL", "FULL"):
            raise ValueError(f"durability must be NORMAL or FULL, got {durability!r}")
        self.limits = limits or StoreLimits()
        self.limits.validate()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={durability}")
            conn.execute("PRAGMA busy_timeout=5000")  # ms; bounded wait on a locked file
            self.db = sqlite_utils.Database(conn)
            self.migrated_from = migrate(conn)
        except SchemaTooNew as e:
            conn.close()
            raise StoreError(f"{self.path}: {e}") from e
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: cannot open device store: {e}") from e
        self.conn = conn
        self.history_cache = history_cache  # the longest history recent() can return
        self._tail = _Tail(history_cache, np.int64)
        self._tail_ts = _Tail(history_cache, np.float64)
        rows = conn.execute(
            "SELECT item_id, ts FROM (SELECT id, item_id, ts FROM events ORDER BY id DESC LIMIT ?) "
            "ORDER BY id", (history_cache,)).fetchall()
        for item, ts in rows:
            self._tail.append(int(item))
            self._tail_ts.append(float(ts))
        self._seen: set[int] = {int(r[0]) for r in conn.execute("SELECT item_id FROM seen_items")}
        self._count = int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    # --- events -------------------------------------------------------------------------------
    def append(self, item_id: int, ts: float) -> int:
        """Record one event; committed to disk before returning. Returns its row id."""
        item = int(item_id)
        if item in self._seen:  # one statement, one implicit transaction
            cur = self.conn.execute("INSERT INTO events (item_id, ts, recorded_at) VALUES (?, ?, ?)",
                                    (item, float(ts), time.time()))
        else:
            self.conn.execute("BEGIN")
            try:
                cur = self.conn.execute("INSERT INTO events (item_id, ts, recorded_at) VALUES (?, ?, ?)",
                                        (item, float(ts), time.time()))
                self.conn.execute("INSERT OR IGNORE INTO seen_items (item_id) VALUES (?)", (item,))
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        self._tail.append(item)
        self._tail_ts.append(float(ts))
        self._seen.add(item)
        self._count += 1
        self._maybe_prune()
        return int(cur.lastrowid or 0)

    def append_many(self, items: np.ndarray, times: np.ndarray) -> None:
        """Record a batch of past events (e.g. history migrated onto a new device) in one transaction."""
        now = time.time()
        rows = [(int(i), float(t), now) for i, t in zip(items, times, strict=True)]
        self.conn.execute("BEGIN")
        try:
            self.conn.executemany("INSERT INTO events (item_id, ts, recorded_at) VALUES (?, ?, ?)", rows)
            self.conn.executemany("INSERT OR IGNORE INTO seen_items (item_id) VALUES (?)",
                                  [(i,) for i in {r[0] for r in rows}])
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        for i, t, _ in rows:
            self._tail.append(i)
            self._tail_ts.append(t)
            self._seen.add(i)
        self._count += len(rows)
        self._maybe_prune()

    def _maybe_prune(self) -> None:
        """Drop the oldest events beyond ``max_events`` (in batches: only once the slack is used up)."""
        limit = self.limits.max_events
        if self._count <= limit * (1 + self.limits.prune_slack):
            return
        self.conn.execute("DELETE FROM events WHERE id <= (SELECT id FROM events ORDER BY id DESC "
                          "LIMIT 1 OFFSET ?)", (limit,))
        self._count = int(self.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        log.debug("%s: pruned events to %d", self.path, self._count)

    def recent(self, n: int) -> np.ndarray:
        """(<=n,) the newest ``n`` item ids, oldest first."""
        return self._tail.newest(n)

    def recent_times(self, n: int) -> np.ndarray:
        """(<=n,) the timestamps of the newest ``n`` events, oldest first."""
        return self._tail_ts.newest(n)

    def seen(self) -> set[int]:
        """Every item the user consumed, including those of pruned events."""
        return self._seen

    def event_count(self) -> int:
        """Events held in the file (after pruning)."""
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

    # --- request log and telemetry outbox ------------------------------------------------------
    def log_request(self, ts: float, reason: str, ok: bool, latency_ms: float,
                    list_id: str = "", error: str = "") -> None:
        """Log a request locally and queue the same record for upload, in one transaction."""
        row = (ts, reason, int(ok), latency_ms, list_id, error[:500])
        self.conn.execute("BEGIN")
        try:
            self.conn.execute("INSERT INTO requests (ts, reason, ok, latency_ms, list_id, error) "
                              "VALUES (?, ?, ?, ?, ?, ?)", row)
            self._enqueue("request", {"ts": ts, "reason": reason, "ok": bool(ok),
                                      "latency_ms": round(latency_ms, 3), "list_id": list_id,
                                      "error": error[:200]}, ts)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self._trim("requests", self.limits.max_requests)
        self._trim("outbox", self.limits.max_outbox)

    def request_log(self) -> list[dict[str, object]]:
        return list(self.db["requests"].rows)

    def _enqueue(self, kind: str, payload: dict[str, object], ts: float) -> None:
        self.conn.execute("INSERT INTO outbox (kind, payload, created_at) VALUES (?, ?, ?)",
                          (kind, json.dumps(payload, sort_keys=True), float(ts)))

    def enqueue(self, kind: str, payload: dict[str, object], ts: float | None = None) -> None:
        """Queue one telemetry record (JSON-serialisable ``payload``) for upload."""
        self._enqueue(kind, payload, time.time() if ts is None else ts)
        self._trim("outbox", self.limits.max_outbox)

    def outbox(self, limit: int = 100) -> list[tuple[int, str, dict[str, object]]]:
        """The oldest ``limit`` queued records as (id, kind, payload); they stay until :meth:`ack`."""
        return [(i, k, json.loads(p)) for i, k, p, _ in self.pending(limit)]

    def pending(self, limit: int = 100) -> list[tuple[int, str, str, float]]:
        """The oldest ``limit`` queued records as stored: (id, kind, payload JSON, created_at)."""
        rows = self.conn.execute("SELECT id, kind, payload, created_at FROM outbox ORDER BY id LIMIT ?",
                                 (limit,))
        return [(int(i), str(k), str(p), float(c)) for i, k, p, c in rows]

    def pending_count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def telemetry_stream(self) -> str:
        """This file's random id for its sequence of outbox ids (made by the schema migration)."""
        return self.get_meta("telemetry_stream") or ""

    def ack(self, ids: list[int]) -> None:
        """Delete uploaded records."""
        self.conn.executemany("DELETE FROM outbox WHERE id = ?", [(int(i),) for i in ids])

    def _trim(self, table: str, limit: int) -> None:
        """Keep the newest ``limit`` rows of ``table`` (checked cheaply via the newest id)."""
        newest = self.conn.execute(f"SELECT MAX(id) - MIN(id) + 1 FROM {table}").fetchone()[0]
        if newest is None or newest <= limit * (1 + self.limits.prune_slack):
            return
        self.conn.execute(f"DELETE FROM {table} WHERE id <= (SELECT id FROM {table} ORDER BY id DESC "
                          "LIMIT 1 OFFSET ?)", (limit,))

    # --- installed models ------------------------------------------------------------------------
    def record_model(self, model: InstalledModel) -> None:
        """Remember an installed model file and make it the active one."""
        self.conn.execute("BEGIN")
        try:
            self.conn.execute("UPDATE models SET active = 0")
            self.conn.execute("INSERT OR REPLACE INTO models (version, path, sha256, max_len, "
                              "installed_at, active) VALUES (?, ?, ?, ?, ?, 1)",
                              (model.version, model.path, model.sha256, model.max_len, model.installed_at))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def active_model(self) -> InstalledModel | None:
        row = self.conn.execute("SELECT version, path, sha256, max_len, installed_at FROM models "
                                "WHERE active = 1").fetchone()
        return InstalledModel(row[0], row[1], row[2], int(row[3]), float(row[4])) if row else None

    # --- metadata --------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def integrity_ok(self) -> bool:
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def close(self) -> None:
        self.conn.close()
