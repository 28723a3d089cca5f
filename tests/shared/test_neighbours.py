"""The cloud's neighbour index: built from a real cloud model, local lists, the file format."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from dcrec.cloud.models.backends import load_generator
from dcrec.cloud.models.neighbours import build
from dcrec.device.fusion import blend_lists
from dcrec.shared.neighbours import NeighbourIndex, NeighbourIndexError


@pytest.fixture(scope="module")
def index(cloud_model_dir: Path) -> NeighbourIndex:
    return build(load_generator(cloud_model_dir), neighbours=20)


def tiny() -> NeighbourIndex:
    items = np.array([[0, 0], [2, 3], [1, 3], [1, 2], [1, 0]])
    scores = np.array([[0, 0], [0.8, 0.4], [0.6, 0.5], [1.0, 0.2], [0.3, 0.0]])
    return NeighbourIndex.from_lists(items, scores, "c1")


def test_each_row_is_the_clouds_own_list_for_that_item(cloud_model_dir: Path, index: NeighbourIndex) -> None:
    gen = load_generator(cloud_model_dir)
    assert index.n_items == gen.n_items and index.neighbours == 20 and index.cloud_version == gen.version
    for item in (1, 50, 173, gen.n_items):
        [c] = gen.generate([np.array([item])], 20)
        np.testing.assert_array_equal(index.items[item], c.items)
        assert item not in index.items[item]
        # scores keep the cloud's order (scaled by one constant for the whole index)
        assert np.all(np.diff(index.scores[item]) <= 1e-7)


def test_a_one_item_history_gives_back_its_row_and_the_newest_item_votes_most(index: NeighbourIndex) -> None:
    items, scores = index.local_list(np.array([7]), count=20)
    np.testing.assert_array_equal(items, index.items[7])
    # two items: a weighted vote, newest weight 1, the older one decay
    items, scores = index.local_list(np.array([3, 7]), count=500, decay=0.5)
    want: dict[int, float] = {}
    for item, w in ((7, 1.0), (3, 0.5)):
        for j, s in zip(index.items[item], index.scores[item], strict=True):
            want[int(j)] = want.get(int(j), 0.0) + w * float(s)
    assert set(items.tolist()) == set(want)
    for j, s in zip(items, scores, strict=True):
        assert s == pytest.approx(want[int(j)], rel=1e-5)  # the same float16 rows summed
    assert np.all(np.diff(scores) <= 0)


def test_local_lists_honour_count_exclusions_recency_and_ties() -> None:
    ix = tiny()
    items, scores = ix.local_list(np.array([1]), count=5)
    assert items.tolist() == [2, 3] and scores[0] == pytest.approx(0.8, abs=1e-3)  # float16
    assert ix.local_list(np.array([1]), count=1)[0].tolist() == [2]
    assert ix.local_list(np.array([1]), count=5, exclude={2})[0].tolist() == [3]
    assert ix.local_list(np.array([1]), count=5, exclude=np.array([2, 9]))[0].tolist() == [3]
    # only the newest ``recent`` items vote: 4 points at 1 only
    assert ix.local_list(np.array([1, 4]), count=5, recent=1)[0].tolist() == [1]
    # ids outside the index and padding are ignored; nothing left gives empty arrays
    assert ix.local_list(np.array([0, 99]), count=5)[0].size == 0
    assert ix.local_list(np.array([4]), count=5, exclude={1})[0].size == 0
    # equal votes: the smaller id first
    flat = NeighbourIndex.from_lists(np.array([[0, 0], [3, 2], [1, 0], [1, 0]]),
                                     np.array([[0, 0], [0.5, 0.5], [1, 0], [1, 0]]), "c")
    assert flat.local_list(np.array([1]), count=2)[0].tolist() == [2, 3]
    with pytest.raises(ValueError, match="count"):
        ix.local_list(np.array([1]), count=0)


def test_the_file_round_trips_and_damage_is_refused_with_a_clear_error(tmp_path: Path,
                                                                       index: NeighbourIndex) -> None:
    path = tmp_path / "n.npz"
    sha = index.save(path)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    back = NeighbourIndex.load(path, sha256=sha)
    np.testing.assert_array_equal(back.items, index.items)
    np.testing.assert_allclose(back.scores, index.scores, atol=1e-3)  # float16 on disk
    assert back.cloud_version == index.cloud_version
    # 20 neighbours x 1,682 items: uint16 ids and float16 scores
    assert path.stat().st_size < (index.n_items + 1) * 20 * 4 + 4096
    with pytest.raises(NeighbourIndexError, match="sha256"):
        NeighbourIndex.load(path, sha256="0" * 64)
    (tmp_path / "junk.npz").write_bytes(b"not an index")
    with pytest.raises(NeighbourIndexError, match="not a neighbour index"):
        NeighbourIndex.load(tmp_path / "junk.npz")
    with pytest.raises(NeighbourIndexError, match="cannot read"):
        NeighbourIndex.load(tmp_path / "missing.npz")

    def npz(**arrays: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    meta = lambda **m: np.frombuffer(json.dumps(m).encode(), dtype=np.uint8)  # noqa: E731
    good = dict(items=np.array([[0], [2], [1]], np.uint16), scores=np.array([[0], [1], [1]], np.float16))
    assert NeighbourIndex.from_bytes(npz(**good, meta=meta(format=1, n_items=2, neighbours=1))).n_items == 2
    with pytest.raises(NeighbourIndexError, match="format"):
        NeighbourIndex.from_bytes(npz(**good, meta=meta(format=9, n_items=2, neighbours=1)))
    with pytest.raises(NeighbourIndexError, match="do not match the declared"):
        NeighbourIndex.from_bytes(npz(**good, meta=meta(format=1, n_items=5, neighbours=1)))
    with pytest.raises(NeighbourIndexError, match="missing arrays"):
        NeighbourIndex.from_bytes(npz(items=good["items"], meta=meta(format=1, n_items=2, neighbours=1)))
    bad_ids = dict(good, items=np.array([[0], [7], [1]], np.uint16))
    with pytest.raises(NeighbourIndexError, match="item ids"):
        NeighbourIndex.from_bytes(npz(**bad_ids, meta=meta(format=1, n_items=2, neighbours=1)))
    bad_scores = dict(good, scores=np.array([[0], [np.nan], [1]], np.float16))
    with pytest.raises(NeighbourIndexError, match="finite"):
        NeighbourIndex.from_bytes(npz(**bad_scores, meta=meta(format=1, n_items=2, neighbours=1)))


def test_blending_keeps_both_lists_and_weighs_them() -> None:
    cached_items, cached_scores = np.array([10, 11, 12]), np.array([3.0, 2.0, 1.0])
    local_items, local_scores = np.array([12, 20]), np.array([0.9, 0.1])
    items, scores = blend_lists(cached_items, cached_scores, local_items, local_scores, 0.5)
    assert items.tolist() == [10, 11, 12, 20]  # the cached list first, the local list's new items after
    # ranks: cached 1, 0.5, 0; local 1, 0
    np.testing.assert_allclose(scores, [0.5, 0.25, 0.5, 0.0])
    _, only_cached = blend_lists(cached_items, cached_scores, local_items, local_scores, 0.0)
    np.testing.assert_allclose(only_cached, [1.0, 0.5, 0.0, 0.0])
    _, only_local = blend_lists(cached_items, cached_scores, local_items, local_scores, 1.0)
    np.testing.assert_allclose(only_local, [0.0, 0.0, 1.0, 0.0])
    items, scores = blend_lists(np.zeros(0, np.int64), np.zeros(0), local_items, local_scores, 0.75)
    assert items.tolist() == [12, 20] and scores[0] > scores[1]
    with pytest.raises(ValueError, match="weight"):
        blend_lists(cached_items, cached_scores, local_items, local_scores, 1.5)
