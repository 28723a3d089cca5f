"""Distillation from the cloud while training the device model on lists, and the scored lists it uses."""

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dcrec.cloud.models.cooccurrence import CooccurrenceConfig, CooccurrenceGenerator, fit  # noqa: E402
from dcrec.cloud.training import archs  # noqa: E402
from dcrec.cloud.training.collab import (  # noqa: E402
    RerankTrainConfig,
    TorchScorer,
    distill_loss,
    teacher_probabilities,
    train_reranker,
)
from dcrec.cloud.training.lists import cloud_lists, histories, prefixes, scored_cloud_lists  # noqa: E402
from dcrec.cloud.training.train import trained_with  # noqa: E402

N_ITEMS = 60


def _sequences(n_users: int = 300, seed: int = 0) -> list[np.ndarray]:
    """Users walk a ring of items (i -> i+1 mostly, sometimes i+2): a structure co-occurrence learns."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_users):
        item, seq = int(rng.integers(1, N_ITEMS + 1)), []
        for _ in range(int(rng.integers(5, 12))):
            seq.append(item)
            item = (item - 1 + int(rng.choice([1, 2], p=[0.8, 0.2]))) % N_ITEMS + 1
        out.append(np.asarray(seq, dtype=np.int64))
    return out


def _cloud(seqs: list[np.ndarray]) -> CooccurrenceGenerator:
    cfg = CooccurrenceConfig(neighbours=20)
    nbr_items, nbr_weights, popularity = fit(seqs, N_ITEMS, cfg)
    return CooccurrenceGenerator(nbr_items, nbr_weights, popularity, cfg, "test")


def test_teacher_probabilities_normalise_scores_and_ignore_padding() -> None:
    scores = np.array([[3.0, 1.0, -np.inf], [0.0, 0.0, -np.inf], [2.0, 0.0, -1.0]], dtype=np.float32)
    p = teacher_probabilities(scores)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p[0], [0.75, 0.25, 0.0])
    np.testing.assert_allclose(p[1], [0.5, 0.5, 0.0])  # no signal: uniform over the real items
    np.testing.assert_allclose(p[2], [1.0, 0.0, 0.0])  # negative scores weigh nothing
    t = teacher_probabilities(scores, temperature=1.0)
    np.testing.assert_allclose(t[0, :2], np.exp([3.0, 1.0]) / np.exp([3.0, 1.0]).sum(), rtol=1e-6)
    assert t[0, 2] == 0.0
    # A lower temperature sharpens the same ranking.
    assert teacher_probabilities(scores, temperature=0.25)[0, 0] > t[0, 0]


def test_scored_lists_match_the_plain_lists_and_survive_the_cache(tmp_path: Path) -> None:
    seqs = _sequences()
    gen = _cloud(seqs)
    p = prefixes(seqs)
    lags = np.random.default_rng(1).integers(0, 3, len(p))
    items, scores = scored_cloud_lists(gen, seqs, p, 10, lags, cache_dir=tmp_path)
    np.testing.assert_array_equal(items, cloud_lists(gen, seqs, p, 10, lags))
    real = items > 0
    assert np.all(np.isfinite(scores[real])) and np.all(np.isneginf(scores[~real]))
    # Best first, and each score is the cloud's own score for that item on the stale history.
    assert np.all(np.diff(np.where(real, scores, -1e30), axis=1) <= 1e-6)
    row = int(np.flatnonzero(lags == 0)[0])
    full = gen.score(seqs[p.seq[row]][:p.pos[row]])
    np.testing.assert_allclose(scores[row, real[row]], full[items[row, real[row]]], rtol=1e-6)
    again = scored_cloud_lists(gen, seqs, p, 10, lags, cache_dir=tmp_path)  # from the cache
    np.testing.assert_array_equal(again[0], items)
    np.testing.assert_array_equal(again[1], scores)


def test_distillation_pulls_the_device_towards_the_cloud(tmp_path: Path) -> None:
    seqs = _sequences()
    gen = _cloud(seqs)
    model_opts = {"dim": 16, "max_len": 12, "layers": 1, "heads": 1, "dropout": 0.0}
    base = dict(objective="collab", candidates=10, epochs=4, batch_size=64, full_weight=0.0,
                patience=10, seed=0, model=model_opts)
    train_reranker("sasrec", seqs, gen, N_ITEMS, RerankTrainConfig(**base), tmp_path / "plain")
    taught = train_reranker("sasrec", seqs, gen, N_ITEMS,
                            RerankTrainConfig(**base, distill_weight=5.0), tmp_path / "taught")
    assert taught.best_epoch >= 1
    # Held-out histories: the distance of each model's softmax from the cloud's, over the cloud's list.
    test = _sequences(100, seed=9)
    p = prefixes(test)
    items, scores = scored_cloud_lists(gen, test, p, 10, np.zeros(len(p), dtype=np.int64))
    probs = torch.from_numpy(teacher_probabilities(scores))
    hist = torch.from_numpy(histories(test, p, 12))

    def gap(model_dir: Path) -> float:
        model, _ = archs.load(model_dir)
        with torch.no_grad():
            return float(distill_loss(model.eval(), hist, torch.from_numpy(items), probs))

    assert gap(tmp_path / "taught") < gap(tmp_path / "plain")
    recorded = json.loads((tmp_path / "taught" / "reranker.json").read_text())["train"]
    assert recorded["distill_weight"] == 5.0
    # Still a reranker: it scores a batch like any other.
    scorer = TorchScorer(archs.load(tmp_path / "taught")[0])
    assert scorer.score_batch(hist[:4].numpy(), items[:4]).shape == (4, 10)


def test_distillation_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="distill"):
        RerankTrainConfig(distill_weight=-1.0).validate()
    with pytest.raises(ValueError, match="distillation needs"):
        train_reranker("sasrec", _sequences(20), None, N_ITEMS,
                       RerankTrainConfig(objective="random", distill_weight=1.0), tmp_path / "never")


def test_models_trained_before_a_new_setting_are_still_reused(tmp_path: Path) -> None:
    cfg = RerankTrainConfig(objective="collab", candidates=50)
    recorded = asdict(cfg)
    del recorded["distill_weight"], recorded["distill_temperature"]  # written before they existed
    meta = tmp_path / "reranker.json"
    meta.write_text(json.dumps({"train": recorded}))
    assert trained_with(meta, cfg)
    assert not trained_with(meta, RerankTrainConfig(objective="collab", candidates=50, distill_weight=1.0))
    assert not trained_with(meta, RerankTrainConfig(objective="collab", candidates=60))


def test_out_of_fold_clouds_can_leave_out_the_validation_targets(tmp_path: Path) -> None:
    seqs = _sequences(60)
    seen: list[list[np.ndarray]] = []

    def fit_cloud(sequences: list[np.ndarray]) -> CooccurrenceGenerator:
        seen.append(sequences)
        return _cloud(sequences)

    model_opts = {"dim": 8, "max_len": 12, "layers": 1, "heads": 1, "dropout": 0.0}
    sizes: dict[bool, int] = {}
    for hold_out in (False, True):
        seen.clear()
        cfg = RerankTrainConfig(objective="collab", candidates=8, epochs=1, folds=2, distill_weight=1.0,
                                folds_hold_out_valid=hold_out, model=model_opts)
        train_reranker("sasrec", seqs, _cloud(seqs), N_ITEMS, cfg, tmp_path / str(hold_out),
                       fit_generator=fit_cloud)
        assert len(seen) == 2  # one cloud per fold
        got = [tuple(s) for fold in seen for s in fold]
        if hold_out:  # each is a training sequence without its last item, the validation target
            assert set(got) <= {tuple(s[:-1]) for s in seqs}
        else:
            assert set(got) <= {tuple(s) for s in seqs}
        sizes[hold_out] = sum(len(s) for s in got)
    # Each user lands in one fold, and is in the other fold's cloud: one item less per user.
    assert sizes[False] - sizes[True] == len(seqs)
