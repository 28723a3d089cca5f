"""Property-based fuzzing of the protobuf converters: arbitrary input never crashes them.

Whatever bytes arrive, parsing either fails with protobuf's DecodeError or
gives a message the converters turn into a plain request that the service
either accepts or rejects with InvalidRequest naming a field; nothing else
may escape (an escaping exception would be an INTERNAL error for a client).
"""

from __future__ import annotations

import math

import numpy as np
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from dcrec.cloud.serving.service import CandidateService, InvalidRequest, ServiceConfig
from dcrec.shared.contract import CandidatesRequest, CandidatesResponse, DeviceModel, Reason
from dcrec.shared.convert import (
    model_from_pb,
    model_to_pb,
    request_from_pb,
    request_to_pb,
    response_from_pb,
    response_to_pb,
)
from dcrec.shared.proto.dcrec.v1 import recommend_pb2 as pb

FIELDS = {"device_id", "count", "history", "history.item_id", "history.timestamp",
          "current_list_id"}


class Catalogue:
    """A generator stand-in: validation only needs the catalogue size."""

    name = version = "fuzz"
    n_items = 1000

    def generate(self, histories, count, exclude_seen=True):  # type: ignore[no-untyped-def]
        raise AssertionError("validation only")


SERVICE = CandidateService(Catalogue(), ServiceConfig(max_count=200))  # type: ignore[arg-type]

int64 = st.integers(-(2**63), 2**63 - 1)
events = st.lists(st.builds(pb.Event, item_id=int64, timestamp=st.floats(allow_nan=True)),
                  max_size=300)
requests = st.builds(pb.GetCandidatesRequest, device_id=st.text(max_size=200), history=events,
                     count=st.integers(-(2**31), 2**31 - 1), reason=st.integers(0, 2**31 - 1),
                     exclude_seen=st.booleans(), current_list_id=st.text(max_size=200))


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_crash_request_handling(data: bytes) -> None:
    msg = pb.GetCandidatesRequest()
    try:
        msg.ParseFromString(data)
    except DecodeError:
        return
    check_request(msg)


@settings(max_examples=300, deadline=None, database=None)
@given(requests)
def test_arbitrary_requests_are_accepted_or_rejected_by_field(msg: pb.GetCandidatesRequest) -> None:
    check_request(msg)


def check_request(msg: pb.GetCandidatesRequest) -> None:
    req = request_from_pb(msg)
    assert req.history.shape == req.timestamps.shape == (len(msg.history),)
    assert isinstance(req.reason, Reason)
    try:
        SERVICE.validate(req)
    except InvalidRequest as e:
        assert e.field in FIELDS
        return
    assert 1 <= req.count <= 200 and 1 <= req.history.size <= SERVICE.config.max_history
    assert req.history.min() >= 1 and req.history.max() <= Catalogue.n_items


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.integers(1, 10**6), max_size=50), st.lists(st.floats(0, 2e9), max_size=50),
       st.integers(1, 500), st.sampled_from(list(Reason)), st.text(max_size=40))
def test_request_round_trip(items: list[int], times: list[float], count: int, reason: Reason,
                            device: str) -> None:
    n = min(len(items), len(times))
    req = CandidatesRequest(device, np.array(items[:n], dtype=np.int64),
                            np.array(times[:n], dtype=np.float64), count, reason)
    back = request_from_pb(request_to_pb(req))
    assert back.device_id == device and back.count == count and back.reason == reason
    assert back.history.tolist() == req.history.tolist()
    assert back.timestamps.tolist() == req.timestamps.tolist()


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=2048))
def test_arbitrary_responses_parse_or_fail_cleanly(data: bytes) -> None:
    for cls, convert in ((pb.GetCandidatesResponse, response_from_pb),
                         (pb.GetDeviceModelResponse, model_from_pb)):
        msg = cls()
        try:
            msg.ParseFromString(data)
        except DecodeError:
            continue
        try:
            convert(msg)  # type: ignore[operator]
        except ValueError:  # mismatched lengths, config_json that is not a JSON object
            pass


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(st.integers(1, 10**6), max_size=30), st.floats(allow_nan=False),
       st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=4),
       st.binary(max_size=64))
def test_response_and_model_round_trip(items: list[int], ttl: float, config: dict[str, object],
                                       onnx: bytes) -> None:
    resp = CandidatesResponse(np.array(items, dtype=np.int64),
                              np.linspace(1, 0, len(items), dtype=np.float32), "L", "m", ttl, 1.0)
    back = response_from_pb(response_to_pb(resp))
    assert back.items.tolist() == items and (back.ttl_seconds == ttl or math.isnan(ttl))
    model = DeviceModel("v", onnx, "ab", config, 7, b"{}", b"sig", "k")
    got = model_from_pb(model_to_pb(model, updated=True))
    assert got == model
    assert model_from_pb(model_to_pb(model, updated=False)) is None
