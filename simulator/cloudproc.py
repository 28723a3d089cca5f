"""Run the cloud server as a child process on loopback (the simulator's and tests' real server)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


class CloudProcess:
    """``dcrec cloud serve`` in a subprocess bound to a free port; stop() sends SIGTERM."""

    def __init__(self, model_dir: Path, registry: Path | None = None, ttl: float = 86400.0,
                 startup_timeout_s: float = 60.0, extra_args: list[str] | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.registry = registry
        self.ttl = ttl
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> CloudProcess:
        fd, ready = tempfile.mkstemp(prefix="dcrec-port-")
        os.close(fd)
        os.unlink(ready)
        cmd = [sys.executable, "-m", "dcrec.shared.cli", "cloud", "serve", "--model-dir", str(self.model_dir),
               "--address", f"127.0.0.1:{port}", "--ready-file", ready, "--ttl", str(self.ttl),
               "--insecure", *self.extra_args]
        if self.registry:
            cmd += ["--registry", str(self.registry)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout_s
        while not os.path.exists(ready):
            if self.proc.poll() is not None:
                raise RuntimeError(f"cloud server exited with code {self.proc.returncode} on start")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"cloud server not ready within {self.startup_timeout_s}s")
            time.sleep(0.05)
        self.port = int(Path(ready).read_text())
        os.unlink(ready)
        log.info("cloud server pid %d on %s", self.proc.pid, self.address)
        return self

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """Graceful stop (SIGTERM); kills after ``timeout_s``. Returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode

    def kill(self) -> None:
        """Hard kill (SIGKILL), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> CloudProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
