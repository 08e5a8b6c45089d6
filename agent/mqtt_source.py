"""Raw samples from an MQTT topic: a sensor node publishes blocks of samples, the agent scores them.

Payload (JSON, documented in docs/mqtt.md, schema agent/schemas/samples.json):

    {"v": 1, "t": 1700000000.0, "fs_hz": 20000, "samples": [[x0, y0, ...], [x1, y1, ...], ...]}

``t`` is the time of the first sample (epoch seconds), ``samples`` one row per sample, one column per
channel. A message that is not this shape is dropped with one log line (counted in ``rejected``); a wrong
channel count or a ``fs_hz`` other than the model's reaches the pipeline as a sensor fault, and a gap in
``t`` restarts the frames, so a misconfigured sensor node never produces a score.
"""

from __future__ import annotations

import json
import logging
import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .source import Chunk, SourceContext

log = logging.getLogger("vibrawatch.source")

MAX_SAMPLES = 1 << 17  # per message; larger blocks are rejected rather than held in memory


def parse_samples(payload: bytes) -> Chunk:
    """The chunk a samples message carries; ValueError naming the field and what was expected."""
    try:
        msg = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"not JSON ({e})") from None
    if not isinstance(msg, dict):
        raise ValueError("expected a JSON object {v, t, fs_hz, samples}")
    if msg.get("v") != 1:
        raise ValueError(f"field 'v' is {msg.get('v')!r}, expected 1")
    for key in ("t", "fs_hz"):
        if not isinstance(msg.get(key), int | float) or isinstance(msg.get(key), bool):
            raise ValueError(f"field {key!r} is {msg.get(key)!r}, expected a number")
    if msg["fs_hz"] <= 0:
        raise ValueError(f"field 'fs_hz' is {msg['fs_hz']}, expected > 0")
    rows = msg.get("samples")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
        raise ValueError("field 'samples' expected a non-empty list of rows, one number per channel")
    if len(rows) > MAX_SAMPLES:
        raise ValueError(f"field 'samples' has {len(rows)} rows, expected at most {MAX_SAMPLES} per message")
    if len({len(r) for r in rows}) != 1:
        raise ValueError("field 'samples': rows have different lengths, expected one number per channel")
    try:
        if any(v is None for r in rows for v in r):  # numpy would read null as NaN: say what it really is
            raise TypeError
        samples = np.asarray(rows, dtype=np.float64)  # NaN/inf (JSON extensions) are left to the sensor checks
    except (TypeError, ValueError):
        raise ValueError("field 'samples' holds something other than numbers") from None
    return Chunk(samples.astype(np.float32), float(msg["t"]), fs_hz=float(msg["fs_hz"]))


@dataclass(frozen=True)
class MqttSourceSettings:
    topic: str = ""  # where the sensor node publishes raw samples
    fs_hz: float | None = None  # the node's configured rate, checked against the bundle's at start; None = the bundle's
    full_scale: float | None = None  # |x| at which the node's sensor clips (saturation check); None = unknown

    def __post_init__(self) -> None:
        if self.fs_hz is not None and not 0 < self.fs_hz < float("inf"):
            raise ValueError(f"fs_hz = {self.fs_hz}: expected a rate > 0")


class MqttSampleSource:
    """Chunks from the samples topic, in arrival order; ``subscribe`` is the publisher's (it re-subscribes
    after every reconnect), so samples and scores share one connection."""

    kind: ClassVar[str] = "mqtt"
    description: ClassVar[str] = "raw samples a sensor node publishes on an MQTT topic"
    Settings: ClassVar[type] = MqttSourceSettings
    SAMPLE: ClassVar[str] = '''\
[source]
kind = "mqtt"                         # raw samples published by a sensor node (payload: docs/mqtt.md)
topic = "sensors/press7/raw"          # on the agent's own broker connection ([mqtt])
# fs_hz = 20000                       # the node's rate, checked against the bundle's at start (and per message)
# full_scale = 16.0                   # |x| at which the node's sensor clips (saturation check)
'''
    provides = "samples"
    full_scale: float | None = None

    @classmethod
    def open(cls, s: MqttSourceSettings, ctx: SourceContext) -> MqttSampleSource:
        if not s.topic:
            from .errors import ConfigError

            raise ConfigError("[source] kind 'mqtt' needs topic = where the sensor publishes samples")
        if ctx.subscribe is None:
            raise ValueError("an MQTT samples source needs the publisher's subscribe")
        src = cls(s.topic, ctx.subscribe, s.fs_hz or ctx.fs_hz, ctx.channels, stop=ctx.stop)
        src.full_scale = s.full_scale
        return src

    def __init__(self, topic: str, subscribe: Callable[[str, Callable[[bytes], None]], None], fs_hz: float,
                 channels: tuple[str, ...], stop: Callable[[], bool] = lambda: False, backlog: int = 256) -> None:
        self.topic, self.stop = topic, stop
        self.fs_hz, self.channels = float(fs_hz), tuple(channels)
        self._queue: queue.Queue[Chunk] = queue.Queue(maxsize=backlog)
        self.rejected = 0
        self.overflowed = 0
        subscribe(topic, self._on_message)  # now, not at the first next(): samples sent meanwhile are kept

    def _on_message(self, payload: bytes) -> None:
        """Runs on paho's thread: parse and hand over, never block."""
        try:
            chunk = parse_samples(payload)
        except ValueError as e:
            self.rejected += 1
            if self.rejected == 1 or self.rejected % 100 == 0:
                log.warning("%s: samples message rejected (%d so far): %s", self.topic, self.rejected, e)
            return
        try:
            self._queue.put_nowait(chunk)
        except queue.Full:  # we fall behind: drop, and the time gap restarts the frames
            self.overflowed += 1
            if self.overflowed == 1 or self.overflowed % 100 == 0:
                log.warning("%s: scoring falls behind, %d samples message(s) dropped", self.topic, self.overflowed)

    def chunks(self) -> Iterator[Chunk]:
        while not self.stop():
            try:
                yield self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
