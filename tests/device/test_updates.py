"""Signed device-model delivery: the device refuses tampered, unsigned, foreign and older models.

A real gRPC server on loopback hands out whatever release the test puts in
front of it (a hostile cloud, or one between the device and the cloud); the
device keeps recommending with the model it had throughout.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from dcrec.cloud.models.backends import load_generator
from dcrec.cloud.releases.registry import ModelRegistry
from dcrec.cloud.releases.signing import Signer
from dcrec.cloud.serving.server import CloudServer, build_server
from dcrec.cloud.serving.service import CandidateService
from dcrec.device.client import CloudClient
from dcrec.device.policy import NeverPolicy
from dcrec.device.runtime import DeviceRuntime
from dcrec.device.store import DeviceStore
from dcrec.device.updates import (
    ModelRejected,
    ModelUpdater,
    TrustedKeys,
    install,
    installed_sequence,
    load_installed,
    verify,
)
from dcrec.shared.contract import DeviceModel, manifest_bytes


class Served:
    """Stands in for the registry: serves exactly the release the test sets."""

    def __init__(self, model: DeviceModel) -> None:
        self.model = model

    def current(self) -> DeviceModel:
        return self.model


def release(signer: Signer | None, version: str, onnx: bytes, sequence: int,
            config: dict[str, object]) -> DeviceModel:
    sha = hashlib.sha256(onnx).hexdigest()
    manifest = manifest_bytes(version, sequence, sha, config)
    sig = signer.sign(manifest) if signer else b""
    return DeviceModel(version, onnx, sha, config, sequence, manifest, sig,
                       signer.key_id if signer else "")


@pytest.fixture
def world(tmp_path: Path, cloud_model_dir: Path, device_model_dir: Path
          ) -> Iterator[tuple[CloudServer, Served, Signer, bytes, dict[str, object], Path]]:
    signer = Signer.generate()
    onnx = (device_model_dir / "model.onnx").read_bytes()
    config = json.loads((device_model_dir / "model.json").read_text())
    served = Served(release(signer, "m1", onnx, 1, config))
    cs = build_server("127.0.0.1:0", CandidateService(load_generator(cloud_model_dir)),
                      served).start()  # type: ignore[arg-type]
    yield cs, served, signer, onnx, config, tmp_path
    cs.server.stop(0)


def test_bad_releases_are_refused_and_the_device_keeps_serving(world) -> None:  # type: ignore[no-untyped-def]
    cs, served, signer, onnx, config, tmp = world
    trusted = TrustedKeys({signer.key_id: signer.public})
    client = CloudClient(f"127.0.0.1:{cs.port}", deadline_s=10)
    rt = DeviceRuntime("dev1", DeviceStore(tmp / "dev1.sqlite"), None, client, NeverPolicy())
    updater = ModelUpdater(rt, client, tmp / "model", trusted)
    assert updater.poll() and rt.reranker is not None and rt.reranker.version == "m1"
    served.model = release(signer, "m2", onnx, 2, config)
    assert updater.poll() and rt.reranker.version == "m2"
    assert installed_sequence(tmp / "model") == 2
    active = rt.store.active_model()  # the store keeps the install history, the newest active
    assert active is not None and active.version == "m2" and Path(active.path).is_file()
    assert active.sha256 == hashlib.sha256(Path(active.path).read_bytes()).hexdigest()

    stranger = Signer.generate()
    genuine3 = release(signer, "m3", onnx, 3, config)
    flipped = bytearray(onnx)
    flipped[len(flipped) // 2] ^= 0xFF
    hostile = {
        "tampered bytes": replace(genuine3, onnx=bytes(flipped)),
        "tampered bytes, digest re-announced": replace(
            genuine3, onnx=bytes(flipped), sha256=hashlib.sha256(bytes(flipped)).hexdigest()),
        "tampered config": replace(genuine3, manifest=manifest_bytes(
            "m3", 3, genuine3.sha256, {**config, "max_len": 3})),
        "unsigned": release(None, "m3", onnx, 3, config),
        "signed by a stranger": replace(release(stranger, "m3", onnx, 3, config),
                                        key_id=signer.key_id),
        "older release replayed": release(signer, "m1", onnx, 1, config),
        "same release again": release(signer, "m2", onnx, 2, config),
        "signed but not a model": release(signer, "m4", b"not an onnx file", 4, config),
    }
    failed = shown = 0
    seen = 0
    for name, model in hostile.items():
        served.model = model
        assert not updater.poll(), name
        assert rt.reranker.version == "m2", name
        for _ in range(3):  # the device keeps recommending with the model it had
            seen += 1
            try:
                rec = rt.record(seen, float(seen))
                shown += rec.items.size > 0
            except Exception:  # noqa: BLE001 - any failure to recommend counts
                failed += 1
    assert failed == 0 and shown == seen
    assert installed_sequence(tmp / "model") == 2
    again = load_installed(tmp / "model")
    assert again is not None and again.version == "m2"

    served.model = genuine3  # a good release still gets through, swapped between events
    assert updater.check() and rt.reranker.version == "m2"
    assert updater.apply() and rt.reranker.version == "m3"
    assert rt.store.active_model().version == "m3"  # type: ignore[union-attr]
    assert sorted(p.name for p in (tmp / "model").iterdir()) == [
        "INSTALLED.json", f"model-3-{genuine3.sha256[:12]}.onnx"]


def test_verify_without_keys_still_checks_digest_and_order(device_model_dir: Path) -> None:
    onnx = (device_model_dir / "model.onnx").read_bytes()
    ok = release(None, "a", onnx, 5, {"max_len": 50})
    assert verify(ok)["max_len"] == 50  # development: unsigned accepted without trusted keys
    with pytest.raises(ModelRejected, match="downgrade"):
        verify(ok, installed_sequence=5)
    with pytest.raises(ModelRejected, match="sha256"):
        verify(replace(ok, onnx=onnx + b"x"))
    with pytest.raises(ModelRejected, match="manifest"):
        verify(replace(ok, sequence=9))
    with pytest.raises(ModelRejected, match="max_len"):
        verify(release(None, "a", onnx, 5, {"max_len": True}))
    with pytest.raises(ModelRejected, match="unsigned"):
        signer = Signer.generate()
        verify(ok, TrustedKeys({signer.key_id: signer.public}))


def test_a_release_config_that_lies_about_the_catalogue_is_refused(tmp_path: Path,
                                                                    device_model_dir: Path) -> None:
    onnx = (device_model_dir / "model.onnx").read_bytes()
    lying = release(None, "a", onnx, 1, {"max_len": 50, "n_items": 1000})  # the model has 1682
    with pytest.raises(ModelRejected, match="n_items mismatch: .*1682.*1000"):
        install(lying, tmp_path / "model")
    assert installed_sequence(tmp_path / "model") == 0 and not (tmp_path / "model").exists()


def test_registry_signs_releases_the_device_accepts(tmp_path: Path, device_model_dir: Path) -> None:
    signer = Signer.generate()
    reg = ModelRegistry(tmp_path / "reg", signer)
    config = json.loads((device_model_dir / "model.json").read_text())
    reg.publish(device_model_dir / "model.onnx", config, version="a")
    reg.publish(device_model_dir / "model.onnx", config, version="b")
    assert reg.current().sequence == 2  # type: ignore[union-attr]
    assert reg.rollback() == ("a", 3)
    model = reg.current()
    assert model is not None and model.version == "a" and model.sequence == 3
    keys = TrustedKeys({signer.key_id: signer.public})
    assert verify(model, keys, installed_sequence=2)["max_len"] == config["max_len"]
    assert [h["version"] for h in reg.history()] == ["a", "b", "a"]
