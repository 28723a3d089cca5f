"""Plain-Python forms of the cloud-device messages.

Logic on both sides works on these dataclasses and numpy arrays; only
:mod:`shared.convert` (and the adapters that use it) touch protobuf.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class Reason(enum.IntEnum):
    """Why a device asks for a new list; values match ``dcrec.v1.RequestReason``."""

    UNSPECIFIED = 0
    COLD_START = 1
    DISAGREEMENT = 2
    EXPIRED = 3
    CONSUMED = 4
    PERIODIC = 5
    RANDOM = 6
    MANUAL = 7

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class CandidatesRequest:
    """``history`` (L,) item ids oldest first, ``timestamps`` (L,) seconds."""

    device_id: str
    history: np.ndarray
    timestamps: np.ndarray
    count: int
    reason: Reason = Reason.UNSPECIFIED
    exclude_seen: bool = True
    current_list_id: str = ""


@dataclass(frozen=True)
class CandidatesResponse:
    """``items`` (C,) best first, ``scores`` (C,) the cloud's scores, descending."""

    items: np.ndarray
    scores: np.ndarray
    list_id: str
    model_version: str
    ttl_seconds: float
    generated_at: float


@dataclass(frozen=True)
class DeviceModel:
    """An ONNX reranker as the cloud hands it out."""

    version: str
    onnx: bytes
    sha256: str
    config: dict[str, object] = field(default_factory=dict)
