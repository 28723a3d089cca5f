"""``dcrec simulate --connect`` against a production-configured server: mutual TLS and device tokens.

The server is a real ``dcrec cloud serve`` child with TLS, a client CA and an
auth secret; its certificates come from the recipe in docs/OPERATIONS.md (run
with openssl), with the server's certificate made for ``localhost`` only, so a
wrong name fails as it would in production. A cloud that cannot be reached or
refuses the simulator must be named as such, never as "no device model".
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dcrec.cloud.models.backends import load_generator
from dcrec.cloud.serving.auth import TokenAuthority, write_secret
from dcrec.cloud.serving.server import ServerConfig, TlsConfig, build_server
from dcrec.cloud.serving.service import CandidateService
from dcrec.device.client import ClientTls
from dcrec.shared.cli import main
from dcrec.simulator.fleet_run import fetch_reranker, run_fleet
from dcrec.simulator.metering import CloudAccess
from dcrec.simulator.scenario import parse_scenario

DEVICE = "phone-123"  # the recipe's default DEVICE

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="the documented TLS recipe needs the openssl command")



@dataclass(frozen=True)
class Cloud:
    port: int
    http_port: int
    pki: Path
    secret: Path

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    def tls_args(self, cert: bool = True) -> list[str]:
        args = ["--tls-ca", str(self.pki / "ca.pem")]
        if cert:
            args += ["--tls-cert", str(self.pki / f"{DEVICE}.crt"),
                     "--tls-key", str(self.pki / f"{DEVICE}.key")]
        return args

    def access(self) -> CloudAccess:
        return CloudAccess(ClientTls(str(self.pki / "ca.pem"), str(self.pki / f"{DEVICE}.crt"),
                                     str(self.pki / f"{DEVICE}.key")), str(self.secret))

    def metrics(self) -> str:
        """The server's /metrics, over the HTTP port's mutual TLS."""
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.pem"))
        ctx.load_cert_chain(str(self.pki / f"{DEVICE}.crt"), str(self.pki / f"{DEVICE}.key"))
        with urllib.request.urlopen(f"https://localhost:{self.http_port}/metrics", context=ctx,
                                    timeout=10) as resp:
            return resp.read().decode()


def wait_for(path: Path, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> int:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, f"server exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{path} not written within {timeout_s}s"
        time.sleep(0.05)
    return int(path.read_text())


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory, cloud_model_dir: Path,
          registry_dir: Path, run_tls_recipe) -> Iterator[Cloud]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("simulate-connect")
    pki = run_tls_recipe(root / "pki", "DNS:localhost")
    secret = write_secret(root / "auth.secret")
    cmd = [sys.executable, "-m", "dcrec.shared.cli", "cloud", "serve",
           "--model-dir", str(cloud_model_dir), "--registry", str(registry_dir),
           "--address", "127.0.0.1:0", "--ready-file", str(root / "port"),
           "--http-address", "127.0.0.1:0", "--http-ready-file", str(root / "http-port"),
           "--tls-cert", str(pki / "server.crt"), "--tls-key", str(pki / "server.key"),
           "--tls-client-ca", str(pki / "ca.pem"), "--auth-secret", str(secret)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        yield Cloud(wait_for(root / "port", proc), wait_for(root / "http-port", proc), pki, secret)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def simulate(tmp_path: Path, *args: str) -> int:
    return main(["simulate", *args, "--users", "3", "--policy", "always",
                 "--workdir", str(tmp_path / "sim")])


def counted(page: str, code: str, method: str) -> float:
    m = re.search(rf'dcrec_grpc_requests_total{{code="{code}",method="{method}"}} (\S+)', page)
    return float(m.group(1)) if m else 0.0


def test_simulate_reaches_a_production_server_with_tls_and_device_tokens(
        tmp_path: Path, cloud: Cloud, capsys: pytest.CaptureFixture[str]) -> None:
    before = cloud.metrics()
    code = simulate(tmp_path, "--connect", cloud.address, *cloud.tls_args(),
                    "--auth-secret", str(cloud.secret))
    out, err = capsys.readouterr()
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith("| always |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    requests, events, devices = int(cells[4]), int(cells[5]), int(cells[7])
    assert devices == 3 and events > 0 and requests == events  # "always": one request per event
    assert "no device model" not in err
    assert (tmp_path / "sim" / "model" / "INSTALLED.json").exists()  # fetched over mutual TLS
    after = cloud.metrics()
    # Every call was answered: bootstrap lists, stream requests, the model (each device's own token).
    ok = counted(after, "OK", "GetCandidates") - counted(before, "OK", "GetCandidates")
    assert ok == requests + devices
    assert counted(after, "OK", "GetDeviceModel") > counted(before, "OK", "GetDeviceModel")
    for refused in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        assert counted(after, refused, "GetCandidates") == 0


def test_a_server_without_device_models_is_no_error(tmp_path: Path, cloud: Cloud,
                                                    cloud_model_dir: Path) -> None:
    """Reached and accepted, but no registry: NOT_FOUND means "no model", and the run goes on."""
    pki = cloud.pki
    cs = build_server("127.0.0.1:0", CandidateService(load_generator(cloud_model_dir)),
                      config=ServerConfig(tls=TlsConfig(str(pki / "server.crt"), str(pki / "server.key"),
                                                        str(pki / "ca.pem"))),
                      authority=TokenAuthority.from_file(cloud.secret)).start()
    try:
        assert fetch_reranker(f"localhost:{cs.port}", tmp_path / "model", cloud.access()) is None
        with pytest.raises(ConnectionError, match="refused the simulator's credentials"):
            fetch_reranker(f"localhost:{cs.port}", tmp_path / "model",
                           CloudAccess(cloud.access().tls))  # the same TLS, no token
    finally:
        cs.stop(0)


def test_a_scenario_fleet_through_the_network_proxy(tmp_path: Path, cloud: Cloud) -> None:
    """Through the emulated network the channel dials the proxy; TLS still checks 'localhost'."""
    sc = parse_scenario({
        "name": "tls-proxy", "policies": ["always"],
        "workload": {"kind": "closed_loop", "devices": 6, "duration_s": 20.0},
        "users": {"event_gap_s": 4.0, "session_gap_s": 30.0},
        "fleet": {"bin_s": 10.0, "deadline_s": 2.0, "channels": 2},
        "network": {"latency_ms": 2.0},
    })
    r = run_fleet(sc, "always", cloud.address, tmp_path, access=cloud.access())
    s = r.summary()
    assert r.proxy is not None and r.proxy.connections > 0
    assert r.devices == 6 and s["requests"] > 0 and s["failed_requests"] == 0


def test_ray_shards_get_the_tls_files_and_the_secret(tmp_path: Path, cloud: Cloud) -> None:
    pytest.importorskip("ray", reason="sharded runs need the fleet extra (ray)")
    from dcrec.simulator.distributed import run_sharded

    sc = parse_scenario({
        "name": "tls-shards", "policies": ["always"],
        "workload": {"kind": "closed_loop", "devices": 4, "duration_s": 20.0},
        "users": {"event_gap_s": 4.0, "session_gap_s": 30.0},
        "fleet": {"bin_s": 10.0, "deadline_s": 2.0},
    })
    r = run_sharded(sc, "always", cloud.address, tmp_path, shards=2, access=cloud.access())
    s = r.summary()
    assert r.devices == 4 and s["requests"] > 0 and s["failed_requests"] == 0


def test_a_scenario_run_with_connect_takes_the_same_flags(
        tmp_path: Path, cloud: Cloud, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text('name = "tiny"\npolicies = ["always"]\n'
                        '[workload]\nkind = "trace"\nmax_users = 2\n[fleet]\nbin_s = 86400.0\n'
                        '[checks]\nmax_lost_events = 0\nmax_shown_empty = 0\n')
    code = main(["simulate", "--scenario", str(scenario), "--connect", cloud.address,
                 *cloud.tls_args(), "--auth-secret", str(cloud.secret), "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "| always |" in out and "check pass" in out and "no device model" not in err
    code = main(["simulate", "--scenario", str(scenario), "--connect", cloud.address,
                 *cloud.tls_args(), "--out", str(tmp_path / "out2")])
    assert code == 1 and "refused the simulator's credentials" in capsys.readouterr().err


@pytest.mark.parametrize("case, expected", [
    ("plaintext", ["cannot reach the cloud at localhost:", "UNAVAILABLE", "give --tls-ca"]),
    ("no-client-cert", ["cannot reach the cloud at localhost:", "UNAVAILABLE",
                        "needs a client certificate"]),
    ("no-token", ["refused the simulator's credentials", "UNAUTHENTICATED", "--auth-secret"]),
    ("other-secret", ["refused the simulator's credentials", "invalid token signature"]),
    ("wrong-name", ["cannot reach the cloud at 127.0.0.1:", "Hostname Verification"]),
    ("system-cas", ["cannot reach the cloud at localhost:", "UNAVAILABLE"]),
])
def test_a_cloud_that_cannot_be_reached_or_refuses_is_named(
        tmp_path: Path, cloud: Cloud, capsys: pytest.CaptureFixture[str], case: str,
        expected: list[str]) -> None:
    secret = ["--auth-secret", str(cloud.secret)]
    args = {
        "plaintext": ["--connect", cloud.address, *secret],
        "no-client-cert": ["--connect", cloud.address, *cloud.tls_args(cert=False), *secret],
        "no-token": ["--connect", cloud.address, *cloud.tls_args()],
        "other-secret": ["--connect", cloud.address, *cloud.tls_args(),
                         "--auth-secret", str(write_secret(tmp_path / "other.secret"))],
        # The certificate names localhost only: 127.0.0.1 fails host verification...
        "wrong-name": ["--connect", f"127.0.0.1:{cloud.port}", *cloud.tls_args(), *secret],
        # --tls trusts the system's CAs, which never signed the recipe's private CA.
        "system-cas": ["--connect", cloud.address, "--tls", *cloud.tls_args()[2:], *secret],
    }[case]
    assert simulate(tmp_path, *args) == 1
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err
    assert "no device model" not in err


def test_tls_server_name_names_the_certificate_when_dialling_an_address(
        tmp_path: Path, cloud: Cloud, capsys: pytest.CaptureFixture[str]) -> None:
    # ...and --tls-server-name says which name to expect instead.
    assert simulate(tmp_path, "--connect", f"127.0.0.1:{cloud.port}", *cloud.tls_args(),
                    "--tls-server-name", "localhost", "--auth-secret", str(cloud.secret)) == 0
    assert "| always |" in capsys.readouterr().out


def free_port() -> int:
    """A loopback port that was free a moment ago: dialling it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_nothing_listening_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert simulate(tmp_path, "--connect", f"127.0.0.1:{port}") == 1
    err = capsys.readouterr().err
    assert f"cannot reach the cloud at 127.0.0.1:{port}" in err and "no device model" not in err


@pytest.mark.parametrize("args, flag", [
    (["--cloud-model", "m", "--tls-ca", "ca.pem"], "--tls-ca"),
    (["--cloud-model", "m", "--auth-secret", "s"], "--auth-secret"),
    (["--connect", "h:1", "--tls-cert", "c.pem"], "--tls-key"),
])
def test_connection_flags_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      args: list[str], flag: str) -> None:
    assert simulate(tmp_path, *args) == 2
    assert flag in capsys.readouterr().err
