"""``vibrawatch train``: data -> features -> healthy windows -> scaler -> autoencoder -> threshold -> run dir.

A run directory holds everything later steps need, in open formats: ``model.keras`` (tf-keras),
``run.json`` (feature spec, scaler numbers, threshold, alarm rule, training summary) and
``windows.npz`` (the run's scaled windows and scores, for conversion checks), plus the plots; `evaluate` adds
its ``evaluation_<data>.json`` and plots. A run appears or changes all at once: it is built in a hidden sibling
directory and renamed into place at the end, so an interrupted `train` leaves the old run as it was, and
training again into a run replaces all of it (no evaluation of the previous model survives to be shipped).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vibrawatch.agent import __version__
from vibrawatch.agent.detect.decide import reconstruction_scores
from vibrawatch.agent.detect.detector import Detector
from vibrawatch.agent.detect.healthy import MIN_STEP, level_drift
from vibrawatch.agent.detect.recording import Recording
from vibrawatch.agent.detect.scale import MinMaxScaling, RobustScaling, Scaling
from vibrawatch.agent.detect.threshold import FEW_HEALTHY_WINDOWS, fit_channel_thresholds, fit_threshold
from vibrawatch.agent.errors import ConfigError
from vibrawatch.agent.sources.loaders import detect_format

from .config import TrainConfig, load_config
from .dataset import build_spec, featurize, format_time, healthy_end_time, load_data, make_windows
from .workdirs import sibling, sweep_abandoned

RUN_SCHEMA = "vibrawatch.run/2"  # /2: the detector's fields under the bundle manifest's keys
DEFAULT_HEALTHY = "30%"
MIN_HEALTHY_WINDOWS = 20
# What `train` and `evaluate` write into a run directory: a directory holding only these may be replaced.
RUN_FILES = ("model.keras", "run.json", "windows.npz", "loss.png", "healthy_scores.png")
RUN_PATTERNS = ("evaluation_*.json", "scores_*.png", "spectra_*.png")


@dataclass(frozen=True)
class Run:
    """A trained run, as read back from its directory."""

    path: Path
    meta: dict[str, Any]
    detector: Detector

    @classmethod
    def open(cls, path: str | Path) -> Run:
        p = Path(path)
        meta_path = p / "run.json"
        if not meta_path.is_file():
            raise ConfigError(f"{p}: not a training run (no run.json); make one with `vibrawatch train`")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{meta_path}: not readable JSON ({e}); train the run again") from None
        if not isinstance(meta, dict) or meta.get("schema") != RUN_SCHEMA:
            got = meta.get("schema") if isinstance(meta, dict) else type(meta).__name__
            raise ConfigError(f"{meta_path}: schema {got!r}, expected {RUN_SCHEMA!r}")
        try:
            detector = Detector.from_dict(meta)
        except ConfigError as e:
            raise ConfigError(f"{meta_path}: {e}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"{meta_path}: not a run.json `vibrawatch train` wrote ({type(e).__name__}: {e}); "
                              "train the run again") from None
        for name in ("model.keras", "windows.npz"):
            if not (p / name).is_file():
                raise ConfigError(f"{p}: an incomplete run (no {name}); train it again with `vibrawatch train`")
        if not isinstance(meta.get("training"), dict) or not isinstance(meta.get("model"), dict):
            raise ConfigError(f"{meta_path}: no 'training' or 'model' record; train the run again")
        return cls(path=p, meta=meta, detector=detector)

    def keras_model(self):  # -> tf_keras.Model; TensorFlow is imported only when asked for
        from . import model as m

        path = self.path / "model.keras"
        try:
            return m.load(path)
        except Exception as e:  # Keras raises ValueError, OSError, zipfile's and h5py's own
            raise ConfigError(f"{path}: cannot be loaded ({type(e).__name__}: {e}); train the run again") from None

    def windows(self) -> dict[str, np.ndarray]:
        """The run's ``windows.npz`` arrays (conversion checks); a damaged file is a ConfigError naming it."""
        import zipfile
        import zlib

        path = self.path / "windows.npz"
        need = ("x", "end_times", "healthy", "validation")
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in need if k not in z.files]
                if missing:
                    raise ConfigError(f"{path}: missing array(s) {missing}; train the run again")
                return {k: z[k] for k in z.files}
        except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:
            raise ConfigError(f"{path}: not a readable .npz archive ({e}); train the run again") from None


