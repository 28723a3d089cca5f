"""Model registries: versioned device rerankers and cloud generators, with releases.

Layout on disk (one folder per version; a release names the live one)::

    registry/
      models/<version>/model.onnx      # device registry; a cloud registry holds a
      models/<version>/config.json     #   backend model directory per version
      models/<version>/neighbours.npz  # optional: the cloud's neighbour index released with it
      RELEASE.json                     # the live release: manifest, signature, key id
      CURRENT                          # the live version, plain text (for people and tools)
      HISTORY.jsonl                    # every release, oldest first: what roll-back reads

Every promotion, roll-backs included, is a new release with the next
``sequence`` number, so "newer" is always well defined for devices even when an
old model comes back. Publishing writes a version folder completely before a
release can point at it, and pointer files are replaced atomically, so a crash
never leaves devices a half-written model.

Reading never trusts the folder: a torn or garbage pointer file raises
:class:`RegistryUnreadable` naming the file and the problem, and a device
registry holding public keys (``trusted``, or its signer's own key) serves the
live release only after its Ed25519 signature verifies and its signed manifest
matches the files on disk (:class:`ReleaseRefused` otherwise), so someone who
can write the folder but lacks the private key cannot get a model served.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dcrec.shared.contract import DeviceModel, manifest_bytes
from dcrec.shared.fileio import write_atomic
from dcrec.shared.neighbours import NeighbourIndex, NeighbourIndexError
from dcrec.shared.signatures import SignatureError, TrustedKeys, check_signature
from dcrec.shared.system import SYSTEM, System, SystemConfigError, load_system

if TYPE_CHECKING:
    from dcrec.cloud.releases.signing import Signer

log = logging.getLogger(__name__)


class RegistryError(ValueError):
    """Unknown version, nothing to roll back to, or an unreadable registry."""


class RegistryUnreadable(RegistryError):
    """A registry file is torn, garbage or gone; the message names the file and the problem."""


class ReleaseRefused(RegistryError):
    """The live release fails verification (signature, or manifest against the files): never served."""

    def __init__(self, sequence: int, message: str) -> None:
        super().__init__(message)
        self.sequence = sequence


NEIGHBOURS_FILE = "neighbours.npz"  # a release's neighbour index, beside model.onnx


def _read_text(path: Path) -> str | None:
    """The file's text, None when it does not exist; RegistryUnreadable when it cannot be read."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise RegistryUnreadable(f"{path}: unreadable ({e})") from e


def _release_problem(rel: object) -> str | None:
    """What is wrong with a parsed RELEASE.json, or None."""
    if not isinstance(rel, dict):
        return f"not a JSON object (a {type(rel).__name__})"
    version, sequence = rel.get("version"), rel.get("sequence")
    if not isinstance(version, str):
        return "no 'version' string"
    try:
        _valid_version(version)
    except RegistryError as e:
        return str(e)
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1:
        return f"'sequence' must be an integer >= 1, got {sequence!r}"
    for key in ("manifest", "signature", "key_id"):
        if not isinstance(rel.get(key, ""), str):
            return f"{key!r} is not a string"
    return None


def _history_entry_ok(entry: object) -> bool:
    """A history line as :meth:`Releases.promote` writes it: sequence, version, time, action."""
    if not isinstance(entry, dict):
        return False
    sequence, at = entry.get("sequence"), entry.get("at", 0.0)
    return (isinstance(entry.get("version"), str) and isinstance(entry.get("action", ""), str)
            and isinstance(sequence, int) and not isinstance(sequence, bool)
            and isinstance(at, int | float) and not isinstance(at, bool) and math.isfinite(at))


def _valid_version(version: str) -> None:
    if not version or len(version) > 100 or not version.replace("-", "").replace(".", "").replace(
            "_", "").isalnum() or version.startswith("."):
        raise RegistryError(f"version {version!r}: use 1-100 letters, digits, '-', '_', '.'")


