"""Commissioning: each gateway learns its own machine's healthy state, by the functions training used.

One model trained on a reference machine goes to many machines of the same type, but each has its own
healthy level: with the bundle's numbers a rougher machine raises false alarms and a quieter one raises a
late alarm. With ``[commissioning]`` in the config the agent first scores ``windows`` windows (or ``hours``
of window time) and publishes them with ``threshold_source: commissioning``, raising no alarm and publishing
no transient, condition change or diagnosis (each would be judged on the reference machine's levels). Then
it refits every number of the detector that describes *this machine's healthy state* with the same function
as training (agent/detect/healthy.py ``fit``, the bundle's threshold rule and margin): the autoencoder's thresholds,
and for the combined detector (agent/detect/events.py) the level floors (thresholds, healthy median, step sizes),
the PCA residual's thresholds, each channel's own-deviation centre and spread, and the diagnosis's healthy
envelope energies. The model, the scaler, the PCA's axes and the rules stay the bundle's. The agent stores
the result in the state directory, publishes it on the status topic and decides with it from then on
(``threshold_source: commissioned``).

Guard against learning a fault as normal: when the median commissioning window's level against the bundle's
detector (its score level and, with the combined detector, each channel's level against its floor and its
share of the models' error: ``healthy.levels``) sits above ``suspect_factor``, or when one channel stands
out, above 1 and more than ``channel_factor`` times the median of the other channels' median levels (three
channels or more), the machine is not one the model knows as healthy: it keeps the bundle's detector and says
so (``commissioning_suspect``), alarming as before. See bench/commissioning.py for what the simulator and
FEMTO show. With two channels the standout test is off: FEMTO's bearing at another load and speed has its
horizontal/vertical balance 4.4x the reference's while healthy.

A new bundle (another ``model`` version) or ``vibrawatch-agent recalibrate`` starts a new commissioning.

Memory and disk are bounded whatever the window rate: the commissioning keeps at most ``keep`` windows
(default 20000), an evenly spaced subsample of all it has seen (healthy.py ``EvidenceLog``: when full it
drops every second kept window and from then on keeps every 2nd, then 4th, ... window). Its length
(``windows``/``hours``) counts every window; the fit runs on the kept ones.

State: ``calibration.json`` (small: state, model, the count of windows seen while commissioning, and once
commissioned the fitted parts under ``detector``, as ``Detector.to_dict()`` keys, parsed back with
``Detector.from_dict``'s checks) and, while commissioning, ``calibration.windows.jsonl`` beside it: a header
(the column layout and the stride) then one JSON array per kept window (what ``fit`` needs of it, float64
exact), appended at most once a minute and at stop, rewritten atomically at each halving (so at most
``keep`` + 1 lines, rewritten log2(seen / keep) times), deleted once commissioned. A restart resumes the
kept windows, the stride and the count seen; a torn last line (a power cut) is skipped with a log line. A
calibration file that cannot be read falls back to the bundle's detector and says so; scoring never stops
for it.

``Commissioning`` is the streaming object (one ``window`` per scored window, called by the pipeline's
``Decider``); ``commission`` is its batch twin over a whole run, tested equal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..detect.calibrate import (
    Calibration,
    CommissioningSection,
    calibrate,
    commissioning_done,
    fitted_parts,
    with_fitted,
)
from ..detect.decide import Decision
from ..detect.detector import Detector
from ..detect.healthy import Evidence, EvidenceLog, Extremes
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import AgentConfig
    from ..detect.results import Scored
    from .bundle import Bundle

log = logging.getLogger("vibrawatch.commission")

SCHEMA = "vibrawatch.calibration/2"
OLD_SCHEMA = "vibrawatch.calibration/1"  # thresholds only, every window's numbers in the file: commissioned again
CALIBRATION_FILE = "calibration.json"
WINDOWS_SUFFIX = ".windows.jsonl"  # calibration.windows.jsonl: the commissioning's windows, one line each
SOURCES = ("bundle", "commissioning", "commissioned")
SAVE_EVERY_S = 60.0  # windows are appended at most once a minute (and at every transition and stop)
WINDOWS_FORMAT = "vibrawatch.calibration-windows/1"


def default_state_file(spool: str | Path) -> Path:
    """calibration.json in systemd's StateDirectory (``$STATE_DIRECTORY``), else beside the spool."""
    state_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state_dir or Path(spool).parent) / CALIBRATION_FILE


