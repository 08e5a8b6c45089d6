"""Raw samples from an MQTT topic: a sensor node publishes blocks of samples, the agent scores them.

Payload (JSON, documented in docs/mqtt.md, "Raw samples in" and "Hostile input"):

    {"v": 1, "t": 1700000000.0, "fs_hz": 20000, "samples": [[x0, y0, ...], [x1, y1, ...], ...]}

``t`` is the time of the first sample (epoch seconds), ``samples`` one row per sample, one column per
channel. Whatever arrives on the topic is untrusted: a message larger than the configured bound, not JSON,
nested too deep, or with a field of the wrong type or range (``t`` NaN, infinite or past the year 9999,
``fs_hz`` NaN, booleans, a 400-digit integer) is refused before it reaches the pipeline. A refusal
becomes a ``sensor`` fault (through the pipeline, like a flatline: no window mixes data across it) and a
counted, rate-limited log line; nothing raised here can reach paho's network thread, which would die
silently and take the agent's connection with it.

Each sample is scored once: a message is checked against the last accepted sample as a whole, before it is
cut into pieces. A message whose samples all lie at or before the last accepted one (re-sent by QoS 1, sent
twice by the node, or arriving after a later one) is refused, counted in ``resent`` (the status's
``samples_resent``) and logged, but it is no sensor fault: the stream it repeats is whole, so its frames
and windows go on (a fault would restart them, and a node that sends everything twice would never complete
a window); a message that overlaps the last one is trimmed to its new samples (counted in ``trimmed``).
A message that ends more than NEW_TIMELINE_S before the last accepted sample is taken as a new timeline (a
node's clock set back, or one forged message far in the future), logged, so that no single message can stop
the scoring for good.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import queue
import reprlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..sections import topic_filter
from .allocator import release_free_memory
from .source import Chunk, SourceContext

log = logging.getLogger("vibrawatch.source")

MAX_SAMPLES = 1 << 17  # rows per message; larger blocks are refused rather than held in memory
MAX_T = 253402214400.0  # 9999-12-31T00:00:00Z: every window time after it still formats as an ISO date
MAX_FS_HZ = 1e7  # no vibration sensor samples faster; beyond it a rate is garbage, not a mismatch
MESSAGE_SECONDS = 3.0  # the default size bound holds this much signal...
BYTES_PER_VALUE = 24  # ...at this many bytes of JSON per number ("-0.012345678901234567, ")
MIN_MESSAGE_BYTES = 64 * 1024
PIECE_ROWS = 4096  # a large block goes to the pipeline in pieces: its temporaries stay those of a small one
LARGE_MESSAGE_BYTES = 1 << 20  # after a message this large, freed memory goes back to the kernel...
TRIM_AFTER_S = 0.5  # ...this long after it came (paho frees its read buffer only after the callback returns)
LOG_EVERY_S = 60.0  # after the first, at most one log line per reason per minute (with the count)
FAULT_EVERY_S = 10.0  # during a run of refusals, the sensor status changes to another reason this often at most
ALREADY_SEEN = "samples at or before the last accepted one (re-sent, or out of order)"
NEW_TIMELINE_S = 600.0  # a message ending this far before the last accepted sample is a clock set back, not a re-send
# Messages refused as re-sent that themselves run on in sequence for this much signal are the timeline: a re-send
# ends where the stream did, but after one message stamped ahead (a clock set forward, or forged) every genuine
# message looks re-sent until real time catches up, and the node would be silent that long (a node replaying
# faster than real time is ahead of the clock by design, so the clock cannot judge it).
RESYNC_S = 60.0

_show = reprlib.Repr()
_show.maxstring, _show.maxother, _show.maxlist, _show.maxlevel, _show.maxlong = 40, 40, 4, 2, 40


def old_rows(t_start: float, n: int, fs_hz: float, end_t: float | None) -> int:
    """How many leading rows of a block of ``n`` samples from ``t_start`` lie at or before the last accepted
    sample, when the accepted samples end at ``end_t`` (the time the next sample is due). A block's times are
    ``t_start + i / fs_hz``, increasing, so the old rows are a prefix and one comparison over the whole
    block finds them (half a sample of tolerance: a node's rounded ``t`` still continues the last block)."""
    if end_t is None:
        return 0
    k = math.ceil((end_t - t_start) * fs_hz - 0.5)
    return min(max(k, 0), n)


def default_max_message_bytes(fs_hz: float, n_channels: int) -> int:
    """A few seconds of samples at the model's rate, as JSON: larger messages are refused unread."""
    return max(MIN_MESSAGE_BYTES, int(MESSAGE_SECONDS * fs_hz * n_channels * BYTES_PER_VALUE))


class SamplesRefused(ValueError):
    """A samples message the agent will not use. ``reason`` is the stable part (the ``sensor`` status's
    fault); the message adds the offending value (the log line)."""

    def __init__(self, reason: str, value: Any = None, detail: str | None = None) -> None:
        self.reason = reason
        if detail is None and value is not None:
            detail = f"got {shown(value)}"
        super().__init__(f"{reason}; {detail}" if detail else reason)


def shown(value: Any) -> str:
    """A short repr that cannot fail (huge integers, deep nesting) and cannot flood a log line."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        try:
            return f"an integer of {len(str(abs(value)))} digits"
        except ValueError:  # past Python's int-to-str limit
            return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    try:
        return _show.repr(value)
    except (ValueError, RecursionError):
        return f"a {type(value).__name__}"


def _number(msg: dict[str, Any], key: str, expected: str) -> float:
    """``msg[key]`` as a finite float; SamplesRefused for a bool, a string, NaN/inf or an int beyond float."""
    v = msg.get(key)
    if type(v) not in (int, float):  # bool is a subclass of int: refuse it too
        raise SamplesRefused(f"field {key!r} expected {expected}", v)
    try:
        f = float(v)
    except OverflowError:
        raise SamplesRefused(f"field {key!r} expected {expected}", v) from None
    if not math.isfinite(f):
        raise SamplesRefused(f"field {key!r} expected {expected}", v)
    return f


def parse_samples(payload: bytes, max_bytes: int | None = None) -> Chunk:
    """The chunk a samples message carries; SamplesRefused (a ValueError) naming the field and what was
    expected. Never raises anything else, whatever the bytes."""
    if max_bytes is not None and len(payload) > max_bytes:
        raise SamplesRefused(f"message larger than the {max_bytes}-byte limit ([source] max_message_bytes)",
                             detail=f"got {len(payload)} bytes")
    try:
        msg = json.loads(payload)
    except RecursionError:
        raise SamplesRefused("not JSON the agent reads: nested too deep") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, and Python's int-digits limit
        raise SamplesRefused("not JSON", detail=str(e)[:120]) from None
    if not isinstance(msg, dict):
        raise SamplesRefused("expected a JSON object {v, t, fs_hz, samples}", detail=f"got a {type(msg).__name__}")
    v = msg.get("v")
    if type(v) is not int or v != 1:  # true == 1 in Python: the type matters
        raise SamplesRefused("field 'v' expected 1", detail=f"'v' is {shown(v)}")
    t = _number(msg, "t", "a number, epoch seconds")
    if not 0 <= t <= MAX_T:
        raise SamplesRefused("field 't' expected epoch seconds between 1970 and 9999", t)
    fs_hz = _number(msg, "fs_hz", "a number > 0")
    if not 0 < fs_hz <= MAX_FS_HZ:
        raise SamplesRefused(f"field 'fs_hz' expected a number > 0 and at most {MAX_FS_HZ:g}", msg["fs_hz"])
    rows = msg.get("samples")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
        raise SamplesRefused("field 'samples' expected a non-empty list of rows, one number per channel")
    if len(rows) > MAX_SAMPLES:
        raise SamplesRefused(f"field 'samples' expected at most {MAX_SAMPLES} rows per message",
                             detail=f"got {len(rows)}")
    widths = {len(r) for r in rows}
    if len(widths) != 1 or 0 in widths:
        raise SamplesRefused("field 'samples': rows have different lengths (or none), expected one number per channel")
    kinds = set(map(type, itertools.chain.from_iterable(rows)))
    if not kinds <= {int, float}:  # numpy would read null as NaN, true as 1.0 and "1.5" as 1.5
        odd = sorted(k.__name__ for k in kinds - {int, float})
        raise SamplesRefused("field 'samples' holds something other than numbers", detail=f"found {', '.join(odd)}")
    try:
        samples = np.asarray(rows, dtype=np.float64)  # NaN/inf (JSON extensions) are left to the sensor checks
    except (OverflowError, ValueError, TypeError):  # an integer beyond float64
        raise SamplesRefused("field 'samples' holds a number beyond the float range") from None
    return Chunk(samples.astype(np.float32), t, fs_hz=fs_hz)


def resent_run(behind: tuple[float, float] | None, t_start: float, n: int, fs_hz: float
               ) -> tuple[tuple[float, float], float]:
    """The run of messages refused as re-sent, in sequence, with this one (``n`` samples from ``t_start``): (its
    first time, the next one due) and how many seconds it covers. A message that does not follow starts a run."""
    start, due = behind or (t_start, t_start)
    if abs(t_start - due) > 1.5 / fs_hz:
        start = t_start
    end = t_start + n / fs_hz
    return (start, end), end - start


class RefusalLog:
    """Refused samples messages in the log: the first of each reason at once, then at most one line per reason per
    LOG_EVERY_S with the count since (a flood must not fill the disk)."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._logged: dict[str, tuple[float, int]] = {}  # reason -> (when last logged, count then)
        self._counts: dict[str, int] = {}

    def say(self, reason: str, message: str, size: int, rejected: int) -> None:
        n = self._counts[reason] = self._counts.get(reason, 0) + 1
        now = time.monotonic()
        last = self._logged.get(reason)
        if last is None or now - last[0] >= LOG_EVERY_S:
            more = "" if last is None else f" ({n - last[1]} more since the last line)"
            log.warning("%s: samples message refused (%d bytes; %d refused in all)%s: %s", self.topic, size,
                        rejected, more, message)
            self._logged[reason] = (now, n)


@dataclass(frozen=True)
class MqttSourceSettings:
    topic: str = ""  # where the sensor node publishes raw samples
    fs_hz: float | None = None  # the node's configured rate, checked against the bundle's at start; None = the bundle's
    full_scale: float | None = None  # |x| at which the node's sensor clips (saturation check); None = unknown
    # larger samples messages are refused unread; None = default_max_message_bytes (~3 s at the bundle's rate)
    max_message_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.topic and not topic_filter(self.topic):
            raise ValueError(f"topic = {self.topic!r}: expected an MQTT topic filter ('+' and '#' only as whole "
                             "levels, '#' only last)")
        if self.fs_hz is not None and not 0 < self.fs_hz < float("inf"):
            raise ValueError(f"fs_hz = {self.fs_hz}: expected a rate > 0")
        if self.full_scale is not None and not 0 < self.full_scale < float("inf"):
            raise ValueError(f"full_scale = {self.full_scale}: expected |x| at which the sensor clips, > 0")
        if self.max_message_bytes is not None and self.max_message_bytes < 1:
            raise ValueError(f"max_message_bytes = {self.max_message_bytes}: expected a number of bytes > 0 "
                             "(leave it out for the default, about 3 s of samples at the bundle's rate)")


class MqttSampleSource:
    """Chunks from the samples topic, in arrival order; ``subscribe`` is the publisher's (it re-subscribes
    after every reconnect), so samples and scores share one connection.

    A refused message is counted in ``rejected`` and logged: the first time a reason occurs, then at most
    once a minute per reason with the count. The first refusal after good samples is handed on as a chunk
    with a ``fault`` (the pipeline reports it as a ``sensor`` status and restarts its frames); during a run
    of refusals another reason replaces it at most every FAULT_EVERY_S, so a flood of varied garbage cannot
    turn into a flood of status messages. (The next good chunk's time gap restarts the frames anyway.)"""

    kind: ClassVar[str] = "mqtt"
    description: ClassVar[str] = "raw samples a sensor node publishes on an MQTT topic"
    Settings: ClassVar[type] = MqttSourceSettings
    SAMPLE: ClassVar[str] = '''\
[source]
kind = "mqtt"                         # raw samples published by a sensor node (payload: docs/mqtt.md)
topic = "sensors/press7/raw"          # on the agent's own broker connection ([mqtt])
# fs_hz = 20000                       # the node's rate, checked against the bundle's at start (and per message)
# full_scale = 16.0                   # |x| at which the node's sensor clips (saturation check)
# max_message_bytes = 2880000         # larger samples messages are refused unread (a sensor fault); default:
                                      # ~3 s of samples at the bundle's rate as JSON, 3 x fs_hz x channels x
                                      # 24 bytes, at least 64 KB (2880000 at 20 kHz x 2 channels)
'''
    provides = "samples"
    full_scale: float | None = None

    @classmethod
    def open(cls, s: MqttSourceSettings, ctx: SourceContext) -> MqttSampleSource:
        if not s.topic:
            from ..errors import ConfigError

            raise ConfigError("[source] kind 'mqtt' needs topic = where the sensor publishes samples")
        if ctx.subscribe is None:
            raise ValueError("an MQTT samples source needs the publisher's subscribe")
        src = cls(s.topic, ctx.subscribe, s.fs_hz or ctx.fs_hz, ctx.channels, stop=ctx.stop,
                  max_message_bytes=s.max_message_bytes)
        src.full_scale = s.full_scale
        return src

    def __init__(self, topic: str, subscribe: Callable[[str, Callable[[bytes], None]], None], fs_hz: float,
                 channels: tuple[str, ...], stop: Callable[[], bool] = lambda: False, backlog: int = 256,
                 max_message_bytes: int | None = None) -> None:
        self.topic, self.stop = topic, stop
        self.fs_hz, self.channels = float(fs_hz), tuple(channels)
        self.max_message_bytes = int(max_message_bytes or default_max_message_bytes(self.fs_hz, len(channels)))
        self._queue: queue.Queue[Chunk] = queue.Queue(maxsize=backlog)
        self.rejected = 0
        self.overflowed = 0
        self.trimmed = 0  # rows cut from messages that overlapped the last accepted one
        self.resent = 0  # messages refused whole because every sample in them was accepted before
        self._said = RefusalLog(topic)
        self._last_t = 0.0
        self._end_t: float | None = None  # when the sample after the last accepted one is due (None: none yet)
        self._behind: tuple[float, float] | None = None  # refused as re-sent, in sequence: (first t, next t due)
        self._fault: tuple[str, float] | None = None  # the fault handed on since the last good chunk, and when
        self._trim_at: float | None = None  # when to return a large message's freed memory (agent thread)
        subscribe(topic, self._on_message)  # now, not at the first next(): samples sent meanwhile are kept

    def _on_message(self, payload: bytes) -> None:
        """Runs on paho's thread: parse and hand over, never block, never raise."""
        if len(payload) >= LARGE_MESSAGE_BYTES:
            self._trim_at = time.monotonic() + TRIM_AFTER_S
        try:
            try:
                chunk = self._new_part(parse_samples(payload, self.max_message_bytes))
                self._last_t, self._fault, self._behind = chunk.t_start, None, None
                self._end_t = chunk.t_start + len(chunk.samples) / self.fs_hz
            except SamplesRefused as e:
                self._refuse(e.reason, str(e), len(payload))
                if e.reason == ALREADY_SEEN:  # the stream itself is whole: counted, and scoring goes on
                    self.resent += 1
                    return
                reason, now = f"samples message refused: {e.reason}", time.monotonic()
                if self._fault is not None and (self._fault[0] == reason or now - self._fault[1] < FAULT_EVERY_S):
                    return  # counted and logged; the sensor status already says so
                self._fault = (reason, now)
                chunk = self._fault_chunk(reason)
            self._put(chunk)
        except Exception as e:  # a bug here must not kill paho's network thread
            with contextlib.suppress(Exception):  # nothing more can be done on this thread than try to say so
                log.exception("%s: samples message of %d bytes could not be handled", self.topic, len(payload))
                self._refuse("internal error", f"{type(e).__name__}: {e}"[:200], len(payload))
                self._put(self._fault_chunk(f"samples message could not be handled ({type(e).__name__})"))

    def _new_part(self, chunk: Chunk) -> Chunk:
        """``chunk`` less the samples already accepted; SamplesRefused when none is new. The whole message is
        checked here, before it is cut into pieces: the pipeline's own continuity check sees one piece at a
        time and, once a fault has restarted it, would take the rest of a re-sent message as new."""
        n = len(chunk.samples)
        k = old_rows(chunk.t_start, n, self.fs_hz, self._end_t)
        if k == 0:
            return chunk
        end_t = self._end_t or 0.0
        if k == n and end_t - (chunk.t_start + n / self.fs_hz) > NEW_TIMELINE_S:
            log.warning("%s: samples from t=%.3f, %.0f s before the last accepted one: taken as a new timeline (a "
                        "clock set back?)", self.topic, chunk.t_start, end_t - chunk.t_start)
            return chunk
        if k == n:
            self._behind, run_s = resent_run(self._behind, chunk.t_start, n, self.fs_hz)
            if run_s >= RESYNC_S:
                log.warning("%s: samples have come in sequence for %.0f s, all %.0f s before the last accepted one: "
                            "taken as the timeline (a message stamped ahead, or a clock set back?)", self.topic,
                            run_s, end_t - self._behind[1])
                return chunk
            last = end_t - 1 / self.fs_hz
            raise SamplesRefused(ALREADY_SEEN, detail=f"{n} samples from t={chunk.t_start:.6f}, the last accepted "
                                 f"one at t={last:.6f}")
        self.trimmed += k
        if self.trimmed == k or self.trimmed // 100_000 != (self.trimmed - k) // 100_000:
            log.info("%s: a samples message overlapped the last one: %d already accepted sample(s) dropped "
                     "(%d in all)", self.topic, k, self.trimmed)
        return Chunk(chunk.samples[k:], chunk.t_start + k / self.fs_hz, chunk.new_segment, chunk.fs_hz, chunk.fault)

    def _fault_chunk(self, reason: str) -> Chunk:
        return Chunk(np.empty((0, len(self.channels)), np.float32), self._last_t, new_segment=True, fault=reason)

    def _refuse(self, reason: str, message: str, size: int) -> None:
        self.rejected += 1
        self._said.say(reason, message, size, self.rejected)

    def _put(self, chunk: Chunk) -> None:
        try:
            self._queue.put_nowait(chunk)
        except queue.Full:  # we fall behind: drop, and the time gap restarts the frames
            self.overflowed += 1
            if self.overflowed == 1 or self.overflowed % 100 == 0:
                log.warning("%s: scoring falls behind, %d samples message(s) dropped", self.topic, self.overflowed)

    def chunks(self) -> Iterator[Chunk]:
        while not self.stop():
            if self._trim_at is not None and time.monotonic() >= self._trim_at:
                self._trim_at = None
                release_free_memory()
            try:
                chunk = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            yield from self._pieces(chunk)

    def _pieces(self, chunk: Chunk) -> Iterator[Chunk]:
        """A block as consecutive chunks of at most PIECE_ROWS rows (times at the model's rate, as the
        pipeline counts them), so the pipeline's working memory does not grow with the message size."""
        n = len(chunk.samples)
        if n <= PIECE_ROWS:
            yield chunk
            return
        for i in range(0, n, PIECE_ROWS):
            yield Chunk(chunk.samples[i: i + PIECE_ROWS], chunk.t_start + i / self.fs_hz,
                        new_segment=chunk.new_segment and i == 0, fs_hz=chunk.fs_hz)
