"""SIGTERM to a real server process with 20 calls in flight: all finish, new ones get UNAVAILABLE,
health answers NOT_SERVING until the port closes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dcrec.shared.proto.dcrec.v1 import recommend_pb2 as pb
from dcrec.shared.proto.dcrec.v1 import recommend_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[2]
GRACE_S = 6.0
HOLD_S = 1.5  # each call takes this long once all 20 are in, well inside the grace period

SERVER = textwrap.dedent("""
    import sys, threading, time
    from pathlib import Path
    from dcrec.cloud.models.backends import load_generator
    from dcrec.cloud.serving.http.runner import HttpConfig
    from dcrec.cloud.serving.server import ServerConfig, serve
    from dcrec.cloud.serving.service import CandidateService

    model_dir, ready, inflight_file, hold, grace = sys.argv[1:6]
    inner = load_generator(model_dir)
    lock, count = threading.Lock(), [0]

    class Slow:
        name, version, n_items = inner.name, inner.version, inner.n_items
        def generate(self, histories, n, exclude_seen=True):
            with lock:
                count[0] += 1
                if count[0] == 20:
                    Path(inflight_file).write_text("20")
            time.sleep(float(hold))
            return inner.generate(histories, n, exclude_seen)

    def on_ready(port):
        Path(ready + ".tmp").write_text(str(port))
        Path(ready + ".tmp").replace(ready)

    serve("127.0.0.1:0", CandidateService(Slow()), None,
          ServerConfig(max_workers=32, grace_s=float(grace), insecure=True), on_ready,
          http=HttpConfig("127.0.0.1:0"))
""")


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, "server exited early"
        assert time.monotonic() < deadline, f"{path.name} not written within {timeout_s}s"
        time.sleep(0.02)


@pytest.mark.timeout(120)
def test_sigterm_drains_in_flight_calls_and_refuses_new(tmp_path: Path, cloud_model_dir: Path) -> None:
    ready, inflight = tmp_path / "port", tmp_path / "inflight"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(cloud_model_dir), str(ready),
                             str(inflight), str(HOLD_S), str(GRACE_S)], env=env, cwd=REPO)
    try:
        _wait_for(ready, proc, 60)
        address = f"127.0.0.1:{int(ready.read_text())}"
        stub = pb_grpc.RecommenderStub(grpc.insecure_channel(address))
        req = pb.GetCandidatesRequest(device_id="d", count=10,
                                      history=[pb.Event(item_id=4, timestamp=1.0)])
        calls = [stub.GetCandidates.future(req, timeout=30) for _ in range(20)]
        _wait_for(inflight, proc, 30)  # all 20 are inside the handler now
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)  # the signal lands; the 20 are still sleeping
        fresh = pb_grpc.RecommenderStub(grpc.insecure_channel(address))
        with pytest.raises(grpc.RpcError) as refused:
            fresh.GetCandidates(req, timeout=3)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # Health still answers while the 20 finish: NOT_SERVING, not a refused connection.
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
        for name in ("", "dcrec.v1.Recommender"):
            status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=3).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        time.sleep(0.5)  # later in the drain new calls still get an answer a client acts on
        with pytest.raises(grpc.RpcError) as refused:
            fresh.GetCandidates(req, timeout=3)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert [len(c.result().item_ids) for c in calls] == [10] * 20
        assert all(c.code() == grpc.StatusCode.OK for c in calls)
        code = proc.wait(GRACE_S + 5)
        assert code == 0
        assert time.monotonic() - sent < GRACE_S + 2.0  # exit within the grace period (+ start-up slack)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
