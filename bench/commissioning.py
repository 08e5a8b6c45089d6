"""Commissioning benchmark: one model on machines with another healthy level, before and after commissioning.

    nice .venv/bin/python bench/commissioning.py [--out runs/bench_commissioning] [--only sim,femto] [--plain]

A model is trained (``vibrawatch train``, then ``vibrawatch convert``) on one machine, with the default
(combined) detector (``--plain``: ``[product] combined = false``, the autoencoder's thresholds alone), and its
bundle is run by the gateway's own code (``ReplaySource`` -> ``Pipeline`` with its ``Commissioning``
attached, what ``vibrawatch-agent run`` does per window, without MQTT) over another machine's run to
failure, twice: with the bundle's detector (no ``[commissioning]``) and with a commissioning over the first
``share`` of the run, after which the pipeline decides with the detector commissioning fitted.

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

FEMTO also compares the commissioned bundle with the floor baseline on the same windows (issue 20): per channel,
the RMS of each window's last frame against its max over the commissioning windows x the threshold rule's margin,
each channel its own alarm by the bundle's alarm rule (train/baselines.py ``floor_detection``), over the windows
after commissioning. Both are scored per channel (healthy-span alarms, first alarm after, lead) and by
agent/detect/episodes.py (warning lead, nuisance); each healthy-span alarm is listed with the part that raised
it (every part's level over its threshold: autoencoder, PCA residual, floors, own deviation).
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
"""
PLAIN = "\n[product]\ncombined = false\n"  # --plain: the autoencoder's thresholds decide alone
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


def replay(bundle: object, data: Path, windows: int | None = None, **guard: float) -> tuple[list, object]:
    """Every scored window of a replay through the gateway's pipeline, with a commissioning over the first
    ``windows`` (None: the bundle's detector throughout), and the commissioning."""
    from vibrawatch.agent.detect.calibrate import CommissioningSection
    from vibrawatch.agent.detect.results import Scored
    from vibrawatch.agent.model.commission import Commissioning
    from vibrawatch.agent.pipeline import Pipeline
    from vibrawatch.agent.sources.source import ReplaySource

    cfg = None if windows is None else CommissioningSection(windows=windows, **guard)
    comm = Commissioning(bundle.detector, bundle.version, cfg)
    p = Pipeline(bundle)
    p.attach(comm)
    return [e for ch in ReplaySource(str(data), speed=0).chunks() for e in p.process(ch) if isinstance(e, Scored)], comm


def outcome(evs: list, comm: object, healthy_end: float, failure: float) -> Outcome:
    """False alarms and the first alarm of one replay, with the bundle's detector or after commissioning."""
    raised = [e.t for e in evs if e.decision.event == "raised"]
    cal = comm.calibration
    note = "" if cal is None else (f"{cal.state}: median level {cal.median_level:.2f}, most different channel "
                                   f"{cal.standout:.2f}x the others, {cal.windows} windows")
    false = sum(t < healthy_end for t in raised)
    after = [t for t in raised if t >= healthy_end]
    first = after[0] if after else None
    active = bool(evs) and evs[-1].decision.active
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


def row(name: str, b: object, data: Path, healthy_end: float | None, failure: float | None,
        share: float) -> tuple[list, object, float, float]:
    """One machine: its healthy level against the bundle's detector, then both replays; the commissioned
    replay, its commissioning, the healthy span's end and the failure time."""
    from vibrawatch.agent.detect.healthy import Evidence, levels

    evs, comm = replay(b, data)
    t = np.array([e.t for e in evs])
    healthy_end = float(t[0] + (t[-1] - t[0]) / 2) if healthy_end is None else healthy_end
    failure = float(t[-1]) if failure is None else failure
    ev = Evidence.stack([e.evidence.rows()[0] for e in evs if e.t < healthy_end])
    healthy_lv = f"{np.median(levels(b.detector, ev)[0]):.2f}" if len(ev) else "- (no healthy span)"
    before = outcome(evs, comm, healthy_end, failure)
    evs_c, comm_c = replay(b, data, max(2, int(round(share * len(evs)))))
    after = outcome(evs_c, comm_c, healthy_end, failure)
    print(f"| {name} | {healthy_lv} | {fmt(before)} | {fmt(after)} | {after.note} |", flush=True)
    return evs_c, comm_c, healthy_end, failure


@dataclass
class Versus:
    """One detector over the replay after commissioning, on the same windows: the single-alarm counts the tables
    above use and the episode scoring of agent/detect/episodes.py (per channel)."""

    false_alarms: int  # channel alarms raised in the healthy span
    first_alarm_h: float | None  # the first raised after the healthy span
    lead_h: float | None
    warning_lead_h: float | None  # episodes: failure - the warning's start
    nuisance: int  # episodes: nuisance alarms in the healthy span


