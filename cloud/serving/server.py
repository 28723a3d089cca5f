"""The cloud's gRPC server: a servicer that only translates, and its factory.

``create_server`` binds the address (port 0 picks a free port, which is how
tests run real servers side by side) and returns ``(server, port, health)``;
the caller starts and stops it. :func:`build_server` returns the same plus the
parts operators see (telemetry, the device event log, the drain switch).
``serve`` runs one, with the HTTP operator surface beside it, until
SIGTERM/SIGINT: new calls are refused and health turns NOT_SERVING first,
then in-flight calls get ``grace_s`` seconds to finish.

Batching: with ``ServerConfig(batching=BatchConfig(...))`` concurrent
GetCandidates calls queue into a :class:`~dcrec.cloud.serving.batching.DynamicBatcher` and
share generator calls; a full queue answers ``RESOURCE_EXHAUSTED``, a call
whose deadline passes while queued ``DEADLINE_EXCEEDED`` (never computed).
Every response carries the trailing metadata ``dcrec-replica``: an opaque id
of the server instance, so clients and tests can tell replicas sharing a port
(``grpc.so_reuseport``) apart.

Security: with a :class:`~dcrec.cloud.serving.auth.TokenAuthority` every call needs a device
token and acts for the device the token names; with a :class:`TlsConfig` the
channel is TLS, and mutual TLS when ``client_ca_file`` is set. Plaintext needs
``ServerConfig(insecure=True)`` (the default only when no config is given,
which is what tests and embedded development servers use).

Reflection: ``ServerConfig(reflection=True)`` (``dcrec cloud serve --reflection``)
registers the standard gRPC reflection service, so tools such as grpcurl list
and call the services without the .proto. It needs no token (the schema it
describes ships in the package as ``dcrec.protos``); TLS and mutual TLS apply
to it like to every call on the port.

Example::

    server, port, health = create_server("127.0.0.1:0", CandidateService(gen), registry)
    server.start()
    ...
    shutdown(server, health, grace_s=5.0)
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dcrec.cloud.releases.registry import ModelRegistry, RegistryError, ReleaseRefused
from dcrec.cloud.serving.auth import AuthInterceptor, TokenAuthority, current_identity
from dcrec.cloud.serving.batching import (
    Arrival,
    BatchConfig,
    BatcherClosed,
    DeadlineExpired,
    DynamicBatcher,
    QueueFull,
)
from dcrec.cloud.serving.device_telemetry import TelemetryConfig, TelemetryItem, TelemetrySink
from dcrec.cloud.serving.events import DeviceEventLog
from dcrec.cloud.serving.interceptors import (
    ErrorInterceptor,
    LimiterInterceptor,
    TelemetryInterceptor,
)
from dcrec.cloud.serving.metrics import Telemetry
from dcrec.cloud.serving.service import CandidateService, InvalidRequest
from dcrec.shared.contract import CandidatesRequest, CandidatesResponse
from dcrec.shared.convert import model_to_pb, request_from_pb, response_to_pb
from dcrec.shared.proto.dcrec.v1 import recommend_pb2 as pb
from dcrec.shared.proto.dcrec.v1 import recommend_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from dcrec.cloud.serving.http.runner import HttpConfig

log = logging.getLogger(__name__)

SERVICE_NAME = "dcrec.v1.Recommender"
REPLICA_KEY = "dcrec-replica"  # trailing metadata naming the server instance that answered
SPARE_THREADS = 4  # threads beyond the admitted calls: refusals never wait behind slow calls
TRANSPORT_CAP = 4  # gRPC core drops messages over this many times max_request_bytes, uncounted


@dataclass(frozen=True)
class TlsConfig:
    """PEM files: the server's certificate chain and key; a CA to require client certificates."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # set: mutual TLS, clients without a cert from it are refused

    def check(self) -> None:
        """Refuse, naming the files, a key that does not belong to its certificate or a PEM
        file that does not parse: gRPC core would only log it and fail the bind."""
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except ssl.SSLError as e:
            if "KEY_VALUES_MISMATCH" in str(e) or "key values mismatch" in str(e):
                raise ValueError(f"TLS: the server key {self.key_file} does not belong to the "
                                 f"certificate {self.cert_file}") from e
            raise ValueError(f"TLS: cannot load the certificate {self.cert_file} with the key "
                             f"{self.key_file}: {e.reason or e}") from e
        if self.client_ca_file:
            try:
                context.load_verify_locations(self.client_ca_file)
            except ssl.SSLError as e:
                raise ValueError(f"TLS: the client CA {self.client_ca_file} is not a PEM "
                                 f"certificate: {e.reason or e}") from e

    def server_credentials(self) -> grpc.ServerCredentials:
        self.check()
        ca = Path(self.client_ca_file).read_bytes() if self.client_ca_file else None
        return grpc.ssl_server_credentials(
            [(Path(self.key_file).read_bytes(), Path(self.cert_file).read_bytes())],
            root_certificates=ca, require_client_auth=ca is not None)


