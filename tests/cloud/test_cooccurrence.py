from pathlib import Path

import numpy as np
import pytest

from dcrec.cloud.models import backends
from dcrec.cloud.models.cooccurrence import CooccurrenceConfig, fit
from dcrec.shared.metrics import ranks_in_lists


def test_follow_up_items_rank_first() -> None:
    seqs = [np.array([1, 2, 3]), np.array([1, 2, 4]), np.array([5, 1, 2])]
    nbr, wts, pop = fit(seqs, 5, CooccurrenceConfig(window=1))
    assert nbr[1, 0] == 2  # 2 follows 1 every time
    assert pop.tolist() == [0, 3, 3, 1, 1, 1]
    assert np.all(np.diff(wts[1][wts[1] > 0]) <= 0)


def test_generator_contract(cloud_model_dir: Path, ml_split) -> None:  # type: ignore[no-untyped-def]
    gen = backends.load_generator(cloud_model_dir)
    assert gen.name == "cooccurrence" and gen.n_items == 1682 and gen.version
    hist = ml_split.cloud_sequences()[0]
    [c] = gen.generate([hist], count=100)
    assert c.items.size == 100 and len(set(c.items.tolist())) == 100
    assert np.all((c.items >= 1) & (c.items <= 1682))
    assert not np.isin(c.items, hist).any()
    assert np.all(np.diff(c.scores) <= 0)
    [c2] = gen.generate([hist], count=100, exclude_seen=False)
    assert np.isin(c2.items, hist).any()


def test_better_than_popularity_on_the_stream(cloud_model_dir: Path, ml_split) -> None:  # type: ignore[no-untyped-def]
    gen = backends.load_generator(cloud_model_dir)
    seqs = ml_split.cloud_sequences()
    users = range(0, 943, 3)
    hists = [seqs[u] for u in users]
    targets = np.array([ml_split.stream_events(u)[0][0] for u in users])
    lists = np.stack([c.items[:20] for c in gen.generate(hists, 20)])
    hr_model = float((ranks_in_lists(lists, targets) >= 0).mean())
    popular = np.argsort(-np.bincount(np.concatenate(seqs), minlength=1683))
    pop_lists = np.stack([popular[~np.isin(popular, h)][:20] for h in hists])
    hr_pop = float((ranks_in_lists(pop_lists, targets) >= 0).mean())
    assert hr_model > hr_pop


def test_unknown_option_and_backend_are_rejected(tmp_path: Path, ml100k) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="unknown cooccurrence options"):
        backends.train("cooccurrence", ml100k, [np.array([1, 2])], tmp_path, {"windw": 3})
    with pytest.raises(backends.BackendError, match="unknown backend"):
        backends.train("nope", ml100k, [], tmp_path)
    with pytest.raises(backends.BackendError, match="not a model directory"):
        backends.load_generator(tmp_path / "empty")


def test_top_k_is_a_total_order_whatever_k() -> None:
    from dcrec.cloud.models.generator import top_k

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(5, 40)).astype(np.float32)  # many ties
    scores[:, 3] = -np.inf
    for k in (1, 7, 20, 40):
        ids, vals = top_k(scores, k)
        for row in range(5):
            want = sorted(range(40), key=lambda j: (-scores[row, j], j))[:k]
            assert ids[row].tolist() == want
            assert np.array_equal(vals[row], scores[row, want])


def test_batch_answers_equal_single_answers(cloud_model_dir: Path, ml_split) -> None:  # type: ignore[no-untyped-def]
    gen = backends.load_generator(cloud_model_dir)
    hists = [s[-25:] for s in ml_split.cloud_sequences()[:30]] + [np.array([5])]
    together = gen.generate(hists, 80)
    for h, c in zip(hists, together, strict=True):
        [alone] = gen.generate([h], 80)
        assert np.array_equal(alone.items, c.items) and np.array_equal(alone.scores, c.scores)
        [short] = gen.generate([h], 30)
        assert np.array_equal(short.items, c.items[:30])  # a shorter list is a prefix
