"""The runtime an app embeds: record, learn, rerank, fuse, decide, maybe refresh.

One :class:`DeviceRuntime` per user/device. On every behaviour event it

1. appends the event to the local store (durable before anything else; an item
   id outside the model's catalogue, ``[1, n_items]``, is refused first with a
   ValueError and nothing is stored),
2. learns from the choice: the per-user vector
   (:class:`~dcrec.device.adapt.UserAdapter`, the system's ``adapt``),
3. reranks the cached cloud candidates with the on-device model and the
   freshest history (plus the user vector),
4. fuses device and cloud scores (on a common scale, weight ``alpha``),
5. measures how far the device's ranking has drifted from the cloud's,
6. asks its :class:`~dcrec.device.policy.RequestPolicy` whether to fetch a new list,
   and if so calls the cloud (with a deadline); on failure it keeps the cache.

Learned per-device state (fusion weights, user vector, the request budget)
is kept in the store's metadata, so a restarted app keeps its budget spent.

Example::

    rt = DeviceRuntime.open("u1.sqlite", reranker, CloudClient(addr), make_policy("budgeted"))
    shown = rt.record(item_id=42, ts=time.time()).items   # what the app shows next
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcrec.device.adapt import UserAdapter
from dcrec.device.catalogue import CatalogueGuard, refuse
from dcrec.device.client import CloudClient, CloudRejected, CloudUnavailable
from dcrec.device.fusion import (
    blend,
    blend_lists,
    descending_order,
    normalise,
    rank_scores,
)
from dcrec.device.policy import PolicyInput, RequestFeedback, RequestPolicy, policy_of
from dcrec.device.reranker import Reranker
from dcrec.device.store import HISTORY_CACHE, CachedList, DeviceStore, OnDamage
from dcrec.device.telemetry import FlushResult, TelemetryUploader
from dcrec.shared.agreement import (
    CATALOGUE_MEASURES,
    coverage_gap,
    disagreement,
    regret_of_scores,
    softmax,
    uncovered_mass,
)
from dcrec.shared.contract import CandidatesRequest, Reason
from dcrec.shared.neighbours import NeighbourIndex
from dcrec.shared.request_value import RequestValueModel, situation_features
from dcrec.shared.system import SYSTEM, DeviceSettings, Scale, System

log = logging.getLogger(__name__)


# The runtime's settings are the system's device section (dcrec.shared.system): their
# defaults are the system's, defined there once.
RuntimeConfig = DeviceSettings


@dataclass(frozen=True)
class Recommendation:
    """What the device shows after an event: ``items`` (<=show,) best first."""

    items: np.ndarray
    request: Reason | None  # why the cloud was asked during this event, if it was
    request_ok: bool
    disagreement: float
    list_age_s: float


@dataclass
class _Scored:
    """The last reranked list: ``items`` (C,); cloud, device (as fused) and raw model scores (C,); ``emb`` (C, D)."""

    items: np.ndarray
    cloud: np.ndarray
    device: np.ndarray
    raw: np.ndarray
    emb: np.ndarray | None
    model: str = ""  # version of the reranker that scored it


@dataclass
class _Live:
    """The cached candidates not consumed yet: ``items`` (C,) and their cloud ``scores`` (C,).

    Valid while the runtime holds ``source`` and the store's ``seen`` set (which only
    grows) has ``n_seen`` items; ``seen`` is None when consumed items are not excluded.
    """

    source: CachedList
    seen: set[int] | None
    n_seen: int
    items: np.ndarray
    scores: np.ndarray
    _cloud: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # per scale
    _ranks: np.ndarray | None = None

    def ranks(self) -> np.ndarray:
        """``rank_scores(scores)`` (C,), computed once (what blending with a local list needs)."""
        if self._ranks is None:
            self._ranks = rank_scores(self.scores) if self.items.size else np.zeros(0, np.float32)
        return self._ranks

    def cloud(self, scale: Scale) -> tuple[np.ndarray, np.ndarray]:
        """(cloud scores on ``scale`` (C,), items in the cloud's order (C,)), computed once per scale."""
        got = self._cloud.get(scale)
        if got is None:
            order = descending_order(self.scores)
            got = self._cloud[scale] = (normalise(self.scores, scale, order), self.items[order])
        return got


class _SeenMask:
    """The store's seen set as a boolean mask over item ids, kept in step event by event.

    Valid while it was built from the same set object and has counted as many items as
    the set holds (the set only grows); anything else rebuilds it from the set.
    """

    def __init__(self) -> None:
        self.mask = np.zeros(0, dtype=bool)
        self.source: set[int] | None = None
        self.n = 0

    def get(self, seen: set[int], size: int) -> np.ndarray:
        """(size,) True at every seen id below ``size``."""
        m = self.mask
        if self.source is not seen or self.n != len(seen) or m.size < size:
            m = np.zeros(max(size, m.size), dtype=bool)
            ids = np.fromiter(seen, dtype=np.int64, count=len(seen))
            m[ids[(ids > 0) & (ids < m.size)]] = True
            self.mask, self.source, self.n = m, seen, len(seen)
        return m[:size]

    def added(self, seen: set[int], item: int) -> None:
        """``item`` has just joined ``seen``."""
        if self.source is seen and self.n + 1 == len(seen):
            if 0 < item < self.mask.size:
                self.mask[item] = True
            self.n += 1


def system_of(reranker: Reranker | None) -> System:
    """The system a device with ``reranker`` runs: its release's, or the built-in one."""
    released = getattr(reranker, "system", None)
    return released if isinstance(released, System) else SYSTEM


class DeviceRuntime:
    def __init__(self, device_id: str, store: DeviceStore, reranker: Reranker | None,
                 client: CloudClient | None, policy: RequestPolicy | None = None,
                 config: RuntimeConfig | None = None,
                 clock: Callable[[], float] = time.time,
                 neighbours: NeighbourIndex | None = None,
                 request_model: RequestValueModel | None = None) -> None:
        self.device_id = device_id
        self.neighbours = neighbours  # None: the reranker's own index, if its release has one
        self._request_model = request_model  # None: the reranker's release's, if it has one
        self.store = store
        self.reranker = reranker
        self.client = client
        # With neither given, the device runs the system its release was published with
        # (dcrec.shared.system; the release config's ``system``), or the built-in system.
        system = system_of(reranker)
        self.policy = policy or policy_of(system.policy)
        self.config = config or system.device
        self.config.validate()
        cache = getattr(store, "history_cache", None)
        if cache is not None and self.config.history_window > cache:
            raise ValueError(f"history_window {self.config.history_window} is longer than the store's "
                             f"history_cache {cache}: open the store with history_cache >= "
                             f"{self.config.history_window}")
        self.clock = clock
        self.cached: CachedList | None = store.load_list()
        self.requests = 0
        self.failed_requests = 0
        self.events_since_request = 0
        self._list_fresh = False  # True from a successful request until the next event
        self.adapter: UserAdapter | None = None
        self._adapter_model: str | None = None  # version of the model the user vector belongs to
        self._shown = np.zeros(0, dtype=np.int64)
        self._remaining = 0  # cloud candidates not consumed yet
        self._disagreement = 0.0
        self._value: float | None = None  # the request model's predicted gain of a fresh list now
        self._last: _Scored | None = None
        self._live: _Live | None = None
        self._seen_mask = _SeenMask()
        self._warned_catalogue = False
        self._guard = CatalogueGuard(store, device_id)  # skips ids older runtimes stored unchecked
        self._load_state()
        self._guard.must_filter(self.catalogue_size(), self._model_version())  # warns now, not later
        if self.cached is not None:
            self._rerank()

    @classmethod
    def open(cls, path: str | Path, reranker: Reranker | None, client: CloudClient | None,
             policy: RequestPolicy | None = None, config: RuntimeConfig | None = None,
             device_id: str | None = None, clock: Callable[[], float] = time.time,
             neighbours: NeighbourIndex | None = None, on_damage: OnDamage = "quarantine") -> DeviceRuntime:
        """A runtime on the store file at ``path``; ``on_damage``: see :class:`DeviceStore`."""
        window = (config or system_of(reranker).device).history_window
        store = DeviceStore(path, history_cache=max(HISTORY_CACHE, window), on_damage=on_damage)
        try:
            return cls(device_id or Path(path).stem, store, reranker, client, policy, config, clock,
                       neighbours)
        except BaseException:
            store.close()
            raise

    @property
    def alpha(self) -> float:
        """The cloud's fusion weight."""
        return self.config.alpha

    # --- the event path ---------------------------------------------------------------------
    def record(self, item_id: int, ts: float | None = None) -> Recommendation:
        """Handle one behaviour event; returns what to show next.

        Raises ValueError, before anything is stored or shown changes, for an item id
        outside ``[1, n_items]`` of the model's catalogue (``[1, ...)`` when it is unknown).
        """
        now = self.clock() if ts is None else ts
        item = int(item_id)
        refuse(item, self.catalogue_size(), self._model_version())  # before anything is stored
        unseen = item not in self.store.seen()
        self.store.append(item_id, now)  # durable first: nothing below may lose it
        if unseen:
            self._seen_mask.added(self.store.seen(), item)
            self._consumed(item)
        self.events_since_request += 1
        self._list_fresh = False
        self._learn(item)
        self._rerank()
        reason = self.policy.decide(self._policy_input(now))
        ok = False
        if reason is not None:
            sent_before = self.requests
            ok = self.refresh(reason, now)
            if isinstance(self.policy, RequestFeedback):
                self.policy.observe(reason, self.requests > sent_before, ok)
            self._save_state()
        elif self.store.event_count() % self.config.persist_every == 0:
            self._save_state()
        return Recommendation(self._shown[: self.config.show].copy(), reason, ok,
                              self._disagreement, self.cached.age(now) if self.cached else 0.0)

    def recommend(self) -> np.ndarray:
        """(<=show,) the list the app shows now."""
        return self._shown[: self.config.show].copy()

    def refresh(self, reason: Reason = Reason.MANUAL, now: float | None = None) -> bool:
        """Ask the cloud for a new list; on any failure keep the cached one. Returns success."""
        now = self.clock() if now is None else now
        if self.client is None or not self.client.available():
            return False
        history = self.store.recent(self.config.history_window)
        times = self.store.recent_times(self.config.history_window)
        if self._guard.must_filter(self.catalogue_size(), self._model_version()):
            keep = self._guard.mask(history)
            history, times = history[keep], times[keep]
        if history.size == 0:
            return False
        req = CandidatesRequest(self.device_id, history, times,
                                self.config.candidates, reason, self.config.exclude_seen,
                                self.cached.list_id if self.cached else "")
        self.requests += 1
        start = time.perf_counter()
        try:
            resp = self.client.get_candidates(req)
        except (CloudUnavailable, CloudRejected) as e:
            self.failed_requests += 1
            self.store.log_request(now, reason.label, False, (time.perf_counter() - start) * 1e3,
                                   error=str(e))
            log.debug("%s: request failed (%s); serving the cached list", self.device_id, e)
            return False
        latency_ms = (time.perf_counter() - start) * 1e3
        self.adopt(CachedList(resp.items, resp.scores, resp.list_id, resp.model_version,
                              now, resp.ttl_seconds))
        self.store.log_request(now, reason.label, True, latency_ms, resp.list_id)
        return True

    def adopt(self, cached: CachedList) -> None:
        """Hold ``cached`` as the cloud's list, as a successful request does (stored, reranked)."""
        self.cached = cached
        self.store.save_list(cached)
        self.events_since_request = 0
        self._list_fresh = True
        self._rerank()

    def request_features(self, temperature: float = 2.0, show: int = 10, top: int = 20
                         ) -> np.ndarray | None:
        """The request-value features (:data:`dcrec.shared.request_value.FEATURES`) of the
        situation now, computed as the ``learned`` policy's events compute them; None without a
        cached list or a model that scores the catalogue. What the cloud replays to label."""
        history = self._history()
        if self.cached is None or self.reranker is None or history.size == 0:
            return None
        every = self._catalogue_scores(history)
        if every is None:
            return None
        live = self._live_candidates()
        local = None if self._list_fresh else self._local_list(history)
        device_scores = self._device_scores(history, live.items, every)[0]
        return self._situation(self._open_catalogue(every), live, device_scores, history, local,
                               temperature, show, top)

    # --- learning from the user's choices ------------------------------------------------------
    def _learn(self, item: int) -> None:
        if self.adapter is None:
            return
        last = self._last
        if last is None or last.items.size == 0:
            return
        hit = np.flatnonzero(last.items == item)
        if self.adapter is not None and last.emb is not None and last.model == self._model_version():
            # (a list scored by a model since replaced holds embeddings of another space)
            if hit.size:
                chosen = last.emb[hit[0]]
            else:  # a choice from outside the list still says where the user's taste is
                _, emb = self.reranker.score_with_embeddings(  # type: ignore[union-attr]
                    self._history(), np.array([item]))
                chosen = emb[0] if emb is not None and emb.shape[0] else None
            if chosen is not None:
                self.adapter.update(last.raw, last.emb, chosen)

    # --- internals ----------------------------------------------------------------------------
    def _live_candidates(self) -> _Live:
        """The cached candidates to rank now (without consumed items when ``exclude_seen``)."""
        cached = self.cached
        assert cached is not None
        live = self._live
        if not self.config.exclude_seen:
            if live is None or live.source is not cached or live.seen is not None:
                live = self._live = _Live(cached, None, 0, cached.items, cached.scores)
            return live
        seen = self.store.seen()
        if live is None or live.source is not cached or live.seen is not seen or live.n_seen != len(seen):
            keep = np.array([i not in seen for i in cached.items.tolist()], dtype=bool)
            live = self._live = _Live(cached, seen, len(seen), cached.items[keep], cached.scores[keep])
        return live

    def _consumed(self, item: int) -> None:
        """Keep the live candidates in step with ``item``, just added to the store's seen set."""
        live = self._live
        seen = self.store.seen()
        if live is None or live.seen is not seen or live.n_seen + 1 != len(seen):
            return  # not filtered against the set one item ago: the next rerank filters afresh
        drop = live.items == item
        if drop.any():
            keep = ~drop
            self._live = _Live(live.source, seen, len(seen), live.items[keep], live.scores[keep])
        else:
            live.n_seen = len(seen)

    def _device_scores(self, history: np.ndarray, items: np.ndarray, catalogue: np.ndarray | None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(adjusted scores, raw model scores, embeddings or None) for ``items`` (C,).

        ``catalogue``: the model's scores of every item for this history, when the
        measure needed them; the candidates' scores are then read from it, not computed again.
        """
        assert self.reranker is not None
        if not self.config.adapt:
            scores = catalogue[items] if catalogue is not None else self.reranker.score(history, items)
            return scores, scores, None
        score_emb = getattr(self.reranker, "score_with_embeddings", None)
        scores, emb = score_emb(history, items) if score_emb else (self.reranker.score(history, items), None)
        if emb is None:
            return scores, scores, None  # the model ships no embeddings: nothing to adapt
        version = self._model_version()
        if self.adapter is None or self.adapter.dim != emb.shape[1] or self._adapter_model != version:
            # A user vector lives in one model's embedding space: a new model starts afresh
            # (even at the same width), the same model after a restart resumes.
            self.adapter = UserAdapter(emb.shape[1], lr=self.config.adapt_lr, decay=self.config.adapt_decay)
            self._adapter_model = version
            self._load_adapter_state()
        return self.adapter.adjust(scores, emb), scores, emb

    def neighbour_index(self) -> NeighbourIndex | None:
        """The neighbour index in use: the one passed in, else the reranker's release's; None when off."""
        if not self.config.neighbours:
            return None
        return self.neighbours if self.neighbours is not None else getattr(self.reranker, "neighbours", None)

    def _local_list(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The index's local list for ``history`` (seen items left out), or None without an index."""
        index = self.neighbour_index()
        if index is None or history.size == 0:
            return None
        seen = self._seen_mask.get(self.store.seen(), index.n_items + 1) if self.config.exclude_seen else None
        items, scores = index.local_list(history, self.config.candidates, self.config.neighbour_recent,
                                         self.config.neighbour_decay, seen)
        return (items, scores) if items.size else None

    def catalogue_size(self) -> int | None:
        """The model's catalogue size ``n_items`` (from its release, or its neighbour index), if known."""
        n = getattr(self.reranker, "n_items", None)
        if n is None:
            index = self.neighbours if self.neighbours is not None else getattr(self.reranker, "neighbours", None)
            n = index.n_items if index is not None else None
        return n

    def _history(self) -> np.ndarray:
        """(<=history_window,) the newest item ids the model can score, oldest first."""
        return self._guard.usable(self.store.recent(self.config.history_window), self.catalogue_size(),
                                  self._model_version())

    @property
    def request_model(self) -> RequestValueModel | None:
        """The request-value model in use: the one given to the runtime, else the release's."""
        if self._request_model is not None:
            return self._request_model
        return getattr(self.reranker, "request_model", None)

    def _rerank(self) -> None:
        history = self._history()
        self._value = None
        local = None if self._list_fresh else self._local_list(history)
        if self.cached is None and local is None:
            self._shown = np.zeros(0, dtype=np.int64)
            self._remaining, self._disagreement, self._last = 0, 0.0, None
            return
        if self.cached is not None:
            live = self._live_candidates()
            items, cloud_scores = live.items, live.scores
            self._remaining = int(items.size)
            if local is None:
                cloud_norm, cloud_order = live.cloud(self.config.scale)
        else:  # no list from the cloud yet: the local list alone
            items, cloud_scores = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
            self._remaining = 0
        local_new = slice(0, 0)  # where the local list's own items sit in ``items``
        if local is not None:  # the history moved past the list: blend in the local list
            n_cached = items.size
            ranks = live.ranks() if self.cached is not None else None
            items, cloud_scores = blend_lists(items, cloud_scores, *local, self.config.neighbour_weight,
                                              ranks)
            local_new = slice(n_cached, items.size)
            order = descending_order(cloud_scores)
            cloud_norm, cloud_order = normalise(cloud_scores, self.config.scale, order), items[order]
        if items.size == 0 or self.reranker is None:
            shown = cloud_order if local is not None and items.size else items
            self._shown, self._disagreement, self._last = shown, 0.0, None
            return
        catalogue = self.config.measure in CATALOGUE_MEASURES
        value_model = (self.request_model if getattr(self.policy, "wants_value", False)
                       and self.cached is not None else None)
        every = (self._catalogue_scores(history)
                 if catalogue or self.config.device_candidates or value_model is not None else None)
        open_scores = self._open_catalogue(every) if every is not None else None
        top = self._catalogue_top(open_scores) if open_scores is not None else None
        extra = self._device_picks(open_scores, top, items) if self.config.device_candidates else None
        if extra is not None and extra.size:
            # The cloud did not rank the device's picks: they sit just below its worst item.
            floor = float(cloud_scores.min()) - 1.0 if cloud_scores.size else 0.0
            items = np.concatenate([items, extra])
            cloud_scores = np.concatenate([cloud_scores, np.full(extra.size, floor, cloud_scores.dtype)])
            cloud_norm = normalise(cloud_scores, self.config.scale)
        device_scores, raw, emb = self._device_scores(history, items, every)
        scale = self.config.scale
        order = descending_order(device_scores) if scale == "rank" or not catalogue else None
        fused = blend(cloud_norm, normalise(device_scores, scale, order), self.alpha)
        self._shown = items[descending_order(fused)]
        self._last = _Scored(items, cloud_scores, device_scores, raw, emb, self._model_version())
        if value_model is not None and open_scores is not None:
            self._value = self._request_value(value_model, open_scores, live, device_scores, history,
                                              local)
        if catalogue:
            self._disagreement = self._catalogue_disagreement(open_scores, top)
            return
        device_order = items[order]
        if local is not None and self.cached is not None:
            # The order measures compare the device with the cloud's own (cached) list, with or
            # without the index: the local list changes what is shown, not what the cloud said,
            # so a threshold set without the index keeps its meaning.
            own = np.ones(items.size, dtype=bool)
            own[local_new] = False
            device_order = items[own][descending_order(device_scores[own])]
            cloud_order = live.cloud(self.config.scale)[1]
        self._disagreement = disagreement(cloud_order, device_order, self.config.measure,
                                          self.config.measure_top)

    def _request_value(self, model: RequestValueModel, open_scores: np.ndarray, live: _Live,
                       device_scores: np.ndarray, history: np.ndarray,
                       local: tuple[np.ndarray, np.ndarray] | None) -> float:
        """The request model's predicted gain of a fresh list, from the features the harness
        trained it on (:func:`dcrec.shared.request_value.situation_features`). The cached
        candidates come first in ``device_scores`` (blending and the device's picks append)."""
        x = self._situation(open_scores, live, device_scores[: live.items.size], history, local,
                            model.temperature, model.show, model.top)
        return float(model.predict(x[None, :])[0])

    def _situation(self, open_scores: np.ndarray, live: _Live, live_device: np.ndarray,
                   history: np.ndarray, local: tuple[np.ndarray, np.ndarray] | None,
                   temperature: float, show: int, top: int) -> np.ndarray:
        n = min(self.events_since_request, history.size)
        return situation_features(open_scores, self._shown[:show], live.items, live.scores,
                                  live_device, self.cached.items,  # type: ignore[union-attr]
                                  history[history.size - n:], len(self.store.seen()),
                                  None if local is None else local[0], temperature, show, top)

    def _open_catalogue(self, catalogue: np.ndarray) -> np.ndarray:
        """(N+1,) float64 copy of the catalogue scores with padding and, when ``exclude_seen``,
        consumed items at ``-inf``: what the device could still show."""
        scores = np.array(catalogue, dtype=np.float64)
        scores[0] = -np.inf
        if self.config.exclude_seen:
            scores[self._seen_mask.get(self.store.seen(), scores.size)] = -np.inf
        return scores

    def _catalogue_top(self, scores: np.ndarray) -> np.ndarray:
        """Ids of the best ``max(device_candidates, show)`` of :meth:`_open_catalogue`'s ``scores``
        (any order): one partition of the catalogue serves the device's picks and the regret."""
        k = min(max(self.config.device_candidates, self.config.show), scores.size)
        return np.argpartition(-scores, k - 1)[:k]

    def _device_picks(self, scores: np.ndarray | None, top: np.ndarray | None,
                      listed: np.ndarray) -> np.ndarray:
        """The device model's ``device_candidates`` best items among :meth:`_open_catalogue`'s
        ``scores`` (``top``: :meth:`_catalogue_top`), best first, less those the cloud listed."""
        if scores is None or top is None:
            return np.zeros(0, dtype=np.int64)
        want = self.config.device_candidates
        if scores.size - 1 - len(self.store.seen()) < want:  # few items left: count what can be shown
            want = min(want, int(np.isfinite(scores).sum()))
        if want <= 0:
            return np.zeros(0, dtype=np.int64)
        best = top[descending_order(scores[top])][:want].astype(np.int64)
        return best[~(best[:, None] == np.asarray(listed)[None, :]).any(axis=1)]

    def _catalogue_scores(self, history: np.ndarray) -> np.ndarray | None:
        """(N+1,) the model's scores of every item id, or None (with one warning) if it cannot."""
        score_all = getattr(self.reranker, "score_catalogue", None)
        scores = score_all(history) if score_all is not None else None
        if scores is None and not self._warned_catalogue:
            log.warning("%s: measure %r / device_candidates need a model that knows its "
                        "catalogue size (n_items in its release config); disagreement stays 0 "
                        "and only the cloud's candidates are ranked",
                        self.device_id, self.config.measure)
            self._warned_catalogue = True
        return scores

    def _catalogue_disagreement(self, scores: np.ndarray | None, top: np.ndarray | None = None) -> float:
        """``regret``, ``uncovered`` or ``coverage`` from :meth:`_open_catalogue`'s scores."""
        if scores is None:  # a model that cannot score the catalogue: never a trigger
            return 0.0
        if self.config.measure == "regret":
            return regret_of_scores(scores, self.config.regret_temperature, self._shown,
                                    self.config.show, top)
        if self.config.measure == "uncovered":
            listed = self._live.items if self._live is not None else self._shown
            return uncovered_mass(softmax(scores, self.config.regret_temperature), listed)
        top = min(self.config.measure_top, scores.size - 1)
        device_top = np.argpartition(-scores, top)[:top]
        return coverage_gap(device_top, self.cached.items if self.cached is not None else self._shown)

    def _policy_input(self, now: float) -> PolicyInput:
        c = self.cached
        remaining = self._remaining if c is not None else 0
        return PolicyInput(now=now, has_list=c is not None, list_age_s=c.age(now) if c else 0.0,
                           ttl_s=c.ttl_seconds if c else 0.0, remaining=remaining,
                           total=c.items.size if c else 0, disagreement=self._disagreement,
                           events_since_request=self.events_since_request, value=self._value)

    # --- learned state in the store -------------------------------------------------------------
    def _load_state(self) -> None:
        raw = self.store.get_meta("runtime_state")
        self._adapter_state = None
        try:
            state = json.loads(raw) if raw else {}
            policy_state = state.get("policy", {})
            if policy_state.get("name") == getattr(self.policy, "name", None) and hasattr(self.policy, "load_state"):
                self.policy.load_state(policy_state["state"])
            self._adapter_state = state.get("adapter")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            # a damaged value (not JSON, or not the shape written): the learned state starts afresh
            log.warning("%s: stored runtime state unusable (%s: %s); starting afresh",
                        getattr(self.store, "path", self.device_id), type(e).__name__, e)

    def _model_version(self) -> str:
        return str(getattr(self.reranker, "version", "") or "")

    def _load_adapter_state(self) -> None:
        saved = self._adapter_state
        if self.adapter is None or not saved:
            return
        if "model" in saved:  # {"model": version, "state": ...}: only for the model that learnt it
            if saved["model"] != self._adapter_model:
                log.info("user vector learnt with model %s; starting afresh for %s",
                         saved["model"], self._adapter_model)
                return
            saved = saved["state"]
        try:
            self.adapter.load_state(saved)
        except (KeyError, ValueError) as e:
            log.warning("stored user vector unusable (%s); starting afresh", e)

    def _save_state(self) -> None:
        state: dict[str, object] = {}
        if hasattr(self.policy, "state"):
            state["policy"] = {"name": self.policy.name, "state": self.policy.state()}
        if self.adapter is not None:
            state["adapter"] = {"model": self._adapter_model, "state": self.adapter.state()}
        if state:
            self.store.set_meta("runtime_state", json.dumps(state))

    def upload_telemetry(self, max_batches: int = 10) -> FlushResult:
        """Send the store's telemetry outbox to the cloud (see :mod:`dcrec.device.telemetry`).

        Meant for idle moments, not the per-event path; without a client nothing is sent.
        """
        if self.client is None:
            return FlushResult(pending=self.store.pending_count(), error="no cloud client")
        return TelemetryUploader(self.store, self.client, self.device_id).flush(max_batches)

    def close(self) -> None:
        self._save_state()
        self.store.close()
