"""The cloud's freshest view of each device's behaviour, keyed by the authenticated device id.

Every valid ``GetCandidates`` carries the device's newest events; the server
keeps the latest window per device (bounded in devices and events, least
recently seen devices dropped first) so operators can see the fleet and a
later model refresh can use what devices sent. The key is always the id the
caller authenticated as, never a field the caller chose.

Example::

    log = DeviceEventLog(max_devices=10_000)
    log.record("device-42", items, times)     # (L,) int64, (L,) float64 seconds
    log.history("device-42")                  # [(item_id, ts), ...] oldest first
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


class DeviceEventLog:
    def __init__(self, max_devices: int = 100_000, max_events: int = 200) -> None:
        if max_devices < 1 or max_events < 1:
            raise ValueError("max_devices and max_events must be >= 1")
        self.max_devices = max_devices  # bounds memory whatever device ids callers hold
        self.max_events = max_events
        self._lock = threading.Lock()
        self._by_device: OrderedDict[str, list[tuple[int, float]]] = OrderedDict()
        self.recorded = 0  # events received in total

    def record(self, device_id: str, items: np.ndarray, times: np.ndarray) -> None:
        """Keep the newest ``max_events`` of ``items`` (L,) / ``times`` (L,) for ``device_id``."""
        window = [(int(i), float(t)) for i, t in zip(items[-self.max_events:],
                                                     times[-self.max_events:], strict=True)]
        with self._lock:
            self._by_device[device_id] = window
            self._by_device.move_to_end(device_id)
            while len(self._by_device) > self.max_devices:
                self._by_device.popitem(last=False)
            self.recorded += len(window)

    def history(self, device_id: str) -> list[tuple[int, float]]:
        with self._lock:
            return list(self._by_device.get(device_id, []))

    def devices(self) -> list[str]:
        """Device ids, least recently seen first."""
        with self._lock:
            return list(self._by_device)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_device)
