"""The gateway's one Ed25519 check (bundles, deploys, remote commands), made in a short-lived child process.

Why a child: ``cryptography`` maps OpenSSL and its own bindings, 6.6 MB resident that a gateway would keep for
the rest of its life for a check it makes at start, at a deploy and at a remote command (a bundle, a command a
day). The child runs the same library and exits; the service keeps only its answer (about 0.1 s a check). It
starts as ``python -I``: neither the working directory nor any PYTHON* variable is on its path, so nothing beside
the gateway's installed files can stand in for the library and say "verified".
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

from ..errors import ConfigError, VibrawatchError

_OK, _MISMATCH, _BAD_KEY, _NOT_ED25519, _NO_LIBRARY = 0, 10, 11, 12, 13
_TIMEOUT_S = 120.0  # a Raspberry Pi Zero imports the library in seconds; a hung child must not hang the gateway

# The child: three length-prefixed fields on stdin (PEM public key, base64 signature, message); its exit code says
# what it found. An exception it does not expect exits 1 with a traceback on stderr: reported, never "verified".
_CHILD = r"""
import base64, binascii, struct, sys
try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
except ImportError:
    sys.exit(13)
data = sys.stdin.buffer.read()
n_key, n_sig, n_msg = struct.unpack(">III", data[:12])
if len(data) != 12 + n_key + n_sig + n_msg:
    sys.exit(3)
pem, sig, msg = data[12:12 + n_key], data[12 + n_key:12 + n_key + n_sig], data[12 + n_key + n_sig:]
try:
    key = load_pem_public_key(pem)
except (ValueError, TypeError) as e:
    sys.stderr.write(str(e))
    sys.exit(11)
if not isinstance(key, Ed25519PublicKey):
    sys.exit(12)
try:
    key.verify(base64.b64decode(sig, validate=True), msg)
except (InvalidSignature, binascii.Error, ValueError):
    sys.exit(10)
sys.exit(0)
"""


class SignatureMismatch(Exception):
    """The signature is not the key's over these bytes (altered, signed with another key, or not base64)."""


class MissingLibrary(VibrawatchError):
    """``cryptography`` is not installed beside the gateway: nothing signed can be trusted."""


def verify(public_key: str | Path, message: bytes, signature_b64: bytes) -> None:
    """Return if ``signature_b64`` (base64 Ed25519) is ``public_key``'s over ``message``; raise SignatureMismatch if
    not, ConfigError naming the key file when it is unreadable or not an Ed25519 public key."""
    key_path = Path(public_key)
    try:
        pem = key_path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{key_path}: not a readable PEM public key ({e.strerror or e})") from None
    payload = struct.pack(">III", len(pem), len(signature_b64), len(message)) + pem + signature_b64 + message
    try:
        r = subprocess.run([sys.executable, "-I", "-c", _CHILD], input=payload, capture_output=True,
                           timeout=_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise VibrawatchError(f"the signature check could not run ({e}); nothing signed is trusted") from None
    if r.returncode == _OK:
        return
    if r.returncode == _MISMATCH:
        raise SignatureMismatch()
    if r.returncode == _BAD_KEY:
        raise ConfigError(f"{key_path}: not a readable PEM public key ({r.stderr.decode(errors='replace').strip()})")
    if r.returncode == _NOT_ED25519:
        raise ConfigError(f"{key_path}: not an Ed25519 public key; make keys with `vibrawatch keys new`")
    if r.returncode == _NO_LIBRARY:
        raise MissingLibrary("checking a signature needs the 'cryptography' package: pip install 'vibrawatch[edge]'")
    last = (r.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
    raise VibrawatchError(f"the signature check failed (exit {r.returncode}: {last}); nothing signed is trusted")