def row_shapes(d: Detector) -> dict[str, tuple[int, ...]]:
    """The parts (and their shapes) of one commissioning window for detector ``d``: a windows-file line."""
    c = len(d.channels)
    shapes: dict[str, tuple[int, ...]] = {"t": (), "score": (), "contributions": (c,)}
    if d.combined:
        assert d.floor is not None
        if d.pca is not None:
            shapes |= {"pca_score": (), "pca_contributions": (c,), "pca_held": ()}
        shapes |= {"floors": d.floor.thresholds.shape, "means": (d.spec.n_features,)}
        if d.diagnosis is not None and d.spec.input != "table":
            shapes["energies"] = d.diagnosis.healthy.shape
    return shapes


def windows_header(shapes: Mapping[str, tuple[int, ...]], stride: int, keep: int) -> str:
    """The windows file's first line: its format, the column layout of every line after it (each part's name
    and shape, flattened in that order) and the stride its windows were kept with."""
    return json.dumps({"format": WINDOWS_FORMAT, "stride": stride, "keep": keep,
                       "columns": _columns(shapes)})


def _columns(shapes: Mapping[str, tuple[int, ...]]) -> list[list[Any]]:
    """The header's column layout for ``shapes``, as it reads back from JSON."""
    return [[k, list(v)] for k, v in shapes.items()]


def window_line(ev: Evidence, j: int, names: Sequence[str]) -> str:
    """Window ``j`` of ``ev`` as one windows-file line: a JSON array of its numbers in the header's column
    order. Python writes a float's shortest exact form, so a resumed commissioning fits the same numbers."""
    return json.dumps(np.concatenate([np.ravel(getattr(ev, k)[j]) for k in names]).tolist(), allow_nan=False)


def _row(line: bytes, width: int) -> list[float] | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, list) or len(row) != width:
        return None
    try:
        if not all(type(x) in (int, float) and math.isfinite(x) for x in row):
            return None
    except OverflowError:  # a 400-digit integer: not a number this file ever holds
        return None
    return row


def _current_layout(path: Path, shapes: Mapping[str, tuple[int, ...]]) -> bool:
    """Does the windows file's header have exactly ``shapes``' columns (not an earlier version's)?"""
    with path.open("rb") as f:
        try:
            head = json.loads(f.readline())
        except ValueError:
            return False
    return isinstance(head, dict) and head.get("columns") == _columns(shapes)


def read_windows(path: Path, shapes: Mapping[str, tuple[int, ...]]) -> tuple[Evidence, int, int, bool]:
    """A windows file -> (its windows, the stride they were kept with, the lines dropped from the first
    damaged one on, whether the file ended cleanly). Only the last line can be damaged (lines are appended;
    every rewrite is a rename), by a write torn by a power cut; dropping from the first bad line on keeps the
    windows the evenly spaced subsample they were. ValueError when the header is not one for ``shapes``."""
    with path.open("rb") as f:  # line by line into one array: a resume needs no second copy of the windows
        first = f.readline()
        try:
            head = json.loads(first)
        except ValueError as e:
            raise ValueError(f"unreadable header ({e})") from None
        want = _columns(shapes)
        # files written before the held PCA score was kept: its single score stands in (never lower: a
        # threshold fitted on it is never tighter than the held one)
        before = {k: v for k, v in shapes.items() if k != "pca_held"}
        if "pca_held" in shapes and isinstance(head, dict) and head.get("columns") == _columns(before):
            ev, stride, dropped, clean = read_windows(path, before)
            return replace(ev, pca_held=ev.pca_score), stride, dropped, clean
        if not isinstance(head, dict) or head.get("format") != WINDOWS_FORMAT or head.get("columns") != want:
            raise ValueError(f"header is not {WINDOWS_FORMAT} with this detector's columns")
        stride = head.get("stride")
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"header stride {stride!r}, expected an integer >= 1")
        width = sum(math.prod(s) for s in shapes.values())
        start = f.tell()
        lines = sum(1 for _ in f)
        flat = np.empty((lines, width))
        f.seek(start)
        n, clean, damaged = 0, first.endswith(b"\n"), False
        for line in f:
            clean = line.endswith(b"\n")
            row = None if damaged else _row(line, width)
            if row is None:  # this line and every one after it are dropped
                damaged = True
                continue
            flat[n] = row
            n += 1
    flat = flat[:n]
    cols, at = {}, 0
    for k, s in shapes.items():
        w = math.prod(s)
        cols[k] = flat[:, at: at + w].reshape(n, *s)
        at += w
    return Evidence(**cols), stride, lines - n, clean


