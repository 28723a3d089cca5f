"""Item-text embeddings: the real bundled MiniLM, and the on-disk cache."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from dcrec.cloud.models.text_embed import EMBED_DIM, MODEL_ID, MiniLMEncoder, cache_key, embed_texts

TEXTS = [
    "OPI Nail Lacquer, Ruby Red | Beauty, Makeup, Nails, Nail Polish | OPI",
    "Essie Nail Polish, Pink Flamingo | Beauty, Makeup, Nails, Nail Polish | Essie",
    "Gillette Fusion Men's Razor Blade Refills, 8 ct | Beauty, Shave | Gillette",
    "",  # items with no text at all exist in real catalogues
]


class CountingEncoder:
    """Wraps the real encoder and counts how many texts it was asked to embed."""

    def __init__(self) -> None:
        self.inner = MiniLMEncoder(batch_size=2)
        self.calls = 0

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        return self.inner(texts)


def test_minilm_embeddings_are_unit_vectors_that_group_similar_items(tmp_path: Path) -> None:
    vecs = embed_texts(TEXTS, cache_dir=tmp_path)
    assert vecs.shape == (len(TEXTS), EMBED_DIM) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    sim = vecs @ vecs.T
    # Two nail polishes are closer to each other than either is to a razor.
    assert sim[0, 1] > sim[0, 2] + 0.1
    assert sim[0, 1] > sim[1, 2] + 0.1


def test_batching_does_not_change_results(tmp_path: Path) -> None:
    one = MiniLMEncoder(batch_size=1)(TEXTS)
    many = MiniLMEncoder(batch_size=3)(TEXTS)
    np.testing.assert_allclose(one, many, atol=1e-5)


def test_cache_hit_returns_identical_array_without_recomputing(tmp_path: Path) -> None:
    enc = CountingEncoder()
    first = embed_texts(TEXTS, cache_dir=tmp_path, encoder=enc)
    assert enc.calls == 1
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1 and cache_key(TEXTS) in files[0].name
    assert not list(tmp_path.glob("*.tmp*")), "atomic write left a temporary file"

    def must_not_run(texts: Sequence[str]) -> np.ndarray:
        raise AssertionError("the cache was not used")

    second = embed_texts(TEXTS, cache_dir=tmp_path, encoder=must_not_run)
    assert np.array_equal(first, second)

    # Different texts are a miss and compute again.
    embed_texts(TEXTS[:2], cache_dir=tmp_path, encoder=enc)
    assert enc.calls == 2
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_corrupt_cache_file_is_recomputed(tmp_path: Path) -> None:
    path = tmp_path / f"text-emb-{cache_key(TEXTS[:1])}.npy"
    path.write_bytes(b"not a numpy file")
    enc = CountingEncoder()
    vecs = embed_texts(TEXTS[:1], cache_dir=tmp_path, encoder=enc)
    assert enc.calls == 1 and vecs.shape == (1, EMBED_DIM)
    assert np.array_equal(np.load(path), vecs)


def test_cache_key_depends_on_model_order_and_boundaries() -> None:
    base = cache_key(["a b", "c"])
    assert cache_key(["a b", "c"]) == base
    assert cache_key(["c", "a b"]) != base
    assert cache_key(["a", "b c"]) != base
    assert cache_key(["a b", "c"], model_id=MODEL_ID + "-v2") != base
    assert cache_key(["a b", "c"], max_tokens=64) != base


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DCREC_CACHE_DIR", str(tmp_path / "env-cache"))
    embed_texts(TEXTS[:1], encoder=lambda t: np.ones((len(t), 3), np.float32))
    assert len(list((tmp_path / "env-cache").glob("*.npy"))) == 1
