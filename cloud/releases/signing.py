"""Ed25519 keys and signatures for device-model releases.

The registry signs :func:`dcrec.shared.contract.manifest_bytes` (version, release
sequence, sha256 of the ONNX file, config) with a private key that never
leaves the operator's side; devices hold the public key and refuse anything
it did not sign (see :mod:`dcrec.device.updates`), and so does a server given the
public key before it hands a release out (the check is
:func:`dcrec.shared.signatures.check_signature`).

Example::

    write_keypair("keys/")                       # keys/signing.pem, keys/signing.pub.pem
    signer = Signer.from_file("keys/signing.pem")
    sig = signer.sign(manifest)                  # 64 bytes
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dcrec.shared.signatures import TrustedKeys, key_id

PRIVATE_NAME = "signing.pem"
PUBLIC_NAME = "signing.pub.pem"


class Signer:
    """Signs release manifests with one Ed25519 private key."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self.private = private
        self.public = private.public_key()
        self.key_id = key_id(self.public)

    @classmethod
    def from_file(cls, path: str | Path) -> Signer:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return cls(key)

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    def sign(self, manifest: bytes) -> bytes:
        """64-byte Ed25519 signature over ``manifest``."""
        return self.private.sign(manifest)

    def trusted(self) -> TrustedKeys:
        """This key's public half, as the verifying side holds it."""
        return TrustedKeys.of(self.public)

    def public_pem(self) -> bytes:
        return self.public.public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)

    def private_pem(self) -> bytes:
        return self.private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())


def write_keypair(out_dir: str | Path) -> tuple[Path, Path]:
    """Create a new key pair in ``out_dir``; the private file is readable by its owner only."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / PRIVATE_NAME, out / PUBLIC_NAME
    if private.exists():
        raise FileExistsError(f"{private} exists; refusing to overwrite a signing key")
    signer = Signer.generate()
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(signer.private_pem())
    public.write_bytes(signer.public_pem())
    return private, public
