"""The device's connection to the cloud: deadlines, retries, back-off.

Every call carries a deadline. A retry policy (gRPC service config) retries
UNAVAILABLE once inside that deadline; after a failed call the client backs
off exponentially with full jitter and refuses to try again until the back-off
has passed, so a fleet does not hammer a cloud that is down.

Example::

    client = CloudClient("127.0.0.1:50051", deadline_s=1.0)
    resp = client.get_candidates(CandidatesRequest(...))   # or raises CloudUnavailable
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from shared.contract import CandidatesRequest, CandidatesResponse, DeviceModel
from shared.convert import model_from_pb, request_to_pb, response_from_pb
from shared.proto.dcrec.v1 import recommend_pb2 as pb
from shared.proto.dcrec.v1 import recommend_pb2_grpc as pb_grpc

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


class CloudClient:
    def __init__(self, address: str, deadline_s: float = 1.0, model_deadline_s: float = 30.0,
                 backoff: Backoff | None = None, clock: Callable[[], float] = time.time,
                 channel: grpc.Channel | None = None) -> None:
        if deadline_s <= 0 or model_deadline_s <= 0:
            raise ValueError("deadlines must be > 0 seconds")
        self.address = address
        self.deadline_s = deadline_s
        self.model_deadline_s = model_deadline_s
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.channel = channel or grpc.insecure_channel(address, options=[
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            # Reconnect quickly after an outage instead of the default 20 s+ back-off.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ])
        self.stub = pb_grpc.RecommenderStub(self.channel)

    def available(self) -> bool:
        """False while backing off after a failure."""
        return self.backoff.allowed(self.clock())

    def _call(self, fn: Callable[[], object]) -> object:
        now = self.clock()
        if not self.backoff.allowed(now):
            raise CloudUnavailable(f"backing off for {self.backoff.until - now:.2f}s more")
        try:
            result = fn()
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise CloudRejected(e.details() if hasattr(e, "details") else str(e)) from e
            wait = self.backoff.failed(self.clock())
            log.debug("cloud call failed (%s); backing off %.2fs", code, wait)
            raise CloudUnavailable(f"{code}: {e.details() if hasattr(e, 'details') else e}") from e
        self.backoff.succeeded()
        return result

    def get_candidates(self, req: CandidatesRequest) -> CandidatesResponse:
        msg = request_to_pb(req)
        resp = self._call(lambda: self.stub.GetCandidates(msg, timeout=self.deadline_s))
        assert isinstance(resp, pb.GetCandidatesResponse)
        return response_from_pb(resp)

    def get_device_model(self, device_id: str, current_version: str = "") -> DeviceModel | None:
        """The newest device model, or None when ``current_version`` is already newest."""
        msg = pb.GetDeviceModelRequest(device_id=device_id, current_version=current_version)
        resp = self._call(lambda: self.stub.GetDeviceModel(msg, timeout=self.model_deadline_s))
        assert isinstance(resp, pb.GetDeviceModelResponse)
        return model_from_pb(resp)

    def close(self) -> None:
        self.channel.close()
