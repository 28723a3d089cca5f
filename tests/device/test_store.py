import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device.store import CachedList, DeviceStore, StoreError


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
        DeviceStore(path)
    assert path.read_bytes().startswith(b"this is not")  # nothing overwritten


def test_bad_durability_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DeviceStore(tmp_path / "d.sqlite", durability="OFF")  # type: ignore[arg-type]
    assert not os.path.exists(tmp_path / "d.sqlite")
