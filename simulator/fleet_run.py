"""One fleet run: one policy's fleet, or one shard of it, against a cloud at an address.

:func:`run_fleet` builds the scenario's workload (MovieLens trace or simulated users),
fetches the device model the cloud hands out, and runs a :class:`~dcrec.simulator.fleet.Fleet`.
It is what a scenario runs per policy (:mod:`dcrec.simulator.runner`) and what each Ray
shard runs (:mod:`dcrec.simulator.distributed`), so neither imports the other.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np

from dcrec.device.client import CloudClient, CloudRejected, CloudUnauthorized, CloudUnavailable
from dcrec.device.reranker import Reranker
from dcrec.device.runtime import RuntimeConfig, system_of
from dcrec.device.updates import load_installed, update
from dcrec.shared.contract import DeviceModel
from dcrec.shared.data import Dataset, load_dataset
from dcrec.shared.progress import Progress
from dcrec.shared.splits import TimeSplit, time_split
from dcrec.simulator.clock import single_threaded_blas
from dcrec.simulator.faults import CloudControl
from dcrec.simulator.fleet import Fleet, FleetConfig, FleetResult
from dcrec.simulator.metering import CloudAccess
from dcrec.simulator.scenario import Scenario, WorkloadSpec
from dcrec.simulator.users import LatentInterestUsers, LatentUserConfig, item_vectors
from dcrec.simulator.workload import Surge, TraceWorkload, UserWorkload, Workload

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def _data(dataset: str, cloud_fraction: float) -> tuple[Dataset, TimeSplit]:
    ds = load_dataset(dataset)
    return ds, time_split(ds, cloud_fraction)


def scenario_workload(sc: Scenario) -> Workload:
    """The scenario's workload (cached: runs of several policies share it; drivers hold all state)."""
    return _workload(sc.dataset, sc.cloud_fraction, sc.workload, sc.users, sc.seed, sc.surges)


@functools.lru_cache(maxsize=4)
def _workload(dataset: str, cloud_fraction: float, w: WorkloadSpec, users: LatentUserConfig,
              seed: int, surges: tuple[Surge, ...]) -> Workload:
    ds, split = _data(dataset, cloud_fraction)
    return build_workload(Scenario(name="", workload=w, users=users, seed=seed, surges=surges),
                          ds, split)


def build_workload(sc: Scenario, ds: Dataset, split: TimeSplit) -> Workload:
    w = sc.workload
    if w.kind == "trace":
        timing = w.timing if w.timing != "auto" else ("real" if ds.has_timestamps else "synthetic")
        if timing == "real" and not ds.has_timestamps:
            raise ValueError(f"{ds.name} has no timestamps: use workload.timing = \"synthetic\"")
        return TraceWorkload(split, timing, w.mean_gap_s, w.time_scale, w.max_users, sc.seed,
                             sc.surges, w.duration_s)
    seqs = split.cloud_sequences()
    vectors = item_vectors(seqs, ds.n_items, sc.users.dim, seed=sc.seed)
    popularity = np.bincount(split.cloud.item, minlength=ds.n_items + 1)
    model = LatentInterestUsers(vectors, popularity, sc.users)
    assert w.duration_s is not None
    return UserWorkload(split, model, w.devices, w.duration_s, sc.seed, sc.surges)


def store_dir(spec: str, policy: str, shard: int) -> tuple[Path | None, bool]:
    """Where device files go, and whether to delete them after the run.

    ``""``: beside the report (kept). ``"tmpfs"``: a fresh folder in
    /dev/shm, deleted after the run: a fleet of phones does not queue its
    fsyncs on one disk, and on one shared disk the per-device open, seed and
    close (about 15 ms of fsync each) would dominate a large run. Anything
    else: that folder (kept).
    """
    if not spec:
        return None, False
    if spec == "tmpfs":
        shm = Path("/dev/shm")
        if shm.is_dir():
            return shm / f"dcrec-fleet-{os.getpid()}-{policy}-{shard}", True
        log.warning("no /dev/shm here; device stores go beside the report")
        return None, False
    return Path(spec) / policy / f"shard{shard}", False


def runtime_settings(sc: Scenario, reranker: Reranker | None) -> RuntimeConfig:
    """The devices' settings: the system the release carries (else the built-in one), with
    the [runtime] keys the scenario sets on top."""
    base = system_of(reranker).device
    return replace(base, **{k: getattr(sc.runtime, k) for k in sc.runtime_keys})