@dataclass(frozen=True)
class ServerConfig:
    max_workers: int = 16  # handler threads
    max_message_bytes: int = 64 * 1024 * 1024  # largest response: device models travel in one
    max_request_bytes: int = 1024 * 1024  # largest request; a 200-event request is ~4 KB
    max_inflight: int = 0  # calls handled at once before shedding; 0 = max_workers
    # Calls waiting for a thread beyond which gRPC core itself refuses (still counted); the
    # limiter's refusals are answered by spare threads, so this bound is reached only in a flood.
    max_queued: int = 256
    grace_s: float = 5.0  # how long in-flight calls may finish on shutdown
    # On shutdown, health answers NOT_SERVING and new calls UNAVAILABLE for at least this long
    # (within the grace) before the port closes, so load balancers and clients move away.
    drain_s: float = 0.5
    tls: TlsConfig | None = None
    insecure: bool = False  # plaintext allowed; development only, must be asked for
    auth_required: bool = False  # refuse to run without a token authority
    batching: BatchConfig | None = None  # None: each GetCandidates calls the generator alone
    reflection: bool = False  # register gRPC server reflection (grpcurl list/describe)

    def validate(self) -> None:
        if self.max_workers < 1 or self.max_inflight < 0 or self.max_queued < 0:
            raise ValueError("max_workers must be >= 1, max_inflight and max_queued >= 0")
        if self.batching is not None:
            self.batching.validate()
            if self.inflight_limit < self.batching.max_batch_size:
                # a queued call holds its handler thread, so batches could never fill
                raise ValueError(
                    f"batching needs workers and max_inflight >= batch max size "
                    f"({self.batching.max_batch_size}), got {self.inflight_limit}")
        if self.max_request_bytes < 1024:
            raise ValueError("max_request_bytes must be >= 1024")
        if self.grace_s < 0 or self.drain_s < 0:
            raise ValueError("grace_s and drain_s must be >= 0")
        if self.tls is None and not self.insecure:
            raise ValueError("no TLS certificate configured: give one, or ask for a plaintext "
                             "development server explicitly (insecure)")

    @property
    def inflight_limit(self) -> int:
        return self.max_inflight or self.max_workers

    @property
    def threads(self) -> int:
        """Handler threads: one per admitted call, plus spares that answer refusals at once."""
        return max(self.max_workers, self.inflight_limit) + SPARE_THREADS


