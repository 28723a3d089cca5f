"""The ``dcrec`` command line. Each area registers its own subcommands.

Heavy imports (torch, the server) happen inside each command, so ``dcrec
--help`` is instant and a device-only install can still run what it has.

Exit status: 0 success, 1 a runtime failure (a file that cannot be read, a
refused registry operation, no live model), 2 a usage error (argparse's
convention: a bad command line or flag value; nothing was run). Either error
is one ``dcrec: error: ...`` line on stderr, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from importlib import metadata

from dcrec.shared.cliutil import EXIT_RUNTIME, EXIT_USAGE, UsageError
from dcrec.shared.errors import DeviceDataError

# Modules exposing register(subparsers); one line per area.
AREAS = ["dcrec.cloud.cli", "dcrec.cloud.training.cli", "dcrec.device.cli", "dcrec.simulator.cli",
         "dcrec.simulator.bench.cli", "dcrec.shared.system_cli"]

# What a command raises for a failure of the world rather than of the code: bad or missing files
# (OSError covers ConnectionError too), refused releases and registries (ValueError subclasses),
# damaged device data. Anything else is a bug and keeps its traceback.
RUNTIME_ERRORS = (ValueError, OSError, DeviceDataError)

# The import names of the optional dependencies, with the distribution and the extra that
# bring each (pyproject.toml; tests/test_packaging.py keeps the two in step). A command that
# needs one in an install without it ends in a hint naming the extra, not a traceback.
EXTRAS = {
    "torch": ("torch", "cloud"), "onnx": ("onnx", "cloud"), "fastapi": ("fastapi", "cloud"),
    "fastapi_offline": ("fastapi-offline", "cloud"), "uvicorn": ("uvicorn", "cloud"),
    "prometheus_client": ("prometheus-client", "cloud"), "matplotlib": ("matplotlib", "cloud"),
    "grpc_reflection": ("grpcio-reflection", "cloud"), "pydantic": ("pydantic", "cloud"),
    "transformers": ("transformers", "llm"), "gguf": ("gguf", "llm"),
    "accelerate": ("accelerate", "llm"), "ray": ("ray", "fleet"),
}


def missing_extra_hint(e: ModuleNotFoundError) -> str | None:
    """``needs torch: pip install 'dcrec[cloud]'`` when ``e`` is a missing optional dependency."""
    top = (e.name or "").split(".")[0]
    if top not in EXTRAS:
        return None
    dist, extra = EXTRAS[top]
    return (f"this command needs {dist}, which this install lacks; it comes with the '{extra}' "
            f"extra: pip install 'dcrec[{extra}]'")


EPILOG = (f"exit status: 0 success, {EXIT_RUNTIME} a runtime error (e.g. a file that cannot be read, "
          f"a refused registry operation), {EXIT_USAGE} a usage error (a bad command line or flag "
          "value; nothing was run).")


def version() -> str:
    """The installed distribution's version, or ``unknown`` when run from a bare checkout."""
    try:
        return metadata.version("dcrec")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcrec", description="Device-cloud collaborative recommendation.",
                                epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"dcrec {version()}")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)
    for name in AREAS:
        importlib.import_module(name).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (argparse itself exits 2 on a bad command line)."""
    ns = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(ns.fn(ns) or 0)
    except UsageError as e:  # before RUNTIME_ERRORS: it is a ValueError too
        print(f"dcrec: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except RUNTIME_ERRORS as e:
        print(f"dcrec: error: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    except ModuleNotFoundError as e:
        hint = missing_extra_hint(e)
        if hint is None:
            raise
        print(f"dcrec: error: {hint}", file=sys.stderr)
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
