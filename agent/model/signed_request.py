"""The one verifier of signed requests that come over MQTT: deploys (``deploy_request``) and remote commands
(``command``) share the envelope, the Ed25519 signature with [agent] public_key, the target and the anti-replay
id, so a fix to any of them holds for both.

A request travels as ``{"v": 1, "request": "<JSON text>", "signature": "<base64 Ed25519 over that text>"}``.
Each kind (``Kind``) names its schema and the field that carries its id (newer requests have larger ids); each
check has its own refusal class, so the status says which one failed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import VibrawatchError
from ..link.topics import iso
from . import ed25519


@dataclass(frozen=True)
class Kind:
    """What differs between kinds of signed request: how messages name it, its schema and its id field."""

    name: str  # "deploy", "recalibrate": the first word of every refusal
    schema: str
    id_field: str  # "deployment", "id"
    sign_hint: str  # how to sign one, for the refusal of an unsigned request


class Refused(VibrawatchError):
    """A signed request this gateway will not act on; the subclass says which check failed."""

    def __init__(self, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id

    @property
    def deployment(self) -> int | None:
        """A deploy's id (its ``deployment``), by the name the deploy code uses."""
        return self.request_id


class RequestFormatError(Refused):
    """The message is not a request of a schema this agent reads."""


class RequestSignatureError(Refused):
    """Unsigned, or not signed with the key in [agent] public_key."""


class WrongTarget(Refused):
    """Signed, but for another site or device."""


class Replayed(Refused):
    """Signed, but not newer than the last request of its kind acted on here: a replayed or older request."""


class Expired(Refused):
    """Signed, but past the expiry time it carries: a stale request."""


class AlreadyHandled(Exception):
    """The retained copy of a request this agent already acted on: not news, not a refusal."""


def read_envelope(payload: bytes, kind: Kind) -> tuple[bytes, bytes | None]:
    """The request's exact bytes and its signature (None when unsigned) from ``{"v":1,"request":..,"signature":..}``."""
    try:
        env = json.loads(payload.decode("utf-8"))  # UTF-8 only (RFC 8259): json's own guess reads binary as UTF-16
    except UnicodeDecodeError:
        raise RequestFormatError(f"{kind.name} message is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise RequestFormatError(f"{kind.name} message is not JSON ({e})") from None
    if not isinstance(env, dict) or env.get("v") != 1 or not isinstance(env.get("request"), str):
        raise RequestFormatError(f'{kind.name} message: expected {{"v": 1, "request": "<JSON text>", '
                                 '"signature": "<base64>"}')
    sig = env.get("signature")
    if sig is not None and not isinstance(sig, str):
        raise RequestFormatError(f"{kind.name} message: field 'signature' must be a base64 string")
    return env["request"].encode(), None if sig is None else sig.encode()


def claimed_id(request: bytes, kind: Kind) -> int | None:
    """The id a request claims, for reporting a refusal; not trusted for anything else."""
    try:
        d = json.loads(request).get(kind.id_field)
    except (ValueError, AttributeError):
        return None
    return d if isinstance(d, int) and not isinstance(d, bool) else None


def verify_signature(request: bytes, signature: bytes | None, public_key: str | Path, kind: Kind) -> None:
    """Ed25519 over the request's exact bytes, with the key gateways already use for bundle signatures."""
    claimed = claimed_id(request, kind)
    if signature is None:
        raise RequestSignatureError(f"{kind.name} request is unsigned; {kind.sign_hint}", claimed)
    try:
        ed25519.verify(public_key, request, signature)
    except ed25519.SignatureMismatch:
        raise RequestSignatureError(
            f"{kind.name} request signature does not verify with {public_key}: signed with another key, or altered",
            claimed) from None


def parse_fields(request: bytes, kind: Kind, types: dict[str, type]) -> dict[str, Any]:
    """The signed request's fields, each checked for type; names the field that is wrong."""
    try:
        r = json.loads(request)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestFormatError(f"{kind.name} request is not JSON ({e})") from None
    if not isinstance(r, dict) or r.get("schema") != kind.schema:
        raise RequestFormatError(f"{kind.name} request schema {r.get('schema') if isinstance(r, dict) else r!r}; "
                                 f"this agent reads {kind.schema!r}")
    for key, t in types.items():
        if not isinstance(r.get(key), t) or isinstance(r.get(key), bool):
            raise RequestFormatError(f"{kind.name} request field {key!r} is {r.get(key)!r}, expected {t.__name__}",
                                     claimed_id(request, kind))
    return r


def check_target(kind: Kind, request_id: int, target: tuple[str, str], here: tuple[str, str]) -> None:
    """A request signed for another gateway of the fleet is not for this one."""
    if target != here:
        raise WrongTarget(f"{kind.name} request is for {target[0]}/{target[1]}, this gateway is {here[0]}/{here[1]}",
                          request_id)


def check_newer(kind: Kind, request_id: int, last: int, handled: set[int]) -> None:
    """Anti-replay: an older request is refused; the retained copy of one already handled is not news."""
    if request_id == last or request_id in handled:
        raise AlreadyHandled
    if request_id < last:
        raise Replayed(f"{kind.name} {kind.id_field} {request_id} is older than {kind.id_field} {last} acted on here: "
                       "a replayed or out-of-date request", request_id)


def check_expiry(kind: Kind, request_id: int, expires: str, now: float) -> None:
    """A request carries its own expiry (ISO 8601): a stale one is refused, whoever kept it until now."""
    try:
        t = datetime.fromisoformat(expires.replace("Z", "+00:00"))
    except ValueError:
        raise RequestFormatError(f"{kind.name} request field 'expires' is {expires!r}, expected an ISO 8601 time",
                                 request_id) from None
    if t.tzinfo is None:
        raise RequestFormatError(f"{kind.name} request field 'expires' {expires!r} has no time zone", request_id)
    if t.timestamp() <= now:
        raise Expired(f"{kind.name} request {request_id} expired at {expires} (this gateway's clock: "
                      f"{iso(now)}): a stale request",
                      request_id)


def open_envelope(payload: bytes, public_key: str | Path, kind: Kind, types: dict[str, type]) -> dict[str, Any]:
    """The envelope read, its signature verified and its fields typed: every check a kind shares before its own."""
    request, signature = read_envelope(payload, kind)
    verify_signature(request, signature, public_key, kind)
    return parse_fields(request, kind, types)
