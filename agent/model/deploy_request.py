"""A deploy request, from the MQTT message to a ``Request`` this gateway may act on (agent/model/deploy.py has the
steps): the envelope, its Ed25519 signature, the target, anti-replay and the announced size, then the fetched
bytes against what the request announced. Every check has its own refusal class, so the status says which one
failed; all of it runs before a single byte of the bundle is downloaded.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, VibrawatchError
from .bundle import sha256

REQUEST_SCHEMA = "vibrawatch.deploy/1"
REQUEST_KIND, BUNDLE_KIND = "deploy", "deploy/bundle"  # the topics' last parts: .../deploy and .../deploy/bundle


# -- errors: one per refusal --------------------------------------------------------------------------------
class DeployRefused(VibrawatchError):
    """A deploy request this gateway will not act on; the subclass says which check failed."""

    def __init__(self, message: str, deployment: int | None = None) -> None:
        super().__init__(message)
        self.deployment = deployment


class RequestFormatError(DeployRefused):
    """The message is not a deploy request of a schema this agent reads."""


class RequestSignatureError(DeployRefused):
    """Unsigned, or not signed with the key in [agent] public_key."""


class WrongTarget(DeployRefused):
    """Signed, but for another site or device."""


class Replayed(DeployRefused):
    """Signed, but not newer than the last deployment applied here: a replayed or older request."""


class TooLarge(DeployRefused):
    """The announced bundle is larger than [deploy] max_bundle_kb: refused before it is fetched."""


class FetchError(DeployRefused):
    """The bundle never came, or its bytes are not the ones the request announced."""


class AlreadyHandled(Exception):
    """The retained copy of a deployment this agent already acted on: not news, not a refusal."""


@dataclass(frozen=True)
class Request:
    """An authenticated deploy request."""

    site: str
    device: str
    deployment: int
    bundle_sha256: str
    bundle_bytes: int
    version: str


# -- receive and authenticate ------------------------------------------------------------------------------
def read_envelope(payload: bytes) -> tuple[bytes, bytes | None]:
    """The request's exact bytes and its signature (None when unsigned) from ``{"v":1,"request":..,"signature":..}``."""
    try:
        env = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestFormatError(f"deploy message is not JSON ({e})") from None
    if not isinstance(env, dict) or env.get("v") != 1 or not isinstance(env.get("request"), str):
        raise RequestFormatError('deploy message: expected {"v": 1, "request": "<JSON text>", "signature": "<base64>"}')
    sig = env.get("signature")
    if sig is not None and not isinstance(sig, str):
        raise RequestFormatError("deploy message: field 'signature' must be a base64 string")
    return env["request"].encode(), None if sig is None else sig.encode()


def claimed_deployment(request: bytes) -> int | None:
    """The deployment id a request claims, for reporting a refusal; not trusted for anything else."""
    try:
        d = json.loads(request).get("deployment")
    except (ValueError, AttributeError):
        return None
    return d if isinstance(d, int) and not isinstance(d, bool) else None


def verify_request_signature(request: bytes, signature: bytes | None, public_key: str | Path) -> None:
    """Ed25519 over the request's exact bytes, with the key gateways already use for bundle signatures."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    claimed = claimed_deployment(request)
    if signature is None:
        raise RequestSignatureError("deploy request is unsigned; sign it with `vibrawatch deploy --sign-key`", claimed)
    try:
        key = load_pem_public_key(Path(public_key).read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{public_key}: not a readable PEM public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{public_key}: not an Ed25519 public key; make keys with `vibrawatch keys new`")
    try:
        key.verify(base64.b64decode(signature, validate=True), request)
    except (InvalidSignature, ValueError):
        raise RequestSignatureError(
            f"deploy request signature does not verify with {public_key}: signed with another key, or altered",
            claimed) from None


def parse_request(request: bytes) -> Request:
    """The signed request's fields, each checked for type; names the field that is wrong."""
    try:
        r = json.loads(request)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestFormatError(f"deploy request is not JSON ({e})") from None
    if not isinstance(r, dict) or r.get("schema") != REQUEST_SCHEMA:
        raise RequestFormatError(f"deploy request schema {r.get('schema') if isinstance(r, dict) else r!r}; this "
                                 f"agent reads {REQUEST_SCHEMA!r}")
    types = {"site": str, "device": str, "deployment": int, "bundle_sha256": str, "bundle_bytes": int, "version": str}
    for key, kind in types.items():
        if not isinstance(r.get(key), kind) or isinstance(r.get(key), bool):
            raise RequestFormatError(f"deploy request field {key!r} is {r.get(key)!r}, expected {kind.__name__}",
                                     claimed_deployment(request))
    return Request(**{k: r[k] for k in types})


def check_target(req: Request, site: str, device: str) -> None:
    """A request signed for another gateway of the fleet is not for this one."""
    if (req.site, req.device) != (site, device):
        raise WrongTarget(f"deploy request is for {req.site}/{req.device}, this gateway is {site}/{device}",
                          req.deployment)


def check_newer(req: Request, last: int, handled: set[int]) -> None:
    """Anti-replay: an older deployment is refused; the retained copy of one already handled is not news."""
    if req.deployment == last or req.deployment in handled:
        raise AlreadyHandled
    if req.deployment < last:
        raise Replayed(f"deployment {req.deployment} is older than deployment {last} applied here: a replayed or "
                       "out-of-date request", req.deployment)


def check_size(req: Request, max_bytes: int) -> None:
    """An oversized bundle is refused on the request's word, before a byte of it is downloaded."""
    if req.bundle_bytes > max_bytes:
        raise TooLarge(f"bundle of {req.bundle_bytes} bytes is larger than this gateway's limit of {max_bytes} "
                       "([deploy] max_bundle_kb); not fetched", req.deployment)


def authenticate(payload: bytes, public_key: str | Path, site: str, device: str, last: int, handled: set[int],
                 max_bytes: int) -> Request:
    """Every check a request passes before this gateway downloads anything."""
    request, signature = read_envelope(payload)
    verify_request_signature(request, signature, public_key)
    req = parse_request(request)
    check_target(req, site, device)
    check_newer(req, last, handled)
    check_size(req, max_bytes)
    return req


# -- fetch ----------------------------------------------------------------------------------------------------
def check_fetched(req: Request, data: bytes) -> None:
    """The bytes that came are the ones the signed request announced (size and sha256), or not ours yet."""
    if len(data) != req.bundle_bytes or sha256(data) != req.bundle_sha256:
        raise FetchError(f"bundle received has {len(data)} bytes and sha256 {sha256(data)[:16]}..., the request "
                         f"announced {req.bundle_bytes} bytes and {req.bundle_sha256[:16]}...", req.deployment)

