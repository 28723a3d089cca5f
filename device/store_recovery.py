"""A damaged store file is moved aside and what can still be read is carried into a fresh one.

:class:`~dcrec.device.store.DeviceStore` calls this when its file is not a sound
SQLite file of this runtime (0 bytes, not SQLite, malformed pages, a failing
``PRAGMA quick_check``): never silently replaced by an empty store.

1. :func:`quarantine` renames the file (with its ``-wal``/``-shm``) to
   ``<name>.damaged-<UTC time>`` beside it; nothing is deleted.
2. :func:`salvage` reads the quarantined copy read-only with SQLite's
   ``writable_schema`` (which lets it past a truncated file's page count):
   events from the oldest forward and the newest backward, each until the
   first unreadable page, the consumed-item set and the key-value metadata.

What is carried over, and what is not:

- events, consumed items and metadata (the learned per-device state: request
  budget, fusion weight, user vector) are kept;
- the telemetry outbox is not, nor the file's ``telemetry_stream`` id: the
  fresh file numbers its outbox from 1 again under a new random stream id, so
  the cloud never takes a new record for one it already has (schema 3,
  :mod:`dcrec.device.migrations`); records still waiting in the damaged file are
  left there (some may have reached the cloud already: sending them again
  under the new stream would count them twice);
- the cached candidate list, the request log and the models table are
  caches the device rebuilds (a request, :class:`~dcrec.device.updates.ModelUpdater`).
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SIDE_FILES = ("-wal", "-shm", "-journal")  # SQLite's companions of a database file
NOT_CARRIED = frozenset({"telemetry_stream"})  # meta keys that belong to one file only


class Damaged(Exception):
    """The file opened but is not sound (0 bytes, a failing quick_check)."""


def is_damage(e: BaseException) -> bool:
    """Whether ``e`` says the file's contents are broken (not that it is locked or unreadable)."""
    if isinstance(e, Damaged | UnicodeDecodeError):  # (the latter: SQLite quoting a junk schema)
        return True
    code = getattr(e, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def first_line(text: str, limit: int = 200) -> str:
    """The first finding of an SQLite report (quick_check lists every bad page), at most ``limit`` chars."""
    lines = [ln for ln in text.strip().splitlines() if ln and not ln.startswith("***")]  # "*** in database main ***"
    return (lines[0] if lines else "no detail")[:limit]


@dataclass(frozen=True)
class StoreRecovery:
    """How a damaged store file was replaced (``DeviceStore.recovery``; None when it opened cleanly)."""

    quarantined: Path  # where the damaged file now lies, beside the store
    reason: str  # what was wrong with it
    events_kept: int  # events carried into the fresh file
    seen_kept: int  # consumed items carried over (these outlive pruned events)


@dataclass
class Salvage:
    """Rows read from a damaged file: events (id, item_id, ts, recorded_at) oldest first."""

    events: list[tuple[int, int, float, float]] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    meta: dict[str, str] = field(default_factory=dict)


def quarantine(path: Path) -> Path:
    """Rename ``path`` and its side files to ``<name>.damaged-<time>[.n]``; returns the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while any(Path(f"{target}{s}").exists() for s in ("", *SIDE_FILES)):
        target = path.with_name(f"{path.name}.damaged-{stamp}.{n}")
        n += 1
    for suffix in SIDE_FILES:  # companions first: a crash between leaves the main file in place
        side = Path(f"{path}{suffix}")
        if side.exists():
            side.rename(f"{target}{suffix}")
    path.rename(target)
    return target


def _rows(conn: sqlite3.Connection, sql: str) -> Iterator[tuple[object, ...]]:
    """The rows of ``sql`` up to the first one SQLite cannot read."""
    try:
        yield from conn.execute(sql)
    except sqlite3.DatabaseError:
        return


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def salvage(path: Path) -> Salvage:
    """Whatever rows of a damaged store can still be read; never raises."""
    out = Salvage()
    had = {s for s in SIDE_FILES if Path(f"{path}{s}").exists()}
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return out
    try:
        conn.execute("PRAGMA writable_schema=ON")  # read past a wrong page count; nothing is written
        events: dict[int, tuple[int, int, float, float]] = {}
        for sql in ("SELECT id, item_id, ts, recorded_at FROM events ORDER BY id",
                    "SELECT id, item_id, ts, recorded_at FROM events ORDER BY id DESC"):
            for i, item, ts, at in _rows(conn, sql):
                if isinstance(i, int) and isinstance(item, int) and _number(ts):
                    events[i] = (i, item, float(ts), float(at) if _number(at) else float(ts))
        out.events = [events[i] for i in sorted(events)]
        out.seen = {v for (v,) in _rows(conn, "SELECT item_id FROM seen_items") if isinstance(v, int)}
        out.seen.update(e[1] for e in out.events)
        out.meta = {k: v for k, v in _rows(conn, "SELECT key, value FROM meta")
                    if isinstance(k, str) and isinstance(v, str) and k not in NOT_CARRIED}
    except sqlite3.Error:  # e.g. the pragma on a file that is not SQLite at all
        pass
    finally:
        conn.close()
        for s in set(SIDE_FILES) - had:  # the reader's own -wal/-shm: the quarantine stays as it was
            Path(f"{path}{s}").unlink(missing_ok=True)
    return out


def carry_over(conn: sqlite3.Connection, rescued: Salvage) -> None:
    """Write ``rescued`` into a fresh store file (migrated, empty) in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany("INSERT OR IGNORE INTO events (id, item_id, ts, recorded_at) VALUES (?, ?, ?, ?)",
                         rescued.events)
        conn.executemany("INSERT OR IGNORE INTO seen_items (item_id) VALUES (?)",
                         [(i,) for i in sorted(rescued.seen)])
        conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", sorted(rescued.meta.items()))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
