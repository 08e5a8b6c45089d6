"""`vibrawatch deploy`: send a signed bundle to one gateway or a whole site over MQTT, wait for each outcome.

Per target device, two retained QoS 1 messages (docs/deploy.md): the bundle's raw bytes on
``vibrawatch/v1/<site>/<device>/deploy/bundle``, then a signed request naming the device, a deployment id
(milliseconds since the epoch, so newer deploys have larger ids) and the bundle's size and sha256 on
``.../deploy``. Retained, so a gateway that is offline now gets both when it reconnects. The outcomes come
back in each device's retained status message; ``--all`` finds the site's devices the same way. A device whose
status says it does not accept deploys (``accepts.deploy`` false) is answered at once and sent nothing.

Two hashes, each labelled where shown: ``model_sha256`` names the model file that scores (the one the status,
``fleet`` and the monitor's page show), ``bundle_sha256`` the .tar that travels (what the gateway checks the
bytes it fetched against).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from vibrawatch.agent.errors import ConfigError
from vibrawatch.agent.link.topics import iso, topic
from vibrawatch.agent.model.bundle import MANIFEST, SIGNATURE, load_bundle, parse_manifest, read_bundle_files, sha256
from vibrawatch.agent.model.deploy_request import BUNDLE_KIND, REQUEST_KIND, REQUEST_SCHEMA

FINAL = ("applied", "rolled_back", "refused")
ACCEPTS = {"deploy": ("deploys", "[deploy] is not enabled in its config"),  # what a status's `accepts` names
           "recalibrate": ("remote recalibration", "[remote] recalibrate is not enabled in its config")}
DEFAULT_SIGN_KEY = Path("keys/vibrawatch-signing.key")
_QUIET_S = 0.5  # retained messages come right after the subscription; this long without one means all came


@dataclass(frozen=True)
class BrokerOptions:
    """Where the broker is and how to log in: the same settings as the agent's [mqtt] section."""

    url: str
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None

    def address(self) -> tuple[str, int, bool]:
        """(host, port, tls) from ``mqtt://HOST[:1883]`` or ``mqtts://HOST[:8883]``."""
        u = urlparse(self.url)
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise ConfigError(f"--broker {self.url!r}: expected mqtt://HOST:PORT or mqtts://HOST:PORT")
        tls = u.scheme == "mqtts"
        return u.hostname, u.port or (8883 if tls else 1883), tls


