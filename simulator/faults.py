"""Faults a scenario schedules in simulated time, and the handle on the cloud they need.

* ``cloud_down``: the cloud server process is killed (SIGKILL, as a crash)
  at ``at_s`` and started again on the same address ``duration_s`` later;
* ``network_down``: the link between devices and cloud is cut at the
  :mod:`~dcrec.simulator.netem` proxy for the window (the server keeps running).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from dcrec.simulator.netem import Window

FaultKind = Literal["cloud_down", "network_down"]


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    at_s: float  # simulated seconds from the start
    duration_s: float

    def validate(self) -> None:
        if self.kind not in ("cloud_down", "network_down"):
            raise ValueError(f"fault kind must be cloud_down or network_down, got {self.kind!r}")
        if self.at_s < 0 or self.duration_s <= 0:
            raise ValueError("fault at_s must be >= 0 and duration_s > 0")

    @property
    def window(self) -> Window:
        return Window(self.at_s, self.at_s + self.duration_s)


class CloudControl(Protocol):
    """The cloud server process, for faults that kill it."""

    def kill(self) -> None: ...

    def restart(self) -> None:
        """Start again on the same address; returns once serving."""
        ...
