"""Scenarios as TOML files: the data, the workload, the network, the faults, the checks.

A scenario is one file (``simulator/scenarios/NAME.toml`` ships ``steady``,
``cloud-outage``, ``flash-crowd`` and ``lossy-network``), parsed with
:mod:`tomllib` into typed, validated dataclasses; unknown keys are errors.
Every table is optional; defaults are the dataclasses' own. ``--set
section.key=value`` overrides a value from the command line.

Example file::

    name = "cloud-outage"
    policies = ["disagreement"]
    [workload]
    kind = "closed_loop"     # or "trace"
    devices = 1000
    duration_s = 300
    [[faults]]
    kind = "cloud_down"
    at_s = 120
    duration_s = 30
    [checks]
    max_recovery_ratio = 2.0

Example use::

    sc = load_scenario("cloud-outage", overrides=["workload.devices=200"])
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from dcrec.device.runtime import RuntimeConfig
from dcrec.simulator.faults import Fault
from dcrec.simulator.netem import LinkProfile
from dcrec.simulator.users import LatentUserConfig
from dcrec.simulator.workload import Surge

SCENARIO_DIR = Path(__file__).with_name("scenarios")
T = TypeVar("T")


class ScenarioError(ValueError):
    """A scenario file is missing, malformed or has an invalid value; the message names it."""


@dataclass(frozen=True)
class WorkloadSpec:
    kind: Literal["trace", "closed_loop"] = "trace"
    timing: Literal["auto", "real", "synthetic"] = "auto"  # auto: real when the data has timestamps
    mean_gap_s: float = 30.0  # synthetic timing: mean gap between a device's events
    time_scale: float = 1.0  # real timing: simulated seconds per recorded second
    max_users: int | None = None  # trace: replay only the first N users with a stream
    devices: int = 1000  # closed loop: simulated users, one device each
    duration_s: float | None = None  # stop generating events after this (closed loop: required)
    warmup_s: float = 0.0  # checks ignore the first seconds (devices coming online)

    def validate(self) -> None:
        if self.kind not in ("trace", "closed_loop"):
            raise ScenarioError(f"workload.kind must be trace or closed_loop, got {self.kind!r}")
        if self.timing not in ("auto", "real", "synthetic"):
            raise ScenarioError(f"workload.timing must be auto, real or synthetic, got {self.timing!r}")
        if self.kind == "closed_loop" and not self.duration_s:
            raise ScenarioError("a closed_loop workload needs workload.duration_s")


@dataclass(frozen=True)
class FleetSpec:
    clock: Literal["sim", "wall"] = "sim"
    speed: float = 1.0  # wall clock: simulated seconds per wall second
    concurrency: int = 1  # events in flight at once (raise with network latency)
    channels: int = 2  # TCP connections the fleet shares
    max_open: int = 5000  # device stores open at once (3 file descriptors each)
    bin_s: float = 5.0  # simulated seconds per metrics bin
    recovery_spread: bool = True
    deadline_s: float = 2.0  # per call, wall-clock
    store_dir: str = ""  # device SQLite files: "" = OUT/<policy>/devices, "tmpfs" = /dev/shm (deleted after)
    k: int = 10
    upload_telemetry: bool = False  # every device uploads its telemetry outbox at the end


@dataclass(frozen=True)
class Checks:
    """Pass/fail conditions printed after the run (and asserted by tests)."""

    max_lost_events: int | None = 0
    max_shown_empty: int | None = None  # events with nothing on screen (after devices came online)
    max_recovery_ratio: float | None = None  # peak request rate after a fault / steady rate before it
    min_events_per_s: float | None = None
    max_telemetry_pending: int | None = None  # with fleet.upload_telemetry: records not delivered


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str = ""
    seed: int = 0
    policies: tuple[str, ...] = ("disagreement",)
    threshold: float = 0.95
    dataset: str = "ml-100k"
    cloud_fraction: float = 0.8
    ttl_s: float = 86400.0  # lists the cloud hands out live this long (started servers only)
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    users: LatentUserConfig = field(default_factory=LatentUserConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    fleet: FleetSpec = field(default_factory=FleetSpec)
    network: LinkProfile | None = None
    faults: tuple[Fault, ...] = ()
    surges: tuple[Surge, ...] = ()
    checks: Checks = field(default_factory=Checks)
    source: str = ""  # the TOML text, for the report

    def validate(self) -> None:
        self.workload.validate()
        self.users.validate()
        try:
            self.runtime.validate()
            if self.network is not None:
                self.network.validate()
            for f in self.faults:
                f.validate()
            for s in self.surges:
                s.validate()
        except ValueError as e:
            raise ScenarioError(f"scenario {self.name}: {e}") from e
        for p in self.policies:
            if not isinstance(p, str) or not p:
                raise ScenarioError(f"scenario {self.name}: policies must be names, got {p!r}")
        if not 0.0 < self.cloud_fraction < 1.0:
            raise ScenarioError("cloud_fraction must be in (0, 1)")


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _build(cls: type[T], table: Any, where: str) -> T:
    """``cls(**table)`` with unknown keys refused and numbers and booleans checked."""
    if not isinstance(table, dict):
        raise ScenarioError(f"[{where}] must be a table, got {type(table).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ScenarioError(f"[{where}] unknown key(s) {unknown}; known: {sorted(fields)}")
    values = {}
    for k, v in table.items():
        f = fields[k]
        default = _default(f)
        kind = str(f.type)
        is_float = isinstance(default, float) or kind.startswith("float")
        is_bool = isinstance(default, bool) or kind == "bool"
        if is_bool and not isinstance(v, bool):
            raise ScenarioError(f"{where}.{k} must be true or false, got {v!r}")
        if is_float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if (is_float or (isinstance(default, int) and not is_bool)) and \
                (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ScenarioError(f"{where}.{k} must be a number, got {v!r}")
        if isinstance(default, tuple) and isinstance(v, list):
            v = tuple(v)
        values[k] = v
    try:
        return cls(**values)
    except TypeError as e:
        raise ScenarioError(f"[{where}] {e}") from e


def _set(raw: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ScenarioError(f"--set {override!r}: expected section.key=value")
    path, value = override.split("=", 1)
    try:
        parsed: Any = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # a bare word: a string
    keys = path.split(".")
    node: Any = raw
    for k in keys[:-1]:  # tables by name, arrays of tables by index: faults.0.at_s
        if isinstance(node, list) and k.isdigit() and int(k) < len(node):
            node = node[int(k)]
        elif isinstance(node, dict):
            node = node.setdefault(k, {})
        else:
            raise ScenarioError(f"--set {path}: no table at {k!r}")
    if not isinstance(node, dict):
        raise ScenarioError(f"--set {path}: {keys[-2] if len(keys) > 1 else path} is not a table")
    node[keys[-1]] = parsed


def resolve(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise ScenarioError(f"{p}: no such scenario file")
        return p
    q = SCENARIO_DIR / f"{name_or_path}.toml"
    if not q.is_file():
        known = ", ".join(sorted(x.stem for x in SCENARIO_DIR.glob("*.toml")))
        raise ScenarioError(f"unknown scenario {name_or_path!r}; built in: {known}; or give a .toml path")
    return q


def load_scenario(name_or_path: str, overrides: list[str] | None = None) -> Scenario:
    path = resolve(name_or_path)
    text = path.read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: {e}") from e
    for o in overrides or []:
        _set(raw, o)
    return parse_scenario(raw, path.stem, text + ("".join(f"\n# --set {o}" for o in overrides or [])))


def parse_scenario(raw: dict[str, Any], default_name: str = "scenario", source: str = "") -> Scenario:
    raw = dict(raw)
    top = {k: raw.pop(k) for k in list(raw) if not isinstance(raw[k], (dict, list)) or k == "policies"}
    tables = {
        "workload": WorkloadSpec, "users": LatentUserConfig, "runtime": RuntimeConfig,
        "fleet": FleetSpec, "network": LinkProfile, "checks": Checks,
    }
    kwargs: dict[str, Any] = {}
    for key, cls in tables.items():
        if key in raw:
            kwargs[key] = _build(cls, raw.pop(key), key)
    kwargs["faults"] = tuple(_build(Fault, f, "faults") for f in raw.pop("faults", []))
    kwargs["surges"] = tuple(_build(Surge, s, "surges") for s in raw.pop("surges", []))
    if raw:
        raise ScenarioError(f"unknown table(s) {sorted(raw)}")
    top.setdefault("name", default_name)
    sc = _build(Scenario, top, "scenario")
    sc = dataclasses.replace(sc, **kwargs, source=source)
    sc.validate()
    return sc


def describe(sc: Scenario) -> str:
    """One line per part, for logs and the report."""
    d = dataclasses.asdict(sc)
    d.pop("source")
    return json.dumps(d, indent=1, default=str)