@dataclass
class Commissioning:
    """Streaming commissioning for one agent: each scored window goes through ``window`` (the pipeline's
    ``Decider`` calls it), which keeps it while commissioning and publishes it with no alarm.

    While it runs nothing alarms and no transient, condition change or diagnosis is published (each would be
    judged on the reference machine's levels); when it completes, ``calibration.detector`` decides (the
    ``Decider`` swaps it in, its alarm rule warmed with ``warm``, the last commissioning windows).

    Memory and disk are bounded by ``cfg.keep`` whatever the window rate: ``log`` keeps an evenly spaced
    subsample of the windows (``EvidenceLog``: at most ``keep``, the stride doubling when full) and the
    windows file follows it (rewritten at each halving, appended between them).
    """

    detector: Detector  # the bundle's
    model: str
    cfg: CommissioningSection | None
    state_file: Path | None = None
    calibration: Calibration | None = None
    log: EvidenceLog = field(default_factory=EvidenceLog)  # the commissioning's windows so far (those kept)
    note: str | None = None  # what happened at load (unreadable file, new model), for the log and status
    warm: Evidence | None = None  # the last raise_after - 1 commissioning windows, once it completed
    _pending: list[str] = field(default_factory=list)  # windows-file lines not written yet
    _saved: float = 0.0
    _json_written: bool = False
    _json_seen: int | None = None  # the windows seen that the state file says
    _rewrite: bool = False  # the windows file is to be written anew (a halving, a new commissioning, damage)
    _failed: bool = False  # the last save failed (disk full, read-only): retried once a minute, not every window

    def __post_init__(self) -> None:
        self.log = self._new_log()
        self._recent: deque[Evidence] = deque(maxlen=max(self.detector.rule.raise_after - 1, 0))
        self._shapes = row_shapes(self.detector)

    def _new_log(self) -> EvidenceLog:
        return EvidenceLog(keep=self.cfg.keep if self.cfg is not None else None)

    @property
    def source(self) -> str:
        """``threshold_source`` of the windows decided now."""
        if self.cfg is None or not self.cfg.enabled:
            return "bundle"
        return "commissioning" if self.calibration is None else self.calibration.source

    @property
    def active(self) -> Detector:
        """The detector that decides now: this machine's once commissioned, else the bundle's."""
        return self.detector if self.calibration is None else self.calibration.detector

    @property
    def threshold(self) -> float:
        return self.active.threshold

    @property
    def commissioning(self) -> bool:
        return self.source == "commissioning"

    @property
    def windows_file(self) -> Path | None:
        """``calibration.windows.jsonl`` beside the state file: a header, then one line per window kept."""
        return None if self.state_file is None else self.state_file.with_name(self.state_file.stem + WINDOWS_SUFFIX)

    def window(self, ev: Scored) -> tuple[Scored, Calibration | None]:
        """One scored window -> the window as published, and the calibration when it completed the
        commissioning. Outside a commissioning only its ``source`` is set."""
        if not self.commissioning:
            return replace(ev, source=self.source), None
        assert self.cfg is not None and ev.evidence is not None
        stride = self.log.stride
        kept = self.log.append(ev.evidence)
        if self.log.stride != stride:  # halved: the file is rewritten with what is kept now
            self._rewrite, self._pending = True, []
        elif len(kept):
            self._pending.append(window_line(ev.evidence, 0, list(self._shapes)))
        self._recent.append(ev.evidence)
        d = ev.decision
        quiet = replace(ev, decision=Decision(above=d.level > 1.0, active=False, event=None, channel=d.channel,
                                              level=d.level),
                        since=None, verdict=None, diagnosis={}, diagnosed={}, source="commissioning")
        if commissioning_done(self.cfg, self.log.seen, self.log.t0, ev.t):
            self.calibration = calibrate(self.log.evidence(), self.detector, self.cfg, self.model,
                                         windows=self.log.seen, finished_t=ev.t, extremes=self.log.extremes)
            self.warm = Evidence.concat(list(self._recent)) if self._recent else None
            self.log, self._pending, self._json_written, self._rewrite = self._new_log(), [], False, False
            self._recent.clear()
            self.save()
            return replace(quiet, calibration=self.calibration), self.calibration
        if (self._rewrite and not self._failed) or time.monotonic() - self._saved >= SAVE_EVERY_S:
            self.save()
        return quiet, None

    # -- the state files ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        c = self.calibration
        out: dict[str, Any] = {"schema": SCHEMA, "model": self.model, "updated": time.time()}
        if c is None:
            out |= {"state": "commissioning", "windows_file": WINDOWS_SUFFIX.lstrip("."), "seen": self.log.seen}
            if self.log.extremes is not None:  # of every window seen: the maxima the fit needs exact
                out["extremes"] = self.log.extremes.to_dict()
            return out
        out |= {"state": c.state, "windows": c.windows, "median_level": c.median_level, "standout": c.standout,
                "bundle_threshold": c.bundle_threshold, "started_t": c.started_t, "finished_t": c.finished_t}
        if c.state == "commissioned":
            out["detector"] = fitted_parts(c.detector)
        return out

    def save(self) -> None:
        """Write what is not written yet, windows first: the windows file (anew after a halving, atomically:
        header and kept windows to a temporary file renamed over it; else the windows kept since the last save,
        appended: a power cut tears at most its last line, which a resume drops), then the state file with the
        count of windows seen (atomically: the old or the new one; never over a ``recalibrate`` request).
        Called at most once a minute, at every halving and transition, and at stop."""
        self._saved = time.monotonic()
        if self.state_file is None or self.cfg is None or not self.cfg.enabled:
            return
        if self.calibration is not None and self.calibration.state == "unreadable":
            return  # the damaged file stays for a look until `recalibrate` replaces it
        windows = self.windows_file
        assert windows is not None
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)  # as the spool's: owner only (umask 077)
            if self.calibration is None:
                self._save_windows(windows)
                if not self._json_written or (self._json_seen != self.log.seen and not self._requested()):
                    self._write_state()
            elif not self._json_written and not self._requested():  # a request made meanwhile stands
                self._write_state()
                windows.unlink(missing_ok=True)  # commissioned: its windows are in the detector now
            self._failed = False
        except (OSError, ValueError) as e:  # scoring goes on; the commissioning is lost at the next restart
            for f in (windows, self.state_file):  # no half-written temporary file left behind
                with contextlib.suppress(OSError):
                    f.with_name(f.name + ".tmp").unlink(missing_ok=True)
            if not self._failed:  # one line per failure, not one per window: the next try is a minute later
                log.error("%s: cannot save the calibration (%s); make the state directory writable for the service",
                          getattr(e, "filename", None) or self.state_file, getattr(e, "strerror", None) or e)
            self._failed = True

    def _write_state(self) -> None:
        assert self.state_file is not None
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), allow_nan=False))
        os.replace(tmp, self.state_file)
        self._json_written, self._json_seen = True, self.log.seen

    def _save_windows(self, path: Path) -> None:
        assert self.cfg is not None
        if not len(self.log):  # nothing kept (yet): no file
            path.unlink(missing_ok=True)
            self._rewrite, self._pending = False, []
            return
        if self._rewrite or not path.exists():
            tmp = path.with_name(path.name + ".tmp")
            ev, names = self.log.evidence(), list(self._shapes)
            with tmp.open("w") as f:  # line by line: no second copy of the windows in memory
                f.write(windows_header(self._shapes, self.log.stride, self.cfg.keep) + "\n")
                for j in range(len(self.log)):
                    f.write(window_line(ev, j, names) + "\n")
            os.replace(tmp, path)
            self._rewrite = False
        elif self._pending:
            try:
                with path.open("a") as f:
                    f.write("".join(line + "\n" for line in self._pending))
            except OSError:  # part of it may be written: the next save writes the whole file anew, atomically
                self._rewrite, self._pending = True, []
                raise
        self._pending = []

    def _requested(self) -> bool:
        """Does the state file hold a ``recalibrate`` request (which only a start or reload may replace)?"""
        try:
            return json.loads(self.state_file.read_text()).get("state") == "requested"  # type: ignore[union-attr]
        except (OSError, ValueError, AttributeError):
            return False

    def _start(self) -> None:
        """A new commissioning: an empty windows file and the state file saying so."""
        self.log, self._pending, self._json_written, self._rewrite = self._new_log(), [], False, True
        self._recent.clear()
        if self.windows_file is not None:
            try:
                self.windows_file.unlink(missing_ok=True)
            except OSError as e:
                log.error("%s: cannot remove the old commissioning windows (%s)", self.windows_file, e.strerror)
        self.save()

    @classmethod
    def open(cls, detector: Detector, model: str, cfg: CommissioningSection | None, state_file: Path | None
             ) -> Commissioning:
        """Resume from the state file: a calibration for this model, a commissioning in progress, or a new one."""
        c = cls(detector, model, cfg, state_file)
        if cfg is None or not cfg.enabled or state_file is None:
            return c
        if not state_file.exists():
            c.note = f"commissioning starts: {_length(cfg)} before this machine's detector is fitted"
            c._start()
            return c
        d: Any = None
        try:
            d = json.loads(state_file.read_text())
            why = c._load(d)
        except (OSError, ValueError, KeyError, TypeError, ConfigError) as e:
            c.calibration = Calibration("unreadable", model, detector, 0, float("nan"), float("nan"),
                                        detector.threshold, float("nan"), float("nan"))
            c.note = (f"{state_file}: unreadable calibration ({str(e)[:80]}); using the bundle's thresholds; "
                      f"run `vibrawatch-agent recalibrate --config FILE` to commission again")
            return c
        if why is not None:
            # The replaced model's finished calibration goes aside first (it may come back in turn); this
            # model's own, if one was put aside earlier, is spared by the pruning and taken back.
            restorable = d.get("state") != "requested"
            _archive(state_file, d, spare=archive_path(state_file, model) if restorable else None)
            if restorable and (back := cls._restore(detector, model, cfg, state_file)):
                return back
            c.note = f"{state_file}: {why}: a new commissioning starts ({_length(cfg)})"
            c._start()
        return c

    @classmethod
    def _restore(cls, detector: Detector, model: str, cfg: CommissioningSection, state_file: Path
                 ) -> Commissioning | None:
        """This model's own calibration, put aside when another model replaced it (a deploy rolled back, or the
        previous model deployed again): taken back instead of commissioning the machine again."""
        kept = archive_path(state_file, model)
        if not kept.exists():
            return None
        c = cls(detector, model, cfg, state_file)
        try:
            if c._load(json.loads(kept.read_text())) is not None or c.calibration is None:
                return None
            os.replace(kept, state_file)
            if c.windows_file is not None:
                c.windows_file.unlink(missing_ok=True)  # the replaced model's commissioning in progress
        except (OSError, ValueError, KeyError, TypeError, ConfigError) as e:
            log.warning("%s: cannot take this model's calibration back (%s); commissioning again", kept, e)
            return None
        c.note = (f"{state_file}: {c.calibration.state} calibration of model {model} taken back from {kept.name} "
                  "(put aside when another model replaced it)")
        return c

    def reopen(self, detector: Detector, model: str, cfg: CommissioningSection | None, state_file: Path | None
               ) -> Commissioning:
        """On a reload: keep this commissioning's progress (saved first) unless ``recalibrate`` asked to start
        over; a new model or config then decides what ``open`` resumes."""
        self.keep()
        return Commissioning.open(detector, model, cfg, state_file)

    def keep(self) -> None:
        """Save this commissioning's progress before it is replaced, unless ``recalibrate`` asked to start over
        (its request in the state file stays) or the file was unreadable (it stays for a look)."""
        requested = self.state_file is not None and self.state_file.exists() and self._requested()
        if not requested and (self.calibration is None or self.calibration.state != "unreadable"):
            self.save()

    def _load(self, d: Any) -> str | None:
        """Take over a state file's content; why a new commissioning starts instead (None: resumed)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        if d.get("schema") == OLD_SCHEMA:
            return "calibration from an older agent (its windows lack what this one fits)"
        if d.get("schema") != SCHEMA:
            raise ValueError(f"schema {d.get('schema')!r}, expected {SCHEMA}")
        if d["state"] == "requested":
            return "recalibration requested"
        if d["model"] != self.model:
            return f"calibrated for model {d['model']}, this is {self.model}"
        self._json_written = True
        if d["state"] == "commissioning":
            self._resume(d.get("seen"), d.get("extremes"))
            return None
        if d["state"] not in ("commissioned", "commissioning_suspect"):
            raise ValueError(f"state {d['state']!r}")
        det = with_fitted(self.detector, d["detector"]) if d["state"] == "commissioned" else self.detector
        self.calibration = Calibration(d["state"], self.model, det, int(d["windows"]), float(d["median_level"]),
                                       float(d["standout"]), float(d["bundle_threshold"]), float(d["started_t"]),
                                       float(d["finished_t"]))
        self.note = f"{d['state']}: threshold {det.threshold:.6g} ({self.calibration.source}) from {self.state_file}"
        return None

    def _resume(self, said: Any, extremes: Any = None) -> None:
        """Take over the windows file: the windows kept, their stride, and the count seen (the state file's
        ``said``, which a power cut between the two files' writes can leave behind or ahead: it is clamped to
        what the kept windows allow). A damaged last line is dropped with one log line and the file rewritten;
        a file that is not this detector's starts the commissioning over."""
        assert self.cfg is not None
        path = self.windows_file
        assert path is not None
        self._rewrite = True
        if not path.exists():
            self.note = "commissioning resumes after 0 window(s)"
            return
        try:
            ev, stride, dropped, clean = read_windows(path, self._shapes)
        except (OSError, ValueError) as e:
            log.warning("%s: %s; the commissioning starts over", path, e)
            self.note = f"{path}: unreadable commissioning windows: the commissioning starts over"
            self._json_written = False
            self.save()
            return
        k = len(ev)
        seen = said if isinstance(said, int) and not isinstance(said, bool) else 0
        seen = min(max(seen, (k - 1) * stride + 1), k * stride) if k else 0
        ext = None
        if k and extremes is not None:
            try:
                ext = Extremes.from_dict(extremes, ev)
            except ValueError as e:  # the kept windows' own extremes stand in: maxima at most slightly lower
                log.warning("%s: %s; the kept windows' extremes are used", self.state_file, e)
        self.log = EvidenceLog.restore(ev, stride if k else 1, seen, self.cfg.keep, ext)
        self._rewrite = (self.log.stride != stride or bool(dropped) or not clean
                         or not _current_layout(path, self._shapes))
        if dropped or not clean:
            log.warning("%s: %d damaged line(s) skipped (a write torn by a power cut?); commissioning resumes with "
                        "%d window(s) seen, %d kept", path, dropped, seen, len(self.log))
        self.note = f"commissioning resumes after {seen} window(s) ({len(self.log)} kept, every {self.log.stride})"
        if self._rewrite:
            self.save()


