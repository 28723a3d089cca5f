"""The ``dcrec`` command line. Each area registers its own subcommands.

Heavy imports (torch, the server) happen inside each command, so ``dcrec
--help`` is instant and a device-only install can still run what it has.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules exposing register(subparsers); one line per area.
AREAS = ["cloud.cli", "device.cli", "simulator.cli", "simulator.bench.cli"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcrec", description="Device-cloud collaborative recommendation.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)
    for name in AREAS:
        importlib.import_module(name).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(ns.fn(ns) or 0)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        print(f"dcrec: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
