"""Remote recalibration and what a device accepts, end to end: a real Mosquitto, the real agent
(`vibrawatch-agent run` in a subprocess, TensorFlow unimportable), the real `vibrawatch recalibrate` and
`vibrawatch deploy` commands, requests signed with the deploy key."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from conftest import ROOT
from jsonschema import Draft202012Validator
from mosquitto import Broker
from paho.mqtt.enums import CallbackAPIVersion
from test_deploy import SITE, Agent, Watcher, deploy_cli, resign
from typer.testing import CliRunner

from vibrawatch.agent.model.signing import command_topic, make_command
from vibrawatch.convert.cli import app
from vibrawatch.convert.keys import PUBLIC_NAME, new_keypair

COMMISSIONING = "[remote]\nrecalibrate = true\n\n[commissioning]\nwindows = 10\n"
DONE = ("commissioned", "commissioning_suspect")
STATUS = Draft202012Validator(json.loads((ROOT / "agent" / "link" / "schemas" / "status.json").read_text()))
COMMAND = json.loads((ROOT / "agent" / "link" / "schemas" / "command.json").read_text())


@pytest.fixture(scope="module")
def keys(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("recal-keys")
    priv, _ = new_keypair(d / "keys")
    other, _ = new_keypair(d / "other")
    return {"key": priv, "pub": d / "keys" / PUBLIC_NAME, "other": other,
            "bundle": resign(tiny_bundle, d / "signed.tar", priv)}


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[Broker]:
    (tmp_path / "broker").mkdir()
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture()
def watcher(broker: Broker) -> Iterator[Watcher]:
    w = Watcher(broker.port)
    yield w
    w.close()


@pytest.fixture()
def agents() -> Iterator[list[Agent]]:
    running: list[Agent] = []
    yield running
    for a in running:
        a.stop()


def recalibrate_cli(*args: object) -> tuple[int, str]:
    """`vibrawatch recalibrate ...` as a user runs it; (exit code, stdout alone with --json, else all output)."""
    r = CliRunner().invoke(app, ["recalibrate", *[str(a) for a in args]], catch_exceptions=False)
    return r.exit_code, r.stdout if "--json" in args else r.output


def publish(port: int, device: str, envelope: bytes) -> None:
    """A command published by hand on press7's topic (what a tampered, stale or replayed request looks like)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-cmd-{time.time_ns()}")
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.publish(command_topic(SITE, device), envelope, qos=1, retain=True).wait_for_publish(10)
    c.loop_stop()
    c.disconnect()


