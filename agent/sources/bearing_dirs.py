"""Read the published bearing test-rig directories, one text file per snapshot, into a ``Recording``.

- IMS (``ims_dir``): tab-separated ASCII, one row per sample, one column per channel (4 or 8), each file
  named by the time it was taken (``YYYY.MM.DD.HH.MM.SS``, read as UTC).
- PRONOSTIA/FEMTO (``femto_dir``): ``acc_NNNNN.csv``, one file per snapshot (every 10 s), rows of hour,
  minute, second, microsecond, horizontal and vertical acceleration (g), separated by ``,`` or ``;``;
  ``temp_NNNNN.csv`` files beside them are skipped. Time is the file number x 10 s (the row times are the
  test bench's clock, which wraps at midnight and is corrupt in a few published files).
- XJTU-SY (``xjtu_dir``): ``N.csv``, one file per snapshot (every minute, 32,768 samples at 25.6 kHz), a header
  naming the two columns (``Horizontal_vibration_signals,Vertical_vibration_signals``) then one row per sample.
  Time is (the file number - the first's) x 60 s; the channels are named by the header, as published.

Each checks every row of every file: a short row, a word where a number belongs, a foreign file name or two
files for one moment stop the load with the file, the line and what was expected. ``loaders`` recognises
the directories and calls these.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..detect.recording import Recording
from ..errors import DataFormatError

IMS_NAME = re.compile(r"^(\d{4})\.(\d{2})\.(\d{2})\.(\d{2})\.(\d{2})\.(\d{2})$")
IMS_FS_HZ = 20000.0
FEMTO_NAME = re.compile(r"^acc_(\d+)\.csv$")
FEMTO_INTERVAL_S = 10.0
FEMTO_FS_HZ = 25600.0
XJTU_NAME = re.compile(r"^(\d+)\.csv$")
XJTU_INTERVAL_S = 60.0
XJTU_FS_HZ = 25600.0


def ims_time(name: str) -> float | None:
    """Seconds since the epoch (UTC) of an IMS file name, or None if the name is not one."""
    m = IMS_NAME.match(name)
    if not m:
        return None
    y, mo, d, h, mi, s = (int(g) for g in m.groups())
    try:
        return datetime(y, mo, d, h, mi, s, tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def read_ims_file(path: Path, n_channels: int | None = None, n_rows: int | None = None) -> np.ndarray:
    """One IMS snapshot file -> (samples, channels) float32, checking every row."""
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError as e:
        raise DataFormatError(path, f"not ASCII text (byte {e.start})", expected="tab-separated numbers") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataFormatError(path, "empty file", expected="one row of tab-separated numbers per sample")
    width = n_channels if n_channels is not None else len(lines[0].split("\t"))
    if width not in (4, 8):
        raise DataFormatError(path, f"{width} columns on line 1", where="line 1", expected="4 or 8 channels")
    try:
        arr = np.array([ln.split("\t") for ln in lines], dtype=np.float64)
    except ValueError:
        arr = None  # ragged or non-numeric: find the first bad line below
    if arr is None or arr.ndim != 2 or arr.shape[1] != width:
        for i, ln in enumerate(lines, start=1):
            cells = ln.split("\t")
            if len(cells) != width:
                raise DataFormatError(path, f"{len(cells)} columns", where=f"line {i}",
                                      expected=f"{width} tab-separated numbers, as on line 1")
            for j, c in enumerate(cells, start=1):
                try:
                    float(c)
                except ValueError:
                    raise DataFormatError(path, f"{c.strip()!r} is not a number", where=f"line {i}, column {j}",
                                          expected="a decimal number") from None
        raise DataFormatError(path, "could not be read as a table of numbers")  # pragma: no cover
    bad = ~np.isfinite(arr)
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise DataFormatError(path, f"{lines[i].split(chr(9))[j].strip()!r} is not a finite number",
                              where=f"line {i + 1}, column {j + 1}", expected="a finite decimal number")
    if n_rows is not None and len(arr) != n_rows:
        raise DataFormatError(path, f"{len(arr)} rows", expected=f"{n_rows} rows like the first snapshot file")
    return arr.astype(np.float32)


def load_ims_dir(path: str | Path, fs_hz: float = IMS_FS_HZ) -> Recording:
    """An IMS test directory: every file named by time is one snapshot; other names are an error."""
    d = Path(path)
    entries = sorted(p for p in d.iterdir() if not p.name.startswith("."))
    if not entries:
        raise DataFormatError(d, "empty directory", expected="IMS snapshot files named YYYY.MM.DD.HH.MM.SS")
    timed: list[tuple[float, Path]] = []
    for p in entries:
        t = ims_time(p.name)
        if t is None or not p.is_file():
            raise DataFormatError(d, f"{p.name!r} is not an IMS snapshot file name",
                                  expected="only files named YYYY.MM.DD.HH.MM.SS (move other files elsewhere)")
        timed.append((t, p))
    timed.sort(key=lambda tp: tp[0])  # the names sort by time, but say so rather than trust a listing order
    for (t0, p0), (t1, p1) in zip(timed, timed[1:], strict=False):
        if t1 == t0:
            raise DataFormatError(d, f"{p0.name} and {p1.name} are the same moment", expected="one file per time")
    first = read_ims_file(timed[0][1])
    data = np.empty((len(timed), *first.shape), dtype=np.float32)
    data[0] = first
    for i, (_, p) in enumerate(timed[1:], start=1):
        data[i] = read_ims_file(p, n_channels=first.shape[1], n_rows=first.shape[0])
    channels = tuple(f"bearing{i + 1}" for i in range(first.shape[1])) if first.shape[1] == 4 else tuple(
        f"bearing{i // 2 + 1}_{'xy'[i % 2]}" for i in range(first.shape[1])  # test 1: two directions a bearing
    )
    times = np.array([t for t, _ in timed], dtype=np.float64)
    return Recording(data, times, float(fs_hz), channels, str(d))


def read_femto_file(path: Path, n_rows: int | None = None) -> np.ndarray:
    """One FEMTO ``acc_NNNNN.csv`` -> (samples, 2) float32 [horizontal, vertical], checking every row."""
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError as e:
        raise DataFormatError(path, f"not ASCII text (byte {e.start})",
                              expected="comma or ';' separated numbers") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataFormatError(path, "empty file", expected="one row per sample: hour, minute, second, "
                              "microsecond, horizontal acc, vertical acc")
    sep = ";" if ";" in lines[0] else ","
    expected = f"6 '{sep}'-separated numbers: hour, minute, second, microsecond, horizontal acc, vertical acc"
    arr = rows(path, lines, sep, 6, expected)
    if n_rows is not None and len(arr) != n_rows:
        raise DataFormatError(path, f"{len(arr)} rows", expected=f"{n_rows} rows like the first acc_ file")
    return arr[:, 4:6].astype(np.float32)


def load_femto_dir(path: str | Path, fs_hz: float = FEMTO_FS_HZ) -> Recording:
    """A PRONOSTIA/FEMTO bearing directory (see the module docstring); any other file name is an error."""
    d = Path(path)
    numbered: list[tuple[int, Path]] = []
    for p in sorted(q for q in d.iterdir() if not q.name.startswith(".")):
        m = FEMTO_NAME.match(p.name)
        if m and p.is_file():
            numbered.append((int(m.group(1)), p))
        elif not re.match(r"^temp_\d+\.csv$", p.name):
            raise DataFormatError(d, f"{p.name!r} is not a FEMTO snapshot file name",
                                  expected="only acc_NNNNN.csv (and temp_NNNNN.csv, skipped)")
    if not numbered:
        raise DataFormatError(d, "no acc_NNNNN.csv files", expected="a FEMTO/PRONOSTIA bearing directory")
    numbered.sort(key=lambda np_: np_[0])
    for (n0, p0), (n1, p1) in zip(numbered, numbered[1:], strict=False):
        if n1 == n0:
            raise DataFormatError(d, f"{p0.name} and {p1.name} are the same snapshot number",
                                  expected="one file per number")
    first = read_femto_file(numbered[0][1])
    data = np.empty((len(numbered), *first.shape), dtype=np.float32)
    data[0] = first
    for i, (_, p) in enumerate(numbered[1:], start=1):
        data[i] = read_femto_file(p, n_rows=first.shape[0])
    times = np.array([(n - numbered[0][0]) * FEMTO_INTERVAL_S for n, _ in numbered], dtype=np.float64)
    return Recording(data, times, float(fs_hz), ("horiz_acc_g", "vert_acc_g"), str(d), relative_time=True)


def rows(path: Path, lines: list[str], sep: str, width: int, expected: str, first_line: int = 1) -> np.ndarray:
    """``lines`` as a (rows, ``width``) float64 table of finite numbers; the first bad cell is an error naming its
    line (counted from ``first_line``) and column."""
    try:
        arr = np.array([ln.split(sep) for ln in lines], dtype=np.float64)
    except ValueError:
        arr = None
    if arr is not None and arr.ndim == 2 and arr.shape[1] == width and np.all(np.isfinite(arr)):
        return arr
    for i, ln in enumerate(lines, start=first_line):
        cells = ln.split(sep)
        if len(cells) != width:
            raise DataFormatError(path, f"{len(cells)} columns", where=f"line {i}", expected=expected)
        for j, c in enumerate(cells, start=1):
            try:
                ok = np.isfinite(float(c))
            except ValueError:
                ok = False
            if not ok:
                raise DataFormatError(path, f"{c.strip()!r} is not a finite number",
                                      where=f"line {i}, column {j}", expected=expected)
    raise DataFormatError(path, "could not be read as a table of numbers")  # pragma: no cover


def read_xjtu_file(path: Path, header: str | None = None, n_rows: int | None = None) -> tuple[str, np.ndarray]:
    """One XJTU-SY ``N.csv`` -> (its header line, (samples, 2) float32), checking every row."""
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except UnicodeDecodeError as e:
        raise DataFormatError(path, f"not ASCII text (byte {e.start})", expected="comma-separated numbers") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = lines[0].strip() if lines else ""
    if len(lines) < 2 or len(names.split(",")) != 2 or any(c[:1].isdigit() or c[:1] == "-" for c in names.split(",")):
        raise DataFormatError(path, "no header naming two columns, or no samples", where="line 1",
                              expected="Horizontal_vibration_signals,Vertical_vibration_signals, then one row a sample")
    if header is not None and names != header:
        raise DataFormatError(path, f"header {names!r}", where="line 1", expected=f"{header!r} like the first file")
    arr = rows(path, lines[1:], ",", 2, "2 comma-separated numbers: horizontal, vertical", first_line=2)
    if n_rows is not None and len(arr) != n_rows:
        raise DataFormatError(path, f"{len(arr)} rows", expected=f"{n_rows} rows like the first snapshot file")
    return names, arr.astype(np.float32)


def load_xjtu_dir(path: str | Path, fs_hz: float = XJTU_FS_HZ) -> Recording:
    """An XJTU-SY bearing directory (see the module docstring); any other file name is an error."""
    d = Path(path)
    numbered: list[tuple[int, Path]] = []
    for p in sorted(q for q in d.iterdir() if not q.name.startswith(".")):
        m = XJTU_NAME.match(p.name)
        if not (m and p.is_file()):
            raise DataFormatError(d, f"{p.name!r} is not an XJTU-SY snapshot file name", expected="only N.csv files")
        numbered.append((int(m.group(1)), p))
    numbered.sort(key=lambda np_: np_[0])
    for (n0, p0), (n1, p1) in zip(numbered, numbered[1:], strict=False):
        if n1 == n0:
            raise DataFormatError(d, f"{p0.name} and {p1.name} are the same snapshot number",
                                  expected="one file per number")
    header, first = read_xjtu_file(numbered[0][1])
    data = np.empty((len(numbered), *first.shape), dtype=np.float32)
    data[0] = first
    for i, (_, p) in enumerate(numbered[1:], start=1):
        data[i] = read_xjtu_file(p, header, first.shape[0])[1]
    times = np.array([(n - numbered[0][0]) * XJTU_INTERVAL_S for n, _ in numbered], dtype=np.float64)
    channels = tuple(c.strip() for c in header.split(","))
    return Recording(data, times, float(fs_hz), channels, str(d), relative_time=True)
