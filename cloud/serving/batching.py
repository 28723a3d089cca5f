"""Dynamic batching: concurrent requests share one generator call.

Handler threads :meth:`DynamicBatcher.submit` a request and wait on the
returned :class:`Ticket`; a batcher thread takes the oldest queued request,
waits up to ``max_wait_ms`` for more (or until ``max_batch_size`` are queued),
and answers the whole batch with one call of ``answer``. A transformer scores
64 histories in little more time than one, so under load the server's
throughput grows with the batch while each request waits at most a few
milliseconds longer.

Guarantees:

* bounded queue: :meth:`submit` raises :class:`QueueFull` once ``max_queue``
  requests wait (the server answers ``RESOURCE_EXHAUSTED``, as its limiter
  does when calls exceed ``max_inflight``);
* deadlines: a request whose deadline passed while it was queued is never
  computed; its ticket raises :class:`DeadlineExpired`;
* per-request results: ``answer`` gets a list and returns one outcome per
  request (a response or an exception), so one bad request fails alone.

Example::

    batcher = DynamicBatcher(service.answer_batch, BatchConfig(max_batch_size=64, max_wait_ms=5))
    batcher.start()
    response = batcher.submit(request, deadline=time.monotonic() + 1.0).wait()
    batcher.close()
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")


@dataclass(frozen=True)
class BatchConfig:
    max_batch_size: int = 64  # requests per generator call; a small transformer's cost per request stops falling near here
    max_wait_ms: float = 5.0  # the longest the oldest queued request waits for company; 0 = take what is queued
    max_queue: int = 0  # waiting requests before new ones are shed; 0 = 4 * max_batch_size
    default_deadline_s: float = 30.0  # for calls that carry no deadline, so no wait is unbounded
    threads: int = 1  # batches computed at once; 2 keeps a second core busy while one batch runs
    adaptive: bool = True  # stop waiting once no announced call is still on its way: no wait at low load

    def validate(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"batch max size must be >= 1, got {self.max_batch_size}")
        if not 0.0 <= self.max_wait_ms <= 1000.0:
            raise ValueError(f"batch max wait must be in 0..1000 ms, got {self.max_wait_ms}")
        if self.max_queue < 0:
            raise ValueError(f"batch queue must be >= 0, got {self.max_queue}")
        if self.default_deadline_s <= 0:
            raise ValueError("default_deadline_s must be > 0")
        if not 1 <= self.threads <= 64:
            raise ValueError(f"batch threads must be in 1..64, got {self.threads}")

    @property
    def queue_limit(self) -> int:
        return self.max_queue or 4 * self.max_batch_size


class QueueFull(RuntimeError):
    """The batch queue is full: shed the request (RESOURCE_EXHAUSTED)."""


class DeadlineExpired(TimeoutError):
    """The request's deadline passed before it was answered; it was not computed."""


class BatcherClosed(RuntimeError):
    """The batcher is shut down and takes no new requests (UNAVAILABLE)."""


class Ticket(Generic[Resp]):
    """One queued request: :meth:`wait` returns its response or raises its error."""

    __slots__ = ("request", "deadline", "enqueued", "_done", "_result", "_error", "abandoned")

    def __init__(self, request: object, deadline: float, enqueued: float) -> None:
        self.request = request
        self.deadline = deadline  # time.monotonic() seconds
        self.enqueued = enqueued
        self._done = threading.Lock()  # held until answered: a cheaper latch than an Event
        self._done.acquire()
        self._result: Resp | None = None
        self._error: BaseException | None = None
        self.abandoned = False  # the caller stopped waiting: skip it if not yet computed

    def _finish(self, result: Resp | None, error: BaseException | None) -> None:
        self._result, self._error = result, error
        self._done.release()

    def done(self) -> bool:
        return not self._done.locked()

    def wait(self, timeout_s: float | None = None) -> Resp:
        """Block until answered; at most until the deadline (plus ``timeout_s`` if given)."""
        bound = max(0.0, self.deadline - time.monotonic()) if timeout_s is None else timeout_s
        if not self._done.acquire(timeout=bound):
            self.abandoned = True
            raise DeadlineExpired("deadline passed while waiting for a batch")
        self._done.release()  # answered stays answered for a second wait
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]


Answer = Callable[[Sequence[Req]], Sequence["Resp | BaseException"]]


class Arrival(Generic[Req, Resp]):
    """An announced call: :meth:`submit` it once, or leave the ``with`` block to withdraw it."""

    __slots__ = ("_batcher", "_open")

    def __init__(self, batcher: DynamicBatcher[Req, Resp]) -> None:
        self._batcher = batcher
        self._open = True

    def submit(self, request: Req, deadline: float | None = None) -> Ticket[Resp]:
        if not self._open:
            raise RuntimeError("this arrival was already submitted or withdrawn")
        self._open = False
        return self._batcher.submit(request, deadline, announced=True)

    def __enter__(self) -> Arrival[Req, Resp]:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._open:
            self._open = False
            self._batcher._withdraw()