def retained(port: int, device: str) -> dict[str, bytes]:
    """The retained deploy and command requests for ``device``, by topic kind. Its status is subscribed in a
    second SUBSCRIBE after them: the broker answers in order, so once the status came, any retained request has."""
    got: dict[str, bytes] = {}
    done = threading.Event()

    def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        kind = m.topic.split("/", 4)[4]
        if kind == "status":
            done.set()
        else:
            got[kind] = m.payload

    def on_connect(c: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
        c.subscribe([(f"vibrawatch/v1/{SITE}/{device}/deploy", 1), (command_topic(SITE, device), 1)])
        c.subscribe(f"vibrawatch/v1/{SITE}/{device}/status", 1)

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-ret-{time.time_ns()}")
    c.on_connect, c.on_message = on_connect, on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert done.wait(30), "no retained status"
    c.loop_stop()
    c.disconnect()
    return got


def commanded(w: Watcher, device: str, command_id: int, outcome: str) -> dict:
    """The first status that reports command ``command_id`` with ``outcome``."""
    def find() -> dict | None:
        return next((s for s in w.of(device, "status") if (s.get("command") or {}).get("id") == command_id
                     and s["command"]["outcome"] == outcome), None)

    w.wait(f"{device}: command {command_id} {outcome}", find)
    got = find()
    assert got is not None
    return got


def test_a_signed_recalibrate_restarts_commissioning_and_bad_ones_are_refused_changing_nothing(
        broker: Broker, watcher: Watcher, agents: list[Agent], keys: dict[str, Path], tmp_path: Path) -> None:
    a = Agent(tmp_path, broker.port, "press7", keys["bundle"], keys["pub"], deploy=False, extra=COMMISSIONING).start()
    agents.append(a)
    watcher.wait("commissioning done", lambda: [s for s in watcher.of("press7", "status") if s["state"] in DONE])
    calibration = a.dir / "calibration.json"
    before = calibration.read_bytes()
    n_status = len(watcher.of("press7", "status"))
    assert watcher.of("press7", "status")[-1]["accepts"] == {"deploy": False, "recalibrate": True}

    now = int(time.time() * 1000)
    unsigned = json.loads(make_command(SITE, "press7", now + 1, keys["key"]))
    del unsigned["signature"]
    cases = [  # (what, id, envelope, what the refusal says)
        ("unsigned", now + 1, json.dumps(unsigned).encode(), "unsigned"),
        ("wrong key", now + 2, make_command(SITE, "press7", now + 2, keys["other"]), "does not verify"),
        ("stale", now + 3, make_command(SITE, "press7", now + 3, keys["key"], expires_s=-60), "expired at"),
        ("other device", now + 4, make_command(SITE, "press9", now + 4, keys["key"]), "is for plant1/press9"),
    ]
    for what, command_id, envelope, reason in cases:
        publish(broker.port, "press7", envelope)
        s = commanded(watcher, "press7", command_id, "refused")
        assert reason in s["command"]["reason"] and s["event"] == "command_refused", (what, s)
        assert a.logged(f"command {command_id} refused: ") and a.logged(reason), what  # one log line says why
    refusals = watcher.of("press7", "status")[n_status:]
    assert not [s for s in refusals if s["state"] == "commissioning"]  # nothing restarted
    assert calibration.read_bytes() == before

    code, out = recalibrate_cli("--broker", f"mqtt://127.0.0.1:{broker.port}", "--site", SITE, "--device", "press7",
                                "--sign-key", keys["key"], "--note", "bearing replaced", "--wait", 120, "--json")
    assert code == 0, out
    r = json.loads(out)
    assert r["outcome"] == "applied" and r["state"] == "commissioning" and "bearing replaced" in r["reason"]
    s = commanded(watcher, "press7", r["id"], "applied")
    assert s["state"] == "commissioning" and s["event"] == "remote_recalibrate" and s["threshold_source"] == \
        "commissioning"
    assert s["command"]["reason"] == "requested remotely: bearing replaced" and "recalibration requested" in s["note"]
    assert a.logged(f"recalibrate {r['id']} requested remotely (bearing replaced)")
    assert a.proc is not None and a.proc.poll() is None  # no restart of the process
    watcher.wait("commissioned again", lambda: [x for x in watcher.of("press7", "status")[n_status:]
                                                if x["state"] in DONE])
    assert json.loads(calibration.read_text())["state"] in DONE

    # a restart: the retained request comes again, and is not news (its id is the last acted on)
    a.stop()
    n_status, n_score = len(watcher.of("press7", "status")), len(watcher.of("press7", "score"))
    a.start()
    watcher.wait("20 scores after the restart", lambda: len(watcher.of("press7", "score")) >= n_score + 20)
    after = watcher.of("press7", "status")[n_status:]
    assert not [x for x in after if x["state"] == "commissioning" or x.get("event") == "remote_recalibrate"]
    assert {x["threshold_source"] for x in watcher.of("press7", "score")[n_score:]} <= {"commissioned", "bundle"}
    assert [x["command"]["id"] for x in after if x["state"] != "offline"][-1] == r["id"]  # kept across restarts

    replayed = make_command(SITE, "press7", r["id"] - 1, keys["key"])
    publish(broker.port, "press7", replayed)
    s = commanded(watcher, "press7", r["id"] - 1, "refused")
    assert "older than id" in s["command"]["reason"] and s["state"] != "commissioning"
    # the retained command cleared (an empty retained message, MQTT's way): not a command, nothing refused
    n_status = len(watcher.of("press7", "status"))
    publish(broker.port, "press7", b"")
    # a damaged command state: every command refused, saying why, the file left as it is, scoring going on
    state = next(a.dir.rglob("commands.json"))
    state.write_text('{"last_id": "abc"}')
    publish(broker.port, "press7", make_command(SITE, "press7", r["id"] + 1, keys["key"]))
    watcher.wait("refused for its damaged state", lambda: [
        x for x in watcher.of("press7", "status")[n_status:] if x.get("event") == "command_refused"])
    after = watcher.of("press7", "status")[n_status:]
    refused = [x for x in after if x.get("event") == "command_refused"]
    assert len(refused) == 1 and "last_id 'abc' is not a command id" in refused[0]["command"]["reason"], after
    assert state.read_text() == '{"last_id": "abc"}' and not [x for x in after if x["state"] == "commissioning"]
    n_score = len(watcher.of("press7", "score"))
    watcher.wait("scores after the refusal", lambda: len(watcher.of("press7", "score")) >= n_score + 5)
    assert a.proc is not None and a.proc.poll() is None
    for x in watcher.of("press7", "status"):
        STATUS.validate(x)
    req = json.loads(json.loads(replayed)["request"])
    Draft202012Validator(COMMAND["$defs"]["request"]).validate(req)
    Draft202012Validator(COMMAND).validate(json.loads(replayed))


def test_deploy_and_recalibrate_answer_at_once_for_a_device_that_does_not_accept_them(
        broker: Broker, watcher: Watcher, agents: list[Agent], keys: dict[str, Path], tmp_path: Path) -> None:
    a = Agent(tmp_path, broker.port, "press7", keys["bundle"], keys["pub"], deploy=False).start()
    agents.append(a)
    watcher.wait("press7 online", lambda: [s for s in watcher.of("press7", "status") if s.get("accepts")])
    assert watcher.of("press7", "status")[-1]["accepts"] == {"deploy": False, "recalibrate": False}
    url = f"mqtt://127.0.0.1:{broker.port}"
    code, out = deploy_cli(keys["bundle"], "--broker", url, "--site", SITE, "--device", "press7", "--sign-key",
                           keys["key"], "--wait", 600, "--json")
    assert code == 1, out
    r = json.loads(out)["results"][0]
    assert r["outcome"] == "not_accepted"
    assert r["reason"] == "press7 does not accept deploys: [deploy] is not enabled in its config"
    code, out = recalibrate_cli("--broker", url, "--site", SITE, "--device", "press7", "--sign-key", keys["key"],
                                "--wait", 600)
    assert code == 1 and out.strip() == ("press7 does not accept remote recalibration: [remote] recalibrate is not "
                                         "enabled in its config"), out
    assert retained(broker.port, "press7") == {}  # nothing was sent: no request left for the device to find later


@pytest.mark.parametrize("body, named", [
    ('public_key = "k.pub"\n[source]\nkind = "simulator"\n[remote]\nrecalibrate = true\n', "[commissioning]"),
    ('[source]\nkind = "simulator"\n[remote]\nrecalibrate = true\n[commissioning]\nwindows = 5\n', "public_key"),
    ('[source]\nkind = "simulator"\n[remote]\nrecalibrat = true\n', "recalibrat"),
])
def test_remote_recalibrate_without_what_it_needs_is_one_line_naming_the_file(tmp_path: Path, body: str,
                                                                              named: str) -> None:
    from vibrawatch.agent.config import load_agent_config
    from vibrawatch.agent.errors import ConfigError

    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nsite = "s"\ndevice = "d"\nbundle = "b.tar"\n{body}')
    with pytest.raises(ConfigError) as e:
        load_agent_config(cfg)
    assert str(cfg) in str(e.value) and named in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("payload", [b"\xff\xfe\x00x", b"\x80\x81\x82"])
def test_a_request_in_bytes_that_are_not_utf8_is_refused_as_such(payload: bytes) -> None:
    """Before, json's own encoding guess read such bytes as UTF-16 and the refusal spoke of a UTF-16 codec."""
    from vibrawatch.agent.model.command import RECALIBRATE
    from vibrawatch.agent.model.deploy_request import DEPLOY
    from vibrawatch.agent.model.signed_request import RequestFormatError, read_envelope

    for kind in (RECALIBRATE, DEPLOY):
        with pytest.raises(RequestFormatError, match=rf"^{kind.name} message is not UTF-8 text$"):
            read_envelope(payload, kind)
