"""The network emulator: a real TCP proxy on loopback, checked with raw sockets and real gRPC."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dcrec.simulator.netem import LinkProfile, ProxyThread, Window


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _roundtrip(address: str, payload: bytes, timeout: float = 10.0) -> tuple[bytes, float]:
    host, port = address.split(":")
    start = time.perf_counter()
    got = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        try:
            s.sendall(payload)
            while len(got) < len(payload):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except ConnectionError:  # the proxy cut the connection (reset)
            pass
    return got, time.perf_counter() - start


def test_bytes_pass_unchanged_and_are_counted(echo: str) -> None:
    payload = np.random.default_rng(0).bytes(300_000)  # several chunks
    with ProxyThread(echo) as proxy:
        got, _ = _roundtrip(proxy.address, payload)
        assert got == payload
        time.sleep(0.05)
        assert proxy.stats.bytes_up == proxy.stats.bytes_down == len(payload)
        assert proxy.stats.connections == 1


def test_latency_is_added_each_way_and_order_kept(echo: str) -> None:
    payload = bytes(range(256)) * 400
    with ProxyThread(echo, LinkProfile(latency_ms=60, jitter=0.5)) as proxy:
        got, elapsed = _roundtrip(proxy.address, payload)
    assert got == payload  # jittered chunks still arrive in order
    assert elapsed >= 0.05  # two one-way delays of a lognormal around 60 ms


def test_bandwidth_cap_bounds_throughput(echo: str) -> None:
    payload = b"x" * 50_000  # 400 kbit each way at 2,000 kbit/s: >= 0.2 s
    with ProxyThread(echo, LinkProfile(bandwidth_kbps=2000)) as proxy:
        _, elapsed = _roundtrip(proxy.address, payload)
    assert elapsed >= 0.18
    with ProxyThread(echo) as proxy:
        _, fast = _roundtrip(proxy.address, payload)
    assert fast < elapsed


def test_outage_window_refuses_then_recovers(echo: str) -> None:
    now = [0.0]
    with ProxyThread(echo, outages=[Window(10.0, 20.0)], clock=lambda: now[0]) as proxy:
        assert _roundtrip(proxy.address, b"hello")[0] == b"hello"
        now[0] = 15.0
        assert _roundtrip(proxy.address, b"hello", timeout=2.0)[0] == b""  # cut at once
        assert proxy.stats.refused == 1
        now[0] = 25.0
        assert _roundtrip(proxy.address, b"hello")[0] == b"hello"


def test_resets_cut_connections(echo: str) -> None:
    with ProxyThread(echo, LinkProfile(reset=0.9), seed=1) as proxy:
        results = [_roundtrip(proxy.address, b"ping", timeout=2.0)[0] for _ in range(10)]
    assert results.count(b"") >= 5 and proxy.stats.resets >= 5


def test_profile_validation() -> None:
    with pytest.raises(ValueError, match="loss"):
        LinkProfile(loss=1.5).validate()
    with pytest.raises(ValueError, match="outage_mode"):
        LinkProfile(outage_mode="drop").validate()  # type: ignore[arg-type]


def test_grpc_through_the_proxy(cloud_model_dir: Path, ml_split) -> None:  # type: ignore[no-untyped-def]
    """HTTP/2 gRPC passes transparently, with latency, and fails while the link is down."""
    from dcrec.cloud.models.backends import load_generator
    from dcrec.cloud.serving.server import create_server
    from dcrec.cloud.serving.service import CandidateService
    from dcrec.device.client import CloudClient, CloudUnavailable
    from dcrec.shared.contract import CandidatesRequest

    server, port, _ = create_server("127.0.0.1:0", CandidateService(load_generator(cloud_model_dir)))
    server.start()
    hist = ml_split.cloud_sequences()[0][-20:]
    req = CandidatesRequest("d0", hist, np.arange(hist.size, dtype=float), 50)
    try:
        direct = CloudClient(f"127.0.0.1:{port}", deadline_s=5.0).get_candidates(req)
        with ProxyThread(f"127.0.0.1:{port}", LinkProfile(latency_ms=40)) as proxy:
            client = CloudClient(proxy.address, deadline_s=5.0)
            start = time.perf_counter()
            via = client.get_candidates(req)
            assert time.perf_counter() - start >= 0.08  # one round trip = two one-way delays
            assert np.array_equal(via.items, direct.items)
            assert proxy.stats.bytes_down > via.items.size  # the list came through the proxy
            proxy.set_down(True)
            time.sleep(0.1)  # the watcher cuts open connections
            with pytest.raises(CloudUnavailable):
                client.get_candidates(req)
            client.close()
    finally:
        server.stop(0)


@pytest.mark.parametrize("profile", [None, LinkProfile(latency_ms=5), LinkProfile(outage_mode="blackhole")])
def test_stop_is_quiet_with_connections_open(echo: str, profile: LinkProfile | None,
                                             caplog: pytest.LogCaptureFixture,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    """Issue 21: every connection open at shutdown logged a CancelledError traceback."""
    proxy = ProxyThread(echo, profile)
    proxy.start()
    socks = [socket.create_connection(("127.0.0.1", proxy.port), timeout=5.0) for _ in range(3)]
    try:
        for s in socks:
            s.sendall(b"ping")
            assert s.recv(16) == b"ping"
        with caplog.at_level("DEBUG", logger="asyncio"):
            proxy.stop()
    finally:
        for s in socks:
            s.close()
    assert not proxy.proxy._tasks  # every task of the proxy ended
    assert "Traceback" not in caplog.text and "CancelledError" not in caplog.text
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    err = capfd.readouterr().err
    assert "Traceback" not in err and "CancelledError" not in err


def test_apply_outages_cuts_open_connections_at_once(echo: str) -> None:
    now = [0.0]
    with ProxyThread(echo, outages=[Window(10.0, 20.0)], clock=lambda: now[0]) as proxy:
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=2.0)
        s.sendall(b"a")
        assert s.recv(4) == b"a"
        now[0] = 10.0
        proxy.apply_outages()  # without waiting for the watcher's next poll
        assert proxy.stats.resets == 1 and not proxy.proxy._conns
        try:
            assert s.recv(4) == b""
        except ConnectionError:
            pass  # cut: either way
        time.sleep(0.05)  # the watcher polls again: the connection is not counted twice
        assert proxy.stats.resets == 1
        s.close()
