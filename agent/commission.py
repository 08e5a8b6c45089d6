"""Commissioning: each gateway learns its own machine's thresholds, by the rule training used.

One model trained on a reference machine goes to many machines of the same type, but each has its own
healthy level: with the bundle's thresholds a rougher machine raises false alarms and a quieter one raises
a late alarm. With ``[commissioning]`` in the config the agent first scores ``windows`` windows (or
``hours`` of window time) and publishes them with ``threshold_source: commissioning`` and no alarm; then it
fits this machine's thresholds from those scores with the bundle's rule and margin (``Detector.
threshold_rule``, the same ``fit_threshold`` as training), stores them in the state directory and alarms
from then on with ``threshold_source: commissioned``.

Guard against learning a fault as normal: when the median commissioning window sits above ``suspect_factor``
times the bundle's thresholds (its alarm level, ``decide.alarm_levels``), or when one channel stands out,
above its bundle threshold and more than ``channel_factor`` times the median of the other channels' levels
(three channels or more), the machine is not one the model knows as healthy: it keeps the bundle's thresholds
and says so (``commissioning_suspect``), alarming as before. The second test is what tells a fault from a
machine that is merely rougher or quieter: on the simulator a rougher (1.4x) or quieter (0.7x) healthy machine
moves every channel alike (the most different channel within 5% of the others) while a defect already present
at commissioning moves its own bearing 9x more than the others, at an overall level (6.9) the first test
cannot tell from the rougher machine's (7.2). With two channels the test is off: FEMTO's bearing at another
load and speed has its horizontal/vertical balance 4.4x the reference's while healthy. See
bench/commissioning.py.

A new bundle (another ``model`` version) or ``vibrawatch-agent recalibrate`` starts a new commissioning.

Only a bundle whose decisions are the autoencoder's (``[product] combined = false``) is commissioned. The
combined detector (agent/events.py) also alarms on per-channel level floors, a PCA residual and each
channel's own deviation, all against the reference machine's healthy statistics, which this rule does not
refit; commissioning only its autoencoder thresholds would call the result this machine's while the floors
still alarm at the reference machine's. So with such a bundle ``[commissioning]`` is refused: one error line
in the log, a status with ``event: commissioning_refused`` (``threshold_source: bundle``), and the bundle's
thresholds; the calibration file is left as it was.
A calibration file that cannot be read falls back to the bundle's thresholds and says so; scoring never stops for it.

``Commissioning`` is the streaming object (one ``update`` per scored window, as ``AlarmState``);
``commission`` is its batch twin over a whole run, tested equal.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .decide import AlarmState, Decision, alarm_levels
from .detector import Detector
from .errors import ConfigError
from .threshold import fit_channel_thresholds, fit_threshold

if TYPE_CHECKING:
    from .bundle import Bundle
    from .config import AgentConfig
    from .pipeline import Scored

log = logging.getLogger("vibrawatch.commission")

SCHEMA = "vibrawatch.calibration/1"
CALIBRATION_FILE = "calibration.json"
SOURCES = ("bundle", "commissioning", "commissioned")
SAVE_EVERY_S = 60.0  # progress is written at most once a minute (and at every transition and stop)


@dataclass(frozen=True)
class CommissioningSection:
    """``[commissioning]`` of the agent config (configs/agent.example.toml documents it)."""

    windows: int | None = None  # length in scored windows ...
    hours: float | None = None  # ... or in hours of window time (the first window to the last)
    suspect_factor: float = 10.0  # median commissioning level above this x the bundle's thresholds: suspect
    channel_factor: float = 3.0  # one channel's median level above this x the others' (and above 1): suspect
    state: str | None = None  # the calibration file; default: calibration.json in $STATE_DIRECTORY or the spool's

    @property
    def enabled(self) -> bool:
        return self.windows is not None or self.hours is not None


def commissioning_section(raw: Mapping[str, Any] | None, path: Path) -> CommissioningSection | None:
    """Parse ``[commissioning]`` (None when the config has none); ConfigError names the file and key."""
    if raw is None:
        return None
    where = f"{path}: [commissioning]"
    known = {"windows", "hours", "suspect_factor", "channel_factor", "state"}
    bad = set(raw) - known
    if bad:
        raise ConfigError(f"{where} unknown key(s) {sorted(bad)}; known: {sorted(known)}")
    if ("windows" in raw) == ("hours" in raw):
        raise ConfigError(f"{where} give its length as exactly one of windows = N or hours = H")
    for key, kind in (("windows", int), ("hours", (int, float)), ("suspect_factor", (int, float)),
                      ("channel_factor", (int, float))):
        v = raw.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, kind) or not math.isfinite(v) or v <= 0):
            want = "an integer >= 1" if kind is int else "a number > 0"
            raise ConfigError(f"{where} {key} = {v!r}: expected {want}")
    for key in ("suspect_factor", "channel_factor"):
        if key in raw and raw[key] <= 1:
            raise ConfigError(f"{where} {key} = {raw[key]}: expected a factor > 1")
    state = raw.get("state")
    if state is not None and not isinstance(state, str):
        raise ConfigError(f"{where} state: expected a file path")
    if state is not None:
        state = str((path.parent / state).resolve())
    return CommissioningSection(windows=raw.get("windows"), hours=raw.get("hours"),
                                suspect_factor=float(raw.get("suspect_factor", 10.0)),
                                channel_factor=float(raw.get("channel_factor", 3.0)), state=state)


def default_state_file(spool: str | Path) -> Path:
    """calibration.json in systemd's StateDirectory (``$STATE_DIRECTORY``), else beside the spool."""
    state_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state_dir or Path(spool).parent) / CALIBRATION_FILE


