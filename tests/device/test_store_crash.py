"""The device's SQLite store survives 100 kill -9 during writes with no acknowledged event lost.

A helper process imports the store once and forks one writer per round (a
fork per round keeps 100 rounds to a few seconds; the helper has no threads,
so forking it is safe). Each writer appends events, batches, cached lists and
metadata, and acknowledges every committed event on the shared pipe; the test
SIGKILLs it at a random point while it is still writing. At the end every
acknowledged event must be in the file and ``PRAGMA integrity_check`` must say ok.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dcrec.device.store import DeviceStore

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 100

HELPER = textwrap.dedent("""
    import os, sys
    import numpy as np
    from dcrec.device.store import CachedList, DeviceStore

    path = sys.argv[1]
    for line in sys.stdin:
        rnd = int(line)
        pid = os.fork()
        if pid == 0:  # the writer: runs until it is killed
            s = DeviceStore(path)
            i = 0
            while True:
                i += 1
                base = rnd * 100_000 + i * 10
                if i % 5 == 0:  # a batch commits as one transaction
                    items = np.arange(base, base + 4)
                    s.append_many(items, items.astype(float))
                    acked = list(items)
                else:
                    s.append(base, float(base))
                    acked = [base]
                if i % 3 == 0:
                    s.save_list(CachedList(np.arange(1, 101), np.linspace(1, 0, 100, dtype=np.float32),
                                           f"L{base}", "m", float(base), 60.0))
                    s.set_meta("last", str(base))
                os.write(1, b"".join(b"ack %d\\n" % a for a in acked))
        os.write(1, b"pid %d\\n" % pid)
        os.waitpid(pid, 0)
        os.write(1, b"dead\\n")
""")


@pytest.mark.timeout(120)
def test_store_survives_100_kills_during_writes(tmp_path: Path) -> None:
    path = tmp_path / "device.sqlite"
    rng = random.Random(7)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    helper = subprocess.Popen([sys.executable, "-c", HELPER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=env, cwd=REPO, bufsize=0)
    assert helper.stdin is not None and helper.stdout is not None
    acked: set[int] = set()
    start = time.monotonic()
    try:
        for rnd in range(ROUNDS):
            want = rng.randint(1, 40)  # kill after this many acknowledgements, mid-stream
            helper.stdin.write(f"{rnd}\n".encode())
            pid, got = 0, 0
            while not pid or got < want:
                line = helper.stdout.readline()
                assert line, "helper died"
                kind, _, value = line.decode().partition(" ")
                if kind == "pid":
                    pid = int(value)
                elif kind == "ack":
                    acked.add(int(value))
                    got += 1
            os.kill(pid, signal.SIGKILL)
            for line in iter(helper.stdout.readline, b""):
                if line == b"dead\n":
                    break
                if line.startswith(b"ack "):  # committed before the kill landed
                    acked.add(int(line.split()[1]))
            if rnd % 25 == 24:  # the file must be sound after any crash, not just the last
                conn = sqlite3.connect(path)
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                conn.close()
    finally:
        helper.stdin.close()
        helper.wait(10)
    store = DeviceStore(path)
    stored = [i for i, _ in store.events()]
    assert store.integrity_ok()
    assert len(stored) == len(set(stored))  # no event written twice
    missing = acked - set(stored)
    assert not missing, f"{len(missing)} acknowledged events lost"
    assert len(acked) >= ROUNDS  # the kills really landed during a stream of writes
    assert store.load_list() is not None and store.get_meta("last") is not None
    assert time.monotonic() - start < 60
