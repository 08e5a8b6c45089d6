"""Read vibration data from disk into a ``Recording`` (raw samples) or a ``FeatureTable`` (per-snapshot rows).

Formats, recognised from the path (``detect_format``):
- ``ims_dir``, ``femto_dir`` and ``xjtu_dir``: an IMS, a PRONOSTIA/FEMTO or an XJTU-SY test-rig directory, one
  text file per snapshot, read by ``bearing_dirs`` (which describes them).
- ``cwru_mat``: a Case Western Reserve ``.mat`` file, recognised here and read on the workstation only
  (``vibrawatch.train.cwru``, scipy): ``load`` here refuses it with that said.
- ``npz``: a snapshot archive with ``data`` (snapshots, samples, channels), ``timestamps``, ``fs_hz`` and
  ``channels``; loaded with ``allow_pickle=False``. Timestamps before 1980 are taken as seconds since the
  start of the run (FEMTO, simulators).
- ``csv``: a feature table: a header, then one row per snapshot; one column is the time (ISO date-time or
  seconds since the start), the others are numbers. The time column is the one named by ``time_column``, else
  the one whose header is timestamp, time, t or datetime (any case), else the first.
- ``json``: a Lorenz demo stream: a JSON list of ``{"x", "y", "z"}`` records, or one such object per line.

Nothing is guessed or silently coerced: a short row, a word where a number belongs, a NaN, two files for
one moment all stop the load with the file, the line or array, and what was expected.
"""

from __future__ import annotations

import csv
import json
import zipfile
import zlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..detect.recording import FeatureTable, Recording
from ..errors import DataFormatError
from .bearing_dirs import FEMTO_NAME, XJTU_NAME, load_femto_dir, load_ims_dir, load_xjtu_dir

RELATIVE_BEFORE = 315532800.0  # 1980-01-01: earlier timestamps count from the start of the run


def detect_format(path: str | Path) -> str:
    """The format of ``path`` from what it is: a directory, or the file's extension."""
    p = Path(path)
    if p.is_dir():
        names = [q.name for q in p.iterdir() if not q.name.startswith(".")]
        if any(FEMTO_NAME.match(n) for n in names):
            return "femto_dir"
        return "xjtu_dir" if names and all(XJTU_NAME.match(n) for n in names) else "ims_dir"
    if not p.exists():
        raise DataFormatError(p, "no such file or directory")
    ext = p.suffix.lower()
    if ext == ".npz":
        return "npz"
    if ext == ".csv":
        return "csv"
    if ext in (".json", ".jsonl"):
        return "json"
    if ext == ".mat":
        return "cwru_mat"
    raise DataFormatError(
        p, f"unknown data format {ext or '(no extension)'!r}",
        expected="an IMS snapshot directory, a FEMTO acc_NNNNN.csv or XJTU-SY N.csv directory, a .npz snapshot "
        "archive, a .csv feature table, a .json stream or a Case Western Reserve .mat file",
    )


def load(path: str | Path, time_column: str | None = None) -> Recording | FeatureTable:
    """Load any supported format (see the module docstring); ``time_column`` names a feature table's time."""
    fmt = detect_format(path)
    if time_column is not None and fmt != "csv":
        raise DataFormatError(Path(path), f"a time column ({time_column!r}) is named, but this is not a feature table",
                              expected="a .csv feature table")
    if fmt == "ims_dir":
        return load_ims_dir(path)
    if fmt == "femto_dir":
        return load_femto_dir(path)
    if fmt == "xjtu_dir":
        return load_xjtu_dir(path)
    if fmt == "cwru_mat":
        raise DataFormatError(Path(path), "a MATLAB file is read on the workstation (vibrawatch train, evaluate), "
                              "not by the gateway", expected="an .npz archive or the published format")
    if fmt == "npz":
        return load_snapshot_npz(path)
    if fmt == "csv":
        return load_feature_csv(path, time_column)
    return load_lorenz_json(path)