class Session:
    """One MQTT connection that records every status (and deploy request) of a site as it arrives."""

    def __init__(self, broker: BrokerOptions, site: str, requests: bool = False) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        host, port, tls = broker.address()
        topic(site, "x", "status")  # checks the site name
        self.site = site
        self.lock = threading.Lock()
        self.status: dict[str, dict[str, Any]] = {}
        self.requests: dict[str, dict[str, Any]] = {}
        self.outcomes: dict[str, dict[str, tuple[float, dict[str, Any]]]] = {}  # device -> outcome -> (t, deploy)
        self.commands: dict[str, dict[str, tuple[float, dict[str, Any]]]] = {}  # device -> "id:outcome" -> (t, ..)
        self.last_message = time.monotonic()
        self._connected = threading.Event()
        self._refused: str | None = None
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"vibrawatch-deploy-{time.time_ns()}",
                        protocol=mqtt.MQTTv311)
        if broker.username:
            password = broker.password_file.read_text().strip() if broker.password_file else None
            c.username_pw_set(broker.username, password)
        if tls:
            c.tls_set(ca_certs=str(broker.ca_file) if broker.ca_file else None,
                      certfile=str(broker.cert_file) if broker.cert_file else None,
                      keyfile=str(broker.key_file) if broker.key_file else None)
        filters = [(f"vibrawatch/v1/{site}/+/status", 1)]
        if requests:
            filters.append((f"vibrawatch/v1/{site}/+/deploy", 1))

        def on_connect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
            if rc.is_failure:
                self._refused = str(rc)
            else:
                client.subscribe(filters)
            self._connected.set()

        c.on_connect = on_connect
        c.on_message = self._on_message
        self.client = c
        try:
            c.connect(host, port, keepalive=30)
        except OSError as e:
            raise ConfigError(f"--broker {broker.url}: cannot connect ({e})") from None
        c.loop_start()
        if not self._connected.wait(10) or self._refused:
            self.close()
            raise ConfigError(f"--broker {broker.url}: the broker did not accept the connection "
                              f"({self._refused or 'no answer in 10 s'})")

    def _on_message(self, client: Any, userdata: Any, m: Any) -> None:
        parts = m.topic.split("/")
        try:
            payload = json.loads(m.payload)
        except ValueError:
            return
        device, kind = parts[3], parts[4]
        now = time.monotonic()
        with self.lock:
            self.last_message = now
            if kind == "deploy":
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    self.requests[device] = json.loads(payload["request"])
                return
            self.status[device] = payload
            d = payload.get("deploy")
            if isinstance(d, dict) and d.get("outcome"):
                self.outcomes.setdefault(device, {}).setdefault(f"{d.get('deployment')}:{d['outcome']}", (now, d))
            c = payload.get("command")
            if isinstance(c, dict) and c.get("outcome"):
                self.commands.setdefault(device, {}).setdefault(f"{c.get('id')}:{c['outcome']}", (now, c))

    def settle(self, limit: float = 5.0) -> None:
        """Wait until the retained messages have come (no message for a moment)."""
        deadline = time.monotonic() + limit
        time.sleep(_QUIET_S)
        while time.monotonic() < deadline:
            with self.lock:
                quiet = time.monotonic() - self.last_message
            if quiet >= _QUIET_S:
                return
            time.sleep(0.05)

    def outcome(self, device: str, deployment: int) -> dict[str, tuple[float, dict[str, Any]]]:
        """Outcome -> (when seen, deploy fields) of ``deployment`` on ``device``."""
        with self.lock:
            seen = self.outcomes.get(device, {})
            return {k.split(":", 1)[1]: v for k, v in seen.items() if k.split(":", 1)[0] == str(deployment)}

    def command(self, device: str, command_id: int) -> dict[str, tuple[float, dict[str, Any]]]:
        """Outcome -> (when seen, command fields) of the command ``command_id`` on ``device``."""
        with self.lock:
            seen = self.commands.get(device, {})
            return {k.split(":", 1)[1]: v for k, v in seen.items() if k.split(":", 1)[0] == str(command_id)}

    def refusal(self, device: str, what: str) -> str | None:
        """Why ``device`` will not act on ``what`` (deploy, recalibrate), from its retained status, at once; None
        when it does, or when its status cannot tell (an older agent, or an offline one: the request waits)."""
        with self.lock:
            accepts = self.status.get(device, {}).get("accepts")
        if not isinstance(accepts, dict) or accepts.get(what) is not False:
            return None
        return f"{device} does not accept {ACCEPTS[what][0]}: {ACCEPTS[what][1]}"

    def publish(self, topic_name: str, payload: bytes) -> None:
        info = self.client.publish(topic_name, payload, qos=1, retain=True)
        info.wait_for_publish(timeout=30)
        if not info.is_published():
            raise ConfigError(f"the broker did not acknowledge {topic_name} within 30 s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def bundle_bytes(path: Path) -> bytes:
    """What travels: a .tar as it is, a bundle directory packed into a tar in memory (fixed metadata)."""
    if path.is_file():
        return path.read_bytes()
    files = read_bundle_files(path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def check_bundle(path: Path, sign_key: Path) -> dict[str, Any]:
    """Refuse here what every gateway would refuse: an unsigned bundle, one signed with another key than the
    request, one that fails the agent's own checks. Returns the manifest."""
    files = read_bundle_files(path)
    manifest = parse_manifest(path, files[MANIFEST])
    if SIGNATURE not in files:
        raise ConfigError(f"{path}: unsigned bundle; gateways accept only signed ones: "
                          f"`vibrawatch convert RUN --out {path.name} --sign-key {sign_key}`")
    from cryptography.exceptions import InvalidSignature

    try:
        _private_key(sign_key).public_key().verify(base64.b64decode(files[SIGNATURE]), files[MANIFEST])
    except (InvalidSignature, ValueError):
        raise ConfigError(f"{path}: the bundle is not signed with {sign_key}; gateways holding its public key "
                          "would refuse it") from None
    load_bundle(path)  # layout, checksums and the golden self-test, on this machine first
    return manifest


def _private_key(sign_key: Path) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if not sign_key.is_file():
        raise ConfigError(f"{sign_key}: no signing key here; pass --sign-key (made by `vibrawatch keys new`)")
    try:
        key = load_pem_private_key(sign_key.read_bytes(), password=None)
    except ValueError as e:
        raise ConfigError(f"{sign_key}: not a readable unencrypted PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{sign_key}: not an Ed25519 key; make one with `vibrawatch keys new`")
    return key


def make_request(site: str, device: str, deployment: int, data: bytes, version: str, sign_key: Path) -> bytes:
    """The signed envelope ``{"v": 1, "request": "<JSON text>", "signature": "<base64 Ed25519>"}``."""
    from vibrawatch.agent.model.signing import sign

    request = json.dumps({"schema": REQUEST_SCHEMA, "site": site, "device": device, "deployment": deployment,
                          "bundle_sha256": sha256(data), "bundle_bytes": len(data), "version": version,
                          "created": iso(time.time())}, separators=(",", ":"))
    return json.dumps({"v": 1, "request": request, "signature": sign(request.encode(), sign_key).decode()}).encode()


def deploy(bundle: Path, broker: BrokerOptions, site: str, devices: list[str], all_devices: bool, sign_key: Path,
           wait_s: float, deployment: int | None = None) -> dict[str, Any]:
    """Publish the bundle and a signed request to each target, wait up to ``wait_s`` for every final outcome."""
    if bool(devices) == all_devices:
        raise ConfigError("name the targets: --device DEV (repeatable) or --all")
    manifest = check_bundle(bundle, sign_key)
    data = bundle_bytes(bundle)
    deployment = deployment or time.time_ns() // 1_000_000
    session = Session(broker, site)
    try:
        session.settle()
        targets = sorted(session.status) if all_devices else list(dict.fromkeys(devices))
        if not targets:
            raise ConfigError(f"--all: no device of site {site!r} has a status on {broker.url}; name them with "
                              "--device")
        before = {d: dict(session.status.get(d, {})) for d in targets}
        refused = {d: why for d in targets if (why := session.refusal(d, "deploy")) is not None}
        sent = [d for d in targets if d not in refused]  # nothing is sent to a device that says it would not act
        t0 = time.monotonic()
        for d in sent:
            session.publish(topic(site, d, BUNDLE_KIND), data)
            session.publish(topic(site, d, REQUEST_KIND),
                            make_request(site, d, deployment, data, str(manifest["version"]), sign_key))
        deadline = t0 + wait_s
        while sent and time.monotonic() < deadline and not all(
                set(session.outcome(d, deployment)) & set(FINAL) for d in sent):
            time.sleep(0.05)
        results = [_not_accepted(d, refused[d], before[d]) if d in refused else
                   _result(d, session.outcome(d, deployment), before[d], session.status.get(d, {}), t0, wait_s)
                   for d in targets]
    finally:
        session.close()
    return {"deployment": deployment, "site": site, "bundle": str(bundle), "version": manifest["version"],
            "model_sha256": manifest["files"]["model.tflite"], "bundle_sha256": sha256(data),
            "bundle_bytes": len(data), "ok": all(r["outcome"] == "applied" for r in results), "results": results}


def _not_accepted(device: str, reason: str, before: dict[str, Any]) -> dict[str, Any]:
    """A device whose status says it does not accept deploys: answered at once, nothing sent to it."""
    return {"device": device, "from": before.get("model"), "to": None, "outcome": "not_accepted", "reason": reason,
            "seconds": None, "seconds_verified": None}


def _result(device: str, seen: dict[str, tuple[float, dict[str, Any]]], before: dict[str, Any],
            now: dict[str, Any], t0: float, wait_s: float) -> dict[str, Any]:
    final = next((o for o in FINAL if o in seen), None)
    last = final or next((o for o in ("verified", "received") if o in seen), None)
    if last is None:
        state = now.get("state", "unknown")
        reason = (f"no answer in {wait_s:g} s (device {state}); the request stays retained and is applied when "
                  "it reconnects")
        return {"device": device, "from": before.get("model"), "to": None, "outcome": "pending", "reason": reason,
                "seconds": None, "seconds_verified": None}
    t, d = seen[last]
    verified = seen.get("verified")
    return {"device": device, "from": d.get("from") or before.get("model"), "to": d.get("to"),
            "outcome": last if final else f"pending ({last})", "reason": d.get("reason", ""),
            "seconds": round(t - t0, 3), "seconds_verified": round(verified[0] - t0, 3) if verified else None}


def site_status(broker: BrokerOptions, site: str) -> list[dict[str, Any]]:
    """Each device's state, running model, last deploy outcome and any request it has not answered yet."""
    session = Session(broker, site, requests=True)
    try:
        session.settle()
        with session.lock:
            status, requests = dict(session.status), dict(session.requests)
    finally:
        session.close()
    rows = []
    for device in sorted(set(status) | set(requests)):
        s, r = status.get(device, {}), requests.get(device)
        d = s.get("deploy") or {}
        pending = r["deployment"] if r and r.get("deployment", 0) > (d.get("deployment") or 0) else None
        rows.append({"device": device, "state": s.get("state"), "model": s.get("model"),
                     "model_sha256": s.get("model_sha256"), "deployment": d.get("deployment"),
                     "outcome": d.get("outcome"), "reason": d.get("reason"), "when": d.get("timestamp"),
                     "pending": pending})
    return rows


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain text table: one line per row, columns as wide as their longest cell."""
    cells = [[("-" if r.get(c) is None else str(r[c])) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)