def versus(times: np.ndarray, active: np.ndarray, healthy_end: float, failure: float, rule: object) -> Versus:
    """Score the per-channel alarm states ``active`` (n, C) after each window at ``times``."""
    from vibrawatch.agent.detect.episodes import Scoring, cadence, from_active, merge_time, score

    eps = from_active(times, active)
    raised = np.array([e.raised for e in eps])
    after = raised[raised >= healthy_end]
    first = float(after.min()) if after.size else None
    sc = score(eps, Scoring(float(times[0]), float(times[-1]), active.shape[1],
                            merge_time(rule.clear_after, cadence(times)), failure, None, healthy_end))
    return Versus(int((raised < healthy_end).sum()), None if first is None else first / 3600,
                  None if first is None else (failure - first) / 3600,
                  None if sc.lead_s is None else sc.lead_s / 3600, sc.nuisance_in_healthy)


def rms_floors(evs: list, comm: object) -> tuple[list, np.ndarray, np.ndarray]:
    """The floor baseline (train/baselines.py ``floor_detection``) on the commissioning's own windows: each
    channel's RMS (the last frame of each window, what the gateway's floors read) against the max over the
    commissioning windows x the threshold rule's margin, each channel its own alarm by the bundle's alarm rule,
    run over the windows after commissioning. Those windows, their alarm states (n, C) and the thresholds."""
    from vibrawatch.agent.detect.decide import run_alarms
    from vibrawatch.agent.detect.threshold import fit_channel_thresholds

    d = comm.detector
    k = d.floor.features.index("rms")
    done = next(i for i, e in enumerate(evs) if e.calibration is not None) + 1
    rms = np.stack([e.evidence.floors[0, k] for e in evs])  # (n, C)
    thr = np.maximum(fit_channel_thresholds(rms[:done], d.threshold_rule), 1e-12)
    active = np.column_stack([[x.active for x in run_alarms(rms[done:, c], float(thr[c]), d.rule)]
                              for c in range(rms.shape[1])])
    return evs[done:], active, thr


def bundle_active(evs: list, n_ch: int) -> np.ndarray:
    """(n, C) the gateway's per-channel alarm states (the combined detector's verdicts; else its one alarm on
    the channel it named)."""
    out = np.zeros((len(evs), n_ch), dtype=bool)
    for i, e in enumerate(evs):
        if e.verdict is not None:
            out[i, list(e.verdict.active)] = True
        elif e.decision.active:
            out[i, max(e.decision.channel, 0)] = True
    return out


def parts(evs: list, i: int, comm: object, c: int) -> str:
    """Which part of the commissioned detector raised channel ``c`` at window ``i``: each part's level in units of
    its threshold, the largest over the ``raise_after`` windows the rule counted (> 1: above)."""
    from vibrawatch.agent.detect.healthy import Evidence, event_inputs

    d = comm.active
    k = d.rule.raise_after
    ev = Evidence.concat([e.evidence for e in evs[max(0, i - k + 1): i + 1]])
    sl, cl, ratios, z, lv, _, _ = event_inputs(d, ev)
    ae = ev.score / d.threshold
    pca = ev.pca_score / d.pca.threshold if d.pca is not None and ev.pca_score is not None else np.zeros(len(ev))
    verdict = max(float(e.verdict.evidence[c]) for e in evs[max(0, i - k + 1): i + 1] if e.verdict is not None)
    events = sorted({x.kind for e in evs[max(0, i - k + 1): i + 1] if e.verdict is not None
                     for x in e.verdict.events})
    return (f"ch {c} at {evs[i].t / 3600:.2f} h: verdict evidence {verdict:.2f}; AE score {ae.max():.2f}, "
            f"AE ch share {cl[:, c].max():.2f}, PCA score {pca.max():.2f}, floor ratio {ratios[:, c].max():.2f}, "
            f"own z {z[:, c].max():.2f}, log level {lv[:, c].max():+.2f}" + (f"; events {events}" if events else ""))


def ends(times: np.ndarray, active: np.ndarray, i: int) -> str:
    """When the channel alarm raised at window ``i`` cleared (or that it never did)."""
    off = np.flatnonzero(~active[i:])
    return "; still active at the end" if not off.size else f"; cleared at {times[i + off[0]] / 3600:.2f} h"


def compare(name: str, evs: list, comm: object, healthy_end: float, failure: float) -> tuple[str, list[str]]:
    """One row of the bundle-vs-floors table, and the parts behind each healthy-span alarm of the bundle."""
    post, floor_active, thr = rms_floors(evs, comm)
    times = np.array([e.t for e in post])
    rule = comm.detector.rule
    b_active = bundle_active(post, floor_active.shape[1])
    vb = versus(times, b_active, healthy_end, failure, rule)
    vf = versus(times, floor_active, healthy_end, failure, rule)

    def h(x: float | None) -> str:
        return "none" if x is None else f"{x:.2f} h"

    def f(v: Versus) -> str:
        return f"{v.false_alarms} | {h(v.first_alarm_h)} | {h(v.lead_h)} | {h(v.warning_lead_h)} | {v.nuisance}"

    why = []
    starts = np.vstack([b_active[:1], b_active[1:] & ~b_active[:-1]])
    for i, c in zip(*np.nonzero(starts), strict=True):
        if times[i] < healthy_end:
            why.append("bundle " + parts(post, int(i), comm, int(c)) + ends(times, b_active[:, c], int(i)))
    rms = np.stack([e.evidence.floors[0, comm.detector.floor.features.index("rms")] for e in post])
    starts = np.vstack([floor_active[:1], floor_active[1:] & ~floor_active[:-1]])
    for i, c in zip(*np.nonzero(starts), strict=True):
        if times[i] < healthy_end:
            k = comm.detector.rule.raise_after
            why.append(f"RMS floor ch {c} at {times[i] / 3600:.2f} h: RMS {rms[max(0, i - k + 1): i + 1, c].max():.3g} "
                       f"= {rms[max(0, i - k + 1): i + 1, c].max() / thr[c]:.2f}x its threshold"
                       + ends(times, floor_active[:, c], int(i)))
    thr_s = ", ".join(f"{x:.3g}" for x in thr)
    return f"| {name} | {len(post)} ({times[0] / 3600:.2f} h on) | {f(vb)} | {f(vf)} | {thr_s} |", why


