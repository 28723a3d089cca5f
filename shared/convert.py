"""Converters between protobuf messages and :mod:`dcrec.shared.contract` dataclasses.

The only module, with the servicer and the device's cloud client, that
imports generated ``_pb2`` code.
"""

from __future__ import annotations

import json

import numpy as np

from dcrec.shared.contract import CandidatesRequest, CandidatesResponse, DeviceModel, Reason
from dcrec.shared.proto.dcrec.v1 import recommend_pb2 as pb


def request_to_pb(req: CandidatesRequest) -> pb.GetCandidatesRequest:
    return pb.GetCandidatesRequest(
        device_id=req.device_id,
        history=[pb.Event(item_id=int(i), timestamp=float(t))
                 for i, t in zip(req.history, req.timestamps, strict=True)],
        count=req.count,
        reason=int(req.reason),
        exclude_seen=req.exclude_seen,
        current_list_id=req.current_list_id,
    )


def request_from_pb(msg: pb.GetCandidatesRequest) -> CandidatesRequest:
    """Plain form of a request; values are not validated here (the service does that)."""
    history = np.fromiter((e.item_id for e in msg.history), dtype=np.int64, count=len(msg.history))
    times = np.fromiter((e.timestamp for e in msg.history), dtype=np.float64, count=len(msg.history))
    try:
        reason = Reason(msg.reason)
    except ValueError:
        reason = Reason.UNSPECIFIED
    return CandidatesRequest(msg.device_id, history, times, int(msg.count), reason,
                             bool(msg.exclude_seen), msg.current_list_id)


def response_to_pb(resp: CandidatesResponse) -> pb.GetCandidatesResponse:
    return pb.GetCandidatesResponse(
        item_ids=resp.items.tolist(),
        scores=resp.scores.tolist(),
        list_id=resp.list_id,
        model_version=resp.model_version,
        ttl_seconds=resp.ttl_seconds,
        generated_at=resp.generated_at,
    )


def response_from_pb(msg: pb.GetCandidatesResponse) -> CandidatesResponse:
    items = np.asarray(msg.item_ids, dtype=np.int64)
    scores = np.asarray(msg.scores, dtype=np.float32)
    if items.shape != scores.shape:
        raise ValueError(f"response has {items.size} items but {scores.size} scores")
    return CandidatesResponse(items, scores, msg.list_id, msg.model_version,
                              float(msg.ttl_seconds), float(msg.generated_at))


def model_to_pb(model: DeviceModel | None, updated: bool) -> pb.GetDeviceModelResponse:
    if model is None or not updated:
        return pb.GetDeviceModelResponse(updated=False, version=model.version if model else "",
                                         sequence=model.sequence if model else 0)
    return pb.GetDeviceModelResponse(updated=True, version=model.version, onnx=model.onnx,
                                     sha256=model.sha256, config_json=json.dumps(model.config),
                                     sequence=model.sequence, manifest=model.manifest,
                                     signature=model.signature, key_id=model.key_id,
                                     neighbours=model.neighbours)


def model_from_pb(msg: pb.GetDeviceModelResponse) -> DeviceModel | None:
    """The delivered model, or None when the device is already up to date."""
    if not msg.updated:
        return None
    config = json.loads(msg.config_json) if msg.config_json else {}
    if not isinstance(config, dict):
        raise ValueError("device model config_json is not a JSON object")
    return DeviceModel(msg.version, bytes(msg.onnx), msg.sha256, config, int(msg.sequence),
                       bytes(msg.manifest), bytes(msg.signature), msg.key_id, bytes(msg.neighbours))
