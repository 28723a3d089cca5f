"""Fetching the reranker from the cloud: verify first, swap atomically, keep the old on failure.

Checks, all before ONNX Runtime reads a byte of the delivered model:

1. with trusted keys, the Ed25519 signature over the release manifest (an
   unsigned or foreign-signed model is refused);
2. the manifest's sha256 against the delivered bytes, and its version and
   sequence against the response's;
3. the release sequence against the installed one: a device never installs a
   release at or below the one it runs, so a replayed old release cannot
   downgrade it (roll-backs arrive as new releases with higher sequences).

A release may carry the cloud's neighbour index (:mod:`shared.neighbours`): its
sha256 is part of the (signed) config, it is checked and parsed before the
install, and it is attached to the new reranker, so model and index swap together.

Installed models live as ``model-<sequence>-<sha12>.onnx`` beside one pointer
file ``INSTALLED.json`` that is replaced atomically, so a crash leaves either
the old model or the new one, never a mix. :class:`ModelUpdater` swaps the
runtime's reranker between events; any failure keeps the current model.

Example::

    keys = load_trusted_keys(["signing.pub.pem"])
    updater = ModelUpdater(runtime, client, "model/", trusted=keys)
    updater.poll()          # between two events: maybe a new verified model
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.client import CloudClient, CloudRejected, CloudUnavailable
from device.reranker import ModelLoadError, OnnxReranker
from device.store import InstalledModel
from shared.contract import DeviceModel
from shared.fileio import write_atomic
from shared.neighbours import NeighbourIndex, NeighbourIndexError

log = logging.getLogger(__name__)

POINTER = "INSTALLED.json"


class ModelRejected(RuntimeError):
    """The delivered model failed verification; the device keeps its current model."""


@dataclass(frozen=True)
class TrustedKeys:
    """Ed25519 public keys the device accepts releases from, by key id."""

    keys: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.keys)


def load_trusted_keys(paths: Iterable[str | Path]) -> TrustedKeys:
    """Public keys (PEM, as ``dcrec cloud keygen`` writes them) the device will trust."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys: dict[str, Any] = {}
    for p in paths:
        key = serialization.load_pem_public_key(Path(p).read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{p}: not an Ed25519 public key")
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        keys[hashlib.sha256(raw).hexdigest()[:16]] = key
    return TrustedKeys(keys)


def _check_signature(model: DeviceModel, trusted: TrustedKeys) -> None:
    from cryptography.exceptions import InvalidSignature

    if not model.manifest or not model.signature:
        raise ModelRejected(f"model {model.version}: unsigned, and this device requires signatures")
    key = trusted.keys.get(model.key_id)
    if key is None:
        raise ModelRejected(f"model {model.version}: signed by unknown key {model.key_id[:16]!r}")
    try:
        key.verify(model.signature, model.manifest)
    except InvalidSignature as e:
        raise ModelRejected(f"model {model.version}: bad signature") from e


def verify(model: DeviceModel, trusted: TrustedKeys | None = None,
           installed_sequence: int = 0) -> dict[str, Any]:
    """Check ``model`` before anything loads it; returns its authenticated config.

    Raises ModelRejected. Without trusted keys (development) unsigned models
    pass, but digest, manifest consistency and ordering are still checked.
    """
    if trusted:
        _check_signature(model, trusted)
    digest = hashlib.sha256(model.onnx).hexdigest()
    config: dict[str, Any] = dict(model.config)
    if model.manifest:
        try:
            manifest = json.loads(model.manifest)
            m_version, m_seq = str(manifest["version"]), int(manifest["sequence"])
            m_sha, config = str(manifest["sha256"]), dict(manifest["config"])
        except (ValueError, KeyError, TypeError) as e:
            raise ModelRejected(f"model {model.version}: unreadable manifest") from e
        if (m_version, m_seq, m_sha) != (model.version, model.sequence, model.sha256):
            raise ModelRejected(f"model {model.version}: response does not match its manifest")
    if digest != model.sha256:
        raise ModelRejected(f"model {model.version}: sha256 {digest[:12]} does not match "
                            f"the announced {model.sha256[:12]}")
    if installed_sequence and model.sequence <= installed_sequence:
        raise ModelRejected(f"model {model.version}: release {model.sequence} is not newer than "
                            f"the installed release {installed_sequence} (downgrade refused)")
    max_len = config.get("max_len")
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
        raise ModelRejected(f"model {model.version}: config has no valid max_len")
    announced = config.get("neighbours_sha256")
    if model.neighbours or announced is not None:
        if announced is None:
            raise ModelRejected(f"model {model.version}: carries a neighbour index its config does not announce")
        got = hashlib.sha256(model.neighbours).hexdigest()
        if got != announced:
            raise ModelRejected(f"model {model.version}: neighbour index sha256 {got[:12]} does not match "
                                f"the announced {str(announced)[:12]}")
    return config


def _neighbour_index(model: DeviceModel, config: dict[str, Any]) -> NeighbourIndex | None:
    """The release's neighbour index, parsed and checked against the model's catalogue."""
    if not model.neighbours:
        return None
    try:
        index = NeighbourIndex.from_bytes(model.neighbours, f"model {model.version}: neighbour index")
    except NeighbourIndexError as e:
        raise ModelRejected(str(e)) from e
    n_items = _n_items(config)
    if n_items is not None and index.n_items != n_items:
        raise ModelRejected(f"model {model.version}: neighbour index covers {index.n_items} items, "
                            f"the model {n_items}")
    return index


def _read_pointer(model_dir: Path) -> dict[str, Any] | None:
    path = model_dir / POINTER
    if not path.is_file():
        return None
    try:
        pointer = json.loads(path.read_text())
        return pointer if isinstance(pointer, dict) else None
    except (OSError, ValueError):
        log.warning("%s is unreadable; treating the device as having no model", path)
        return None


def installed_sequence(model_dir: str | Path) -> int:
    """The release sequence of the installed model, 0 when there is none."""
    pointer = _read_pointer(Path(model_dir))
    return int(pointer.get("sequence", 0)) if pointer else 0


def install(model: DeviceModel, model_dir: str | Path, threads: int = 1,
            trusted: TrustedKeys | None = None) -> OnnxReranker:
    """Verify, load and persist ``model``; raises ModelRejected and leaves the old model alone."""
    d = Path(model_dir)
    config = verify(model, trusted, installed_sequence(d))
    try:
        reranker = OnnxReranker(model.onnx, int(config["max_len"]), model.version, threads,
                                _n_items(config))
    except ModelLoadError as e:
        raise ModelRejected(f"model {model.version}: {e}") from e
    reranker.neighbours = _neighbour_index(model, config)
    d.mkdir(parents=True, exist_ok=True)
    name = f"model-{model.sequence}-{model.sha256[:12]}.onnx"
    write_atomic(d / name, model.onnx)
    old = _read_pointer(d)
    pointer = {"file": name, "version": model.version, "sequence": model.sequence,
               "sha256": model.sha256, "max_len": int(config["max_len"]), "config": config}
    if reranker.neighbours is not None:
        pointer["neighbours_file"] = f"neighbours-{model.sequence}-{config['neighbours_sha256'][:12]}.npz"
        write_atomic(d / pointer["neighbours_file"], model.neighbours)
    write_atomic(d / POINTER, json.dumps(pointer, indent=2).encode())
    for key in ("file", "neighbours_file"):
        if old and old.get(key) not in (None, pointer.get(key)):
            (d / str(old[key])).unlink(missing_ok=True)
    return reranker


def _n_items(config: dict) -> int | None:  # type: ignore[type-arg]
    """The catalogue size a release declares, if it declares a valid one."""
    n = config.get("n_items")
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else None


def load_installed(model_dir: str | Path, threads: int = 1) -> OnnxReranker | None:
    """The model installed earlier in ``model_dir`` (digest re-checked), or None."""
    d = Path(model_dir)
    pointer = _read_pointer(d)
    if pointer is not None:
        data = (d / str(pointer["file"])).read_bytes()
        if hashlib.sha256(data).hexdigest() != pointer["sha256"]:
            log.warning("%s: installed model file is damaged; ignoring it", d)
            return None
        reranker = OnnxReranker(data, int(pointer["max_len"]), str(pointer["version"]), threads,
                                _n_items(pointer.get("config") or {}))
        if pointer.get("neighbours_file"):
            try:
                reranker.neighbours = NeighbourIndex.load(
                    d / str(pointer["neighbours_file"]),
                    sha256=str((pointer.get("config") or {}).get("neighbours_sha256", "")))
            except NeighbourIndexError as e:  # the model still serves, without local lists
                log.warning("%s: installed neighbour index unusable (%s); running without it", d, e)
        return reranker
    if (d / "VERSION").is_file() and (d / "model.onnx").is_file():  # layout of older runtimes
        version, max_len = (d / "VERSION").read_text().split()[:2]
        return OnnxReranker.from_file(d / "model.onnx", int(max_len), version, threads)
    return None


def update(client: CloudClient, device_id: str, model_dir: str | Path,
           current: OnnxReranker | None, threads: int = 1,
           trusted: TrustedKeys | None = None) -> OnnxReranker | None:
    """Ask the cloud for a newer model; returns the reranker to use from now on.

    Any failure (cloud down, bad signature, digest or order, unloadable file)
    returns ``current``.
    """
    seq = installed_sequence(model_dir) if current is not None else 0
    try:
        model = client.get_device_model(device_id, current.version if current else "", seq)
    except (CloudUnavailable, CloudRejected, ValueError) as e:
        log.info("%s: model update skipped (%s)", device_id, e)
        return current
    if model is None:
        return current
    try:
        return install(model, model_dir, threads, trusted)
    except ModelRejected as e:
        log.warning("%s: %s; keeping %s", device_id, e, current.version if current else "no model")
        return current


class ModelUpdater:
    """Keeps a runtime's reranker current without ever leaving it without one.

    ``check`` downloads and verifies (any thread; slow); ``apply`` swaps the
    verified model in with one reference assignment (call it between events, on
    the thread that records them); ``poll`` does both for single-threaded apps.
    """

    def __init__(self, runtime: Any, client: CloudClient, model_dir: str | Path,
                 trusted: TrustedKeys | None = None, threads: int = 1) -> None:
        self.runtime = runtime  # anything with a ``reranker`` attribute (DeviceRuntime)
        self.client = client
        self.model_dir = Path(model_dir)
        self.trusted = trusted
        self.threads = threads
        self._pending: OnnxReranker | None = None
        self._lock = threading.Lock()

    def check(self) -> bool:
        """Fetch and verify a newer model; True when one is ready for :meth:`apply`."""
        current = self.runtime.reranker
        new = update(self.client, getattr(self.runtime, "device_id", ""), self.model_dir, current,
                     self.threads, self.trusted)
        if new is current:
            return False
        with self._lock:
            self._pending = new
        return True

    def apply(self) -> bool:
        """Swap a verified model in; True when the runtime now uses a new one."""
        with self._lock:
            new, self._pending = self._pending, None
        if new is None:
            return False
        self.runtime.reranker = new
        log.info("now reranking with model %s", new.version)
        self._record(new)
        return True

    def _record(self, new: OnnxReranker) -> None:
        """Note the install in the runtime's store (its ``models`` table), when it has one."""
        store = getattr(self.runtime, "store", None)
        pointer = _read_pointer(self.model_dir)
        if store is None or not hasattr(store, "record_model") or not pointer \
                or pointer.get("version") != new.version:
            return
        store.record_model(InstalledModel(new.version, str(self.model_dir / str(pointer["file"])),
                                          str(pointer["sha256"]), int(pointer["max_len"]), time.time()))

    def poll(self) -> bool:
        return self.check() and self.apply()
