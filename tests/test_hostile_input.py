"""Hostile input on the samples topic and faults around the MQTT connection: what drills against a running
agent found (crashes, a silently dead network thread, garbage accepted), each refused now with a reason."""

from __future__ import annotations

import json
import logging
import math
import socket
import ssl
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mosquitto import Broker, free_port
from paho.mqtt.enums import CallbackAPIVersion

from vibrawatch.agent.config import AgentConfig, AgentSection
from vibrawatch.agent.link.broker import MqttSection
from vibrawatch.agent.link.publish import Publisher
from vibrawatch.agent.link.reach import connect_failure_reason
from vibrawatch.agent.link.spool import Spool
from vibrawatch.agent.link.topics import iso
from vibrawatch.agent.sources.mqtt_source import MAX_T, MqttSampleSource, SamplesRefused, parse_samples

BIG = "9" * 401  # a 401-digit integer: float() overflows, numpy overflows


def _raw(t: str = "1.5", fs: str = "20000", samples: str = "[[0.1, 0.2], [0.3, 0.4]]", v: str = "1") -> bytes:
    """A samples message written as text, so that JSON's NaN/Infinity and huge integers go in verbatim."""
    return f'{{"v": {v}, "t": {t}, "fs_hz": {fs}, "samples": {samples}}}'.encode()


