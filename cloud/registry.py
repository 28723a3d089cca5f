"""Device-model registry: versioned ONNX rerankers the cloud hands to devices.

Layout on disk (one folder per version, a pointer file names the live one)::

    registry/
      models/<version>/model.onnx
      models/<version>/config.json     # history length, item count, ...
      CURRENT                          # the version devices receive

Publishing writes a new version folder completely before moving ``CURRENT``,
so a crash never leaves devices a half-written model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from shared.contract import DeviceModel

log = logging.getLogger(__name__)


class RegistryError(ValueError):
    """Unknown version or unreadable registry."""


class ModelRegistry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        (self.root / "models").mkdir(parents=True, exist_ok=True)
        self._cache: DeviceModel | None = None

    def publish(self, onnx_path: str | Path, config: dict[str, Any], version: str | None = None,
                make_current: bool = True) -> str:
        """Copy an ONNX file in as a new version; returns the version string."""
        data = Path(onnx_path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        version = version or f"{time.strftime('%Y%m%d%H%M%S')}-{digest[:8]}"
        if not version.replace("-", "").replace(".", "").replace("_", "").isalnum():
            raise RegistryError(f"version {version!r}: use letters, digits, '-', '_', '.'")
        final = self.root / "models" / version
        if final.exists():
            raise RegistryError(f"version {version} already exists")
        tmp = self.root / "models" / f".{version}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        (tmp / "model.onnx").write_bytes(data)
        (tmp / "config.json").write_text(json.dumps({**config, "sha256": digest}, indent=2))
        tmp.rename(final)
        if make_current:
            self.promote(version)
        log.info("published device model %s (%d bytes)", version, len(data))
        return version

    def versions(self) -> list[str]:
        return sorted(p.name for p in (self.root / "models").iterdir()
                      if p.is_dir() and not p.name.startswith("."))

    def current_version(self) -> str | None:
        path = self.root / "CURRENT"
        return path.read_text().strip() if path.is_file() else None

    def promote(self, version: str) -> None:
        if not (self.root / "models" / version / "model.onnx").is_file():
            raise RegistryError(f"unknown device model version {version!r}")
        tmp = self.root / "CURRENT.tmp"
        tmp.write_text(version)
        os.replace(tmp, self.root / "CURRENT")
        self._cache = None

    def load(self, version: str) -> DeviceModel:
        d = self.root / "models" / version
        if not d.is_dir():
            raise RegistryError(f"unknown device model version {version!r}")
        data = (d / "model.onnx").read_bytes()
        config = json.loads((d / "config.json").read_text())
        digest = hashlib.sha256(data).hexdigest()
        if config.get("sha256") not in (None, digest):
            raise RegistryError(f"version {version}: model file does not match its recorded sha256")
        config.pop("sha256", None)
        return DeviceModel(version, data, digest, config)

    def current(self) -> DeviceModel | None:
        """The live model (cached until the next promote), or None when nothing is published."""
        version = self.current_version()
        if version is None:
            return None
        if self._cache is None or self._cache.version != version:
            self._cache = self.load(version)
        return self._cache
