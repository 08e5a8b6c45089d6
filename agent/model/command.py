"""Remote commands over MQTT: today one, ``recalibrate`` (commission this machine again after maintenance),
sent by ``vibrawatch recalibrate`` or the monitor (docs/deploy.md, "Remote recalibration").

    receive       the signed request, retained on vibrawatch/v1/<site>/<device>/command; paho's thread only
                  queues it, the rest runs on the agent loop's thread, at every turn
    authenticate  the checks every signed request shares (signed_request): the envelope, the Ed25519 signature
                  with [agent] public_key, this site and device, an id newer than the last command acted on
                  here; then its own: the command is one this agent knows, and it has not expired
    act           the agent's ``recalibrate`` (the state file marked as `vibrawatch-agent recalibrate` marks it,
                  then ``Agent.apply`` as a reload: the commissioning starts over, no process restart)
    record        the id in ``commands.json`` beside the calibration (the retained request comes again on
                  every reconnect and restart: it is not news then), the outcome in the retained status

Only with ``[remote] recalibrate = true`` (which needs [agent] public_key and [commissioning]). A refusal
(unsigned, another key, stale, replayed, for another device, unreadable) changes nothing, is logged once per
process with its reason and goes out in the status (``event: command_refused``).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..link.topics import iso, topic
from .deploy_inbox import Subscriptions
from .signed_request import (
    AlreadyHandled,
    Kind,
    Refused,
    RequestFormatError,
    check_expiry,
    check_newer,
    check_target,
    open_envelope,
)

log = logging.getLogger("vibrawatch.command")

COMMAND_SCHEMA = "vibrawatch.command/1"
COMMAND_KIND = "command"  # the topic's last part: vibrawatch/v1/<site>/<device>/command
COMMANDS = ("recalibrate",)
RECALIBRATE = Kind("recalibrate", COMMAND_SCHEMA, "id", "sign it with `vibrawatch recalibrate --sign-key`")
STATE_FILE = "commands.json"
EVENTS = {"applied": "remote_recalibrate", "refused": "command_refused"}  # the status event of each outcome


@dataclass(frozen=True)
class RemoteSection:
    """``[remote]``: what this gateway accepts over MQTT besides deploys; off unless set."""

    recalibrate: bool = False  # a signed `vibrawatch recalibrate` starts the commissioning again


@dataclass(frozen=True)
class Command:
    """An authenticated command."""

    site: str
    device: str
    id: int
    command: str
    expires: str
    by: str = ""  # who sent it (the monitor's operator), for the log and the status
    note: str = ""  # why (e.g. "bearing replaced")


@dataclass(frozen=True)
class CommandSettings:
    """What commands need of the agent's config: this gateway, the key, where the last id is kept."""

    site: str
    device: str
    public_key: str
    state_dir: Path

    def site_device(self) -> tuple[str, str]:
        return self.site, self.device


def authenticate(payload: bytes, public_key: str | Path, here: tuple[str, str], last: int, handled: set[int],
                 now: float) -> Command:
    """Every check a command passes before this gateway acts on it."""
    r = open_envelope(payload, public_key, RECALIBRATE,
                      {"site": str, "device": str, "id": int, "command": str, "expires": str})
    cmd = Command(r["site"], r["device"], r["id"], r["command"], r["expires"], str(r.get("by") or "")[:100],
                  str(r.get("note") or "")[:200])
    if cmd.command not in COMMANDS:
        raise RequestFormatError(f"command {cmd.command!r}: this agent acts on {', '.join(COMMANDS)}", cmd.id)
    check_target(RECALIBRATE, cmd.id, (cmd.site, cmd.device), here)
    check_newer(RECALIBRATE, cmd.id, last, handled)  # the retained copy of one acted on stays silent, expired or not
    check_expiry(RECALIBRATE, cmd.id, cmd.expires, now)
    return cmd


def read_state(state_dir: Path) -> dict[str, Any]:
    """``commands.json``: the last command id acted on here and the last outcome ({} before the first)."""
    p = state_dir / STATE_FILE
    if not p.exists():
        return {}
    try:
        d = json.loads(p.read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError) as e:
        raise ConfigError(f"{p}: unreadable command state ({e}); move it away to start over") from None


def write_state(state_dir: Path, state: dict[str, Any]) -> None:
    """Replace ``commands.json`` atomically: a power cut leaves the old id or the new one."""
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / (STATE_FILE + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, state_dir / STATE_FILE)


