"""The CLI's contract with a shell: --version, one-line errors naming the flag, exit 1 vs 2, nested --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dcrec.shared.cli import main
from dcrec.shared.cliutil import duration

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real entry point in a fresh interpreter, as a shell would run it."""
    return subprocess.run([sys.executable, "-m", "dcrec.shared.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """argparse's refusal of ``argv``: asserts exit status 2 and returns the error line."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert "error: " in lines[-1]
    return lines[-1]


def test_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    out = run_cli("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"dcrec {version('dcrec')}"


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "1 a runtime error" in text and "2 a usage error" in text


def test_a_bad_ttl_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error(["cloud", "token", "--auth-secret", "x", "--device-id", "d", "--ttl", "30x"],
                       capsys)
    assert "argument --ttl" in line and "'30x'" in line
    assert "could not convert" not in line


def test_negative_epochs_are_refused_before_training(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "device"
    line = usage_error(["device", "train", "--out", str(out), "--epochs", "-1"], capsys)
    assert "argument --epochs" in line and "'-1'" in line
    assert not out.exists()  # nothing ran, so nothing claims to have been written


@pytest.mark.parametrize("argv, flag", [
    (["cloud", "serve", "--model-dir", "m", "--insecure", "--processes", "0"], "--processes"),
    (["cloud", "serve", "--model-dir", "m", "--insecure", "--ttl", "-5"], "--ttl"),
    (["cloud", "eval", "--model-dir", "m", "--count", "0"], "--count"),
    (["cloud", "bench-serving", "--model-dir", "m", "--levels", "1,x"], "--levels"),
    (["cloud", "neighbours", "--model-dir", "m", "--out", "o", "--neighbours", "0"], "--neighbours"),
    (["cloud", "train", "--out", "o", "--cloud-fraction", "1.5"], "--cloud-fraction"),
    (["cloud", "train", "--out", "o", "--option", "no-equals-sign"], "--option"),
    (["device", "train-reranker", "--out", "o", "--candidates", "1"], "--candidates"),
    (["device", "eval-rerank", "--model-dir", "m", "--alpha", "2"], "--alpha"),
    (["device", "bench-latency", "--calls", "0"], "--calls"),
    (["simulate", "--connect", "h:1", "--users", "0"], "--users"),
    (["simulate", "--connect", "h:1", "--threshold", "nan"], "--threshold"),
])
def test_bad_numbers_name_their_flag(argv: list[str], flag: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert f"argument {flag}:" in usage_error(argv, capsys)


def test_flags_that_need_each_other_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cloud", "keygen"]) == 2
    err = capsys.readouterr().err
    assert err == "dcrec: error: give --auth-secret FILE and/or --signing-dir DIR\n"


def test_a_runtime_error_is_one_line_and_exit_1(tmp_path: Path) -> None:
    empty = tmp_path / "cloud-registry"
    empty.mkdir()
    out = run_cli("cloud", "serve", "--cloud-registry", str(empty), "--insecure",
                  "--address", "127.0.0.1:0")
    assert out.returncode == 1, out.stderr
    assert out.stderr == f"dcrec: error: cloud registry {empty} has no live model\n"
    assert "Traceback" not in out.stderr


def test_a_missing_file_is_a_runtime_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-secret"
    assert main(["cloud", "token", "--auth-secret", str(missing), "--device-id", "d"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dcrec: error: ") and err.count("\n") == 1 and str(missing) in err


def test_nested_subcommands_have_their_own_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["cloud", "models", "promote", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dcrec cloud models promote")
    assert "--version VERSION" in out and "the version to make live" in out


def test_promote_requires_a_version(capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error(["cloud", "models", "promote", "--registry", "r"], capsys)
    assert "--version" in line


@pytest.mark.parametrize("text, seconds", [("3600", 3600.0), ("90s", 90.0), ("30m", 1800.0),
                                           ("12H", 43200.0), ("30d", 30 * 86400.0)])
def test_duration_units(text: str, seconds: float) -> None:
    assert duration(text) == seconds
