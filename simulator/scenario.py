"""Scenarios as TOML files: the data, the workload, the network, the faults, the checks.

A scenario is one file (``simulator/scenarios/NAME.toml`` ships ``steady``,
``cloud-outage``, ``flash-crowd`` and ``lossy-network``), parsed with
:mod:`tomllib` and ``--set section.key=value`` overrides applied, then
validated as a whole with pydantic models made from the dataclasses below
(their fields, types and defaults, plus the value limits in ``_LIMITS``):
every bad value, unknown key and contradiction between settings (e.g. a
warm-up that ends after a fault the recovery check measures) is reported at
once, each named by its key path (``workload.max_users``, ``faults.0.at_s``),
in one :class:`ScenarioError`. Valid values then build the dataclasses the
rest of the simulator uses. Every table is optional; defaults are the
dataclasses' own.

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

import copy
import dataclasses
import functools
import json
import math
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_core import ErrorDetails

from dcrec.device.policy import POLICY_CHOICES
from dcrec.device.runtime import RuntimeConfig
from dcrec.shared.system import SYSTEM
from dcrec.simulator.faults import Fault
from dcrec.simulator.netem import LinkProfile
from dcrec.simulator.users import LatentUserConfig
from dcrec.simulator.workload import Surge

SCENARIO_DIR = Path(__file__).with_name("scenarios")


class ScenarioError(ValueError):
    """A scenario file is missing, malformed or has invalid values; the message names each.

    ``problems`` holds one line per bad setting (key path first) when validation found them.
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


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
    policies: tuple[str, ...] = ("system",)  # "system": the system's policy (dcrec.shared.system)
    threshold: float = SYSTEM.policy.threshold  # disagreement's fixed threshold, budgeted's prior
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
    # The [runtime] keys the scenario itself sets (file or --set): they override the device
    # settings of the system the release carries; every other setting is the release's.
    runtime_keys: tuple[str, ...] = ()

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


# The tables of a scenario file and the dataclass each one builds; [[faults]] and [[surges]]
# are arrays of tables. Everything else at the top level is a field of Scenario.
_TABLES: dict[str, type] = {
    "workload": WorkloadSpec, "users": LatentUserConfig, "runtime": RuntimeConfig,
    "fleet": FleetSpec, "network": LinkProfile, "checks": Checks,
}
_ARRAYS: dict[str, type] = {"faults": Fault, "surges": Surge}
_SECTIONS: dict[str, type] = {"": Scenario, **_TABLES, **_ARRAYS}  # "": the top level

# Value limits (pydantic Field keywords) per section and key; types and defaults come from
# the dataclasses themselves. The dataclasses' own validate() still runs afterwards.
_LIMITS: dict[str, dict[str, dict[str, Any]]] = {
    "": {"name": {"min_length": 1}, "seed": {"ge": 0}, "policies": {"min_length": 1},
         "threshold": {"ge": 0.0, "le": 1.0}, "cloud_fraction": {"gt": 0.0, "lt": 1.0},
         "ttl_s": {"gt": 0.0}},
    "workload": {"mean_gap_s": {"gt": 0.0}, "time_scale": {"gt": 0.0}, "max_users": {"ge": 1},
                 "devices": {"ge": 1}, "duration_s": {"gt": 0.0}, "warmup_s": {"ge": 0.0}},
    "users": {"dim": {"ge": 2}, "init_noise": {"ge": 0.0}, "examine": {"ge": 0.0, "le": 1.0},
              "drift_per_hour": {"ge": 0.0}, "event_gap_s": {"gt": 0.0},
              "session_gap_s": {"gt": 0.0}, "continue_p": {"ge": 0.0, "le": 1.0},
              "continue_click_p": {"ge": 0.0, "le": 1.0}},
    "runtime": {"candidates": {"ge": 1}, "show": {"ge": 1}, "history_window": {"ge": 1},
                "alpha": {"ge": 0.0, "le": 1.0}, "persist_every": {"ge": 1},
                "regret_temperature": {"gt": 0.0}, "device_candidates": {"ge": 0},
                "neighbour_weight": {"ge": 0.0, "le": 1.0}, "neighbour_recent": {"ge": 1},
                "neighbour_decay": {"gt": 0.0, "le": 1.0}},
    "fleet": {"speed": {"gt": 0.0}, "concurrency": {"ge": 1}, "channels": {"ge": 1},
              "max_open": {"ge": 1}, "bin_s": {"gt": 0.0}, "deadline_s": {"gt": 0.0}, "k": {"ge": 1}},
    "network": {"latency_ms": {"ge": 0.0}, "jitter": {"ge": 0.0}, "loss": {"ge": 0.0, "lt": 1.0},
                "retransmit_ms": {"ge": 0.0}, "reset": {"ge": 0.0, "lt": 1.0},
                "bandwidth_kbps": {"ge": 0.0}},
    "checks": {"max_lost_events": {"ge": 0}, "max_shown_empty": {"ge": 0},
               "max_recovery_ratio": {"gt": 0.0}, "min_events_per_s": {"ge": 0.0},
               "max_telemetry_pending": {"ge": 0}},
    "faults": {"at_s": {"ge": 0.0}, "duration_s": {"gt": 0.0}},
    "surges": {"at_s": {"ge": 0.0}, "duration_s": {"gt": 0.0}, "rate_multiplier": {"gt": 0.0},
               "join_fraction": {"ge": 0.0, "le": 1.0}, "join_ramp_s": {"ge": 0.0}},
}
# Types narrower than the dataclass's annotation: policy names the device knows.
_TYPES: dict[tuple[str, str], Any] = {("", "policies"): tuple[Literal[POLICY_CHOICES], ...]}  # type: ignore[valid-type]

