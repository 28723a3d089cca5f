"""Plain-Python forms of the cloud-device messages.

Logic on both sides works on these dataclasses and numpy arrays; only
:mod:`dcrec.shared.convert` (and the adapters that use it) touch protobuf.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

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
    """An ONNX reranker as the cloud hands it out.

    ``neighbours`` is the cloud's neighbour index (:mod:`dcrec.shared.neighbours`) when the
    release carries one; the config's ``neighbours_sha256`` announces its digest.
    ``manifest`` is the canonical JSON of :func:`manifest_bytes` and ``signature``
    an Ed25519 signature over exactly those bytes; both are empty when the
    registry signs nothing (development). ``sequence`` orders releases.
    """

    version: str
    onnx: bytes
    sha256: str
    config: dict[str, object] = field(default_factory=dict)
    sequence: int = 0
    manifest: bytes = b""
    signature: bytes = b""
    key_id: str = ""
    neighbours: bytes = b""  # the neighbour index file (shared.neighbours), released with the model


def manifest_bytes(version: str, sequence: int, sha256: str, config: dict[str, Any]) -> bytes:
    """The bytes a device-model release signs: sorted, compact JSON, UTF-8.

    Signer and verifier never re-serialise each other's data: the cloud sends
    these bytes and the device checks the signature over them before parsing.
    """
    return json.dumps({"config": config, "sequence": int(sequence), "sha256": sha256,
                       "version": version}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False).encode()
