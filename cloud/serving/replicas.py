"""Several server processes on one port: ``dcrec cloud serve --processes N``.

Python handles one request's protobuf work at a time per process (the GIL);
N processes with ``SO_REUSEPORT`` listening on the same port let the kernel
spread connections across them, so a machine's cores all serve. Each process
is a full, stateless replica: its own model copy, batcher, limits and
telemetry.

The parent reserves the port first (a bound, never listening socket with
``SO_REUSEPORT``: port 0 becomes one concrete port all children share),
spawns the children, waits until every one has written its ready file, then
releases the reservation and writes its own ready file. SIGTERM or SIGINT is
forwarded to every child, which drains as a single server does. If a child
dies on its own, the parent stops the others and exits 1, so a service
manager restarts the whole set rather than running short-handed unnoticed.

Example::

    replicas = Replicas(child_ns, processes=4, address="0.0.0.0:50051")
    port = replicas.start()
    replicas.wait()     # until SIGTERM, or until a child dies
"""

from __future__ import annotations

import argparse
import copy
import logging
import multiprocessing as mp
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from dcrec.shared.fileio import write_atomic

log = logging.getLogger(__name__)

START_TIMEOUT_S = 180.0  # model loading in N processes at once on a busy machine


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r}: expected host:port")
    return host.strip("[]"), int(port)


def reserve_port(address: str) -> tuple[socket.socket, int]:
    """Bind (not listen) a ``SO_REUSEPORT`` socket on ``address``; returns it and its port."""
    host, port = split_address(address)
    family, kind, proto, _, sockaddr = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(sockaddr)
    return sock, int(sock.getsockname()[1])


def _child_main(ns: argparse.Namespace, log_level: int) -> None:
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ns.fn(ns)  # cloud serve with processes=1: drains on SIGTERM like a single server


class Replicas:
    """N ``cloud serve`` children sharing one port; ``serve_ns`` is the parsed serve command."""

    def __init__(self, serve_ns: argparse.Namespace, processes: int, address: str,
                 ready_file: str | None = None, http_address: str | None = None,
                 http_ready_file: str | None = None) -> None:
        if processes < 1:
            raise ValueError(f"--processes must be >= 1, got {processes}")
        self.serve_ns = serve_ns
        self.processes = processes
        self.address = address
        self.ready_file = ready_file
        self.http_address = http_address
        self.http_ready_file = http_ready_file
        self.children: list[Any] = []
        self.port = 0
        self.http_ports: list[int] = []
        self._stopping = threading.Event()
        self._tmp = Path(tempfile.mkdtemp(prefix="dcrec-replicas-"))

    def _child_ns(self, i: int, address: str) -> argparse.Namespace:
        ns = copy.copy(self.serve_ns)
        ns.processes = 1
        ns.address = address
        ns.ready_file = str(self._tmp / f"ready.{i}")
        if self.http_address:
            host, port = split_address(self.http_address)
            ns.http_address = f"{host}:{port + i if port else 0}"  # replica i: operator port P+i
            ns.http_ready_file = str(self._tmp / f"http.{i}")
        return ns

    def start(self) -> int:
        """Spawn the children; return the shared port once all serve."""
        reservation, self.port = reserve_port(self.address)
        host, _ = split_address(self.address)
        bound = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        ctx = mp.get_context("spawn")  # never fork a process that may hold gRPC or torch threads
        level = logging.getLogger().getEffectiveLevel()
        try:
            for i in range(self.processes):
                p = ctx.Process(target=_child_main, args=(self._child_ns(i, bound), level),
                                name=f"dcrec-serve-{i}", daemon=False)
                p.start()
                self.children.append(p)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        finally:
            reservation.close()  # the children hold the port now
        if self.http_address:
            self.http_ports = [int((self._tmp / f"http.{i}").read_text())
                               for i in range(self.processes)]
        _write_atomic(self.ready_file, str(self.port))
        if self.http_ports:
            _write_atomic(self.http_ready_file, str(self.http_ports[0]))
        return self.port

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        want = [self._tmp / f"ready.{i}" for i in range(self.processes)]
        if self.http_address:
            want += [self._tmp / f"http.{i}" for i in range(self.processes)]
        while not all(f.exists() for f in want):
            dead = [p.name for p in self.children if not p.is_alive()]
            if dead:
                raise RuntimeError(f"server process {dead[0]} exited during start-up")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server processes not ready after {START_TIMEOUT_S:.0f}s")
            time.sleep(0.05)

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM every child (they drain), then kill any still running after ``grace_s``."""
        self._stopping.set()
        for p in self.children:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + grace_s
        for p in self.children:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                log.warning("%s did not stop within %.0fs; killing it", p.name, grace_s)
                p.kill()
                p.join(5.0)

    def wait(self, grace_s: float = 15.0) -> int:
        """Run until SIGTERM/SIGINT (exit 0) or until a child dies on its own (exit 1)."""

        def _on_signal(signum: int, _frame: object) -> None:
            log.info("signal %d: stopping %d server processes", signum, len(self.children))
            self._stopping.set()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        code = 0
        while not self._stopping.wait(0.5):
            dead = [p for p in self.children if not p.is_alive()]
            if dead:
                log.error("%s exited with %s; stopping the others", dead[0].name, dead[0].exitcode)
                code = 1
                break
        self.stop(grace_s)
        return code


def _write_atomic(path: str | None, text: str) -> None:
    if path:  # a waiting parent process never reads half a number
        write_atomic(path, text)
