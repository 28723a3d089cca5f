"""Run the operator HTTP app with uvicorn in a background thread of the server process.

The socket is bound before the thread starts, so port 0 works and the caller
knows the port at once; ``stop`` asks uvicorn to exit and waits for it.

TLS: with ``cert_file``/``key_file`` the port serves HTTPS; with ``client_ca_file``
too it is mutual TLS, as on the gRPC port: a client without a certificate from
that CA fails the handshake before any route (``/healthz`` included) answers.

Example::

    http = HttpServer(state, HttpConfig("127.0.0.1:0")).start()
    http.port        # the bound port
    http.stop()
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass

import uvicorn

from dcrec.cloud.serving.http.app import OpsState, create_app

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpConfig:
    address: str = "127.0.0.1:8080"  # host:port; port 0 picks a free one
    cert_file: str | None = None  # TLS for the operator surface (PEM); None = plaintext
    key_file: str | None = None
    client_ca_file: str | None = None  # set: mutual TLS, clients need a certificate from this CA
    start_timeout_s: float = 10.0
    stop_timeout_s: float = 5.0

    def validate(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both an HTTP TLS certificate and its key, or neither")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("mutual TLS on the HTTP port (a client CA) needs its certificate and key")


def _bind(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class HttpServer:
    def __init__(self, state: OpsState, config: HttpConfig) -> None:
        config.validate()
        self.config = config
        self.app = create_app(state)
        self.sock = _bind(config.address)
        self.port = int(self.sock.getsockname()[1])
        self._server = uvicorn.Server(uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="off",
            ssl_certfile=config.cert_file, ssl_keyfile=config.key_file,
            ssl_ca_certs=config.client_ca_file,
            ssl_cert_reqs=ssl.CERT_REQUIRED if config.client_ca_file else ssl.CERT_NONE,
            limit_concurrency=256,  # beyond this uvicorn answers 503 instead of queueing
            timeout_keep_alive=5))
        self._thread = threading.Thread(target=self._run, name="dcrec-http", daemon=True)

    def _run(self) -> None:
        self._server.run(sockets=[self.sock])

    def start(self) -> HttpServer:
        self._thread.start()
        deadline = time.monotonic() + self.config.start_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"operator HTTP server did not start on {self.config.address}")
            time.sleep(0.01)
        log.info("operator HTTP on port %d", self.port)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(self.config.stop_timeout_s)
        self.sock.close()
