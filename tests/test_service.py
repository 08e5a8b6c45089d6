"""The gateway service as a user runs it: `vibrawatch-agent run` in a subprocess on a real Mosquitto.

Source kinds and their settings, signals answered mid-sleep at real-time speed, all-or-nothing reloads that
never restart a replay, a source that does not fit the bundle refused at start, a crash told apart from a
clean stop, owner-only state and password file modes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from conftest import ROOT, cli
from jsonschema import Draft202012Validator
from paho.mqtt.enums import CallbackAPIVersion
from test_agent_e2e import BLOCK, agent_command, broker, offline  # noqa: F401 - fixtures used by name

from vibrawatch.agent.config import AgentConfig, AgentSection, load_agent_config
from vibrawatch.agent.errors import ConfigError
from vibrawatch.agent.link.broker import MqttSection
from vibrawatch.agent.sources.registry import SOURCES
from vibrawatch.agent.sources.sensor_check import two_rates

STATUS = Draft202012Validator(json.loads((ROOT / "agent" / "link" / "schemas" / "status.json").read_text()))


class Watch:
    """Every message under vibrawatch/v1/plant1/# (all devices), in arrival order, as (device, kind, payload)."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, str, dict]] = []
        self._lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{port}", protocol=mqtt.MQTTv311)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe("vibrawatch/v1/plant1/#", qos=1)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_message(self, c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        _, _, _, device, kind = m.topic.split("/")
        with self._lock:
            self.messages.append((device, kind, json.loads(m.payload)))

    def of(self, kind: str, device: str | None = None) -> list[dict]:
        with self._lock:
            return [p for d, k, p in self.messages if k == kind and device in (None, d)]

    def wait(self, cond: Callable[[], bool], timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            time.sleep(0.02)
        return cond()

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def write_config(path: Path, port: int, bundle: Path, source: str, device: str = "press7") -> Path:
    path.write_text(f'''
[agent]
site = "plant1"
device = "{device}"
bundle = "{bundle}"
spool = "{path.parent / 'state' / 'spool.sqlite'}"

{source}

[mqtt]
host = "127.0.0.1"
port = {port}
max_backoff_s = 1
''')
    return path


def simulator(speed: float, fs_hz: float = 20000.0) -> str:
    """The built-in simulator set up as tiny_data was made (4 channels, 4096 samples a snapshot)."""
    return (f'[source]\nkind = "simulator"\nsnapshots = 80\nsamples = 4096\nfs_hz = {fs_hz}\nonset = 0.6\n'
            f'seed = 3\nspeed = {speed}\nanchor = false\n')  # the run's own seconds, as evaluate reads them


def replay(path: Path, speed: float) -> str:
    return f'[source]\nkind = "replay"\npath = "{path}"\nspeed = {speed}\nanchor = false\n'  # compared with evaluate


def gateway_env(tmp_path: Path, inject: str = "") -> dict[str, str]:
    """A gateway's environment (TensorFlow, Keras, scikit-learn, typer unimportable), plus optional code
    run at interpreter start (a fault injected into the agent, as a drill would)."""
    block = tmp_path / "block"
    block.mkdir(exist_ok=True)
    (block / "sitecustomize.py").write_text(BLOCK + inject)
    return {**os.environ, "PYTHONPATH": str(block)}


def start(cfg: Path, tmp_path: Path, inject: str = "", umask: int = -1) -> subprocess.Popen[str]:
    return subprocess.Popen(agent_command("run", "--config", str(cfg)), cwd=ROOT, env=gateway_env(tmp_path, inject),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, umask=umask)


@pytest.fixture(scope="module")
def table_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A per-snapshot feature table (4 columns, 80 rows 10 minutes apart), as the IMS article's."""
    rng = np.random.default_rng(0)
    p = tmp_path_factory.mktemp("table") / "table.csv"
    rows = [f"{i * 600},{','.join(f'{v:.5f}' for v in 0.1 + 0.01 * rng.standard_normal(4))}" for i in range(80)]
    p.write_text("time,b1,b2,b3,b4\n" + "\n".join(rows) + "\n")
    return p


@pytest.fixture(scope="module")
def table_bundle(table_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained on the feature table (input 'table', 1 row a snapshot), converted to a bundle."""
    d = tmp_path_factory.mktemp("table_run")
    config = d / "tiny_table.toml"
    config.write_text("[model]\nwindow = 6\nhop = 1\nencoder = [8, 4]\nepochs = 2\nbatch_size = 32\npatience = 2\n"
                      "seed = 1\n\n[alarm]\nraise_after = 2\nclear_after = 4\n")
    cli("train", "--data", table_csv, "--healthy-until", "50%", "--config", config, "--out", d / "run", "--quiet")
    cli("convert", d / "run", "--out", d / "table.tar")
    return d / "table.tar"


# -- source kinds ------------------------------------------------------------------------------------------------
def test_each_source_kind_takes_its_own_settings_and_only_those(tmp_path: Path) -> None:
    head = '[agent]\nsite = "plant1"\ndevice = "press7"\nbundle = "b.tar"\n\n'
    for kind, cls in SOURCES.items():  # every kind's commented sample is a valid [source] of that kind
        cfg = load_agent_config(write_text(tmp_path / f"{kind}.toml", head + cls.SAMPLE))
        assert cfg.source.kind == kind and isinstance(cfg.source.settings, cls.Settings)
        shown = subprocess.run(agent_command("sources", kind), capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and shown.stdout == cls.SAMPLE
    cfg = load_agent_config(tmp_path / "replay.toml")
    assert cfg.source.settings.path == str(tmp_path / "data" / "run.npz")  # relative to the config file
    for example in ("agent.example.toml", "agent.local.toml"):
        load_agent_config(ROOT / "configs" / example)
    bad = write_text(tmp_path / "bad.toml", head + '[source]\nkind = "simulator"\nspeed = 10\npath = "x.npz"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: \[source\] unknown key\(s\) \['path'\] for kind = 'simulator'"):
        load_agent_config(bad)
    typo = write_text(tmp_path / "typo.toml", head + '[source]\nkind = "adxl345"\nrange_g = "16g"\n')
    with pytest.raises(ConfigError, match=r"typo\.toml: \[source\] range_g = '16g': expected int"):
        load_agent_config(typo)
    nokind = write_text(tmp_path / "nokind.toml", head + '[source]\nkind = "modbus"\n')
    with pytest.raises(ConfigError, match="kind = 'modbus': choose one of replay, simulator, adxl345, mqtt"):
        load_agent_config(nokind)


def write_text(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def test_rates_are_printed_so_that_they_differ() -> None:
    from vibrawatch.agent.sources.sensor_check import SensorLimits, check_chunk

    assert two_rates(1.03, 1.0) == ("1.03", "1")
    samples = np.random.default_rng(0).standard_normal((100, 2)).astype(np.float32)
    assert check_chunk(samples, SensorLimits(2, 1.0), 1.03) == "sample rate 1.03 Hz, the model expects 1 Hz"
    assert two_rates(20000.0, 20480.0) == ("20000", "20480")
    assert two_rates(20000.5, 20000.0) == ("20000.5", "20000")


# -- start-up checks ---------------------------------------------------------------------------------------------
def test_a_source_that_does_not_fit_the_bundle_is_a_start_up_error(tiny_bundle: Path, table_bundle: Path,
                                                                     table_csv: Path, tmp_path: Path) -> None:
    # the simulator at 20.6 kHz, the model trained at 20 kHz: `run` stops before connecting, exit 2, one line
    cfg = write_config(tmp_path / "rate.toml", 1, tiny_bundle, simulator(0, fs_hz=20600.0))
    p = subprocess.run(agent_command("run", "--config", str(cfg)), env=gateway_env(tmp_path), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    err = p.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and "rate.toml" in err and "20600 Hz" in err and "20000 Hz" in err, err
    assert "Traceback" not in p.stderr
    # a 1 Hz feature-table model on a 20 kHz raw source: `check` refuses it
    cfg = write_config(tmp_path / "table.toml", 1, table_bundle, simulator(0))
    p = subprocess.run(agent_command("check", "--config", str(cfg)), env=gateway_env(tmp_path), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "trained on a feature table" in p.stderr and "20000 Hz" in p.stderr, p.stderr
    # and the other way round: a feature table replayed into a raw-samples model
    cfg = write_config(tmp_path / "rows.toml", 1, tiny_bundle, replay(table_csv, 0))
    p = subprocess.run(agent_command("check", "--config", str(cfg)), env=gateway_env(tmp_path), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "rows of a feature table" in p.stderr, p.stderr
    # snapshots shorter than a frame: before, the agent ran and never scored a window, without a word
    short = simulator(0).replace("samples = 4096", "samples = 1000")
    cfg = write_config(tmp_path / "short.toml", 1, tiny_bundle, short)
    p = subprocess.run(agent_command("check", "--config", str(cfg)), env=gateway_env(tmp_path), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "snapshots of 1000 samples, shorter than" in p.stderr, p.stderr
    # while the table replayed into the table model fits
    cfg = write_config(tmp_path / "fits.toml", 1, table_bundle, replay(table_csv, 0))
    p = subprocess.run(agent_command("check", "--config", str(cfg)), env=gateway_env(tmp_path), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and "fits the model" in p.stdout, p.stderr


# -- signals ----------------------------------------------------------------------------------------------------
def test_sighup_and_sigterm_are_answered_mid_sleep_at_real_time_speed(broker, tiny_bundle: Path,  # noqa: F811
                                                                       tmp_path: Path) -> None:
    """At speed 1 the simulator sleeps 600 s after its first snapshot; signals must not wait for that. Run
    under umask 000: the spool and its directory are still owner-only."""
    watch = Watch(broker.port)
    cfg = write_config(tmp_path / "agent.toml", broker.port, tiny_bundle, simulator(1))
    agent = start(cfg, tmp_path, umask=0)
    try:
        assert watch.wait(lambda: any(s["state"] == "online" for s in watch.of("status")), 60)
        time.sleep(1.0)  # the first snapshot is read; the source now sleeps until t = 600 s
        t0 = time.monotonic()
        agent.send_signal(signal.SIGHUP)
        assert watch.wait(lambda: any(s.get("event") == "reloaded" for s in watch.of("status")), 30)
        reload_s = time.monotonic() - t0
        t0 = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        out, _ = agent.communicate(timeout=30)
        stop_s = time.monotonic() - t0
    finally:
        if agent.poll() is None:
            agent.kill()
        watch.close()
    print(f"real-time simulator mid-sleep: SIGHUP applied in {reload_s:.2f} s, SIGTERM to exit in {stop_s:.2f} s")
    assert agent.returncode == 0, out
    assert "stopping after 0 windows" in out  # stopped inside the 600 s wait, before any window was complete
    assert watch.of("status")[-1]["state"] == "offline" and watch.of("status")[-1]["reason"] == "stopped"
    state = tmp_path / "state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for f in state.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def _catches(pid: int, sig: signal.Signals) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (the SigCgt mask of /proc/<pid>/status)."""
    try:
        caught = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(int(caught.split()[1], 16) >> (int(sig) - 1) & 1)


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_a_signal_during_start_up_is_answered_once_started(broker, tiny_bundle: Path, tmp_path: Path,  # noqa: F811
                                                             sig: signal.Signals) -> None:
    """`systemctl reload` or `stop` right after a start: sent as soon as the process takes the signal at all, while
    it still imports and checks its bundle. Before, SIGHUP there killed the service with a status systemd counts
    as clean (no restart) and SIGTERM left no line; now a reload changes nothing and a stop stops it once started."""
    watch = Watch(broker.port)
    cfg = write_config(tmp_path / "agent.toml", broker.port, tiny_bundle, simulator(1))
    agent = start(cfg, tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not _catches(agent.pid, sig) and time.monotonic() < deadline and agent.poll() is None:
            time.sleep(0.002)
        agent.send_signal(sig)
        if sig == signal.SIGHUP:
            assert watch.wait(lambda: any(s["state"] == "online" for s in watch.of("status")), 60), "never online"
            assert agent.poll() is None
            agent.send_signal(signal.SIGTERM)
        out, _ = agent.communicate(timeout=60)
    finally:
        if agent.poll() is None:
            agent.kill()
        watch.close()
    assert agent.returncode == 0, out
    assert "Traceback" not in out
    said = "the config as read now stands" if sig == signal.SIGHUP else "stopping once started"
    assert f"{sig.name} during start-up: {said}" in out, out


def test_a_second_copy_of_a_running_agent_is_refused_at_start(broker, tiny_bundle: Path,  # noqa: F811
                                                               tmp_path: Path) -> None:
    """The same config started twice (a unit and a shell, two units): before, both ran, took the broker session
    from each other every second and published one device's messages from two timelines."""
    watch = Watch(broker.port)
    cfg = write_config(tmp_path / "agent.toml", broker.port, tiny_bundle, simulator(1))
    first = start(cfg, tmp_path)
    try:
        assert watch.wait(lambda: any(s["state"] == "online" for s in watch.of("status")), 60)
        second = subprocess.run(agent_command("run", "--config", str(cfg)), env=gateway_env(tmp_path),
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stdout + second.stderr
        assert second.stderr.strip().splitlines() == [
            f"error: {tmp_path / 'state' / 'spool.sqlite'}: in use by another vibrawatch-agent (pid {first.pid}); "
            "one spool serves one agent: stop that one, or give this one its own [agent] spool and device"]
        time.sleep(1.0)
        assert first.poll() is None and [s["state"] for s in watch.of("status")].count("offline") == 0
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
        watch.close()
    assert first.returncode == 0, out
    assert "another client using client id" not in out


def test_reload_is_all_or_nothing_and_never_restarts_the_replay(broker, tiny_bundle: Path, tiny_data: Path,  # noqa: F811
                                                               table_csv: Path, offline: dict,  # noqa: F811
                                                               tmp_path: Path) -> None:
    """A reload that fails (a new device, but a source that does not fit the model) changes nothing: scores go
    on under the old device and the status says why. A good one (new device, faster replay) moves everything
    together, and the replay resumes where it was: over both devices, every window exactly once, in order,
    with the workstation's scores."""
    watch = Watch(broker.port)
    cfg_path = tmp_path / "agent.toml"
    write_config(cfg_path, broker.port, tiny_bundle, replay(tiny_data, 1200))  # a snapshot every 0.5 s
    agent = start(cfg_path, tmp_path)
    try:
        assert watch.wait(lambda: len(watch.of("score", "press7")) >= 3, 60)
        write_config(cfg_path, broker.port, tiny_bundle, replay(table_csv, 1200), device="press8")
        agent.send_signal(signal.SIGHUP)
        assert watch.wait(lambda: any(s.get("event") == "reload_failed" for s in watch.of("status", "press7")), 30)
        failed = next(s for s in watch.of("status", "press7") if s.get("event") == "reload_failed")
        n_then = len(watch.of("score", "press7"))
        assert watch.wait(lambda: len(watch.of("score", "press7")) >= n_then + 3, 30)  # still scoring as before
        write_config(cfg_path, broker.port, tiny_bundle, replay(tiny_data, 2400), device="press8")
        agent.send_signal(signal.SIGHUP)
        assert watch.wait(lambda: any(s.get("event") == "reloaded" for s in watch.of("status", "press8")), 30)
        out, _ = agent.communicate(timeout=120)
    finally:
        if agent.poll() is None:
            agent.kill()
    n = len(offline["scores"])
    watch.wait(lambda: len(watch.of("score")) >= n, 20)
    watch.close()
    assert agent.returncode == 0, out
    assert "feature table" in failed["error"] and "reload failed, nothing changed" in out
    before, after = watch.of("score", "press7"), watch.of("score", "press8")
    assert len(before) > n_then and after and after[0]["t"] > before[-1]["t"]  # one identity, then the other
    scores = sorted(watch.of("score"), key=lambda p: p["seq"])
    assert len(scores) == n, f"{len(scores)} scores for {n} windows: a reload restarted or lost part of the replay"
    np.testing.assert_allclose([p["t"] for p in scores], offline["times"])
    np.testing.assert_allclose([p["score"] for p in scores], offline["scores"], rtol=1e-5)
    old = watch.of("status", "press7")
    assert old[-1]["state"] == "offline" and old[-1]["reason"] == "reconfigured"
    assert watch.of("status", "press8")[-1]["reason"] == "stopped"
    for s in watch.of("status"):
        STATUS.validate(s)


def test_an_mqtt_source_keeps_its_samples_coming_across_a_reload_that_moves_the_connection(
        broker, tiny_bundle: Path, tiny_data: Path, tmp_path: Path) -> None:  # noqa: F811
    """The samples subscription lives on the publisher's connection: a reload to another device builds a new
    connection, and the running source must be subscribed there too (no samples lost to the old one)."""
    from vibrawatch.agent.sources.loaders import load

    rec = load(tiny_data)
    watch = Watch(broker.port)
    source = '[source]\nkind = "mqtt"\ntopic = "lab/raw"\n'
    cfg = write_config(tmp_path / "agent.toml", broker.port, tiny_bundle, source)
    agent = start(cfg, tmp_path)
    node = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="node")
    node.connect("127.0.0.1", broker.port)
    node.loop_start()

    def send(snapshots: range) -> None:
        for i in snapshots:
            for j in range(0, rec.data.shape[1], 1024):
                body = {"v": 1, "t": float(1.7e9 + rec.timestamps[i] + j / rec.fs_hz), "fs_hz": rec.fs_hz,
                        "samples": rec.data[i, j: j + 1024].tolist()}
                node.publish("lab/raw", json.dumps(body), qos=1).wait_for_publish(5)

    try:
        assert watch.wait(lambda: any(s["state"] == "online" for s in watch.of("status")), 60)
        time.sleep(0.5)  # the agent's subscription is in place
        send(range(0, 4))
        assert watch.wait(lambda: len(watch.of("score", "press7")) >= 1, 60)
        write_config(cfg, broker.port, tiny_bundle, source, device="press8")
        agent.send_signal(signal.SIGHUP)
        assert watch.wait(lambda: any(s.get("event") == "reloaded" for s in watch.of("status", "press8")), 30)
        time.sleep(0.5)
        send(range(4, 8))
        assert watch.wait(lambda: len(watch.of("score", "press8")) >= 4 * 4, 60)  # 4 frames a snapshot, a window each
        agent.send_signal(signal.SIGTERM)
        out, _ = agent.communicate(timeout=30)
    finally:
        node.loop_stop()
        if agent.poll() is None:
            agent.kill()
        watch.close()
    assert agent.returncode == 0, out


# -- crash ------------------------------------------------------------------------------------------------------
INJECT = '''
import vibrawatch.agent.pipeline as _p
_process = _p.Pipeline.process
def _faulty(self, chunk):
    if chunk.t_start >= 3 * 600:
        raise RuntimeError("injected fault in the pipeline\\nsecond line")
    return _process(self, chunk)
_p.Pipeline.process = _faulty
'''


def test_a_crash_is_told_apart_from_a_clean_stop(broker, tiny_bundle: Path, tiny_data: Path,  # noqa: F811
                                                tmp_path: Path) -> None:
    watch = Watch(broker.port)
    agent = start(write_config(tmp_path / "agent.toml", broker.port, tiny_bundle, replay(tiny_data, 0)), tmp_path,
                  inject=INJECT)
    out, _ = agent.communicate(timeout=120)
    watch.wait(lambda: any(s["state"] == "offline" for s in watch.of("status")), 10)
    watch.close()
    assert agent.returncode == 1, out
    assert "crashed: RuntimeError: injected fault in the pipeline" in out
    last = watch.of("status")[-1]
    STATUS.validate(last)
    assert last["state"] == "offline" and last["reason"] == "crashed"
    assert last["error"] == "RuntimeError: injected fault in the pipeline"  # one line
    # and a process that vanishes without a word leaves the last will
    watch = Watch(broker.port)
    agent = start(tmp_path / "agent.toml", tmp_path)
    try:
        assert watch.wait(lambda: any(s["state"] == "online" for s in watch.of("status")), 60)
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=10)
        assert watch.wait(lambda: watch.of("status")[-1]["state"] == "offline", 30)
    finally:
        if agent.poll() is None:
            agent.kill()
        watch.close()
    assert watch.of("status")[-1]["reason"] == "connection lost"


# -- files ------------------------------------------------------------------------------------------------------
def test_a_password_file_others_can_read_is_refused_and_a_group_readable_one_warned(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pw = tmp_path / "mqtt-password"
    pw.write_text("s3cret\n")
    cfg = AgentConfig(AgentSection("plant1", "press7", "b.tar"), mqtt=MqttSection(username="u", password_file=str(pw)),
                      path=tmp_path / "agent.toml")
    pw.chmod(0o644)
    with pytest.raises(ConfigError, match=r"agent\.toml: \[mqtt\] password_file .* mode 0644: other users can read"):
        cfg.password()
    pw.chmod(0o640)
    with caplog.at_level(logging.WARNING, logger="vibrawatch.agent"):
        assert cfg.password() == "s3cret"
    assert "its group can read the MQTT password" in caplog.text
    pw.chmod(0o600)
    caplog.clear()
    assert cfg.password() == "s3cret" and not caplog.text


def test_a_spool_left_readable_by_an_earlier_version_is_made_owner_only(tmp_path: Path) -> None:
    from vibrawatch.agent.link.spool import Spool
    from vibrawatch.agent.service import _owner_only

    old = os.umask(0o022)
    try:
        spool = Spool(tmp_path / "spool.sqlite")  # as an agent without the umask left it: 0644
        spool.put("t", {"v": 1})
    finally:
        os.umask(old)
    files = [tmp_path / n for n in ("spool.sqlite", "spool.sqlite-wal", "spool.sqlite-shm")]
    assert any(stat.S_IMODE(f.stat().st_mode) == 0o644 for f in files if f.exists())
    _owner_only(tmp_path / "spool.sqlite")
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files if f.exists())
    spool.close()
