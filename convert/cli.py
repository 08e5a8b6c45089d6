"""The ``vibrawatch`` command line.

Workstation commands (train, evaluate, convert, ...) import TensorFlow and scikit-learn only inside the
command that needs them. The gateway has its own, lighter command: ``vibrawatch-agent`` (agent/cli.py).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated

import typer

from .cli_errors import user_errors

app = typer.Typer(
    name="vibrawatch",
    help=(
        "Predictive maintenance at the edge.\n\n"
        "On a workstation: `simulate` or bring data -> `train` on the healthy period -> `evaluate` the lead "
        "time -> `convert` to a signed model bundle. On a gateway: `vibrawatch-agent run` scores live "
        "vibration and publishes scores and alarms over MQTT."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts name config sections, [baselines], [remote]: shown as written
)


@app.callback()
def _options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also show TensorFlow's own start-up and graph "
                                          "log lines (CUDA probing, oneDNN, attribute warnings).")] = False,
) -> None:
    """Keep TensorFlow's C++ and Python logs quiet unless asked, so what a user reads is vibrawatch's own output."""
    if not verbose:
        from vibrawatch.train.quiet import quiet_tensorflow

        quiet_tensorflow()


simulate_app = typer.Typer(help="Write built-in simulated data (no downloads needed).", no_args_is_help=True)
app.add_typer(simulate_app, name="simulate")

DataOpt = Annotated[
    Path,
    typer.Option(
        "--data",
        help="Vibration data: an IMS snapshot directory, a snapshot archive .npz, a feature table .csv, "
        "or a Lorenz .json stream. The format is recognised from the path.",
    ),
]

TimeColumnOpt = Annotated[
    str | None,
    typer.Option("--time-column", help="A feature table's time column by its header (default: the column named "
                 "timestamp, time, t or datetime, else the first)."),
]


@app.command()
@user_errors
def train(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Run directory to write (model, run.json, plots).")],
    healthy_until: Annotated[
        str | None,
        typer.Option(
            "--healthy-until",
            help="End of the healthy period: a time (2004-02-15 12:52:39, UTC; or 3600 / 1.5h for runs timed "
            "from their start) or a share of the run (30%). Default: the config's, else 30%.",
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML settings (features, window, threshold); see configs/.")
    ] = None,
    time_column: TimeColumnOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Fit the LSTM autoencoder on the healthy period of a run and pick its alarm threshold.

    Example: vibrawatch train --data ../shared/data/ims/2nd_test_full.npz --healthy-until "2004-02-15 12:52:39"
    --config configs/ims2.toml --out runs/ims2
    """
    from vibrawatch.train.run import train_run

    summary = train_run(data, out, healthy_until, config, progress=not quiet, time_column=time_column)
    typer.echo(json.dumps(summary, indent=2))


