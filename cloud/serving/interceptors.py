"""gRPC server interceptors: telemetry, load shedding, and error containment.

The server installs them outermost first::

    Telemetry -> Limiter -> Auth (cloud.auth) -> Errors -> servicer

* :class:`TelemetryInterceptor` times every unary call and counts its final code,
  also for the calls no handler runs for: an unknown method, a request over
  the size limit or one that does not decode (refused here, so they are
  counted), and a call gRPC core itself refuses because the server's queue
  bound is reached. Every ``RESOURCE_EXHAUSTED`` a client sees is counted in
  ``dcrec_shed_total{stage}`` and ``dcrec_errors_total``; the one exception is
  a message over the transport's hard cap (4x the size limit), which gRPC core
  drops before any Python code runs (docs/OPERATIONS.md).
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
from dataclasses import dataclass
from typing import Any

import grpc

from dcrec.cloud.serving.metrics import Telemetry

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


@dataclass(frozen=True)
class _Refused:
    """Stands in for a request the deserializer would not decode; the behaviour refuses it."""

    code: grpc.StatusCode
    details: str
    stage: str  # dcrec_shed_total's stage when the code is RESOURCE_EXHAUSTED


def _guarded(deserializer: Callable[[bytes], Any] | None, max_bytes: int | None
             ) -> Callable[[bytes], Any]:
    """``deserializer`` that answers a :class:`_Refused` instead of raising or decoding too much."""
    def decode(data: bytes) -> Any:
        if max_bytes is not None and len(data) > max_bytes:
            return _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"request of {len(data)} bytes is over the limit of {max_bytes} bytes",
                            "size")
        try:
            return deserializer(data) if deserializer is not None else data
        except Exception as e:  # protobuf's DecodeError, or anything a hostile payload provokes
            return _Refused(grpc.StatusCode.INVALID_ARGUMENT,
                            f"request does not decode ({type(e).__name__})", "decode")
    return decode


class TelemetryInterceptor(grpc.ServerInterceptor):
    """Counts every call; ``max_request_bytes`` refuses larger requests (counted) before decoding."""

    def __init__(self, telemetry: Telemetry, max_request_bytes: int | None = None) -> None:
        self.telemetry = telemetry
        self.max_request_bytes = max_request_bytes
        self._lock = threading.Lock()
        self._server_state: Any = None

    def bind(self, server: grpc.Server) -> None:
        """Watch ``server``'s queue bound, so the calls gRPC core refuses are counted too.

        gRPC core refuses a call over ``maximum_concurrent_rpcs`` right after it asks
        the interceptors for the handler, under the same lock and from the same two
        fields this reads (grpc/_server.py); no public API tells an interceptor.
        """
        state = getattr(server, "_state", None)
        if state is None or not hasattr(state, "active_rpc_count") or not hasattr(
                state, "maximum_concurrent_rpcs"):
            log.warning("this grpcio does not expose the server's call count; calls refused by "
                        "its queue bound will not be counted")
            return
        self._server_state = state

    def _queue_full(self) -> bool:
        st = self._server_state
        return (st is not None and st.maximum_concurrent_rpcs is not None
                and st.active_rpc_count >= st.maximum_concurrent_rpcs)

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        method = details.method.rsplit("/", 1)[-1]  # type: ignore[attr-defined]
        t = self.telemetry
        handler = continuation(details)
        if handler is None:
            t.observe_call(method, "UNIMPLEMENTED", 0.0)
            return None
        if self._queue_full():  # gRPC core answers RESOURCE_EXHAUSTED once this returns
            t.observe_shed(method, "server")
            return handler
        if handler.unary_unary is None:
            return handler

        def behavior(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            with self._lock:
                t.inflight += 1
            code = grpc.StatusCode.UNKNOWN
            try:
                if isinstance(request, _Refused):
                    if request.code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                        t.shed.labels(stage=request.stage).inc()
                    context.abort(request.code, request.details)
                result = handler.unary_unary(request, context)
                code = context.code() or grpc.StatusCode.OK  # type: ignore[attr-defined]
                return result
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
                raise
            finally:
                with self._lock:
                    t.inflight -= 1
                t.observe_call(method, code.name, time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(
            behavior, request_deserializer=_guarded(handler.request_deserializer,
                                                    self.max_request_bytes),
            response_serializer=handler.response_serializer)


class LimiterInterceptor(grpc.ServerInterceptor):
    """Concurrency limit and drain switch for the services under ``protected``."""

    def __init__(self, max_inflight: int, protected: tuple[str, ...] = ("dcrec.v1.",),
                 telemetry: Telemetry | None = None) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        self.max_inflight = max_inflight
        self.protected = protected
        self.telemetry = telemetry  # counts dcrec_shed_total{stage="limiter"}
        self._slots = threading.BoundedSemaphore(max_inflight)
        self._count_lock = threading.Lock()
        self.draining = threading.Event()
        self.shed = 0
        self.inflight = 0  # admitted calls still running


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
                    if self.telemetry is not None:
                        self.telemetry.shed.labels(stage="limiter").inc()
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"server at capacity ({self.max_inflight} calls in flight); "
                                  "retry with back-off")
                with self._count_lock:
                    self.inflight += 1
                try:
                    return inner(request, context)
                finally:
                    with self._count_lock:
                        self.inflight -= 1
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
