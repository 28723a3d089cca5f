"""On-device reranking with ONNX Runtime: no torch on the phone.

A :class:`Reranker` scores a user's cached candidates given the freshest
history. :class:`OnnxReranker` runs an exported model (inputs ``history``
(B, L) int64 left-padded, ``candidates`` (B, C) int64; output ``scores`` (B, C)).
Sessions are shared between runtimes that load the same file, so a simulator
with thousands of devices holds one copy of each model. The facts an export
writes into the file's metadata (``max_len``, ``n_items``, ``padding_id``,
``arch``, ``dcrec_version``) are on ``metadata``; a model whose metadata
contradicts the release config (its ``max_len`` or ``n_items``, or padding
other than 0) is refused; a model without metadata (older exports) loads.

Example::

    rr = OnnxReranker.from_file("model.onnx", max_len=50)
    rr.score(history, candidates)   # (C,) float32
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from dcrec.shared.errors import DeviceDataError
from dcrec.shared.neighbours import NeighbourIndex
from dcrec.shared.request_value import RequestValueModel
from dcrec.shared.system import System

log = logging.getLogger(__name__)


class Reranker(Protocol):
    version: str

    def score(self, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Scores (C,) of ``candidates`` (C,) given ``history`` (L,), oldest first."""
        ...


class ModelLoadError(RuntimeError, DeviceDataError):
    """The ONNX file could not be read or has the wrong inputs (``from_file`` names the file)."""


_SESSIONS: dict[str, ort.InferenceSession] = {}
_SESSIONS_LOCK = threading.Lock()