def score(model: Any, x_scaled: np.ndarray, n_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Keras scores and per-channel contributions of scaled windows."""
    from . import model as m

    return reconstruction_scores(x_scaled.astype(np.float32), m.reconstruct(model, x_scaled), n_channels)


def versions() -> dict[str, str]:
    import sklearn
    import tensorflow as tf
    import tf_keras

    return {
        "vibrawatch": __version__,
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
        "scikit_learn": sklearn.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def few_healthy_warning(n_healthy: int, healthy_text: str) -> list[str]:
    """What to tell a user whose healthy period gives fewer than ``FEW_HEALTHY_WINDOWS`` windows (none otherwise)."""
    if n_healthy >= FEW_HEALTHY_WINDOWS:
        return []
    return [f"--healthy-until {healthy_text!r} gives {n_healthy} healthy windows: thresholds fitted on so few are "
            f"exceeded by about 1 healthy window in {n_healthy + 1}, so expect nuisance alarms on a healthy machine; "
            f"give at least {FEW_HEALTHY_WINDOWS} (more healthy data, or shorter frames)"]


def drift_warning(levels: np.ndarray, channels: tuple[str, ...]) -> list[str]:
    """What to tell a user whose healthy period's level (``levels`` (n, C) per healthy window) moved by more than a
    step from its start to its end (``level_drift``); none otherwise."""
    drift = level_drift(levels)
    if drift is None or not (np.abs(drift) > MIN_STEP).any():
        return []
    moved = ", ".join(f"{channels[c]} x{np.exp(drift[c]):.2f}" for c in np.flatnonzero(np.abs(drift) > MIN_STEP))
    return [f"the healthy period is not one steady condition: the RMS level went {moved} from its first fifth to "
            "its last. Thresholds are fitted on all of it: a level that fell (a run-in settling) leaves the detector "
            "less sensitive afterwards, one that rose may be wear already under way; end --healthy-until where the "
            "machine runs steady"]


def train_run(
    data_path: str | Path,
    out_dir: str | Path,
    healthy_until: str | None = None,
    config_path: str | Path | None = None,
    progress: bool = True,
    time_column: str | None = None,
) -> dict[str, Any]:
    """Train on the healthy period of one run and write a run directory; returns its summary. ``time_column``
    names a feature table's time column (as `evaluate --time-column`; found by its header when not named)."""
    from sklearn.preprocessing import MinMaxScaler

    from . import model as m
    from . import plots

    out = check_out_dir(Path(out_dir))  # before the slow part: a wrong --out is said at once
    sweep_abandoned(out, "training")  # what a train killed by SIGKILL left beside this run
    cfg: TrainConfig = load_config(config_path)
    data = load_data(data_path, time_column)
    spec = build_spec(data, cfg)
    ff = featurize(data, spec, progress=progress)
    T, hop = cfg.model.window, cfg.model.hop
    wins = make_windows(ff, T, hop)
    healthy_text = healthy_until or cfg.healthy_until or DEFAULT_HEALTHY
    t_end = healthy_end_time(healthy_text, ff.times, ff.relative_time)
    healthy = wins.end_times <= t_end
    n_healthy = int(healthy.sum())
    if n_healthy < MIN_HEALTHY_WINDOWS:
        raise ConfigError(
            f"--healthy-until {healthy_text!r} leaves {n_healthy} healthy windows of T={T} frames; at least "
            f"{MIN_HEALTHY_WINDOWS} are needed: name a later time, a larger share, or a smaller [model] window"
        )
    warnings = few_healthy_warning(n_healthy, healthy_text)
    floors = None  # the level floors' values of each healthy window's last frame (raw samples only)
    if isinstance(data, Recording):
        from .product import frame_floor_values

        floors = frame_floor_values(data, spec)[wins.end_frames[healthy]]
        warnings += drift_warning(floors[:, 0, :], spec.channels)  # the first floor feature: RMS
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    # Scale by the healthy frames only: the failing part must not shape what 'normal' means.
    healthy_frames = ff.values[: int(wins.end_frames[healthy][-1]) + 1]
    scaler: Scaling
    if cfg.features.scaling == "robust":
        scaler = RobustScaling.fit(healthy_frames)
    else:
        sk = MinMaxScaler().fit(healthy_frames)
        scaler = MinMaxScaling(sk.scale_, sk.min_, sk.data_min_, sk.data_max_)
    x_all = scaler.transform(wins.x).astype(np.float32)

    # Chronological split; T-1 windows between train and validation so they share no frame.
    idx = np.flatnonzero(healthy)
    n_val = max(1, int(round(len(idx) * cfg.model.validation_fraction)))
    val_idx = idx[-n_val:]
    train_idx = idx[: max(1, len(idx) - n_val - (T - 1) // hop)]
    model, history = m.fit(
        x_all[train_idx],
        x_all[val_idx],
        encoder=cfg.model.encoder,
        epochs=cfg.model.epochs,
        batch_size=cfg.model.batch_size,
        learning_rate=cfg.model.learning_rate,
        patience=cfg.model.patience,
        seed=cfg.model.seed,
        progress=progress,
    )
    scores, contrib = score(model, x_all, len(spec.channels))
    threshold = fit_threshold(scores[healthy], cfg.threshold)
    ch_thr = fit_channel_thresholds(contrib[healthy], cfg.threshold)

    out.parent.mkdir(parents=True, exist_ok=True)
    work = sibling(out, "training")
    work.mkdir()  # as the run will be: with the user's umask
    try:
        m.save(model, work / "model.keras")
        val_mask = np.zeros(len(x_all), bool)
        val_mask[val_idx] = True
        np.savez_compressed(
            work / "windows.npz",
            x=x_all,
            end_times=wins.end_times,
            healthy=healthy,
            validation=val_mask,
            scores=scores,
            contributions=contrib,
        )
        detector = Detector(spec, scaler, T, hop, threshold, ch_thr, cfg.alarm, cfg.threshold)
        if cfg.product.combined:
            from .product import fit_product

            detector = fit_product(data, detector, scaler.transform(ff.values), x_all, wins.end_frames, wins.end_times,
                                   scores, contrib, healthy, cfg.product, cfg.diagnosis, floors)
        det = detector.to_dict()
        det["threshold"].update(healthy_score_max=float(scores[healthy].max()),
                                healthy_score_p99=float(np.quantile(scores[healthy], 0.99)))
        meta = {
            "schema": RUN_SCHEMA,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **det,
            "model": {"encoder": list(cfg.model.encoder), "activation": "tanh", "loss": "mae", "optimizer": "adam"},
            "training": {
                "source": str(data_path),
                "format": detect_format(data_path),
                "time_column": time_column,
                "relative_time": ff.relative_time,
                "healthy_until": healthy_text,
                "healthy_end": format_time(t_end, ff.relative_time),
                "healthy_end_time": t_end,
                "frames": len(ff.values),
                "windows": len(x_all),
                "healthy_windows": n_healthy,
                "train_windows": len(train_idx),
                "validation_windows": len(val_idx),
                "epochs_run": len(history["loss"]),
                "final_loss": history["loss"][-1],
                "best_val_loss": min(history["val_loss"]),
                "history": history,
                "config": cfg.to_dict(),
            },
            "versions": versions(),
        }
        (work / "run.json").write_text(json.dumps(meta, indent=2))
        plots.training_plots(work, history, scores, healthy, threshold, wins.end_times, ff.relative_time)
        publish(work, check_out_dir(out))  # checked again: it may have changed while training
    except BaseException:  # Ctrl-C or a crash: no half run anywhere, the old one as it was
        shutil.rmtree(work, ignore_errors=True)
        raise
    return {
        "run_dir": str(out_dir),
        "features": spec.n_features,
        "windows": len(x_all),
        "healthy_windows": n_healthy,
        "epochs_run": len(history["loss"]),
        "best_val_loss": min(history["val_loss"]),
        "threshold": threshold,
        "healthy_end": format_time(t_end, ff.relative_time),
        "warnings": warnings,
    }


def _run_entry(name: str) -> bool:
    return name in RUN_FILES or any(Path(name).match(pat) for pat in RUN_PATTERNS)


def check_out_dir(out: Path) -> Path:
    """``--out`` for `train`, checked before any work: a new path, an empty directory or a run (only files train
    and evaluate write) that the new run will replace as a whole."""
    out = Path(os.path.abspath(out))
    if out.is_symlink():
        out = out.resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory; name a run directory")
    if out.is_dir():
        foreign = sorted(q.name for q in out.iterdir() if not _run_entry(q.name))
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise ConfigError(f"--out {out}: holds files a run does not make ({shown}); training replaces the whole "
                              "run directory, so choose a new or empty one, or move those files out")
    parent = next(p for p in out.parents if p.exists())
    if not parent.is_dir():
        raise ConfigError(f"--out {out}: {parent} is a file, not a directory")
    if not os.access(parent if not out.parent.exists() else out.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: cannot write in {out.parent if out.parent.exists() else parent}")
    return out


def _fsync_tree(d: Path) -> None:
    for q in d.iterdir():
        if q.is_file():
            fd = os.open(q, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def publish(work: Path, out: Path) -> None:
    """Put the finished run ``work`` at ``out``, replacing what was there (see ``check_out_dir``)."""
    _fsync_tree(work)
    if not out.exists():
        os.rename(work, out)  # an empty directory made meanwhile is replaced too
        return
    old = sibling(out, "old")  # two renames: between them (microseconds) the old run waits under a hidden name
    moved = False
    try:
        os.rename(out, old)
        moved = True
        os.rename(work, out)
    except BaseException:
        if moved and not out.exists():
            os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
