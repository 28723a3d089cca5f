"""The system: the one configuration of dcrec that was measured best, defined here once.

A :class:`System` is three typed sections:

- ``cloud``: the cloud's recommender backend, the width of the neighbour index released
  with the device model, and whether a request-value model ships with it;
- ``device``: the runtime's settings (:class:`DeviceSettings`, which the runtime calls
  ``RuntimeConfig``): list sizes, the fusion weight, the disagreement measure, the local
  list, adaptation;
- ``policy``: when the device asks the cloud for a new list, and at what request budget.

Its defaults *are* the system: ``DeviceRuntime`` built without a config, ``dcrec bench
quality`` with no flags, the simulator's scenarios and ``dcrec demo`` all read them from
here. Every baseline is a named override of it (:data:`OVERRIDES`: ``never``, ``always``,
``random``, ``cooccurrence``, ``no-index``, ...), never a second set of defaults.

The same settings travel as a TOML document inside each signed release (``dcrec cloud
publish`` puts it in the release config, so the manifest covers it), and a device runs
what the cloud published::

    [cloud]
    backend = "ensemble"
    neighbours = 50
    [device]
    measure = "regret"
    [policy]
    name = "learned"
    target_ratio = 0.05

Parsing is strict and complete: an unknown key, a value of the wrong type (TOML's own
types: ``"5"`` is not a number, ``1`` is not ``true``) or a value out of range is reported
with its key path (``device.alpha``), every problem at once, in one :class:`SystemConfigError`.
Keys left out keep the system's defaults. The validation is written here rather than
with pydantic because the device install (numpy, onnxruntime, grpcio, sqlite-utils) has
no pydantic, and the device must read its release's settings.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from dcrec.shared.agreement import Measure

Scale = Literal["rank", "zscore"]

# Every request policy the device knows (dcrec.device.policy builds one per name and checks
# this list against its own); "system" names the system's own policy below.
POLICY_NAMES = ("disagreement", "always", "never", "budgeted", "learned", "random", "periodic")
SYSTEM_POLICY = "system"

FORMAT_VERSION = 1


class SystemConfigError(ValueError):
    """Settings that are not a valid system: every problem, each named by its key path."""

    def __init__(self, problems: list[str], where: str = "system") -> None:
        self.problems = problems
        super().__init__(f"{where}: " + "; ".join(problems))


@dataclass(frozen=True)
class CloudSettings:
    # The cloud's recommender (dcrec.cloud.models.backends); "cooccurrence" is the fast baseline.
    backend: str = "ensemble"
    # Neighbours per item in the index released with the device model (dcrec cloud neighbours);
    # 0: no index, the device shows the cached list between requests.
    neighbours: int = 50
    # Train a request-value model (dcrec cloud request-model) and ship it in the release.
    request_model: bool = True

    def problems(self) -> list[str]:
        out = []
        if not self.backend:
            out.append("cloud.backend: must not be empty")
        if self.neighbours < 0:
            out.append(f"cloud.neighbours: must be >= 0, got {self.neighbours}")
        return out


@dataclass(frozen=True)
class DeviceSettings:
    """The device runtime's settings (``dcrec.device.runtime.RuntimeConfig``)."""

    candidates: int = 100  # list size asked of the cloud
    show: int = 10  # items the app displays
    alpha: float = 0.5  # the cloud's weight in fusion; 1 = cloud order, 0 = device order
    history_window: int = 50  # newest events sent with a request and fed to the reranker
    exclude_seen: bool = True  # never show what the user already consumed
    # How device/cloud disagreement is measured: regret (what the device's own best list
    # would gain over the one shown) is what the benchmarks measured best (docs/BENCHMARKS.md).
    measure: Measure = "regret"
    # depth of the comparison: rbo's prefix, coverage's device top-k; regret compares the
    # ``show`` items on screen (the device model scores the whole catalogue for both)
    measure_top: int = 20
    regret_temperature: float = 2.0  # softmax temperature of the device distribution (regret, uncovered)
    # The device model's own top-k unseen items (whole catalogue) ranked beside the cloud's
    # list, below every item the cloud listed on the cloud side: the stale list cannot hide
    # what the fresh history points to. 0 = the cloud's candidates only.
    device_candidates: int = 0
    # With the cloud's neighbour index (shared.neighbours: released with the model, or passed
    # to the runtime): once the history has moved past the cached list, the list is blended
    # with the index's local list for the history now (the cloud-side score becomes
    # ``(1 - w) * rank(cached) + w * rank(local)``, w = ``neighbour_weight``); with no list
    # yet, the local list alone is ranked. ``neighbour_recent`` newest items vote, each older
    # one ``neighbour_decay`` times the next newer's.
    neighbours: bool = True
    neighbour_weight: float = 1.0
    neighbour_recent: int = 10
    neighbour_decay: float = 0.7
    scale: Scale = "rank"  # how cloud and device scores are made comparable before fusion
    # Learn a per-user vector on the device from the user's choices (needs a model with
    # embeddings): on MovieLens it adds NDCG@10 +0.0009 [+0.0002, +0.0017] per device to the
    # system (dcrec bench adaptation; docs/DEVICE.md, "Adaptation in the system").
    adapt: bool = True
    adapt_lr: float = 0.5
    adapt_decay: float = 0.05  # per choice: how fast the user vector forgets
    persist_every: int = 20  # events between saves of the learned state (also saved on close)

    def problems(self) -> list[str]:
        p = "device."
        out = []
        for name in ("candidates", "show", "history_window", "persist_every", "measure_top",
                     "neighbour_recent"):
            if getattr(self, name) < 1:
                out.append(f"{p}{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("alpha", "neighbour_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                out.append(f"{p}{name}: must be in [0, 1], got {getattr(self, name)}")
        if self.regret_temperature <= 0:
            out.append(f"{p}regret_temperature: must be > 0, got {self.regret_temperature}")
        if self.device_candidates < 0:
            out.append(f"{p}device_candidates: must be >= 0, got {self.device_candidates}")
        if not 0.0 < self.neighbour_decay <= 1.0:
            out.append(f"{p}neighbour_decay: must be in (0, 1], got {self.neighbour_decay}")
        if self.adapt_lr < 0 or not 0.0 <= self.adapt_decay <= 1.0:
            out.append(f"{p}adapt_lr / adapt_decay: must be >= 0 and in [0, 1], got "
                       f"{self.adapt_lr} and {self.adapt_decay}")
        return out

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting (values of any origin, TOML or code)."""
        bad = self.problems()
        for name, choices in (("measure", get_args(Measure)), ("scale", get_args(Scale))):
            if getattr(self, name) not in choices:
                bad.append(f"device.{name}: unknown {name} {getattr(self, name)!r}; use one of "
                           f"{', '.join(choices)}")
        if bad:
            raise ValueError(bad[0].removeprefix("device.").replace(": ", " ", 1))  # "alpha must be ..."


@dataclass(frozen=True)
class PolicySettings:
    name: str = "learned"  # one of POLICY_NAMES; learned falls back to budgeted with no request model
    target_ratio: float = 0.05  # requests per event in the long run (budgeted, learned, random, periodic)
    capacity: float = 2.0  # the token bucket's size: the largest burst of requests
    threshold: float = 0.95  # disagreement's fixed threshold; budgeted's prior threshold

    def problems(self) -> list[str]:
        out = []
        if self.name not in POLICY_NAMES:
            out.append(f"policy.name: unknown request policy {self.name!r}; choose one of "
                       f"{', '.join(POLICY_NAMES)}")
        if not 0.0 < self.target_ratio <= 1.0:
            out.append(f"policy.target_ratio: must be in (0, 1], got {self.target_ratio}")
        if self.capacity < 1.0:
            out.append(f"policy.capacity: must be >= 1 (one request), got {self.capacity}")
        if not 0.0 <= self.threshold <= 1.0:
            out.append(f"policy.threshold: must be in [0, 1], got {self.threshold}")
        return out


@dataclass(frozen=True)
class System:
    cloud: CloudSettings = field(default_factory=CloudSettings)
    device: DeviceSettings = field(default_factory=DeviceSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    name: str = "system"  # what tables call it: "system", or the overrides applied ("system+no-index")

    def problems(self) -> list[str]:
        return [*self.cloud.problems(), *self.device.problems(), *self.policy.problems()]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "name": self.name,
                **{s: dataclasses.asdict(getattr(self, s)) for s in _SECTIONS}}

    def to_toml(self) -> str:
        import tomli_w  # (writing is the cloud's and the tools' side; a device only reads)

        return tomli_w.dumps(self.to_dict())

    def save(self, path: str | Path) -> Path:
        from dcrec.shared.fileio import write_atomic

        write_atomic(Path(path), self.to_toml().encode())
        return Path(path)

    def with_values(self, values: Mapping[str, Any], where: str = "system") -> System:
        """This system with ``{"section.key": value}`` set, validated like a file."""
        tree: dict[str, Any] = {s: dataclasses.asdict(getattr(self, s)) for s in _SECTIONS}
        tree["name"] = self.name
        problems = []
        for key, value in values.items():
            section, _, name = key.partition(".")
            if section not in _SECTIONS or not name:
                problems.append(f"{key}: unknown key (sections: {', '.join(_SECTIONS)})")
                continue
            tree[section][name] = value
        if problems:
            raise SystemConfigError(problems, where)
        return from_dict(tree, where)

    def override(self, *names: str) -> System:
        """This system with the named overrides (:data:`OVERRIDES`) applied, in order."""
        out = self
        for n in names:
            if n not in OVERRIDES:
                raise SystemConfigError([f"unknown override {n!r}; choose one of {', '.join(OVERRIDES)}"])
            out = out.with_values(OVERRIDES[n], where=f"override {n}")
            out = dataclasses.replace(out, name=f"{out.name}+{n}")
        return out


_SECTIONS: dict[str, type] = {"cloud": CloudSettings, "device": DeviceSettings, "policy": PolicySettings}

# Every baseline, as what it changes in the system. A table's row "never" is the system
# with override "never": the same cloud, device and index, no request after the first list.
OVERRIDES: dict[str, dict[str, Any]] = {
    "never": {"policy.name": "never"},
    "always": {"policy.name": "always"},
    "random": {"policy.name": "random"},
    "budgeted": {"policy.name": "budgeted"},  # the regret threshold, no request model
    # a fixed threshold on the order disagreement (rbo), no budget: the first demo's policy
    "disagreement": {"policy.name": "disagreement", "device.measure": "rbo"},
    "cooccurrence": {"cloud.backend": "cooccurrence"},  # the cloud the device can copy
    "no-index": {"cloud.neighbours": 0, "device.neighbours": False},
    "no-request-model": {"cloud.request_model": False, "policy.name": "budgeted"},
    "rbo": {"device.measure": "rbo"},  # the order disagreement, the runtime's older default
}


def _type_problem(value: Any, tp: Any) -> str | None:
    """Why ``value`` is not a ``tp`` (TOML's strict reading), or None."""
    if get_origin(tp) is Literal:
        choices = get_args(tp)
        return None if value in choices else f"must be one of {', '.join(map(str, choices))}, got {value!r}"
    if tp is bool:
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"must be an integer, got {value!r}"
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, got {value!r}"
        return None if math.isfinite(value) else f"must be a finite number, got {value!r}"
    if tp is str:
        return None if isinstance(value, str) else f"must be a string, got {value!r}"
    raise AssertionError(f"no reader for settings of type {tp!r}")


def from_dict(tree: Mapping[str, Any], where: str = "system") -> System:
    """A :class:`System` from parsed TOML: every problem at once, each named by its key path."""
    problems: list[str] = []
    fmt = tree.get("format", FORMAT_VERSION)
    if fmt != FORMAT_VERSION:
        raise SystemConfigError([f"format: version {fmt!r}, this dcrec reads version {FORMAT_VERSION}"], where)
    for key in tree:
        if key not in (*_SECTIONS, "format", "name"):
            problems.append(f"{key}: unknown key (known: {', '.join(['format', 'name', *_SECTIONS])})")
    name = tree.get("name", "system")
    if not isinstance(name, str) or not name:
        problems.append(f"name: must be a non-empty string, got {name!r}")
    built: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        values = tree.get(section, {})
        if not isinstance(values, Mapping):
            problems.append(f"{section}: must be a table, got {values!r}")
            continue
        hints = get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key not in known:
                problems.append(f"{section}.{key}: unknown key (known: {', '.join(sorted(known))})")
                continue
            problem = _type_problem(value, hints[key])
            if problem:
                problems.append(f"{section}.{key}: {problem}")
                continue
            kwargs[key] = float(value) if hints[key] is float else value
        if not any(p.startswith(f"{section}.") for p in problems):
            built[section] = cls(**kwargs)
    if problems:
        raise SystemConfigError(problems, where)
    system = System(name=name, **built)
    problems = system.problems()
    if problems:
        raise SystemConfigError(problems, where)
    return system


def parse_system(text: str, where: str = "system") -> System:
    """A :class:`System` from TOML text; SystemConfigError names the file (``where``) and each key."""
    try:
        tree = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SystemConfigError([f"not valid TOML ({e})"], where) from None
    return from_dict(tree, where)


def load_system(path: str | Path) -> System:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SystemConfigError([f"cannot read ({e.strerror or e})"], str(path)) from None
    except UnicodeDecodeError:
        raise SystemConfigError(["not UTF-8 text"], str(path)) from None
    return parse_system(text, str(path))


def resolve(path: str | Path | None = None, overrides: Iterable[str] = (),
            values: Mapping[str, Any] | None = None) -> System:
    """The system a command runs: the file (or the built-in system), then ``overrides`` by
    name, then single values (``{"device.alpha": 0.7}``)."""
    system = load_system(path) if path else System()
    system = system.override(*overrides)
    if values:
        system = system.with_values(values)
    return system


SYSTEM = System()  # the built-in system: what every default reads
