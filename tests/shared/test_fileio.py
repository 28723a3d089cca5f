"""Replacing a file: a reader sees the old file or the whole new one; a failed write changes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dcrec.shared.fileio import replacing, write_atomic


def test_write_atomic_takes_bytes_and_text(tmp_path: Path) -> None:
    write_atomic(tmp_path / "a", b"\x00\x01")
    write_atomic(tmp_path / "b.json", '{"x": "é"}')
    assert (tmp_path / "a").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.json").read_text(encoding="utf-8") == '{"x": "é"}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b.json"]


def test_replacing_keeps_the_suffix_for_numpy_and_renames_at_the_end(tmp_path: Path) -> None:
    target = tmp_path / "lists.npz"
    with replacing(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".npz" and tmp != target
        np.savez(tmp, a=np.arange(3))
        assert not target.exists()  # nothing visible until the block ends
    assert np.array_equal(np.load(target)["a"], np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["lists.npz"]


def test_a_failed_write_leaves_the_old_file_and_no_debris(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), replacing(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_two_writers_get_their_own_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "e.npy"
    with replacing(target) as a, replacing(target) as b:
        assert a != b
        a.write_bytes(b"a")
        b.write_bytes(b"b")
    assert target.read_bytes() == b"a"  # the outer block ended last
