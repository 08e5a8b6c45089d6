"""Where a commissioning is kept between runs: ``calibration.json`` and ``calibration.windows.jsonl``.

State: ``calibration.json`` (small: state, model, the count of windows seen while commissioning, and once
commissioned the fitted parts under ``detector``, as ``Detector.to_dict()`` keys, parsed back with
``Detector.from_dict``'s checks) and, while commissioning, ``calibration.windows.jsonl`` beside it
(agent/model/commission_windows.py: a header, then one JSON array per kept window), appended at most once a
minute and at stop, rewritten atomically at each halving (so at most ``keep`` + 1 lines, rewritten
log2(seen / keep) times), deleted once commissioned. A restart resumes the kept windows, the stride and the
count seen; a torn last line (a power cut) is skipped with a log line. A calibration file that cannot be read
falls back to the bundle's detector and says so; scoring never stops for it.

A finished calibration of a model another replaced is put aside (``calibration.<model>.json``, the newest
``ARCHIVED``) so that a rollback or a redeploy takes it back instead of commissioning the machine again.
``vibrawatch-agent recalibrate`` writes a request (``request_recalibration``) that only a start or reload
replaces.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..detect.calibrate import Calibration, CommissioningSection, fitted_parts, with_fitted
from ..detect.detector import Detector
from ..detect.healthy import Evidence, EvidenceLog, Extremes
from ..errors import ConfigError
from ..files import creatable_dir
from .commission_windows import (
    WINDOWS_SUFFIX,
    current_layout,
    read_windows,
    window_line,
    windows_header,
    windows_path,
)

if TYPE_CHECKING:
    from .bundle import Bundle

log = logging.getLogger("vibrawatch.commission")

SCHEMA = "vibrawatch.calibration/2"
OLD_SCHEMA = "vibrawatch.calibration/1"  # thresholds only, every window's numbers in the file: commissioned again
CALIBRATION_FILE = "calibration.json"
SAVE_EVERY_S = 60.0  # windows are appended at most once a minute (and at every transition and stop)
ARCHIVED = 3  # calibrations of replaced models kept beside the state file, the newest
UNREADABLE = (OSError, ValueError, KeyError, TypeError, ConfigError)  # what a damaged state file raises


def default_state_file(spool: str | Path) -> Path:
    """calibration.json in systemd's StateDirectory (``$STATE_DIRECTORY``), else beside the spool."""
    state_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state_dir or Path(spool).parent) / CALIBRATION_FILE


def state_file_for(section: CommissioningSection | None, spool: str | Path) -> Path | None:
    """The state file of ``[commissioning]``: its ``state``, else the default beside the spool (None: no
    commissioning), so the service, ``check``, ``recalibrate`` and the preflight agree on one path."""
    if section is None:
        return None
    return Path(section.state) if section.state else default_state_file(spool)


def length_text(cfg: CommissioningSection) -> str:
    """How long a commissioning runs, as the messages say it."""
    return f"{cfg.windows} windows" if cfg.windows is not None else f"{cfg.hours:g} hours"


def archive_path(state_file: Path, model: str) -> Path:
    """Where a replaced model's calibration is put aside: ``calibration.<model>.json`` beside the state file."""
    return state_file.with_name(f"{state_file.stem}.{re.sub(r'[^A-Za-z0-9._-]', '_', model)[:100]}.json")


def archive(state_file: Path, d: Any, spare: Path | None = None) -> None:
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


def read_state(d: Any, model: str, detector: Detector) -> str | Calibration | None:
    """A state file's content for ``model`` -> why a new commissioning starts (a str), the calibration it holds,
    or None: a commissioning in progress, to resume. Raises (``UNREADABLE``) when the file is damaged."""
    if not isinstance(d, Mapping):
        raise ValueError(f"expected a JSON object, got {type(d).__name__}")
    if d.get("schema") == OLD_SCHEMA:
        return "calibration from an older agent (its windows lack what this one fits)"
    if d.get("schema") != SCHEMA:
        raise ValueError(f"schema {d.get('schema')!r}, expected {SCHEMA}")
    if d["state"] == "requested":
        return "recalibration requested"
    if d["model"] != model:
        return f"calibrated for model {d['model']}, this is {model}"
    if d["state"] == "commissioning":
        return None
    if d["state"] not in ("commissioned", "commissioning_suspect"):
        raise ValueError(f"state {d['state']!r}")
    det = with_fitted(detector, d["detector"]) if d["state"] == "commissioned" else detector
    return Calibration(d["state"], model, det, int(d["windows"]), float(d["median_level"]), float(d["standout"]),
                       float(d["bundle_threshold"]), float(d["started_t"]), float(d["finished_t"]))


