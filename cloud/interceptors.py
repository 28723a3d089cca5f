"""gRPC server interceptors: telemetry, load shedding, and error containment.

The server installs them outermost first::

    Telemetry -> Limiter -> Auth (cloud.auth) -> Errors -> servicer

* :class:`TelemetryInterceptor` times every unary call and counts its final code.
* :class:`LimiterInterceptor` admits at most ``max_inflight`` calls at once and
  answers the rest ``RESOURCE_EXHAUSTED`` at once (a client backs off; nothing
  queues without bound), and answers ``UNAVAILABLE`` once draining for shutdown.
* :class:`ErrorInterceptor` turns any unexpected exception into ``INTERNAL`` with
  an error id; the traceback (and whatever secret the message held) goes only
  to the server log.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc

from cloud.metrics import Telemetry

log = logging.getLogger(__name__)

Behavior = Callable[[Any, grpc.ServicerContext], Any]


def _wrap(handler: Any, wrapper: Callable[[Behavior], Behavior]) -> Any:
    """``handler`` with its unary-unary behaviour wrapped; streaming handlers pass untouched."""
    if handler is None or handler.unary_unary is None:
        return handler
    return grpc.unary_unary_rpc_method_handler(
        wrapper(handler.unary_unary), request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer)


def _aborted(context: grpc.ServicerContext) -> bool:
    """True once the handler called ``context.abort`` (grpc then raises a bare Exception)."""
    code = context.code()  # type: ignore[attr-defined]
    return code is not None and code != grpc.StatusCode.OK


class TelemetryInterceptor(grpc.ServerInterceptor):
    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        self._lock = threading.Lock()

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        method = details.method.rsplit("/", 1)[-1]  # type: ignore[attr-defined]
        t = self.telemetry

        def wrapper(inner: Behavior) -> Behavior:
            def behavior(request: Any, context: grpc.ServicerContext) -> Any:
                start = time.perf_counter()
                with self._lock:
                    t.inflight += 1
                code = grpc.StatusCode.UNKNOWN
                try:
                    result = inner(request, context)
                    code = context.code() or grpc.StatusCode.OK  # type: ignore[attr-defined]
                    return result
                except BaseException:
                    code = context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
                    raise
                finally:
                    with self._lock:
                        t.inflight -= 1
                    t.observe_call(method, code.name, time.perf_counter() - start)
            return behavior

        return _wrap(continuation(details), wrapper)


class LimiterInterceptor(grpc.ServerInterceptor):
    """Concurrency limit and drain switch for the services under ``protected``."""

    def __init__(self, max_inflight: int, protected: tuple[str, ...] = ("dcrec.v1.",)) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        self.max_inflight = max_inflight
        self.protected = protected
        self._slots = threading.BoundedSemaphore(max_inflight)
        self.draining = threading.Event()
        self.shed = 0

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        method = details.method.lstrip("/")  # type: ignore[attr-defined]
        handler = continuation(details)
        if not any(method.startswith(p) for p in self.protected):
            return handler

        def wrapper(inner: Behavior) -> Behavior:
            def behavior(request: Any, context: grpc.ServicerContext) -> Any:
                if self.draining.is_set():
                    context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
                if not self._slots.acquire(blocking=False):
                    self.shed += 1
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"server at capacity ({self.max_inflight} calls in flight); "
                                  "retry with back-off")
                try:
                    return inner(request, context)
                finally:
                    self._slots.release()
            return behavior

        return _wrap(handler, wrapper)


class ErrorInterceptor(grpc.ServerInterceptor):
    """No internal error text reaches a client: INTERNAL plus an id that finds the log line."""

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        method = details.method  # type: ignore[attr-defined]

        def wrapper(inner: Behavior) -> Behavior:
            def behavior(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    return inner(request, context)
                except Exception:
                    if _aborted(context):  # a deliberate status with a vetted message
                        raise
                    error_id = uuid.uuid4().hex[:12]
                    log.exception("error %s in %s", error_id, method)
                    context.abort(grpc.StatusCode.INTERNAL, f"internal error (id {error_id})")
            return behavior

        return _wrap(continuation(details), wrapper)
