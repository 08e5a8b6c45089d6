"""Sources: file replay (order, segments, pacing) and raw samples over MQTT (validated payload, real broker)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from mosquitto import Broker
from paho.mqtt.enums import CallbackAPIVersion

from vibrawatch.agent.sources.loaders import load
from vibrawatch.agent.sources.mqtt_source import MqttSampleSource, parse_samples
from vibrawatch.agent.sources.source import Pacer, ReplaySource


def test_replay_yields_every_sample_in_order_and_marks_snapshot_starts(tiny_data: Path) -> None:
    rec = load(tiny_data)
    got = list(ReplaySource(tiny_data, speed=0, chunk=1000).chunks())
    per_snap = -(-rec.data.shape[1] // 1000)
    assert len(got) == rec.n_snapshots * per_snap
    assert [c.new_segment for c in got] == [j == 0 for _ in range(rec.n_snapshots) for j in range(per_snap)]
    np.testing.assert_array_equal(np.concatenate([c.samples for c in got]), rec.data.reshape(-1, rec.data.shape[2]))


def test_pacer_scales_data_time_to_wall_time() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    p = Pacer(speed=10, clock=lambda: now[0], sleep=sleep)
    for t in (0.0, 10.0, 20.0):
        p.wait_until(t)
    assert slept == pytest.approx([1.0, 1.0])
    Pacer(speed=0, clock=lambda: now[0], sleep=sleep).wait_until(1e9)  # as fast as possible: never sleeps
    assert len(slept) == 2


def _msg(**kw: object) -> bytes:
    base: dict[str, object] = {"v": 1, "t": 1.5, "fs_hz": 20000, "samples": [[0.1, 0.2], [0.3, 0.4]]}
    base.update(kw)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


def test_samples_payload_parses() -> None:
    c = parse_samples(_msg())
    assert c.samples.dtype == np.float32 and c.samples.shape == (2, 2)
    assert c.t_start == 1.5 and c.fs_hz == 20000.0


@pytest.mark.parametrize(("payload", "says"), [
    (b"{nope", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (_msg(v=2), "field 'v' expected 1; 'v' is 2"),
    (_msg(t="now"), "field 't' expected a number, epoch seconds; got 'now'"),
    (_msg(fs_hz=0), "field 'fs_hz' expected a number > 0 and at most 1e\\+07; got 0"),
    (_msg(samples=[]), "'samples' expected a non-empty list"),
    (_msg(samples=[[1, 2], [3]]), "rows have different lengths"),
    (_msg(samples=[[1, "x"]]), "other than numbers"),
    (_msg(samples=[[1, None]]), "other than numbers"),
])
def test_bad_samples_payloads_are_refused_with_the_field(payload: bytes, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_samples(payload)


def test_source_drops_bad_messages_and_never_blocks_paho() -> None:
    handlers: dict = {}
    src = MqttSampleSource("s", lambda t, h: handlers.setdefault(t, h), 20000, ("a", "b"), backlog=2)
    for p in (b"junk", _msg(t=1.0), _msg(t=2.0), _msg(t=3.0)):  # paho's thread: parse, queue, never wait
        src._on_message(p)
    assert src.rejected == 1 and src.overflowed == 2
    it = src.chunks()
    refused, first = next(it), next(it)
    assert refused.fault == "samples message refused: not JSON" and first.t_start == 1.0  # junk: a sensor fault
    assert handlers["s"] == src._on_message  # subscribed through the publisher (re-subscribed on reconnect)


def test_samples_over_a_real_broker_score_like_the_replay(tiny_bundle: Path, tiny_data: Path, tmp_path: Path) -> None:
    """A sensor node publishes snapshots as samples messages; the agent's scores equal the file replay's."""
    from vibrawatch.agent.config import AgentConfig, AgentSection
    from vibrawatch.agent.detect.results import Scored, SensorStatus
    from vibrawatch.agent.link.broker import MqttSection
    from vibrawatch.agent.link.publish import Publisher
    from vibrawatch.agent.link.spool import Spool
    from vibrawatch.agent.model.bundle import load_bundle
    from vibrawatch.agent.pipeline import Pipeline

    b = load_bundle(tiny_bundle)
    rec = load(tiny_data)
    n_snap = b.detector.window + 4
    replay = Pipeline(b)
    expected: list[float] = []
    for c in ReplaySource(tiny_data, chunk=4096).chunks():
        if c.t_start >= rec.timestamps[n_snap]:
            break
        expected += [ev.score for ev in replay.process(c) if isinstance(ev, Scored)]
    assert expected

    broker = Broker(tmp_path).start()
    cfg = AgentConfig(AgentSection("lab", "gw1", str(tiny_bundle), spool=str(tmp_path / "spool.sqlite")),
                      mqtt=MqttSection(port=broker.port))
    spool = Spool(cfg.agent.spool)
    pub = Publisher(cfg.mqtt, spool, {"model": b.version}, site=cfg.agent.site, device=cfg.agent.device)
    deadline = time.monotonic() + 60
    src = MqttSampleSource("lab/gw1/samples", pub.subscribe, b.detector.spec.fs_hz, b.detector.spec.channels,
                           stop=lambda: time.monotonic() > deadline)
    node = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sensor-node")
    got: list[float] = []
    faults: list[str | None] = []
    try:
        pub.start()
        while not pub.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the agent's subscription is in place
        node.connect("127.0.0.1", broker.port)
        node.loop_start()
        n_msgs = 0
        for i in range(n_snap):
            for j in range(0, rec.data.shape[1], 1024):
                t = float(rec.timestamps[i] + j / rec.fs_hz)
                body = {"v": 1, "t": t, "fs_hz": rec.fs_hz, "samples": rec.data[i, j: j + 1024].tolist()}
                node.publish("lab/gw1/samples", json.dumps(body), qos=1).wait_for_publish(5)
                n_msgs += 1
        # a node misconfigured to another rate: a sensor status, no score
        body = {"v": 1, "t": 1e10, "fs_hz": rec.fs_hz / 2, "samples": rec.data[0, :1024].tolist()}
        node.publish("lab/gw1/samples", json.dumps(body), qos=1).wait_for_publish(5)
        n_msgs += 1
        pipe = Pipeline(b)
        for k, c in enumerate(src.chunks()):
            for ev in pipe.process(c):
                if isinstance(ev, Scored):
                    got.append(ev.score)
                elif isinstance(ev, SensorStatus):
                    faults.append(ev.reason)
            if k + 1 == n_msgs:
                break
    finally:
        node.loop_stop()
        pub.stop()
        spool.close()
        broker.stop()
    assert len(got) == len(expected), f"{len(got)} scores from MQTT samples, {len(expected)} from the replay"
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert len(faults) == 1 and "sample rate" in (faults[0] or "")


def test_mqtt_samples_resume_after_a_broker_restart(tiny_bundle: Path, tmp_path: Path) -> None:
    """A restarted broker has forgotten the agent's subscription (clean start): the agent subscribes
    again on reconnect, so the sensor node's samples reach it again without a restart of the agent."""
    from vibrawatch.agent.config import AgentConfig, AgentSection
    from vibrawatch.agent.link.broker import MqttSection
    from vibrawatch.agent.link.publish import Publisher
    from vibrawatch.agent.link.spool import Spool
    from vibrawatch.agent.model.bundle import load_bundle

    b = load_bundle(tiny_bundle)
    n_ch = len(b.detector.spec.channels)
    broker = Broker(tmp_path).start()
    cfg = AgentConfig(AgentSection("lab", "gw2", str(tiny_bundle), spool=str(tmp_path / "spool.sqlite")),
                      mqtt=MqttSection(port=broker.port, max_backoff_s=1))
    spool = Spool(cfg.agent.spool)
    pub = Publisher(cfg.mqtt, spool, {"model": b.version}, site=cfg.agent.site, device=cfg.agent.device)
    wait_until = [0.0]  # each attempt below listens for one second
    src = MqttSampleSource("lab/gw2/samples", pub.subscribe, b.detector.spec.fs_hz, b.detector.spec.channels,
                           stop=lambda: time.monotonic() > wait_until[0])

    def send_and_receive(t: float) -> float:
        node = mqtt.Client(CallbackAPIVersion.VERSION2)
        node.connect("127.0.0.1", broker.port)
        node.loop_start()
        body = {"v": 1, "t": t, "fs_hz": b.detector.spec.fs_hz, "samples": np.full((16, n_ch), t).tolist()}
        deadline = time.monotonic() + 20
        try:
            while time.monotonic() < deadline:  # until the agent's (re)subscription is in place
                node.publish("lab/gw2/samples", json.dumps(body), qos=1).wait_for_publish(5)
                wait_until[0] = time.monotonic() + 1.0
                for chunk in src.chunks():
                    if chunk.t_start == t:
                        return float(chunk.samples[0, 0])
            raise AssertionError(f"no samples arrived within 20 s (t={t})")
        finally:
            node.loop_stop()
            node.disconnect()

    try:
        pub.start()
        assert send_and_receive(1.0) == 1.0
        broker.stop()
        time.sleep(0.5)
        assert not pub.connected
        broker.start()
        assert send_and_receive(2.0) == 2.0
        assert pub.connected
    finally:
        pub.stop()
        spool.close()
        broker.stop()