@app.command()
@user_errors
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by `vibrawatch train`.")],
    data: DataOpt,
    failure_at: Annotated[
        str | None, typer.Option("--failure-at", help="When the machine failed (default: the last snapshot).")
    ] = None,
    failed: Annotated[
        str | None,
        typer.Option("--failed", help="Comma-separated channels that failed; alarms naming others are false."),
    ] = None,
    normal_data: Annotated[
        Path | None,
        typer.Option("--normal-data", help="Known-healthy data of the same machine: its windows count as "
                     "negatives, the --data windows as positives, for the AUC."),
    ] = None,
    healthy_until: Annotated[
        str | None,
        typer.Option("--healthy-until", help="The evaluated run is known healthy up to here (a time, or a share "
                     "like 30%): every alarm raised in it is a nuisance alarm, with or without --failed."),
    ] = None,
    time_column: TimeColumnOpt = None,
    outside: Annotated[
        str | None,
        typer.Option("--baselines", help="Also score outside detectors fitted the same way: `pyod` (ECOD, COPOD, "
                     "HBOS, LOF, KNN, and ecod_upper: ECOD on the upper tails only) or some of them (ecod,knn); "
                     "PyOD's need the [baselines] extra."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (for scripts).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Score a run with the trained detector and the baselines: alarm episodes, the warning and its lead, nuisance
    alarms (count and per 1,000 healthy machine-hours), AUC. Definitions: docs/detection.md, "Scoring".

    Example: vibrawatch evaluate runs/ims2 --data ../shared/data/ims/2nd_test_full.npz --failed bearing1 --json
    """
    from vibrawatch.train.evaluate import evaluate_run

    from .report import print_report

    names = [s.strip() for s in failed.split(",") if s.strip()] if failed else []
    report = evaluate_run(str(run_dir), str(data), failure_at, names, str(normal_data) if normal_data else None,
                          progress=not quiet, healthy_until=healthy_until, time_column=time_column,
                          outside=outside)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    print_report(report)


@simulate_app.command("bearing")
@user_errors
def simulate_bearing(
    out: Annotated[Path, typer.Option("--out", help="Snapshot archive .npz to write.")],
    snapshots: Annotated[int, typer.Option(help="Number of snapshots in the run.")] = 200,
    samples: Annotated[int, typer.Option(help="Samples per snapshot.")] = 20480,
    fs_hz: Annotated[float, typer.Option("--fs-hz", help="Sample rate.")] = 20000.0,
    interval_s: Annotated[float, typer.Option("--interval-s", help="Seconds between snapshots.")] = 600.0,
    channels: Annotated[int, typer.Option(help="Bearings (one accelerometer each).")] = 4,
    failing: Annotated[int, typer.Option(help="Index of the bearing that fails.")] = 0,
    fault: Annotated[str, typer.Option(help="outer, inner or ball.")] = "outer",
    onset: Annotated[float, typer.Option(help="Share of the run after which the defect grows.")] = 0.7,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 0,
    step_channel: Annotated[
        int | None, typer.Option("--step-channel", help="Add a level step on this bearing (index).")
    ] = None,
    step_at: Annotated[float, typer.Option("--step-at", help="Share of the run where the step happens.")] = 0.5,
    step_gain: Annotated[float, typer.Option("--step-gain", help="Factor on the channel's signal.")] = 1.33,
    step_relax_s: Annotated[
        float, typer.Option("--step-relax-s", help="Seconds for the step to relax back (0: it holds).")
    ] = 0.0,
    condition_at: Annotated[
        float | None, typer.Option("--condition-at", help="Share of the run where every channel changes at once.")
    ] = None,
    condition_gain: Annotated[
        float, typer.Option("--condition-gain", help="Factor on every channel after the condition change.")
    ] = 1.3,
    gap_at: Annotated[
        float | None, typer.Option("--gap-at", help="Share of the run where the recording pauses.")
    ] = None,
    gap_s: Annotated[float, typer.Option("--gap-s", help="Seconds the recording pauses.")] = 86400.0,
    gap_gain: Annotated[float, typer.Option("--gap-gain", help="Factor on every channel after the gap.")] = 1.22,
    gap_spread: Annotated[
        float, typer.Option("--gap-spread", help="Channel by channel within +- this share of --gap-gain.")
    ] = 0.0,
) -> None:
    """A rolling-bearing run to failure: defect impacts at BPFO/BPFI/BSF ringing a resonance, in noise;
    optionally a one-channel step or transient, a shared condition change and a gap with a shared shift."""
    from vibrawatch.agent.errors import ConfigError
    from vibrawatch.agent.sources.loaders import save_snapshot_npz
    from vibrawatch.agent.sources.simulate import FAULT_KEYS, simulate_bearing_run

    path = _npz_out(out)
    _require(snapshots >= 1 and samples >= 1 and channels >= 1, "--snapshots, --samples and --channels must be >= 1")
    _require(math.isfinite(fs_hz) and fs_hz > 0 and math.isfinite(interval_s) and interval_s > 0,
             "--fs-hz and --interval-s must be > 0")
    _require(0 <= failing < channels, f"--failing {failing}: a bearing index from 0 to {channels - 1} (--channels "
             f"{channels})")
    _require(fault in FAULT_KEYS, f"--fault {fault!r}: expected one of {', '.join(FAULT_KEYS)}")
    _require(0 < onset < 1, f"--onset {onset}: a share of the run between 0 and 1, e.g. 0.7")
    try:
        rec = simulate_bearing_run(n_snapshots=snapshots, snapshot_samples=samples, fs_hz=fs_hz,
                                   interval_s=interval_s, n_channels=channels, failing_channel=failing, fault=fault,
                                   onset=onset, seed=seed, step_channel=step_channel, step_at=step_at,
                                   step_gain=step_gain, step_relax_s=step_relax_s, condition_at=condition_at,
                                   condition_gain=condition_gain, gap_at=gap_at, gap_s=gap_s, gap_gain=gap_gain,
                                   gap_spread=gap_spread)
    except ValueError as e:  # the simulator's own checks (e.g. its resonance above the Nyquist frequency)
        raise ConfigError(f"simulate bearing: {e}") from None
    save_snapshot_npz(rec, path)
    typer.echo(f"wrote {path}: {rec.n_snapshots} snapshots x {rec.data.shape[1]} samples x {rec.n_channels} "
               "channels")


def _require(ok: bool, message: str) -> None:
    """A command-line value out of range: one `error:` line naming the option (``user_errors``)."""
    if not ok:
        from vibrawatch.agent.errors import ConfigError

        raise ConfigError(message)


def _npz_out(out: Path) -> Path:
    """The file a snapshot archive ``--out`` really names: numpy adds .npz where it is missing."""
    path = out if str(out).endswith(".npz") else out.with_name(out.name + ".npz")
    _require(not path.is_dir(), f"--out {out}: {path} is a directory; name a file ending .npz")
    parent = next((p for p in path.parents if p.exists()), None)
    _require(parent is None or parent.is_dir(), f"--out {out}: {parent} is a file, not a directory")
    return path


@simulate_app.command("lorenz")
@user_errors
def simulate_lorenz(
    out: Annotated[Path, typer.Option("--out", help="Snapshot archive .npz to write.")],
    kind: Annotated[str, typer.Option(help="healthy (10, 28, 8/3) or broken (30, 128, 28/3).")] = "healthy",
    n: Annotated[int, typer.Option(help="Euler steps (samples).")] = 3000,
) -> None:
    """The IBM article's Lorenz-attractor 'vibration' (Euler step 0.008 from (2, 3, 4))."""
    from vibrawatch.agent.sources.loaders import save_snapshot_npz
    from vibrawatch.agent.sources.simulate import LORENZ_PARAMS
    from vibrawatch.agent.sources.simulate import simulate_lorenz as sim

    path = _npz_out(out)
    _require(kind in LORENZ_PARAMS, f"--kind {kind!r}: expected one of {', '.join(LORENZ_PARAMS)}")
    _require(n >= 1, f"--n {n}: at least 1 step")
    rec = sim(kind, n)
    save_snapshot_npz(rec, path)
    typer.echo(f"wrote {path}: {kind} Lorenz stream of {n} samples")


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Where to write the simulated data and the run.")] = Path(
        "runs/demo"
    ),
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    live: Annotated[bool, typer.Option("--live/--no-live", help="End with the live path: sensor node -> MQTT -> "
                                       "agent -> monitor and its page, until Ctrl-C or --for.")] = True,
    for_s: Annotated[float | None, typer.Option("--for", help="Stop the live path after SECONDS.")] = None,
    lorenz: Annotated[bool, typer.Option("--lorenz", help="The IBM article's Lorenz case instead of the "
                                         "bearing run.")] = False,
) -> None:
    """The whole job on built-in data: simulate -> train -> evaluate -> signed bundle -> edge replay -> live.

    Step 5 replays the run through the gateway's own pipeline (sensor checks, frames, features, window,
    scale, TFLite, alarm rule) from the verified bundle and compares its scores with evaluate's. Step 6 runs
    it live: a simulated sensor node publishes raw samples over MQTT, `vibrawatch-agent run` scores them,
    the fleet monitor stores them and serves its page (address printed), and the first alarm is printed.
    """
    if lorenz:
        from .live import lorenz_demo

        return lorenz_demo(out, live, for_s, quiet)
    import numpy as np

    from vibrawatch.agent.detect.results import Scored
    from vibrawatch.agent.model.bundle import load_bundle
    from vibrawatch.agent.pipeline import Pipeline
    from vibrawatch.agent.sources.loaders import save_snapshot_npz
    from vibrawatch.agent.sources.simulate import simulate_bearing_run
    from vibrawatch.agent.sources.source import ReplaySource
    from vibrawatch.train.evaluate import evaluate_run
    from vibrawatch.train.run import train_run

    from .bundle import build_bundle
    from .keys import PRIVATE_NAME, PUBLIC_NAME, new_keypair
    from .report import print_report

    out.mkdir(parents=True, exist_ok=True)
    data = out / "bearing_run.npz"
    typer.echo("1/5 simulating a bearing run to failure (outer-race defect on bearing1) ...")
    rec = simulate_bearing_run(n_snapshots=240, snapshot_samples=8192, fs_hz=20000.0, seed=7)
    save_snapshot_npz(rec, data)
    typer.echo("2/5 training on the first 40% (healthy) ...")
    train_run(data, out / "run", "40%", None, progress=not quiet)
    typer.echo("3/5 evaluating ...")
    report = evaluate_run(str(out / "run"), str(data), None, ["bearing1"], progress=not quiet)
    print_report(report)
    typer.echo("4/5 converting to a signed TFLite bundle ...")
    keys = out / "keys"
    if not (keys / PRIVATE_NAME).exists():
        new_keypair(keys)
    summary = build_bundle(out / "run", out / "bundle.tar", "none", keys / PRIVATE_NAME)
    typer.echo(f"    {summary['bundle']}: {Path(summary['bundle']).stat().st_size} bytes (model "
               f"{summary['size_bytes']} bytes), ops {', '.join(summary['ops'])}")
    typer.echo("5/5 replaying the run through the gateway pipeline (verified bundle, TFLite) ...")
    bundle = load_bundle(out / "bundle.tar", keys / PUBLIC_NAME)
    pipeline = Pipeline(bundle)
    edge = [e for c in ReplaySource(data).chunks() for e in pipeline.process(c) if isinstance(e, Scored)]
    offline = np.load(out / "run" / "windows.npz")["scores"]
    diff = float(np.max(np.abs(np.array([e.score for e in edge]) - offline)))
    raised = next((e for e in edge if e.decision.event == "raised"), None)
    report["edge"] = {"windows": len(edge), "max_abs_score_diff_vs_evaluate": diff, "runtime": bundle.model.runtime,
                      "first_alarm_s": raised.t if raised else None}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    typer.echo(f"    {len(edge)} windows on {bundle.model.runtime}; max |score difference| vs evaluate {diff:.2g}; "
               f"edge alarm at +{(raised.t / 3600) if raised else float('nan'):.3f}h "
               f"(evaluate: {report['first_alarm']})")
    typer.echo(f"report: {out / 'report.json'}; plots: {out / 'run'}/*.png; bundle: {out / 'bundle.tar'}")
    if live:
        from .live import live_bearing

        typer.echo("live: sensor node -> MQTT -> vibrawatch-agent (signed bundle) -> monitor and its page ...")
        report["live"] = live_bearing(out, data, out / "bundle.tar", keys / PUBLIC_NAME, for_s)
        (out / "report.json").write_text(json.dumps(report, indent=2, default=str))


