"""Versioned schema of the device store: each step upgrades a file by one version, in one transaction.

The version lives in SQLite's ``PRAGMA user_version``. A phone may skip app
releases, so every step from the file's version to :data:`SCHEMA_VERSION`
runs in order; a crash mid-step rolls that step back and the next start
retries it. A file from a newer runtime is refused rather than guessed at.

History:

1. events, the cached candidate list, the request log, key-value metadata.
2. ``seen_items`` (what the user consumed, kept when old events are pruned),
   ``outbox`` (telemetry waiting to be uploaded), ``models`` (installed
   reranker files), and an index on ``requests.ts`` for pruning by age.
3. ``outbox`` ids never reused (``AUTOINCREMENT``: SQLite otherwise restarts
   at 1 once every row is deleted, and the cloud would take new records for
   resent ones), and a random ``telemetry_stream`` id in ``meta`` that names
   this file's sequence of outbox ids to the cloud.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

SCHEMA_VERSION = 3


class SchemaTooNew(RuntimeError):
    """The file was written by a newer runtime."""


def _v1(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, item_id INTEGER, "
                 "ts FLOAT, recorded_at FLOAT)")
    conn.execute("CREATE TABLE IF NOT EXISTS candidates (slot TEXT PRIMARY KEY, list_id TEXT, "
                 "model_version TEXT, fetched_at FLOAT, ttl FLOAT, items BLOB, scores BLOB)")
    conn.execute("CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY, ts FLOAT, reason TEXT, "
                 "ok INTEGER, latency_ms FLOAT, list_id TEXT, error TEXT)")
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")


def _v2(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS seen_items (item_id INTEGER PRIMARY KEY)")
    conn.execute("INSERT OR IGNORE INTO seen_items (item_id) SELECT DISTINCT item_id FROM events")
    conn.execute("CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, "
                 "payload TEXT NOT NULL, created_at FLOAT NOT NULL)")
    conn.execute("CREATE TABLE IF NOT EXISTS models (version TEXT PRIMARY KEY, path TEXT NOT NULL, "
                 "sha256 TEXT NOT NULL, max_len INTEGER NOT NULL, installed_at FLOAT NOT NULL, "
                 "active INTEGER NOT NULL DEFAULT 0)")
    conn.execute("CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts)")


def _v3(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE outbox_v3 (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, "
                 "payload TEXT NOT NULL, created_at FLOAT NOT NULL)")
    conn.execute("INSERT INTO outbox_v3 (id, kind, payload, created_at) "
                 "SELECT id, kind, payload, created_at FROM outbox ORDER BY id")
    conn.execute("DROP TABLE outbox")
    conn.execute("ALTER TABLE outbox_v3 RENAME TO outbox")
    conn.execute("INSERT OR IGNORE INTO meta (key, value) "
                 "VALUES ('telemetry_stream', lower(hex(randomblob(8))))")


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _v1, 2: _v2, 3: _v3}


def version_of(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the file to ``target``; returns the version it had. ``conn`` must be in autocommit mode."""
    start = version_of(conn)
    if start > SCHEMA_VERSION:
        raise SchemaTooNew(f"store schema {start} is newer than this runtime's {SCHEMA_VERSION}")
    for v in range(start + 1, target + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[v](conn)
            conn.execute(f"PRAGMA user_version={v}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return start