class Releases:
    """Versions under ``root/models`` and the history of which one was live (shared by both kinds)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        (self.root / "models").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one promotion at a time within a process

    def versions(self) -> list[str]:
        models = self.root / "models"
        try:
            return sorted(p.name for p in models.iterdir()
                          if p.is_dir() and not p.name.startswith("."))
        except OSError as e:
            raise RegistryUnreadable(f"{models}: unreadable ({e})") from e

    def history(self) -> list[dict[str, Any]]:
        """Every release, oldest first: ``{"sequence", "version", "at", "action"}``."""
        path = self.root / "HISTORY.jsonl"
        text = _read_text(path)
        out = []
        for line in (text or "").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a torn last line after a crash: ignore it
                entry = None
            if _history_entry_ok(entry):
                out.append(entry)
            else:
                log.warning("%s: skipping an unreadable history line", path)
        return out

    def release(self) -> dict[str, Any] | None:
        """The live release record, None when there is none.

        Raises RegistryUnreadable, naming the file and the problem, for a torn
        or garbage ``RELEASE.json`` (not JSON, not an object, no valid
        ``version`` or ``sequence``).
        """
        path = self.root / "RELEASE.json"
        text = _read_text(path)
        if text is None:
            return None
        try:
            rel = json.loads(text)
        except json.JSONDecodeError as e:
            raise RegistryUnreadable(f"{path}: not valid JSON ({e}): a torn write or garbage") from e
        problem = _release_problem(rel)
        if problem is not None:
            raise RegistryUnreadable(f"{path}: {problem}")
        return rel

    def current_version(self) -> str | None:
        rel = self.release()
        if rel is not None:
            return str(rel["version"])
        path = self.root / "CURRENT"  # registries written before releases existed
        version = (_read_text(path) or "").strip()
        if not version:
            return None
        try:
            _valid_version(version)
        except RegistryError as e:
            raise RegistryUnreadable(f"{path}: {e}") from e
        return version

    def current_sequence(self) -> int:
        rel = self.release()
        return int(rel["sequence"]) if rel else 0

    def _check_version(self, version: str) -> Path:
        _valid_version(version)
        d = self.root / "models" / version
        if not d.is_dir():
            raise RegistryError(f"unknown version {version!r}")
        return d

    def _extra(self, version: str, sequence: int) -> dict[str, Any]:
        """What a release record carries besides version and sequence (signatures, for devices)."""
        return {}

    def promote(self, version: str, action: str = "promote") -> int:
        """Make ``version`` live as a new release; returns its sequence number."""
        self._check_version(version)
        with self._lock:
            past = self.history()
            try:
                live = self.current_sequence()
            except RegistryUnreadable as e:  # a new release is how an operator repairs a torn one
                log.warning("%s; the new release replaces it", e)
                live = 0
            sequence = max([live, *(int(h["sequence"]) for h in past)]) + 1
            entry = {"sequence": sequence, "version": version, "at": time.time(), "action": action}
            # Signed before anything is written: a release that cannot be made leaves no trace.
            release = {**entry, **self._extra(version, sequence)}
            with open(self.root / "HISTORY.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")
                f.flush()
                os.fsync(f.fileno())
            write_atomic(self.root / "RELEASE.json", json.dumps(release, indent=2).encode())
            write_atomic(self.root / "CURRENT", version.encode())
        log.info("%s: %s %s as release %d", self.root, action, version, sequence)
        return sequence

    def rollback_target(self) -> str:
        """The version that was live before the current one; RegistryError when there is none."""
        current = self.current_version()
        past = [h["version"] for h in self.history()]
        while past and past[-1] == current:
            past.pop()
        if not past:
            raise RegistryError("no earlier release to roll back to")
        return str(past[-1])

    def rollback(self) -> tuple[str, int]:
        """Make the version live before the current one live again (a new release).

        Returns ``(version, sequence)``; raises RegistryError when there is none.
        """
        version = self.rollback_target()
        return version, self.promote(version, action="rollback")

    def describe(self) -> list[dict[str, Any]]:
        """Every version with its size and whether it is live, for people and the HTTP API."""
        current = self.current_version()
        out = []
        for v in self.versions():
            d = self.root / "models" / v
            try:
                size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
                published_at = d.stat().st_mtime
            except OSError as e:  # removed (or made unreadable) while we looked: not listed
                log.warning("%s: skipping version %s (%s)", self.root, v, e)
                continue
            out.append({"version": v, "current": v == current, "bytes": size,
                        "published_at": published_at})
        return out


def _read_request_model(path: Path) -> dict[str, Any]:
    from dcrec.shared.request_value import RequestValueModel

    try:
        data = json.loads(path.read_text())
        RequestValueModel.from_dict(data)
    except OSError as e:
        raise RegistryError(f"{path}: unreadable ({e})") from e
    except ValueError as e:  # (RequestModelError and JSON errors alike)
        raise RegistryError(f"{path}: not a request model ({e})") from e
    assert isinstance(data, dict)
    return data


def _system_text(system: System | str | Path | None) -> str:
    if system is None:
        return SYSTEM.to_toml()
    if isinstance(system, System):
        return system.to_toml()
    try:
        return load_system(system).to_toml()
    except SystemConfigError as e:
        raise RegistryError(str(e)) from e


class ModelRegistry(Releases):
    """Device rerankers (ONNX). With a signer, every release carries a signed manifest.

    ``trusted``: public keys the live release must be signed by before
    :meth:`current` hands it out; a signer's own key is always among them. With
    neither (development) releases are served unsigned, still checked against
    their manifest. An empty ``TrustedKeys()`` trusts nothing: every release is refused.
    """

    def __init__(self, root: str | Path, signer: Signer | None = None,
                 trusted: TrustedKeys | None = None) -> None:
        super().__init__(root)
        self.signer = signer
        if signer is not None:
            trusted = signer.trusted() if trusted is None else trusted | signer.trusted()
        self.trusted = trusted
        self._cache: DeviceModel | None = None
        self._cache_key: tuple[Any, ...] = ()  # the release record the cached model was verified for

    def publish(self, onnx_path: str | Path, config: dict[str, Any], version: str | None = None,
                make_current: bool = True, neighbours: str | Path | None = None,
                request_model: str | Path | None = None, system: System | str | Path | None = None) -> str:
        """Copy an ONNX file in as a new version; returns the version string.

        ``neighbours``: a neighbour index file (``dcrec cloud neighbours``) released with
        the model; checked here, and announced by its sha256 in the release config.
        ``request_model``: a request-value model (JSON, ``dcrec cloud request-model``); it is
        checked here and rides in the release config (``request_model``), so the manifest and
        signature cover it like every other setting.
        ``system``: the settings devices run with (a TOML file or a :class:`System`; None: the
        built-in system, dcrec.shared.system), carried as TOML text in the release config
        (``system``), under the manifest too.
        """
        config = {**config, "system": _system_text(system)}
        if request_model is not None:
            config = {**config, "request_model": _read_request_model(Path(request_model))}
        data = Path(onnx_path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        index_data = None
        if neighbours is not None:
            index_data = Path(neighbours).read_bytes()
            try:
                index = NeighbourIndex.from_bytes(index_data, str(neighbours))
            except NeighbourIndexError as e:
                raise RegistryError(str(e)) from e
            n_items = config.get("n_items")
            if n_items is not None and n_items != index.n_items:
                raise RegistryError(f"{neighbours}: indexes {index.n_items} items, the model "
                                    f"declares n_items {n_items}")
            config = {**config, "neighbours_sha256": hashlib.sha256(index_data).hexdigest()}
        version = version or f"{time.strftime('%Y%m%d%H%M%S')}-{digest[:8]}"
        _valid_version(version)
        final = self.root / "models" / version
        if final.exists():
            raise RegistryError(f"version {version} already exists")
        tmp = self.root / "models" / f".{version}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        (tmp / "model.onnx").write_bytes(data)
        if index_data is not None:
            (tmp / NEIGHBOURS_FILE).write_bytes(index_data)
        (tmp / "config.json").write_text(json.dumps({**config, "sha256": digest}, indent=2))
        tmp.rename(final)
        log.info("published device model %s (%d bytes)", version, len(data))
        if make_current:
            self.promote(version)
        return version

    def _extra(self, version: str, sequence: int) -> dict[str, Any]:
        if self.signer is None and self.trusted is not None:
            # An unsigned release here would only ever be refused to every device.
            raise RegistryError(f"{self.root}: releases here must be signed, and this process holds "
                                "no signing key (give --signing-key)")
        model = self.load(version)
        manifest = manifest_bytes(version, sequence, model.sha256, model.config)  # type: ignore[arg-type]
        extra: dict[str, Any] = {"manifest": manifest.decode(), "signature": "", "key_id": ""}
        if self.signer is not None:
            extra["signature"] = base64.b64encode(self.signer.sign(manifest)).decode()
            extra["key_id"] = self.signer.key_id
        return extra

    def promote(self, version: str, action: str = "promote") -> int:
        sequence = super().promote(version, action)
        self._cache = None
        return sequence

    def load(self, version: str) -> DeviceModel:
        """One version's files, digests checked. RegistryUnreadable for missing or garbage files,
        RegistryError when a file does not match its recorded sha256."""
        d = self._check_version(version)

        def read(name: str) -> bytes:
            try:
                return (d / name).read_bytes()
            except OSError as e:
                raise RegistryUnreadable(f"{d / name}: unreadable ({e})") from e

        data = read("model.onnx")
        try:
            config = json.loads(read("config.json"))
        except ValueError as e:
            raise RegistryUnreadable(f"{d / 'config.json'}: not valid JSON ({e})") from e
        if not isinstance(config, dict):
            raise RegistryUnreadable(f"{d / 'config.json'}: not a JSON object")
        digest = hashlib.sha256(data).hexdigest()
        if config.get("sha256") not in (None, digest):
            raise RegistryError(f"version {version}: model file does not match its recorded sha256")
        config.pop("sha256", None)
        index = b""
        if "neighbours_sha256" in config:
            index = read(NEIGHBOURS_FILE)
            if hashlib.sha256(index).hexdigest() != config["neighbours_sha256"]:
                raise RegistryError(f"version {version}: neighbour index does not match its recorded sha256")
        return DeviceModel(version, data, digest, config, neighbours=index)

    def current(self) -> DeviceModel | None:
        """The live release with its manifest (cached until the release changes), or None.

        Raises RegistryUnreadable for torn or missing files, ReleaseRefused when
        the release fails verification: its signature (with trusted keys), or
        its manifest against the model, config and neighbour index on disk.
        """
        rel = self.release()
        if rel is None:
            version = self.current_version()  # a registry from before releases: unsigned, sequence 0
            if version is None:
                return None
            if self.trusted is not None:
                raise ReleaseRefused(0, f"live model {version} failed signature verification: "
                                        "no signed release record (only a CURRENT file)")
            return self.load(version)
        key = tuple(rel.get(k) for k in ("sequence", "version", "manifest", "signature", "key_id"))
        if self._cache is None or self._cache_key != key:
            self._cache = self._verified(rel)
            self._cache_key = key
        return self._cache

    def _verified(self, rel: dict[str, Any]) -> DeviceModel:
        """The release's model after every check; ReleaseRefused naming the first that failed."""
        sequence, version = int(rel["sequence"]), str(rel["version"])
        what = "signature verification" if self.trusted is not None else "verification"

        def refuse(why: str) -> ReleaseRefused:
            return ReleaseRefused(sequence, f"live release {sequence} ({version}) failed {what}: {why}")

        if not (self.root / "models" / version).is_dir():
            raise RegistryUnreadable(f"{self.root / 'models' / version}: the live release's "
                                     "model folder is missing")
        try:
            model = self.load(version)
        except RegistryUnreadable:
            raise
        except RegistryError as e:  # a file no longer matches the digest recorded beside it
            raise refuse(str(e)) from e
        manifest = str(rel.get("manifest", "")).encode()
        if manifest:
            try:
                signed = json.loads(manifest)
                on_disk = json.loads(manifest_bytes(version, sequence, model.sha256, model.config))
            except ValueError as e:  # (a config holding NaN cannot be a manifest either)
                raise refuse(f"its manifest is unreadable ({e})") from e
            if signed != on_disk:
                changed = (sorted(k for k in on_disk if signed.get(k) != on_disk[k])
                           if isinstance(signed, dict) else []) or ["manifest"]
                raise refuse(f"the files on disk do not match its manifest ({', '.join(changed)} "
                             "differ: model.onnx, config.json or neighbours.npz changed)")
        try:
            signature = base64.b64decode(str(rel.get("signature", "")), validate=True)
        except ValueError as e:
            raise refuse("its signature is not base64") from e
        served = DeviceModel(model.version, model.onnx, model.sha256, model.config, sequence,
                             manifest, signature, str(rel.get("key_id", "")), model.neighbours)
        if self.trusted is not None:
            try:
                check_signature(served, self.trusted)
            except SignatureError as e:
                raise refuse(str(e)) from e
        return served


class CloudModelRegistry(Releases):
    """Cloud candidate generators: each version is a backend model directory."""

    def publish(self, model_dir: str | Path, version: str | None = None,
                make_current: bool = True) -> str:
        """Copy a trained model directory in; the version defaults to its backend.json version."""
        src = Path(model_dir)
        manifest = json.loads((src / "backend.json").read_text())
        version = version or str(manifest.get("version", "")).replace(":", "-").replace("/", "-")
        _valid_version(version)
        final = self.root / "models" / version
        if final.exists():
            raise RegistryError(f"version {version} already exists")
        tmp = self.root / "models" / f".{version}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        tmp.rename(final)
        if make_current:
            self.promote(version)
        return version

    def path(self, version: str) -> Path:
        return self._check_version(version)
