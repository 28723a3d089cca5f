"""The ensemble backend on the synthetic catalogue: real members, weights chosen on validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dcrec.cloud.models import backends
from dcrec.cloud.models.ensemble import EnsembleGenerator, choose_weights, member_score
from dcrec.cloud.models.generator import CandidateGenerator, catalogue_scores
from dcrec.cloud.models.textrec.train import _sampled_loss
from dcrec.shared.data import Dataset

SMALL = {"dim": 32, "n_heads": 2, "n_layers": 1, "max_len": 10, "dropout": 0.1,
         "batch_size": 32, "lr": 3e-3, "patience": 50, "epochs": 8}


def _members(cache: Path) -> list[dict]:
    return [
        {"backend": "textrec", "options": {**SMALL, "cache_dir": str(cache)}},
        {"backend": "textrec", "options": {**SMALL, "use_text": False, "id_dropout": 0.0,
                                           "loss": "sampled", "n_negatives": 16}},
        {"backend": "cooccurrence", "options": {}},
    ]


@pytest.fixture(scope="module")
def trained(synthetic_dataset: Dataset, embed_cache: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ensemble")
    backends.train("ensemble", synthetic_dataset, list(synthetic_dataset.sequences()), out,
                   {"members": _members(embed_cache), "valid_users": 40})
    return out


def test_lists_are_valid_and_blend_the_members(trained: Path, synthetic_dataset: Dataset) -> None:
    gen = backends.load_generator(trained)
    assert isinstance(gen, CandidateGenerator) and isinstance(gen, EnsembleGenerator)
    meta = json.loads((trained / "ensemble.json").read_text())
    assert len(meta["weights"]) == 3 and sum(meta["weights"]) == pytest.approx(1.0)
    # The chosen blend is at least as good on validation as every member alone (grid corners).
    for i in range(3):
        assert meta["valid_ndcg10"] >= meta[f"member{i}_ndcg10"] - 1e-12
    hist = np.array([1, 2, 3])
    [c] = gen.generate([hist], count=10)
    assert len(c.items) == 10 and len(set(c.items.tolist())) == 10
    assert not set(c.items.tolist()) & {1, 2, 3}
    assert np.all(np.diff(c.scores) <= 0)
    # The score is exactly the weighted sum of the members' log-probabilities.
    expect = sum(w * member_score(m, [hist]) for w, m in zip(gen.weights, gen.members, strict=True))
    got = gen.score([hist]).astype(np.float64)
    finite = np.isfinite(expect)
    np.testing.assert_allclose(got[finite], expect[finite], rtol=1e-5, atol=1e-5)


def test_a_second_train_reuses_the_members(trained: Path, synthetic_dataset: Dataset,
                                           embed_cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = {p: p.stat().st_mtime_ns for p in trained.glob("members/*/backend.json")}
    caplog.set_level("INFO", logger="dcrec.cloud.models.ensemble")
    backends.train("ensemble", synthetic_dataset, list(synthetic_dataset.sequences()), trained,
                   {"members": _members(embed_cache), "valid_users": 40})
    assert {p: p.stat().st_mtime_ns for p in trained.glob("members/*/backend.json")} == before
    assert caplog.text.count("already trained") == 3


def test_choose_weights_finds_the_informative_member() -> None:
    rng = np.random.default_rng(0)
    n, b = 50, 200
    targets = rng.integers(1, n + 1, size=b)
    good = rng.normal(size=(b, n + 1))
    good[np.arange(b), targets] += 4.0  # knows the answer
    noise = rng.normal(size=(b, n + 1))
    for s in (good, noise):
        s[:, 0] = -np.inf
    hists = [np.array([], dtype=np.int64)] * b
    w, fig = choose_weights([noise, good], hists, targets)
    assert w[1] > w[0] and fig["valid_ndcg10"] >= fig["member1_ndcg10"]


def test_options_are_checked(synthetic_dataset: Dataset, tmp_path: Path) -> None:
    seqs = list(synthetic_dataset.sequences())
    with pytest.raises(ValueError, match="unknown ensemble options"):
        backends.train("ensemble", synthetic_dataset, seqs, tmp_path, {"memberz": []})
    with pytest.raises(ValueError, match="non-empty list"):
        backends.train("ensemble", synthetic_dataset, seqs, tmp_path, {"members": []})
    with pytest.raises(ValueError, match="cannot contain an ensemble"):
        backends.train("ensemble", synthetic_dataset, seqs, tmp_path,
                       {"members": [{"backend": "ensemble"}]})


def test_catalogue_scores_fall_back_to_a_catalogue_long_list(synthetic_dataset: Dataset,
                                                             tmp_path: Path) -> None:
    backends.train("cooccurrence", synthetic_dataset, list(synthetic_dataset.sequences()), tmp_path, {})
    gen = backends.load_generator(tmp_path)

    class ListsOnly:  # a backend with generate() only
        name, version, n_items = "lists", "1", gen.n_items

        def generate(self, histories, count, exclude_seen=True):  # type: ignore[no-untyped-def]
            return gen.generate(histories, count, exclude_seen)

    h = [np.array([1, 2])]
    full = catalogue_scores(gen, h)
    fallback = catalogue_scores(ListsOnly(), h)
    finite = np.isfinite(fallback)
    np.testing.assert_allclose(fallback[finite], full[finite], rtol=1e-6)


def test_sampled_loss_masks_accidental_hits_and_matches_a_direct_softmax() -> None:
    torch.manual_seed(0)
    table = torch.randn(6, 4)  # 5 items + padding
    h = torch.randn(1, 3, 4)
    tgt = torch.tensor([[0, 2, 3]])
    mask = tgt > 0
    torch.manual_seed(1)
    loss = _sampled_loss(h, tgt, mask, table, n_negatives=50)
    torch.manual_seed(1)
    neg = torch.randint(1, 6, (2, 50))
    hp, tp = h[mask], tgt[mask]
    expect = 0.0
    for p in range(2):
        negs = neg[p][neg[p] != tp[p]]
        logits = torch.cat([(hp[p] * table[tp[p]]).sum().view(1), table[negs] @ hp[p]])
        expect += -torch.log_softmax(logits, 0)[0]
    assert float(loss) == pytest.approx(float(expect) / 2, rel=1e-5)


def test_the_neighbour_index_comes_from_the_ensembles_own_lists(trained: Path) -> None:
    from dcrec.cloud.models.neighbours import build

    gen = backends.load_generator(trained)
    index = build(gen, neighbours=5)
    for item in (1, 9, 17):
        [c] = gen.generate([np.array([item])], count=5)
        assert index.items[item][: len(c.items)].tolist() == c.items.tolist()
