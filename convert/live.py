"""The demo's live step (`vibrawatch demo`, and `vibrawatch demo --lorenz`): the signed bundle scored by the
gateway agent on raw samples a simulated sensor node publishes over MQTT, stored and served by the monitor
(vibrawatch.monitor.live does the running; this module prepares the Lorenz case and prints)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import typer

# The bearing run's snapshots (8192 samples at 20 kHz) go out in blocks of 2048 rows, one every 10 ms or so: the
# 240 snapshots of the demo's run take about 10-20 s, so its page shows the score rising in real time.
BLOCK_ROWS = 2048
BLOCK_INTERVAL_S = 0.01


def live_bearing(out: Path, data: Path, bundle: Path, public_key: Path, seconds: float | None) -> dict[str, object]:
    """6/6 of the demo: the bearing run replayed live through a sensor node, the agent and the monitor."""
    from vibrawatch.agent.sources.loaders import load
    from vibrawatch.monitor.live import sample_messages

    rec = load(data)
    anchor = _now() if rec.relative_time else 0.0
    messages = sample_messages(zip(rec.timestamps.tolist(), rec.data, strict=True), rec.fs_hz, BLOCK_ROWS, anchor)
    return _run(out, bundle, public_key, messages, BLOCK_INTERVAL_S, seconds, anchor)


def _now() -> float:
    """A simulated run has no dates: the sensor node sends it from now on, so the page shows today, not 1970."""
    return float(round(time.time()))


def _run(out: Path, bundle: Path, public_key: Path | None, messages: object, interval_s: float,
         seconds: float | None, anchor: float = 0.0) -> dict[str, object]:
    from vibrawatch.monitor.live import run_live

    summary = run_live(out / "live", bundle, public_key, messages, interval_s, seconds, typer.echo,  # type: ignore[arg-type]
                       anchor=anchor)
    (out / "live" / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    first = summary["first_alarm"]
    typer.echo(f"    live: {summary['scores']} scores and {summary['alarms']} alarm messages stored, "
               f"{summary['lost']} lost, {summary['dead_letters']} dead letters; first alarm "
               f"{first['ts'] if isinstance(first, dict) else 'none'}; database {summary['db']}")
    return summary


def lorenz_demo(out: Path, live: bool, seconds: float | None, quiet: bool) -> None:
    """The IBM article's case: train on a healthy Lorenz stream; live, the node switches to broken parameters."""
    from vibrawatch.agent.sources.loaders import save_snapshot_npz
    from vibrawatch.agent.sources.simulate import simulate_lorenz
    from vibrawatch.monitor.live import sample_messages
    from vibrawatch.train.evaluate import evaluate_run
    from vibrawatch.train.run import train_run

    from .bundle import build_bundle
    from .keys import PRIVATE_NAME, PUBLIC_NAME, new_keypair
    from .report import print_report

    out.mkdir(parents=True, exist_ok=True)
    healthy, broken = simulate_lorenz("healthy", 3000), simulate_lorenz("broken", 3000)
    save_snapshot_npz(healthy, out / "lorenz_healthy.npz")
    save_snapshot_npz(broken, out / "lorenz_broken.npz")
    typer.echo("1/4 simulated the IBM article's Lorenz streams: healthy (10, 28, 8/3) and broken (30, 128, 28/3)")
    typer.echo("2/4 training on the first 70% of the healthy stream ...")
    train_run(out / "lorenz_healthy.npz", out / "run", "70%", None, progress=not quiet)
    typer.echo("3/4 evaluating on the broken stream (healthy windows as negatives) ...")
    report = evaluate_run(str(out / "run"), str(out / "lorenz_broken.npz"), None, [],
                          str(out / "lorenz_healthy.npz"), progress=not quiet)
    print_report(report)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    keys = out / "keys"
    if not (keys / PRIVATE_NAME).exists():
        new_keypair(keys)
    # The Lorenz model's float TFLite scores differ from Keras by a few 1e-5 (relative), over convert's
    # 1e-5 target for bundles; for the demo that is written anyway, and the numbers are in the manifest.
    summary = build_bundle(out / "run", out / "bundle.tar", "none", keys / PRIVATE_NAME, force=True)
    typer.echo(f"4/4 signed TFLite bundle {summary['bundle']}: {summary['size_bytes']} bytes")
    if not live:
        return
    typer.echo("live: a Lorenz sensor node sends 1500 healthy samples, then switches to the broken parameters")
    n = 1500
    stream = np.concatenate([healthy.data[0][:n], broken.data[0][:n]])
    anchor = _now()
    messages = sample_messages([(0.0, stream)], healthy.fs_hz, 25, anchor)  # 25 samples a message, 10 a second
    _run(out, out / "bundle.tar", keys / PUBLIC_NAME, messages, 0.1, seconds, anchor)
