"""Dynamic batching: the batcher alone, then the real server with batching on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest

from dcrec.cloud.models.backends import load_generator
from dcrec.cloud.models.generator import CandidateGenerator, CandidateList
from dcrec.cloud.serving.batching import (
    BatchConfig,
    BatcherClosed,
    DeadlineExpired,
    DynamicBatcher,
    QueueFull,
)
from dcrec.cloud.serving.server import REPLICA_KEY, CloudServer, ServerConfig, build_server
from dcrec.cloud.serving.service import CandidateService, InvalidRequest
from dcrec.shared.convert import request_from_pb
from dcrec.shared.proto.dcrec.v1 import recommend_pb2 as pb
from dcrec.shared.proto.dcrec.v1 import recommend_pb2_grpc as pb_grpc


# --- the batcher on its own ---------------------------------------------------------------------
class Doubler:
    """An answer function that records each batch and may be held on a gate."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.delay_s = delay_s

    def __call__(self, reqs: Sequence[int]) -> list[int | BaseException]:
        self.gate.wait(10)
        self.batches.append(list(reqs))
        time.sleep(self.delay_s)
        return [ValueError(f"bad {r}") if r < 0 else 2 * r for r in reqs]


def test_concurrent_requests_share_batches_and_get_their_own_answers() -> None:
    answer = Doubler(delay_s=0.01)
    batcher = DynamicBatcher(answer, BatchConfig(max_batch_size=16, max_wait_ms=20)).start()
    results: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            results[i] = batcher(i)
        except ValueError as e:
            results[i] = str(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in [*range(40), -1]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    batcher.close()
    assert results == {**{i: 2 * i for i in range(40)}, -1: "bad -1"}  # one bad request fails alone
    sizes = [len(b) for b in answer.batches]
    assert sum(sizes) == 41 and max(sizes) > 1 and max(sizes) <= 16
    assert batcher.batches == len(sizes) < 41


def test_full_batch_goes_at_once_without_waiting_out_max_wait() -> None:
    answer = Doubler()
    answer.gate.clear()
    batcher = DynamicBatcher(answer, BatchConfig(max_batch_size=4, max_wait_ms=1000)).start()
    tickets = [batcher.submit(i) for i in range(4)]
    answer.gate.set()
    start = time.monotonic()
    assert [t.wait(5) for t in tickets] == [0, 2, 4, 6]
    assert time.monotonic() - start < 0.5  # not the 1 s max wait
    batcher.close()


def test_adaptive_wait_ends_when_no_announced_call_is_on_its_way() -> None:
    answer = Doubler()
    batcher = DynamicBatcher(answer, BatchConfig(max_batch_size=8, max_wait_ms=1000)).start()
    start = time.monotonic()
    with batcher.arrival() as a:  # a lone call: nobody else announced, so no 1 s wait
        assert a.submit(1).wait(5) == 2
    assert time.monotonic() - start < 0.5
    slow = batcher.arrival()  # announced, still "parsing"
    with batcher.arrival() as a:
        ticket = a.submit(2)
    time.sleep(0.2)
    assert not ticket.done()  # the batch waits for the announced call
    with slow:
        third = slow.submit(3)
    assert ticket.wait(5) == 4 and third.wait(5) == 6
    assert answer.batches[-1] == [2, 3]
    late = batcher.arrival()
    with batcher.arrival() as a:
        ticket = a.submit(4)
    with late:
        pass  # withdrawn (it failed validation): the batch goes without it
    assert ticket.wait(5) == 8 and answer.batches[-1] == [4]
    batcher.close()


def test_fixed_wait_holds_a_lone_request_for_max_wait() -> None:
    batcher = DynamicBatcher(Doubler(), BatchConfig(max_batch_size=8, max_wait_ms=300,
                                                    adaptive=False)).start()
    start = time.monotonic()
    assert batcher(1) == 2
    assert time.monotonic() - start >= 0.29
    batcher.close()


def test_request_whose_deadline_passes_in_the_queue_is_never_computed() -> None:
    answer = Doubler()
    answer.gate.clear()  # the first batch blocks the batcher
    batcher = DynamicBatcher(answer, BatchConfig(max_batch_size=1, max_wait_ms=0)).start()
    first = batcher.submit(1)
    time.sleep(0.05)  # the batcher has taken it and is blocked
    late = batcher.submit(2, deadline=time.monotonic() + 0.05)
    with pytest.raises(DeadlineExpired):
        late.wait()
    answer.gate.set()
    assert first.wait(5) == 2
    batcher.close()
    assert answer.batches == [[1]]  # 2 was dropped unanswered
    assert batcher.expired == 1


def test_full_queue_sheds_and_closed_batcher_refuses() -> None:
    answer = Doubler()
    answer.gate.clear()
    batcher = DynamicBatcher(answer, BatchConfig(max_batch_size=1, max_wait_ms=0, max_queue=2)).start()
    busy = batcher.submit(0)
    time.sleep(0.05)  # taken by the blocked batcher; the queue is empty again
    queued = [batcher.submit(1), batcher.submit(2)]
    with pytest.raises(QueueFull):
        batcher.submit(3)
    assert batcher.shed == 1
    answer.gate.set()
    assert busy.wait(5) == 0 and [t.wait(5) for t in queued] == [2, 4]
    batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.submit(4)


@pytest.mark.parametrize("bad", [
    BatchConfig(max_batch_size=0), BatchConfig(max_wait_ms=-1), BatchConfig(max_queue=-1),
    BatchConfig(threads=0),
])
def test_bad_batch_settings_are_refused(bad: BatchConfig) -> None:
    with pytest.raises(ValueError):
        bad.validate()


def test_batching_server_needs_threads_for_a_whole_batch() -> None:
    with pytest.raises(ValueError, match="batch max size"):
        ServerConfig(insecure=True, max_workers=8, batching=BatchConfig(max_batch_size=64)).validate()


# --- the real server with batching on ------------------------------------------------------------
def _request(items: list[int], count: int = 50, exclude_seen: bool = True,
             device: str = "d1") -> pb.GetCandidatesRequest:
    return pb.GetCandidatesRequest(
        device_id=device, count=count, exclude_seen=exclude_seen,
        reason=pb.REQUEST_REASON_DISAGREEMENT,
        history=[pb.Event(item_id=i, timestamp=1.0 + n) for n, i in enumerate(items)])


@pytest.fixture
def batching_server(cloud_model_dir: Path) -> Iterator[tuple[CloudServer, CandidateService]]:
    service = CandidateService(load_generator(cloud_model_dir))
    cs = build_server("127.0.0.1:0", service, config=ServerConfig(
        insecure=True, max_workers=64, batching=BatchConfig(max_batch_size=32, max_wait_ms=20)))
    cs.start()
    yield cs, service
    cs.stop(1.0)


def test_batched_answers_equal_unbatched_ones_exactly(batching_server, ml_split) -> None:  # type: ignore[no-untyped-def]
    cs, service = batching_server
    stub = pb_grpc.RecommenderStub(grpc.insecure_channel(f"127.0.0.1:{cs.port}"))
    seqs = ml_split.cloud_sequences()
    reqs = [_request([int(x) for x in seqs[u][-30:]], count=(50, 100)[u % 2],
                     exclude_seen=u % 3 != 0, device=f"d{u}") for u in range(48)]
    futures = [stub.GetCandidates.future(r, timeout=20) for r in reqs]
    got = [f.result() for f in futures]
    for r, resp in zip(reqs, got, strict=True):
        alone = service.get_candidates(request_from_pb(r))
        assert list(resp.item_ids) == alone.items.tolist()
        assert np.array_equal(np.asarray(resp.scores, dtype=np.float32), alone.scores)
        assert resp.model_version == alone.model_version
    assert cs.batcher is not None and cs.batcher.answered == 48
    assert cs.batcher.batches < 48  # concurrent calls shared generator calls
    assert "dcrec_batch_size_count" in cs.telemetry.render()


def test_batching_server_refuses_bad_requests_and_names_its_replica(batching_server) -> None:  # type: ignore[no-untyped-def]
    cs, _ = batching_server
    stub = pb_grpc.RecommenderStub(grpc.insecure_channel(f"127.0.0.1:{cs.port}"))
    bad = stub.GetCandidates.future(_request([1, 99999]), timeout=10)
    good = stub.GetCandidates.future(_request([1, 2]), timeout=10)
    with pytest.raises(grpc.RpcError) as e:
        bad.result()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith("history.item_id:")
    assert len(good.result().item_ids) == 50
    _, call = stub.GetCandidates.with_call(_request([3]), timeout=10)
    assert dict(call.trailing_metadata())[REPLICA_KEY] == cs.replica


class Gated:
    """A real generator that blocks on a gate and records every history it computes."""

    def __init__(self, inner: CandidateGenerator) -> None:
        self.inner = inner
        self.name, self.version, self.n_items = inner.name, inner.version, inner.n_items
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.seen: list[list[int]] = []

    def generate(self, histories: Sequence[np.ndarray], count: int,
                 exclude_seen: bool = True) -> list[CandidateList]:
        self.seen += [h.tolist() for h in histories]
        self.entered.set()
        self.gate.wait(10)
        return self.inner.generate(histories, count, exclude_seen)


def test_server_sheds_when_the_queue_is_full_and_skips_expired_calls(cloud_model_dir: Path) -> None:
    gen = Gated(load_generator(cloud_model_dir))
    cs = build_server("127.0.0.1:0", CandidateService(gen), config=ServerConfig(
        insecure=True, max_workers=16,
        batching=BatchConfig(max_batch_size=2, max_wait_ms=0, max_queue=2))).start()
    try:
        stub = pb_grpc.RecommenderStub(grpc.insecure_channel(f"127.0.0.1:{cs.port}"))
        first = stub.GetCandidates.future(_request([1]), timeout=10)
        assert gen.entered.wait(10)  # the batcher is busy with [1]
        late = stub.GetCandidates.future(_request([2]), timeout=0.3)  # expires while queued
        kept = stub.GetCandidates.future(_request([3]), timeout=10)
        time.sleep(0.1)
        with pytest.raises(grpc.RpcError) as shed:
            stub.GetCandidates(_request([4]), timeout=10)  # queue holds [2] and [3]
        assert shed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as expired:
            late.result()
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The server learns of the deadline a little after the client does (more so on a
        # loaded machine): let its copy pass too before the batcher looks at the queue.
        time.sleep(0.5)
        gen.gate.set()
        assert len(first.result().item_ids) == 50 and len(kept.result().item_ids) == 50
        assert gen.seen == [[1], [3]]  # [2] was never computed, [4] never queued
        assert cs.batcher is not None and cs.batcher.shed == 1 and cs.batcher.expired == 1
        assert cs.limiter.shed == 0  # the batch queue shed it, not the in-flight limit
    finally:
        gen.gate.set()
        cs.stop(1.0)


def test_answer_batch_validates_each_request_against_the_live_model(cloud_model_dir: Path) -> None:
    service = CandidateService(load_generator(cloud_model_dir))
    reqs = [request_from_pb(_request([1, 2])), request_from_pb(_request([5000])),
            request_from_pb(_request([7], count=20))]
    calls: list[int] = []
    out = service.answer_batch(reqs, on_call=calls.append)
    assert isinstance(out[1], InvalidRequest) and out[1].field == "history.item_id"
    assert len(out[0].items) == 50 and len(out[2].items) == 20  # type: ignore[union-attr]
    assert sorted(calls) == [1, 1]  # one generator call per (count, exclude_seen)
    with pytest.raises(InvalidRequest):
        service.get_candidates_batch(reqs)