def state_dict(model: str, kept: EvidenceLog, c: Calibration | None) -> dict[str, Any]:
    """The state file's content for a commissioning of ``model`` with windows ``kept`` and outcome ``c``."""
    out: dict[str, Any] = {"schema": SCHEMA, "model": model, "updated": time.time()}
    if c is None:
        out |= {"state": "commissioning", "windows_file": WINDOWS_SUFFIX.lstrip("."), "seen": kept.seen}
        if kept.extremes is not None:  # of every window seen: the maxima the fit needs exact
            out["extremes"] = kept.extremes.to_dict()
        return out
    out |= {"state": c.state, "windows": c.windows, "median_level": c.median_level, "standout": c.standout,
            "bundle_threshold": c.bundle_threshold, "started_t": c.started_t, "finished_t": c.finished_t}
    if c.state == "commissioned":
        out["detector"] = fitted_parts(c.detector)
    return out


def requested(state_file: Path) -> bool:
    """Does the state file hold a ``recalibrate`` request (which only a start or reload may replace)?"""
    try:
        return json.loads(state_file.read_text()).get("state") == "requested"
    except (OSError, ValueError, AttributeError):
        return False


def unreadable(model: str, detector: Detector) -> Calibration:
    """The outcome of a state file that cannot be read: the bundle's detector decides, and says why."""
    nan = float("nan")
    return Calibration("unreadable", model, detector, 0, nan, nan, detector.threshold, nan, nan)


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


def describe(section: CommissioningSection | None, state_file: Path | None, bundle: Bundle) -> str:
    """For ``vibrawatch-agent check``: where the thresholds will come from, without writing anything."""
    c, path = section, state_file
    if c is None or path is None:
        return f"the bundle's ({bundle.detector.threshold:.6g}); no [commissioning] in the config"
    if not creatable_dir(path.parent)[0]:
        raise ConfigError(f"{path.parent}: state directory for the calibration is missing and cannot be created, "
                          "or not writable; create it for the service's user (systemd's StateDirectory= does)")
    if not path.exists():
        return f"commissioning ({length_text(c)}) starts at the next start; state in {path}"
    try:
        d = json.loads(path.read_text())
        state, model = d["state"], d["model"]
        current = d.get("schema") == SCHEMA and model == bundle.version
        threshold = (with_fitted(bundle.detector, d["detector"]).threshold if current and state == "commissioned"
                     else bundle.detector.threshold)
    except UNREADABLE as e:
        return (f"the bundle's: {path} is unreadable ({str(e)[:60]}); "
                "`vibrawatch-agent recalibrate --config FILE` commissions again")
    if model != bundle.version and state != "requested" and archive_path(path, bundle.version).exists():
        return (f"this model's calibration, put aside when another replaced it, is taken back at the next start or "
                f"reload ({archive_path(path, bundle.version)})")
    if model != bundle.version or state == "requested" or d.get("schema") != SCHEMA:
        return f"a new commissioning ({length_text(c)}) starts at the next start or reload ({path}: {state}, {model})"
    if state == "commissioning":
        return (f"commissioning, {d.get('seen', 0)} window(s) so far of {length_text(c)} (at most {c.keep} kept, "
                f"evenly spaced) ({path})")
    return f"{state}: {threshold:.6g} (the bundle's {bundle.detector.threshold:.6g}) from {path}"


