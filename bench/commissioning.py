"""Commissioning benchmark: one model on machines with another healthy level, before and after commissioning.

    nice .venv/bin/python bench/commissioning.py [--out runs/bench_commissioning] [--only sim,femto]

A model is trained (``vibrawatch train``, then ``vibrawatch convert``) on one machine and its bundle is run
by the gateway's own code (``ReplaySource`` -> ``Pipeline`` -> ``Commissioning``, what ``vibrawatch-agent
run`` does per window, without MQTT) over another machine's run to failure, twice: with the bundle's
thresholds (no ``[commissioning]``) and with a commissioning over the first ``share`` of the run.

- sim: the built-in bearing simulator. The reference machine (noise 0.07, seed 1) is trained on its
  healthy half; the others differ only in their healthy broadband level (``noise``) and seed: the same
  level (a sister machine), 1.4x (rougher), 0.7x (quieter), 2x (much rougher: the suspect guard), and
  a sister machine installed late, at 80% of its run, with its defect already there during commissioning
  (what the guard is for). Healthy = before the defect's onset; failure = the end of the run.
- femto: FEMTO-ST PRONOSTIA (../shared/data/femto): trained on the first half of one bearing, run on
  the other (Bearing1_1 at 1800 rpm / 4000 N, Bearing2_1 at 1650 rpm / 4200 N), both ways. Healthy =
  the first half of the run (as in training; the data set labels no onset); failure = the end of the run.

False alarms: alarms raised in the healthy span (after commissioning, for the commissioned column).
First alarm: the first one raised after the healthy span; lead: failure time minus it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

SIM_CONFIG = """# bench/commissioning.py: a small model on the simulator
[features]
frame_length = 2048

[model]
window = 8
hop = 1
encoder = [16, 8]
epochs = 30
batch_size = 32
patience = 5
seed = 1

[alarm]
raise_after = 3
clear_after = 6

[product]
combined = false                      # commissioning refits the autoencoder's thresholds only (agent/commission.py)
"""
PLAIN_CONFIG = "[product]\ncombined = false\n"  # FEMTO: the default model config, without the combined detector
SIM = {"snapshots": 120, "samples": 8192, "onset": 0.6}
# name -> (noise, seed, share of the run at which the gateway starts watching)
MACHINES = {
    "sister (same level)": (0.07, 2, 0.0),
    "rougher (1.4x)": (0.10, 3, 0.0),
    "quieter (0.7x)": (0.05, 4, 0.0),
    "much rougher (2x)": (0.14, 5, 0.0),
    "sister, faulty when commissioned": (0.07, 6, 0.8),
}


def vibrawatch(*args: str) -> str:
    cmd = [str(Path(sys.executable).with_name("vibrawatch")), *map(str, args)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{res.stderr[-2000:]}")
    return res.stdout


@dataclass
class Outcome:
    false_alarms: int
    first_alarm_h: float | None  # after the start of the run
    lead_h: float | None
    threshold: float
    source: str
    note: str = ""
    stuck: bool = False  # an alarm raised in the healthy span was still active at the failure


def windows(bundle_path: Path, data: Path) -> tuple[object, list]:
    """Every scored window of a replay, through the gateway's pipeline."""
    from vibrawatch.agent.bundle import load_bundle
    from vibrawatch.agent.pipeline import Pipeline, Scored
    from vibrawatch.agent.source import ReplaySource

    b = load_bundle(bundle_path)
    if b.detector.combined:
        raise SystemExit(f"{bundle_path}: a combined-detector bundle (from before [product] combined = false here, "
                         "or trained by hand); the gateway does not commission those: delete it and run again")
    p = Pipeline(b)
    return b, [e for ch in ReplaySource(str(data), speed=0).chunks() for e in p.process(ch) if isinstance(e, Scored)]


def outcome(bundle: object, evs: list, healthy_end: float, failure: float, commission_share: float | None,
            **guard: float) -> Outcome:
    """False alarms and the first alarm of one replay, with the bundle's thresholds or after commissioning."""
    from vibrawatch.agent.commission import Commissioning, CommissioningSection

    n_comm = None if commission_share is None else max(2, int(round(commission_share * len(evs))))
    cfg = None if n_comm is None else CommissioningSection(windows=n_comm, **guard)
    comm = Commissioning(bundle.detector, bundle.version, cfg)
    raised: list[float] = []
    note = ""
    active = False
    for ev in evs:
        out, cal = comm.window(ev)
        active = out.decision.active
        if cal is not None:
            note = (f"{cal.state}: median level {cal.median_level:.2f}, most different channel {cal.standout:.2f}x "
                    f"the others, {cal.windows} windows")
        if out.decision.event == "raised":
            raised.append(out.t)
    false = sum(t < healthy_end for t in raised)
    after = [t for t in raised if t >= healthy_end]
    first = after[0] if after else None
    return Outcome(false, None if first is None else first / 3600, None if first is None else (failure - first) / 3600,
                   comm.threshold, comm.source, note, stuck=first is None and active and false > 0)


