"""The device's connection to the cloud: deadlines, retries, back-off.

Every call carries a deadline. A retry policy (gRPC service config) retries
UNAVAILABLE once inside that deadline; after a failed call the client backs
off exponentially with full jitter and refuses to try again until the back-off
has passed, so a fleet does not hammer a cloud that is down. A back-off that
began with a lost connection ends as soon as the channel is connected again
(gRPC core keeps reconnecting on its own, every 0.2 s to 2 s), so a device is
back within about two seconds of the cloud, not after the rest of a long wait;
a back-off from a cloud that answers but fails (overloaded, too slow) runs its
course.

Security: ``token`` (from ``dcrec cloud token``) travels as a bearer token on
every call; ``tls`` makes the channel TLS, and mutual TLS with a client
certificate. Without ``tls`` the channel is plaintext (development servers).

Example::

    client = CloudClient("127.0.0.1:50051", deadline_s=1.0)
    resp = client.get_candidates(CandidatesRequest(...))   # or raises CloudUnavailable
    secure = CloudClient("cloud.example:443", token=tok, tls=ClientTls(ca_file="ca.pem"))
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from dcrec.shared.contract import CandidatesRequest, CandidatesResponse, DeviceModel
from dcrec.shared.convert import model_from_pb, request_to_pb, response_from_pb
from dcrec.shared.proto.dcrec.v1 import recommend_pb2 as pb
from dcrec.shared.proto.dcrec.v1 import recommend_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_SERVICE_CONFIG = json.dumps({
    "methodConfig": [{
        "name": [{"service": "dcrec.v1.Recommender"}],
        "retryPolicy": {
            "maxAttempts": 2,
            "initialBackoff": "0.05s",
            "maxBackoff": "0.2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }]
})


class CloudUnavailable(RuntimeError):
    """The cloud could not answer (down, too slow, or backing off); serve the cache."""


class CloudRejected(RuntimeError):
    """The cloud refused the request as invalid; retrying the same request will not help."""


class CloudUnauthorized(CloudRejected):
    """The cloud refused the device's credentials (missing, expired or someone else's token)."""


@dataclass(frozen=True)
class ClientTls:
    """PEM files for a TLS channel; ``cert_file``/``key_file`` for mutual TLS."""

    ca_file: str | None = None  # the CA the server's certificate chains to; None = system roots
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None  # expected name in the server certificate, if not the host

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both a client certificate and its key, or neither")

        def read(p: str | None) -> bytes | None:
            return Path(p).read_bytes() if p else None

        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file),
                                            read(self.cert_file))


@dataclass
class Backoff:
    """Exponential back-off with full jitter, on an injectable clock (seconds)."""

    base_s: float = 1.0
    max_s: float = 60.0
    rng: random.Random | None = None
    failures: int = 0
    until: float = 0.0

    def allowed(self, now: float) -> bool:
        return now >= self.until

    def failed(self, now: float) -> float:
        """Record a failure; returns the wait before the next attempt."""
        self.failures += 1
        cap = min(self.max_s, self.base_s * 2 ** (self.failures - 1))
        wait = (self.rng or random).uniform(0.0, cap)
        self.until = now + wait
        return wait

    def succeeded(self) -> None:
        self.failures = 0
        self.until = 0.0


def channel_state(channel: grpc.Channel, connect: bool = False) -> grpc.ChannelConnectivity | None:
    """The channel's connectivity now, without waiting; None when it cannot be read.

    ``connect`` asks an idle channel to start connecting (a dropped connection leaves the
    channel idle until something asks).

    gRPC's public API tells connectivity only through a subscription (a polling thread per
    channel); the cython channel under ``grpc.Channel`` answers the same question in one
    call. Intercepted or foreign channels lack it: they get None and plain back-off.
    """
    inner = getattr(channel, "_channel", None)
    check = getattr(inner, "check_connectivity_state", None)
    if check is None:
        return None
    try:
        code = check(connect)
    except Exception:  # noqa: BLE001 - a closed or odd channel: no reading
        return None
    from grpc._common import CYGRPC_CONNECTIVITY_STATE_TO_CHANNEL_CONNECTIVITY as states

    return states.get(code)


def make_channel(address: str, tls: ClientTls | None = None,
                 extra_options: Sequence[tuple[str, object]] = ()) -> grpc.Channel:
    """A channel with the client's retry policy; TLS when ``tls`` is given. The one place
    a device channel is made (the simulator's fleet connections too, with ``extra_options``)."""
    options = [
        ("grpc.service_config", _SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        # Reconnect quickly after an outage instead of the default 20 s+ back-off.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
        *extra_options,
    ]
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.secure_channel(address, tls.credentials(), options=options)


class CloudClient:
    def __init__(self, address: str, deadline_s: float = 1.0, model_deadline_s: float = 30.0,
                 backoff: Backoff | None = None, clock: Callable[[], float] = time.time,
                 channel: grpc.Channel | None = None, token: str | None = None,
                 tls: ClientTls | None = None) -> None:
        if deadline_s <= 0 or model_deadline_s <= 0:
            raise ValueError("deadlines must be > 0 seconds")
        self.address = address
        self.deadline_s = deadline_s
        self.model_deadline_s = model_deadline_s
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ())
        self.channel = channel or make_channel(address, tls)
        self.stub = pb_grpc.RecommenderStub(self.channel)
        self._connection_lost = False  # the current back-off began with the channel down

    def _reconnected(self) -> bool:
        """True, once, when a back-off for a lost connection meets a connected channel."""
        if (not self._connection_lost
                or channel_state(self.channel, connect=True) is not grpc.ChannelConnectivity.READY):
            return False
        self._connection_lost = False
        self.backoff.until = self.clock()  # the wait ends; the failure count stays until a success
        log.info("cloud at %s reachable again; back-off lifted", self.address)
        return True

    def available(self) -> bool:
        """False while backing off after a failure (and the lost connection is not back)."""
        return self.backoff.allowed(self.clock()) or self._reconnected()

    def _call(self, fn: Callable[[], object]) -> object:
        now = self.clock()
        if not self.backoff.allowed(now) and not self._reconnected():
            raise CloudUnavailable(f"backing off for {self.backoff.until - now:.2f}s more")
        try:
            result = fn()
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise CloudRejected(e.details() if hasattr(e, "details") else str(e)) from e
            wait = self.backoff.failed(self.clock())
            self._connection_lost = (code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                                     and channel_state(self.channel) not in (
                                         None, grpc.ChannelConnectivity.READY))
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                log.warning("cloud refused this device's credentials (%s)", code)
                raise CloudUnauthorized(f"{code}: {e.details()}") from e
            log.debug("cloud call failed (%s); backing off %.2fs", code, wait)
            raise CloudUnavailable(f"{code}: {e.details() if hasattr(e, 'details') else e}") from e
        self.backoff.succeeded()
        self._connection_lost = False
        return result

    def get_candidates(self, req: CandidatesRequest) -> CandidatesResponse:
        msg = request_to_pb(req)
        resp = self._call(lambda: self.stub.GetCandidates(msg, timeout=self.deadline_s,
                                                          metadata=self.metadata))
        assert isinstance(resp, pb.GetCandidatesResponse)
        return response_from_pb(resp)

    def get_device_model(self, device_id: str, current_version: str = "",
                         current_sequence: int = 0) -> DeviceModel | None:
        """The newest device model, or None when the device already runs the live release."""
        msg = pb.GetDeviceModelRequest(device_id=device_id, current_version=current_version,
                                       current_sequence=current_sequence)
        resp = self._call(lambda: self.stub.GetDeviceModel(msg, timeout=self.model_deadline_s,
                                                           metadata=self.metadata))
        assert isinstance(resp, pb.GetDeviceModelResponse)
        return model_from_pb(resp)

    def report_telemetry(self, device_id: str, stream: str,
                         records: list[tuple[int, str, str, float]]
                         ) -> tuple[list[int], list[tuple[int, str]]]:
        """Upload outbox records (id, kind, payload JSON, created_at): (acked ids, [(rejected id, why)])."""
        msg = pb.ReportTelemetryRequest(device_id=device_id, stream=stream, records=[
            pb.TelemetryRecord(sequence=i, kind=k, payload_json=p, created_at=c) for i, k, p, c in records])
        resp = self._call(lambda: self.stub.ReportTelemetry(msg, timeout=self.deadline_s,
                                                            metadata=self.metadata))
        assert isinstance(resp, pb.ReportTelemetryResponse)
        return list(resp.acked), list(zip(resp.rejected, resp.rejected_reasons, strict=False))

    def close(self) -> None:
        self.channel.close()