def bundle(out: Path, name: str, data: Path, config: str) -> tuple[object, str]:
    """``name``.tar trained on the first half of ``data`` with ``config`` (reused when there: seeded, a rerun
    trains the same model) and loaded as the gateway loads it; how it was made."""
    from vibrawatch.agent.model.bundle import load_bundle

    tar = out / f"{name}.tar"
    t0 = time.perf_counter()
    reused = tar.exists()
    if not reused:
        (out / f"{name}.toml").write_text(config)
        vibrawatch("train", "--data", data, "--healthy-until", "50%", "--config", out / f"{name}.toml",
                   "--out", out / f"{name}_run", "--quiet")
        vibrawatch("convert", out / f"{name}_run", "--out", tar)
    b = load_bundle(tar)
    kind = "combined detector" if b.detector.combined else "autoencoder thresholds only (--plain)"
    return b, f"{kind}; {'reused ' + str(tar) if reused else f'trained in {time.perf_counter() - t0:.0f} s'}"


def sim(out: Path, share: float, plain: bool) -> None:
    from vibrawatch.agent.sources.loaders import save_snapshot_npz
    from vibrawatch.agent.sources.simulate import simulate_bearing_run

    ref = out / "sim_reference.npz"
    save_snapshot_npz(simulate_bearing_run(n_snapshots=SIM["snapshots"], snapshot_samples=SIM["samples"],
                                           onset=SIM["onset"], noise=0.07, seed=1), ref)
    b, how = bundle(out, "sim_plain" if plain else "sim", ref, SIM_CONFIG + (PLAIN if plain else ""))
    print(f"\nsimulator: trained on the reference machine (noise 0.07), {how}; "
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
        row(f"{name}, noise {noise}", b, data, onset_t, failure, share)


def femto(out: Path, share: float, plain: bool) -> None:
    runs = {"Bearing1_1": DATA / "femto" / "Learning_set_Bearing1_1.npz",
            "Bearing2_1": DATA / "femto" / "Learning_set_Bearing2_1.npz"}
    if not all(p.exists() for p in runs.values()):
        print(f"\nFEMTO: {DATA / 'femto'} not present; skipped")
        return
    bundles = {name: bundle(out, f"femto_{name}{'_plain' if plain else ''}", path, PLAIN if plain else "")
               for name, path in runs.items()}
    print(f"\nFEMTO: trained on the first half of one bearing (default model config, "
          f"{next(iter(bundles.values()))[1].split(';')[0]}), run on both; commissioning = first {share:.0%} of the "
          "run; healthy = first half")
    table_head("trained on -> run on")
    rows, why = [], []
    for train_name, (b, _) in bundles.items():
        for run_name, path in runs.items():
            name = f"{train_name} -> {run_name}"
            r, w = compare(name, *row(name, b, path, None, None, share))
            rows.append(r)
            why += [f"- {name}: {x}" for x in w]
    print(f"\nFEMTO, after the same commissioning (first {share:.0%}; healthy = first half): the commissioned "
          "bundle vs RMS floors fitted on its commissioning windows (max x margin, each channel its own alarm by "
          "the same rule); alarms counted per channel; warning lead and nuisance by agent/detect/episodes.py")
    print("| trained on -> run on | windows after commissioning | bundle: healthy-span alarms | first alarm after "
          "| lead | warning lead | nuisance | RMS floors: healthy-span alarms | first alarm after | lead "
          "| warning lead | nuisance | RMS thresholds (g) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\nHealthy-span alarms after commissioning; the bundle's with each part's level over its threshold, the "
          "floors' with the RMS over theirs (max over the windows the alarm rule counted):")
    print("\n".join(why) if why else "- none")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench_commissioning")
    ap.add_argument("--only", default="sim,femto")
    ap.add_argument("--share", type=float, default=0.25, help="commissioning length, share of each run")
    ap.add_argument("--plain", action="store_true", help="bundles without the combined detector")
    a = ap.parse_args()
    out = (ROOT / a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print("# bench/commissioning.py" + (" --plain" if a.plain else ""))
    if "sim" in a.only:
        sim(out, a.share, a.plain)
    if "femto" in a.only:
        femto(out, a.share, a.plain)


if __name__ == "__main__":
    main()