# Strict: TOML (and --set, parsed as TOML) gives real types, so "5" is not a number and
# 1 is not true; an int is still a float. nan and inf are refused.
_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
_WORDS = {  # pydantic error types in a scenario's words
    "int_type": "must be an integer", "float_type": "must be a number",
    "bool_type": "must be true or false", "string_type": "must be a string",
    "tuple_type": "must be an array", "list_type": "must be an array",
    "finite_number": "must be a finite number",
}


def _limited(tp: Any, limits: dict[str, Any]) -> Any:
    """``tp`` with pydantic constraints; on ``X | None`` they bind to ``X`` (TOML has no null)."""
    if not limits:
        return tp
    args = get_args(tp)
    if len(args) == 2 and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        return Annotated[inner, Field(**limits)] | None
    return Annotated[tp, Field(**limits)]


@functools.cache
def _model(section: str) -> type[BaseModel]:
    """The pydantic model of one section, made from its dataclass's fields, types and defaults."""
    cls = _SECTIONS[section]
    hints = get_type_hints(cls)
    limits = _LIMITS.get(section, {})
    skip = {*_TABLES, *_ARRAYS, "source"} if section == "" else set()
    names = {f.name for f in dataclasses.fields(cls)} - skip
    if set(limits) - names:
        raise AssertionError(f"_LIMITS[{section!r}] names no field: {sorted(set(limits) - names)}")
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in names:
            continue
        tp = _TYPES.get((section, f.name), hints[f.name])
        default: Any = ...  # required
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        # A TOML array is a list; the dataclass holds a tuple (the one lax conversion).
        lax = get_origin(tp) is tuple
        fields[f.name] = (_limited(tp, limits.get(f.name, {})),
                          Field(default, strict=False if lax else None))
    return create_model(f"{cls.__name__}Settings", __config__=_STRICT, **fields)


def _known(section: str) -> list[str]:
    known = list(_model(section).model_fields)
    return sorted(known + (list(_TABLES) + list(_ARRAYS) if section == "" else []))


def _problem(e: ErrorDetails, section: str, prefix: tuple[str | int, ...]) -> str:
    """One pydantic error as ``key.path: what is wrong, got VALUE``."""
    path = ".".join(str(p) for p in (*prefix, *e["loc"]))
    if e["type"] == "extra_forbidden":
        return f"{path}: unknown key (known: {', '.join(_known(section))})"
    if e["type"] == "missing":
        return f"{path}: required"
    if e["type"] in ("too_short", "string_too_short"):
        return f"{path}: must not be empty, got {e.get('input')!r}"
    words = _WORDS.get(e["type"]) or e["msg"].replace("Input should be", "must be")
    return f"{path}: {words}, got {e.get('input')!r}"


