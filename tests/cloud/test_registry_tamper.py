"""The server verifies signed device-model releases before serving them.

Someone who can write the registry folder but does not hold the private key
rewrites files on disk (model, digests, manifest, signature, key id), and a
real gRPC server on loopback, holding only the public key, refuses every such
release with FAILED_PRECONDITION and an error in its log, while the genuine
release is served. Also: torn or garbage registry files raise errors naming
the file (never a bare KeyError or JSONDecodeError), and the serve command's
``--trusted-key`` flag.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from dcrec.cloud.models.backends import load_generator
from dcrec.cloud.releases.registry import (
    ModelRegistry,
    RegistryError,
    RegistryUnreadable,
    ReleaseRefused,
    Releases,
)
from dcrec.cloud.releases.signing import Signer, write_keypair
from dcrec.cloud.serving.server import CloudServer, build_server
from dcrec.cloud.serving.service import CandidateService
from dcrec.device.updates import verify
from dcrec.shared.contract import manifest_bytes
from dcrec.shared.neighbours import NeighbourIndex
from dcrec.shared.proto.dcrec.v1 import recommend_pb2 as pb
from dcrec.shared.proto.dcrec.v1 import recommend_pb2_grpc as pb_grpc
from dcrec.shared.signatures import TrustedKeys, load_trusted_keys

REPO = Path(__file__).resolve().parents[2]
SIGNER = Signer.generate()  # the operator's key; the server below holds only its public half
STRANGER = Signer.generate()


def _index(n_items: int, seed: int) -> NeighbourIndex:
    rng = np.random.default_rng(seed)
    items = rng.integers(1, n_items + 1, size=(n_items + 1, 3))
    items[0] = 0
    return NeighbourIndex.from_lists(items, rng.random((n_items + 1, 3)) + 0.1, f"cloud-{seed}")


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, device_model_dir: Path) -> Path:
    """A registry with one signed release, d1 (model, config and neighbour index), copied per test."""
    root = tmp_path_factory.mktemp("signed-registry")
    config = json.loads((device_model_dir / "model.json").read_text())
    index = root.parent / "neighbours.npz"
    _index(int(config["n_items"]), 0).save(index)
    ModelRegistry(root, SIGNER).publish(device_model_dir / "model.onnx", config, version="d1",
                                        neighbours=index)
    return root


@pytest.fixture
def root(published: Path, tmp_path: Path) -> Path:
    shutil.copytree(published, tmp_path / "registry")
    return tmp_path / "registry"


@pytest.fixture(scope="module")
def service(cloud_model_dir: Path) -> CandidateService:
    return CandidateService(load_generator(cloud_model_dir))


@pytest.fixture
def serve(service: CandidateService) -> Iterator[Callable[[ModelRegistry], pb_grpc.RecommenderStub]]:
    """Start a real server on loopback for a registry; returns a stub to call it."""
    started: list[tuple[CloudServer, grpc.Channel]] = []

    def start(registry: ModelRegistry) -> pb_grpc.RecommenderStub:
        cs = build_server("127.0.0.1:0", service, registry).start()
        channel = grpc.insecure_channel(f"127.0.0.1:{cs.port}")
        started.append((cs, channel))
        return pb_grpc.RecommenderStub(channel)

    yield start
    for cs, channel in started:
        channel.close()
        cs.server.stop(0)


def fetch(stub: pb_grpc.RecommenderStub, current_sequence: int = 0) -> pb.GetDeviceModelResponse:
    return stub.GetDeviceModel(pb.GetDeviceModelRequest(device_id="phone",
                                                        current_sequence=current_sequence),
                               timeout=10)


def read_json(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(path.read_text())


def write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2))


# --- what an attacker without the private key can do to the folder ------------------------------

def _flip(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0xFF
    return bytes(out)


def tamper_model_and_config_digest(root: Path) -> None:
    d = root / "models" / "d1"
    data = _flip((d / "model.onnx").read_bytes())
    (d / "model.onnx").write_bytes(data)
    write_json(d / "config.json", {**read_json(d / "config.json"),
                                   "sha256": hashlib.sha256(data).hexdigest()})


def tamper_model_only(root: Path) -> None:
    d = root / "models" / "d1"
    (d / "model.onnx").write_bytes(_flip((d / "model.onnx").read_bytes()))


def tamper_config(root: Path) -> None:
    d = root / "models" / "d1"
    write_json(d / "config.json", {**read_json(d / "config.json"), "max_len": 3})


def tamper_neighbours_and_digest(root: Path) -> None:
    d = root / "models" / "d1"
    config = read_json(d / "config.json")
    sha = _index(int(config["n_items"]), 1).save(d / "neighbours.npz")
    write_json(d / "config.json", {**config, "neighbours_sha256": sha})


def _rewrite_everything(root: Path) -> dict:  # type: ignore[type-arg]
    """New model bytes with every digest and the manifest made to match: only the signature is old."""
    tamper_model_and_config_digest(root)
    d = root / "models" / "d1"
    config = read_json(d / "config.json")
    sha = config.pop("sha256")
    rel = read_json(root / "RELEASE.json")
    rel["manifest"] = manifest_bytes("d1", rel["sequence"], sha, config).decode()
    return rel


def tamper_manifest(root: Path) -> None:
    write_json(root / "RELEASE.json", _rewrite_everything(root))


def tamper_signature(root: Path) -> None:
    rel = read_json(root / "RELEASE.json")
    write_json(root / "RELEASE.json", {**rel, "signature": base64.b64encode(bytes(64)).decode()})


def tamper_signature_not_base64(root: Path) -> None:
    rel = read_json(root / "RELEASE.json")
    write_json(root / "RELEASE.json", {**rel, "signature": "not base64!"})


def tamper_key_id(root: Path) -> None:
    rel = read_json(root / "RELEASE.json")
    write_json(root / "RELEASE.json", {**rel, "key_id": STRANGER.key_id})


def resign_with_another_key(root: Path) -> None:
    rel = _rewrite_everything(root)
    sig = STRANGER.sign(rel["manifest"].encode())
    write_json(root / "RELEASE.json", {**rel, "signature": base64.b64encode(sig).decode(),
                                       "key_id": STRANGER.key_id})


def resign_with_another_key_claiming_ours(root: Path) -> None:
    rel = _rewrite_everything(root)
    sig = STRANGER.sign(rel["manifest"].encode())
    write_json(root / "RELEASE.json", {**rel, "signature": base64.b64encode(sig).decode(),
                                       "key_id": SIGNER.key_id})


def promote_unsigned(root: Path) -> None:
    ModelRegistry(root).promote("d1")  # `dcrec cloud models promote` without --signing-key


def bump_sequence(root: Path) -> None:
    rel = read_json(root / "RELEASE.json")  # a higher number, so devices would take it as newer
    write_json(root / "RELEASE.json", {**rel, "sequence": rel["sequence"] + 10})


def only_current_file(root: Path) -> None:
    (root / "RELEASE.json").unlink()  # what a registry from before releases looks like


TAMPERED = {
    "model.onnx with a matching config sha256": (tamper_model_and_config_digest, "sha256"),
    "model.onnx alone": (tamper_model_only, "does not match its recorded sha256"),
    "config.json": (tamper_config, "config"),
    "neighbours.npz with a matching digest": (tamper_neighbours_and_digest, "config"),
    "RELEASE.json manifest rewritten to match": (tamper_manifest, "bad signature"),
    "signature": (tamper_signature, "bad signature"),
    "signature not base64": (tamper_signature_not_base64, "not base64"),
    "key_id": (tamper_key_id, "unknown key"),
    "signed by another key": (resign_with_another_key, "unknown key"),
    "signed by another key, claiming ours": (resign_with_another_key_claiming_ours, "bad signature"),
    "unsigned release": (promote_unsigned, "unsigned"),
    "sequence bumped": (bump_sequence, "sequence"),
    "no release record, only CURRENT": (only_current_file, "no signed release"),
}


def test_the_genuine_signed_release_is_served(root: Path, serve, device_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    resp = fetch(serve(ModelRegistry(root, trusted=SIGNER.trusted())))
    assert resp.updated and (resp.version, resp.sequence) == ("d1", 1)
    assert resp.onnx == (device_model_dir / "model.onnx").read_bytes()
    assert resp.key_id == SIGNER.key_id and SIGNER.public.verify(resp.signature, resp.manifest) is None
    assert resp.neighbours == (root / "models" / "d1" / "neighbours.npz").read_bytes()


@pytest.mark.parametrize("name", list(TAMPERED))
def test_a_tampered_release_is_never_served(name: str, root: Path, serve, caplog) -> None:  # type: ignore[no-untyped-def]
    tamper, why = TAMPERED[name]
    tamper(root)
    stub = serve(ModelRegistry(root, trusted=SIGNER.trusted()))  # the public key only
    with caplog.at_level(logging.ERROR, logger="dcrec.cloud.serving.server"), pytest.raises(grpc.RpcError) as e:
        fetch(stub)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION, name
    assert "failed signature verification" in e.value.details() and why in e.value.details(), \
        e.value.details()
    assert any("not serving" in r.getMessage() and why in r.getMessage() for r in caplog.records)
    with pytest.raises(grpc.RpcError) as again:  # nor when the device claims to be up to date
        fetch(stub, current_sequence=99)
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert len(stub.GetCandidates(pb.GetCandidatesRequest(
        device_id="phone", count=5, history=[pb.Event(item_id=1, timestamp=1.0)]),
        timeout=10).item_ids) == 5  # the rest of the server keeps serving


def test_tampering_while_serving_is_caught_and_a_signed_release_recovers(  # type: ignore[no-untyped-def]
        root: Path, serve, device_model_dir: Path) -> None:
    stub = serve(ModelRegistry(root, trusted=SIGNER.trusted()))
    assert fetch(stub).sequence == 1  # verified, and cached while the release stays the same
    rel = _rewrite_everything(root)  # a "newer release" made on disk without the key
    rel["sequence"] = 2
    rel["manifest"] = rel["manifest"].replace('"sequence":1,', '"sequence":2,')
    write_json(root / "RELEASE.json", rel)
    with pytest.raises(grpc.RpcError) as e:
        fetch(stub)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.details() == "live release 2 (d1) failed signature verification: model d1: bad signature"
    # The operator publishes with the key: a new signed release, served again at once.
    config = json.loads((device_model_dir / "model.json").read_text())
    ModelRegistry(root, SIGNER).publish(device_model_dir / "model.onnx", config, version="d2")
    resp = fetch(stub)
    assert resp.updated and (resp.version, resp.sequence) == ("d2", 3)


# --- the registry API ---------------------------------------------------------------------------

def test_a_signers_registry_verifies_with_its_own_key(root: Path) -> None:
    reg = ModelRegistry(root, SIGNER)  # the publishing side: no public key file needed
    assert list(reg.trusted.keys) == [SIGNER.key_id]  # type: ignore[union-attr]
    live = reg.current()
    assert live is not None and live.sequence == 1
    tamper_signature(root)
    with pytest.raises(ReleaseRefused, match="live release 1 .* bad signature") as e:
        reg.current()
    assert e.value.sequence == 1


def test_without_keys_the_manifest_is_still_checked_against_the_files(root: Path) -> None:
    tamper_signature(root)
    assert ModelRegistry(root).current() is not None  # development: signatures not checked
    tamper_config(root)
    with pytest.raises(ReleaseRefused, match=r"failed verification: .*\(config differ"):
        ModelRegistry(root).current()


def test_trusted_keys_add_up_and_an_empty_set_trusts_nothing(root: Path) -> None:
    both = ModelRegistry(root, SIGNER, trusted=STRANGER.trusted()).trusted
    assert both is not None and set(both.keys) == {SIGNER.key_id, STRANGER.key_id}
    assert ModelRegistry(root, trusted=STRANGER.trusted() | SIGNER.trusted()).current() is not None
    with pytest.raises(ReleaseRefused, match="unknown key"):
        ModelRegistry(root, trusted=TrustedKeys()).current()  # fails closed, not open


def test_a_verifying_registry_without_the_private_key_makes_no_release(root: Path) -> None:
    reg = ModelRegistry(root, trusted=SIGNER.trusted())
    before = [(root / n).read_bytes() for n in ("RELEASE.json", "HISTORY.jsonl", "CURRENT")]
    with pytest.raises(RegistryError, match="no signing key"):
        reg.promote("d1")
    assert [(root / n).read_bytes() for n in ("RELEASE.json", "HISTORY.jsonl", "CURRENT")] == before


def test_public_key_files_and_the_device_check_are_the_servers(tmp_path: Path, root: Path) -> None:
    private, public = write_keypair(tmp_path / "keys")
    keys = load_trusted_keys([public])
    assert list(keys.keys) == [Signer.from_file(private).key_id]
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ValueError, match="junk.pem"):
        load_trusted_keys([tmp_path / "junk.pem"])
    (tmp_path / "pub.pem").write_bytes(SIGNER.public_pem())
    live = ModelRegistry(root, trusted=load_trusted_keys([tmp_path / "pub.pem"])).current()
    assert live is not None
    assert verify(live, load_trusted_keys([tmp_path / "pub.pem"]))["max_len"] >= 1  # the device agrees


# --- torn and garbage files ---------------------------------------------------------------------

TORN = {
    "empty": (b"", "not valid JSON"),
    "torn write": (b'{"version": "d1", "seq', "not valid JSON"),
    "garbage bytes": (b"\xff\xfe\x00\x81", "unreadable"),
    "a list": (b"[1, 2]", "not a JSON object"),
    "no version": (b'{"sequence": 1}', "no 'version'"),
    "version not a string": (b'{"version": 5, "sequence": 1}', "no 'version'"),
    "version escapes the folder": (b'{"version": "../../etc", "sequence": 1}', "use 1-100"),
    "sequence a string": (b'{"version": "d1", "sequence": "1"}', "'sequence' must be"),
    "sequence a bool": (b'{"version": "d1", "sequence": true}', "'sequence' must be"),
    "sequence zero": (b'{"version": "d1", "sequence": 0}', "'sequence' must be"),
    "signature not a string": (b'{"version": "d1", "sequence": 1, "signature": 5}', "'signature'"),
}


@pytest.mark.parametrize("name", list(TORN))
def test_a_torn_release_file_is_named_with_its_problem(name: str, root: Path) -> None:
    data, problem = TORN[name]
    (root / "RELEASE.json").write_bytes(data)
    reg = ModelRegistry(root, SIGNER)
    for call in (reg.release, reg.current_version, reg.current_sequence, reg.current,
                 reg.describe, reg.rollback_target):
        with pytest.raises(RegistryUnreadable) as e:
            call()
        assert str(root / "RELEASE.json") in str(e.value) and problem in str(e.value), (call, e.value)
    assert [h["sequence"] for h in reg.history()] == [1]  # the history is another file
    assert reg.promote("d1") == 2  # a new release is how it is repaired
    assert reg.current().sequence == 2  # type: ignore[union-attr]


def test_a_release_file_that_is_a_folder_is_unreadable(root: Path) -> None:
    (root / "RELEASE.json").unlink()
    (root / "RELEASE.json").mkdir()
    with pytest.raises(RegistryUnreadable, match="RELEASE.json: unreadable"):
        ModelRegistry(root).current()


def test_garbage_history_lines_are_skipped(root: Path) -> None:
    with open(root / "HISTORY.jsonl", "a") as f:
        f.write('5\n{"version": 3, "sequence": 2}\n{"sequence": 7}\n'
                '{"version": "d1", "sequence": 8, "at": "yesterday"}\n'
                '{"version": "d1", "sequence": 9, "at": NaN}\n{"version": "d1", "seq')
    reg = ModelRegistry(root, SIGNER)
    assert [h["sequence"] for h in reg.history()] == [1]
    with pytest.raises(RegistryError, match="no earlier release"):
        reg.rollback_target()
    assert reg.promote("d1") == 2


def test_missing_and_garbage_model_files(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = ModelRegistry(root, SIGNER)
    monkeypatch.setattr(reg, "versions", lambda: ["d1", "gone"])  # removed while listing
    assert [v["version"] for v in reg.describe()] == ["d1"]
    monkeypatch.undo()
    (root / "models" / "d1" / "config.json").write_text('{"max_len": ')
    with pytest.raises(RegistryUnreadable, match=r"d1/config.json: not valid JSON"):
        ModelRegistry(root, SIGNER).current()
    (root / "models" / "d1" / "config.json").write_text("[]")
    with pytest.raises(RegistryUnreadable, match=r"d1/config.json: not a JSON object"):
        ModelRegistry(root, SIGNER).current()
    (root / "models" / "d1" / "neighbours.npz").unlink()
    (root / "models" / "d1" / "config.json").write_text('{"neighbours_sha256": "ab"}')
    with pytest.raises(RegistryUnreadable, match=r"d1/neighbours.npz: unreadable"):
        ModelRegistry(root, SIGNER).current()
    shutil.rmtree(root / "models" / "d1")
    with pytest.raises(RegistryUnreadable, match="d1: the live release's model folder is missing"):
        ModelRegistry(root, SIGNER).current()
    assert reg.describe() == [] and reg.current_version() == "d1"
    (root / "CURRENT").write_text("../up")
    (root / "RELEASE.json").unlink()
    with pytest.raises(RegistryUnreadable, match="CURRENT"):
        Releases(root).current_version()
    shutil.rmtree(root / "models")
    with pytest.raises(RegistryUnreadable, match="models: unreadable"):
        reg.versions()


def test_the_server_answers_unavailable_for_a_torn_release(root: Path, serve, caplog) -> None:  # type: ignore[no-untyped-def]
    stub = serve(ModelRegistry(root, trusted=SIGNER.trusted()))
    assert fetch(stub).sequence == 1
    (root / "RELEASE.json").write_text('{"version": "d1", "sequ')
    with caplog.at_level(logging.ERROR, logger="dcrec.cloud.serving.server"), pytest.raises(grpc.RpcError) as e:
        fetch(stub)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert e.value.details() == "device model registry unavailable"  # paths stay in the log
    [logged] = [r for r in caplog.records if r.name == "dcrec.cloud.serving.server"]
    assert "RELEASE.json: not valid JSON" in logged.getMessage() and logged.exc_info is None


# --- dcrec cloud serve --trusted-key ------------------------------------------------------------

def test_serve_verifies_releases_with_the_trusted_key_flag(tmp_path: Path, root: Path,
                                                           cloud_model_dir: Path) -> None:
    pub, ready = tmp_path / "signing.pub.pem", tmp_path / "port"
    pub.write_bytes(SIGNER.public_pem())
    proc = subprocess.Popen(
        [sys.executable, "-m", "dcrec.shared.cli", "cloud", "serve", "--model-dir", str(cloud_model_dir),
         "--registry", str(root), "--trusted-key", str(pub), "--address", "127.0.0.1:0",
         "--ready-file", str(ready), "--insecure"], cwd=REPO, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with grpc.insecure_channel(f"127.0.0.1:{int(ready.read_text())}") as channel:
            stub = pb_grpc.RecommenderStub(channel)
            assert fetch(stub).sequence == 1
            tamper_signature(root)
            with pytest.raises(grpc.RpcError) as e:
                fetch(stub)
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert b"live release 1 (d1) failed signature verification" in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_serve_refuses_a_trusted_key_that_is_not_one(tmp_path: Path, root: Path,
                                                      cloud_model_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from dcrec.shared.cli import main

    (tmp_path / "junk.pem").write_text("not a key")
    code = main(["cloud", "serve", "--model-dir", str(cloud_model_dir), "--registry", str(root),
                 "--trusted-key", str(tmp_path / "junk.pem"), "--address", "127.0.0.1:0",
                 "--insecure"])
    # a file that cannot be used is a runtime error (1); 2 is kept for a bad command line
    assert code == 1 and "junk.pem: not a PEM public key" in capsys.readouterr().err