class DynamicBatcher(Generic[Req, Resp]):
    """A bounded queue and ``config.threads`` threads that answer requests in batches.

    ``answer(requests)`` must return one outcome per request, in order: a
    response, or an exception to raise in that request's waiter.
    ``on_batch(size)`` is told the size of every batch computed.
    """

    def __init__(self, answer: Answer, config: BatchConfig | None = None,
                 on_batch: Callable[[int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or BatchConfig()
        self.config.validate()
        self._answer = answer
        self._on_batch = on_batch
        self._clock = clock
        self._queue: deque[Ticket[Resp]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._arriving = 0  # calls announced (being parsed, validated) but not yet submitted
        self._threads: list[threading.Thread] = []
        self._stats_lock = threading.Lock()
        self.batches = 0  # generator calls made
        self.answered = 0  # requests computed
        self.expired = 0  # requests dropped because their deadline passed in the queue
        self.shed = 0  # requests refused because the queue was full

    # --- caller side ----------------------------------------------------------------------------
    def start(self) -> DynamicBatcher[Req, Resp]:
        if not self._threads:
            self._threads = [threading.Thread(target=self._run, name=f"dcrec-batcher-{i}", daemon=True)
                             for i in range(self.config.threads)]
            for t in self._threads:
                t.start()
        return self

    def arrival(self) -> Arrival[Req, Resp]:
        """Announce a call that is about to be submitted (use as a context manager).

        With ``adaptive``, a forming batch waits for company only while some
        announced call is still on its way (being parsed and validated), so a
        lone request never waits ``max_wait_ms``. Leaving the ``with`` block
        without :meth:`Arrival.submit` (a bad request) withdraws the announcement.
        """
        with self._cond:
            self._arriving += 1
        return Arrival(self)

    def _withdraw(self) -> None:
        with self._cond:
            self._arriving -= 1
            if self._arriving == 0:
                self._cond.notify()

    def submit(self, request: Req, deadline: float | None = None,
               announced: bool = False) -> Ticket[Resp]:
        """Queue ``request``; ``deadline`` in ``time.monotonic()`` seconds (None: the default)."""
        now = self._clock()
        if deadline is None:
            deadline = now + self.config.default_deadline_s
        ticket: Ticket[Resp] = Ticket(request, deadline, now)
        with self._cond:
            if announced:
                self._arriving -= 1
            if self._closed:
                raise BatcherClosed("server is shutting down")
            if len(self._queue) >= self.config.queue_limit:
                self.shed += 1
                raise QueueFull(f"batch queue full ({self.config.queue_limit} requests waiting); "
                                "retry with back-off")
            self._queue.append(ticket)
            if (len(self._queue) == 1 or len(self._queue) >= self.config.max_batch_size
                    or (self.config.adaptive and self._arriving == 0)):
                self._cond.notify()  # the batcher waits for a first request, a full batch, or no more
        return ticket

    def __call__(self, request: Req, deadline: float | None = None) -> Resp:
        """Submit and wait: the response, or the request's error."""
        return self.submit(request, deadline).wait()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def close(self, timeout_s: float = 5.0) -> None:
        """Take no new requests; answer what is queued, then stop the threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # --- batcher thread -------------------------------------------------------------------------
    def _take(self) -> list[Ticket[Resp]] | None:
        """The next batch: once it is full, its oldest request waited ``max_wait_ms``, or
        (``adaptive``) no announced call is still on its way."""
        cfg = self.config
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait(1.0)  # bounded: re-checks the closed flag
            ready_at = self._queue[0].enqueued + cfg.max_wait_ms / 1000.0
            while len(self._queue) < cfg.max_batch_size and not self._closed:
                if cfg.adaptive and self._arriving <= 0:
                    break  # nobody else is on the way: waiting would only add latency
                left = ready_at - self._clock()
                if left <= 0:
                    break
                self._cond.wait(left)
            n = min(cfg.max_batch_size, len(self._queue))
            return [self._queue.popleft() for _ in range(n)]

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            now = self._clock()
            live = []
            for t in batch:
                if t.abandoned or t.deadline <= now:
                    with self._stats_lock:
                        self.expired += 1
                    t._finish(None, DeadlineExpired("deadline passed while queued; not computed"))
                else:
                    live.append(t)
            if live:
                self._compute(live)

    def _compute(self, live: list[Ticket[Resp]]) -> None:
        try:
            outcomes = list(self._answer([t.request for t in live]))  # type: ignore[misc]
            if len(outcomes) != len(live):
                raise RuntimeError(f"answer returned {len(outcomes)} outcomes for {len(live)} requests")
        except Exception as e:  # the whole call failed: every request in it fails with it
            log.exception("batch of %d failed", len(live))
            outcomes = [e] * len(live)
        with self._stats_lock:
            self.batches += 1
            self.answered += len(live)
        if self._on_batch is not None:
            self._on_batch(len(live))
        for t, out in zip(live, outcomes, strict=True):
            if isinstance(out, BaseException):
                t._finish(None, out)
            else:
                t._finish(out, None)  # type: ignore[arg-type]
