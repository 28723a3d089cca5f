"""The cloud's neighbour index: its own list for every one-item history, shipped to the device.

The cloud answers a history with a candidate list; between two requests the
device's history moves on and the cached list goes stale. The index lets the
device estimate the cloud's answer for the history it holds now without a
request: for each item ``i`` the cloud's top ``K`` items (and scores) for the
history ``[i]``, built once per cloud model by asking the cloud's own
generator (:func:`dcrec.cloud.models.neighbours.build`), whatever its backend. On the
device a *local list* is the recency-weighted vote of the newest history
items' rows, as an item-to-item recommender would produce it.

How close a local list comes to the cloud's fresh list depends on the
backend: for the co-occurrence backend, whose lists are built from item
neighbours in the same way, it is close; for a model whose answer depends on
the whole history (a text embedder's mean, an LLM) it is an approximation.

Stored as one ``.npz`` (no pickles): ``items`` (N+1, K) uint16 or int32 (0 =
padding, row 0 unused), ``scores`` (N+1, K) float16 scaled into [0, 1], and
``meta`` (UTF-8 JSON: format, n_items, neighbours, cloud_version). 50
neighbours for 12,101 items take 2.4 MB.

Example::

    index = NeighbourIndex.load("neighbours.npz")
    items, scores = index.local_list(history, count=200, exclude=seen)
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcrec.shared.errors import DeviceDataError
from dcrec.shared.fileio import write_atomic

FORMAT = 1


class NeighbourIndexError(ValueError, DeviceDataError):
    """The file is not a usable neighbour index (not an npz, wrong format, shape, ids or values)."""


def _why(e: BaseException) -> str:
    """One line for an error from zipfile/numpy/json: the type and the first line of its text."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