@dataclass(frozen=True)
class Calibration:
    """The outcome of a commissioning: this machine's thresholds, or why the bundle's were kept."""

    state: str  # "commissioned" | "commissioning_suspect" | "unreadable" (a damaged file: the bundle's)
    model: str
    threshold: float
    channel_thresholds: np.ndarray
    windows: int
    median_level: float  # median commissioning window's alarm level against the bundle's thresholds
    standout: float  # the most different channel's median level / the other channels' median (1: all alike)
    bundle_threshold: float
    started_t: float
    finished_t: float

    @property
    def source(self) -> str:
        return "commissioned" if self.state == "commissioned" else "bundle"

    def status_fields(self) -> dict[str, Any]:
        """What the status message says about it."""
        return {"threshold_source": self.source, "threshold": self.threshold,
                "channel_thresholds": [float(x) for x in self.channel_thresholds], "windows": self.windows,
                "median_level": self.median_level, "standout": self.standout,
                "bundle_threshold": self.bundle_threshold}


def standout(contributions: np.ndarray, channel_thresholds: np.ndarray) -> tuple[float, float]:
    """(the highest channel's median level, it / the median of the other channels' median levels)."""
    per_channel = np.median(np.asarray(contributions) / np.maximum(channel_thresholds, 1e-12), axis=0)
    if per_channel.size < 3:  # "the others" would be one channel: an operating condition moves that balance
        return float(per_channel.max()), 1.0
    top = int(np.argmax(per_channel))
    others = float(np.median(np.delete(per_channel, top)))
    return float(per_channel[top]), float(per_channel[top] / max(others, 1e-12))


def fit(scores: np.ndarray, contributions: np.ndarray, times: np.ndarray, detector: Detector,
        cfg: CommissioningSection, model: str) -> Calibration:
    """Thresholds from commissioning windows by the bundle's rule, or the bundle's when they look faulty."""
    levels = alarm_levels(scores, detector.threshold, contributions, detector.channel_thresholds)
    median = float(np.median(levels))
    top, ratio = standout(contributions, detector.channel_thresholds)
    common = {"model": model, "windows": int(len(scores)), "median_level": median, "standout": ratio,
              "bundle_threshold": detector.threshold, "started_t": float(times[0]), "finished_t": float(times[-1])}
    if median > cfg.suspect_factor or (top > 1.0 and ratio > cfg.channel_factor):
        return Calibration("commissioning_suspect", threshold=detector.threshold,
                           channel_thresholds=np.asarray(detector.channel_thresholds, float), **common)
    return Calibration("commissioned", threshold=fit_threshold(scores, detector.threshold_rule),
                       channel_thresholds=fit_channel_thresholds(contributions, detector.threshold_rule), **common)


def _done(cfg: CommissioningSection, n: int, t0: float, t: float) -> bool:
    if cfg.windows is not None:
        return n >= cfg.windows
    return n >= 2 and t - t0 >= float(cfg.hours or 0) * 3600.0