def _validate(section: str, table: Any, prefix: tuple[str | int, ...],
              problems: list[str]) -> BaseModel | None:
    """``table`` validated as ``section``; None (and its problems noted) when it is not valid."""
    if not isinstance(table, dict):
        where = ".".join(str(p) for p in prefix)
        what = f"[[{section}]]" if section in _ARRAYS else f"[{section}]"
        problems.append(f"{where}: must be a table ({what}), got {table!r}")
        return None
    try:
        return _model(section).model_validate(table)
    except ValidationError as err:
        errors = err.errors()
        # An array whose items failed also fails its length limit: name the items only.
        bad_items = {e["loc"][:-1] for e in errors if len(e["loc"]) > 1}
        problems += [_problem(e, section, prefix) for e in errors
                     if not (e["type"] == "too_short" and e["loc"] in bad_items)]
        return None


Parts = dict[str, Any]  # section -> its validated model, or a list of them; None: invalid


def _validate_parts(raw: dict[str, Any]) -> tuple[Parts, list[str]]:
    """Every section of ``raw`` validated on its own, so that every problem is found at once."""
    problems: list[str] = []
    parts: Parts = {}
    top = {k: v for k, v in raw.items() if k not in _TABLES and k not in _ARRAYS}
    parts[""] = _validate("", top, (), problems)
    for key in _TABLES:
        if key in raw:
            parts[key] = _validate(key, raw[key], (key,), problems)
    for key in _ARRAYS:
        items = raw.get(key, [])
        if not isinstance(items, list):
            problems.append(f"{key}: must be an array of tables ([[{key}]]), got {items!r}")
            parts[key] = None
        else:
            parts[key] = [_validate(key, t, (key, i), problems) for i, t in enumerate(items)]
    return parts, problems


def _section(parts: Parts, key: str) -> Any:
    """A table's validated settings, its defaults when absent, None when it is invalid."""
    return parts[key] if key in parts else _model(key)()


def _steady_window(i: int, at_s: float, warmup_s: float, bin_s: float) -> str | None:
    """Why checks.max_recovery_ratio could not measure the steady rate before fault ``i``, if so.

    The steady rate is the mean over whole metrics bins (aligned on t = 0) that start after
    the warm-up and end before the fault (simulator/metrics.py ``recovery_peak``).
    """
    fault = f"faults.{i}.at_s = {at_s:g}"
    if warmup_s >= at_s:
        return (f"workload.warmup_s = {warmup_s:g} must end before the first fault, {fault}: "
                "checks.max_recovery_ratio divides the request peak after a fault by the steady "
                "rate between the warm-up and the fault")
    if math.ceil(warmup_s / bin_s) * bin_s + bin_s > at_s:
        return (f"no whole fleet.bin_s = {bin_s:g} bin between workload.warmup_s = {warmup_s:g} "
                f"and {fault}: checks.max_recovery_ratio needs one to measure the steady request "
                "rate (shorten bin_s or the warm-up, or move the fault later)")
    return None


def _cross_checks(parts: Parts) -> list[str]:
    """Settings that contradict each other (only among sections that are valid on their own)."""
    problems: list[str] = []
    w, fleet, rt, checks = (_section(parts, k) for k in ("workload", "fleet", "runtime", "checks"))
    if w is not None and w.kind == "closed_loop" and w.duration_s is None:
        problems.append('workload.duration_s: required with workload.kind = "closed_loop" '
                        "(when the simulated users stop)")
    if fleet is not None and rt is not None and fleet.k > rt.show:
        problems.append(f"fleet.k = {fleet.k} must be <= runtime.show = {rt.show} "
                        "(HR@k is measured on the items on screen)")
    faults = parts.get("faults") or []
    if w is None or fleet is None or checks is None or checks.max_recovery_ratio is None:
        return problems
    for i, f in enumerate(faults):
        if f is None:
            continue
        if (p := _steady_window(i, f.at_s, w.warmup_s, fleet.bin_s)) is not None:
            problems.append(p)
        end = f.at_s + f.duration_s
        if w.duration_s is not None and math.ceil(end / fleet.bin_s) * fleet.bin_s >= w.duration_s:
            problems.append(f"faults.{i} ends at {end:g} s, with no whole fleet.bin_s = "
                            f"{fleet.bin_s:g} bin after it before workload.duration_s = "
                            f"{w.duration_s:g}: checks.max_recovery_ratio measures the request "
                            "peak after the fault")
    return problems


def _settings(m: BaseModel) -> dict[str, Any]:
    """The keys the file gave (unset ones keep the dataclass's default)."""
    return m.model_dump(exclude_unset=True)


