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
(``windows``/``hours``) counts every window; the fit runs on the kept ones. Where they are kept between runs
(``calibration.json`` and ``calibration.windows.jsonl`` in the state directory): agent/model/commission_store.py
and agent/model/commission_windows.py.

``Commissioning`` is the streaming object (one ``window`` per scored window, called by the pipeline's
``Decider``); ``commission`` is its batch twin over a whole run, tested equal.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..detect.calibrate import Calibration, CommissioningSection, calibrate, commissioning_done
from ..detect.decide import Decision
from ..detect.detector import Detector
from ..detect.healthy import MIN_STEP, Evidence, EvidenceLog
from ..detect.threshold import FEW_HEALTHY_WINDOWS
from .commission_store import (
    UNREADABLE,
    CommissioningFiles,
    archive,
    archive_path,
    length_text,
    read_state,
    requested,
    unreadable,
)
from .commission_windows import row_shapes, windows_path

if TYPE_CHECKING:
    from ..detect.results import Scored
    from .bundle import Bundle

log = logging.getLogger("vibrawatch.commission")


@dataclass
class Commissioning:
    """Streaming commissioning for one agent: each scored window goes through ``window`` (the pipeline's
    ``Decider`` calls it), which keeps it while commissioning and publishes it with no alarm, transient,
    condition change or diagnosis (each would be judged on the reference machine's levels). When it completes,
    ``calibration.detector`` decides (the ``Decider`` swaps it in, its alarm rule warmed with ``warm``).

    Memory and disk are bounded by ``cfg.keep`` whatever the window rate: ``log`` keeps an evenly spaced
    subsample of the windows (``EvidenceLog``), which the windows file follows (``CommissioningFiles``).
    """

    detector: Detector  # the bundle's
    model: str
    cfg: CommissioningSection | None
    state_file: Path | None = None
    calibration: Calibration | None = None
    log: EvidenceLog = field(default_factory=EvidenceLog)  # the commissioning's windows so far (those kept)
    note: str | None = None  # what happened at load (unreadable file, new model), for the log and status
    warm: Evidence | None = None  # the last raise_after - 1 commissioning windows, once it completed

    def __post_init__(self) -> None:
        self.log = self._new_log()
        self._recent: deque[Evidence] = deque(maxlen=max(self.detector.rule.raise_after - 1, 0))
        self._files = CommissioningFiles(self.model, self.cfg, row_shapes(self.detector))

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
        return None if self.state_file is None else windows_path(self.state_file)

    def window(self, ev: Scored) -> tuple[Scored, Calibration | None]:
        """One scored window -> the window as published, and the calibration when it completed the
        commissioning. Outside a commissioning only its ``source`` is set."""
        if not self.commissioning:
            return replace(ev, source=self.source), None
        assert self.cfg is not None and ev.evidence is not None
        stride = self.log.stride
        kept = self.log.append(ev.evidence)
        self._files.add(ev.evidence, halved=self.log.stride != stride, kept=len(kept) > 0)
        self._recent.append(ev.evidence)
        quiet = _quiet(ev)
        if commissioning_done(self.cfg, self.log.seen, self.log.t0, ev.t):
            self.calibration = calibrate(self.log.evidence(), self.detector, self.cfg, self.model,
                                         windows=self.log.seen, finished_t=ev.t, extremes=self.log.extremes)
            self.warm = Evidence.concat(list(self._recent)) if self._recent else None
            self.log = self._new_log()
            self._files.restart(rewrite=False)
            self._recent.clear()
            self.save()
            return replace(quiet, calibration=self.calibration), self.calibration
        if self._files.due():
            self.save()
        return quiet, None

    def save(self) -> None:
        """Write what is not written yet (``CommissioningFiles.save``): at most once a minute, at every halving
        and transition, and at stop."""
        self._files.save(self.state_file, self.log, self.calibration)

    def _start(self) -> None:
        """A new commissioning: an empty windows file and the state file saying so."""
        self.log = self._new_log()
        self._files.restart(rewrite=True)
        self._recent.clear()
        self._files.drop_windows(self.windows_file)
        self.save()

    @classmethod
    def open(cls, detector: Detector, model: str, cfg: CommissioningSection | None, state_file: Path | None
             ) -> Commissioning:
        """Resume from the state file: a calibration for this model, a commissioning in progress, or a new one."""
        c = cls(detector, model, cfg, state_file)
        if cfg is None or not cfg.enabled or state_file is None:
            return c
        if not state_file.exists():
            c.note = f"commissioning starts: {length_text(cfg)} before this machine's detector is fitted"
            c._start()
            return c
        d: Any = None
        try:
            d = json.loads(state_file.read_text())
            why = c._load(d)
        except UNREADABLE as e:
            c.calibration = unreadable(model, detector)
            c.note = (f"{state_file}: unreadable calibration ({str(e)[:80]}); using the bundle's thresholds; "
                      f"run `vibrawatch-agent recalibrate --config FILE` to commission again")
            return c
        if why is not None:
            # The replaced model's finished calibration goes aside first (it may come back in turn); this
            # model's own, if one was put aside earlier, is spared by the pruning and taken back.
            restorable = d.get("state") != "requested"
            archive(state_file, d, spare=archive_path(state_file, model) if restorable else None)
            if restorable and (back := _take_back(detector, model, cfg, state_file)):
                return back
            c.note = f"{state_file}: {why}: a new commissioning starts ({length_text(cfg)})"
            c._start()
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
        asked = self.state_file is not None and requested(self.state_file)
        if not asked and (self.calibration is None or self.calibration.state != "unreadable"):
            self.save()

    def _load(self, d: Any) -> str | None:
        """Take over a state file's content; why a new commissioning starts instead (None: resumed)."""
        got = read_state(d, self.model, self.detector)
        if isinstance(got, str):
            return got
        self._files.json_written = True
        if got is None:  # a commissioning in progress: its windows
            self.log, self.note, save = self._files.resume(self.state_file, self.log, d)
            if save:
                self.save()
        else:
            self.calibration = got
            self.note = f"{got.state}: threshold {got.threshold:.6g} ({got.source}) from {self.state_file}"
        return None