def _session(data: bytes, threads: int) -> ort.InferenceSession:
    key = hashlib.sha256(data).hexdigest() + f":{threads}"
    with _SESSIONS_LOCK:
        sess = _SESSIONS.get(key)
        if sess is None:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads  # one core per device inference is plenty
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            try:
                sess = ort.InferenceSession(data, sess_options=opts,
                                            providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime raises its own unrelated types
                raise ModelLoadError(f"ONNX Runtime cannot load the model: {e}") from e
            names = sorted(i.name for i in sess.get_inputs())
            if names != ["candidates", "history"]:
                raise ModelLoadError(f"model inputs are {names}, expected candidates and history")
            _SESSIONS[key] = sess
    return sess


_CHECKED: set[tuple[str, int]] = set()  # (model sha256, n_items) pairs known to be scorable


def _check_catalogue(sess: ort.InferenceSession, data: bytes, n_items: int) -> None:
    """Refuse a declared catalogue size the model cannot score (its embedding table is smaller).

    The runtime accepts item ids up to ``n_items``; one the model cannot score would make
    every later inference fail. One inference per distinct model and size.
    """
    key = (hashlib.sha256(data).hexdigest(), n_items)
    with _SESSIONS_LOCK:
        if key in _CHECKED:
            return
    try:
        probe = np.array([[n_items]], dtype=np.int64)
        sess.run(["scores"], {"history": probe, "candidates": probe})
    except Exception as e:  # onnxruntime's own types; OverflowError for an absurd size
        raise ModelLoadError(f"the model cannot score item {n_items}, the last of its declared "
                             f"catalogue (n_items {n_items}): {str(e).strip()[:200]}") from e
    with _SESSIONS_LOCK:
        _CHECKED.add(key)


PADDING_ID = 0  # the runtime left-pads histories with item id 0


def _check_metadata(meta: dict[str, str], max_len: int, n_items: int | None) -> None:
    """Refuse a model whose export metadata contradicts the release config; absent keys pass."""
    expected = {"max_len": (max_len, "the release config says"),
                "n_items": (n_items, "the release config says"),
                "padding_id": (PADDING_ID, "the device pads with")}
    for field, (want, source) in expected.items():
        if want is None or field not in meta:
            continue
        try:
            got = int(meta[field])
        except ValueError:
            raise ModelLoadError(f"the model's metadata gives {field} {meta[field][:40]!r}, "
                                 "not an integer") from None
        if got != want:
            raise ModelLoadError(f"{field} mismatch: the model was exported with {field} {got}, "
                                 f"{source} {want}")


def _declared_items(meta: dict[str, str]) -> int | None:
    """The catalogue size the export wrote into the file (``_check_metadata`` read it as an
    integer already), or None for an older export."""
    n = int(meta["n_items"]) if "n_items" in meta else None
    return n if n is not None and n >= 1 else None


_ONE = np.zeros((1, 1), dtype=np.int64)  # a candidate to feed when only ``user`` is read
_TABLES: dict[str, np.ndarray] = {}


def _item_table(session: ort.InferenceSession, data: bytes, n_items: int) -> np.ndarray:
    """(N+1, D) float32: every item's embedding, read once through ``candidate_embeddings``
    (shared by every reranker on the same model bytes, as the session is)."""
    key = hashlib.sha256(data).hexdigest()
    with _SESSIONS_LOCK:
        table = _TABLES.get(key)
        if table is None:
            ids = np.arange(0, n_items + 1, dtype=np.int64)[None, :]
            table = session.run(["candidate_embeddings"], {"history": _ONE, "candidates": ids})[0][0]
            table = np.ascontiguousarray(table, dtype=np.float32)
            table.setflags(write=False)
            _TABLES[key] = table
    return table


class OnnxReranker:
    def __init__(self, data: bytes, max_len: int, version: str, threads: int = 1,
                 n_items: int | None = None) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        if n_items is not None and n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {n_items}")
        self.neighbours: NeighbourIndex | None = None  # the cloud's index released with the model
        # the release's request-value model (config "request_model"), when it carries one
        self.request_model: RequestValueModel | None = None
        # the system the release was published with (config "system"), when it carries one
        self.system: System | None = None
        self.session = _session(data, threads)
        # What the export wrote into the file (all strings); empty for older exports.
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        _check_metadata(self.metadata, max_len, n_items)
        if n_items is None:  # a model loaded from its file alone: its export says how many items
            n_items = _declared_items(self.metadata)
        self.n_items = n_items  # catalogue size, when known: enables score_catalogue
        if n_items is not None:
            _check_catalogue(self.session, data, n_items)
        self._catalogue = None if n_items is None else np.arange(1, n_items + 1, dtype=np.int64)[None, :]
        self.max_len = max_len
        self.version = version
        self.size_bytes = len(data)
        self._outputs = {o.name for o in self.session.get_outputs()}
        # A model with a ``user`` output scores by a dot product with its item table: one
        # network pass per history, then any candidates (or the catalogue) by one product.
        self._table = (_item_table(self.session, data, n_items)
                       if n_items is not None and "user" in self._outputs else None)
        # (history bytes, user vector, catalogue scores or None) of the last pass: one tuple,
        # so threads sharing this reranker never mix one history's key with another's numbers
        self._last_user: tuple[bytes, np.ndarray, np.ndarray | None] | None = None

    @classmethod
    def from_file(cls, path: str | Path, max_len: int, version: str | None = None,
                  threads: int = 1, n_items: int | None = None) -> OnnxReranker:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ModelLoadError(f"{path}: cannot read the model ({e.strerror or e})") from e
        try:
            return cls(data, max_len, version or hashlib.sha256(data).hexdigest()[:12], threads, n_items)
        except ModelLoadError as e:
            raise ModelLoadError(f"{path}: {e}") from e

    @property
    def fast(self) -> bool:
        """Whether scores come from the ``user`` output and the item table (one pass per history)."""
        return self._table is not None

    def _pass(self, history: np.ndarray) -> tuple[bytes, np.ndarray, np.ndarray | None]:
        """(history key, ``user`` vector, every item's scores if computed yet) for ``history``:
        one network pass per history (the last one is kept, so the several scorings of one
        event cost one pass)."""
        h = self._history(history)
        key = h.tobytes()
        last = self._last_user
        if last is not None and last[0] == key:
            return last
        user = self.session.run(["user"], {"history": h, "candidates": _ONE})[0][0]
        self._last_user = (key, user, None)
        return self._last_user

    def _all_scores(self, history: np.ndarray) -> np.ndarray:
        """(N+1,) every item's score for ``history`` (row 0, padding, scores 0): the ``user``
        vector times the item table, one product, kept with the pass."""
        assert self._table is not None
        key, user, every = self._pass(history)
        if every is None:
            every = self._table @ user
            every.setflags(write=False)
            self._last_user = (key, user, every)
        return every

    def _scores_of(self, history: np.ndarray, c: np.ndarray) -> np.ndarray:
        """(C,) scores of ids ``c``: read from the catalogue scores when this history's are
        computed (so the two always agree to the bit), else the C rows alone."""
        assert self._table is not None
        _, user, every = self._pass(history)
        return every[c] if every is not None else self._table[c] @ user

    def score_catalogue(self, history: np.ndarray) -> np.ndarray | None:
        """(N+1,) scores of every item id (index 0, padding, is -inf), or None if N is unknown."""
        if self._catalogue is None:
            return None
        if self._table is not None:
            out = self._all_scores(history).copy()
            out[0] = -np.inf
            return out
        out = self.session.run(["scores"], {"history": self._history(history),
                                            "candidates": self._catalogue})[0][0]
        return np.concatenate([np.array([-np.inf], dtype=out.dtype), out])

    def score(self, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        if candidates.size == 0:
            return np.zeros(0, dtype=np.float32)
        if self._table is not None:
            return self._scores_of(history, np.asarray(candidates, dtype=np.int64))
        out = self.session.run(["scores"], {"history": self._history(history),
                                            "candidates": np.asarray(candidates, dtype=np.int64)[None, :]})
        return out[0][0]

    def _history(self, history: np.ndarray) -> np.ndarray:
        """(1, L) the newest ``max_len`` items; an empty history is one padding slot."""
        h = np.asarray(history, dtype=np.int64)[-self.max_len:]
        if h.size == 0:
            h = np.zeros(1, dtype=np.int64)
        return h[None, :]

    @property
    def has_embeddings(self) -> bool:
        """Whether the model also outputs ``candidate_embeddings`` (for on-device adaptation)."""
        return "candidate_embeddings" in self._outputs

    def score_with_embeddings(self, history: np.ndarray,
                              candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores (C,) and the candidates' embeddings (C, D), or None when the model has none."""
        if not self.has_embeddings:
            return self.score(history, candidates), None
        c = np.asarray(candidates, dtype=np.int64)
        if c.size == 0:
            return np.zeros(0, dtype=np.float32), np.zeros((0, 0), dtype=np.float32)
        if self._table is not None:
            return self._scores_of(history, c), self._table[c]
        scores, emb = self.session.run(["scores", "candidate_embeddings"],
                                       {"history": self._history(history), "candidates": c[None, :]})
        return scores[0], emb[0]

    def score_batch(self, histories: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Scores (B, C) for left-padded ``histories`` (B, L) and ``candidates`` (B, C)."""
        return self.session.run(["scores"], {"history": histories.astype(np.int64),
                                             "candidates": candidates.astype(np.int64)})[0]
