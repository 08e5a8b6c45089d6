"""What scoring one window gives: the result the pipeline hands to commissioning, deploys and the publisher.

They live here, below every consumer, so that the link (topics), the model's life (commission, deploy) and
the service read one type without importing the pipeline that makes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .decide import Decision
from .events import Verdict
from .healthy import Evidence

if TYPE_CHECKING:
    from .calibrate import Calibration


@dataclass(frozen=True)
class Scored:
    """One window's result."""

    t: float  # time of the window's last frame (as `vibrawatch evaluate` reports windows)
    score: float
    level: float
    contributions: np.ndarray  # (C,)
    decision: Decision
    since: float | None  # when the active alarm was raised
    verdict: Verdict | None = None  # the combined detector's (agent/detect/events.py): channels, transients, ...
    diagnosis: dict[int, dict[str, Any]] = field(default_factory=dict)  # channel raised now -> its diagnosis
    diagnosed: dict[int, dict[str, Any]] = field(default_factory=dict)  # active channel -> defect now standing out
    threshold: float = 0.0  # the score threshold of the detector that decided it
    source: str = "bundle"  # where its thresholds come from: bundle, commissioning, commissioned
    evidence: Evidence | None = None  # what commissioning keeps of it (agent/detect/healthy.py)
    calibration: Calibration | None = None  # the commissioning's outcome, on the window that completed it


@dataclass(frozen=True)
class SensorStatus:
    """The sensor went bad (``reason``) or came back (``reason`` None)."""

    t: float
    reason: str | None