class RecommenderServicer(pb_grpc.RecommenderServicer):
    """Translates protobuf to :class:`CandidateService` calls and errors to status codes."""

    def __init__(self, service: CandidateService, registry: ModelRegistry | None,
                 telemetry: Telemetry | None = None, events: DeviceEventLog | None = None,
                 batcher: DynamicBatcher | None = None, replica: str = "",
                 sink: TelemetrySink | None = None) -> None:
        self.service = service
        self.registry = registry
        # ``is None``, not ``or``: an empty DeviceEventLog is falsy (it has a __len__).
        self.telemetry = Telemetry() if telemetry is None else telemetry
        self.events = DeviceEventLog() if events is None else events
        self.batcher = batcher
        self.replica = replica or uuid.uuid4().hex[:12]
        self.sink = TelemetrySink(self.telemetry) if sink is None else sink

    @staticmethod
    def _device_id(claimed: str, context: grpc.ServicerContext) -> str:
        """The id the call acts for: the token's when auth is on, else the body's."""
        ident = current_identity()
        if ident is None:
            return claimed
        if claimed and claimed != ident.subject:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          "device_id: the token was issued to another device")
        return ident.subject

    def GetCandidates(self, request: pb.GetCandidatesRequest, context: grpc.ServicerContext
                      ) -> pb.GetCandidatesResponse:
        if self.batcher is None:
            req = self._parse(request, context)
            try:
                resp = self.service.get_candidates(req)
            except InvalidRequest as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            self.telemetry.observe_batch(1)  # each request has its own generator call
        else:
            # Announced before parsing, so a forming batch knows this call is coming.
            with self.batcher.arrival() as arrival:
                req = self._parse(request, context)
                resp = self._batched(req, arrival, context)
        self.events.record(req.device_id, req.history, req.timestamps)
        self.telemetry.observe_request(req.reason.label, int(req.history.size), req.count)
        return response_to_pb(resp)

    def _parse(self, request: pb.GetCandidatesRequest, context: grpc.ServicerContext
               ) -> CandidatesRequest:
        context.set_trailing_metadata(((REPLICA_KEY, self.replica),))
        req = request_from_pb(request)
        return replace(req, device_id=self._device_id(req.device_id, context))

    def _batched(self, req: CandidatesRequest, arrival: Arrival,
                 context: grpc.ServicerContext) -> CandidatesResponse:
        """Queue ``req`` for the batcher and wait for its answer, within the call's deadline."""
        try:
            self.service.validate(req)  # a bad request fails at once, without taking a queue slot
        except InvalidRequest as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        try:
            return arrival.submit(req, deadline).wait()
        except QueueFull as e:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except DeadlineExpired as e:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(e))
        except BatcherClosed as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        except InvalidRequest as e:  # the model changed while it queued and lacks an item
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        raise AssertionError("unreachable: context.abort raises")

    def ReportTelemetry(self, request: pb.ReportTelemetryRequest, context: grpc.ServicerContext
                        ) -> pb.ReportTelemetryResponse:
        device_id = self._device_id(request.device_id, context)
        records = [TelemetryItem(int(r.sequence), r.kind, r.payload_json, float(r.created_at))
                   for r in request.records]
        try:
            self.service.check_device_id(device_id)
            acked, rejected = self.sink.accept(device_id, records, request.stream)
        except InvalidRequest as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return pb.ReportTelemetryResponse(acked=acked, rejected=[s for s, _ in rejected],
                                          rejected_reasons=[why for _, why in rejected])

    def GetDeviceModel(self, request: pb.GetDeviceModelRequest, context: grpc.ServicerContext
                       ) -> pb.GetDeviceModelResponse:
        self._device_id(request.device_id, context)
        if self.registry is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "this server hands out no device models")
        try:
            model = self.registry.current()
        except ReleaseRefused as e:  # tampered or unsigned: never hand its bytes out
            log.error("not serving the device model: %s", e)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except RegistryError as e:  # torn or missing files; the message names them (log only)
            log.error("device model registry is unreadable: %s", e)
            context.abort(grpc.StatusCode.UNAVAILABLE, "device model registry unavailable")
        except (OSError, ValueError):
            log.exception("device model registry is unreadable")
            context.abort(grpc.StatusCode.UNAVAILABLE, "device model registry unavailable")
        if model is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no device model published")
        if request.current_sequence:
            updated = request.current_sequence < model.sequence
        else:
            updated = request.current_version != model.version
        return model_to_pb(model, updated=updated)


