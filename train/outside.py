"""Outside baselines: well-known detectors from PyOD (ECOD, COPOD, HBOS, LOF, KNN), run by `vibrawatch evaluate
--baselines pyod` beside the project's own, so the product is measured against detectors it did not design.

Each is fitted exactly as the IsolationForest baseline (train/baselines.py): on the same min-max scaled windows
(T frames of every feature, flattened), the windows that end in the training's healthy period; its threshold by
the run's threshold rule on the healthy windows' scores (by default the highest healthy score x the margin); the
run's alarm rule (raise_after, clear_after, hysteresis); one alarm state for the whole machine (no channel named),
as IsolationForest. PyOD and its numba come with the ``baselines`` extra, on the workstation only.

How each scores: the healthy windows by the scores PyOD gives its training data (``decision_scores_``: KNN and LOF
leave the window itself out of its neighbours), every later window by ``decision_function``. ECOD and COPOD
rebuild their empirical distributions from the training data *and* the data scored with it, so the later windows
are scored one at a time: a gateway sees one window at a time, and a batch would let the failing windows shape
what the detector calls normal.

``ecod_upper`` (this project's, numpy) is ECOD's statistic on the upper tails only: ECOD adds the improbability
of a value in either tail, so vibration that fell below the healthy period (a run-in that settles, a lighter
load) raises its score as much as vibration that rose. Scored beside ECOD it tells which of the two carried a
lead (docs/detection.md, "Outside baselines").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vibrawatch.agent.detect.decide import AlarmRule, run_alarms
from vibrawatch.agent.detect.threshold import ThresholdRule, fit_threshold
from vibrawatch.agent.errors import ConfigError

from .scoring import Detection, single_detection

OUTSIDE = ("ecod", "copod", "hbos", "lof", "knn")  # the detectors `--baselines pyod` runs, in report order
# ECOD's statistic on the upper tails only (numpy, ``upper_tail_scores``): `--baselines pyod` runs it beside ECOD so
# a lead can be told apart by what carried it: vibration that rose above the healthy period, or fell below it
OWN = ("ecod_upper",)
ONE_AT_A_TIME = frozenset({"ecod", "copod"})  # scoring new data refits their ECDFs on train + that data
INSTALL = 'pip install "vibrawatch[baselines]"'


def parse_outside(text: str | None) -> tuple[str, ...]:
    """``--baselines``: ``pyod`` (all five) or a comma list of their names (``ecod,knn``); None/empty: none."""
    if not text or not text.strip():
        return ()
    names: list[str] = []
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        add = OUTSIDE + OWN if part == "pyod" else (part.removeprefix("pyod_"),)
        for n in add:
            if n not in OUTSIDE + OWN:
                raise ConfigError(f"--baselines {text!r}: {part!r} is not one of pyod, {', '.join(OUTSIDE + OWN)}")
            if n not in names:
                names.append(n)
    return tuple(names)


def require_pyod() -> Any:
    """The pyod package, or one line naming the extra that installs it."""
    try:
        import pyod
    except ModuleNotFoundError:
        raise ConfigError(f"--baselines: the outside baselines need PyOD, which the [baselines] extra installs: "
                          f"{INSTALL}") from None
    return pyod


def make_detector(name: str, n_healthy: int) -> Any:
    """A PyOD detector with its library defaults; KNN and LOF's neighbour count capped by the healthy windows."""
    require_pyod()
    if name == "ecod":
        from pyod.models.ecod import ECOD

        return ECOD()
    if name == "copod":
        from pyod.models.copod import COPOD

        return COPOD()
    if name == "hbos":
        from pyod.models.hbos import HBOS

        return HBOS()
    k_max = max(1, n_healthy - 1)
    if name == "lof":
        from pyod.models.lof import LOF

        return LOF(n_neighbors=min(20, k_max))
    if name == "knn":
        from pyod.models.knn import KNN

        return KNN(n_neighbors=min(5, k_max))
    raise ConfigError(f"no outside baseline {name!r}; there are {', '.join(OUTSIDE + OWN)}")


def upper_tail_scores(flat: np.ndarray, healthy: np.ndarray) -> np.ndarray:
    """ECOD's outlier score (the sum over dimensions of -log of a value's empirical tail probability) with the
    upper tail only, P(healthy >= x): a window scores high only where its values rose above the healthy ones. A
    healthy window is counted among the healthy values, a later one is scored as if added to them (as PyOD's
    ECOD scores its training data and one new window)."""
    x = np.asarray(flat, dtype=np.float64)
    ref = np.sort(x[healthy], axis=0)
    n = len(ref)
    at_least = np.column_stack([n - np.searchsorted(ref[:, j], x[:, j], side="left") for j in range(x.shape[1])])
    p = np.where(healthy[:, None], at_least / n, (at_least + 1) / (n + 1))
    return -np.log(p).sum(axis=1)


def outside_scores(name: str, flat: np.ndarray, healthy: np.ndarray) -> np.ndarray:
    """Scores (n,) of one PyOD detector on every window ``flat`` (n, D), fitted on the ``healthy`` ones (see the
    module docstring for how the healthy and the later windows are scored)."""
    if name == "ecod_upper":
        return upper_tail_scores(flat, np.asarray(healthy, dtype=bool))
    det = make_detector(name, int(healthy.sum()))
    x = np.asarray(flat, dtype=np.float64)
    det.fit(x[healthy])
    out = np.empty(len(x), dtype=np.float64)
    out[healthy] = np.asarray(det.decision_scores_, dtype=np.float64)
    rest = np.flatnonzero(~healthy)
    if rest.size:
        if name in ONE_AT_A_TIME:
            out[rest] = [float(det.decision_function(x[i: i + 1])[0]) for i in rest]
        else:
            out[rest] = det.decision_function(x[rest])
    return out


def outside_baselines(names: Sequence[str], flat: np.ndarray, times: np.ndarray, healthy: np.ndarray,
                      tcfg: ThresholdRule, rule: AlarmRule) -> dict[str, tuple[Detection, dict[str, Any]]]:
    """``pyod_<name>`` (``<name>`` for ``OWN``) -> (detection, report extras) for each named detector on the
    windows ``flat``."""
    if not names:
        return {}
    version = str(getattr(require_pyod(), "__version__", "?")) if set(names) - set(OWN) else ""
    out: dict[str, tuple[Detection, dict[str, Any]]] = {}
    for name in names:
        s = outside_scores(name, flat, healthy)
        library = "numpy (ECOD's statistic, upper tails)" if name in OWN else f"pyod {version}"
        extra: dict[str, Any] = {"library": library, "fitted_windows": int(healthy.sum())}
        low = float(s[healthy].min())
        if low <= 0:
            # A log-density score (HBOS) can be <= 0; the alarm level is score / threshold, so the scores are
            # read as their excess over the lowest healthy one (the margin then applies to the healthy spread).
            s = s - low + 1e-12
            extra["score_offset"] = low
        thr = max(fit_threshold(s[healthy], tcfg), 1e-12)
        out[name if name in OWN else f"pyod_{name}"] = (single_detection(times, run_alarms(s, thr, rule), thr), extra)
    return out