@dataclass
class CommissioningFiles:
    """The two files of one commissioning: what they hold and what is still to be written, so that the streaming
    ``Commissioning`` never waits on the disk for more than one save a minute. The state file's path is the
    ``Commissioning``'s, passed in (none: nothing is written).

    ``save`` writes what is not written yet; ``resume`` reads a commissioning in progress back.
    """

    model: str
    cfg: CommissioningSection | None
    shapes: dict[str, tuple[int, ...]]  # the windows file's columns (``row_shapes`` of the bundle's detector)
    pending: list[str] = field(default_factory=list)  # windows-file lines not written yet
    saved: float = 0.0
    json_written: bool = False
    json_seen: int | None = None  # the windows seen that the state file says
    rewrite: bool = False  # the windows file is to be written anew (a halving, a new commissioning, damage)
    failed: bool = False  # the last save failed (disk full, read-only): retried once a minute, not every window

    def add(self, ev: Evidence, halved: bool, kept: bool) -> None:
        """A window went into the log: after a halving the file is rewritten with what is kept now, else a kept
        window waits for the next append."""
        if halved:
            self.rewrite, self.pending = True, []
        elif kept:
            self.pending.append(window_line(ev, 0, list(self.shapes)))

    def due(self) -> bool:
        """Is a save due: a rewrite waiting (unless the last save failed: retried once a minute) or a minute gone."""
        return (self.rewrite and not self.failed) or time.monotonic() - self.saved >= SAVE_EVERY_S

    def restart(self, rewrite: bool) -> None:
        """The log starts empty (a new commissioning, or one completed): nothing pending, the state file to say so."""
        self.pending, self.json_written, self.rewrite = [], False, rewrite

    @staticmethod
    def drop_windows(windows: Path | None) -> None:
        """A new commissioning: the old windows go (a failure is logged; the next rewrite replaces them)."""
        if windows is not None:
            try:
                windows.unlink(missing_ok=True)
            except OSError as e:
                log.error("%s: cannot remove the old commissioning windows (%s)", windows, e.strerror)

    def save(self, state_file: Path | None, kept: EvidenceLog, calibration: Calibration | None) -> None:
        """Write what is not written yet, windows first: the windows file (anew after a halving, atomically:
        header and kept windows to a temporary file renamed over it; else the windows kept since the last save,
        appended: a power cut tears at most its last line, which a resume drops), then the state file with the
        count of windows seen (atomically: the old or the new one; never over a ``recalibrate`` request).
        Called at most once a minute, at every halving and transition, and at stop."""
        self.saved = time.monotonic()
        if state_file is None or self.cfg is None or not self.cfg.enabled:
            return
        if calibration is not None and calibration.state == "unreadable":
            return  # the damaged file stays for a look until `recalibrate` replaces it
        windows = windows_path(state_file)
        try:
            state_file.parent.mkdir(parents=True, exist_ok=True)  # as the spool's: owner only (umask 077)
            if calibration is None:
                self._save_windows(windows, kept)
                if not self.json_written or (self.json_seen != kept.seen and not requested(state_file)):
                    self._write_state(state_file, kept, calibration)
            elif not self.json_written and not requested(state_file):  # a request made meanwhile stands
                self._write_state(state_file, kept, calibration)
                windows.unlink(missing_ok=True)  # commissioned: its windows are in the detector now
            self.failed = False
        except (OSError, ValueError) as e:  # scoring goes on; the commissioning is lost at the next restart
            for f in (windows, state_file):  # no half-written temporary file left behind
                with contextlib.suppress(OSError):
                    f.with_name(f.name + ".tmp").unlink(missing_ok=True)
            if not self.failed:  # one line per failure, not one per window: the next try is a minute later
                log.error("%s: cannot save the calibration (%s); make the state directory writable for the service",
                          getattr(e, "filename", None) or state_file, getattr(e, "strerror", None) or e)
            self.failed = True

    def _write_state(self, state_file: Path, kept: EvidenceLog, calibration: Calibration | None) -> None:
        tmp = state_file.with_name(state_file.name + ".tmp")
        tmp.write_text(json.dumps(state_dict(self.model, kept, calibration), allow_nan=False))
        os.replace(tmp, state_file)
        self.json_written, self.json_seen = True, kept.seen

    def _save_windows(self, path: Path, kept: EvidenceLog) -> None:
        assert self.cfg is not None
        if not len(kept):  # nothing kept (yet): no file
            path.unlink(missing_ok=True)
            self.rewrite, self.pending = False, []
            return
        if self.rewrite or not path.exists():
            tmp = path.with_name(path.name + ".tmp")
            ev, names = kept.evidence(), list(self.shapes)
            with tmp.open("w") as f:  # line by line: no second copy of the windows in memory
                f.write(windows_header(self.shapes, kept.stride, self.cfg.keep) + "\n")
                for j in range(len(kept)):
                    f.write(window_line(ev, j, names) + "\n")
            os.replace(tmp, path)
            self.rewrite = False
        elif self.pending:
            try:
                with path.open("a") as f:
                    f.write("".join(line + "\n" for line in self.pending))
            except OSError:  # part of it may be written: the next save writes the whole file anew, atomically
                self.rewrite, self.pending = True, []
                raise
        self.pending = []

    def resume(self, state_file: Path | None, kept: EvidenceLog, state: Mapping[str, Any]
               ) -> tuple[EvidenceLog, str, bool]:
        """Read the windows file back -> (the log to go on with, the note, whether to save now): the windows
        kept, their stride, and the count seen (the state file's ``seen``, which a power cut between the two
        files' writes can leave behind or ahead: it is clamped to what the kept windows allow). A damaged last
        line is dropped with one log line and the file rewritten; a file that is not this detector's starts the
        commissioning over (``kept``, empty, goes on)."""
        assert self.cfg is not None and state_file is not None
        path = windows_path(state_file)
        self.rewrite = True
        if not path.exists():
            return kept, "commissioning resumes after 0 window(s)", False
        try:
            ev, stride, dropped, clean = read_windows(path, self.shapes)
        except (OSError, ValueError) as e:
            log.warning("%s: %s; the commissioning starts over", path, e)
            self.json_written = False
            return kept, f"{path}: unreadable commissioning windows: the commissioning starts over", True
        k = len(ev)
        said, extremes = state.get("seen"), state.get("extremes")
        seen = said if isinstance(said, int) and not isinstance(said, bool) else 0
        seen = min(max(seen, (k - 1) * stride + 1), k * stride) if k else 0
        ext = None
        if k and extremes is not None:
            try:
                ext = Extremes.from_dict(extremes, ev)
            except ValueError as e:  # the kept windows' own extremes stand in: maxima at most slightly lower
                log.warning("%s: %s; the kept windows' extremes are used", state_file, e)
        back = EvidenceLog.restore(ev, stride if k else 1, seen, self.cfg.keep, ext)
        self.rewrite = back.stride != stride or bool(dropped) or not clean or not current_layout(path, self.shapes)
        if dropped or not clean:
            log.warning("%s: %d damaged line(s) skipped (a write torn by a power cut?); commissioning resumes with "
                        "%d window(s) seen, %d kept", path, dropped, seen, len(back))
        note = f"commissioning resumes after {seen} window(s) ({len(back)} kept, every {back.stride})"
        return back, note, self.rewrite
