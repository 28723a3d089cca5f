"""A closed-loop gRPC load generator for GetCandidates, run as its own process.

``clients`` coroutines on one ``grpc.aio`` channel each send a request, wait
for the answer and send the next, for ``warmup_s + duration_s`` seconds;
only calls that start after the warm-up count. Requests are built once up
front from the histories file, so the client spends its CPU on the calls.

Run by :mod:`dcrec.cloud.load.bench_serving`; by hand::

    python -m dcrec.cloud.load.loadgen --address 127.0.0.1:50051 --histories h.npz --clients 64 --duration 20

prints one JSON object: ``ok``, ``errors`` (by status code), ``seconds``,
``throughput`` (OK answers per second), ``p50_ms``, ``p99_ms``, ``mean_ms``.

:func:`flood_telemetry` is the hostile client of :mod:`dcrec.cloud.load.bench_hostile`:
one device uploading records whose reasons and kinds are all distinct.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from dcrec.shared.proto.dcrec.v1 import recommend_pb2 as pb
from dcrec.shared.proto.dcrec.v1 import recommend_pb2_grpc as pb_grpc

TELEMETRY_BATCH = 500  # records per ReportTelemetry call: the server's per-call maximum


def save_histories(path: Path, histories: list[np.ndarray]) -> None:
    """Write histories as one flat array plus offsets (``.npz``)."""
    lengths = np.array([len(h) for h in histories], dtype=np.int64)
    np.savez(path, items=np.concatenate(histories).astype(np.int64),
             offsets=np.concatenate([[0], np.cumsum(lengths)]))


def load_histories(path: Path) -> list[np.ndarray]:
    with np.load(path) as z:
        items, offsets = z["items"], z["offsets"]
    return [items[offsets[i]: offsets[i + 1]] for i in range(len(offsets) - 1)]


def build_requests(histories: list[np.ndarray], count: int) -> list[pb.GetCandidatesRequest]:
    return [pb.GetCandidatesRequest(
        device_id=f"bench-{i}", count=count, exclude_seen=True,
        reason=pb.REQUEST_REASON_DISAGREEMENT,
        history=[pb.Event(item_id=int(x), timestamp=float(t)) for t, x in enumerate(h)])
        for i, h in enumerate(histories)]


async def _run(address: str, requests: list[pb.GetCandidatesRequest], clients: int,
               duration_s: float, warmup_s: float, deadline_s: float) -> dict[str, object]:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(address) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=10.0)
        call = pb_grpc.RecommenderStub(channel).GetCandidates
        start = time.perf_counter()
        measure_from = start + warmup_s
        stop_at = measure_from + duration_s

        async def client(k: int) -> None:
            i = k
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                try:
                    await call(requests[i % len(requests)], timeout=deadline_s)
                    ok = True
                except grpc.aio.AioRpcError as e:
                    ok = False
                    if t0 >= measure_from:
                        errors[e.code().name] += 1
                t1 = time.perf_counter()
                if ok and t0 >= measure_from:
                    latencies.append(t1 - t0)
                i += clients

        await asyncio.gather(*(client(k) for k in range(clients)))
        seconds = time.perf_counter() - measure_from
    lat = np.asarray(latencies) * 1000.0
    return {
        "clients": clients, "ok": int(lat.size), "errors": dict(errors),
        "seconds": round(seconds, 3),
        "throughput": lat.size / seconds if seconds > 0 else 0.0,
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
        "mean_ms": float(lat.mean()) if lat.size else float("nan"),
    }


def run(address: str, histories: list[np.ndarray], clients: int, duration_s: float,
        warmup_s: float = 1.0, count: int = 100, deadline_s: float = 10.0) -> dict[str, object]:
    """Drive ``address`` with ``clients`` closed-loop clients; the measurement as a dict."""
    if clients < 1 or duration_s <= 0 or warmup_s < 0:
        raise ValueError("clients must be >= 1, duration > 0 and warmup >= 0")
    requests = build_requests(histories, count)
    return asyncio.run(_run(address, requests, clients, duration_s, warmup_s, deadline_s))


def flood_telemetry(address: str, records: int, start: int = 1, seed: int = 0,
          device_id: str = "hostile-1") -> int:
    """Upload ``records`` request records, each with a fresh reason and every other batch a
    fresh kind, from one device; returns how many the server acknowledged."""
    rng = random.Random(seed)
    acked = 0
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        seq = start
        end = start + records
        n = 0
        while seq < end:
            batch = []
            for s in range(seq, min(seq + TELEMETRY_BATCH, end)):
                payload = json.dumps({"reason": f"r{rng.getrandbits(48):x}", "ok": True,
                                      "latency_ms": 1.0})
                kind = "request" if n % 2 == 0 else f"k{rng.getrandbits(48):x}"
                batch.append(pb.TelemetryRecord(sequence=s, kind=kind, payload_json=payload,
                                                created_at=1.0))
            resp = stub.ReportTelemetry(pb.ReportTelemetryRequest(
                device_id=device_id, stream="flood", records=batch), timeout=30)
            acked += len(resp.acked)
            seq += len(batch)
            n += 1
    return acked


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--address", required=True)
    p.add_argument("--histories", required=True, help=".npz written by save_histories")
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    p.add_argument("--count", type=int, default=100, help="candidates per request")
    p.add_argument("--deadline", type=float, default=10.0, help="per-call deadline, seconds")
    ns = p.parse_args(argv)
    result = run(ns.address, load_histories(Path(ns.histories)), ns.clients, ns.duration,
                 ns.warmup, ns.count, ns.deadline)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
