"""The client's back-off ends as soon as a lost cloud answers again, and not for a cloud that fails.

A real server process on a fixed loopback port is killed and started again on the same
port; the device's long back-off must not outlast the outage by more than gRPC's own
reconnect interval (at most 2 s).
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from dcrec.device.client import Backoff, CloudClient, CloudUnavailable, channel_state
from dcrec.shared.contract import CandidatesRequest


class _LongestWait(random.Random):
    """Jitter that always waits the whole cap: the worst case a device can draw."""

    def uniform(self, a: float, b: float) -> float:
        return b


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server:
    def __init__(self, model_dir: Path, port: int, tmp: Path) -> None:
        self.model_dir, self.port, self.tmp = model_dir, port, tmp
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        ready = self.tmp / f"ready-{time.monotonic_ns()}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dcrec.shared.cli", "cloud", "serve", "--model-dir", str(self.model_dir),
             "--address", f"127.0.0.1:{self.port}", "--ready-file", str(ready), "--insecure"],
            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert self.proc.poll() is None, "server exited on start"
            assert time.monotonic() < deadline, "server not ready"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)


@pytest.fixture
def server(cloud_model_dir: Path, tmp_path: Path) -> Iterator[_Server]:
    s = _Server(cloud_model_dir, _free_port(), tmp_path)
    s.start()
    yield s
    if s.proc is not None and s.proc.poll() is None:
        s.kill()


def _request() -> CandidatesRequest:
    return CandidatesRequest(device_id="d1", history=np.array([5, 9]), timestamps=np.array([1.0, 2.0]),
                             count=20)


def _first_success(client: CloudClient, timeout_s: float) -> float:
    """Seconds until a call succeeds, trying every 50 ms as an app's events would."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            client.get_candidates(_request())
            return time.monotonic() - t0
        except CloudUnavailable:
            time.sleep(0.05)
    raise AssertionError(f"no successful call within {timeout_s} s")


@pytest.mark.timeout(240)
def test_backoff_ends_when_the_lost_cloud_is_back(server: _Server) -> None:
    client = CloudClient(f"127.0.0.1:{server.port}", deadline_s=2.0,
                         backoff=Backoff(base_s=30.0, max_s=30.0, rng=_LongestWait()))
    assert client.get_candidates(_request()).items.size == 20
    server.kill()
    with pytest.raises(CloudUnavailable):
        client.get_candidates(_request())
    assert client.backoff.until - time.time() > 25  # a 30 s back-off is in force
    with pytest.raises(CloudUnavailable, match="backing off"):
        client.get_candidates(_request())
    server.start()
    took = _first_success(client, timeout_s=20.0)
    assert took < 5.0, f"the device came back {took:.1f} s after the cloud"
    assert client.backoff.failures == 0 and client.available()
    client.close()


@pytest.mark.timeout(240)
def test_backoff_holds_for_a_cloud_that_answers_but_fails(server: _Server) -> None:
    client = CloudClient(f"127.0.0.1:{server.port}", deadline_s=5.0,
                         backoff=Backoff(base_s=30.0, max_s=30.0, rng=_LongestWait()))
    assert client.get_candidates(_request()).items.size == 20
    assert channel_state(client.channel) is grpc.ChannelConnectivity.READY
    # The cloud is up and answers, but refuses this call (over its request size limit).
    big = CandidatesRequest(device_id="d1", history=np.arange(1, 300_001) % 1000 + 1,
                            timestamps=np.zeros(300_000), count=20)
    with pytest.raises(CloudUnavailable, match="RESOURCE_EXHAUSTED"):
        client.get_candidates(big)
    time.sleep(1.0)
    assert not client.available()  # connected all along: the back-off runs its course
    with pytest.raises(CloudUnavailable, match="backing off"):
        client.get_candidates(_request())
    client.close()
