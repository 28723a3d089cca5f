"""The item ids a device model can score: ``[1, n_items]`` of its release's catalogue.

An id outside it makes ONNX Runtime fail on every later inference that sees
it in the history ("indices element out of data bounds"), so one bad event
would break the device for good. :class:`CatalogueGuard` keeps such ids out:
:func:`refuse` before an event is stored, and, for a store
written by an older runtime that accepted any id, :meth:`~CatalogueGuard.usable`
filters the history (the events stay in the file; a warning says how many).

Example::

    refuse(item, n_items=1682, model="v3")               # ValueError for 0, -1, 4711
    guard = CatalogueGuard(store, "device-1")
    history = guard.usable(store.recent(50), 1682, "v3")  # (<=50,) ids in [1, 1682]
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

UNCHECKED = -1  # no catalogue size checked yet (None is a valid one: unknown)


class _Counts(Protocol):
    def events_outside(self, n_items: int | None) -> int: ...


def refuse(item: int, n_items: int | None, model: str) -> None:
    """Raise ValueError naming ``item`` and the range when ``item`` is not in ``[1, n_items]``."""
    if item < 1 or (n_items is not None and item > n_items):
        top = n_items if n_items is not None else "..."
        raise ValueError(f"item id {item} is outside the catalogue [1, {top}] of model "
                         f"{model or '(none)'}; nothing was recorded")


class CatalogueGuard:
    """Skips stored ids outside the model's catalogue, counting them once per catalogue size."""

    def __init__(self, store: _Counts, device_id: str) -> None:
        self.store = store
        self.device_id = device_id
        self.checked: int | None = UNCHECKED  # the catalogue size the store was counted against
        self.outside = 0  # stored events outside that catalogue

    def must_filter(self, n_items: int | None, model: str) -> bool:
        """Whether the store holds ids outside ``[1, n_items]`` (one scan when the size changes)."""
        if n_items != self.checked:  # at open, and after a model with another catalogue came in
            self.checked = n_items
            self.outside = self.store.events_outside(n_items)
            if self.outside:
                log.warning("%s: the store holds %d events with item ids outside the catalogue "
                            "[1, %s] of model %s (written by an older runtime); they are kept but "
                            "skipped for ranking and requests", self.device_id, self.outside,
                            n_items if n_items is not None else "...", model or "(none)")
        return self.outside > 0

    def mask(self, history: np.ndarray) -> np.ndarray:
        """(L,) bool: which ids of ``history`` (L,) lie in the catalogue last checked."""
        n = self.checked
        return (history >= 1) & (history <= n) if n is not None else history >= 1

    def usable(self, history: np.ndarray, n_items: int | None, model: str) -> np.ndarray:
        """(<=L,) ``history`` (L,) without the ids outside ``[1, n_items]``; itself when none are stored."""
        return history[self.mask(history)] if self.must_filter(n_items, model) else history
