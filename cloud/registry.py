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
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.contract import DeviceModel, manifest_bytes
from shared.fileio import write_atomic
from shared.neighbours import NeighbourIndex, NeighbourIndexError

if TYPE_CHECKING:
    from cloud.signing import Signer

log = logging.getLogger(__name__)


class RegistryError(ValueError):
    """Unknown version, nothing to roll back to, or an unreadable registry."""


NEIGHBOURS_FILE = "neighbours.npz"  # a release's neighbour index, beside model.onnx

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
        return sorted(p.name for p in (self.root / "models").iterdir()
                      if p.is_dir() and not p.name.startswith("."))

    def history(self) -> list[dict[str, Any]]:
        """Every release, oldest first: ``{"sequence", "version", "at", "action"}``."""
        path = self.root / "HISTORY.jsonl"
        if not path.is_file():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line after a crash: ignore it
                log.warning("%s: skipping an unreadable history line", path)
        return out

    def release(self) -> dict[str, Any] | None:
        path = self.root / "RELEASE.json"
        if not path.is_file():
            return None
        return json.loads(path.read_text())

    def current_version(self) -> str | None:
        rel = self.release()
        if rel is not None:
            return str(rel["version"])
        path = self.root / "CURRENT"  # registries written before releases existed
        return path.read_text().strip() or None if path.is_file() else None

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
            sequence = max([self.current_sequence(), *(int(h["sequence"]) for h in past)]) + 1
            entry = {"sequence": sequence, "version": version, "at": time.time(), "action": action}
            with open(self.root / "HISTORY.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")
                f.flush()
                os.fsync(f.fileno())
            release = {**entry, **self._extra(version, sequence)}
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
            size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
            out.append({"version": v, "current": v == current, "bytes": size,
                        "published_at": d.stat().st_mtime})
        return out


class ModelRegistry(Releases):
    """Device rerankers (ONNX). With a signer, every release carries a signed manifest."""

    def __init__(self, root: str | Path, signer: Signer | None = None) -> None:
        super().__init__(root)
        self.signer = signer
        self._cache: DeviceModel | None = None

    def publish(self, onnx_path: str | Path, config: dict[str, Any], version: str | None = None,
                make_current: bool = True, neighbours: str | Path | None = None) -> str:
        """Copy an ONNX file in as a new version; returns the version string.

        ``neighbours``: a neighbour index file (``dcrec cloud neighbours``) released with
        the model; checked here, and announced by its sha256 in the release config.
        """
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
        d = self._check_version(version)
        data = (d / "model.onnx").read_bytes()
        config = json.loads((d / "config.json").read_text())
        digest = hashlib.sha256(data).hexdigest()
        if config.get("sha256") not in (None, digest):
            raise RegistryError(f"version {version}: model file does not match its recorded sha256")
        config.pop("sha256", None)
        index = b""
        if "neighbours_sha256" in config:
            index = (d / NEIGHBOURS_FILE).read_bytes()
            if hashlib.sha256(index).hexdigest() != config["neighbours_sha256"]:
                raise RegistryError(f"version {version}: neighbour index does not match its recorded sha256")
        return DeviceModel(version, data, digest, config, neighbours=index)

    def current(self) -> DeviceModel | None:
        """The live release with its manifest (cached until the release changes), or None."""
        rel = self.release()
        if rel is None:
            version = self.current_version()  # a registry from before releases: unsigned, sequence 0
            return self.load(version) if version else None
        sequence = int(rel["sequence"])
        if self._cache is None or self._cache.sequence != sequence:
            model = self.load(str(rel["version"]))
            manifest = str(rel.get("manifest", "")).encode()
            if manifest and json.loads(manifest)["sha256"] != model.sha256:
                raise RegistryError(f"release {sequence}: model file differs from its manifest")
            self._cache = DeviceModel(model.version, model.onnx, model.sha256, model.config,
                                      sequence, manifest,
                                      base64.b64decode(rel.get("signature") or ""),
                                      str(rel.get("key_id", "")), model.neighbours)
        return self._cache


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
