"""What the fleet measures on each cloud call, without touching the device runtime.

* :func:`fleet_channels` opens the gRPC connections a fleet shares (each its
  own TCP connection), with the device client's retry policy and a
  client interceptor that notes each message's encoded size; TLS (and mutual
  TLS) when a :class:`CloudAccess` says so;
* :class:`CloudAccess` is what ``dcrec simulate --connect`` needs to reach a
  production-configured server: the TLS files, and the server's auth secret
  to mint each simulated device its own token;
* :class:`MeteredClient` wraps a device's :class:`~dcrec.device.client.CloudClient`
  (the runtime calls it like the real one) and records every call that goes
  out: simulated time, reason, outcome, wall-clock latency, payload bytes.
  It also tells the device's :class:`~dcrec.simulator.recovery.RecoverySpread`
  about outcomes.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from dcrec.device.client import (
    ClientTls,
    CloudClient,
    CloudRejected,
    CloudUnavailable,
    make_channel,
)
from dcrec.shared.contract import CandidatesRequest, CandidatesResponse, DeviceModel

if TYPE_CHECKING:
    from dcrec.cloud.serving.auth import TokenAuthority

log = logging.getLogger(__name__)

_sizes = threading.local()  # (up, down) bytes of the call the current thread made last


@dataclass(frozen=True)
class CloudAccess:
    """TLS and device tokens for simulated devices that dial a running server (``--connect``).

    ``tls``: every fleet connection is TLS (mutual TLS with a client certificate; the
    devices share the fleet's few connections, so they share one certificate, like
    phones behind one gateway). ``auth_secret``: the server's HMAC secret file. A token
    names one device id and the server refuses calls for any other id, so the simulator
    cannot share one token across its fleet: it issues each simulated device its own
    token (``token_ttl_s`` wall seconds) with the secret, as an enrolment service would.
    """

    tls: ClientTls | None = None
    auth_secret: str | None = None
    token_ttl_s: float = 86400.0

    def token(self, device_id: str) -> str | None:
        """A device token for ``device_id``, or None without an auth secret."""
        if self.auth_secret is None:
            return None
        return _authority(self.auth_secret).issue(device_id, self.token_ttl_s)


@functools.lru_cache(maxsize=4)
def _authority(path: str) -> TokenAuthority:
    from dcrec.cloud.serving.auth import TokenAuthority

    return TokenAuthority.from_file(path)


class _SizeInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Notes the encoded size of each request and response (the payload on the wire, sans framing)."""

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any,
                              request: Any) -> Any:
        outcome = continuation(details, request)
        down = 0
        try:
            resp = outcome.result()
            down = resp.ByteSize()
        except Exception:  # noqa: BLE001 - the caller sees the error; only the size is unknown
            pass
        _sizes.value = (request.ByteSize(), down)
        return outcome


def fleet_channels(address: str, n: int, ready_timeout_s: float = 10.0,
                   tls: ClientTls | None = None) -> list[grpc.Channel]:
    """``n`` channels to ``address``, each on its own TCP connection, ready before returning."""
    # The device client's own channel (retry policy, reconnect back-off, TLS), each on its
    # own connection: otherwise identical channels share one.
    own = [("grpc.use_local_subchannel_pool", 1)]
    raw = [make_channel(address, tls, own) for _ in range(max(1, n))]
    wait_ready(raw, ready_timeout_s, address)
    return [grpc.intercept_channel(ch, _SizeInterceptor()) for ch in raw]


def wait_ready(channels: list[grpc.Channel], timeout_s: float, address: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    for ch in channels:
        try:
            grpc.channel_ready_future(ch).result(timeout=max(0.01, deadline - time.monotonic()))
        except grpc.FutureTimeoutError as e:
            raise ConnectionError(f"cloud at {address} not reachable within {timeout_s:.0f} s") from e


class CallSink(Protocol):
    def __call__(self, t: float, reason: str, ok: bool, latency_ms: float, up: int, down: int,
                 rejected: bool = False, bootstrap: bool = False) -> None: ...


class OutcomeListener(Protocol):
    def failed(self, now: float) -> None: ...

    def succeeded(self, now: float) -> None: ...


class MeteredClient:
    """Duck-types :class:`CloudClient` for :class:`~dcrec.device.runtime.DeviceRuntime`."""

    def __init__(self, inner: CloudClient, clock: Callable[[], float], sink: CallSink,
                 listener: OutcomeListener | None = None) -> None:
        self.inner = inner
        self.clock = clock
        self.sink = sink
        self.listener = listener
        self.bootstrap = False  # set while the device asks for its first list

    def available(self) -> bool:
        return self.inner.available()

    def get_candidates(self, req: CandidatesRequest) -> CandidatesResponse:
        now = self.clock()
        _sizes.value = (0, 0)
        start = time.perf_counter()
        try:
            resp = self.inner.get_candidates(req)
        except (CloudUnavailable, CloudRejected) as e:
            up, down = _sizes.value
            self.sink(now, req.reason.label, False, (time.perf_counter() - start) * 1e3, up, down,
                      rejected=isinstance(e, CloudRejected), bootstrap=self.bootstrap)
            if self.listener is not None and isinstance(e, CloudUnavailable):
                self.listener.failed(now)
            raise
        up, down = _sizes.value
        self.sink(now, req.reason.label, True, (time.perf_counter() - start) * 1e3, up, down,
                  bootstrap=self.bootstrap)
        if self.listener is not None:
            self.listener.succeeded(now)
        return resp

    def get_device_model(self, device_id: str, current_version: str = "") -> DeviceModel | None:
        return self.inner.get_device_model(device_id, current_version)

    def report_telemetry(self, device_id: str, stream: str,
                         records: list[tuple[int, str, str, float]]
                         ) -> tuple[list[int], list[tuple[int, str]]]:
        """Telemetry uploads pass straight through: they are not candidate requests."""
        return self.inner.report_telemetry(device_id, stream, records)

    def close(self) -> None:
        """The channel is the fleet's; nothing of the device's to close."""
