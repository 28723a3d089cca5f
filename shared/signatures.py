"""Checking Ed25519 signatures on device-model releases: one check for device and cloud.

The operator's side signs :func:`dcrec.shared.contract.manifest_bytes` with a private
key (:class:`dcrec.cloud.releases.signing.Signer`). Whoever holds the public key checks the
signature with :func:`check_signature`: the device before it installs a
release (:mod:`dcrec.device.updates`), the server before it hands one out
(:class:`dcrec.cloud.releases.registry.ModelRegistry`), so a release rewritten by someone
who can write the registry folder but lacks the private key is never served.

Example::

    trusted = load_trusted_keys(["signing.pub.pem"])   # or TrustedKeys.of(signer.public)
    check_signature(model, trusted)                     # raises SignatureError
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dcrec.shared.contract import DeviceModel

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class SignatureError(ValueError):
    """A release is unsigned, signed by a key nobody trusts, or its signature does not verify."""


def key_id(public: Ed25519PublicKey) -> str:
    """First 16 hex digits of the sha256 of the raw public key: names a key in logs and manifests."""
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class TrustedKeys:
    """Ed25519 public keys releases are accepted from, by key id."""

    keys: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.keys)

    @classmethod
    def of(cls, *publics: Ed25519PublicKey) -> TrustedKeys:
        return cls({key_id(p): p for p in publics})

    def __or__(self, other: TrustedKeys) -> TrustedKeys:
        return TrustedKeys({**self.keys, **other.keys})


def load_trusted_keys(paths: Iterable[str | Path]) -> TrustedKeys:
    """Public keys (PEM, as ``dcrec cloud keygen`` writes them) to trust."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys = []
    for p in paths:
        try:
            key = serialization.load_pem_public_key(Path(p).read_bytes())
        except ValueError as e:
            raise ValueError(f"{p}: not a PEM public key ({e})") from e
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{p}: not an Ed25519 public key")
        keys.append(key)
    return TrustedKeys.of(*keys)


def check_signature(model: DeviceModel, trusted: TrustedKeys) -> None:
    """Raise SignatureError unless a key in ``trusted`` signed exactly ``model.manifest``.

    Only the signature over the manifest bytes is checked here; whether the
    manifest describes the delivered bytes is the caller's check (the device
    compares it with the response, the registry with the files on disk).
    """
    from cryptography.exceptions import InvalidSignature

    if not model.manifest or not model.signature:
        raise SignatureError(f"model {model.version}: unsigned, and signatures are required")
    key = trusted.keys.get(model.key_id)
    if key is None:
        raise SignatureError(f"model {model.version}: signed by unknown key {model.key_id[:16]!r}")
    try:
        key.verify(model.signature, model.manifest)
    except InvalidSignature as e:
        raise SignatureError(f"model {model.version}: bad signature") from e
