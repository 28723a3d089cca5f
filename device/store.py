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
(:mod:`dcrec.device.migrations`); an old file is upgraded in place on open.

A damaged file (0 bytes, not SQLite, malformed pages, a failing ``PRAGMA
quick_check`` on open: about 4 ms at the default limits) is never silently
replaced by an empty store: by default it is moved aside as
``<name>.damaged-<time>``, a fresh file takes what can still be read from it
(:mod:`dcrec.device.store_recovery`), a warning names both files, and
``store.recovery`` says what happened; ``on_damage="raise"`` raises
:class:`StoreError` instead. Any SQLite error later is a :class:`StoreError`
naming the file.

Example::

    store = DeviceStore("device.sqlite")
    store.append(item_id=42, ts=1700000000.0)
    store.recent(50)      # (<=50,) newest items, oldest first
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Concatenate, Literal, ParamSpec, TypeVar

import numpy as np
import sqlite_utils

from dcrec.device.migrations import SchemaTooNew, migrate
from dcrec.device.store_recovery import (
    Damaged,
    StoreRecovery,
    carry_over,
    first_line,
    is_damage,
    quarantine,
    salvage,
)
from dcrec.shared.errors import DeviceDataError

log = logging.getLogger(__name__)

HISTORY_CACHE = 200  # newest events a store keeps in memory by default

Durability = Literal["NORMAL", "FULL"]
OnDamage = Literal["quarantine", "raise"]


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


class StoreError(RuntimeError, DeviceDataError):
    """The SQLite file is unusable (corrupt, newer schema, unwritable); the message names it."""


P = ParamSpec("P")
R = TypeVar("R")


