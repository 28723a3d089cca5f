"""README.md's Python blocks run as written, in an environment holding only the device install.

A block is run against a real cloud server on loopback (the address the README gives is
replaced by the server's); a block preceded by ``<!-- readme: imports-only ... -->`` needs a
production server, so it is compiled and every name it imports is resolved instead.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_ADDRESS = "127.0.0.1:50051"
_BLOCK = re.compile(r"(<!-- readme: imports-only[^>]*-->\s*\n)?```python\n(.*?)```", re.S)


def blocks() -> list[tuple[bool, str]]:
    """(imports only, code) for each Python block of README.md."""
    return [(bool(m.group(1)), m.group(2)) for m in _BLOCK.finditer((REPO / "README.md").read_text())]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def test_the_readme_has_a_runnable_block_and_a_production_block() -> None:
    kinds = [only for only, _ in blocks()]
    assert False in kinds and True in kinds
    runnable = next(code for only, code in blocks() if not only)
    assert README_ADDRESS in runnable and 'device_id="device-123"' in runnable


@pytest.fixture(scope="module")
def server(cloud_model_dir: Path, registry_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    ready = tmp_path_factory.mktemp("readme-server") / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dcrec.shared.cli", "cloud", "serve", "--model-dir", str(cloud_model_dir),
         "--registry", str(registry_dir), "--address", "127.0.0.1:0", "--ready-file", str(ready),
         "--insecure"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "server not ready"
        time.sleep(0.05)
    yield f"127.0.0.1:{int(ready.read_text())}"
    proc.terminate()
    proc.wait(30)


@pytest.mark.timeout(300)
def test_runnable_blocks_run_in_the_device_install(device_venv: Path, server: str,
                                                   tmp_path: Path) -> None:
    for n, (only, code) in enumerate(blocks()):
        if only:
            continue
        script = code.replace(README_ADDRESS, server) + (
            "\nassert rec.items.size > 0, 'the README example showed an empty list'\n"
            "print('README-OK', rec.items.tolist())\n")
        out = subprocess.run([str(device_venv), "-c", script], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path, env=_env())
        assert out.returncode == 0, f"README block {n}:\n{out.stderr[-3000:]}"
        assert "README-OK [" in out.stdout
        assert (tmp_path / "app-data" / "events.sqlite").is_file()  # the event was stored


def test_imports_only_blocks_compile_and_resolve(device_venv: Path, tmp_path: Path) -> None:
    for n, (only, code) in enumerate(blocks()):
        if not only:
            continue
        tree = ast.parse(code)  # a syntax error fails here
        names = [(node.module, alias.name) for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) for alias in node.names]
        modules = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                   for alias in node.names]
        assert names, f"README block {n} imports nothing from dcrec"
        check = "import importlib\n" + "".join(
            f"importlib.import_module({m!r})\n" for m in modules) + "".join(
            f"getattr(importlib.import_module({m!r}), {a!r})\n" for m, a in names)
        out = subprocess.run([str(device_venv), "-c", check], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path, env=_env())
        assert out.returncode == 0, f"README block {n}:\n{out.stderr[-3000:]}"