HOSTILE = {
    "t NaN": (_raw(t="NaN"), "field 't'"),
    "t +Infinity": (_raw(t="Infinity"), "field 't'"),
    "t -Infinity": (_raw(t="-Infinity"), "field 't'"),
    "t 1e20": (_raw(t="1e20"), "field 't' expected epoch seconds between 1970 and 9999"),
    "t 1e308": (_raw(t="1e308"), "field 't'"),
    "t past 9999": (_raw(t=str(int(MAX_T) + 400 * 86400)), "field 't'"),
    "t negative": (_raw(t="-5"), "field 't'"),
    "t 401 digits": (_raw(t=BIG), "field 't'"),
    "fs_hz 401 digits": (_raw(fs=BIG), "field 'fs_hz'"),
    "sample 401 digits": (_raw(samples=f"[[{BIG}, 1]]"), "field 'samples' holds a number beyond the float range"),
    "nested 50000 deep": (_raw(samples="[" * 50_000 + "]" * 50_000), "nested too deep"),
    "all nested 50000 deep": (b"[" * 50_000 + b"]" * 50_000, "nested too deep"),
    "v true": (_raw(v="true"), "field 'v' expected 1"),
    "fs_hz NaN": (_raw(fs="NaN"), "field 'fs_hz'"),
    "fs_hz true": (_raw(fs="true"), "field 'fs_hz'"),
    "booleans as samples": (_raw(samples="[[true, false], [false, true]]"), "other than numbers"),
    "strings as samples": (_raw(samples='[["1.5", "2"]]'), "other than numbers"),
    "empty rows": (_raw(samples="[[], []]"), "rows have different lengths"),
    "rows of rows": (_raw(samples="[[[1, 2]], [[3, 4]]]"), "other than numbers"),
    "not UTF-8": (b"\xff\xfe{", "not JSON"),
    "digits beyond Python's limit": (_raw(t="1" * 5000), "not JSON"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_samples_messages_are_refused_naming_the_field(name: str) -> None:
    payload, says = HOSTILE[name]
    with pytest.raises(SamplesRefused, match=says):
        parse_samples(payload)


def test_a_message_over_the_size_bound_is_refused_before_it_is_parsed() -> None:
    rows = np.full((5000, 4), 0.0123456789).tolist()
    body = json.dumps({"v": 1, "t": 1.0, "fs_hz": 20000, "samples": rows}).encode()
    assert parse_samples(body, max_bytes=len(body)).samples.shape == (5000, 4)
    with pytest.raises(SamplesRefused, match=rf"larger than the {len(body) - 1}-byte limit.*max_message_bytes"):
        parse_samples(body, max_bytes=len(body) - 1)
    src = MqttSampleSource("s", lambda t, h: None, 20000, ("a", "b", "c", "d"))  # default: ~3 s at 20 kHz x 4
    assert src.max_message_bytes == 3 * 20000 * 4 * 24


def test_every_hostile_message_becomes_a_sensor_fault_and_one_log_line_per_reason(
        caplog: pytest.LogCaptureFixture) -> None:
    """On paho's thread nothing may raise; each refusal reaches the pipeline as a fault (a ``sensor`` status)
    and the log gets one line per reason, not one per message (a flood must not fill the disk)."""
    src = MqttSampleSource("s", lambda t, h: None, 20000, ("a", "b"), backlog=1000)
    caplog.set_level(logging.WARNING, "vibrawatch.source")
    for _ in range(20):
        for payload, _says in HOSTILE.values():
            src._on_message(payload)  # would raise (and kill paho's thread) before
    assert src.rejected == 20 * len(HOSTILE)
    fault = src._queue.get_nowait()  # the first refusal is the sensor fault; the rest of the run only counts
    assert fault.fault == "samples message refused: field 't' expected a number, epoch seconds" and src._queue.empty()
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    reasons = {e.reason for p, _ in HOSTILE.values() for e in [_refusal(p)]}
    assert len(lines) == len(reasons)  # one line per distinct reason, not one per message
    assert any("got nan" in line for line in lines)  # the log line shows the value; the status the reason
    src._on_message(_raw())  # good samples end the run of refusals: the next one is a fault again
    src._on_message(_raw(v="2"))
    assert [c.fault for c in list(src._queue.queue)] == [None, "samples message refused: field 'v' expected 1"]


def test_one_message_stamped_ahead_silences_the_node_for_a_minute_at_most(caplog: pytest.LogCaptureFixture) -> None:
    """Taken as the newest time, a message 500 s ahead (less than a new timeline's 600 s) made every genuine
    message after it 're-sent' for 500 s: no score, the status still online (the drill's forged message). Now the
    genuine stream, in sequence, is the timeline again after RESYNC_S of it; a real re-send, which ends where the
    stream ended, never runs that long."""
    from vibrawatch.agent.sources.mqtt_source import RESYNC_S

    src = MqttSampleSource("s", lambda t, h: None, 20000, ("a", "b"), backlog=10_000)
    caplog.set_level(logging.WARNING, "vibrawatch.source")
    rows = [[0.1, 0.2]] * 2000  # 0.1 s a message
    t0 = 1.7e9
    src._on_message(json.dumps({"v": 1, "t": t0, "fs_hz": 20000, "samples": rows}).encode())
    src._on_message(json.dumps({"v": 1, "t": t0 + 500, "fs_hz": 20000, "samples": rows}).encode())  # forged
    n = int(2 * RESYNC_S / 0.1)
    for i in range(1, n):
        src._on_message(json.dumps({"v": 1, "t": t0 + i * 0.1, "fs_hz": 20000, "samples": rows}).encode())
    good = [c.t_start for c in src._queue.queue if c.fault is None]
    refused = int(round((good[2] - t0) / 0.1)) - 1  # genuine messages refused before the resync
    assert good[:2] == [t0, t0 + 500] and refused == pytest.approx(RESYNC_S / 0.1, abs=1)
    assert len(good) == 2 + n - 1 - refused and src.resent == refused  # every one after it taken
    assert any("taken as the timeline" in r.getMessage() for r in caplog.records)


def _refusal(payload: bytes) -> SamplesRefused:
    try:
        parse_samples(payload)
    except SamplesRefused as e:
        return e
    raise AssertionError(f"{payload[:40]!r} was accepted")


def test_iso_time_never_fails() -> None:
    for t in (math.nan, math.inf, -math.inf, 1e20, 1e308, -1e20, MAX_T + 1e9):
        assert iso(t)[4] == "-" and iso(t).endswith("Z")
    assert iso(1700000000.123) == "2023-11-14T22:13:20.123Z"


def test_huge_samples_make_a_sensor_status_never_a_non_finite_score(tiny_bundle: Path, tiny_data: Path) -> None:
    """±1e38 is a finite float32, but the features overflow: the score must not go out as NaN/inf (the spool's
    JSON encoding refused it and the agent died), and the alarm state must not see it."""
    from vibrawatch.agent.detect.results import Scored, SensorStatus
    from vibrawatch.agent.link.topics import encode, window_messages
    from vibrawatch.agent.model.bundle import load_bundle
    from vibrawatch.agent.pipeline import Pipeline
    from vibrawatch.agent.sources.loaders import load
    from vibrawatch.agent.sources.source import Chunk, ReplaySource

    b = load_bundle(tiny_bundle)
    rec = load(tiny_data)
    pipe = Pipeline(b)
    events = []
    for c in ReplaySource(tiny_data, chunk=4096).chunks():
        if c.t_start >= rec.timestamps[b.detector.window + 2]:
            break
        events += pipe.process(c)
    assert any(isinstance(e, Scored) for e in events)
    t = float(rec.timestamps[b.detector.window + 2])
    huge = np.where(rec.data[0] > 0, 1e38, -1e38).astype(np.float32)
    bad = [e for i in range(b.detector.window + 2) for e in pipe.process(Chunk(huge, t + 10 * i, new_segment=True))]
    assert [type(e) for e in bad] == [SensorStatus] and "non-finite score" in (bad[0].reason or "")
    assert pipe.times.model_non_finite == 0  # the samples' doing, not the model's: a deploy's probation goes on
    good = [e for i in range(b.detector.window + 2)
            for e in pipe.process(Chunk(rec.data[i], t + 1000 + 10 * i, new_segment=True))]
    scored = [e for e in good if isinstance(e, Scored)]
    assert isinstance(good[0], SensorStatus) and good[0].reason is None and scored  # it scores again
    for e in scored:  # and what it scores can be sent
        for _kind, payload in window_messages(e, b.detector.channels, b.detector.threshold, b.version):
            encode(payload)


def test_a_model_that_outputs_nan_on_probation_is_rolled_back(tiny_bundle: Path, tiny_data: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline withholds a non-finite score as a sensor fault, so a deploy's per-score check never sees
    it: the probation counts windows whose model output was NaN/inf on a finite input, and rolls back."""
    from vibrawatch.agent.detect.results import Scored, SensorStatus
    from vibrawatch.agent.model.bundle import load_bundle
    from vibrawatch.agent.model.deploy_state import DeploySection, StateDir
    from vibrawatch.agent.model.probation import Probation
    from vibrawatch.agent.pipeline import NON_FINITE, Pipeline
    from vibrawatch.agent.sources.source import ReplaySource

    b = load_bundle(tiny_bundle)
    monkeypatch.setattr(b.model, "reconstruct", lambda x: np.full_like(x, np.nan))
    pipe = Pipeline(b)
    events = [e for c in ReplaySource(tiny_data, chunk=4096).chunks() for e in pipe.process(c)]
    assert not any(isinstance(e, Scored) for e in events)
    assert [e.reason for e in events if isinstance(e, SensorStatus)][:1] == [NON_FINITE]
    assert pipe.times.model_non_finite > 0
    section = DeploySection(state_dir=str(tmp_path))
    probation, rolled = Probation(StateDir(tmp_path), say=lambda outcome: None, back=lambda: None), []
    monkeypatch.setattr(probation, "_rollback", rolled.append)
    probation.begin({"to": "new"})
    probation.judge(Pipeline(b), section)  # the probation's start
    assert rolled == []
    pipe = probation._base[0]  # type: ignore[index]
    for c in ReplaySource(tiny_data, chunk=4096).chunks():
        pipe.process(c)
        if pipe.times.model_non_finite:
            break
    probation.judge(pipe, section)
    assert len(rolled) == 1 and "not finite" in rolled[0]


def _publisher(tmp_path: Path, port: int, **mqtt_kw: object) -> tuple[Publisher, Spool]:
    cfg = AgentConfig(AgentSection("lab", "gw9", "unused", spool=str(tmp_path / "spool.sqlite")),
                      mqtt=MqttSection(port=port, max_backoff_s=1, **mqtt_kw))  # type: ignore[arg-type]
    spool = Spool(cfg.agent.spool)
    return Publisher(cfg.mqtt, spool, {"model": "m"}, site=cfg.agent.site, device=cfg.agent.device,
                     password=cfg.password), spool


def _wait(cond: object, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_an_exception_in_a_message_handler_does_not_kill_the_network_thread(tmp_path: Path) -> None:
    """paho lets a callback's exception end its thread: the agent lived on, deaf and mute. Now the error is
    logged, put in the retained status, and the next message arrives."""
    broker = Broker(tmp_path).start()
    pub, spool = _publisher(tmp_path, broker.port)
    got: list[bytes] = []

    def handler(payload: bytes) -> None:
        if payload == b"boom":
            raise RuntimeError("handler bug")
        got.append(payload)

    statuses: list[dict] = []
    node = mqtt.Client(CallbackAPIVersion.VERSION2)
    node.on_message = lambda c, u, m: statuses.append(json.loads(m.payload))
    try:
        pub.subscribe("lab/raw", handler)
        pub.start()
        assert _wait(lambda: pub.connected)
        node.connect("127.0.0.1", broker.port)
        node.subscribe("vibrawatch/v1/lab/gw9/status", qos=1)
        node.loop_start()
        assert _wait(lambda: statuses)
        time.sleep(0.5)  # the agent's subscription is in place
        node.publish("lab/raw", b"boom", qos=1).wait_for_publish(5)
        node.publish("lab/raw", b"after", qos=1).wait_for_publish(5)
        assert _wait(lambda: got == [b"after"], 15), "the network thread died with the handler's exception"
        assert _wait(lambda: "RuntimeError: handler bug" in statuses[-1].get("error", ""))
        assert statuses[-1]["state"] == "online"
    finally:
        node.loop_stop()
        pub.stop()
        spool.close()
        broker.stop()


def test_an_unreachable_broker_is_logged_with_the_reason_then_at_a_capped_interval(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import vibrawatch.agent.link.reach as reach

    monkeypatch.setattr(reach, "UNREACHABLE_LOG_FIRST_S", 2.0)
    caplog.set_level(logging.INFO, "vibrawatch.publish")
    port = free_port()  # nothing listens there
    pub, spool = _publisher(tmp_path, port)
    for i in range(3):
        spool.put("t", {"i": i})
    try:
        pub.start()
        assert _wait(lambda: pub.connection.reach.failures >= 7, 60)
    finally:
        pub.stop()
        spool.close()
    lines = [r.getMessage() for r in caplog.records if "reach the broker" in r.getMessage()]
    assert lines[0] == (f"cannot reach the broker at 127.0.0.1:{port}: connection refused: nothing listens on that "
                        "host and port (wrong port, or the broker is down); next attempt in 2 s, then every 1 s; 3 "
                        "message(s) spooled")
    assert any(f"still cannot reach the broker at 127.0.0.1:{port} after" in line and "3 message(s) spooled" in line
               for line in lines[1:])
    assert len(lines) < 7  # not one line per attempt: 2 s, then 4 s, 8 s ... up to 300 s between lines


def test_tls_refused_is_logged_with_the_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """TLS configured against a plain listener: the handshake fails, and the log says it is TLS."""
    broker = Broker(tmp_path).start()
    caplog.set_level(logging.INFO, "vibrawatch.publish")
    pub, spool = _publisher(tmp_path, broker.port, tls=True)
    try:
        pub.start()
        assert _wait(lambda: pub.connection.reach.failures >= 1, 30)
    finally:
        pub.stop()
        spool.close()
        broker.stop()
    lines = [r.getMessage() for r in caplog.records if "reach the broker" in r.getMessage()]
    assert "TLS handshake failed" in lines[0] and "check ca_file" in lines[0]


def test_failure_reasons_name_dns_and_tls() -> None:
    assert "does not resolve (DNS" in connect_failure_reason(socket.gaierror(-2, "Name or service not known"))
    assert "TLS handshake failed" in connect_failure_reason(ssl.SSLError(1, "certificate verify failed"))


def test_drops_while_connected_are_logged_and_reach_the_status(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A spool too small for the rate drops while the broker is connected; before, the status said 0 dropped
    (it was only sent on connect) and the log said nothing."""
    broker = Broker(tmp_path).start()
    caplog.set_level(logging.WARNING, "vibrawatch.publish")
    cfg = AgentConfig(AgentSection("lab", "gw8", "unused", spool=str(tmp_path / "spool.sqlite")),
                      mqtt=MqttSection(port=broker.port, inflight=1))
    spool = Spool(cfg.agent.spool, max_bytes=128 * 1024)
    pub = Publisher(cfg.mqtt, spool, {"model": "m"}, site=cfg.agent.site, device=cfg.agent.device)
    statuses: list[dict] = []
    node = mqtt.Client(CallbackAPIVersion.VERSION2)
    node.on_message = lambda c, u, m: statuses.append(json.loads(m.payload))
    try:
        pub.start()
        assert _wait(lambda: pub.connected)
        node.connect("127.0.0.1", broker.port)
        node.subscribe("vibrawatch/v1/lab/gw8/status", qos=1)
        node.loop_start()
        assert _wait(lambda: statuses and statuses[-1]["spool_dropped"] == 0)
        while spool.dropped == 0:
            pub.enqueue("score", {"pad": "x" * 2000})
        assert pub.connected
        assert _wait(lambda: statuses[-1]["spool_dropped"] > 0), "the status still says nothing was dropped"
    finally:
        node.loop_stop()
        pub.stop()
        spool.close()
        broker.stop()
    lines = [r.getMessage() for r in caplog.records if "spool full" in r.getMessage()]
    assert lines and "the broker takes messages slower than they come" in lines[0]
    # the log states the count the status gives (issue 21: the last line said 1,792, the status 1,974)
    assert f"{statuses[-1]['spool_dropped']} in all" in lines[-1] and f"{spool.dropped} in all" in lines[-1]


def test_a_storm_of_spool_drops_logs_each_count_the_status_carries(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Drops between two statuses are stated with the next status; those after the last status at the stop."""
    from vibrawatch.agent.link.sender import Drops

    caplog.set_level(logging.WARNING, "vibrawatch.publish")
    spool = Spool(tmp_path / "s.sqlite", max_bytes=128 * 1024)
    drops = Drops(spool)
    stamped = []
    try:
        for round_ in range(3):
            before = spool.dropped
            while spool.dropped == before:
                spool.put("t", {"pad": "x" * 2000})
            drops.report(True)
            if round_ < 2:
                stamped.append(drops.stamp(True))  # a status goes out with this count
        drops.flush(True)
        counts = [int(r.getMessage().split(" in all")[0].rsplit(" ", 1)[1]) for r in caplog.records
                  if "spool full" in r.getMessage()]
    finally:
        spool.close()
    assert all(n in counts for n in stamped) and counts[-1] == spool.dropped and counts == sorted(set(counts))


def test_samples_messages_dropped_when_scoring_falls_behind_reach_the_status(tmp_path: Path) -> None:
    """Issue 21: such drops were only logged. Now the retained status counts them (``samples_dropped``),
    summed across a reload that replaced the source, and a new publisher's status says it at once."""
    from vibrawatch.agent.reader import DropCount

    broker = Broker(tmp_path).start()
    cfg = AgentConfig(AgentSection("lab", "gw9", "unused", spool=str(tmp_path / "spool.sqlite")),
                      mqtt=MqttSection(port=broker.port))
    spool = Spool(cfg.agent.spool)
    pub = Publisher(cfg.mqtt, spool, {"model": "m"}, site=cfg.agent.site, device=cfg.agent.device)
    statuses: list[dict] = []
    node = mqtt.Client(CallbackAPIVersion.VERSION2)
    node.on_message = lambda c, u, m: statuses.append(json.loads(m.payload))
    drops = DropCount()
    src = MqttSampleSource("s", lambda t, h: None, 20000, ("a", "b"), backlog=2)
    try:
        pub.start()
        assert _wait(lambda: pub.connected)
        node.connect("127.0.0.1", broker.port)
        node.subscribe("vibrawatch/v1/lab/gw9/status", qos=1)
        node.loop_start()
        assert _wait(lambda: statuses and statuses[-1]["spool_dropped"] == 0)
        drops.update(src, pub.status)
        assert "samples_dropped" not in statuses[-1]  # none dropped: not said
        for i in range(5):  # nothing takes them: the third on is dropped
            src._on_message(json.dumps({"v": 1, "t": 1.0 + i, "fs_hz": 20000, "samples": [[0.1, 0.2]]}).encode())
        assert src.overflowed == 3
        drops.update(src, pub.status)
        assert _wait(lambda: statuses[-1].get("samples_dropped") == 3), statuses[-1]
        again = MqttSampleSource("s", lambda t, h: None, 20000, ("a", "b"), backlog=1)  # a reload's new source
        for i in range(3):
            again._on_message(json.dumps({"v": 1, "t": 9.0 + i, "fs_hz": 20000, "samples": [[0.1, 0.2]]}).encode())
        drops.update(again, pub.status)
        assert drops.total == 5
        pub2 = Publisher(cfg.mqtt, spool, {"model": "m"}, site=cfg.agent.site, device="gw9")
        drops.update(again, pub2.status)  # a new publisher (a reload changed the broker): told at once
        assert pub2.status.counts == {"samples_dropped": 5}
        payload = json.loads(pub2.status.stamped(0))
        assert payload["samples_dropped"] == 5
    finally:
        node.loop_stop()
        pub.stop()
        spool.close()
        broker.stop()
    from jsonschema import Draft202012Validator

    schema = json.loads((Path(__file__).parents[1] / "agent" / "link" / "schemas" / "status.json").read_text())
    Draft202012Validator(schema).validate(statuses[-1])
    assert schema["properties"]["samples_dropped"]["type"] == "integer"


# -- fuzzing: thousands of generated payloads per run, derandomized (the same ones every run) -----------------
_special = st.sampled_from([10**401, -(10**401), 10**20, 2**63, 1e308, 1e38, -1e38, 1e20, 253402300800.0])
_scalar = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | _special
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6))
_json = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                                            max_size=4), max_leaves=8)
_number = st.floats() | st.integers(0, 2**40) | _scalar
_row = st.lists(st.floats(width=32) | st.integers(-5, 5) | _scalar, min_size=0, max_size=4)
_message = st.fixed_dictionaries(
    {}, optional={"v": st.just(1) | _scalar, "t": _number, "fs_hz": _number,
                  "samples": st.lists(_row, max_size=6) | _json, "extra": _json},
)