ARCHIVED = 3  # calibrations of replaced models kept beside the state file, the newest


def archive_path(state_file: Path, model: str) -> Path:
    """Where a replaced model's calibration is put aside: ``calibration.<model>.json`` beside the state file."""
    return state_file.with_name(f"{state_file.stem}.{re.sub(r'[^A-Za-z0-9._-]', '_', model)[:100]}.json")


def _archive(state_file: Path, d: Any, spare: Path | None = None) -> None:
    """Put a finished calibration of another model aside (a rollback or a redeploy takes it back), keeping the
    newest ``ARCHIVED`` (and ``spare``, about to be taken back); a commissioning in progress or a damaged file
    is not kept."""
    if not (isinstance(d, Mapping) and d.get("schema") == SCHEMA and isinstance(d.get("model"), str)
            and d.get("state") in ("commissioned", "commissioning_suspect")):
        return
    try:
        os.replace(state_file, archive_path(state_file, d["model"]))
        old = sorted((p for p in state_file.parent.glob(f"{state_file.stem}.*.json") if p != spare),
                     key=lambda p: p.stat().st_mtime)
        for p in old[:-ARCHIVED]:
            p.unlink()
    except OSError as e:
        log.warning("%s: cannot put model %s's calibration aside (%s)", state_file, d["model"], e.strerror)


