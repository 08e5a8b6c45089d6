"""A deploy request, from the MQTT message to a ``Request`` this gateway may act on (agent/model/deploy.py has the
steps): the envelope, its Ed25519 signature, the target, anti-replay and the announced size, then the fetched
bytes against what the request announced. Every check has its own refusal class, so the status says which one
failed; all of it runs before a single byte of the bundle is downloaded. The envelope, signature, target and
anti-replay checks are the ones every signed request shares (signed_request).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .bundle import sha256
from .signed_request import (
    AlreadyHandled,
    Kind,
    Refused,
    Replayed,
    RequestFormatError,
    RequestSignatureError,
    WrongTarget,
    check_newer,
    check_target,
    open_envelope,
)

REQUEST_SCHEMA = "vibrawatch.deploy/1"
REQUEST_KIND, BUNDLE_KIND = "deploy", "deploy/bundle"  # the topics' last parts: .../deploy and .../deploy/bundle
DEPLOY = Kind("deploy", REQUEST_SCHEMA, "deployment", "sign it with `vibrawatch deploy --sign-key`")

# The refusals a deploy shares with every signed request (signed_request), by the names the deploy code uses.
DeployRefused = Refused
__all__ = ["AlreadyHandled", "DeployRefused", "Replayed", "RequestFormatError", "RequestSignatureError", "WrongTarget"]


class TooLarge(Refused):
    """The announced bundle is larger than [deploy] max_bundle_kb: refused before it is fetched."""


class FetchError(Refused):
    """The bundle never came, or its bytes are not the ones the request announced."""


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
def check_size(req: Request, max_bytes: int) -> None:
    """An oversized bundle is refused on the request's word, before a byte of it is downloaded."""
    if req.bundle_bytes > max_bytes:
        raise TooLarge(f"bundle of {req.bundle_bytes} bytes is larger than this gateway's limit of {max_bytes} "
                       "([deploy] max_bundle_kb); not fetched", req.deployment)


def authenticate(payload: bytes, public_key: str | Path, site: str, device: str, last: int, handled: set[int],
                 max_bytes: int) -> Request:
    """Every check a request passes before this gateway downloads anything: the shared ones (signed_request),
    then the announced size."""
    types = {"site": str, "device": str, "deployment": int, "bundle_sha256": str, "bundle_bytes": int, "version": str}
    r = open_envelope(payload, public_key, DEPLOY, types)
    req = Request(**{k: r[k] for k in types})
    check_target(DEPLOY, req.deployment, (req.site, req.device), (site, device))
    check_newer(DEPLOY, req.deployment, last, handled)
    check_size(req, max_bytes)
    return req


# -- fetch ----------------------------------------------------------------------------------------------------
def check_fetched(req: Request, data: bytes) -> None:
    """The bytes that came are the ones the signed request announced (size and sha256), or not ours yet."""
    if len(data) != req.bundle_bytes or sha256(data) != req.bundle_sha256:
        raise FetchError(f"bundle received has {len(data)} bytes and sha256 {sha256(data)[:16]}..., the request "
                         f"announced {req.bundle_bytes} bytes and {req.bundle_sha256[:16]}...", req.deployment)

