"""From loaded data to scaled training windows, with the healthy period named by time or share of the run."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vibrawatch.agent.detect.features import FeatureSpec, default_spec, extract, parse_features
from vibrawatch.agent.detect.frames import iter_frames
from vibrawatch.agent.detect.recording import FeatureTable, Recording
from vibrawatch.agent.detect.window import sliding_windows, window_ends
from vibrawatch.agent.errors import ConfigError
from vibrawatch.agent.sources import loaders

from .config import TrainConfig
from .cwru import load


@dataclass(frozen=True)
class FrameFeatures:
    """One feature row per frame, with its time and the snapshot it came from."""

    values: np.ndarray  # (n_frames, F) float64
    times: np.ndarray  # (n_frames,) seconds
    snapshot: np.ndarray  # (n_frames,)
    spec: FeatureSpec
    relative_time: bool


@dataclass(frozen=True)
class Windows:
    """Unscaled windows over the whole run and the time of each window's last frame."""

    x: np.ndarray  # (n_windows, T, F)
    end_times: np.ndarray  # (n_windows,)
    end_frames: np.ndarray  # (n_windows,) index of the last frame


def load_data(path: str | Path, time_column: str | None = None) -> Recording | FeatureTable:
    """The data for `train` and `evaluate` alike; ``time_column`` (``--time-column``) names a feature table's time
    column, else the loader finds it (timestamp, time, t or datetime, else the first): one rule for both."""
    return load(path) if time_column is None else loaders.load(path, time_column)


def build_spec(data: Recording | FeatureTable, cfg: TrainConfig) -> FeatureSpec:
    """The feature spec for this data: the config where it speaks, the data's own shape otherwise."""
    if isinstance(data, FeatureTable):
        if cfg.features.list is not None or cfg.features.frame_length is not None:
            raise ConfigError(
                f"{cfg.source}: [features] list/frame_length apply to raw samples, but {data.source} is a "
                "feature table (its columns are the features); remove them"
            )
        return FeatureSpec(fs_hz=1.0, frame_length=1, channels=data.columns, features=(), input="table")
    fs = cfg.features.fs_hz if cfg.features.fs_hz is not None else data.fs_hz
    base = default_spec(fs, data.data.shape[1], data.channels)
    frame = cfg.features.frame_length if cfg.features.frame_length is not None else base.frame_length
    if frame > data.data.shape[1]:
        raise ConfigError(
            f"{cfg.source}: [features] frame_length {frame} is longer than the snapshots of {data.source} "
            f"({data.data.shape[1]} samples)"
        )
    feats = parse_features(cfg.features.list) if cfg.features.list is not None else None
    if feats is None:
        feats = default_spec(fs, frame, data.channels).features
    return FeatureSpec(fs_hz=float(fs), frame_length=int(frame), channels=data.channels, features=feats)


def featurize(data: Recording | FeatureTable, spec: FeatureSpec, progress: bool = True) -> FrameFeatures:
    """Features of every frame of the run (the same ``agent.features.extract`` the gateway runs)."""
    if isinstance(data, FeatureTable):
        n = len(data.values)
        return FrameFeatures(data.values.astype(np.float64), data.timestamps, np.arange(n), spec, data.relative_time)
    vals, times, snaps = [], [], []
    batches = iter_frames(data, spec.frame_length, batch_snapshots=16)
    total = -(-data.n_snapshots // 16)
    for b in tqdm(batches, total=total, desc="features", unit="batch", disable=not progress, leave=False):
        vals.append(extract(b.frames, spec))
        times.append(b.times)
        snaps.append(b.snapshot)
    return FrameFeatures(np.concatenate(vals), np.concatenate(times), np.concatenate(snaps), spec, data.relative_time)


def make_windows(ff: FrameFeatures, length: int, hop: int) -> Windows:
    if len(ff.values) < length:
        raise ConfigError(f"only {len(ff.values)} frames, fewer than the window length T={length}")
    ends = window_ends(len(ff.values), length, hop)
    return Windows(sliding_windows(ff.values, length, hop), ff.times[ends], ends)


_REL = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(s|m|h|d)?\s*$")


def parse_time(text: str, relative: bool) -> float:
    """A point in the run: ISO date-time (UTC) for dated data, seconds or 90m/2.5h/3d for relative time."""
    m = _REL.match(text)
    if m and (relative or m.group(2)):
        mult = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}[m.group(2)]
        if not relative:
            raise ConfigError(f"time {text!r} is a duration, but this data carries dates: give YYYY-MM-DD HH:MM:SS")
        return float(m.group(1)) * mult
    if relative:
        raise ConfigError(f"time {text!r}: this run's times count from its start; give seconds, e.g. 3600 or 1h")
    try:
        dt = datetime.fromisoformat(text.strip().replace("/", "-"))
    except ValueError:
        raise ConfigError(f"time {text!r} is not YYYY-MM-DD HH:MM:SS (UTC) nor a share like 30%") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def healthy_end_time(spec_text: str, times: np.ndarray, relative: bool) -> float:
    """The last moment of the healthy period: ``30%`` of the run's span, or a time (see ``parse_time``)."""
    text = spec_text.strip()
    if text.endswith("%"):
        try:
            share = float(text[:-1]) / 100.0
        except ValueError:
            raise ConfigError(f"--healthy-until {spec_text!r}: expected a share such as 30%") from None
        if not 0 < share <= 1:
            raise ConfigError(f"--healthy-until {spec_text!r}: the share must be more than 0% and at most 100%")
        return float(times[0] + share * (times[-1] - times[0]))
    t = parse_time(text, relative)
    if t < times[0]:
        first = format_time(times[0], relative)
        raise ConfigError(f"--healthy-until {spec_text!r} is before the first sample ({first})")
    if t > times[-1]:
        # Silently taking every window as healthy would leave nothing that can alarm: most likely a typo.
        last = format_time(times[-1], relative)
        raise ConfigError(
            f"--healthy-until {spec_text!r} is after the data's last time ({last}); name a time within the "
            "data, or 100% if the whole recording is healthy"
        )
    return t


def format_time(t: float, relative: bool) -> str:
    """Human time: ISO UTC for dated data, hours from start for relative runs."""
    if relative:
        return f"+{t / 3600.0:.3f}h"
    return datetime.fromtimestamp(float(t), tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
