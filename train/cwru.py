"""Case Western Reserve bearing-data ``.mat`` files, read on the workstation only (scipy never reaches the
gateway): the drive-end, fan-end and base accelerometers (``X<nnn>_DE_time``, ``_FE_time``, ``_BA_time``) as
one continuous snapshot, and the motor speed (``X<nnn>RPM``) when present. The sample rate is not in the
file: 12 kHz unless told (``[features] fs_hz = 48000`` for the 48 kHz sets).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import scipy.io

from vibrawatch.agent.detect.recording import FeatureTable, Recording
from vibrawatch.agent.errors import DataFormatError
from vibrawatch.agent.sources import loaders

CWRU_FS_HZ = 12000.0
CWRU_SIGNALS = (("DE", "drive_end"), ("FE", "fan_end"), ("BA", "base"))


def load(path: str | Path) -> Recording | FeatureTable:
    """The agent's loaders (``vibrawatch.agent.sources.loaders.load``) plus the .mat files only a workstation reads."""
    return load_cwru_mat(path) if loaders.detect_format(path) == "cwru_mat" else loaders.load(path)


def load_cwru_mat(path: str | Path, fs_hz: float = CWRU_FS_HZ) -> Recording:
    """A Case Western Reserve ``.mat`` file (see the module docstring) -> one snapshot; ``rpm`` when present.

    Some published files hold a second record's variables too (``X098_*`` inside ``99.mat``): the record
    whose number is the file's own is taken; with no such number, several records are an error.
    """
    p = Path(path)
    try:
        mat = scipy.io.loadmat(p)
    except Exception as e:  # scipy raises ValueError, TypeError or its own MatReadError for a damaged file
        raise DataFormatError(p, f"not a readable MATLAB file ({str(e)[:80]})", expected="a CWRU .mat file") from None
    sig = re.compile(r"^X(\d+)_(DE|FE|BA)_time$")
    records = sorted({m.group(1) for k in mat if (m := sig.match(k))})
    if not records:
        names = sorted(k for k in mat if not k.startswith("__"))
        raise DataFormatError(p, f"no accelerometer variables; it has {names[:8]}",
                              expected="X<nnn>_DE_time (and _FE_time, _BA_time)")
    rec = records[0]
    if len(records) > 1:
        own = [r for r in records if p.stem.isdigit() and int(r) == int(p.stem)]
        if not own:
            raise DataFormatError(p, f"several records {['X' + r for r in records]} and none is the file's number",
                                  expected="one record, or a file named by its record number (e.g. 99.mat)")
        rec = own[0]
    columns, names = [], []
    for key, name in CWRU_SIGNALS:
        var = f"X{rec}_{key}_time"
        if var not in mat:
            continue
        a = np.asarray(mat[var])
        if a.ndim != 2 or 1 not in a.shape or not np.issubdtype(a.dtype, np.number):
            raise DataFormatError(p, f"{var} is {a.dtype} {a.shape}", where=f"variable {var}",
                                  expected="one column of numbers")
        a = a.reshape(-1).astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(a))
        if bad.size:
            raise DataFormatError(p, f"non-finite value {a[bad[0]]!r}", where=f"variable {var}, row {bad[0] + 1}",
                                  expected="finite samples")
        if columns and len(a) != len(columns[0]):
            raise DataFormatError(p, f"{var} has {len(a)} samples, {names[0]} has {len(columns[0])}",
                                  where=f"variable {var}", expected="equally long signals")
        columns.append(a)
        names.append(name)
    rpm = None
    if f"X{rec}RPM" in mat:
        r = np.asarray(mat[f"X{rec}RPM"])
        if r.size != 1 or not np.issubdtype(r.dtype, np.number) or not float(r.reshape(-1)[0]) > 0:
            raise DataFormatError(p, f"X{rec}RPM is {r.reshape(-1)[:3]!r}", where=f"variable X{rec}RPM",
                                  expected="one positive number")
        rpm = float(r.reshape(-1)[0])
    data = np.stack(columns, axis=1)[None].astype(np.float32)
    return Recording(data, np.zeros(1), float(fs_hz), tuple(names), str(p), relative_time=True, rpm=rpm)
