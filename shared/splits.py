"""Evaluation splits: leave-one-out, the stale-cloud split, and per-user time split.

All splits work on a :class:`~dcrec.shared.data.Dataset` and return plain arrays.
Histories are lists of ``(n,)`` int64 arrays (oldest first); models pad them.

Example::

    split = stale_cloud_split(ds, lag=2)
    split.test.cloud_histories[0]   # what the cloud last saw of user 0: i1..i(n-3)
    split.test.device_histories[0]  # what the device sees: i1..i(n-1)
    split.test.targets[0]           # i(n)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dcrec.shared.data import Dataset, Interactions


@dataclass(frozen=True)
class EvalSet:
    """One prediction per user: given a history, predict ``targets[j]``.

    ``users`` (M,), ``targets`` (M,), ``histories`` M arrays. For the stale-cloud
    split ``cloud_histories`` holds the shorter history the cloud last saw; for
    other splits it equals ``histories``.
    """

    users: np.ndarray
    histories: list[np.ndarray]
    targets: np.ndarray
    cloud_histories: list[np.ndarray]

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    @property
    def device_histories(self) -> list[np.ndarray]:
        return self.histories

    def take(self, idx: np.ndarray) -> EvalSet:
        return EvalSet(
            self.users[idx],
            [self.histories[i] for i in idx],
            self.targets[idx],
            [self.cloud_histories[i] for i in idx],
        )


@dataclass(frozen=True)
class Split:
    """Training sequences (what models may learn from) plus validation and test sets."""

    train: list[np.ndarray]
    valid: EvalSet
    test: EvalSet


def _evalset(users: list[int], hists: list[np.ndarray], targets: list[int],
             cloud: list[np.ndarray] | None = None) -> EvalSet:
    return EvalSet(
        np.asarray(users, dtype=np.int64),
        hists,
        np.asarray(targets, dtype=np.int64),
        cloud if cloud is not None else hists,
    )


def leave_one_out(ds: Dataset, min_len: int = 3) -> Split:
    """Train on ``i1..i(n-2)``, validate on ``i(n-1)``, test on ``in`` (fresh history).

    Users with fewer than ``min_len`` events are kept for training only.
    """
    train: list[np.ndarray] = []
    vu, vh, vt, tu, th, tt = [], [], [], [], [], []
    for u, seq in enumerate(ds.sequences()):
        n = len(seq)
        if n < min_len:
            train.append(seq)
            continue
        train.append(seq[: n - 2])
        vu.append(u), vh.append(seq[: n - 2]), vt.append(int(seq[n - 2]))
        tu.append(u), th.append(seq[: n - 1]), tt.append(int(seq[n - 1]))
    return Split(train, _evalset(vu, vh, vt), _evalset(tu, th, tt))


def stale_cloud_split(ds: Dataset, lag: int = 2, min_len: int = 3) -> Split:
    """LSC4Rec's device-cloud split.

    The cloud last saw ``i1..i(n-1-lag)`` (stale; ``lag=2`` gives ``i1..i(n-3)``),
    the device sees ``i1..i(n-1)``, the target is ``in``. Models train on what the
    cloud saw. Validation repeats the protocol one step earlier: the target is
    the last training item ``i(n-1-lag)``, the device sees everything before it
    and the cloud ``lag`` items less; models that validate on it must not train
    on the last item of each training sequence.
    """
    if lag < 0:
        raise ValueError(f"lag must be >= 0, got {lag}")
    train: list[np.ndarray] = []
    vu, vh, vt, vc = [], [], [], []
    tu, th, tt, tc = [], [], [], []
    for u, seq in enumerate(ds.sequences()):
        n = len(seq)
        cut = n - 1 - lag  # the cloud has seen seq[:cut]
        if n < min_len or cut < 1:
            train.append(seq[: max(cut, 0)] if cut >= 2 else seq[:0])
            continue
        train.append(seq[:cut])
        if cut >= 2:
            vu.append(u), vh.append(seq[: cut - 1]), vt.append(int(seq[cut - 1]))
            vc.append(seq[: max(cut - 1 - lag, 1)])
        tu.append(u), th.append(seq[: n - 1]), tt.append(int(seq[n - 1])), tc.append(seq[:cut])
    train = [s for s in train if len(s) >= 2]
    return Split(train, _evalset(vu, vh, vt, vc), _evalset(tu, th, tt, tc))


@dataclass(frozen=True)
class TimeSplit:
    """Per-user time split: the cloud's past and the device's live stream.

    ``cloud`` holds each user's first fraction of events (what the cloud trains
    on and last saw); ``stream`` the rest, in each user's time order, replayed as
    the device's real-time events.
    """

    cloud: Interactions
    stream: Interactions
    n_users: int

    def cloud_sequences(self) -> list[np.ndarray]:
        o = self.cloud.offsets(self.n_users)
        return [self.cloud.item[o[u] : o[u + 1]] for u in range(self.n_users)]

    def stream_events(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        """(items, times) of one user's device stream, in time order."""
        o = self.stream.offsets(self.n_users)
        return self.stream.item[o[user] : o[user + 1]], self.stream.time[o[user] : o[user + 1]]


def time_split(ds: Dataset, cloud_fraction: float = 0.8, min_cloud: int = 1) -> TimeSplit:
    """Give each user's first ``cloud_fraction`` of events to the cloud, the rest to the device.

    Every user keeps at least ``min_cloud`` events on the cloud side and, when the
    user has more than that, at least one event in the stream.
    """
    if not 0.0 < cloud_fraction < 1.0:
        raise ValueError(f"cloud_fraction must be in (0, 1), got {cloud_fraction}")
    inter = ds.interactions
    o = inter.offsets(ds.n_users)
    n = np.diff(o)
    k = np.maximum(np.floor(n * cloud_fraction).astype(np.int64), min_cloud)
    k = np.where(n > min_cloud, np.minimum(k, n - 1), n)
    pos = np.arange(len(inter)) - np.repeat(o[:-1], n)
    to_cloud = pos < np.repeat(k, n)
    return TimeSplit(inter.subset(to_cloud), inter.subset(~to_cloud), ds.n_users)
