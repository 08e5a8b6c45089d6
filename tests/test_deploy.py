"""Model deploys end to end: a real Mosquitto, agents run as gateways run them (`vibrawatch-agent run` in
subprocesses, TensorFlow unimportable), the real `vibrawatch deploy` command, real signed bundles."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from conftest import ROOT, cli
from jsonschema import Draft202012Validator
from mosquitto import Broker
from paho.mqtt.enums import CallbackAPIVersion
from test_agent_e2e import agent_command, gateway_env
from typer.testing import CliRunner

from vibrawatch.agent.model.bundle import MANIFEST, SIGNATURE, load_bundle, read_bundle_files
from vibrawatch.agent.model.deploy_state import CRASH_AT
from vibrawatch.agent.model.signing import sign
from vibrawatch.convert.bundle import write_bundle
from vibrawatch.convert.cli import app
from vibrawatch.convert.deploy import make_request
from vibrawatch.convert.keys import PUBLIC_NAME, new_keypair

SITE = "plant1"


# -- bundles made for the tests --------------------------------------------------------------------------------
def resign(src: Path, out: Path, key: Path | None, edit: Callable[[dict], None] | None = None) -> Path:
    """``src`` with its manifest edited and signed again with ``key`` (None: unsigned), as a .tar."""
    files = read_bundle_files(src)
    manifest = json.loads(files[MANIFEST])
    if edit is not None:
        edit(manifest)
    files = {n: d for n, d in files.items() if n != SIGNATURE}
    files[MANIFEST] = json.dumps(manifest, indent=1).encode()
    if key is not None:
        files[SIGNATURE] = sign(files[MANIFEST], key)
    write_bundle(files, out)
    return out


def sha_file(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def model_sha(p: Path) -> str:
    return json.loads(read_bundle_files(p)[MANIFEST])["files"]["model.tflite"]


@pytest.fixture(scope="module")
def bundles(tiny_run: Path, tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """old: the tiny float32 bundle, signed; new: the same run converted again as float16 (another model file),
    signed; broken: old with a scaler that sends every live window past float32 (passes verification and its
    golden self-test, which start after the scaler; every live window scores NaN/inf), signed; big: old padded
    past the test agents' size limit, signed; unsigned: new without its signature. (A window one frame shorter
    than the model's input no longer verifies: the golden windows' shape is checked against it.)"""
    d = tmp_path_factory.mktemp("deploy-bundles")
    priv, _ = new_keypair(d / "keys")
    out = {"key": priv, "pub": d / "keys" / PUBLIC_NAME}
    out["old"] = resign(tiny_bundle, d / "old.tar", priv)
    cli("convert", tiny_run, "--out", d / "new.tar", "--quantize", "float16", "--force", "--sign-key", priv)
    out["new"] = d / "new.tar"

    def broken(m: dict) -> None:
        m["scaler"]["scale"] = [v * 1e300 for v in m["scaler"]["scale"]]
        m["version"] += "-broken"

    def padded(m: dict) -> None:
        m["padding"] = "x" * 400_000
        m["version"] += "-big"

    out["broken"] = resign(tiny_bundle, d / "broken.tar", priv, broken)
    out["big"] = resign(tiny_bundle, d / "big.tar", priv, padded)
    out["unsigned"] = resign(out["new"], d / "unsigned.tar", None)
    assert model_sha(out["old"]) != model_sha(out["new"])
    load_bundle(out["broken"], out["pub"])  # verifies: the failure only shows on live windows
    return out


# -- a broker, agents, a watcher ---------------------------------------------------------------------------------
@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[Broker]:
    (tmp_path / "broker").mkdir()
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


class Watcher:
    """Every status and score of the site (not the binary bundles), with arrival order."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, str, dict]] = []
        self._lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-watch-{time.time_ns()}")
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(f"vibrawatch/v1/{SITE}/+/+", qos=1)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_message(self, c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        _, _, _, device, kind = m.topic.split("/")
        if kind in ("status", "score"):
            with self._lock:
                self.messages.append((device, kind, json.loads(m.payload)))

    def of(self, device: str, kind: str) -> list[dict]:
        with self._lock:
            return [p for d, k, p in self.messages if d == device and k == kind]

    def wait(self, what: str, cond: Callable[[], object], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def outcome(self, device: str, deployment: int, outcome: str, timeout: float = 90) -> dict:
        def find() -> dict | None:
            return next((s["deploy"] for s in self.of(device, "status") if s.get("deploy", {}).get("deployment")
                         == deployment and s["deploy"]["outcome"] == outcome), None)

        self.wait(f"{device}: deployment {deployment} {outcome}", find, timeout)
        got = find()
        assert got is not None
        return got

    def scores_with(self, device: str, sha: str, after: int = 0) -> list[dict]:
        return [p for p in self.of(device, "score")[after:] if p.get("model_sha256") == sha]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture()
def watcher(broker: Broker) -> Iterator[Watcher]:
    w = Watcher(broker.port)
    yield w
    w.close()


class Agent:
    """One gateway: its config, state directory and log; started as systemd would start it."""

    def __init__(self, root: Path, port: int, device: str, bundle: Path, pub: Path, max_kb: int = 1024,
                 probation: int = 20, budget_ms: float = 250.0, deploy: bool = True, extra: str = "") -> None:
        self.device, self.dir = device, root / device
        self.dir.mkdir(parents=True)
        self.state = self.dir / "state"
        self.cfg = self.dir / "agent.toml"
        self.cfg.write_text(f'''
[agent]
site = "{SITE}"
device = "{device}"
bundle = "{bundle}"
public_key = "{pub}"
spool = "{self.dir / 'spool.sqlite'}"

[source]
kind = "simulator"
snapshots = 100000
speed = 600

[mqtt]
host = "127.0.0.1"
port = {port}
max_backoff_s = 1

[deploy]
enabled = {'true' if deploy else 'false'}
state_dir = "{self.state}"
max_bundle_kb = {max_kb}
probation_windows = {probation}
latency_budget_ms = {budget_ms}
{extra}''')
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self, env: dict[str, str] | None = None) -> Agent:
        self.runs += 1
        self.log = self.dir / f"agent-{self.runs}.log"
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(agent_command("run", "--config", str(self.cfg)), cwd=ROOT,
                                         env={**gateway_env(self.dir), **(env or {})}, stdout=fh,
                                         stderr=subprocess.STDOUT)
        return self

    def logged(self, text: str) -> bool:
        return text in self.log.read_text()

    def current(self) -> Path | None:
        p = self.state / "current"
        return p.resolve() if p.is_symlink() else None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> str:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        return self.log.read_text()


@pytest.fixture()
def agents(tmp_path: Path) -> Iterator[list[Agent]]:
    running: list[Agent] = []
    yield running
    for a in running:
        a.stop()


def deploy_cli(*args: object) -> tuple[int, str]:
    """`vibrawatch deploy ...` as a user runs it; (exit code, stdout alone with --json, else all output)."""
    r = CliRunner().invoke(app, ["deploy", *[str(a) for a in args]], catch_exceptions=False)
    return r.exit_code, r.stdout if "--json" in args else r.output


def publish(port: int, device: str, envelope: bytes, bundle: bytes | None = None) -> None:
    """A deploy published by hand (what a tampered or replayed request looks like on the wire)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{time.time_ns()}")
    c.connect("127.0.0.1", port)
    c.loop_start()
    if bundle is not None:
        c.publish(f"vibrawatch/v1/{SITE}/{device}/deploy/bundle", bundle, qos=1, retain=True).wait_for_publish(10)
    c.publish(f"vibrawatch/v1/{SITE}/{device}/deploy", envelope, qos=1, retain=True).wait_for_publish(10)
    c.loop_stop()
    c.disconnect()


def snapshot(d: Path) -> dict[str, str]:
    """Every file's sha256 and every link's target under ``d``: what 'nothing changed on disk' compares."""
    out = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        out[rel] = f"-> {os.readlink(p)}" if p.is_symlink() else sha_file(p) if p.is_file() else "dir"
    return out


def online(w: Watcher, device: str, sha: str) -> None:
    w.wait(f"{device} scoring with {sha[:8]}", lambda: w.scores_with(device, sha))


# -- the tests -----------------------------------------------------------------------------------------------------
def test_good_bundle_to_two_agents_applies_on_both_and_scores_switch_model(
        broker: Broker, watcher: Watcher, agents: list[Agent], bundles: dict[str, Path], tmp_path: Path) -> None:
    old, new = model_sha(bundles["old"]), model_sha(bundles["new"])
    for device in ("press7", "press8"):
        agents.append(Agent(tmp_path, broker.port, device, bundles["old"], bundles["pub"]).start())
    for a in agents:
        online(watcher, a.device, old)
    code, out = deploy_cli(bundles["new"], "--broker", f"mqtt://127.0.0.1:{broker.port}", "--site", SITE, "--all",
                           "--sign-key", bundles["key"], "--wait", 120, "--json")
    assert code == 0, out
    report = json.loads(out)
    assert [r["device"] for r in report["results"]] == ["press7", "press8"]
    assert report["model_sha256"] == new and report["bundle_sha256"] == sha_file(bundles["new"])  # both, labelled
    new_version = load_bundle(bundles["new"]).version
    for r in report["results"]:
        assert r["outcome"] == "applied" and r["to"] == new_version and r["from"] == load_bundle(bundles["old"]).version
    for a in agents:
        online(watcher, a.device, new)
        assert a.current() == a.state / "bundles" / f"{sha_file(bundles['new'])}.tar"
        assert a.proc is not None and a.proc.poll() is None
        assert not a.logged("blocked by the test")  # deploys need no TensorFlow, typer or workstation code
    for kind in ("score", "status"):  # the documented payloads, deploy fields included
        validator = Draft202012Validator(json.loads((ROOT / "agent" / "link" / "schemas" / f"{kind}.json").read_text()))
        for a in agents:
            for payload in watcher.of(a.device, kind)[-50:]:
                validator.validate(payload)
    code, out = deploy_cli("status", "--broker", f"mqtt://127.0.0.1:{broker.port}", "--site", SITE, "--json")
    assert code == 0, out
    rows = json.loads(out)
    assert [(r["device"], r["outcome"], r["deployment"], r["model"], r["model_sha256"]) for r in rows] == [
        (d, "applied", report["deployment"], new_version, new) for d in ("press7", "press8")]  # the same model hash
    assert all(s["accepts"] == {"deploy": True, "recalibrate": False} for a in agents
               for s in watcher.of(a.device, "status") if s["state"] != "offline")


def test_bundle_that_fails_on_live_windows_rolls_back_and_old_model_keeps_scoring(
        broker: Broker, watcher: Watcher, agents: list[Agent], bundles: dict[str, Path], tmp_path: Path) -> None:
    old = model_sha(bundles["old"])
    a = Agent(tmp_path, broker.port, "press7", bundles["old"], bundles["pub"]).start()
    agents.append(a)
    online(watcher, "press7", old)
    code, out = deploy_cli(bundles["broken"], "--broker", f"mqtt://127.0.0.1:{broker.port}", "--site", SITE,
                           "--device", "press7", "--sign-key", bundles["key"], "--wait", 120)
    assert code == 1, out
    line = next(ln for ln in out.splitlines() if ln.startswith("press7"))
    assert "rolled_back" in line and "failed on real windows" in line
    n = len(watcher.of("press7", "score"))
    watcher.wait("old-model scores after the rollback", lambda: watcher.scores_with("press7", old, after=n))
    assert a.proc is not None and a.proc.poll() is None
    assert a.current() == bundles["old"].resolve()  # `current` names the previous bundle again
    assert a.logged("rolled_back: failed on real windows")  # one ERROR line in the agent log says why


def test_model_over_its_latency_budget_on_probation_rolls_back(
        broker: Broker, watcher: Watcher, agents: list[Agent], bundles: dict[str, Path], tmp_path: Path) -> None:
    old = model_sha(bundles["old"])
    # a budget no model meets: the probation must measure real windows and say so
    a = Agent(tmp_path, broker.port, "press7", bundles["old"], bundles["pub"], budget_ms=1e-6).start()
    agents.append(a)
    online(watcher, "press7", old)
    code, out = deploy_cli(bundles["new"], "--broker", f"mqtt://127.0.0.1:{broker.port}", "--site", SITE,
                           "--device", "press7", "--sign-key", bundles["key"], "--json")
    assert code == 1, out
    r = json.loads(out)["results"][0]
    assert r["outcome"] == "rolled_back" and "mean inference" in r["reason"] and "budget 1e-06 ms" in r["reason"]
    n = len(watcher.of("press7", "score"))
    watcher.wait("old-model scores after the rollback", lambda: watcher.scores_with("press7", old, after=n))
    assert a.current() == bundles["old"].resolve()


def test_refused_requests_are_reported_and_change_nothing_on_disk(
        broker: Broker, watcher: Watcher, agents: list[Agent], bundles: dict[str, Path], tmp_path: Path) -> None:
    sizes = [bundles[k].stat().st_size for k in ("old", "new")]
    limit_kb = max(sizes) // 1024 + 64
    assert bundles["big"].stat().st_size > limit_kb * 1024
    new = model_sha(bundles["new"])
    a = Agent(tmp_path, broker.port, "press7", bundles["old"], bundles["pub"], max_kb=limit_kb).start()
    agents.append(a)
    online(watcher, "press7", model_sha(bundles["old"]))
    url = f"mqtt://127.0.0.1:{broker.port}"
    code, out = deploy_cli(bundles["new"], "--broker", url, "--site", SITE, "--device", "press7", "--sign-key",
                           bundles["key"], "--json")
    assert code == 0, out
    applied = json.loads(out)["deployment"]
    before = snapshot(a.state)
    data = bundles["new"].read_bytes()

    def signed(device: str, deployment: int, key: Path = bundles["key"], bundle: bytes = data) -> bytes:
        return make_request(SITE, device, deployment, bundle, "v", key)

    other_keys, _ = new_keypair(tmp_path / "other-keys")
    unsigned = json.loads(signed("press7", applied + 1))
    del unsigned["signature"]
    cases = [  # (what, deployment, envelope, bundle bytes published with it, reason the agent gives)
        ("unsigned", applied + 1, json.dumps(unsigned).encode(), None, "unsigned"),
        ("wrong key", applied + 2, signed("press7", applied + 2, other_keys), None, "does not verify"),
        ("replayed", applied - 1, signed("press7", applied - 1), None, "older than deployment"),
        ("other device", applied + 3, signed("press9", applied + 3), None, "is for plant1/press9"),
        ("unsigned bundle", applied + 4, signed("press7", applied + 4, bundle=bundles["unsigned"].read_bytes()),
         bundles["unsigned"].read_bytes(), "unsigned"),
    ]
    for what, deployment, envelope, bundle, reason in cases:
        publish(broker.port, "press7", envelope, bundle)
        got = watcher.outcome("press7", deployment, "refused")
        assert reason in got["reason"], (what, got)
    code, out = deploy_cli(bundles["big"], "--broker", url, "--site", SITE, "--device", "press7", "--sign-key",
                           bundles["key"], "--json")
    assert code == 1, out
    big = json.loads(out)["results"][0]
    assert big["outcome"] == "refused" and "larger than this gateway's limit" in big["reason"]
    code, out = deploy_cli(bundles["unsigned"], "--broker", url, "--site", SITE, "--device", "press7", "--sign-key",
                           bundles["key"])
    assert code == 2 and "unsigned bundle" in out  # the CLI refuses it before anything is sent
    assert snapshot(a.state) == before
    assert a.logged("not fetched")  # the oversized bundle was never downloaded
    n = len(watcher.of("press7", "score"))
    watcher.wait("the applied model still scoring", lambda: watcher.scores_with("press7", new, after=n))


@pytest.mark.parametrize("point, outcome", [("staged", "applied"), ("recorded", "rolled_back"),
                                            ("linked_previous", "rolled_back"), ("linked_current", "applied")])
def test_sigkill_in_the_middle_of_the_swap_restarts_on_old_or_new_never_broken(
        point: str, outcome: str, broker: Broker, watcher: Watcher, agents: list[Agent], bundles: dict[str, Path],
        tmp_path: Path) -> None:
    old, new = model_sha(bundles["old"]), model_sha(bundles["new"])
    a = Agent(tmp_path, broker.port, "press7", bundles["old"], bundles["pub"]).start({CRASH_AT: point})
    agents.append(a)
    online(watcher, "press7", old)
    deployment = 1000
    publish(broker.port, "press7", make_request(SITE, "press7", deployment, bundles["new"].read_bytes(), "new",
                                                bundles["key"]), bundles["new"].read_bytes())
    assert a.proc is not None
    assert a.proc.wait(timeout=60) == -signal.SIGKILL  # died at the crash point
    current = a.current()
    assert current in (None, bundles["old"].resolve(), a.state / "bundles" / f"{sha_file(bundles['new'])}.tar")
    a.start()
    got = watcher.outcome("press7", deployment, outcome)
    want = new if outcome == "applied" else old
    n = len(watcher.of("press7", "score"))
    watcher.wait(f"scores by {want[:8]} after the restart", lambda: watcher.scores_with("press7", want, after=n))
    load_bundle(a.current() or bundles["old"], bundles["pub"])  # whatever `current` names verifies
    if outcome == "rolled_back":
        assert "middle of the swap" in got["reason"]


def test_agent_killed_during_probation_three_times_rolls_back(
        broker: Broker, watcher: Watcher, agents: list[Agent], bundles: dict[str, Path], tmp_path: Path) -> None:
    old, new = model_sha(bundles["old"]), model_sha(bundles["new"])
    a = Agent(tmp_path, broker.port, "press7", bundles["old"], bundles["pub"], probation=10**9).start()
    agents.append(a)
    online(watcher, "press7", old)
    deployment = 2000
    publish(broker.port, "press7", make_request(SITE, "press7", deployment, bundles["new"].read_bytes(), "new",
                                                bundles["key"]), bundles["new"].read_bytes())
    online(watcher, "press7", new)  # swapped, on probation (it never ends: 10**9 windows)
    for death in (1, 2, 3):
        a.kill()
        a.start()
        if death < 3:
            watcher.wait(f"restart {death} on probation, scoring", lambda: a.logged("on probation")
                         and a.logged("first window scored"))
    got = watcher.outcome("press7", deployment, "rolled_back")
    assert "died 3 times during probation" in got["reason"]
    n = len(watcher.of("press7", "score"))
    watcher.wait("old-model scores after the rollback", lambda: watcher.scores_with("press7", old, after=n))
    assert a.current() == bundles["old"].resolve()


def test_agent_offline_during_the_deploy_applies_it_when_it_reconnects(
        broker: Broker, watcher: Watcher, agents: list[Agent], bundles: dict[str, Path], tmp_path: Path) -> None:
    old, new = model_sha(bundles["old"]), model_sha(bundles["new"])
    a = Agent(tmp_path, broker.port, "press7", bundles["old"], bundles["pub"]).start()
    agents.append(a)
    online(watcher, "press7", old)
    a.stop()  # a clean stop: the retained status says offline
    url = f"mqtt://127.0.0.1:{broker.port}"
    code, out = deploy_cli(bundles["new"], "--broker", url, "--site", SITE, "--all", "--sign-key", bundles["key"],
                           "--wait", 2, "--json")
    assert code == 1, out
    report = json.loads(out)
    assert report["results"][0]["outcome"] == "pending" and "offline" in report["results"][0]["reason"]
    code, out = deploy_cli("status", "--broker", url, "--site", SITE, "--json")
    assert json.loads(out)[0]["pending"] == report["deployment"]
    a.start()
    watcher.outcome("press7", report["deployment"], "applied")
    online(watcher, "press7", new)
    code, out = deploy_cli("status", "--broker", url, "--site", SITE)
    assert code == 0 and "applied" in out.splitlines()[1] and "press7" in out


def test_tar_of_a_bundle_directory_is_deterministic(bundles: dict[str, Path], tmp_path: Path) -> None:
    """A bundle directory is packed the same way every time, so its sha256 names it."""
    from vibrawatch.convert.deploy import bundle_bytes

    with tarfile.open(bundles["new"]) as tar:
        tar.extractall(tmp_path / "dir", filter="data")
    a, b = bundle_bytes(tmp_path / "dir"), bundle_bytes(tmp_path / "dir")
    assert a == b
    with tarfile.open(fileobj=io.BytesIO(a)) as tar:
        assert sorted(tar.getnames()) == sorted(read_bundle_files(bundles["new"]))