def fmt(o: Outcome) -> str:
    first = ("none: the false alarm never cleared" if o.stuck else "none") if o.first_alarm_h is None \
        else f"{o.first_alarm_h:.2f} h"
    lead = "none" if o.lead_h is None else f"{o.lead_h:.2f} h"
    return f"{o.false_alarms} | {first} | {lead}"


def table_head(kind: str) -> None:
    print(f"\n| {kind} | healthy level vs reference (median window level, bundle thresholds) | bundle: false alarms "
          "| first alarm | lead | commissioned: false alarms | first alarm | lead | commissioning outcome |")
    print("|---|---|---|---|---|---|---|---|---|")


def row(name: str, b: object, evs: list, healthy_end: float, failure: float, share: float) -> None:
    from vibrawatch.agent.decide import alarm_levels

    s = np.array([e.score for e in evs])
    c = np.array([e.contributions for e in evs])
    t = np.array([e.t for e in evs])
    lv = alarm_levels(s, b.detector.threshold, c, b.detector.channel_thresholds)
    healthy_lv = f"{np.median(lv[t < healthy_end]):.2f}" if np.any(t < healthy_end) else "- (no healthy span)"
    before, after = outcome(b, evs, healthy_end, failure, None), outcome(b, evs, healthy_end, failure, share)
    print(f"| {name} | {healthy_lv} | {fmt(before)} | {fmt(after)} | {after.note} |", flush=True)


def sim(out: Path, share: float) -> None:
    from vibrawatch.agent.loaders import save_snapshot_npz
    from vibrawatch.agent.simulate import simulate_bearing_run

    cfg = out / "sim.toml"
    cfg.write_text(SIM_CONFIG)
    ref = out / "sim_reference.npz"
    save_snapshot_npz(simulate_bearing_run(n_snapshots=SIM["snapshots"], snapshot_samples=SIM["samples"],
                                           onset=SIM["onset"], noise=0.07, seed=1), ref)
    t0 = time.perf_counter()
    reused = (out / "sim.tar").exists()
    if not reused:  # seeded: a rerun would train the same model
        vibrawatch("train", "--data", ref, "--healthy-until", "50%", "--config", cfg, "--out", out / "sim_run",
                   "--quiet")
        vibrawatch("convert", out / "sim_run", "--out", out / "sim.tar")
    trained = f"reused {out / 'sim.tar'}" if reused else f"in {time.perf_counter() - t0:.0f} s"
    print(f"\nsimulator: trained on the reference machine (noise 0.07) {trained}; "
          f"{SIM['snapshots']} snapshots of {SIM['samples']} samples, 600 s apart; commissioning = first "
          f"{share:.0%} of each run")
    table_head("simulated machine")
    interval = 600.0
    failure = (SIM["snapshots"] - 1) * interval
    onset_t = SIM["onset"] * (SIM["snapshots"] - 1) * interval
    for name, (noise, seed, start) in MACHINES.items():
        data = out / f"sim_{seed}.npz"
        rec = simulate_bearing_run(n_snapshots=SIM["snapshots"], snapshot_samples=SIM["samples"],
                                   onset=SIM["onset"], noise=noise, seed=seed)
        k = int(start * SIM["snapshots"])
        save_snapshot_npz(replace(rec, data=rec.data[k:], timestamps=rec.timestamps[k:], labels=rec.labels[k:]), data)
        b, evs = windows(out / "sim.tar", data)
        row(f"{name}, noise {noise}", b, evs, onset_t, failure, share)


def femto(out: Path, share: float) -> None:
    runs = {"Bearing1_1": DATA / "femto" / "Learning_set_Bearing1_1.npz",
            "Bearing2_1": DATA / "femto" / "Learning_set_Bearing2_1.npz"}
    if not all(p.exists() for p in runs.values()):
        print(f"\nFEMTO: {DATA / 'femto'} not present; skipped")
        return
    for name, path in runs.items():
        if not (out / f"femto_{name}.tar").exists():
            (out / "femto.toml").write_text(PLAIN_CONFIG)
            vibrawatch("train", "--data", path, "--healthy-until", "50%", "--config", out / "femto.toml",
                       "--out", out / f"femto_{name}", "--quiet")
            vibrawatch("convert", out / f"femto_{name}", "--out", out / f"femto_{name}.tar")
    print(f"\nFEMTO: trained on the first half of one bearing (default model config), run on both; "
          f"commissioning = first {share:.0%} of the run; healthy = first half")
    table_head("trained on -> run on")
    for train_name in runs:
        for run_name, path in runs.items():
            b, evs = windows(out / f"femto_{train_name}.tar", path)
            t = np.array([e.t for e in evs])
            end = float(t[-1])
            row(f"{train_name} -> {run_name}", b, evs, t[0] + (end - t[0]) / 2, end, share)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench_commissioning")
    ap.add_argument("--only", default="sim,femto")
    ap.add_argument("--share", type=float, default=0.25, help="commissioning length, share of each run")
    a = ap.parse_args()
    out = (ROOT / a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print("# bench/commissioning.py")
    if "sim" in a.only:
        sim(out, a.share)
    if "femto" in a.only:
        femto(out, a.share)


if __name__ == "__main__":
    main()