def open_commissioning(cfg: AgentConfig, bundle: Bundle, previous: Commissioning | None = None) -> Commissioning:
    """The agent's commissioning for ``cfg`` and ``bundle``: resumed from the state directory, or a new one;
    on a reload (``previous``) its progress is kept unless ``recalibrate`` asked to start over."""
    c = cfg.commissioning
    path = (Path(c.state) if c.state else default_state_file(cfg.agent.spool)) if c else None
    args = (bundle.detector, bundle.version, c, path)
    comm = previous.reopen(*args) if previous is not None else Commissioning.open(*args)
    if comm.note:
        unreadable = comm.calibration is not None and comm.calibration.state == "unreadable"
        (log.error if unreadable else log.info)("%s", comm.note)
    return comm


def describe(cfg: AgentConfig, bundle: Bundle) -> str:
    """For ``vibrawatch-agent check``: where the thresholds will come from, without writing anything."""
    c = cfg.commissioning
    if c is None:
        return f"the bundle's ({bundle.detector.threshold:.6g}); no [commissioning] in the config"
    path = Path(c.state) if c.state else default_state_file(cfg.agent.spool)
    from ..preflight import creatable_dir

    if not creatable_dir(path.parent)[0]:
        raise ConfigError(f"{path.parent}: state directory for the calibration is missing and cannot be created, "
                          "or not writable; create it for the service's user (systemd's StateDirectory= does)")
    if not path.exists():
        return f"commissioning ({_length(c)}) starts at the next start; state in {path}"
    try:
        d = json.loads(path.read_text())
        state, model = d["state"], d["model"]
        current = d.get("schema") == SCHEMA and model == bundle.version
        threshold = (with_fitted(bundle.detector, d["detector"]).threshold if current and state == "commissioned"
                     else bundle.detector.threshold)
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as e:
        return (f"the bundle's: {path} is unreadable ({str(e)[:60]}); "
                "`vibrawatch-agent recalibrate --config FILE` commissions again")
    if model != bundle.version and state != "requested" and archive_path(path, bundle.version).exists():
        return (f"this model's calibration, put aside when another replaced it, is taken back at the next start or "
                f"reload ({archive_path(path, bundle.version)})")
    if model != bundle.version or state == "requested" or d.get("schema") != SCHEMA:
        return f"a new commissioning ({_length(c)}) starts at the next start or reload ({path}: {state}, {model})"
    if state == "commissioning":
        return (f"commissioning, {d.get('seen', 0)} window(s) so far of {_length(c)} (at most {c.keep} kept, "
                f"evenly spaced) ({path})")
    return f"{state}: {threshold:.6g} (the bundle's {bundle.detector.threshold:.6g}) from {path}"