@dataclass(frozen=True)
class NeighbourIndex:
    # Kept in memory as on disk (uint16 ids below 65,536 items, else int32; float16 scores):
    # 2.4 MB for 12,101 items x 50, what a phone holds.
    items: np.ndarray  # (N+1, K), 0 = padding; row i: the cloud's list for the history [i]
    scores: np.ndarray  # (N+1, K) in [0, 1], best first per row; padding 0
    cloud_version: str  # the cloud model the rows were asked of

    def __post_init__(self) -> None:
        it, sc = np.asarray(self.items), np.asarray(self.scores)
        if it.ndim != 2 or sc.shape != it.shape or it.shape[0] < 2 or it.shape[1] < 1:
            raise NeighbourIndexError(f"items and scores must both be (n_items+1, K) with n_items >= 1 "
                                      f"and K >= 1, got {it.shape} and {sc.shape}")
        if it.dtype.kind not in "iu" or it.min() < 0 or it.max() > it.shape[0] - 1:
            raise NeighbourIndexError(f"item ids must be integers in [0, {it.shape[0] - 1}], got "
                                      f"{it.dtype} in [{it.min()}, {it.max()}]")
        sc = sc.astype(np.float16)
        if not np.isfinite(sc).all() or sc.min() < 0.0 or sc.max() > 1.0:
            raise NeighbourIndexError("scores must be finite and in [0, 1]")
        object.__setattr__(self, "items", it.astype(np.uint16 if it.shape[0] <= 2**16 else np.int32))
        object.__setattr__(self, "scores", sc)

    @property
    def n_items(self) -> int:
        return int(self.items.shape[0] - 1)

    @property
    def neighbours(self) -> int:
        return int(self.items.shape[1])

    @classmethod
    def from_lists(cls, items: np.ndarray, scores: np.ndarray, cloud_version: str) -> NeighbourIndex:
        """From raw rows (scores on any non-negative scale): scaled into [0, 1] by the largest."""
        sc = np.where(items > 0, np.asarray(scores, dtype=np.float64), 0.0)
        if not np.isfinite(sc).all() or sc.min() < 0:
            raise NeighbourIndexError("neighbour scores must be finite and >= 0")
        top = float(sc.max())
        sc = sc / top if top > 0 else sc
        return cls(np.asarray(items, dtype=np.int64), sc, cloud_version)

    # --- the device side ------------------------------------------------------------------------
    def local_list(self, history: np.ndarray, count: int, recent: int = 10, decay: float = 0.7,
                   exclude: Collection[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The index's estimate of the cloud's list for ``history`` (ids, oldest first).

        Each of the ``recent`` newest items votes for its row, the newest with
        weight 1 and each older one ``decay`` times the next newer's. Returns
        (items (<=count,), scores (<=count,)) best first, ties by smaller id;
        ``exclude`` (and padding) never appear. Ids outside the index are ignored.
        ``exclude`` is a collection of ids, an array of ids, or a boolean mask over ids
        of at least ``n_items + 1`` entries (the cheapest: one lookup per candidate).
        """
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        h = np.asarray(history, dtype=np.int64)[-recent:][::-1] if recent > 0 else np.zeros(0, np.int64)
        h = h[(h > 0) & (h <= self.n_items)]
        if h.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        weights = decay ** np.arange(h.size, dtype=np.float64)
        cand = self.items[h].ravel()
        votes = (self.scores[h].astype(np.float64) * weights[:, None]).ravel()
        # Votes summed per id over the whole catalogue, in vote order (bin 0, padding, dropped):
        # cheaper than sorting the few hundred ids, and the same sums bit for bit.
        dense = np.bincount(cand, weights=votes, minlength=self.n_items + 1)
        present = np.zeros(self.n_items + 1, dtype=bool)
        present[cand] = True
        present[0] = False
        ids = np.flatnonzero(present)
        sums = dense[ids]
        if exclude is not None and len(exclude) and ids.size:  # at most recent * K ids to look up
            if isinstance(exclude, np.ndarray) and exclude.dtype == np.bool_:
                if exclude.size <= self.n_items:
                    raise ValueError(f"an exclude mask needs n_items + 1 = {self.n_items + 1} "
                                     f"entries, got {exclude.size}")
                keep = ~exclude[ids]
            elif isinstance(exclude, np.ndarray):
                keep = ~np.isin(ids, exclude)
            else:
                keep = np.fromiter((i not in exclude for i in ids.tolist()), dtype=bool, count=ids.size)
            ids, sums = ids[keep], sums[keep]
        order = np.lexsort((ids, -sums))[:count]  # score descending, then id ascending
        return ids[order].astype(np.int64), sums[order].astype(np.float32)

    # --- files ------------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        meta = {"format": FORMAT, "n_items": self.n_items, "neighbours": self.neighbours,
                "cloud_version": self.cloud_version}
        buf = io.BytesIO()
        np.savez(buf, items=self.items, scores=self.scores,
                 meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8))
        return buf.getvalue()

    def save(self, path: str | Path) -> str:
        """Write atomically; returns the file's sha256 (what a release announces)."""
        data = self.to_bytes()
        write_atomic(path, data)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "neighbour index") -> NeighbourIndex:
        """Parse an index file's bytes; any damage is a NeighbourIndexError naming ``what``."""
        if not data.startswith(b"PK"):  # (np.load would take other bytes for a .npy or a pickle)
            raise NeighbourIndexError(f"{what}: not a neighbour index file (not an npz archive, "
                                      f"{len(data)} bytes)")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                missing = {"items", "scores", "meta"} - set(z.files)
                if missing:
                    raise NeighbourIndexError(f"{what}: missing arrays {sorted(missing)}")
                meta = json.loads(z["meta"].tobytes().decode())
                items, scores = z["items"], z["scores"]
        except NeighbourIndexError:
            raise
        except Exception as e:  # zipfile, zlib, numpy and json raise a dozen unrelated types on damage
            raise NeighbourIndexError(f"{what}: not a neighbour index file ({_why(e)})") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise NeighbourIndexError(f"{what}: format {meta.get('format') if isinstance(meta, dict) else meta!r}"
                                      f" is not {FORMAT}")
        if items.dtype.kind not in "iu" or scores.dtype.kind != "f":
            raise NeighbourIndexError(f"{what}: items must be integers and scores floats, got "
                                      f"{items.dtype} and {scores.dtype}")
        n, k = meta.get("n_items"), meta.get("neighbours")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, k)) \
                or items.shape != (n + 1, k):
            raise NeighbourIndexError(f"{what}: arrays {items.shape} do not match the declared "
                                      f"{n!r} items x {k!r} neighbours")
        try:
            return cls(items, scores, str(meta.get("cloud_version", "")))
        except NeighbourIndexError as e:
            raise NeighbourIndexError(f"{what}: {e}") from None

    @classmethod
    def load(cls, path: str | Path, sha256: str | None = None) -> NeighbourIndex:
        """Read ``path``; with ``sha256``, refuse a file whose bytes do not hash to it."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except (OSError, ValueError) as e:  # ValueError: a path with a NUL byte
            why = e.strerror if isinstance(e, OSError) and e.strerror else e
            raise NeighbourIndexError(f"{path}: cannot read the neighbour index ({why})") from e
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise NeighbourIndexError(f"{path}: sha256 does not match the announced {sha256[:12]}")
        return cls.from_bytes(data, str(path))

