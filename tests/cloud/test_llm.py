"""The generative backend: prefix tree, prompts, constrained beam search on the real
SmolLM2, the CandidateGenerator contract, and one LoRA step on CPU.

The model loads once for the module (a GGUF is converted once per machine,
then loads in about a second).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from dcrec.cloud.models import backends
from dcrec.cloud.models.generator import CandidateGenerator
from dcrec.cloud.models.llm.backend import LLMConfig, load_model, load_tokenizer, local_model_dir
from dcrec.cloud.models.llm.decode import BeamConfig, beam_search
from dcrec.cloud.models.llm.finetune_lora import TrainConfig, finetune
from dcrec.cloud.models.llm.lora import LoRAConfig, merge_saved_adapters, save_adapters
from dcrec.cloud.models.llm.prompt import PromptBuilder, PromptConfig, tokenize_titles
from dcrec.cloud.models.llm.runner import HFRunner, SharedPrefixRunner, make_runner
from dcrec.cloud.models.llm.trie import ROOT, build_trie
from dcrec.shared.data import Dataset

TITLES = [
    "",  # id 0: padding
    "Revlon Super Lustrous Lipstick",
    "Revlon Super Lustrous Lipstick, Fire and Ice",
    "Revlon Super Lustrous Lipstick",  # a duplicate of item 1
    "OPI Nail Lacquer, Ruby Red",
    "OPI Nail Lacquer, Pink Flamingo",
    "Chanel No. 5 Eau de Parfum",
    "Neutrogena Ultra Sheer Sunscreen SPF 30",
    "Pantene Repair Shampoo 12 oz",
    "Gillette Fusion Razor Blade Refills",
]
# The same catalogue without the duplicate, for checks that need one item per title.
UNIQUE = [t for i, t in enumerate(TITLES) if i != 3]


@pytest.fixture(scope="module")
def tok() -> object:
    return load_tokenizer(local_model_dir(""))


@pytest.fixture(scope="module")
def lm() -> Iterator[object]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared CPU: more threads than free cores is far slower
    yield load_model(LLMConfig(quantize="none"))
    torch.set_num_threads(threads)


def _builder(tok: object, titles: list[str], **kw: object) -> PromptBuilder:
    config = PromptConfig(**kw)  # type: ignore[arg-type]
    return PromptBuilder(tok, tokenize_titles(tok, titles, config.title_tokens), config)


# --- prefix tree -----------------------------------------------------------------


def test_trie_on_token_ids_completes_titles_and_keeps_duplicates() -> None:
    end = 0
    seqs = [[], [5, 6], [5, 7], [5, 6], [5], [9, 9, 9]]
    trie = build_trie(seqs, end, priority=np.array([0, 1, 0, 3, 0, 0]))
    dup = trie.lookup([5, 6, end])
    assert trie.items_at(dup) == [3, 1]  # both ids, higher priority first
    assert trie.items_at(trie.lookup([5, end])) == [4]  # a title that prefixes others
    assert trie.children(trie.lookup([5]))[0].tolist() == [end, 6, 7]
    assert trie.lookup([5, 8]) == -1 and trie.lookup([6]) == -1
    assert not trie.is_terminal(trie.lookup([5, 6]))  # a title must end with the end token
    assert sorted(trie.items_below(ROOT)) == [1, 2, 3, 4, 5]
    assert trie.max_depth == 4  # [9, 9, 9, end]
    # After [9] only one title is left: the rest is forced.
    assert trie.resolve(trie.lookup([9])) == trie.lookup([9, 9, 9, end])
    assert trie.resolve(trie.lookup([5])) == -1

    ex = trie.exclusion([2, 4])
    assert trie.open_terminals(trie.lookup([5]), ex) == 1
    assert trie.resolve(trie.lookup([5]), ex) == dup  # 4 and 2 closed: [5] now means [5, 6]
    ex1 = trie.exclusion([1])
    assert trie.items_at(dup, ex1) == [3]  # the duplicate stays available
    assert trie.open_terminals(ROOT, ex1) == trie.open_terminals(ROOT)


def test_trie_over_real_titles(tok: object) -> None:
    ids = tokenize_titles(tok, TITLES, max_tokens=100)
    end = tok("\n", add_special_tokens=False)["input_ids"][0]
    trie = build_trie(ids, end, priority=np.arange(len(TITLES), dtype=float))
    for item in range(1, len(TITLES)):
        assert item in trie.items_at(trie.lookup(ids[item] + [end]))
    assert trie.items_at(trie.lookup(ids[1] + [end])) == [3, 1]
    toks, _ = trie.children(trie.lookup(ids[1]))
    assert end in toks and ids[2][len(ids[1])] in toks  # "Lipstick" ends or goes on to ", Fire and Ice"
    assert sorted(trie.items_below(ROOT)) == list(range(1, len(TITLES)))
    assert trie.lookup(tok(" Maybelline", add_special_tokens=False)["input_ids"]) == -1

    cut = tokenize_titles(tok, TITLES, max_tokens=3)
    short = build_trie(cut, end)
    assert cut[4] == cut[5]  # "OPI Nail Lacquer, ..." cut to 3 tokens
    assert short.items_at(short.lookup(cut[4] + [end])) == [4, 5]


def test_prompt_lists_the_newest_titles_and_ends_at_an_answer(tok: object) -> None:
    for style in ("chat", "plain"):
        builder = _builder(tok, TITLES, history_items=2, style=style)
        text = tok.decode(builder.build(np.array([6, 1, 4, 5, 999, 0])))
        assert "Chanel" not in text and "Lipstick" not in text  # older than the newest 2
        assert text.index("Ruby Red") < text.index("Pink Flamingo")  # oldest first
        assert text.rstrip().endswith("-")
    empty = _builder(tok, TITLES).build(np.array([], dtype=np.int64))
    assert empty[-1] == tok("-", add_special_tokens=False)["input_ids"][0]


# --- constrained decoding on the real model ----------------------------------------


def _search(lm: object, tok: object, titles: list[str], histories: list[list[int]], count: int,
            runner_cls: type[HFRunner] | None = None, exclude: bool = True, shared: bool = True,
            **beam: object) -> list[list[tuple[int, float]]]:
    builder = _builder(tok, titles)
    trie = build_trie(builder.title_ids, builder.end_token)
    runner = (runner_cls or make_runner)(lm, tok.pad_token_id)
    prompts = [builder.build(np.array(h)) for h in histories]
    exclusions = [trie.exclusion(h if exclude else []) for h in histories]
    return beam_search(runner, trie, prompts, count, exclusions, BeamConfig(**beam),  # type: ignore[arg-type]
                       shared_prefix=len(builder.head) if shared else 0)


def test_constrained_decode_returns_valid_distinct_items(lm: object, tok: object) -> None:
    histories = [[4], [1, 6], [7, 8, 9, 2]]
    results = _search(lm, tok, TITLES, histories, count=5, beam_width=5)
    assert len(results) == 3
    for hist, hits in zip(histories, results, strict=True):
        items = [i for i, _ in hits]
        scores = [s for _, s in hits]
        assert len(items) == 5 and len(set(items)) == 5
        assert all(1 <= i < len(TITLES) for i in items)
        assert not set(items) & set(hist)
        assert scores == sorted(scores, reverse=True) and max(scores) <= 0.0


def test_catalogue_scores_form_one_distribution(lm: object, tok: object) -> None:
    n = len(UNIQUE) - 1
    [hits] = _search(lm, tok, UNIQUE, [[3]], count=n, exclude=False, beam_width=n)
    assert sorted(i for i, _ in hits) == list(range(1, n + 1))  # every title, once
    assert math.isclose(sum(math.exp(s) for _, s in hits), 1.0, abs_tol=1e-4)


def test_model_scoring_is_the_models_log_probability(lm: object, tok: object) -> None:
    [hits] = _search(lm, tok, UNIQUE, [[3, 4]], count=3, scoring="model", beam_width=4)
    item, score = hits[0]
    builder = _builder(tok, UNIQUE)
    prompt = builder.build(np.array([3, 4]))
    answer = builder.title_ids[item] + [builder.end_token]
    with torch.inference_mode():
        logp = torch.log_softmax(lm(torch.tensor([prompt + answer])).logits[0].double(), -1)
    direct = sum(float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(answer))
    assert math.isclose(score, direct, abs_tol=2e-3)


def test_shared_prefix_runner_matches_the_plain_runner(lm: object, tok: object) -> None:
    histories = [[4], [1, 6, 5], [7, 8, 9, 2, 5, 6]]  # different prompt lengths: left padding
    assert SharedPrefixRunner.supports(lm)
    plain = _search(lm, tok, TITLES, histories, 6, runner_cls=HFRunner, shared=False, beam_width=6)
    fast = _search(lm, tok, TITLES, histories, 6, runner_cls=SharedPrefixRunner, beam_width=6)
    for a, b in zip(plain, fast, strict=True):
        assert [i for i, _ in a] == [i for i, _ in b]
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=1e-4)


# --- the backend through the registry ----------------------------------------------


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Dataset) -> object:
    out = tmp_path_factory.mktemp("llm")
    seqs = [s[:-1] for s in synthetic_dataset.sequences()]
    backends.train("llm", synthetic_dataset, seqs, out,
                   {"beam_width": 4, "users_per_batch": 2, "history_items": 3})
    return backends.load_generator(out)


def test_generator_contract_and_exclude_seen(generator: object, synthetic_dataset: Dataset) -> None:
    gen = generator
    assert isinstance(gen, CandidateGenerator) and gen.name == "llm"
    n = synthetic_dataset.n_items
    assert gen.n_items == n
    histories = [synthetic_dataset.sequence(u)[:-1] for u in range(3)]
    for cands, h in zip(gen.generate(histories, count=10), histories, strict=True):
        items = cands.items.tolist()
        assert len(items) == 10 and len(set(items)) == 10
        assert all(1 <= i <= n for i in items) and not set(items) & set(h.tolist())
        assert np.all(np.diff(cands.scores) <= 0)
    # More than a 4-wide beam finds: filled by popularity, still valid and distinct.
    [full] = gen.generate(histories[:1], count=n, exclude_seen=True)
    assert sorted(full.items.tolist()) == sorted(set(range(1, n + 1)) - set(histories[0].tolist()))
    [seen] = gen.generate(histories[:1], count=n, exclude_seen=False)
    assert sorted(seen.items.tolist()) == list(range(1, n + 1))
    assert gen.generate([np.array([], dtype=np.int64)], count=3)[0].items.shape == (3,)


# --- LoRA --------------------------------------------------------------------------


def test_lora_step_changes_only_adapters_and_merges(lm: object, tok: object, tmp_path: Path) -> None:
    model = copy.deepcopy(lm)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    builder = _builder(tok, TITLES, history_items=2)
    seqs = [np.array([4, 5, 1]), np.array([6, 7, 8, 9])]
    losses = finetune(model, builder, seqs, LoRAConfig(rank=4, targets=("q_proj", "v_proj")),
                      TrainConfig(steps=1, batch_size=2, warmup=1, lr=1e-3), tok.pad_token_id)
    assert len(losses) == 1 and math.isfinite(losses[0])
    n_lora = 0
    for name, p in model.named_parameters():
        if ".lora_" in name:
            n_lora += 1
            if name.endswith("lora_b"):
                assert p.abs().sum() > 0, name  # started at zero, moved
        else:
            assert torch.equal(p, before[name.replace(".base.", ".")]), name
    assert n_lora == 2 * 2 * lm.config.num_hidden_layers

    save_adapters(model, LoRAConfig(rank=4, targets=("q_proj", "v_proj")), tmp_path, {})
    merged = copy.deepcopy(lm)
    assert merge_saved_adapters(merged, tmp_path) == 2 * lm.config.num_hidden_layers
    x = torch.tensor([builder.build(np.array([4, 5]))])
    with torch.inference_mode():
        np.testing.assert_allclose(merged(x).logits.numpy(), model(x).logits.numpy(), atol=1e-3)
        assert not torch.allclose(merged(x).logits, lm(x).logits)


def test_bad_options_fail_at_train_time(tmp_path: Path, synthetic_dataset: Dataset) -> None:
    seqs = list(synthetic_dataset.sequences())
    with pytest.raises(ValueError, match="unknown llm options"):
        backends.train("llm", synthetic_dataset, seqs, tmp_path / "a", {"beams": 3})
    with pytest.raises(ValueError, match="scoring"):
        backends.train("llm", synthetic_dataset, seqs, tmp_path / "b", {"scoring": "sum"})
    with pytest.raises(FileNotFoundError):
        backends.train("llm", synthetic_dataset, seqs, tmp_path / "c", {"model": str(tmp_path / "none")})
    assert not (tmp_path / "c" / backends.MANIFEST).exists()


def test_evaluation_counts_invalid_and_duplicate_ids() -> None:
    from dcrec.cloud.models.llm.evaluate import check_lists

    lists = np.array([[1, 2, 3, 0], [5, 5, 99, -1], [4, 0, 0, 0]])
    assert check_lists(lists, n_items=10) == (2, 1)  # 99 and -1 invalid; 5 twice
