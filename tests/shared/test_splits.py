import numpy as np
import pytest

from dcrec.shared.splits import leave_one_out, stale_cloud_split, time_split


def test_leave_one_out(ml100k) -> None:  # type: ignore[no-untyped-def]
    split = leave_one_out(ml100k)
    seq = ml100k.sequence(5)
    j = int(np.flatnonzero(split.test.users == 5)[0])
    assert split.test.targets[j] == seq[-1]
    assert np.array_equal(split.test.histories[j], seq[:-1])
    assert split.valid.targets[j] == seq[-2]
    assert np.array_equal(split.train[5], seq[:-2])
    assert len(split.test) == 943


def test_stale_cloud_split_matches_the_protocol(ml100k) -> None:  # type: ignore[no-untyped-def]
    split = stale_cloud_split(ml100k, lag=2)
    seq = ml100k.sequence(3)
    j = int(np.flatnonzero(split.test.users == 3)[0])
    n = len(seq)
    assert np.array_equal(split.test.cloud_histories[j], seq[: n - 3])  # i1..i(n-3)
    assert np.array_equal(split.test.device_histories[j], seq[: n - 1])  # i1..i(n-1)
    assert split.test.targets[j] == seq[n - 1]
    # Training never contains the device-only items or the target.
    assert max(len(s) for s in split.train) <= max(len(s) for s in ml100k.sequences()) - 3
    with pytest.raises(ValueError):
        stale_cloud_split(ml100k, lag=-1)


def test_time_split_partitions_each_user(ml100k) -> None:  # type: ignore[no-untyped-def]
    ts = time_split(ml100k, 0.8)
    assert len(ts.cloud) + len(ts.stream) == len(ml100k.interactions)
    for u in (0, 10, 500):
        cloud = ts.cloud_sequences()[u]
        items, times = ts.stream_events(u)
        seq = ml100k.sequence(u)
        assert np.array_equal(np.concatenate([cloud, items]), seq)
        assert len(cloud) == int(np.floor(len(seq) * 0.8))
        assert items.size >= 1 and np.all(np.diff(times) >= 0)
        assert times[0] >= ml100k.times(u)[len(cloud) - 1]
    with pytest.raises(ValueError):
        time_split(ml100k, 1.5)