def fleet_config(sc: Scenario, policy: str, workdir: Path, shard: int = 0, shards: int = 1,
                 access: CloudAccess | None = None, reranker: Reranker | None = None) -> FleetConfig:
    f = sc.fleet
    stores, cleanup = store_dir(f.store_dir, policy, shard)
    return FleetConfig(
        workdir=workdir, store_dir=stores, cleanup_stores=cleanup, policy=policy,
        threshold=sc.threshold, runtime=runtime_settings(sc, reranker), k=f.k, deadline_s=f.deadline_s, seed=sc.seed,
        clock=f.clock, speed=f.speed, concurrency=f.concurrency, channels=f.channels,
        max_open=f.max_open, bin_s=f.bin_s, recovery_spread=f.recovery_spread,
        network=sc.network, faults=sc.faults, shard=shard, shards=shards,
        upload_telemetry=f.upload_telemetry, access=access)


MODEL_DEVICE_ID = "simulator"  # the device id the simulator fetches the device model as

# A cloud that answers one of these hands out no device model; anything else is a cloud that
# could not be reached or refused us, and the run would only measure failed calls.
_NO_MODEL = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)


class _Fetch(CloudClient):
    """A device client that keeps the error :func:`~dcrec.device.updates.update` logs and swallows."""

    error: Exception | None = None

    def get_device_model(self, device_id: str, current_version: str = "",
                         current_sequence: int = 0) -> DeviceModel | None:
        try:
            return super().get_device_model(device_id, current_version, current_sequence)
        except (CloudUnavailable, CloudRejected) as e:  # the call failed (not a bad release)
            self.error = e
            raise


def fetch_reranker(address: str, model_dir: Path, access: CloudAccess | None = None
                   ) -> Reranker | None:
    """The device model as devices get it: from the cloud's registry (None when it hands out none).

    Raises ConnectionError naming ``address`` and the cause when the cloud cannot be reached
    (down, TLS handshake failed, client certificate refused) or refuses the device token.
    """
    access = access or CloudAccess()
    client = _Fetch(address, deadline_s=5.0, token=access.token(MODEL_DEVICE_ID), tls=access.tls)
    try:  # as a phone does: the model installed earlier, replaced only by a newer release
        reranker = update(client, MODEL_DEVICE_ID, model_dir, load_installed(model_dir))
    finally:
        client.close()
    e = client.error
    cause = e.__cause__ if e is not None else None
    code = cause.code() if isinstance(cause, grpc.RpcError) and hasattr(cause, "code") else None
    if e is None or code in _NO_MODEL:
        if e is not None:  # a refused release (FAILED_PRECONDITION) is worth a warning
            log.log(logging.INFO if code == grpc.StatusCode.NOT_FOUND else logging.WARNING,
                    "cloud at %s hands out no device model: %s", address, e)
        return reranker
    if isinstance(e, CloudUnauthorized):
        raise ConnectionError(f"the cloud at {address} refused the simulator's credentials ({e}); "
                              "the simulator issues each device its token with --auth-secret, "
                              "which must be the server's own secret file") from e
    if isinstance(e, CloudRejected):
        raise ConnectionError(f"the cloud at {address} refused the device-model request: {e}") from e
    hint = ""
    if code == grpc.StatusCode.UNAVAILABLE and "refused" not in str(e).lower():
        # A TLS server closes a plaintext connection, a mutual-TLS one a connection without an
        # accepted client certificate; gRPC only says the socket closed.
        if access.tls is None:
            hint = " (if the server uses TLS, give --tls-ca, and --tls-cert/--tls-key for mutual TLS)"
        elif access.tls.cert_file is None:
            hint = " (a server with mutual TLS needs a client certificate: --tls-cert/--tls-key)"
    raise ConnectionError(f"cannot reach the cloud at {address}: {e}{hint}") from e


def run_fleet(sc: Scenario, policy: str, address: str, workdir: Path, cloud: CloudControl | None = None,
              shard: int = 0, shards: int = 1, progress: bool = False,
              access: CloudAccess | None = None) -> FleetResult:
    """One policy's fleet (or one shard of it) against the cloud at ``address``."""
    single_threaded_blas()
    workload = scenario_workload(sc)
    reranker = fetch_reranker(address, Path(workdir) / "model", access)
    if reranker is None:
        log.warning("the cloud at %s hands out no device model; devices show the cloud's order",
                    address)
    bar = Progress(f"simulate {policy:>12}", 1000) if progress else None

    def tick(fraction: float, events: int) -> None:
        assert bar is not None
        bar.update(int(fraction * 1000), f"{events} events")

    fleet = Fleet(workload, address, reranker,
                  fleet_config(sc, policy, workdir, shard, shards, access, reranker), cloud)
    result = fleet.run(tick if bar else None)
    if bar:
        bar.close()
    return result
