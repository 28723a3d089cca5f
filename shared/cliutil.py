"""Helpers the area CLIs share: data arguments, ``key=value`` options and flag value types.

The ``type=`` functions below raise :class:`argparse.ArgumentTypeError`, so a
bad value is refused before any command runs with argparse's one line naming
the flag and exit status 2, e.g. ``dcrec cloud token: error: argument --ttl:
expected seconds or 90s, 30m, 12h, 30d, got '30x'``. :class:`UsageError` is the
same refusal for what argparse cannot see (flags that need each other).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from typing import Any

from dcrec.shared.data import Dataset, load_dataset
from dcrec.shared.splits import TimeSplit, time_split

EXIT_RUNTIME = 1  # the command line was fine; running it failed (a file, a registry, the network)
EXIT_USAGE = 2  # argparse's status for a bad command line; nothing was done


class UsageError(ValueError):
    """A command line argparse accepts but the command cannot run, e.g. a flag another one needs.

    ``main`` prints it as one line and exits :data:`EXIT_USAGE`. A ``ValueError``
    so code that caught the plain one before keeps working.
    """


def _number(kind: type, name: str, low: float, *, strict: bool,
            high: float | None = None) -> Callable[[str], Any]:
    """An argparse ``type=`` that parses ``kind`` and refuses values outside ``low``..``high``."""
    word = "an integer" if kind is int else "a number"
    bound = f"{'>' if strict else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {word} {bound}, got {text!r}") from None
        if value != value or (value <= low if strict else value < low) or (
                high is not None and value > high):  # value != value: NaN
            raise argparse.ArgumentTypeError(f"expected {word} {bound}, got {text!r}")
        return value

    parse.__name__ = name
    return parse


positive_int = _number(int, "positive_int", 0, strict=True)
non_negative_int = _number(int, "non_negative_int", 0, strict=False)
positive_float = _number(float, "positive_float", 0.0, strict=True)
non_negative_float = _number(float, "non_negative_float", 0.0, strict=False)
unit_interval = _number(float, "unit_interval", 0.0, strict=False, high=1.0)  # weights, ratios


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type=`` for integers >= ``low`` (e.g. a list needs 2 candidates to rank)."""
    return _number(int, f"int_at_least_{low}", low, strict=False)


def open_fraction(text: str) -> float:
    """A share strictly between 0 and 1 (both sides of a split get something)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number > 0 and < 1, got {text!r}")
    return value


def positive_int_list(text: str) -> tuple[int, ...]:
    """``1,8,64``: comma-separated integers >= 1."""
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1 separated by commas, got {text!r}")
    return values


def duration(text: str) -> float:
    """Seconds (> 0) from ``3600``, ``90s``, ``30m``, ``12h`` or ``30d``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    mult = units.get(t[-1:])
    try:
        value = float(t[:-1] if mult else t) * (mult or 1)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds or 90s, 30m, 12h, 30d (> 0), got {text!r}")
    return value


def key_value(text: str) -> str:
    """An argparse ``type=`` for one ``KEY=VALUE`` pair; :func:`options` turns the pairs into a dict."""
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return text


def options(pairs: list[str], flag: str = "--option") -> dict[str, Any]:
    """``key=value`` pairs with JSON values where they parse (numbers, booleans)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"{flag} {pair!r}: expected key=value")
        k, v = pair.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def config_options(opts: dict[str, Any], cls: type, flag: str, **fixed: Any) -> dict[str, Any]:
    """``opts`` as overrides of the dataclass ``cls``, checked now: unknown keys and values its
    ``validate()`` refuses are a :class:`UsageError` naming ``flag``. ``fixed`` fills the fields
    the command sets itself (e.g. ``n_items``)."""
    known = {f.name for f in dataclasses.fields(cls)} - set(fixed)
    taken = sorted(set(opts) & set(fixed))
    if taken:
        raise UsageError(f"{flag}: {', '.join(taken)}: set by the command's own flags or "
                         "the data, not here")
    unknown = sorted(set(opts) - known)
    if unknown:
        raise UsageError(f"{flag}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        probe = cls(**fixed, **opts)
        if hasattr(probe, "validate"):
            probe.validate()
    except (TypeError, ValueError) as e:
        raise UsageError(f"{flag}: {e}") from e
    return opts


AREAS = {"cloud": "the cloud recommender", "device": "the on-device reranker and its models",
         "bench": "offline benchmarks",
         "system": "the system's settings: what the device, the harness and the simulator run"}


def area(sub: argparse._SubParsersAction, name: str) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """The subcommands of ``dcrec NAME``, made on first use: the modules that live on different
    floors (the device runtime, the cloud's training, the offline harness) each add theirs to
    one area, so no module imports another's only to reach its command line."""
    made: dict[str, argparse._SubParsersAction] = sub.__dict__.setdefault("_dcrec_areas", {})  # type: ignore[type-arg]
    if name not in made:
        made[name] = sub.add_parser(name, help=AREAS[name]).add_subparsers(dest="sub", required=True)
    return made[name]


def data_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--dataset", default="ml-100k", help="ml-100k, beauty, or a path")
    q.add_argument("--cloud-fraction", type=open_fraction, default=0.8,
                   help="share of each user's events the cloud trains on (per-user time split)")


def load_split(dataset: str, cloud_fraction: float) -> tuple[Dataset, TimeSplit]:
    ds = load_dataset(dataset)
    print(f"data: {ds.describe()}", file=sys.stderr)
    return ds, time_split(ds, cloud_fraction)
