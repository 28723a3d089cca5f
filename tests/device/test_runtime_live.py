"""The runtime's per-event path against a from-scratch rerank of the same state.

The runtime keeps the unconsumed candidates (and the cloud's side of fusion)
from one event to the next; these tests check that what it shows and the
disagreement it reports are exactly what filtering, scoring and fusing
afresh would give, also when the store or the cached list change behind it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dcrec.device.fusion import fuse
from dcrec.device.policy import NeverPolicy
from dcrec.device.runtime import DeviceRuntime, RuntimeConfig
from dcrec.device.store import CachedList, DeviceStore
from dcrec.shared.agreement import disagreement


class HashReranker:
    """Deterministic scores that depend on the candidate and on the whole history (with ties)."""

    version = "hash"

    def score(self, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        h = float(np.asarray(history, dtype=np.int64).sum() % 97)
        return np.round(np.sin(np.asarray(candidates) * 0.37 + h), 1).astype(np.float32)


def cached_list(rng: np.random.Generator, list_id: str) -> CachedList:
    items = rng.choice(np.arange(1, 301), 40, replace=False).astype(np.int64)
    scores = np.round(np.sort(rng.normal(size=40))[::-1], 1).astype(np.float32)  # ties
    return CachedList(items, scores, list_id, "m", 0.0, 1e9)


def expected(rt: DeviceRuntime) -> tuple[list[int], float]:
    """What the runtime should show (all of it) and its disagreement, computed from scratch."""
    cfg = rt.config
    c = rt.cached
    assert c is not None and rt.reranker is not None
    seen = rt.store.seen()
    keep = np.array([not cfg.exclude_seen or int(i) not in seen for i in c.items], dtype=bool)
    items, cloud = c.items[keep], c.scores[keep]
    if items.size == 0:
        return [], 0.0
    device = rt.reranker.score(rt.store.recent(cfg.history_window), items)
    shown = items[np.argsort(-fuse(cloud, device, rt.alpha, cfg.scale), kind="stable")]
    d = disagreement(items[np.argsort(-cloud, kind="stable")], items[np.argsort(-device, kind="stable")],
                     cfg.measure, cfg.measure_top)
    return shown.tolist(), d


# (order measures: this check recomputes the disagreement from the two orders alone)
@pytest.mark.parametrize("config", [RuntimeConfig(measure="rbo"), RuntimeConfig(scale="zscore", measure="footrule"),
                                    RuntimeConfig(exclude_seen=False, alpha=0.2, measure="rbo")])
def test_every_event_matches_a_fresh_rerank(tmp_path: Path, config: RuntimeConfig) -> None:
    rng = np.random.default_rng(11)
    store = DeviceStore(tmp_path / "d.sqlite")
    store.append_many(np.array([3, 5, 8]), np.array([0.0, 1.0, 2.0]))
    store.save_list(cached_list(rng, "L0"))
    rt = DeviceRuntime("d", store, HashReranker(), None, NeverPolicy(), config)
    for t in range(300):
        if t % 60 == 59:  # a new list arrives
            rt.cached = cached_list(rng, f"L{t}")
        if t % 45 == 44:  # another writer (history migrated in) adds events behind the runtime
            rt.store.append_many(rng.choice(rt.cached.items, 3), np.full(3, float(t)))  # type: ignore[union-attr]
        shown = rt.recommend()
        pick = rng.random()
        if shown.size and pick < 0.5:  # the user takes something on screen
            item = int(shown[rng.integers(min(shown.size, 10))])
        elif pick < 0.6:  # or repeats an old one
            item = int(rng.choice(rt.store.recent(20)))
        else:
            item = int(rng.integers(1, 301))
        rec = rt.record(item, float(t))
        want_shown, want_d = expected(rt)
        assert rt.recommend().tolist() == want_shown[: config.show]
        assert rec.items.tolist() == want_shown[: config.show]
        assert rec.disagreement == want_d
        assert rt._shown.tolist() == want_shown
    if config.exclude_seen:
        assert not np.isin(rt._shown, list(rt.store.seen())).any()


def test_a_reopened_runtime_filters_what_it_saw_before(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    store = DeviceStore(tmp_path / "d.sqlite")
    store.save_list(cached_list(rng, "L0"))
    rbo = RuntimeConfig(measure="rbo")
    rt = DeviceRuntime("d", store, HashReranker(), None, NeverPolicy(), rbo)
    for t in range(5):
        rt.record(int(rt.recommend()[0]), float(t))
    shown = rt.recommend().tolist()
    rt.close()
    again = DeviceRuntime("d", DeviceStore(tmp_path / "d.sqlite"), HashReranker(), None, NeverPolicy(), rbo)
    assert again.recommend().tolist() == shown == expected(again)[0][:10]
