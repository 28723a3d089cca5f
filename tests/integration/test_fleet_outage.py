"""Several devices against a real server process; the server is killed mid-run.

No event may be lost, and every device must keep showing a list from its cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dcrec.device.client import CloudClient
from dcrec.device.policy import DisagreementPolicy
from dcrec.device.reranker import OnnxReranker
from dcrec.device.runtime import DeviceRuntime
from dcrec.device.store import DeviceStore
from dcrec.simulator.cloudproc import CloudProcess


def test_devices_survive_a_killed_server(tmp_path: Path, cloud_model_dir: Path, registry_dir: Path,
                                         device_model_dir: Path, ml_split) -> None:  # type: ignore[no-untyped-def]
    rr = OnnxReranker.from_file(device_model_dir / "model.onnx", 50)
    users = list(range(8))
    server = CloudProcess(cloud_model_dir, registry_dir).start()
    try:
        fleet = {}
        for u in users:
            client = CloudClient(server.address, deadline_s=2.0)
            store = DeviceStore(tmp_path / f"u{u}.sqlite")
            seed = ml_split.cloud_sequences()[u]
            store.append_many(seed, np.arange(seed.size, dtype=float))
            fleet[u] = DeviceRuntime(f"u{u}", store, rr, client, DisagreementPolicy(threshold=0.0))
            assert fleet[u].refresh()
        fed = {u: 0 for u in users}
        streams = {u: ml_split.stream_events(u)[0] for u in users}
        steps = min(len(s) for s in streams.values())
        assert steps >= 4
        kill_at = steps // 2
        for step in range(steps):
            if step == kill_at:
                server.kill()  # SIGKILL: a crash, not a shutdown
            for u in users:
                rec = fleet[u].record(int(streams[u][step]))
                fed[u] += 1
                assert rec.items.size > 0, "a device showed nothing"
                if step >= kill_at:
                    assert not rec.request_ok
        for u in users:
            rt = fleet[u]
            assert rt.failed_requests >= 1
            rt.close()
            store = DeviceStore(tmp_path / f"u{u}.sqlite")
            events = [i for i, _ in store.events()]
            seeded = ml_split.cloud_sequences()[u].size
            assert len(events) == seeded + fed[u]
            assert events[seeded:] == [int(i) for i in streams[u][:steps]]
            assert store.integrity_ok()
            assert store.load_list() is not None
    finally:
        server.kill()
