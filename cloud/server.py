"""The cloud's gRPC server: a servicer that only translates, and its factory.

``create_server`` binds the address (port 0 picks a free port, which is how
tests run real servers side by side) and returns ``(server, port)``; the
caller starts and stops it. ``serve`` runs one until SIGTERM/SIGINT, turning
health to NOT_SERVING first and letting in-flight calls finish.

Example::

    server, port = create_server("127.0.0.1:0", CandidateService(gen), registry)
    server.start()
    ...
    shutdown(server, grace_s=5.0)
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cloud.registry import ModelRegistry, RegistryError
from cloud.service import CandidateService, InvalidRequest
from shared.convert import model_to_pb, request_from_pb, response_to_pb
from shared.proto.dcrec.v1 import recommend_pb2 as pb
from shared.proto.dcrec.v1 import recommend_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "dcrec.v1.Recommender"


@dataclass(frozen=True)
class ServerConfig:
    max_workers: int = 16  # handler threads; calls beyond this queue in gRPC
    max_message_bytes: int = 64 * 1024 * 1024  # device models travel in one message
    grace_s: float = 5.0  # how long in-flight calls may finish on shutdown


class RecommenderServicer(pb_grpc.RecommenderServicer):
    """Translates protobuf to :class:`CandidateService` calls and errors to status codes."""

    def __init__(self, service: CandidateService, registry: ModelRegistry | None) -> None:
        self.service = service
        self.registry = registry

    def GetCandidates(self, request: pb.GetCandidatesRequest, context: grpc.ServicerContext
                      ) -> pb.GetCandidatesResponse:
        try:
            resp = self.service.get_candidates(request_from_pb(request))
        except InvalidRequest as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return response_to_pb(resp)

    def GetDeviceModel(self, request: pb.GetDeviceModelRequest, context: grpc.ServicerContext
                       ) -> pb.GetDeviceModelResponse:
        if self.registry is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "this server hands out no device models")
        try:
            model = self.registry.current()
        except RegistryError:
            log.exception("device model registry is unreadable")
            context.abort(grpc.StatusCode.UNAVAILABLE, "device model registry unavailable")
        if model is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no device model published")
        return model_to_pb(model, updated=request.current_version != model.version)


def create_server(address: str, service: CandidateService, registry: ModelRegistry | None = None,
                  config: ServerConfig | None = None) -> tuple[grpc.Server, int, health.HealthServicer]:
    """Build a server bound to ``address``; returns (server, bound port, health servicer)."""
    config = config or ServerConfig()
    opts = [
        ("grpc.max_receive_message_length", 4 * 1024 * 1024),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 1),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.max_workers), options=opts)
    pb_grpc.add_RecommenderServicer_to_server(RecommenderServicer(service, registry), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer


def shutdown(server: grpc.Server, health_servicer: health.HealthServicer, grace_s: float) -> None:
    """Stop taking new calls, let in-flight ones finish within ``grace_s`` seconds."""
    health_servicer.enter_graceful_shutdown()
    server.stop(grace_s).wait(grace_s + 1.0)


def serve(address: str, service: CandidateService, registry: ModelRegistry | None,
          config: ServerConfig | None = None,
          on_ready: Callable[[int], None] | None = None) -> int:
    """Run until SIGTERM or SIGINT; ``on_ready(port)`` runs once serving. Returns the port."""
    config = config or ServerConfig()
    server, port, health_servicer = create_server(address, service, registry, config)
    server.start()
    log.info("serving %s (model %s) on port %d", SERVICE_NAME, service.generator.version, port)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down (grace %.1fs)", signum, config.grace_s)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    if on_ready is not None:
        on_ready(port)
    stop.wait()
    shutdown(server, health_servicer, config.grace_s)
    log.info("stopped")
    return port