@dataclass
class CloudServer:
    """A bound, not yet started server and what operators see of it."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    servicer: RecommenderServicer
    limiter: LimiterInterceptor
    config: ServerConfig
    telemetry: Telemetry = field(default_factory=Telemetry)
    batcher: DynamicBatcher | None = None

    @property
    def replica(self) -> str:
        return self.servicer.replica

    def start(self) -> CloudServer:
        self.server.start()
        return self

    def ready(self) -> bool:
        return not self.limiter.draining.is_set()

    def stop(self, grace_s: float | None = None) -> None:
        """Refuse new calls, turn health NOT_SERVING, let in-flight calls finish within the grace.

        While in-flight calls finish (and for at least ``drain_s``, within the grace) the
        port stays open: new calls get ``UNAVAILABLE`` and health ``NOT_SERVING``, answers
        a client can act on, rather than a refused connection or ``CANCELLED``.
        """
        grace = self.config.grace_s if grace_s is None else grace_s
        self.limiter.draining.set()
        self.health.enter_graceful_shutdown()
        start = time.monotonic()
        linger = min(self.config.drain_s, grace)
        while time.monotonic() - start < grace and (
                self.limiter.inflight > 0 or time.monotonic() - start < linger):
            time.sleep(0.01)
        shutdown(self.server, self.health, max(0.0, grace - (time.monotonic() - start)))
        if self.batcher is not None:  # after the server: calls in their grace still get batched
            self.batcher.close()
        self.servicer.sink.close()


def build_server(address: str, service: CandidateService, registry: ModelRegistry | None = None,
                 config: ServerConfig | None = None, authority: TokenAuthority | None = None,
                 telemetry: Telemetry | None = None, events: DeviceEventLog | None = None,
                 device_telemetry: TelemetryConfig | None = None) -> CloudServer:
    """Bind a server on ``address`` with auth, limits and telemetry in place."""
    config = ServerConfig(insecure=True) if config is None else config
    config.validate()
    if config.auth_required and authority is None:
        raise ValueError("device tokens are required but no auth secret is configured")
    telemetry = Telemetry() if telemetry is None else telemetry
    limiter = LimiterInterceptor(config.inflight_limit, telemetry=telemetry)
    counting = TelemetryInterceptor(telemetry, config.max_request_bytes)
    interceptors: list[grpc.ServerInterceptor] = [counting, limiter]
    if authority is not None:
        interceptors.append(AuthInterceptor(authority))
    interceptors.append(ErrorInterceptor())
    opts = [
        # The limit itself is checked (and counted) by the TelemetryInterceptor; gRPC core
        # only drops what is far over it, before reading it all into memory.
        ("grpc.max_receive_message_length", TRANSPORT_CAP * config.max_request_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 1),
    ]
    # Beyond threads + max_queued calls gRPC core answers RESOURCE_EXHAUSTED itself (counted by
    # the TelemetryInterceptor, which watches the same bound).
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.threads),
                         interceptors=interceptors, options=opts,
                         maximum_concurrent_rpcs=config.threads + config.max_queued)
    counting.bind(server)
    batcher = None
    if config.batching is not None:
        answer = partial(service.answer_batch, on_call=telemetry.observe_batch, validated=True)
        batcher = DynamicBatcher(answer, config.batching).start()
    servicer = RecommenderServicer(service, registry, telemetry, events, batcher,
                                   sink=TelemetrySink(telemetry, device_telemetry))
    pb_grpc.add_RecommenderServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.reflection:
        log.info("gRPC server reflection on for %s", ", ".join(enable_reflection(server)))
    if config.tls is not None:
        port = server.add_secure_port(address, config.tls.server_credentials())
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    telemetry.set_model("cloud", service.generator.version)
    live = registry.current_version() if isinstance(registry, ModelRegistry) else None
    if live is not None:
        telemetry.set_model("device", live, registry.current_sequence())  # type: ignore[union-attr]
    return CloudServer(server, port, health_servicer, servicer, limiter, config, telemetry, batcher)


def enable_reflection(server: grpc.Server) -> tuple[str, ...]:
    """Register gRPC server reflection for the services this server runs; returns their names.

    Reflection is a streaming call outside ``dcrec.v1``: no token is asked for, the limiter
    does not admit it (each open stream holds a handler thread while it lasts) and the
    telemetry counts it only when no handler runs (``method="ServerReflectionInfo"``).
    """
    from grpc_reflection.v1alpha import reflection

    names = (pb.DESCRIPTOR.services_by_name["Recommender"].full_name,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    return names


def create_server(address: str, service: CandidateService, registry: ModelRegistry | None = None,
                  config: ServerConfig | None = None) -> tuple[grpc.Server, int, health.HealthServicer]:
    """Build a server bound to ``address``; returns (server, bound port, health servicer)."""
    cs = build_server(address, service, registry, config)
    return cs.server, cs.port, cs.health


def shutdown(server: grpc.Server, health_servicer: health.HealthServicer, grace_s: float) -> None:
    """Stop taking new calls, let in-flight ones finish within ``grace_s`` seconds."""
    health_servicer.enter_graceful_shutdown()
    server.stop(grace_s).wait(grace_s + 1.0)


def serve(address: str, service: CandidateService, registry: ModelRegistry | None,
          config: ServerConfig | None = None,
          on_ready: Callable[[int], None] | None = None, *,
          authority: TokenAuthority | None = None, http: HttpConfig | None = None,
          cloud_registry: object | None = None,
          on_http_ready: Callable[[int], None] | None = None,
          device_telemetry: TelemetryConfig | None = None) -> int:
    """Run until SIGTERM or SIGINT; ``on_ready(port)`` runs once serving. Returns the port.

    With ``http``, the operator surface (health, metrics, registry, dashboard)
    runs in the same process on its own port and stops with the server.
    """
    config = config or ServerConfig(insecure=True)
    cs = build_server(address, service, registry, config, authority,
                      device_telemetry=device_telemetry)
    if cloud_registry is not None:  # the cloud model's release number, as a promote would set it
        try:
            cs.telemetry.set_model("cloud", service.generator.version,
                                   cloud_registry.current_sequence())  # type: ignore[attr-defined]
        except (RegistryError, OSError, ValueError) as e:
            log.warning("cloud model registry unreadable at start-up: %s", e)
    http_server = None
    if http is not None:
        from dcrec.cloud.serving.http.app import OpsState
        from dcrec.cloud.serving.http.runner import HttpServer

        tls = config.tls
        if tls is not None and (http.cert_file is None or (
                tls.client_ca_file is not None and http.client_ca_file is None)):
            # dcrec cloud serve gives both ports the same TLS; only an embedding caller can differ.
            log.warning("the operator HTTP port is %s while gRPC has %s",
                        "plaintext" if http.cert_file is None else "TLS without client certificates",
                        "mutual TLS" if tls.client_ca_file else "TLS")
        state = OpsState(service=service, telemetry=cs.telemetry, events=cs.servicer.events,
                         device_registry=registry, cloud_registry=cloud_registry,  # type: ignore[arg-type]
                         authority=authority, ready=cs.ready)
        http_server = HttpServer(state, http).start()
    cs.start()
    batching = config.batching
    log.info("serving %s (model %s) on port %d as replica %s, %s%s", SERVICE_NAME,
             service.generator.version, cs.port, cs.replica,
             f"batching up to {batching.max_batch_size} within {batching.max_wait_ms:g} ms"
             if batching else "no batching",
             f", operator HTTP on port {http_server.port}" if http_server else "")
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down (grace %.1fs)", signum, config.grace_s)
        cs.limiter.draining.set()  # refuse new calls at once, before anything else
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    if on_ready is not None:
        on_ready(cs.port)
    if on_http_ready is not None and http_server is not None:
        on_http_ready(http_server.port)
    stop.wait()
    cs.stop()
    if http_server is not None:
        http_server.stop()
    log.info("stopped")
    return cs.port
