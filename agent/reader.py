"""A source in its own thread (``SourceReader``), opened from the config and checked against the bundle it feeds.

Why a thread: the agent's loop then waits at most ``POLL_S`` for a chunk before it looks at its signal flags,
whatever the source waits for (a real-time replay sleeps 10 minutes between IMS snapshots, an idle MQTT topic,
the I2C bus), and a reload does not disturb a running source at all.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from .config import AgentConfig
from .errors import ConfigError
from .model.bundle import Bundle
from .sources.registry import source_class
from .sources.sensor_check import two_rates
from .sources.source import Chunk, Source, SourceContext

log = logging.getLogger("vibrawatch.agent")

POLL_S = 0.1  # the loop's longest wait for a chunk before it looks at the signal flags again


def fit_problem(kind: str, source: Source, bundle: Bundle) -> str | None:
    """Why this source cannot feed this bundle's model (None if it can): the kind of input, the channel
    count and the sample rate must match, or the model would score the wrong thing without a word."""
    spec = bundle.detector.spec
    if spec.input == "table" and source.provides != "table":
        return (f"source {kind} gives raw samples at {two_rates(source.fs_hz, 1)[0]} Hz, but bundle {bundle.version} "
                f"was trained on a feature table (one row of {spec.n_features} features per snapshot): it would "
                "score raw samples as features; train on raw samples, or replay a feature table")
    if spec.input != "table" and source.provides == "table":
        return (f"source {kind} gives rows of a feature table, but bundle {bundle.version} computes its features from "
                f"raw samples at {two_rates(spec.fs_hz, 1)[0]} Hz; replay raw samples (.npz, an IMS directory)")
    if len(source.channels) != len(spec.channels):
        return (f"source {kind} has {len(source.channels)} channel(s) ({', '.join(source.channels)}), bundle "
                f"{bundle.version} expects {len(spec.channels)} ({', '.join(spec.channels)})")
    snapshot = getattr(source, "snapshot_samples", None)  # recordings and the simulator come in snapshots
    if spec.input != "table" and snapshot is not None and snapshot < spec.frame_length:
        return (f"source {kind} gives snapshots of {snapshot} samples, shorter than bundle {bundle.version}'s frames "
                f"of {spec.frame_length} (a frame never straddles two snapshots): no window would ever be scored; "
                "give longer snapshots or use a bundle trained on shorter frames")
    if spec.input != "table" and abs(source.fs_hz - spec.fs_hz) > 1e-6 * spec.fs_hz:
        got, want = two_rates(source.fs_hz, spec.fs_hz)
        return (f"source {kind} samples at {got} Hz, bundle {bundle.version} expects {want} Hz (its features.fs_hz); "
                "set the source's rate or use a bundle trained at this rate")
    return None


class _End:
    """The source has no more chunks."""


END = _End()


class SourceReader:
    """A source's ``chunks()`` in its own thread, handed over through a short queue.

    Why a thread: the agent's loop then waits at most ``POLL_S`` for a chunk before it looks at its
    signal flags, whatever the source waits for (a pacer's sleep, an idle MQTT topic, the I2C bus), and a
    reload does not disturb a running source at all. The source waits with ``halt.wait``, so ``close``
    ends even a 10-minute pacer sleep at once. An exception in the source reaches the loop from ``get``.
    """

    def __init__(self, kind: str, depth: int = 4) -> None:
        self.kind = kind
        self.halt = threading.Event()
        self.source: Any = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"vibrawatch-source-{self.kind}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        chunks = self.source.chunks()
        try:
            for chunk in chunks:
                if not self._put(chunk):
                    return
            self._put(END)
        except BaseException as e:  # noqa: BLE001 - handed to the agent's loop, which reports it as a crash
            self._put(e)
        finally:
            chunks.close()  # a source's own cleanup (the ADXL345 back to standby) runs in this thread

    def _put(self, item: Any) -> bool:
        while not self.halt.is_set():
            try:
                self._queue.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def get(self, timeout: float) -> Chunk | _End | None:
        """The next chunk, END, or None if none came within ``timeout``; re-raises the source's exception."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self, timeout: float = 1.0) -> None:
        """Stop the source; wait up to ``timeout`` for its thread (a daemon: it never holds up the exit)."""
        self.halt.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("source %s did not stop within %.1f s (blocked in a read?)", self.kind, timeout)


class DropCount:
    """What an MQTT source refused or dropped, summed over the sources a reload replaced, into the retained
    status: ``samples_dropped`` (messages dropped because scoring fell behind: the source's ``overflowed``) and
    ``samples_resent`` (messages refused whole as already scored: ``resent``); each set at its first count,
    refreshed at most every EVERY_S, and at once on a new publisher's status."""

    EVERY_S = 10.0
    FIELDS = {"overflowed": "samples_dropped", "resent": "samples_resent"}

    def __init__(self) -> None:
        self.totals = dict.fromkeys(self.FIELDS, 0)
        self._source: Any = None
        self._seen = dict.fromkeys(self.FIELDS, 0)  # the current source's counts already in the totals
        self._sent: tuple[Any, dict[str, int]] = (None, {})  # the status last told, and what it was told
        self._at = 0.0

    @property
    def total(self) -> int:
        """Messages dropped behind scoring (``samples_dropped``)."""
        return self.totals["overflowed"]

    def update(self, source: Any, status: Any) -> None:
        """Take the source's counts; tell ``status`` (a ``Status``) when they changed and the last is old enough."""
        if source is not self._source:
            self._source, self._seen = source, dict.fromkeys(self.FIELDS, 0)
        for attr in self.FIELDS:
            n = getattr(source, attr, None)
            if n is not None:
                self.totals[attr] += n - self._seen[attr]
                self._seen[attr] = n
        now, (told, told_n) = time.monotonic(), self._sent
        if any(self.totals.values()) and (status is not told or (self.totals != told_n
                                                                  and now - self._at >= self.EVERY_S)):
            for attr, name in self.FIELDS.items():
                if self.totals[attr]:
                    status.count(name, self.totals[attr])
            self._sent, self._at = (status, dict(self.totals)), now


def open_source(cfg: AgentConfig, bundle: Bundle, subscribe: Callable[[str, Callable[[bytes], None]], None],
                start_at: float | None = None) -> SourceReader:
    """The configured source (not started) in its reader, checked against the bundle: a ConfigError naming
    the config file when it does not fit."""
    spec = bundle.detector.spec
    reader = SourceReader(cfg.source.kind)
    ctx = SourceContext(stop=reader.halt.is_set, sleep=reader.halt.wait, subscribe=subscribe, fs_hz=spec.fs_hz,
                        channels=tuple(spec.channels), start_at=start_at)
    try:
        reader.source = source_class(cfg.source.kind).open(cfg.source.resolved(), ctx)
    except ConfigError as e:
        raise ConfigError(f"{cfg.path}: {e}") from None
    problem = fit_problem(cfg.source.kind, reader.source, bundle)
    if problem:
        raise ConfigError(f"{cfg.path}: [source] does not fit the bundle {bundle.path}: {problem}")
    return reader
