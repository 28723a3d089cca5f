"""Fetching the reranker from the cloud: verify first, swap atomically, keep the old on failure.

Checks, all before ONNX Runtime reads a byte of the delivered model:

1. with trusted keys, the Ed25519 signature over the release manifest (an
   unsigned or foreign-signed model is refused);
2. the manifest's sha256 against the delivered bytes, and its version and
   sequence against the response's;
3. the release sequence against the installed one: a device never installs a
   release at or below the one it runs, so a replayed old release cannot
   downgrade it (roll-backs arrive as new releases with higher sequences).

A release may carry the cloud's neighbour index (:mod:`dcrec.shared.neighbours`): its
sha256 is part of the (signed) config, it is checked and parsed before the
install, and it is attached to the new reranker, so model and index swap together.

Installed models live as ``model-<sequence>-<sha12>.onnx`` beside one pointer
file ``INSTALLED.json`` that is replaced atomically, so a crash leaves either
the old model or the new one, never a mix. :class:`ModelUpdater` swaps the
runtime's reranker between events; any failure keeps the current model.

What is installed is read back with the same suspicion: :func:`load_installed`
returns None, with a warning naming the file, for a pointer that is not JSON,
lacks keys or names a missing file, for a model file whose digest or ONNX is
damaged; the device then fetches a model again as if it had none.

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
from pathlib import Path
from typing import Any

from dcrec.device.client import CloudClient, CloudRejected, CloudUnavailable
from dcrec.device.reranker import ModelLoadError, OnnxReranker
from dcrec.device.store import InstalledModel
from dcrec.shared.contract import DeviceModel
from dcrec.shared.errors import DeviceDataError
from dcrec.shared.fileio import write_atomic
from dcrec.shared.neighbours import NeighbourIndex, NeighbourIndexError
from dcrec.shared.request_value import RequestModelError, RequestValueModel
from dcrec.shared.signatures import SignatureError, TrustedKeys, check_signature
from dcrec.shared.signatures import (
    load_trusted_keys as load_trusted_keys,  # part of this module's API
)
from dcrec.shared.system import System, SystemConfigError, parse_system

log = logging.getLogger(__name__)

POINTER = "INSTALLED.json"


class ModelRejected(RuntimeError, DeviceDataError):
    """The delivered model failed verification; the device keeps its current model."""


class _Unusable(Exception):
    """What ``INSTALLED.json`` points at cannot be served (the message says why)."""


def _check_signature(model: DeviceModel, trusted: TrustedKeys) -> None:
    try:
        check_signature(model, trusted)  # the same check the server makes before serving
    except SignatureError as e:
        raise ModelRejected(str(e)) from e


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


def _system(config: dict[str, Any], where: object) -> System | None:
    """The system the release was published with (config ``system``, a TOML document), or None
    without one; settings this device cannot read (e.g. a newer format) are None too, with a
    warning naming the problem: the release still serves and the device runs its built-in
    system."""
    if "system" not in config:
        return None
    text = config["system"]
    try:
        if not isinstance(text, str):
            raise SystemConfigError([f"is a JSON {type(text).__name__}, not TOML text"], "system")
        return parse_system(text, f"{where}: system")
    except SystemConfigError as e:
        log.warning("%s; the device runs its built-in system", e)
        return None


def _request_model(config: dict[str, Any], where: object) -> RequestValueModel | None:
    """The release's request-value model (config ``request_model``), or None without one; a
    model this device cannot read (e.g. a newer format) is None too, with a warning naming
    the problem: the release still serves, and the learned policy falls back to budgeted."""
    if "request_model" not in config:
        return None
    try:
        return RequestValueModel.from_dict(config["request_model"])
    except RequestModelError as e:
        log.warning("%s: its request model is unusable (%s); the learned request policy falls "
                    "back to the budgeted one", where, e)
        return None


def _read_pointer(model_dir: Path) -> dict[str, Any] | None:
    path = model_dir / POINTER
    if not path.is_file():
        return None
    try:
        pointer = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        log.warning("%s is unreadable (%s); treating the device as having no model", path, e)
        return None
    if not isinstance(pointer, dict):
        log.warning("%s holds a JSON %s, not an object; treating the device as having no model",
                    path, type(pointer).__name__)
        return None
    return pointer


def installed_sequence(model_dir: str | Path) -> int:
    """The release sequence of the installed model, 0 when there is none."""
    pointer = _read_pointer(Path(model_dir))
    seq = pointer.get("sequence", 0) if pointer else 0
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and seq > 0 else 0


def install(model: DeviceModel, model_dir: str | Path, threads: int = 1,
            trusted: TrustedKeys | None = None, reinstall: bool = False) -> OnnxReranker:
    """Verify, load and persist ``model``; raises ModelRejected and leaves the old model alone.

    ``reinstall``: the installed model is unusable (:func:`load_installed` gave None), so
    the installed release itself may come again; anything older is still refused.
    """
    d = Path(model_dir)
    floor = installed_sequence(d)
    config = verify(model, trusted, max(floor - 1, 0) if reinstall else floor)
    index = _neighbour_index(model, config)  # (its checks are cheaper than loading the model)
    request_model = _request_model(config, f"model {model.version}")
    try:
        reranker = OnnxReranker(model.onnx, int(config["max_len"]), model.version, threads,
                                _n_items(config))
    except ModelLoadError as e:
        raise ModelRejected(f"model {model.version}: {e}") from e
    reranker.neighbours = index
    reranker.request_model = request_model
    reranker.system = _system(config, f"model {model.version}")
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
        name = old.get(key) if old else None
        if isinstance(name, str) and name and name != pointer.get(key) and Path(name).name == name:
            (d / name).unlink(missing_ok=True)  # (only a file of this folder, whatever the old pointer says)
    return reranker


def _n_items(config: dict) -> int | None:  # type: ignore[type-arg]
    """The catalogue size a release declares, if it declares a valid one."""
    n = config.get("n_items")
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else None


def _file_name(value: object) -> str:
    """A file name the pointer gives, refused unless it names a file in the model folder itself."""
    if not isinstance(value, str) or not value or Path(value).name != value:
        raise _Unusable(f"names no model file in its folder ({value!r})")
    return value


def _from_pointer(d: Path, pointer: dict[str, Any], threads: int) -> OnnxReranker:
    """The reranker ``pointer`` (INSTALLED.json) describes; raises _Unusable, OSError, ModelLoadError."""
    name = _file_name(pointer.get("file"))
    version, sha, max_len = pointer.get("version"), pointer.get("sha256"), pointer.get("max_len")
    config = pointer.get("config", {})
    if not isinstance(version, str) or not isinstance(sha, str):
        raise _Unusable("lacks the model's version or sha256")
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
        raise _Unusable(f"max_len {max_len!r} is not a positive integer")
    if not isinstance(config, dict):
        raise _Unusable(f"config is a JSON {type(config).__name__}, not an object")
    data = (d / name).read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != sha:
        raise _Unusable(f"{name} is damaged (sha256 {got[:12]}, installed as {sha[:12]})")
    reranker = OnnxReranker(data, max_len, version, threads, _n_items(config))
    reranker.request_model = _request_model(config, d)
    reranker.system = _system(config, d)
    if pointer.get("neighbours_file"):
        try:
            index_file = d / _file_name(pointer["neighbours_file"])
            reranker.neighbours = NeighbourIndex.load(index_file,
                                                      sha256=str(config.get("neighbours_sha256", "")))
        except (NeighbourIndexError, _Unusable) as e:  # the model still serves, without local lists
            log.warning("%s: installed neighbour index unusable (%s); running without it", d, e)
    return reranker


def load_installed(model_dir: str | Path, threads: int = 1) -> OnnxReranker | None:
    """The model installed earlier in ``model_dir`` (digest re-checked), or None.

    None also, with a warning naming the file and the problem, when what is installed
    cannot be served (damaged or missing model file, a pointer lacking keys or not JSON):
    :func:`update` then fetches a model as for a device that never had one.
    """
    d = Path(model_dir)
    pointer = _read_pointer(d)
    where = d / (POINTER if pointer is not None else "VERSION")
    try:
        if pointer is not None:
            return _from_pointer(d, pointer, threads)
        if (d / "VERSION").is_file() and (d / "model.onnx").is_file():  # layout of older runtimes
            fields = (d / "VERSION").read_text().split()
            if len(fields) < 2 or not fields[1].isdigit() or int(fields[1]) < 1:
                raise _Unusable(f"VERSION holds {fields[:2]!r}, not a version and a max_len")
            return OnnxReranker.from_file(d / "model.onnx", int(fields[1]), fields[0], threads)
    except (_Unusable, ModelLoadError) as e:
        log.warning("%s: installed model unusable (%s); ignoring it", where, e)
    except (OSError, ValueError) as e:  # ValueError: undecodable VERSION, a NUL in a file name
        log.warning("%s: installed model unreadable (%s); ignoring it", where, e)
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
        return install(model, model_dir, threads, trusted, reinstall=current is None)
    except ModelRejected as e:
        log.warning("%s: %s; keeping %s", device_id, e, current.version if current else "no model")
        return current
    except OSError as e:  # the release was sound but could not be written (disk full, permissions)
        log.warning("%s: model %s not installed (%s); keeping %s", device_id, model.version, e,
                    current.version if current else "no model")
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
