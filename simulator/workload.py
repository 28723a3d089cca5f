"""Where devices' events come from: replayed traces or closed-loop simulated users.

A workload lists its devices (:class:`DeviceSpec`: the history the phone
already holds and when it first asks for a list) and gives each a
:class:`Driver` that yields the device's events one at a time. A driver sees
the list the device shows before each event: a trace ignores it (the user's
choice is on record, the list is only scored), a simulated user reacts to it.

Simulated time starts at 0 for every workload. Timing of traces:

* ``real``: the data set's own timestamps, shifted to start at 0 and
  multiplied by ``time_scale`` (MovieLens: the per-user time split replayed
  as it happened);
* ``synthetic``: exponential gaps of mean ``mean_gap_s`` between each
  device's events, keeping each user's order (Amazon Beauty has only order).

:class:`Surge` windows multiply event rates (synthetic traces and simulated
users) and can hold back a share of the fleet until they begin (a flash crowd
of devices coming online together).

Every device draws from its own random stream (seeded by the run's seed and
the device's index), so a device behaves the same whichever shard runs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from dcrec.shared.splits import TimeSplit
from dcrec.simulator.users import LatentInterestUsers, LatentState, Response, UserModel

Timing = Literal["real", "synthetic"]


@dataclass(frozen=True)
class Surge:
    """From ``at_s`` for ``duration_s`` simulated seconds, events come ``rate_multiplier`` times faster;
    ``join_fraction`` of the devices stay offline until ``at_s`` and join over ``join_ramp_s``."""

    at_s: float
    duration_s: float
    rate_multiplier: float = 1.0
    join_fraction: float = 0.0
    join_ramp_s: float = 10.0

    def validate(self) -> None:
        if self.duration_s <= 0 or self.rate_multiplier <= 0 or self.join_ramp_s < 0:
            raise ValueError("surge duration_s and rate_multiplier must be > 0, join_ramp_s >= 0")
        if not 0.0 <= self.join_fraction <= 1.0:
            raise ValueError(f"surge join_fraction must be in [0, 1], got {self.join_fraction}")


def rate_multiplier(surges: Sequence[Surge], t: float) -> float:
    m = 1.0
    for s in surges:
        if s.at_s <= t < s.at_s + s.duration_s:
            m *= s.rate_multiplier
    return m


@dataclass(frozen=True)
class DeviceSpec:
    index: int  # position in the whole fleet (shards pick devices by index)
    user: int  # the data set's user behind the device (a template for simulated users)
    history: np.ndarray  # (L,) items the phone already holds, oldest first
    history_times: np.ndarray  # (L,) their times, simulated seconds
    start_s: float  # when the device comes online and asks for its first list

    @property
    def device_id(self) -> str:
        return f"d{self.index}"


class Driver(Protocol):
    next_time: float | None  # simulated time of the device's next event; None when done

    def step(self, shown: np.ndarray) -> Response:
        """The event at ``next_time`` given ``shown`` (<=k,) the list on screen; advances ``next_time``."""
        ...


class Workload(Protocol):
    name: str
    duration_s: float | None  # simulated seconds; events after this are not generated

    def devices(self) -> list[DeviceSpec]: ...

    def driver(self, spec: DeviceSpec, seed: int) -> Driver: ...


def _position(shown: np.ndarray, item: int) -> int:
    hit = np.flatnonzero(shown == item)
    return int(hit[0]) if hit.size else -1


def _device_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, index, stream])


def _start_times(n: int, seed: int, spread_s: float, surges: Sequence[Surge]) -> np.ndarray:
    """Devices come online uniformly over ``spread_s``; surges hold back their share until they begin."""
    starts = np.array([_device_rng(seed, i, 1).uniform(0.0, spread_s) for i in range(n)])
    for s in surges:
        if s.join_fraction:
            late = np.array([_device_rng(seed, i, 2).random() < s.join_fraction for i in range(n)])
            ramp = np.array([_device_rng(seed, i, 3).uniform(0.0, s.join_ramp_s) for i in range(n)])
            starts = np.where(late, s.at_s + ramp, starts)
    return starts


class TraceDriver:
    def __init__(self, items: np.ndarray, times: np.ndarray, duration_s: float | None) -> None:
        self.items = items
        self.times = times
        self.i = 0
        self.duration_s = duration_s
        self.next_time: float | None = None
        self._advance()

    def _advance(self) -> None:
        if self.i < self.items.size and (self.duration_s is None or self.times[self.i] < self.duration_s):
            self.next_time = float(self.times[self.i])
        else:
            self.next_time = None

    def step(self, shown: np.ndarray) -> Response:
        item = int(self.items[self.i])
        self.i += 1
        self._advance()
        return Response(item, _position(shown, item))


class TraceWorkload:
    """Each user with a live stream is one device replaying it."""

    def __init__(self, split: TimeSplit, timing: Timing = "real", mean_gap_s: float = 30.0,
                 time_scale: float = 1.0, max_users: int | None = None, seed: int = 0,
                 surges: Sequence[Surge] = (), duration_s: float | None = None) -> None:
        if timing not in ("real", "synthetic"):
            raise ValueError(f"workload.timing must be real or synthetic, got {timing!r}")
        if mean_gap_s <= 0 or time_scale <= 0:
            raise ValueError("workload.mean_gap_s and workload.time_scale must be > 0")
        self.name = f"trace-{timing}"
        self.split = split
        self.timing = timing
        self.mean_gap_s = mean_gap_s
        self.time_scale = time_scale
        self.surges = list(surges)
        self.duration_s = duration_s
        self.seed = seed
        counts = np.bincount(split.stream.user, minlength=split.n_users)
        users = np.flatnonzero(counts > 0)
        self.users = users if max_users is None else users[:max_users]
        self._co = split.cloud.offsets(split.n_users)
        self._so = split.stream.offsets(split.n_users)
        # Real time: the earliest moment any replayed device comes online is simulated time 0.
        firsts = [self._cloud_last(u) for u in self.users]
        self._origin = float(min(firsts)) if firsts else 0.0

    def _cloud_last(self, u: int) -> float:
        lo, hi = self._co[u], self._co[u + 1]
        if hi > lo:
            return float(self.split.cloud.time[hi - 1])
        return float(self.split.stream.time[self._so[u]])

    def _sim(self, t: np.ndarray | float) -> np.ndarray | float:
        return (t - self._origin) * self.time_scale

    def devices(self) -> list[DeviceSpec]:
        starts = _start_times(len(self.users), self.seed, self.mean_gap_s, self.surges) \
            if self.timing == "synthetic" else None
        specs = []
        for i, u in enumerate(self.users):
            u = int(u)
            lo, hi = self._co[u], self._co[u + 1]
            hist = self.split.cloud.item[lo:hi]
            if self.timing == "real":
                start = float(self._sim(self._cloud_last(u)))
                htimes = np.minimum(np.asarray(self._sim(self.split.cloud.time[lo:hi])), start)
            else:
                assert starts is not None
                start = float(starts[i])
                htimes = np.linspace(start - hist.size, start - 1, hist.size) if hist.size else \
                    np.zeros(0)
            specs.append(DeviceSpec(i, u, hist, np.asarray(htimes, dtype=np.float64), start))
        return specs

    def driver(self, spec: DeviceSpec, seed: int) -> Driver:
        lo, hi = self._so[spec.user], self._so[spec.user + 1]
        items = self.split.stream.item[lo:hi]
        if self.timing == "real":
            times = np.asarray(self._sim(self.split.stream.time[lo:hi]), dtype=np.float64)
            times = np.maximum(times, spec.start_s)
        else:
            rng = _device_rng(seed, spec.index, 4)
            times = np.empty(items.size)
            t = spec.start_s
            for j in range(items.size):
                t += rng.exponential(self.mean_gap_s) / rate_multiplier(self.surges, t)
                times[j] = t
        return TraceDriver(items, times, self.duration_s)


class UserDriver:
    def __init__(self, model: UserModel[LatentState], state: LatentState, rng: np.random.Generator,
                 start_s: float, first_gap_s: float, surges: Sequence[Surge],
                 duration_s: float | None) -> None:
        self.model = model
        self.state = state
        self.rng = rng
        self.surges = surges
        self.duration_s = duration_s
        self.next_time: float | None = None
        self._set_next(start_s + first_gap_s)

    def _set_next(self, t: float) -> None:
        self.next_time = t if self.duration_s is None or t < self.duration_s else None

    def step(self, shown: np.ndarray) -> Response:
        assert self.next_time is not None
        now = self.next_time
        resp = self.model.response(self.state, shown, self.rng)
        gap = self.model.next_gap_s(self.state, resp, self.rng) / rate_multiplier(self.surges, now)
        self.state = self.model.next_state(self.state, resp, gap, self.rng)
        self._set_next(now + gap)
        return resp


class UserWorkload:
    """``n_devices`` simulated users, each seeded from a real user's history (cycling through them)."""

    def __init__(self, split: TimeSplit, model: LatentInterestUsers, n_devices: int,
                 duration_s: float, seed: int = 0, surges: Sequence[Surge] = (),
                 min_history: int = 5, history_cap: int = 200) -> None:
        if n_devices < 1 or duration_s <= 0:
            raise ValueError("workload.devices must be >= 1 and workload.duration_s > 0")
        self.name = "closed-loop"
        self.split = split
        self.model = model
        self.n_devices = n_devices
        self.duration_s = duration_s
        self.seed = seed
        self.surges = list(surges)
        self.history_cap = history_cap  # a phone keeps a bounded history
        self._co = split.cloud.offsets(split.n_users)
        lengths = np.diff(self._co)
        self.templates = np.flatnonzero(lengths >= min_history)
        if self.templates.size == 0:
            raise ValueError(f"no user has {min_history}+ events to seed simulated users from")

    def devices(self) -> list[DeviceSpec]:
        spread = self.model.config.event_gap_s
        starts = _start_times(self.n_devices, self.seed, spread, self.surges)
        specs = []
        for i in range(self.n_devices):
            u = int(self.templates[i % self.templates.size])
            lo, hi = self._co[u], self._co[u + 1]
            hist = self.split.cloud.item[max(lo, hi - self.history_cap):hi]
            start = float(starts[i])
            times = start - np.arange(hist.size, 0, -1, dtype=np.float64)  # a second apart
            specs.append(DeviceSpec(i, u, hist, times, start))
        return specs

    def driver(self, spec: DeviceSpec, seed: int) -> Driver:
        rng = _device_rng(seed, spec.index, 5)
        state = self.model.initial_state(spec.history, rng)
        # Start in the steady state: a user is mid-session with the share of time sessions take.
        cfg = self.model.config
        in_session = cfg.event_gap_s / max(1e-9, 1.0 - cfg.continue_p)
        p_session = in_session / (in_session + cfg.session_gap_s)
        first = float(rng.exponential(cfg.event_gap_s if rng.random() < p_session else cfg.session_gap_s))
        return UserDriver(self.model, state, rng, spec.start_s, first, self.surges, self.duration_s)
