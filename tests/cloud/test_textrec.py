"""The textrec backend end to end on a small synthetic catalogue with real MiniLM text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dcrec.cloud.models import backends
from dcrec.cloud.models.generator import CandidateGenerator
from dcrec.cloud.models.textrec.backend import (
    TextRecGenerator,
    holdout_valid,
    load_generator,
    split_options,
)
from dcrec.cloud.models.textrec.model import TextRecConfig
from dcrec.shared.data import Dataset

SMALL = {"dim": 32, "n_heads": 2, "n_layers": 1, "max_len": 10, "dropout": 0.1,
         "batch_size": 32, "lr": 3e-3, "valid_users": 40, "patience": 50}


@pytest.fixture(scope="module")
def trained(synthetic_dataset: Dataset, embed_cache: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("textrec")
    backends.train("textrec", synthetic_dataset, list(synthetic_dataset.sequences()), out,
                   {**SMALL, "epochs": 20, "cache_dir": str(embed_cache)})
    return out


def test_generator_returns_distinct_valid_unseen_items_best_first(trained: Path) -> None:
    gen = backends.load_generator(trained)
    assert isinstance(gen, CandidateGenerator) and isinstance(gen, TextRecGenerator)
    assert gen.name == "textrec" and gen.version.startswith("textrec-")
    histories = [np.array([1, 2, 3]), np.array([17, 18]), np.array([], dtype=np.int64)]
    lists = gen.generate(histories, count=12)
    assert len(lists) == 3
    for hist, c in zip(histories, lists, strict=True):
        assert len(c.items) == 12 and len(set(c.items.tolist())) == 12
        assert c.items.min() >= 1 and c.items.max() <= gen.n_items
        assert not set(c.items.tolist()) & set(hist.tolist())
        assert np.all(np.diff(c.scores) <= 0) and np.all(np.isfinite(c.scores))
    # Without exclusion the user's own items may come back; the list is still distinct.
    [again] = gen.generate([np.array([1, 2, 3])], count=gen.n_items, exclude_seen=False)
    assert sorted(again.items.tolist()) == list(range(1, gen.n_items + 1))
    # Asking for more than can be given returns every unseen item once.
    [allc] = gen.generate([np.array([1, 2, 3])], count=10_000)
    assert len(allc.items) == gen.n_items - 3


def test_learns_the_families(trained: Path, families: dict[str, list[int]]) -> None:
    gen = backends.load_generator(trained)
    for ids in families.values():
        [c] = gen.generate([np.array(ids[:3])], count=4)
        # The history's family dominates the top of the list.
        assert len(set(c.items.tolist()) & set(ids)) >= 3, (ids, c.items)


def test_cold_item_is_recommended_from_its_text(
    trained: Path, families: dict[str, list[int]], cold: list[int]
) -> None:
    gen = backends.load_generator(trained)
    state = torch.load(trained / "model.pt", weights_only=True)
    warm = state["warm"].numpy()
    assert not warm[cold].any(), "cold items must have no id embedding"
    hits = 0
    for ids in families.values():
        [c] = gen.generate([np.array(ids[:4])], count=5)
        hits += int(ids[-1] in c.items.tolist())
    # Unseen in training, each family's cold item is still found by its text.
    assert hits >= 4, hits


def test_checkpoints_load_with_weights_only(trained: Path) -> None:
    ckpt = torch.load(trained / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 19 and set(ckpt) >= {"model", "optim", "best_ndcg10", "done"}
    best = torch.load(trained / "checkpoints" / "best.pt", weights_only=True)
    final = torch.load(trained / "model.pt", weights_only=True)
    assert all(torch.equal(best[k], final[k]) for k in best)
    meta = json.loads((trained / "config.json").read_text())
    assert meta["epochs_run"] == 20 and 0 <= meta["best_epoch"] < 20


def test_resume_continues_to_the_same_weights_as_one_run(
    synthetic_dataset: Dataset, embed_cache: Path, tmp_path: Path
) -> None:
    seqs = list(synthetic_dataset.sequences())
    opts = {**SMALL, "cache_dir": str(embed_cache), "patience": 100}
    backends.train("textrec", synthetic_dataset, seqs, tmp_path / "one", {**opts, "epochs": 4})
    backends.train("textrec", synthetic_dataset, seqs, tmp_path / "two", {**opts, "epochs": 2})
    ckpt = torch.load(tmp_path / "two" / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    backends.train("textrec", synthetic_dataset, seqs, tmp_path / "two", {**opts, "epochs": 4},
                   resume=True)
    a = torch.load(tmp_path / "one" / "checkpoints" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert load_generator(tmp_path / "two").version == load_generator(tmp_path / "one").version


def test_resume_refuses_another_model_config(
    synthetic_dataset: Dataset, embed_cache: Path, tmp_path: Path
) -> None:
    seqs = list(synthetic_dataset.sequences())
    opts = {**SMALL, "cache_dir": str(embed_cache), "epochs": 1}
    backends.train("textrec", synthetic_dataset, seqs, tmp_path, opts)
    with pytest.raises(ValueError, match="another model config"):
        backends.train("textrec", synthetic_dataset, seqs, tmp_path, {**opts, "dim": 16},
                       resume=True)


def test_id_only_ablation_cannot_score_cold_items(
    synthetic_dataset: Dataset, tmp_path: Path, cold: list[int]
) -> None:
    seqs = list(synthetic_dataset.sequences())
    backends.train("textrec", synthetic_dataset, seqs, tmp_path,
                   {**SMALL, "epochs": 2, "use_text": False, "id_dropout": 0.0})
    assert not (tmp_path / "text_emb.npy").exists()
    gen = load_generator(tmp_path)
    scores = gen.score([np.array([1, 2])])[0]
    assert np.all(scores[cold] == 0.0)  # no id vector and no text: nothing to score


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown textrec options"):
        split_options({"dimension": 64})
    with pytest.raises(ValueError, match="dropout"):
        TextRecConfig(n_items=5, **split_options({"dropout": 1.5})[0])
    with pytest.raises(ValueError, match="divisible"):
        TextRecConfig(n_items=5, dim=30, n_heads=4)
    _, tcfg, extras = split_options({"epochs": 3, "seed": 7, "valid_users": 10})
    assert tcfg.epochs == 3 and tcfg.seed == 7 and extras["valid_users"] == 10


def test_holdout_valid_takes_the_newest_item_of_a_sample() -> None:
    seqs = [np.arange(1, 6), np.arange(1, 3), np.arange(10, 14)]
    train, hists, targets = holdout_valid(seqs, n_users=5, seed=0)
    assert sorted(targets.tolist()) == [5, 13]  # the length-2 sequence is not eligible
    assert [len(s) for s in train] == [4, 2, 3]
    assert all(np.array_equal(h, t) for h, t in zip(hists, [train[0], train[2]], strict=True))


def test_long_sequences_are_cut_into_windows_so_every_event_is_a_target() -> None:
    from dcrec.cloud.models.textrec.train import _windows

    seq = np.arange(1, 12)  # 11 items, windows of 4 + 1
    w = _windows([seq, np.array([7])], max_len=4)
    rows = [r[r > 0].tolist() for r in w]
    assert rows == [[7, 8, 9, 10, 11], [3, 4, 5, 6, 7], [1, 2, 3]]
    targets = sorted(t for r in rows for t in r[1:])
    assert targets == list(range(2, 12))  # each event after the first predicted exactly once
    newest = _windows([seq], max_len=4, all_windows=False)
    assert [r[r > 0].tolist() for r in newest] == [[7, 8, 9, 10, 11]]
