"""A newly swapped-in model on trial (docs/deploy.md, "probation"): it must score ``probation_windows`` real
windows with finite scores, a mean inference time within ``latency_budget_ms`` and no exception; the agent dying
more than ``probation_restarts`` times meanwhile counts against it. Kept (``applied``) or rolled back
(``rolled_back``: the previous bundle back on disk first, then running).

The trial is recorded in the state file, so it survives the agent's death: every start counts one, and a swap
cut short is seen. The scoring is read through ``Scoring``, what any pipeline offers: the room above owns it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import VibrawatchError
from .bundle import Bundle, BundleError
from .deploy_state import DeploySection, StateDir, collect, outcome_payload

if TYPE_CHECKING:
    from ..detect.results import Scored

log = logging.getLogger("vibrawatch.deploy")


class ProbationFailed(VibrawatchError):
    """The new model misbehaved on real windows: a non-finite score, too slow, an exception."""


class Counts(Protocol):
    """The running totals a trial reads off the scoring (the pipeline's ``StageTimes``)."""

    windows: int  # windows that reached the model
    inference: float  # seconds spent in scaling and the model
    non_finite: int  # windows not scored because their score was NaN/inf
    model_non_finite: int  # ... of those, ones whose features were sane: the bundle failed, not the samples


class Scoring(Protocol):
    """What scores the windows on trial: the agent's pipeline (a new one, after a reload, starts the count over)."""

    @property
    def times(self) -> Counts: ...


class Probation:
    """The trial of the model a deploy swapped in, and its end. ``back`` switches the agent to the bundle
    ``current`` names again (just relinked to the previous one); ``say`` reports an outcome."""

    def __init__(self, sd: StateDir, say: Callable[[dict[str, Any]], None], back: Callable[[], None]) -> None:
        self.dir, self.say, self.back = sd, say, back
        self.record: dict[str, Any] | None = None  # the state file's probation record, while a trial runs
        # the scoring the trial counts on, and its counts at the start (windows, inference s, non-finite windows:
        # all of them, and those where the bundle failed on sane features)
        self._base: tuple[Scoring, int, float, int, int] | None = None

    def begin(self, record: dict[str, Any]) -> None:
        """A swap just happened: the trial starts with the next window scored."""
        self.record, self._base = record, None

    def resume(self, state: dict[str, Any], section: DeploySection, load: Callable[[], Bundle]) -> Bundle:
        """At start: count a death during probation, roll back after too many or after a swap that was cut
        short, then load what ``current`` names (``load``)."""
        rec = state.get("probation")
        if rec is not None:
            if self.dir.link("current") != Path(rec["path"]):
                self._end(state, "rolled_back", f"the agent stopped in the middle of the swap; still on {rec['from']}")
                rec = None
            elif rec.get("running"):
                rec["deaths"] = int(rec.get("deaths", 0)) + 1
                self.dir.write_state(state)  # now: a model that kills the process while loading is counted too
                log.warning("the agent died during the probation of %s (%d time(s))", rec["to"], rec["deaths"])
                if rec["deaths"] > section.probation_restarts:
                    self._relink_previous(rec)
                    self._end(state, "rolled_back", f"the agent died {rec['deaths']} times during probation")
                    rec = None
        try:
            bundle = load()
        except BundleError as e:
            if rec is None:
                raise
            self._relink_previous(rec)
            self._end(state, "rolled_back", f"the new bundle does not load: {e}")
            rec = None
            bundle = load()
        if rec is not None:
            rec["running"] = True
            self.dir.write_state(state)
            self.record = rec
            log.info("on probation: %s must score %d windows", rec["to"], section.probation_windows)
        return bundle

    def check(self, ev: Scored) -> None:
        """Before a score leaves: on probation, a non-finite score is the new model failing."""
        if self.record is not None and not (np.isfinite(ev.score) and np.all(np.isfinite(ev.contributions))):
            raise ProbationFailed(f"window at t={ev.t:.3f} scored {ev.score} (not finite)")

    def fail(self, error: Exception) -> bool:
        """An exception while scoring: on probation, roll back (True); else False, and the caller re-raises (a
        failure of a committed model is not the deploy's to hide)."""
        if self.record is None:
            return False
        reason = str(error) if isinstance(error, ProbationFailed) else f"{type(error).__name__}: {error}"
        self._rollback(f"failed on real windows: {reason}")
        return True

    def judge(self, scoring: Scoring, section: DeploySection) -> None:
        """Windows scored since probation began (a new scoring, after a reload, starts over): keep the model once
        enough passed, roll back at the first sign it fails."""
        t, d = scoring.times, section
        if self._base is None or self._base[0] is not scoring:
            self._base = (scoring, t.windows, t.inference, t.non_finite, t.model_non_finite)
        windows, inference = t.windows - self._base[1], t.inference - self._base[2]
        failed = t.model_non_finite - self._base[4]
        if failed:  # the pipeline withholds a non-finite score as a sensor fault: check() never sees it
            self._rollback(f"failed on real windows: {failed} window(s) of sane samples scored not finite (NaN/inf)")
            return
        if windows == 0:
            return
        mean_ms = 1000.0 * inference / windows
        scored = windows - (t.non_finite - self._base[3])  # absurd samples' windows: not scored, do not count
        if windows >= min(5, d.probation_windows) and mean_ms > d.latency_budget_ms:
            self._rollback(f"mean inference {mean_ms:.1f} ms per window over {windows} windows, budget "
                           f"{d.latency_budget_ms:g} ms")
        elif scored >= d.probation_windows:
            self._end(self.dir.read_state(), "applied", f"{scored} windows scored, mean inference {mean_ms:.2f} ms")
            collect(self.dir)

    def close(self) -> None:
        """A clean stop during probation is not a death."""
        if self.record is not None:
            state = self.dir.read_state()
            if state.get("probation") is not None:
                state["probation"]["running"] = False
                self.dir.write_state(state)

    def _rollback(self, reason: str) -> None:
        """The previous bundle back: on disk first (so a crash from here on restarts on it), then running."""
        assert self.record is not None
        self._relink_previous(self.record)
        self.back()
        self._end(self.dir.read_state(), "rolled_back", reason)  # after back(): the status names the old model

    def _relink_previous(self, rec: dict[str, Any]) -> None:
        self.dir.set_link("current", Path(rec["previous"]))

    def _end(self, state: dict[str, Any], outcome: str, reason: str) -> None:
        """Close the probation in the state file with its outcome (applied or rolled_back) and report it."""
        rec = state.get("probation") or self.record or {}
        state["probation"] = None
        state["last"] = outcome_payload(outcome, rec.get("deployment"), reason, rec.get("from"), rec.get("to"),
                                        rec.get("sha256"))
        self.dir.write_state(state)
        self.record = None
        log.log(logging.ERROR if outcome == "rolled_back" else logging.INFO, "deployment %s %s: %s",
                rec.get("deployment"), outcome, reason)
        self.say(state["last"])