@app.command()
@user_errors
def recalibrate(
    broker: Annotated[str, typer.Option("--broker", help="mqtt://HOST:PORT or mqtts://HOST:PORT.")],
    site: Annotated[str, typer.Option("--site", help="The site, as in the gateway's agent.site.")],
    device: Annotated[str, typer.Option("--device", help="The one device to commission again.")],
    sign_key: Annotated[Path, typer.Option("--sign-key", help="Private key that signs the request: the deploy key "
                                           "(gateways verify it with [agent] public_key).")] = Path(
        "keys/vibrawatch-signing.key"),
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for the gateway's answer (0: do not wait).")
                    ] = 60.0,
    expires_in: Annotated[float, typer.Option("--expires-in", help="Seconds the request stays valid: a gateway "
                                              "offline longer refuses it as stale.")] = 24 * 3600.0,
    note: Annotated[str, typer.Option("--note", help="Why (e.g. 'bearing replaced'): in the gateway's log and "
                                      "status.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (for scripts).")] = False,
    ca_file: Annotated[Path | None, typer.Option("--ca-file", help="CA certificate for mqtts://.")] = None,
    cert_file: Annotated[Path | None, typer.Option("--cert-file", help="Client certificate (mqtts://).")] = None,
    key_file: Annotated[Path | None, typer.Option("--key-file", help="Client certificate's key.")] = None,
    username: Annotated[str | None, typer.Option("--username", help="MQTT user name.")] = None,
    password_file: Annotated[Path | None, typer.Option("--password-file", help="File holding the MQTT password "
                                                       "(never on the command line).")] = None,
) -> None:
    """Commission one machine again after maintenance (a bearing replaced), over MQTT, without logging into its
    gateway: a signed request the gateway verifies like a deploy; it starts learning this machine's healthy
    state again and its status says `commissioning`. Exit 0 once it did; 1 when it refused (the reason), does
    not accept remote recalibration ([remote] recalibrate = true in its config), or did not answer in --wait.

    Example: vibrawatch recalibrate --broker mqtts://broker.plant:8883 --site plant1 --device press7
    --ca-file ca.pem --note "bearing replaced"
    """
    from .deploy import BrokerOptions
    from .remote import send_recalibrate

    opts = BrokerOptions(broker, ca_file, cert_file, key_file, username, password_file)
    r = send_recalibrate(opts, site, device, sign_key, wait, expires_in, note)
    if as_json:
        typer.echo(json.dumps(r, indent=2))
    elif r["outcome"] == "applied":
        typer.echo(f"{device}: recalibrate {r['id']} applied in {r['seconds']} s; now {r['state']} (a new "
                   "commissioning learns this machine's healthy state)")
    elif r["outcome"] == "not_accepted":
        typer.echo(r["reason"])
    else:
        typer.echo(f"{device}: recalibrate {r['id']} {r['outcome']}" + (f": {r['reason']}" if r["reason"] else ""))
    if r["outcome"] not in ("applied", "sent"):
        raise typer.Exit(1)


def _register_workstation_commands() -> None:
    from .commands import register

    register(app)


_register_workstation_commands()


def _register_monitor_commands() -> None:
    """`vibrawatch monitor` and `vibrawatch fleet` (monitor/cli.py): the fleet side."""
    from vibrawatch.monitor.cli import register

    register(app, user_errors)


_register_monitor_commands()


def main() -> None:
    """Console entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
