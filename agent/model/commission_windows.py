"""The commissioning's windows file, ``calibration.windows.jsonl``: its format, written and read back.

A header (the format, the column layout of every line after it and the stride its windows were kept with)
then one JSON array per kept window: what ``healthy.fit`` needs of it, float64 exact, so a resumed
commissioning fits the same numbers as one never stopped. Lines are appended and every rewrite is a rename,
so only the last line can be damaged (a write torn by a power cut); reading drops it. Who writes the file and
when is agent/model/commission_store.py's business.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..detect.detector import Detector
from ..detect.healthy import Evidence

WINDOWS_FORMAT = "vibrawatch.calibration-windows/1"
WINDOWS_SUFFIX = ".windows.jsonl"  # calibration.windows.jsonl: the commissioning's windows, one line each


def windows_path(state_file: Path) -> Path:
    """``calibration.windows.jsonl`` beside the state file ``calibration.json``."""
    return state_file.with_name(state_file.stem + WINDOWS_SUFFIX)


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


def current_layout(path: Path, shapes: Mapping[str, tuple[int, ...]]) -> bool:
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