def test_resent_overlapping_and_reordered_samples_over_a_real_broker_score_each_window_once(
        tiny_bundle: Path, tmp_path: Path) -> None:
    """Drill from issue 21: a 16,384-row message sent twice gave 22 scores for 15 windows, a 111,111-row one
    sent 5 times 504 for 108. Now every message, of every size up to the limit, is checked whole against the
    last accepted sample: no window is scored twice and no window's frames go back in time."""
    from vibrawatch.agent.config import AgentConfig, AgentSection
    from vibrawatch.agent.detect.results import Scored
    from vibrawatch.agent.link.broker import MqttSection
    from vibrawatch.agent.link.publish import Publisher
    from vibrawatch.agent.link.spool import Spool
    from vibrawatch.agent.model.bundle import load_bundle
    from vibrawatch.agent.pipeline import Pipeline

    b = load_bundle(tiny_bundle)
    fs, n_ch, frame = b.detector.spec.fs_hz, len(b.detector.spec.channels), b.detector.spec.frame_length
    t0, topic = 1.7e9, "lab/gw3/samples"
    plan: list[tuple[int, int]] = []  # (first sample, rows) in the order sent
    pos = 0
    for size in (1000, 4096, 16_384, 111_111):
        half = size // 2
        plan += [(pos, size), (pos, size), (pos, size), (pos + size - half, size),  # re-sent twice, overlapping
                 (pos + 3 * size, size), (pos + 2 * size, size),  # reordered: the late one is refused
                 (pos + 4 * size - 1, size)]  # overlapping by one sample
        pos += 5 * size - 1
        plan += [(pos + i * size, size) for i in range(4)]  # then a clean run, so every size scores windows
        pos += 4 * size
    signal = np.round(np.random.default_rng(5).standard_normal((pos + 1, n_ch)) * 0.1, 3)
    unique = np.zeros(pos + 1, bool)
    for start, n in plan:
        unique[start: start + n] = True

    broker = Broker(tmp_path).start()
    cfg = AgentConfig(AgentSection("lab", "gw3", str(tiny_bundle), spool=str(tmp_path / "spool.sqlite")),
                      mqtt=MqttSection(port=broker.port))
    spool = Spool(cfg.agent.spool)
    pub = Publisher(cfg.mqtt, spool, {"model": b.version}, site=cfg.agent.site, device=cfg.agent.device)
    deadline = time.monotonic() + 240
    src = MqttSampleSource(topic, pub.subscribe, fs, b.detector.spec.channels, max_message_bytes=64 << 20,
                           stop=lambda: time.monotonic() > deadline)
    node = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sensor-node-3")
    scored: list[float] = []
    end_t = t0 + 1e6  # a last message far later: when it arrives, everything before it has
    try:
        pub.start()
        while not pub.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        node.connect("127.0.0.1", broker.port)
        node.loop_start()
        for start, n in plan + [(0, 16)]:
            t = t0 + start / fs if (start, n) != (0, 16) else end_t
            body = {"v": 1, "t": t, "fs_hz": fs, "samples": signal[start: start + n].tolist()}
            node.publish(topic, json.dumps(body), qos=1).wait_for_publish(30)
        pipe = Pipeline(b)
        for c in src.chunks():
            if c.t_start == end_t:
                break
            scored += [ev.t for ev in pipe.process(c) if isinstance(ev, Scored)]
    finally:
        node.loop_stop()
        pub.stop()
        spool.close()
        broker.stop()
    assert time.monotonic() < deadline, "the last message never arrived"
    windows = int(unique.sum()) // frame  # each scored window ends in a frame of its own
    assert 0 < len(scored) <= windows, f"{len(scored)} scores for at most {windows} windows"
    gaps = np.diff(scored) * fs
    assert np.all(gaps >= frame - 1), f"a window was scored twice or went back in time: {gaps.min():.1f} samples"
    assert src.rejected == 4 * 3 and src.trimmed == sum(s // 2 + 1 for s in (1000, 4096, 16_384, 111_111))
