"""What devices report about themselves: their telemetry outbox, uploaded with ``ReportTelemetry``.

A device queues a record for every candidate request it made (sent or failed,
with its reason and the latency it saw) in its local outbox and uploads the
outbox when it can. The server checks each record, drops records it already
holds (a device whose acknowledgement was lost sends them again), counts
request records into the operators' metrics (``dcrec_device_requests_total``
by reason and outcome, ``dcrec_device_request_latency_seconds`` as the devices
measured it, network and back-off included), and appends every accepted
record to a JSON-lines file when one is configured.

Records are keyed by the authenticated device id, the device's outbox
``stream`` (a random id of its local store) and the device's own increasing
``sequence``: per device and stream the server remembers the highest
sequence it has taken, so a resent batch is acknowledged again but counted
once. That memory is bounded per device (``max_streams_per_device``, a
device evicts only its own streams) and in total (``max_devices``, least
recently seen dropped first). Sequences are in [1, 2^53]; only records taken
move a stream on.

Records are refused, for good and each with its reason, when malformed: a kind
that is not a short lower-case name, a payload over ``max_payload_chars``,
not a JSON object, nested deeper than 16 levels, holding NaN or Infinity, or
(kind ``request``) not of the request schema: ``reason`` a lower-case name,
``ok`` a boolean (whether the device got a list), ``latency_ms`` optional, a
finite number >= 0. Metric labels come from closed sets
(:mod:`dcrec.cloud.serving.metrics`): a reason or kind outside them counts as ``other``.

Example::

    sink = TelemetrySink(telemetry, TelemetryConfig(log_path="runs/cloud/telemetry.jsonl"))
    acked, rejected = sink.accept("device-42", [TelemetryItem(7, "request", '{"reason": "expired", "ok": true}', 1.0)])
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from dcrec.cloud.serving.metrics import Telemetry
from dcrec.cloud.serving.service import InvalidRequest

KIND = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_SEQUENCE = 2**53  # outbox ids are SQLite rowids; anything larger is no outbox's
MAX_DEPTH = 16  # nesting of a payload; a device's records are flat objects


@dataclass(frozen=True)
class TelemetryItem:
    sequence: int
    kind: str
    payload_json: str
    created_at: float


@dataclass(frozen=True)
class TelemetryConfig:
    max_records: int = 500  # per call
    max_payload_chars: int = 4096  # per record
    max_devices: int = 100_000  # devices whose newest sequences are remembered (least recent dropped)
    max_streams_per_device: int = 8  # outbox streams remembered per device (one per app install)
    log_path: str | None = None  # JSON-lines file for accepted records; None: metrics only

    def validate(self) -> None:
        if min(self.max_records, self.max_devices, self.max_streams_per_device) < 1:
            raise ValueError("max_records, max_devices and max_streams_per_device must be >= 1")
        if self.max_payload_chars < 2:
            raise ValueError("max_payload_chars must be >= 2")


def _depth(value: object, limit: int) -> int:
    """Nesting depth of a parsed JSON value, counting no deeper than ``limit + 1``."""
    stack: list[tuple[object, int]] = [(value, 1)]
    deepest = 0
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            if d > limit:
                return d
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


class TelemetrySink:
    def __init__(self, telemetry: Telemetry, config: TelemetryConfig | None = None) -> None:
        self.telemetry = telemetry
        self.config = config or TelemetryConfig()
        self.config.validate()
        self._lock = threading.Lock()
        # device id -> (stream -> highest sequence taken); both least recently used first
        self._newest: OrderedDict[str, OrderedDict[str, int]] = OrderedDict()
        self._log: int | None = None
        if self.config.log_path:
            path = Path(self.config.log_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            # One O_APPEND write per call: replicas sharing the file never split a batch.
            self._log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self.accepted = 0  # records stored (duplicates not counted)
        self.duplicates = 0
        self.rejected = 0

    def remembered(self) -> int:
        """(device, stream) pairs whose newest sequence is held: bounded by
        ``max_devices * max_streams_per_device``."""
        with self._lock:
            return sum(len(s) for s in self._newest.values())

    def accept(self, device_id: str, records: list[TelemetryItem], stream: str = ""
               ) -> tuple[list[int], list[tuple[int, str]]]:
        """Take ``records`` of ``stream`` from ``device_id``: (acked sequences, [(rejected, reason)]).

        A record is acked when it is stored or was stored before (a resend), and
        rejected, for good, when it is malformed; nothing is counted until the
        whole batch has been checked, so a call either takes its records or fails
        as a whole. Raises :class:`~dcrec.cloud.serving.service.InvalidRequest` (nothing taken)
        when the call as a whole is out of range.
        """
        if len(stream) > 64:
            raise InvalidRequest("stream", "longer than 64 characters")
        if len(records) > self.config.max_records:
            raise InvalidRequest("records", f"at most {self.config.max_records} per call, "
                                              f"got {len(records)}")
        acked: list[int] = []
        rejected: list[tuple[int, str]] = []
        taken: list[tuple[TelemetryItem, dict[str, object]]] = []
        duplicates = 0
        with self._lock:
            streams = self._newest.get(device_id)
            newest = streams.get(stream, 0) if streams is not None else 0
            top = newest
            for r in records:
                problem = self._check_sequence(r.sequence)
                if problem:
                    rejected.append((r.sequence, problem))
                    continue
                if r.sequence <= top:
                    # At or below what this device already delivered: a resend after a lost ack
                    # (acked again, counted once), or a sequence out of order (the outbox never
                    # sends one; acknowledging it keeps such a record from blocking the outbox).
                    acked.append(r.sequence)
                    duplicates += 1
                    continue
                payload, problem = self._parse(r)
                if payload is None:
                    rejected.append((r.sequence, problem))
                    continue
                taken.append((r, payload))
                acked.append(r.sequence)
                top = r.sequence if r.sequence > top else top
            # Only records taken move the stream on: a malformed record with a huge sequence
            # cannot make the device's later records look like resends.
            lines = [json.dumps({"device_id": device_id, "stream": stream, "sequence": r.sequence,
                                 "kind": r.kind, "created_at": r.created_at, "payload": payload},
                                sort_keys=True) for r, payload in taken]
            for r, payload in taken:
                self._count(r.kind, payload)
            if rejected:
                self.telemetry.observe_device_rejected(len(rejected))
            self.accepted += len(taken)
            self.duplicates += duplicates
            self.rejected += len(rejected)
            self._remember(device_id, stream, top)
            if self._log is not None and lines:
                os.write(self._log, ("\n".join(lines) + "\n").encode())
        return acked, rejected

    def _remember(self, device_id: str, stream: str, top: int) -> None:
        """Hold ``top`` for (device, stream), within the per-device and total bounds."""
        streams = self._newest.get(device_id)
        if streams is None:
            streams = self._newest[device_id] = OrderedDict()
        streams[stream] = top
        streams.move_to_end(stream)
        while len(streams) > self.config.max_streams_per_device:  # a device evicts only its own
            streams.popitem(last=False)
        self._newest.move_to_end(device_id)
        while len(self._newest) > self.config.max_devices:
            self._newest.popitem(last=False)

    @staticmethod
    def _check_sequence(sequence: int) -> str:
        if not 1 <= sequence <= MAX_SEQUENCE:
            return f"sequence must be in [1, 2^53], got {sequence}"
        return ""

    def _parse(self, r: TelemetryItem) -> tuple[dict[str, object] | None, str]:
        """(payload, "") for a sound record, (None, why) for one refused for good."""
        if not KIND.match(r.kind):
            return None, f"kind {r.kind[:40]!r} is not a lower-case name of at most 32 characters"
        if len(r.payload_json) > self.config.max_payload_chars:
            return None, f"payload longer than {self.config.max_payload_chars} characters"
        if not math.isfinite(r.created_at):
            return None, "created_at must be finite"
        try:
            payload = json.loads(r.payload_json, parse_constant=_refuse_constant)
        except RecursionError:
            return None, f"payload nests deeper than {MAX_DEPTH} levels"
        except ValueError as e:
            return None, f"payload is not JSON ({getattr(e, 'msg', e)})"
        if not isinstance(payload, dict):
            return None, "payload must be a JSON object"
        if _depth(payload, MAX_DEPTH) > MAX_DEPTH:
            return None, f"payload nests deeper than {MAX_DEPTH} levels"
        if r.kind == "request":
            return _check_request(payload)
        return payload, ""

    def _count(self, kind: str, payload: dict[str, object]) -> None:
        t = self.telemetry
        t.observe_device_record(kind)
        if kind == "request":
            latency = payload.get("latency_ms")
            t.observe_device_request(str(payload["reason"]), bool(payload["ok"]),
                                     float(latency) if isinstance(latency, int | float) else None)

    def close(self) -> None:
        with self._lock:
            if self._log is not None:
                os.close(self._log)
                self._log = None


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def _check_request(payload: dict[str, object]) -> tuple[dict[str, object] | None, str]:
    """The ``request`` record's schema (docs/OPERATIONS.md): reason, ok, optional latency."""
    reason, ok, latency = payload.get("reason"), payload.get("ok"), payload.get("latency_ms")
    if not isinstance(reason, str) or not KIND.match(reason):
        return None, "request: reason must be a lower-case name of at most 32 characters"
    if not isinstance(ok, bool):
        return None, "request: ok must be true or false"
    if latency is not None and (isinstance(latency, bool) or not isinstance(latency, int | float)
                                or not math.isfinite(latency) or latency < 0):
        return None, "request: latency_ms must be a finite number >= 0"
    return payload, ""
