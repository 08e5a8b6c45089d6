"""Ed25519 signing keys for bundles: the private key stays on the workstation (mode 0600), the public key
goes to every gateway that should trust bundles signed with it."""

from __future__ import annotations

import base64
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


def sign(data: bytes, private_key: str | Path) -> bytes:
    """Base64 Ed25519 signature of ``data`` with a key made by ``new_keypair``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    p = Path(private_key)
    try:
        key = load_pem_private_key(p.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"{p}: not a readable unencrypted PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{p}: not an Ed25519 key; make one with `vibrawatch keys new`")
    if p.stat().st_mode & 0o077:
        raise ConfigError(f"{p}: readable by other users (mode {oct(p.stat().st_mode & 0o777)}); chmod 600 it")
    return base64.b64encode(key.sign(data))
