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
sequence it has taken (bounded in devices, least recently seen dropped
first), so a resent batch is acknowledged again but counted once.

Example::

    sink = TelemetrySink(telemetry, TelemetryConfig(log_path="runs/cloud/telemetry.jsonl"))
    acked, rejected = sink.accept("device-42", [TelemetryItem(7, "request", '{"reason": "expired"}', 1.0)])
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

from cloud.metrics import LATENCY_BUCKETS_S, Telemetry
from cloud.service import InvalidRequest

KIND = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


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
    max_devices: int = 100_000  # devices whose newest sequence is remembered
    log_path: str | None = None  # JSON-lines file for accepted records; None: metrics only

    def validate(self) -> None:
        if self.max_records < 1 or self.max_payload_chars < 2 or self.max_devices < 1:
            raise ValueError("max_records, max_devices must be >= 1 and max_payload_chars >= 2")


class TelemetrySink:
    def __init__(self, telemetry: Telemetry, config: TelemetryConfig | None = None) -> None:
        self.telemetry = telemetry
        self.config = config or TelemetryConfig()
        self.config.validate()
        self._lock = threading.Lock()
        self._newest: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._log: int | None = None
        if self.config.log_path:
            path = Path(self.config.log_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            # One O_APPEND write per call: replicas sharing the file never split a batch.
            self._log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self.accepted = 0  # records stored (duplicates not counted)
        self.duplicates = 0
        self.rejected = 0

    def accept(self, device_id: str, records: list[TelemetryItem], stream: str = ""
               ) -> tuple[list[int], list[tuple[int, str]]]:
        """Take ``records`` of ``stream`` from ``device_id``: (acked sequences, [(rejected, reason)]).

        Raises :class:`~cloud.service.InvalidRequest` (nothing taken) when the call as a
        whole is out of range.
        """
        if len(stream) > 64:
            raise InvalidRequest("stream", "longer than 64 characters")
        if len(records) > self.config.max_records:
            raise InvalidRequest("records", f"at most {self.config.max_records} per call, "
                                              f"got {len(records)}")
        acked: list[int] = []
        rejected: list[tuple[int, str]] = []
        lines: list[str] = []
        with self._lock:
            key = (device_id, stream)
            newest = self._newest.get(key, 0)
            for r in records:
                if r.sequence <= newest:
                    # At or below what this device already delivered: a resend after a lost ack
                    # (acked again, counted once), or a sequence out of order (the outbox never
                    # sends one; acknowledging it keeps such a record from blocking the outbox).
                    acked.append(r.sequence)
                    self.duplicates += 1
                    continue
                payload, problem = self._parse(r)
                if payload is None:
                    rejected.append((r.sequence, problem))
                    self.rejected += 1
                    continue
                self._count(r.kind, payload)
                lines.append(json.dumps({"device_id": device_id, "stream": stream,
                                         "sequence": r.sequence, "kind": r.kind,
                                         "created_at": r.created_at, "payload": payload},
                                        sort_keys=True))
                acked.append(r.sequence)
                self.accepted += 1
            top = max([newest, *acked, *(s for s, _ in rejected)])
            self._newest[key] = top
            self._newest.move_to_end(key)
            while len(self._newest) > self.config.max_devices:
                self._newest.popitem(last=False)
            if self._log is not None and lines:
                os.write(self._log, ("\n".join(lines) + "\n").encode())
        return acked, rejected

    def _parse(self, r: TelemetryItem) -> tuple[dict[str, object] | None, str]:
        """(payload, "") for a sound record, (None, why) for one refused for good."""
        if r.sequence < 1:
            return None, f"sequence must be >= 1, got {r.sequence}"
        if not KIND.match(r.kind):
            return None, f"kind {r.kind[:40]!r} is not a lower-case name of at most 32 characters"
        if len(r.payload_json) > self.config.max_payload_chars:
            return None, f"payload longer than {self.config.max_payload_chars} characters"
        if not math.isfinite(r.created_at):
            return None, "created_at must be finite"
        try:
            payload = json.loads(r.payload_json)
        except ValueError as e:
            return None, f"payload is not JSON ({e.msg})"
        if not isinstance(payload, dict):
            return None, "payload must be a JSON object"
        return payload, ""

    def _count(self, kind: str, payload: dict[str, object]) -> None:
        t = self.telemetry
        t.inc("dcrec_device_telemetry_records_total", "telemetry records devices uploaded, by kind",
              kind=kind)
        if kind != "request":
            return
        reason = str(payload.get("reason", "unknown"))[:32]
        ok = "ok" if payload.get("ok") else "failed"
        t.inc("dcrec_device_requests_total",
              "candidate requests as the devices logged them, by reason and outcome",
              reason=reason, outcome=ok)
        latency = payload.get("latency_ms")
        if isinstance(latency, int | float) and math.isfinite(latency) and latency >= 0:
            t.observe("dcrec_device_request_latency_seconds",
                      "request latency as the devices measured it, seconds", float(latency) / 1000.0,
                      LATENCY_BUCKETS_S)

    def close(self) -> None:
        with self._lock:
            if self._log is not None:
                os.close(self._log)
                self._log = None
