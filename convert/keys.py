"""Ed25519 signing keys for bundles: the private key stays on the workstation (mode 0600), the public key
goes to every gateway that should trust bundles signed with it. Signing with it is agent/model/signing.py's
``sign``, beside the verifier."""

from __future__ import annotations

import os
from pathlib import Path

from vibrawatch.agent.errors import ConfigError

PRIVATE_NAME = "vibrawatch-signing.key"
PUBLIC_NAME = "vibrawatch-signing.pub"


def new_keypair(out_dir: str | Path) -> tuple[Path, Path]:
    """Write a new key pair into ``out_dir``; refuses to overwrite an existing key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    d = Path(out_dir)
    if d.exists() and not d.is_dir():
        raise ConfigError(f"--out-dir {d}: an existing file; name a folder for the key pair")
    parent = next((p for p in d.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"--out-dir {d}: {parent} is a file, not a folder")
    d.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = d / PRIVATE_NAME, d / PUBLIC_NAME
    for p in (priv_path, pub_path):
        if p.exists():
            raise ConfigError(f"{p} already exists; move it away or choose another --out-dir (keys are never "
                              "overwritten)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv_path, pub_path