def _sqlite_errors(method: Callable[Concatenate[DeviceStore, P], R]) -> Callable[Concatenate[DeviceStore, P], R]:
    """Any SQLite error of ``method`` becomes a StoreError naming the file (no cost unless raised)."""

    @functools.wraps(method)
    def wrapper(self: DeviceStore, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:  # (SQLite's message may quote junk)
            raise StoreError(f"{self.path}: device store unusable ({e})") from e

    return wrapper


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
    """One device's SQLite file; ``on_damage`` says what opening a damaged file does.

    ``"quarantine"`` (default): move it aside, start a fresh file with what could be
    read from it, log a warning and set :attr:`recovery`; ``"raise"``: raise StoreError.
    A file from a newer runtime is always refused (StoreError), never quarantined.
    """

    def __init__(self, path: str | Path, durability: Durability = "NORMAL",
                 history_cache: int = HISTORY_CACHE, limits: StoreLimits | None = None,
                 on_damage: OnDamage = "quarantine") -> None:
        if durability not in ("NORMAL", "FULL"):
            raise ValueError(f"durability must be NORMAL or FULL, got {durability!r}")
        if on_damage not in ("quarantine", "raise"):
            raise ValueError(f"on_damage must be quarantine or raise, got {on_damage!r}")
        self.limits = limits or StoreLimits()
        self.limits.validate()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.history_cache = history_cache  # the longest history recent() can return
        self.recovery: StoreRecovery | None = None  # set when a damaged file was replaced
        found = self.path.stat() if self.path.is_file() else None
        try:
            if found is not None and found.st_size == 0:
                # (SQLite would take it for a new, empty database: the history would vanish unseen)
                raise Damaged("the file is empty (0 bytes)")
            self._connect(durability, check=found is not None)  # a new file has nothing to check
            self._load()
        except SchemaTooNew as e:
            self._close_quietly()
            raise StoreError(f"{self.path}: {e}") from e
        except (sqlite3.DatabaseError, Damaged, UnicodeDecodeError) as e:
            self._close_quietly()
            if on_damage == "raise" or not is_damage(e):  # a locked or unreadable file is not damaged
                raise StoreError(f"{self.path}: cannot open device store: {e}") from e
            self.recovery = self._recover(str(e), durability, found)

    def _connect(self, durability: Durability, check: bool) -> None:
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self.conn = conn
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={durability}")
        conn.execute("PRAGMA busy_timeout=5000")  # ms; bounded wait on a locked file
        if check:
            result = [str(r[0]) for r in conn.execute("PRAGMA quick_check")]
            if result != ["ok"]:
                raise Damaged("quick_check failed: " + first_line("\n".join(result)))
        self.db = sqlite_utils.Database(conn)
        self.migrated_from = migrate(conn)

    def _close_quietly(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def _recover(self, reason: str, durability: Durability, found: os.stat_result | None) -> StoreRecovery:
        """Move the damaged file aside, open a fresh one and carry over what can be read."""
        now = self.path.stat() if self.path.is_file() else None
        if found is None or now is None or (now.st_dev, now.st_ino) != (found.st_dev, found.st_ino):
            # another process moved it aside first: never quarantine its fresh file
            raise StoreError(f"{self.path}: damaged ({reason}) and replaced while opening; open it again")
        try:
            moved = quarantine(self.path)
        except OSError as e:
            raise StoreError(f"{self.path}: damaged ({reason}) and cannot be moved aside: {e}") from e
        rescued = salvage(moved)
        try:
            self._connect(durability, check=False)
            carry_over(self.conn, rescued)
            self._load()
            self._maybe_prune()
            recovery = StoreRecovery(moved, reason, self._count, len(self._seen))
            # the fleet's operators hear of it too (a new telemetry stream starts here)
            self._enqueue("store_recovered", {"reason": reason[:200], "events_kept": recovery.events_kept,
                                              "seen_kept": recovery.seen_kept}, time.time())
        except sqlite3.DatabaseError as e:
            self._close_quietly()
            raise StoreError(f"{self.path}: damaged ({reason}); a fresh store cannot be made: {e}") from e
        log.warning("%s: device store damaged (%s); moved it to %s and started a fresh store "
                    "keeping %d events and %d consumed items", self.path, reason, moved,
                    recovery.events_kept, recovery.seen_kept)
        return recovery

    def _load(self) -> None:
        """Fill the in-memory caches (newest events, consumed items, count) from the file."""
        conn = self.conn
        self._tail = _Tail(self.history_cache, np.int64)
        self._tail_ts = _Tail(self.history_cache, np.float64)
        rows = conn.execute(
            "SELECT item_id, ts FROM (SELECT id, item_id, ts FROM events ORDER BY id DESC LIMIT ?) "
            "ORDER BY id", (self.history_cache,)).fetchall()
        try:
            for item, ts in rows:
                self._tail.append(int(item))
                self._tail_ts.append(float(ts))
            self._seen: set[int] = {int(r[0]) for r in conn.execute("SELECT item_id FROM seen_items")}
        except (TypeError, ValueError, OverflowError) as e:  # a value no runtime wrote: text, NULL, huge
            raise Damaged(f"unreadable event values ({e})") from e
        self._count = int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    # --- events -------------------------------------------------------------------------------
    @_sqlite_errors
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

    @_sqlite_errors
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

    @_sqlite_errors
    def events_outside(self, n_items: int | None) -> int:
        """Stored events whose item id is outside ``[1, n_items]`` (``[1, ...)`` for None); one scan."""
        hi = n_items if n_items is not None else 2**63 - 1
        return int(self.conn.execute("SELECT COUNT(*) FROM events WHERE item_id < 1 OR item_id > ?",
                                     (hi,)).fetchone()[0])

    @_sqlite_errors
    def events(self) -> list[tuple[int, float]]:
        """Every stored event as (item_id, ts), oldest first (reads the file, not the cache)."""
        try:
            return [(int(i), float(t)) for i, t in
                    self.conn.execute("SELECT item_id, ts FROM events ORDER BY id")]
        except (TypeError, ValueError) as e:  # a value no runtime wrote (text, NULL)
            raise StoreError(f"{self.path}: unreadable event values ({e})") from e

    # --- candidate cache ---------------------------------------------------------------------
    @_sqlite_errors
    def save_list(self, cached: CachedList) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO candidates (slot, list_id, model_version, fetched_at, ttl, items, scores)"
            " VALUES ('current', ?, ?, ?, ?, ?, ?)",
            (cached.list_id, cached.model_version, cached.fetched_at, cached.ttl_seconds,
             cached.items.astype("<i8").tobytes(), cached.scores.astype("<f4").tobytes()))

    @_sqlite_errors
    def load_list(self) -> CachedList | None:
        row = self.conn.execute(
            "SELECT list_id, model_version, fetched_at, ttl, items, scores FROM candidates "
            "WHERE slot = 'current'").fetchone()
        if row is None:
            return None
        try:
            items = np.frombuffer(row[4], dtype="<i8").astype(np.int64)
            scores = np.frombuffer(row[5], dtype="<f4").astype(np.float32)
            if items.shape != scores.shape:
                raise ValueError(f"{items.size} items but {scores.size} scores")
            return CachedList(items, scores, str(row[0]), str(row[1]), float(row[2]), float(row[3]))
        except (TypeError, ValueError) as e:  # a cache: the device asks the cloud again
            log.warning("%s: cached candidate list unreadable (%s); ignoring it", self.path, e)
            return None

    # --- request log and telemetry outbox ------------------------------------------------------
    @_sqlite_errors
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

    @_sqlite_errors
    def request_log(self) -> list[dict[str, object]]:
        return list(self.db["requests"].rows)

    def _enqueue(self, kind: str, payload: dict[str, object], ts: float) -> None:
        self.conn.execute("INSERT INTO outbox (kind, payload, created_at) VALUES (?, ?, ?)",
                          (kind, json.dumps(payload, sort_keys=True), float(ts)))

    @_sqlite_errors
    def enqueue(self, kind: str, payload: dict[str, object], ts: float | None = None) -> None:
        """Queue one telemetry record (JSON-serialisable ``payload``) for upload."""
        self._enqueue(kind, payload, time.time() if ts is None else ts)
        self._trim("outbox", self.limits.max_outbox)

    def outbox(self, limit: int = 100) -> list[tuple[int, str, dict[str, object]]]:
        """The oldest ``limit`` queued records as (id, kind, payload); they stay until :meth:`ack`."""
        out = []
        for i, k, p, _ in self.pending(limit):
            try:
                out.append((i, k, json.loads(p)))
            except ValueError as e:
                raise StoreError(f"{self.path}: outbox record {i} is not JSON ({e})") from e
        return out

    @_sqlite_errors
    def pending(self, limit: int = 100) -> list[tuple[int, str, str, float]]:
        """The oldest ``limit`` queued records as stored: (id, kind, payload JSON, created_at)."""
        # As bytes, decoded leniently: one damaged record must not stall every later upload
        # (the cloud refuses it for good and it is dropped, telemetry.py).
        rows = self.conn.execute("SELECT id, CAST(kind AS BLOB), CAST(payload AS BLOB), created_at "
                                 "FROM outbox ORDER BY id LIMIT ?", (limit,))
        return [(int(i), bytes(k or b"").decode(errors="replace"), bytes(p or b"").decode(errors="replace"),
                 float(c)) for i, k, p, c in rows]

    @_sqlite_errors
    def pending_count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def telemetry_stream(self) -> str:
        """This file's random id for its sequence of outbox ids (made by the schema migration)."""
        return self.get_meta("telemetry_stream") or ""

    @_sqlite_errors
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
    @_sqlite_errors
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

    @_sqlite_errors
    def active_model(self) -> InstalledModel | None:
        row = self.conn.execute("SELECT version, path, sha256, max_len, installed_at FROM models "
                                "WHERE active = 1").fetchone()
        return InstalledModel(row[0], row[1], row[2], int(row[3]), float(row[4])) if row else None

    # --- metadata --------------------------------------------------------------------------------
    @_sqlite_errors
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    @_sqlite_errors
    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def integrity_ok(self) -> bool:
        """Whether SQLite's full integrity check passes; False (not an error) on a damaged file."""
        try:
            return [str(r[0]) for r in self.conn.execute("PRAGMA integrity_check")] == ["ok"]
        except sqlite3.DatabaseError as e:
            log.warning("%s: integrity check failed (%s)", self.path, e)
            return False

    def close(self) -> None:
        self.conn.close()
