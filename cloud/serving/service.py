"""The cloud's request logic, free of gRPC: validate, generate, describe the list.

The servicer translates protobuf to these calls and :class:`InvalidRequest`
to ``INVALID_ARGUMENT``; tests and benchmarks can call it directly.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dcrec.cloud.models.generator import CandidateGenerator
from dcrec.shared.contract import CandidatesRequest, CandidatesResponse

log = logging.getLogger(__name__)


class InvalidRequest(ValueError):
    """A request field is out of range; ``field`` names it for the client."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class ServiceConfig:
    max_count: int = 500  # candidates per list; bounds response size and device work
    max_history: int = 200  # events per request; older ones add little and cost bandwidth
    ttl_seconds: float = 3600.0  # how long a device may treat a list as fresh
    max_device_id: int = 128  # characters
    max_list_id: int = 128  # characters; list ids are ours (32 hex), anything longer is junk

    def validate(self) -> None:
        if self.max_count < 1 or self.max_history < 1:
            raise ValueError("max_count and max_history must be >= 1")
        if self.ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be > 0, got {self.ttl_seconds}")


class CandidateService:
    """Answers candidate requests with one generator."""

    def __init__(self, generator: CandidateGenerator, config: ServiceConfig | None = None) -> None:
        self.generator = generator
        self.config = config or ServiceConfig()
        self.config.validate()

    def validate(self, req: CandidatesRequest, generator: CandidateGenerator | None = None) -> None:
        """Raise :class:`InvalidRequest` naming the first out-of-range field."""
        cfg = self.config
        n_items = (generator or self.generator).n_items
        self.check_device_id(req.device_id)
        if not 1 <= req.count <= cfg.max_count:
            raise InvalidRequest("count", f"must be in 1..{cfg.max_count}, got {req.count}")
        n = req.history.size
        if n == 0:
            raise InvalidRequest("history", "must not be empty")
        if n > cfg.max_history:
            raise InvalidRequest("history", f"at most {cfg.max_history} events, got {n}")
        self.check_items(req, n_items)
        if not np.isfinite(req.timestamps).all():
            raise InvalidRequest("history.timestamp", "must be finite")
        if len(req.current_list_id) > cfg.max_list_id:
            raise InvalidRequest("current_list_id", f"longer than {cfg.max_list_id} characters")

    def check_device_id(self, device_id: str) -> None:
        """Raise :class:`InvalidRequest` for an empty or overlong device id (every RPC's check)."""
        if not device_id:
            raise InvalidRequest("device_id", "must not be empty")
        if len(device_id) > self.config.max_device_id:
            raise InvalidRequest("device_id", f"longer than {self.config.max_device_id} characters")

    @staticmethod
    def check_items(req: CandidatesRequest, n_items: int) -> None:
        """Raise :class:`InvalidRequest` for an item id outside ``1..n_items`` (the model-dependent check)."""
        h = req.history
        if h.min() < 1 or h.max() > n_items:  # two reductions; the mask only on failure
            first = int(h[np.argmax((h < 1) | (h > n_items))])
            raise InvalidRequest(
                "history.item_id", f"unknown item id {first} (valid: 1..{n_items})"
            )

    def get_candidates(self, req: CandidatesRequest) -> CandidatesResponse:
        generator = self.generator  # one model per call, even while an operator swaps it
        self.validate(req, generator)
        [cands] = generator.generate([req.history], req.count, req.exclude_seen)
        return self.respond(cands.items, cands.scores, generator.version)

    def answer_batch(self, reqs: Sequence[CandidatesRequest],
                     on_call: Callable[[int], None] | None = None, validated: bool = False
                     ) -> list[CandidatesResponse | InvalidRequest]:
        """One outcome per request, in order: its response, or the :class:`InvalidRequest` it raised.

        Requests sharing ``count`` and ``exclude_seen`` (normally all of them)
        share one ``generate`` call, so every answer equals the one
        :meth:`get_candidates` gives alone, for any backend: a request is never
        served a list cut from a longer one (beam search, for instance, ranks
        differently for another count). ``on_call(n)`` is told each call's size.
        ``validated``: the requests passed :meth:`validate` already (the server
        does that before queueing), so only the item ids are checked again, against
        the model this batch uses.
        """
        generator = self.generator  # one model per batch, even while an operator swaps it
        out: list[CandidatesResponse | InvalidRequest | None] = [None] * len(reqs)
        groups: dict[tuple[int, bool], list[int]] = defaultdict(list)
        for i, r in enumerate(reqs):
            try:
                if validated:  # the model may have changed while the request queued
                    self.check_items(r, generator.n_items)
                else:
                    self.validate(r, generator)
            except InvalidRequest as e:
                out[i] = e
                continue
            groups[(r.count, r.exclude_seen)].append(i)
        for (count, exclude_seen), idx in groups.items():
            lists = generator.generate([reqs[i].history for i in idx], count, exclude_seen)
            if on_call is not None:
                on_call(len(idx))
            for i, c in zip(idx, lists, strict=True):
                out[i] = self.respond(c.items, c.scores, generator.version)
        return out  # type: ignore[return-value]

    def get_candidates_batch(self, reqs: list[CandidatesRequest]) -> list[CandidatesResponse]:
        """Answer several requests with as few generator calls as possible; raise the first invalid one."""
        outcomes = self.answer_batch(reqs)
        for o in outcomes:
            if isinstance(o, InvalidRequest):
                raise o
        return outcomes  # type: ignore[return-value]

    def respond(self, items: np.ndarray, scores: np.ndarray,
                version: str | None = None) -> CandidatesResponse:
        return CandidatesResponse(
            items=np.asarray(items, dtype=np.int64),
            scores=np.asarray(scores, dtype=np.float32),
            list_id=uuid.uuid4().hex,
            model_version=version or self.generator.version,
            ttl_seconds=self.config.ttl_seconds,
            generated_at=time.time(),
        )