def _encoded(msg: object) -> bytes:
    return json.dumps(msg, allow_nan=True).encode()


FUZZ = settings(max_examples=2000, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(st.one_of(_message.map(_encoded), _json.map(_encoded), st.binary(max_size=64)))
def test_fuzz_the_samples_parser_refuses_or_returns_a_sane_chunk(payload: bytes) -> None:
    try:
        c = parse_samples(payload, max_bytes=1 << 16)
    except SamplesRefused as e:
        assert e.reason and str(e)
        return
    assert 0 <= c.t_start <= MAX_T and c.fs_hz is not None and 0 < c.fs_hz <= 1e7
    assert c.samples.dtype == np.float32 and c.samples.ndim == 2 and min(c.samples.shape) >= 1


@settings(FUZZ, max_examples=800)  # 800 lists of 1-4 messages: ~2000 payloads
@given(st.lists(st.one_of(_message.map(_encoded), st.binary(max_size=32)), min_size=1, max_size=4))
def test_fuzz_the_samples_callback_never_raises_and_never_loses_a_message_silently(payloads: list[bytes]) -> None:
    src = MqttSampleSource("s", lambda t, h: None, 20000, ("a", "b"), backlog=16)
    for p in payloads:
        src._on_message(p)  # runs on paho's thread: an exception here would end it
    chunks = list(src._queue.queue)
    assert src.rejected + sum(1 for c in chunks if not c.fault) == len(payloads)  # each used, or counted
    assert src.rejected == 0 or any(c.fault for c in chunks)  # and a refusal is never without a sensor fault


def test_callbacks_survive_a_failing_log_handler() -> None:
    """Even a logging failure inside the refusal path stays on this side of paho's thread."""
    src = MqttSampleSource("s", lambda t, h: None, 20000, ("a", "b"))

    class Broken(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raise OSError("disk full")

        def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
            raise OSError("disk full")

    h = Broken()
    logging.getLogger("vibrawatch.source").addHandler(h)
    try:
        src._on_message(b"junk")
    finally:
        logging.getLogger("vibrawatch.source").removeHandler(h)
    assert src.rejected == 1


def test_a_large_block_reaches_the_pipeline_in_consecutive_pieces() -> None:
    """So the pipeline's temporaries stay those of a small chunk whatever the message size."""
    from vibrawatch.agent.sources.mqtt_source import PIECE_ROWS

    src = MqttSampleSource("s", lambda t, h: None, 20000, ("a", "b"), stop=lambda: src._queue.empty())
    rows = np.arange(2 * (2 * PIECE_ROWS + 100), dtype=float).reshape(-1, 2)
    src._on_message(json.dumps({"v": 1, "t": 100.0, "fs_hz": 20000, "samples": rows.tolist()}).encode())
    pieces = list(src.chunks())
    assert [len(p.samples) for p in pieces] == [PIECE_ROWS, PIECE_ROWS, 100]
    np.testing.assert_array_equal(np.concatenate([p.samples for p in pieces]), rows.astype(np.float32))
    assert [p.t_start for p in pieces] == [100.0, 100.0 + PIECE_ROWS / 20000, 100.0 + 2 * PIECE_ROWS / 20000]
    assert all(p.fs_hz == 20000 for p in pieces)  # each still carries the node's rate for the rate check


def _block(signal: np.ndarray, start: int, n: int, fs: float = 20000.0, t0: float = 1.7e9) -> bytes:
    """Rows ``start``..``start + n`` of ``signal`` as a samples message, timed as a node would time them."""
    body = {"v": 1, "t": t0 + start / fs, "fs_hz": fs, "samples": signal[start: start + n].tolist()}
    return json.dumps(body).encode()


@pytest.mark.parametrize("size", [1, 2, 4095, 4096, 4097, 16_384, 111_111, 131_072])
def test_resent_overlapping_and_reordered_messages_give_each_sample_once(size: int,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """The continuity check covers the whole message, not its first piece: re-sent and late messages are
    refused (counted in ``resent``, logged naming why) without a sensor fault, since the stream they repeat is
    whole (a fault would restart its frames and windows); an overlapping one is cut to its new samples."""
    from vibrawatch.agent.sources.mqtt_source import ALREADY_SEEN

    fs = 20000.0
    signal = np.arange(8 * size * 2, dtype=np.float64).reshape(-1, 2)  # every sample unique: duplicates show
    src = MqttSampleSource("s", lambda t, h: None, fs, ("a", "b"), backlog=64, stop=lambda: src._queue.empty(),
                           max_message_bytes=1 << 30)
    half = size // 2
    sends = [(0, size), (0, size),  # re-sent (QoS 1 redelivery, a node that sends twice)
             (size - half, size),  # overlaps the last one by half (by none for a single row)
             (3 * size, size), (2 * size - half, size),  # reordered: the late one's samples are all old
             (4 * size - 1, size),  # overlaps by exactly one sample
             (0, size)]  # an old one again, long after
    caplog.set_level(logging.INFO, "vibrawatch.source")
    for start, n in sends:
        src._on_message(_block(signal, start, n))
    chunks = list(src.chunks())
    good = [c for c in chunks if c.fault is None]
    index = np.concatenate([np.rint((c.t_start - 1.7e9) * fs) + np.arange(len(c.samples)) for c in good])
    got = np.concatenate([c.samples[:, 0] / 2 for c in good])
    np.testing.assert_array_equal(index, got)  # each chunk's times are its samples' own
    assert np.all(np.diff(got) > 0), "a sample reached the pipeline twice, or time went backwards"
    if size > 1:
        assert src.rejected == 3 and src.trimmed == half + 1
        assert int(got[-1]) == 5 * size - 2 and len(got) == 4 * size - half - 1
    else:  # the one-sample overlap is the whole message: refused, not trimmed
        assert src.rejected == 4 and src.trimmed == 0 and got.tolist() == [0, 1, 3]
    assert not [c.fault for c in chunks if c.fault]
    assert src.resent == src.rejected
    assert any(ALREADY_SEEN in r.getMessage() and "last accepted one at t=" in r.getMessage()
               for r in caplog.records)  # the log says which and why


def test_check_refuses_a_password_file_others_can_read_with_the_line_run_gives(tiny_bundle: Path, tiny_data: Path,
                                                                              tmp_path: Path) -> None:
    """Issue 21: `check` passed a mode-0644 password file that `run` then refused. Both read it with the one
    function (AgentConfig.password), so both stop with the same line, exit 2; at 0600 `check` passes."""
    import subprocess

    from test_agent_e2e import agent_command, gateway_env, write_config

    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    cfg = write_config(tmp_path, free_port(), tiny_bundle, tiny_data)
    cfg.write_text(cfg.read_text().replace("[mqtt]", f'[mqtt]\nusername = "gw"\npassword_file = "{secret}"'))
    assert f'password_file = "{secret}"' in cfg.read_text()
    lines = {}
    for command in ("check", "run"):
        res = subprocess.run(agent_command(command, "--config", str(cfg)), env=gateway_env(tmp_path),
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 2, res.stdout + res.stderr
        lines[command] = [x for x in res.stderr.splitlines() if x.startswith("error: ")]
    assert lines["check"] == lines["run"] and len(lines["check"]) == 1
    assert f"{secret} has mode 0644" in lines["check"][0] and "chmod 600" in lines["check"][0]
    assert "s3cret" not in str(lines)
    secret.chmod(0o600)
    ok = subprocess.run(agent_command("check", "--config", str(cfg)), env=gateway_env(tmp_path),
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "password read" in ok.stdout, ok.stderr


def test_one_message_far_in_the_future_cannot_stop_the_scoring_for_good(caplog: pytest.LogCaptureFixture) -> None:
    """A forged (or badly clocked) message at t=5e9 must not make every later good sample look re-sent: a
    message far behind the last accepted one starts a new timeline, said in the log; one near it is refused."""
    from vibrawatch.agent.sources.mqtt_source import NEW_TIMELINE_S

    src = MqttSampleSource("s", lambda t, h: None, 20000, ("a", "b"), backlog=16)
    caplog.set_level(logging.WARNING, "vibrawatch.source")
    rows = [[0.1, 0.2]] * 100
    for t in (1.7e9, 5e9, 1.7e9 + 0.005, 1.7e9 + 0.010, 1.7e9 + 0.010, 1.7e9 + 0.010 - NEW_TIMELINE_S / 2):
        src._on_message(json.dumps({"v": 1, "t": t, "fs_hz": 20000, "samples": rows}).encode())
    chunks = list(src._queue.queue)
    assert [c.t_start for c in chunks if not c.fault] == [1.7e9, 5e9, 1.7e9 + 0.005, 1.7e9 + 0.010]
    assert src.rejected == 2  # the re-sent one, and one only minutes behind
    assert any("taken as a new timeline" in r.getMessage() for r in caplog.records)
