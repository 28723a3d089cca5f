"""Helpers the area CLIs share: data arguments and ``key=value`` options."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from shared.data import Dataset, load_dataset
from shared.splits import TimeSplit, time_split


def options(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs with JSON values where they parse (numbers, booleans)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--option {pair!r}: expected key=value")
        k, v = pair.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def data_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--dataset", default="ml-100k", help="ml-100k, beauty, or a path")
    q.add_argument("--cloud-fraction", type=float, default=0.8,
                   help="share of each user's events the cloud trains on (per-user time split)")


def load_split(dataset: str, cloud_fraction: float) -> tuple[Dataset, TimeSplit]:
    ds = load_dataset(dataset)
    print(f"data: {ds.describe()}", file=sys.stderr)
    return ds, time_split(ds, cloud_fraction)