def _set(raw: dict[str, Any], override: str) -> str:
    """Apply one ``section.key=value`` override to a raw scenario; returns the key path."""
    if "=" not in override:
        raise ScenarioError(f"--set {override!r}: expected section.key=value")
    path, value = override.split("=", 1)
    path = path.strip()
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
    return path


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


def users_key(raw: dict[str, Any]) -> str:
    """The setting that counts a scenario's users: replayed users of a trace, simulated ones of a closed loop."""
    workload = raw.get("workload")
    kind = workload.get("kind", WorkloadSpec.kind) if isinstance(workload, dict) else WorkloadSpec.kind
    return "workload.devices" if kind == "closed_loop" else "workload.max_users"


def _lookup(raw: dict[str, Any], path: str) -> Any:
    """The value at ``path`` (``faults.0.at_s``) in a raw scenario, or ``_ABSENT``."""
    node: Any = raw
    for k in path.split("."):
        if isinstance(node, list) and k.isdigit() and int(k) < len(node):
            node = node[int(k)]
        elif isinstance(node, dict) and k in node:
            node = node[k]
        else:
            return _ABSENT
    return node


_ABSENT = object()


def _as_run(description: str, file_raw: dict[str, Any], raw: dict[str, Any],
            changed: list[tuple[str, str]]) -> str:
    """The file's description with what the command line changed: ``key = new (--set; file: old)``."""
    if not changed:
        return description
    notes = []
    for path, flag in changed:
        old = _lookup(file_raw, path)
        was = "not in the file" if old is _ABSENT else f"file: {json.dumps(old, default=str)}"
        notes.append(f"{path} = {json.dumps(_lookup(raw, path), default=str)} ({flag}; {was})")
    return f"{description} [as run: {'; '.join(notes)}]".strip()


def load_scenario(name_or_path: str, overrides: list[str] | None = None,
                  users: int | None = None) -> Scenario:
    """The scenario file with ``--set`` overrides applied, validated as a whole.

    ``users`` (``--users N``) overrides the user count: ``workload.devices`` of a closed
    loop, ``workload.max_users`` of a trace (after the overrides, so a ``--set
    workload.kind`` counts); also giving that key with ``--set`` is an error. The
    description names every value the command line changed, beside the file's.
    """
    path = resolve(name_or_path)
    text = path.read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: {e}") from e
    file_raw = copy.deepcopy(raw)
    changed: list[tuple[str, str]] = []
    notes = []
    for o in overrides or []:
        changed.append((_set(raw, o), "--set"))
        notes.append(f"# --set {o}")
    if users is not None:
        key = users_key(raw)
        if any(k == key for k, _ in changed):
            raise ScenarioError(f"--users {users} and --set {key}=... both set the user count of "
                                f"{path.stem}; give one")
        _set(raw, f"{key}={users}")
        changed.append((key, "--users"))
        notes.append(f"# --users {users}: {key} = {users}")
    if "description" not in {k for k, _ in changed}:
        raw["description"] = _as_run(str(raw.get("description", "")), file_raw, raw, changed)
    return parse_scenario(raw, path.stem, text + "".join(f"\n{n}" for n in notes))


def parse_scenario(raw: dict[str, Any], default_name: str = "scenario", source: str = "") -> Scenario:
    """A :class:`Scenario` from a parsed TOML table; every problem in it raised in one ScenarioError."""
    raw = {"name": default_name, **raw}
    parts, problems = _validate_parts(raw)
    problems += _cross_checks(parts)
    name = raw["name"] if isinstance(raw["name"], str) and raw["name"] else default_name
    if problems:
        head = f"scenario {name}: {len(problems)} invalid setting{'s' if len(problems) > 1 else ''}"
        raise ScenarioError(head + "".join(f"\n  {p}" for p in problems), problems)
    tables = {key: cls(**_settings(parts[key])) for key, cls in _TABLES.items() if key in parts}
    arrays = {key: tuple(cls(**_settings(m)) for m in parts[key]) for key, cls in _ARRAYS.items()}
    given = raw.get("runtime", {})
    sc = Scenario(**_settings(parts[""]), **tables, **arrays, source=source,
                  runtime_keys=tuple(sorted(given)) if isinstance(given, dict) else ())
    sc.validate()  # the dataclasses' own checks, for anything the limits above do not cover
    return sc


def describe(sc: Scenario) -> str:
    """One line per part, for logs and the report."""
    d = dataclasses.asdict(sc)
    d.pop("source")
    d.pop("runtime_keys")
    return json.dumps(d, indent=1, default=str)
