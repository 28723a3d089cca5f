"""Style rules that matter are checked here, not remembered."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff not installed")
    out = subprocess.run([ruff, "check", "cloud", "device", "shared", "simulator", "tests"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_only_adapters_import_generated_stubs() -> None:
    # The adapters: converters, servicer, device client, and the load generator (a test client).
    allowed = {"shared/convert.py", "cloud/serving/server.py", "device/client.py", "shared/protogen.py",
               "cloud/load/loadgen.py"}
    offenders = []
    for path in REPO.glob("*/**/*.py"):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(("shared/proto/", "tests/", ".venv/")) or rel in allowed:
            continue
        if "_pb2" in path.read_text():
            offenders.append(rel)
    assert not offenders, f"only adapter modules may import generated stubs: {offenders}"


def test_device_modules_never_import_torch() -> None:
    # Training, export and the torch latency bench are the cloud's (cloud/training/).
    offenders = [p.relative_to(REPO).as_posix() for p in (REPO / "device").rglob("*.py")
                 if "import torch" in p.read_text()]
    assert not offenders


def test_library_code_does_not_print() -> None:
    # Output is the command line's: cli.py modules, the CLI helpers, the demo command, and
    # the main() of modules that are also scripts. Library code returns, logs or takes a callback.
    import ast

    allowed_files = {"shared/cliutil.py", "simulator/demo.py", "shared/system_cli.py"}
    offenders = []
    for pkg in ("cloud", "device", "shared", "simulator"):
        for path in (REPO / pkg).rglob("*.py"):
            rel = path.relative_to(REPO).as_posix()
            if path.name == "cli.py" or rel in allowed_files or rel.startswith("shared/proto/"):
                continue
            tree = ast.parse(path.read_text())
            for fn in ast.walk(tree):
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or fn.name == "main":
                    continue
                for node in ast.walk(fn):
                    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                        offenders.append(f"{rel}:{node.lineno} in {fn.name}()")
    assert sorted(set(offenders)) == []