def commission(scores: np.ndarray, contributions: np.ndarray, times: np.ndarray, detector: Detector,
               cfg: CommissioningSection, model: str) -> tuple[Calibration | None, int]:
    """Batch twin of ``Commissioning``: the calibration a run's windows give and the index of the first
    window decided with it (None and len(scores) when the run is shorter than the commissioning)."""
    for i in range(len(scores)):
        if _done(cfg, i + 1, float(times[0]), float(times[i])):
            return fit(scores[: i + 1], contributions[: i + 1], times[: i + 1], detector, cfg, model), i + 1
    return None, len(scores)


@dataclass
class Commissioning:
    """Streaming commissioning for one agent: ``update`` each scored window, get it back as published.

    During commissioning a window's decision never alarms (its level is against the bundle's thresholds);
    once calibrated, windows are decided by an ``AlarmState`` on the calibrated (or the bundle's) thresholds.
    """

    detector: Detector
    model: str
    cfg: CommissioningSection | None
    state_file: Path | None = None
    calibration: Calibration | None = None
    scores: list[float] = field(default_factory=list)
    contributions: list[list[float]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    note: str | None = None  # what happened at load (unreadable file, new model), for the log and status
    refused: bool = False  # [commissioning] given, but the bundle's detector is one it cannot commission
    window_source: str = "bundle"  # threshold_source and threshold of the last window through ``window``
    window_threshold: float = 0.0
    _alarm: AlarmState | None = None
    _since: float | None = None
    _saved: float = 0.0

    @property
    def source(self) -> str:
        """``threshold_source`` of the windows decided now."""
        if self.cfg is None or not self.cfg.enabled:
            return "bundle"
        return "commissioning" if self.calibration is None else self.calibration.source

    @property
    def threshold(self) -> float:
        return self.detector.threshold if self.calibration is None else self.calibration.threshold

    @property
    def commissioning(self) -> bool:
        return self.source == "commissioning"

    def alarm_state(self) -> AlarmState:
        if self._alarm is None:
            d = self.detector
            if self.calibration is not None:
                d = d.with_thresholds(self.calibration.threshold, self.calibration.channel_thresholds)
            self._alarm = d.alarm_state()
        return self._alarm

    def update(self, score: float, contributions: np.ndarray, t: float, decision: Decision
               ) -> tuple[Decision, float | None, Calibration | None]:
        """One scored window (its pipeline decision on the bundle's thresholds) -> the decision to publish,
        the active alarm's start time, and the calibration when this window completed the commissioning."""
        if not self.commissioning:
            d = self.alarm_state().update(score, contributions)
            return d, self._track_since(d, t), None
        self.scores.append(float(score))
        self.contributions.append([float(x) for x in contributions])
        self.times.append(float(t))
        quiet = Decision(above=decision.level > 1.0, active=False, event=None, channel=decision.channel,
                         level=decision.level)
        assert self.cfg is not None
        if _done(self.cfg, len(self.scores), self.times[0], float(t)):
            self.calibration = fit(np.asarray(self.scores), np.asarray(self.contributions), np.asarray(self.times),
                                   self.detector, self.cfg, self.model)
            self._alarm = None
            warm = self.detector.rule.raise_after - 1  # the alarm rule remembers the last commissioning windows,
            state = self.alarm_state()  # so a fault present at the end alarms at the first window after them
            for s, c in zip(self.scores[len(self.scores) - warm:], self.contributions[len(self.scores) - warm:],
                            strict=True):
                state.update(s, np.asarray(c))
            self.scores, self.contributions, self.times = [], [], []
            self.save()
            return quiet, None, self.calibration
        if time.monotonic() - self._saved >= SAVE_EVERY_S:
            self.save()
        return quiet, None, None

    def window(self, ev: Scored) -> tuple[Scored, Calibration | None]:
        """The agent's one call per scored window: the window as it is published, and the calibration when
        this window completed the commissioning. Without ``[commissioning]`` the window is unchanged."""
        self.window_source, self.window_threshold = self.source, self.threshold
        if self.cfg is None or not self.cfg.enabled:
            return ev, None
        d, since, cal = self.update(ev.score, ev.contributions, ev.t, ev.decision)
        return replace(ev, decision=d, level=d.level, since=since), cal

    def _track_since(self, d: Decision, t: float) -> float | None:
        if d.event == "raised":
            self._since = t
        elif d.event == "cleared" or not d.active:
            self._since = None
        return self._since

    # -- the state file ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        c = self.calibration
        out: dict[str, Any] = {"schema": SCHEMA, "model": self.model, "updated": time.time()}
        if c is None:
            out |= {"state": "commissioning", "scores": self.scores, "contributions": self.contributions,
                    "times": self.times}
        else:
            out |= {"state": c.state, "threshold": c.threshold, "channel_thresholds": c.channel_thresholds.tolist(),
                    "windows": c.windows, "median_level": c.median_level, "standout": c.standout,
                    "bundle_threshold": c.bundle_threshold,
                    "started_t": c.started_t, "finished_t": c.finished_t}
        return out

    def save(self) -> None:
        """Write the state file atomically (a power cut leaves the old or the new one, never half of one)."""
        self._saved = time.monotonic()
        if self.state_file is None or self.cfg is None or not self.cfg.enabled:
            return
        if self.calibration is not None and self.calibration.state == "unreadable":
            return  # the damaged file stays for a look until `recalibrate` replaces it
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)  # as the spool's: owner only (umask 077)
            tmp.write_text(json.dumps(self.to_dict(), allow_nan=False))
            os.replace(tmp, self.state_file)
        except OSError as e:  # scoring goes on; the commissioning is lost at the next restart
            log.error("%s: cannot save the calibration (%s); make the state directory writable for the service",
                      self.state_file, e.strerror)

    @classmethod
    def open(cls, detector: Detector, model: str, cfg: CommissioningSection | None, state_file: Path | None
             ) -> Commissioning:
        """Resume from the state file: a calibration for this model, a commissioning in progress, or a new one."""
        c = cls(detector, model, cfg, state_file)
        if cfg is None or not cfg.enabled or state_file is None:
            return c
        if not state_file.exists():
            c.note = f"commissioning starts: {_length(cfg)} before this machine's thresholds are fitted"
            c.save()
            return c
        try:
            d = json.loads(state_file.read_text())
            resumed = c._load(d)
        except (OSError, ValueError, KeyError, TypeError) as e:
            c.calibration = Calibration("unreadable", model, detector.threshold,
                                        np.asarray(detector.channel_thresholds, float), 0, float("nan"),
                                        float("nan"), detector.threshold, float("nan"), float("nan"))
            c.note = (f"{state_file}: unreadable calibration ({str(e)[:80]}); using the bundle's thresholds; "
                      f"run `vibrawatch-agent recalibrate --config FILE` to commission again")
            return c
        if not resumed:
            why = ("recalibration requested" if d.get("state") == "requested"
                   else f"calibrated for model {d.get('model')}, this is {model}")
            c.note = f"{state_file}: {why}: a new commissioning starts ({_length(cfg)})"
            c.save()
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
        requested = False
        if self.state_file is not None and self.state_file.exists():
            try:
                requested = json.loads(self.state_file.read_text()).get("state") == "requested"
            except (OSError, ValueError, AttributeError):
                requested = False
        if not requested and (self.calibration is None or self.calibration.state != "unreadable"):
            self.save()

    def _load(self, d: Mapping[str, Any]) -> bool:
        """Take over a state file's content; False when it belongs to another model or asks to start over."""
        if d.get("schema") != SCHEMA:
            raise ValueError(f"schema {d.get('schema')!r}, expected {SCHEMA}")
        if d["model"] != self.model or d["state"] == "requested":
            return False
        if d["state"] == "commissioning":
            self.scores = [float(x) for x in d["scores"]]
            self.contributions = [[float(y) for y in x] for x in d["contributions"]]
            self.times = [float(x) for x in d["times"]]
            if not (len(self.scores) == len(self.contributions) == len(self.times)):
                raise ValueError("scores, contributions and times differ in length")
            self.note = f"commissioning resumes after {len(self.scores)} window(s)"
            return True
        if d["state"] not in ("commissioned", "commissioning_suspect"):
            raise ValueError(f"state {d['state']!r}")
        ch = np.asarray(d["channel_thresholds"], dtype=np.float64)
        thr = float(d["threshold"])
        if ch.shape != self.detector.channel_thresholds.shape or not np.all(np.isfinite(ch) & (ch > 0)) \
                or not (math.isfinite(thr) and thr > 0):
            raise ValueError("thresholds are not positive numbers, one per channel")
        self.calibration = Calibration(d["state"], self.model, thr, ch, int(d["windows"]), float(d["median_level"]),
                                       float(d["standout"]), float(d["bundle_threshold"]), float(d["started_t"]),
                                       float(d["finished_t"]))
        self.note = f"{d['state']}: threshold {thr:.6g} ({self.calibration.source}) from {self.state_file}"
        return True


