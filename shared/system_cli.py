"""``dcrec system show | check``: the system's settings (dcrec.shared.system), as TOML."""

from __future__ import annotations

import argparse
import sys

from dcrec.shared.cliutil import UsageError, area, key_value
from dcrec.shared.system import OVERRIDES, SystemConfigError, load_system, resolve


def values(pairs: list[str]) -> dict[str, object]:
    """``section.key=value`` pairs, each value read as TOML (a bare word is a string)."""
    import tomllib

    out: dict[str, object] = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:  # a value is TOML, as in the file: 0.7, true, "rbo"
            out[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = raw  # a bare word is a string
    return out


def cmd_show(ns: argparse.Namespace) -> int:
    try:
        system = resolve(ns.system, ns.override or (), values(ns.set))
    except SystemConfigError as e:
        raise UsageError(str(e)) from None
    sys.stdout.write(system.to_toml())
    return 0


def cmd_check(ns: argparse.Namespace) -> int:
    try:
        system = load_system(ns.file)
    except SystemConfigError as e:
        raise UsageError(str(e)) from None
    print(f"{ns.file}: a valid system ({system.name}: cloud {system.cloud.backend}, policy "
          f"{system.policy.name} at {system.policy.target_ratio:g} requests per event)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    system = area(sub, "system")
    q = system.add_parser("show", help="print the system (or a variant of it) as TOML")
    q.add_argument("--system", metavar="TOML", help="start from this file instead of the built-in system")
    q.add_argument("--override", action="append", metavar="NAME",
                   help=f"a named override, repeatable: {', '.join(OVERRIDES)}")
    q.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", type=key_value,
                   help="one value, as TOML (device.alpha=0.7, policy.name=\"random\")")
    q.set_defaults(fn=cmd_show)
    q = system.add_parser("check", help="validate a system file; every problem named by its key")
    q.add_argument("file")
    q.set_defaults(fn=cmd_check)