def status(comm: Commissioning, cal: Calibration | None = None) -> tuple[str, dict[str, Any]] | None:
    """The status message (state, fields) that says where the thresholds come from, when there is news:
    a commissioning running, its outcome (``cal``), or a calibration file that could not be read."""
    if cal is not None:
        (log.info if cal.state == "commissioned" else log.warning)(
            "%s after %d windows: threshold %.6g (bundle %.6g); median window %.2f x the bundle's thresholds, "
            "most different channel %.2f x the others", cal.state, cal.windows, cal.threshold, cal.bundle_threshold,
            cal.median_level, cal.standout)
        return cal.state, cal.status_fields()
    if comm.commissioning:
        return "commissioning", {"threshold_source": "commissioning", "windows": comm.log.seen,
                                 **({"note": comm.note} if comm.note else {})}
    if comm.calibration is not None and comm.calibration.state == "unreadable":
        return "online", {"event": "calibration_unreadable", "threshold_source": "bundle", "note": comm.note or ""}
    return None


def _length(cfg: CommissioningSection) -> str:
    return f"{cfg.windows} windows" if cfg.windows is not None else f"{cfg.hours:g} hours"


def recalibrate(config_path: str | Path) -> str:
    """``vibrawatch-agent recalibrate``: ask for a new commissioning; what to do next."""
    from ..config import load_agent_config

    cfg = load_agent_config(config_path)
    c = cfg.commissioning
    if c is None:
        raise ConfigError(f"{config_path}: no [commissioning] section: add one (windows = N or hours = H) "
                          "to learn this machine's thresholds")
    path = Path(c.state) if c.state else default_state_file(cfg.agent.spool)
    request_recalibration(path)
    return (f"{path}: a new commissioning ({_length(c)}) starts at the agent's next start or reload: "
            "systemctl reload vibrawatch-agent (vibrawatch-agent@<machine> for the template), or kill -HUP its pid")


def request_recalibration(state_file: Path, model: str | None = None) -> None:
    """Mark the state file so the agent commissions again (at its next start or reload).

    Written with the owner of the state directory (the service's dynamic user, when run as root)."""
    d = state_file.parent
    if not d.is_dir():
        raise ConfigError(f"{d}: state directory does not exist; start the service once (systemd creates it)")
    tmp = state_file.with_name(state_file.name + ".tmp")
    tmp.write_text(json.dumps({"schema": SCHEMA, "model": model, "state": "requested", "updated": time.time()}))
    st = d.stat()
    if os.geteuid() == 0 and st.st_uid != 0:
        os.chown(tmp, st.st_uid, st.st_gid)
    os.replace(tmp, state_file)