def open_commissioning(cfg: AgentConfig, bundle: Bundle, previous: Commissioning | None = None) -> Commissioning:
    """The agent's commissioning for ``cfg`` and ``bundle``: resumed from the state directory, or a new one;
    on a reload (``previous``) its progress is kept unless ``recalibrate`` asked to start over."""
    c = cfg.commissioning
    path = (Path(c.state) if c.state else default_state_file(cfg.agent.spool)) if c else None
    if c is not None and c.enabled and bundle.detector.combined:
        if previous is not None:
            previous.keep()
        comm = Commissioning(bundle.detector, bundle.version, None, None, refused=True,
                             note=refused_note(cfg, bundle))
        log.error("%s", comm.note)
        return comm
    args = (bundle.detector, bundle.version, c, path)
    comm = previous.reopen(*args) if previous is not None else Commissioning.open(*args)
    if comm.note:
        unreadable = comm.calibration is not None and comm.calibration.state == "unreadable"
        (log.error if unreadable else log.info)("%s", comm.note)
    return comm


def refused_note(cfg: AgentConfig, bundle: Bundle) -> str:
    """Why a combined-detector bundle is not commissioned (one line, for the log, the status and ``check``)."""
    return (f"{cfg.path}: [commissioning] not applied: bundle {bundle.version} uses the combined detector (level "
            "floors, PCA residual, per-channel attribution), whose thresholds commissioning cannot refit; its alarms "
            "use the bundle's thresholds. To commission this machine, deploy a bundle trained with [product] "
            "combined = false; or remove [commissioning]")


