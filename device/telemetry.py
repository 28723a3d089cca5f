"""Uploading the device's telemetry outbox to the cloud (``ReportTelemetry``).

The store queues a record in its outbox for every candidate request, in the
same transaction as the local request log, so nothing is reported that did
not happen and nothing that happened is lost while offline (the outbox keeps
its newest ``max_outbox`` rows). :class:`TelemetryUploader` sends the oldest
records in batches, each call under the client's deadline, and deletes a
record only once the cloud acknowledged it (or refused it for good, which a
resend cannot change). A failed call leaves the outbox as it was and the
client's back-off paces the next try; a resent record is counted once by the
cloud, which tracks each outbox's newest sequence.

Example::

    uploader = TelemetryUploader(store, client, device_id="device-42")
    uploader.flush()          # when the app is idle or on Wi-Fi; returns what happened
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dcrec.device.client import CloudClient, CloudRejected, CloudUnavailable
from dcrec.device.store import DeviceStore

log = logging.getLogger(__name__)


@dataclass
class FlushResult:
    sent: int = 0  # records acknowledged by the cloud
    rejected: int = 0  # records the cloud refused for good (dropped)
    pending: int = 0  # records still in the outbox
    error: str = ""  # why the last call failed, if it did


class TelemetryUploader:
    def __init__(self, store: DeviceStore, client: CloudClient, device_id: str,
                 batch: int = 200) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.store = store
        self.client = client
        self.device_id = device_id
        self.batch = batch

    def flush(self, max_batches: int = 10) -> FlushResult:
        """Upload up to ``max_batches`` batches of the oldest records; stops at the first failure."""
        out = FlushResult()
        stream = self.store.telemetry_stream()
        for _ in range(max_batches):
            records = self.store.pending(self.batch)
            if not records:
                break
            try:
                acked, rejected = self.client.report_telemetry(self.device_id, stream, records)
            except (CloudUnavailable, CloudRejected) as e:
                # Kept for the next flush. A refused call (e.g. a batch over the server's limit)
                # is logged: the same call would be refused again, and needs a smaller batch.
                out.error = str(e)
                if isinstance(e, CloudRejected):
                    log.warning("cloud refused a telemetry upload: %s", e)
                break
            sent = {int(r[0]) for r in records}  # only ids of this batch are deleted
            ok = [i for i in acked if i in sent]
            refused = [i for i, _ in rejected if i in sent]
            for i, why in rejected:
                log.warning("cloud refused telemetry record %d for good: %s", i, why)
            self.store.ack(ok + refused)
            out.sent += len(ok)
            out.rejected += len(refused)
            if not ok and not refused:  # the cloud took nothing from this batch: do not spin on it
                out.error = "the cloud acknowledged none of the batch"
                break
        out.pending = self.store.pending_count()
        return out