class Commands:
    """The command topic on the agent's own MQTT connection. ``step`` at every turn of the agent's loop acts on
    what arrived: ``act(command)`` (the agent's recalibrate; an exception is a refusal with its one line), then
    ``report(event)`` with ``last`` set to the outcome the status carries."""

    def __init__(self, settings: CommandSettings, act: Callable[[Command], None],
                 report: Callable[[str], None] = lambda event: None) -> None:
        self.settings, self.act, self.report = settings, act, report
        self._queue: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.connection: Subscriptions | None = None
        self._handled: set[int] = set()
        self._refused: set[tuple[int | None, str]] = set()
        try:
            self.last: dict[str, Any] | None = read_state(settings.state_dir).get("last")
        except ConfigError as e:  # scoring goes on; every command is refused, saying why, until it is moved away
            log.error("%s", e)
            self.last = None

    @property
    def topic(self) -> str:
        return topic(self.settings.site, self.settings.device, COMMAND_KIND)

    def step(self, connection: Subscriptions | None, settings: CommandSettings) -> None:
        """One turn: follow a reload, listen on a new connection, act on what arrived."""
        if settings != self.settings:
            if self.connection is not None and settings.site_device() != self.settings.site_device():
                self.connection.unsubscribe(self.topic)
                self.connection = None
            self.settings = settings
        if connection is not None and connection is not self.connection:
            self.connection = connection  # retained: a command sent while this gateway was offline comes now
            connection.subscribe(self.topic, self._queue.put)
        while True:
            try:
                payload = self._queue.get_nowait()
            except queue.Empty:
                return
            self._receive(payload)

    def _receive(self, payload: bytes) -> None:
        s = self.settings
        if not payload:  # a retained command cleared (an empty retained message): nothing was sent
            return
        try:
            state = read_state(s.state_dir)
            last_id = state.get("last_id", 0)
            if not isinstance(last_id, int) or isinstance(last_id, bool) or last_id < 0:
                raise ConfigError(f"{s.state_dir / STATE_FILE}: last_id {last_id!r} is not a command id; move it "
                                  "away to start over")
        except ConfigError as e:  # without the last id, a replayed command cannot be told from a new one
            log.error("command refused: %s", e)
            self.last = outcome(None, "refused", str(e))  # the file is left as it is: rewriting it would forget
            self.report(EVENTS["refused"])  # every id acted on, and let old commands be replayed
            return
        try:
            cmd = authenticate(payload, s.public_key, (s.site, s.device), last_id, self._handled, time.time())
            self._handled.add(cmd.id)
            try:
                write_state(s.state_dir, {**state, "last_id": cmd.id})  # before acting: a crash does not act twice
            except OSError as e:
                raise Refused(f"recalibrate {cmd.id}: cannot record its id in {s.state_dir} ({e.strerror})",
                              cmd.id) from None
            log.warning("recalibrate %d requested remotely%s%s: this machine's commissioning starts over", cmd.id,
                        f" by {cmd.by}" if cmd.by else "", f" ({cmd.note})" if cmd.note else "")
            try:
                self.act(cmd)
            except Exception as e:  # noqa: BLE001 - any reason the agent cannot act is a refusal, in one line
                raise Refused(f"recalibrate {cmd.id} could not be applied: {str(e).splitlines()[0]}", cmd.id) from e
        except AlreadyHandled:
            return
        except Refused as e:
            if (e.request_id, str(e)) in self._refused:  # its retained copy again: reported once per process
                return
            self._refused.add((e.request_id, str(e)))
            log.warning("command %s refused: %s", e.request_id, e)
            self._record(state, outcome(e.request_id, "refused", str(e)))
            return
        reason = "requested remotely" + (f" by {cmd.by}" if cmd.by else "") + (f": {cmd.note}" if cmd.note else "")
        self._record({**state, "last_id": cmd.id}, outcome(cmd.id, "applied", reason))

    def _record(self, state: dict[str, Any], out: dict[str, Any]) -> None:
        self.last = out
        try:
            write_state(self.settings.state_dir, {**state, "last": out})
        except OSError as e:
            log.error("%s: cannot record the command's outcome (%s)", self.settings.state_dir, e.strerror)
        self.report(EVENTS[out["outcome"]])


def outcome(command_id: int | None, result: str, reason: str) -> dict[str, Any]:
    """A command's outcome as the retained status carries it (``command``)."""
    return {"id": command_id, "command": "recalibrate", "outcome": result, "reason": reason,
            "timestamp": iso(time.time())}
