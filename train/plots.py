"""The articles' pictures, done right: real time axes, log scores, the threshold, the warning and nuisance alarms."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vibrawatch.agent.detect.features import FeatureSpec  # noqa: E402
from vibrawatch.agent.detect.frames import iter_frames  # noqa: E402
from vibrawatch.agent.detect.recording import FeatureTable, Recording  # noqa: E402

from .naming import data_stem  # noqa: E402


def _axis_times(t: np.ndarray, relative: bool) -> np.ndarray | list[datetime]:
    if relative:
        return np.asarray(t) / 3600.0
    return [datetime.fromtimestamp(float(v), tz=timezone.utc) for v in t]


def _xlabel(relative: bool) -> str:
    return "hours since start" if relative else "time (UTC)"


def training_plots(
    out: Path,
    history: dict[str, list[float]],
    scores: np.ndarray,
    healthy: np.ndarray,
    threshold: float,
    end_times: np.ndarray,
    relative: bool,
) -> None:
    """loss.png (train/validation MAE per epoch) and healthy_scores.png (distribution with threshold)."""
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    ax.plot(history["loss"], label="train")
    ax.plot(history["val_loss"], label="validation (later healthy windows)")
    ax.set(xlabel="epoch", ylabel="loss (MAE)", title="Training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    ax.hist(scores[healthy], bins=40, color="tab:blue", alpha=0.8, label="healthy windows")
    ax.axvline(threshold, color="tab:red", label=f"threshold {threshold:.4g}")
    ax.set(xlabel="reconstruction error (MAE)", ylabel="windows", title="Healthy score distribution")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "healthy_scores.png")
    plt.close(fig)


def evaluation_plots(
    out: Path,
    data: Recording | FeatureTable,
    spec: FeatureSpec,
    det: Any,
    report: dict[str, Any],
    relative: bool,
    t_healthy: float | None,
) -> None:
    """scores_<data>.png (log score over time) and, for raw data, spectra_<data>.png (healthy vs failing)."""
    stem = data_stem(report["data"])
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    # The alarm level, not the bare score: an alarm may come from one channel's share crossing its own limit.
    ax.semilogy(_axis_times(det.times, relative), np.maximum(det.alarm_levels(), 1e-6), lw=1,
                label="alarm level: the largest channel evidence (share, floors, score over thresholds)"
                if report.get("detector") == "combined" else
                "alarm level: max(score / threshold, channel share / channel threshold)")
    ax.axhline(1.0, color="tab:red", lw=1, label="threshold (level 1)")
    if report.get("first_alarm_s") is not None:
        from vibrawatch.agent.detect.diagnosis import describe

        found = report.get("diagnosed")
        diag = (f"; {describe(found)} from {found['at']}" if found
                else f"; {describe(report['diagnosis'])}" if report.get("diagnosis") else "")
        ax.axvline(_axis_times(np.array([report["first_alarm_s"]]), relative)[0], color="tab:orange", ls="--",
                   label=f"warning ({report['alarm_channel']}, {report['lead_hours']} h before failure{diag})")
    nuisance = [e for e in report.get("episodes", []) if e.get("kind") == "nuisance"]
    for k, e in enumerate(nuisance):
        span = np.array([e["raised_s"], e["cleared_s"] if e["cleared_s"] is not None else det.times[-1]])
        a, b = _axis_times(span, relative)
        ax.axvspan(a, b, color="tab:red", alpha=0.15, lw=0, label=f"nuisance alarms ({len(nuisance)})" if not k
                   else None)
    if t_healthy is not None:
        ax.axvline(_axis_times(np.array([t_healthy]), relative)[0], color="tab:green", ls=":", label="end of healthy")
    ax.set(xlabel=_xlabel(relative), ylabel="alarm level (log)", title=f"Anomaly score: {stem}")
    ax.legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(out / f"scores_{stem}.png")
    plt.close(fig)

    if isinstance(data, FeatureTable) or spec.frame_length < 16:
        return
    n = data.n_snapshots
    k = max(1, n // 10)
    sel = {"healthy (first 10%)": (0, k), "failing (last 10%)": (n - k, n)}
    freqs = np.fft.rfftfreq(spec.frame_length, 1.0 / spec.fs_hz)
    fig, axes = plt.subplots(data.n_channels, 1, figsize=(10, 2.2 * data.n_channels), dpi=100, sharex=True,
                             squeeze=False)
    for label, (a, b) in sel.items():
        sub = Recording(data.data[a:b], data.timestamps[a:b], data.fs_hz, data.channels, data.source, relative)
        acc = np.zeros((len(freqs), data.n_channels))
        count = 0
        for batch in iter_frames(sub, spec.frame_length):
            acc += (np.abs(np.fft.rfft(batch.frames.astype(np.float64), axis=1)) ** 2).sum(axis=0)
            count += len(batch.frames)
        for c in range(data.n_channels):
            axes[c, 0].semilogy(freqs, acc[:, c] / max(count, 1), lw=0.6, label=label)
    for c, name in enumerate(data.channels):
        axes[c, 0].set_ylabel(name)
    axes[0, 0].legend(fontsize=8)
    axes[-1, 0].set_xlabel("frequency (Hz)")
    fig.suptitle(f"Mean power spectrum, healthy vs failing: {stem}")
    fig.tight_layout()
    fig.savefig(out / f"spectra_{stem}.png")
    plt.close(fig)
