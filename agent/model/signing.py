"""The signing side of ``signed_request``: Ed25519 signatures with the private key made by `vibrawatch keys new`,
and the signed envelope of a remote command. Here, beside the verifier, so that every sender (`vibrawatch
recalibrate` and `deploy` on the workstation, the monitor's close form) makes exactly what gateways check.

The gateway itself never signs: nothing on it imports this module.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..link.topics import iso, topic
from .command import COMMAND_KIND, COMMAND_SCHEMA

DEFAULT_EXPIRES_S = 24 * 3600.0  # long enough for a gateway powered off during the maintenance to come back


def load_private_key(private_key: str | Path) -> Any:
    """The Ed25519 private key in ``private_key``, checked: unencrypted PEM, Ed25519, readable by its owner only.
    A ConfigError names the file and what is wrong."""
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
    return key


def sign(data: bytes, private_key: str | Path) -> bytes:
    """Base64 Ed25519 signature of ``data`` with a key made by `vibrawatch keys new`."""
    return base64.b64encode(load_private_key(private_key).sign(data))


def envelope(request: str, private_key: str | Path) -> bytes:
    """``{"v": 1, "request": "<JSON text>", "signature": "<base64 Ed25519>"}``: what ``read_envelope`` reads."""
    return json.dumps({"v": 1, "request": request, "signature": sign(request.encode(), private_key).decode()}).encode()


def command_topic(site: str, device: str) -> str:
    """``vibrawatch/v1/<site>/<device>/command`` (checks both names)."""
    return topic(site, device, COMMAND_KIND)


def make_command(site: str, device: str, command_id: int, sign_key: str | Path,
                 expires_s: float = DEFAULT_EXPIRES_S, note: str = "", by: str = "", now: float | None = None) -> bytes:
    """The signed envelope of a ``recalibrate`` request for ``site``/``device`` that expires ``expires_s`` after
    ``now``; ``note`` (why) and ``by`` (who) go into the gateway's log and status."""
    t = time.time() if now is None else now
    request = json.dumps({"schema": COMMAND_SCHEMA, "command": "recalibrate", "site": site, "device": device,
                          "id": command_id, "created": iso(t), "expires": iso(t + expires_s),
                          **({"note": note} if note else {}), **({"by": by} if by else {})}, separators=(",", ":"))
    return envelope(request, sign_key)