def describe(cfg: AgentConfig, bundle: Bundle) -> str:
    """For ``vibrawatch-agent check``: where the thresholds will come from, without writing anything."""
    c = cfg.commissioning
    if c is None:
        return f"the bundle's ({bundle.detector.threshold:.6g}); no [commissioning] in the config"
    if c.enabled and bundle.detector.combined:
        return f"the bundle's ({bundle.detector.threshold:.6g}); {refused_note(cfg, bundle)}"
    path = Path(c.state) if c.state else default_state_file(cfg.agent.spool)
    from .preflight import creatable_dir

    if not creatable_dir(path.parent)[0]:
        raise ConfigError(f"{path.parent}: state directory for the calibration is missing and cannot be created, "
                          "or not writable; create it for the service's user (systemd's StateDirectory= does)")
    if not path.exists():
        return f"commissioning ({_length(c)}) starts at the next start; state in {path}"
    try:
        d = json.loads(path.read_text())
        state, model = d["state"], d["model"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return (f"the bundle's: {path} is unreadable ({str(e)[:60]}); "
                "`vibrawatch-agent recalibrate --config FILE` commissions again")
    if model != bundle.version or state == "requested":
        return f"a new commissioning ({_length(c)}) starts at the next start or reload ({path}: {state}, {model})"
    if state == "commissioning":
        return f"commissioning, {len(d.get('scores', []))} of {_length(c)} so far ({path})"
    return f"{state}: {float(d['threshold']):.6g} (the bundle's {bundle.detector.threshold:.6g}) from {path}"


def status(comm: Commissioning, cal: Calibration | None = None) -> tuple[str, dict[str, Any]] | None:
    """The status message (state, fields) that says where the thresholds come from, when there is news:
    a commissioning running, its outcome (``cal``), or a calibration file that could not be read."""
    if cal is not None:
        (log.info if cal.state == "commissioned" else log.warning)(
            "%s after %d windows: threshold %.6g (bundle %.6g); median window %.2f x the bundle's thresholds, "
            "most different channel %.2f x the others", cal.state, cal.windows, cal.threshold, cal.bundle_threshold,
            cal.median_level, cal.standout)
        return cal.state, cal.status_fields()
    if comm.refused:
        return "online", {"event": "commissioning_refused", "threshold_source": "bundle", "note": comm.note or ""}
    if comm.commissioning:
        return "commissioning", {"threshold_source": "commissioning", "windows": len(comm.scores),
                                 **({"note": comm.note} if comm.note else {})}
    if comm.calibration is not None and comm.calibration.state == "unreadable":
        return "online", {"event": "calibration_unreadable", "threshold_source": "bundle", "note": comm.note or ""}
    return None


def _length(cfg: CommissioningSection) -> str:
    return f"{cfg.windows} windows" if cfg.windows is not None else f"{cfg.hours:g} hours"


def recalibrate(config_path: str | Path) -> str:
    """``vibrawatch-agent recalibrate``: ask for a new commissioning; what to do next."""
    from .config import load_agent_config

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