def load_snapshot_npz(path: str | Path) -> Recording:
    """A snapshot archive (see the module docstring); every array is checked before it is trusted."""
    p = Path(path)
    try:
        z = np.load(p, allow_pickle=False)
    except ValueError as e:
        raise DataFormatError(p, f"cannot be read without pickle ({e})", expected="plain numeric arrays") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:  # not a zip at all, or cut short
        raise DataFormatError(p, f"not a readable .npz archive ({e})") from None
    with z:
        missing = [k for k in ("data", "timestamps", "fs_hz", "channels") if k not in z.files]
        if missing:
            raise DataFormatError(p, f"missing array(s) {missing}; it has {sorted(z.files)}",
                                  expected="data (snapshots, samples, channels), timestamps, fs_hz, channels")
        try:  # arrays are read lazily: an object array fails here, not at np.load
            data = z["data"]
            times = z["timestamps"]
            fs = z["fs_hz"]
            channels = z["channels"]
            labels = z["labels"] if "labels" in z.files else None
        except ValueError as e:
            raise DataFormatError(p, f"cannot be read without pickle ({e})", expected="plain numeric arrays") from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # a member cut short or damaged
            raise DataFormatError(p, f"not a readable .npz archive ({e})") from None
    if data.ndim != 3 or not np.issubdtype(data.dtype, np.number):
        raise DataFormatError(p, f"array 'data' is {data.dtype} {data.shape}", where="array 'data'",
                              expected="numbers shaped (snapshots, samples, channels)")
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise DataFormatError(p, f"array 'data' is empty {data.shape}", where="array 'data'")
    if times.shape != (data.shape[0],) or not np.issubdtype(times.dtype, np.number):
        raise DataFormatError(p, f"array 'timestamps' is {times.dtype} {times.shape}", where="array 'timestamps'",
                              expected=f"one number per snapshot, shape ({data.shape[0]},)")
    times = times.astype(np.float64)
    if not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0):
        i = int(np.flatnonzero(~np.isfinite(times) | np.r_[False, np.diff(times) <= 0])[0])
        raise DataFormatError(p, f"timestamp {times[i]!r} does not follow {times[i - 1] if i else None!r}",
                              where=f"array 'timestamps', index {i}", expected="strictly increasing times")
    if fs.size != 1 or not np.issubdtype(fs.dtype, np.number) or not float(fs.reshape(-1)[0]) > 0:
        raise DataFormatError(p, f"array 'fs_hz' is {fs!r}", where="array 'fs_hz'", expected="one positive number")
    if channels.shape != (data.shape[2],) or channels.dtype.kind not in "US":
        raise DataFormatError(p, f"array 'channels' is {channels.dtype} {channels.shape}", where="array 'channels'",
                              expected=f"{data.shape[2]} channel names")
    finite = np.isfinite(data).all(axis=(1, 2))
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        j, c = (int(v) for v in np.argwhere(~np.isfinite(data[i]))[0])
        raise DataFormatError(p, f"non-finite value {data[i, j, c]!r}", where=f"array 'data'[{i}, {j}, {c}]",
                              expected="finite samples")
    if labels is not None and labels.shape != (data.shape[0],):
        raise DataFormatError(p, f"array 'labels' has shape {labels.shape}", where="array 'labels'",
                              expected=f"({data.shape[0]},), 0 healthy / 1 faulty")
    return Recording(
        data.astype(np.float32, copy=False),
        times,
        float(fs.reshape(-1)[0]),
        tuple(str(c) for c in channels),
        str(p),
        relative_time=bool(times[0] < RELATIVE_BEFORE),
        labels=None if labels is None else labels.astype(np.int64),
    )


