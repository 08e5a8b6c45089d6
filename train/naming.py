"""How a data set is named among a run directory's outputs (``evaluation_<stem>.json``, ``scores_<stem>.png``).

Its own module, below both evaluate and plots, so the plots name their files as the evaluation does without
importing it."""

from __future__ import annotations

from pathlib import Path


def data_stem(path: str | Path) -> str:
    """A file-name-safe name for a data set, used for the evaluation's JSON and plots in the run directory."""
    return Path(str(path).rstrip("/")).stem or "data"