def _quiet(ev: Scored) -> Scored:
    """A window as published while commissioning: its level, but no alarm, transient, condition or diagnosis."""
    d = ev.decision
    return replace(ev, decision=Decision(above=d.level > 1.0, active=False, event=None, channel=d.channel,
                                         level=d.level),
                   since=None, verdict=None, diagnosis={}, diagnosed={}, source="commissioning")


def _take_back(detector: Detector, model: str, cfg: CommissioningSection, state_file: Path) -> Commissioning | None:
    """This model's own calibration, put aside when another model replaced it (a deploy rolled back, or the
    previous model deployed again): taken back instead of commissioning the machine again."""
    kept = archive_path(state_file, model)
    if not kept.exists():
        return None
    c = Commissioning(detector, model, cfg, state_file)
    try:
        if c._load(json.loads(kept.read_text())) is not None or c.calibration is None:
            return None
        os.replace(kept, state_file)
        if c.windows_file is not None:
            c.windows_file.unlink(missing_ok=True)  # the replaced model's commissioning in progress
    except UNREADABLE as e:
        log.warning("%s: cannot take this model's calibration back (%s); commissioning again", kept, e)
        return None
    c.note = (f"{state_file}: {c.calibration.state} calibration of model {model} taken back from {kept.name} "
              "(put aside when another model replaced it)")
    return c


def open_commissioning(section: CommissioningSection | None, state_file: Path | None, bundle: Bundle,
                       previous: Commissioning | None = None) -> Commissioning:
    """The agent's commissioning for ``[commissioning]`` (``section``, kept in ``state_file``) and ``bundle``:
    resumed from the state directory, or a new one; on a reload (``previous``) its progress is kept unless
    ``recalibrate`` asked to start over."""
    args = (bundle.detector, bundle.version, section, state_file)
    comm = previous.reopen(*args) if previous is not None else Commissioning.open(*args)
    if comm.note:
        damaged = comm.calibration is not None and comm.calibration.state == "unreadable"
        (log.error if damaged else log.info)("%s", comm.note)
    return comm


def status(comm: Commissioning, cal: Calibration | None = None) -> tuple[str, dict[str, Any]] | None:
    """The status message (state, fields) that says where the thresholds come from, when there is news:
    a commissioning running, its outcome (``cal``), or a calibration file that could not be read."""
    if cal is not None:
        (log.info if cal.state == "commissioned" else log.warning)(
            "%s after %d windows: threshold %.6g (bundle %.6g); median window %.2f x the bundle's thresholds, "
            "most different channel %.2f x the others", cal.state, cal.windows, cal.threshold, cal.bundle_threshold,
            cal.median_level, cal.standout)
        if cal.state == "commissioned" and cal.windows < FEW_HEALTHY_WINDOWS:
            log.warning("commissioned on %d windows only: thresholds fitted on so few are crossed by about 1 healthy "
                        "window in %d, so expect nuisance alarms; commission longer ([commissioning] windows >= %d)",
                        cal.windows, cal.windows + 1, FEW_HEALTHY_WINDOWS)
        moved = [f"{name} x{r:.2f}" for name, r in zip(cal.detector.channels, cal.drift or (), strict=False)
                 if abs(math.log(r)) > MIN_STEP]
        if cal.state == "commissioned" and moved:
            log.warning("the commissioning windows are not one steady condition: the RMS level went %s from their "
                        "first fifth to their last. The thresholds are fitted on all of them: a level that fell (a "
                        "run-in settling) leaves the detector less sensitive, one that rose may be wear already "
                        "under way; recalibrate once the machine runs steady", ", ".join(moved))
        return cal.state, cal.status_fields()
    if comm.commissioning:
        return "commissioning", {"threshold_source": "commissioning", "windows": comm.log.seen,
                                 **({"note": comm.note} if comm.note else {})}
    if comm.calibration is not None and comm.calibration.state == "unreadable":
        return "online", {"event": "calibration_unreadable", "threshold_source": "bundle", "note": comm.note or ""}
    return None