def save_snapshot_npz(rec: Recording, path: str | Path) -> None:
    """Write a Recording in the snapshot archive format ``load_snapshot_npz`` reads."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "data": rec.data.astype(np.float32, copy=False),
        "timestamps": rec.timestamps,
        "fs_hz": np.float64(rec.fs_hz),
        "channels": np.array(rec.channels),
    }
    if rec.labels is not None:
        arrays["labels"] = rec.labels
    np.savez_compressed(p, **arrays)


def _parse_row_time(text: str) -> tuple[float, bool] | None:
    """(seconds, relative) of a time cell: ISO date-time (UTC) or a number of seconds since the start."""
    s = text.strip()
    try:
        return float(s), True
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(s.replace("/", "-"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp(), False


TIME_NAMES = ("timestamp", "time", "t", "datetime")  # headers taken as the time column without being named


def time_column_index(p: Path, header: list[str], time_column: str | None) -> int:
    """Which column of a feature table is its time: ``time_column``, else the one header in ``TIME_NAMES``,
    else the first."""
    lower = [h.lower() for h in header]
    if time_column is not None:
        if time_column.strip().lower() not in lower:
            raise DataFormatError(p, f"no column named {time_column!r} for the time", where="line 1",
                                  expected="one of the header's columns: " + ", ".join(repr(h) for h in header))
        return lower.index(time_column.strip().lower())
    found = [j for j, h in enumerate(lower) if h in TIME_NAMES]
    if len(found) > 1:
        raise DataFormatError(p, f"{len(found)} columns look like the time ({', '.join(header[j] for j in found)})",
                              where="line 1", expected="one time column; name it (evaluate --time-column NAME)")
    return found[0] if found else 0


def load_feature_csv(path: str | Path, time_column: str | None = None) -> FeatureTable:
    """A per-snapshot feature table: time in one column (``time_column_index``), one number per other column."""
    p = Path(path)
    with p.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise DataFormatError(p, "empty file", expected="a header row, then one row per snapshot")
    header = [h.strip() for h in rows[0]]
    if len(header) < 2:
        raise DataFormatError(p, f"{len(header)} column(s) in the header", where="line 1",
                              expected="a time column and at least one feature column")
    tc = time_column_index(p, header, time_column)
    feat = [j for j in range(len(header)) if j != tc]  # 0-based positions of the feature columns
    columns = tuple(header[j] or f"column{j + 1}" for j in feat)
    body = [(i, r) for i, r in enumerate(rows[1:], start=2) if any(c.strip() for c in r)]
    if not body:
        raise DataFormatError(p, "no data rows after the header", expected="one row per snapshot")
    times = np.empty(len(body))
    values = np.empty((len(body), len(columns)))
    relative: bool | None = None
    for k, (line, r) in enumerate(body):
        if len(r) != len(header):
            raise DataFormatError(p, f"{len(r)} columns", where=f"line {line}",
                                  expected=f"{len(header)} like the header")
        t = _parse_row_time(r[tc])
        if t is None:
            raise DataFormatError(p, f"time {r[tc]!r} is not a date-time nor seconds",
                                  where=f"line {line}, column {tc + 1}",
                                  expected="YYYY-MM-DD HH:MM:SS or a number of seconds")
        if relative is None:
            relative = t[1]
        elif relative != t[1]:
            raise DataFormatError(p, f"time {r[tc]!r} mixes dates and seconds", where=f"line {line}, column {tc + 1}")
        times[k] = t[0]
        for m, j in enumerate(feat):
            cell = r[j]
            try:
                v = float(cell)
            except ValueError:
                raise DataFormatError(p, f"{cell!r} is not a number", where=f"line {line}, column {j + 1}",
                                      expected=f"a number for {header[j]!r}") from None
            if not np.isfinite(v):
                raise DataFormatError(p, f"{cell!r} is not a finite number", where=f"line {line}, column {j + 1}",
                                      expected=f"a finite number for {header[j]!r}")
            values[k, m] = v
    bad = np.flatnonzero(np.diff(times) <= 0)
    if bad.size:
        i = int(bad[0]) + 1
        raise DataFormatError(p, f"time {body[i][1][tc]!r} does not follow {body[i - 1][1][tc]!r}",
                              where=f"line {body[i][0]}", expected="rows in strictly increasing time")
    return FeatureTable(values, times, columns, str(p), relative_time=bool(relative))


def load_lorenz_json(path: str | Path, fs_hz: float = 1.0) -> Recording:
    """The IBM demo's stream: a list of {x, y, z} records (or one per line) -> one snapshot, 3 channels."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    records: list[tuple[int, object]]
    try:
        doc = json.loads(text)
        if not isinstance(doc, list):
            raise DataFormatError(p, f"top level is {type(doc).__name__}", expected="a list of {x, y, z} records")
        records = [(i + 1, r) for i, r in enumerate(doc)]
        where = "record"
    except json.JSONDecodeError:
        records = []
        for i, ln in enumerate(text.splitlines(), start=1):
            if not ln.strip():
                continue
            try:
                records.append((i, json.loads(ln)))
            except json.JSONDecodeError as e:
                raise DataFormatError(
                    p, f"not JSON ({e.msg})", where=f"line {i}", expected='{"x":..,"y":..,"z":..}'
                ) from None
        where = "line"
    if not records:
        raise DataFormatError(p, "no records", expected="a list of {x, y, z} records")
    out = np.empty((len(records), 3))
    for k, (i, r) in enumerate(records):
        if not isinstance(r, dict) or set(r) != {"x", "y", "z"}:
            raise DataFormatError(p, f"{str(r)[:60]!r}", where=f"{where} {i}", expected="exactly the keys x, y, z")
        for j, key in enumerate("xyz"):
            v = r[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise DataFormatError(p, f"{key} = {v!r}", where=f"{where} {i}", expected="a finite number")
            out[k, j] = v
    return Recording(out[None].astype(np.float32), np.zeros(1), float(fs_hz), ("x", "y", "z"), str(p),
                     relative_time=True)
