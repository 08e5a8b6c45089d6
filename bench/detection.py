"""Detection benchmark: every detection result, trained and evaluated from the CLI, printed as one markdown table.

    .venv/bin/python bench/detection.py [--out runs/bench] [--only ims2,femto1_1] [--write-docs]
                                        [--scaling robust] [--baselines pyod|ecod,knn|none]
    .venv/bin/python bench/detection.py --seeded-faults [--write-docs]

The generality table (``GENERAL``: one default configuration, no per-run tuning, every run the project
has) compares the product with each of its baselines on every run: the warning's start, its lead, nuisance
alarms, AUC (docs/detection.md, "Scoring"), diagnosis. ``--write-docs`` puts it into docs/benchmarks.md between its
markers (the only part of that file this script writes; everything between them is regenerated, never edited
by hand).

The seeded faults (CWRU: the normal record then each fault record, ``seeded_fault_table``) and the diagnosis
confusion on the same records (bench/diagnosis.py) are a second section, between markers of their own;
``--seeded-faults`` runs only that, and a full ``--write-docs`` run writes both.

The outside baselines (``OUTSIDE``: PyOD's ECOD, COPOD, HBOS, LOF and KNN, the ``baselines`` extra, and ECOD's
statistic on the upper tails only, which tells what carried ECOD's lead) run on every case too (`vibrawatch
evaluate --baselines pyod`), fitted on the same healthy windows with the same threshold rule and alarm rule, and
get a second table of their own: the product must lead detectors it did not design.

Reads the real data sets from ../shared/data (never copied into the repo) and the built-in simulators.
Each case is exactly the `vibrawatch train` and `vibrawatch evaluate --json` commands shown in its row.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
IMS_HEALTHY = "2004-02-15 12:52:39"
BEGIN = "<!-- bench/detection.py: generality table (begin) -->"
END = "<!-- bench/detection.py: generality table (end) -->"
SEEDED_BEGIN = "<!-- bench/detection.py: seeded faults (begin) -->"
SEEDED_END = "<!-- bench/detection.py: seeded faults (end) -->"
# Simulated runs: 240 snapshots 10 min apart (40 h), bearing1 outer race from 70%; healthy: the first 40%.
SIM = ["--snapshots", "240", "--samples", "10240", "--onset", "0.7", "--seed", "7"]
SIMS = {
    "sim": [],
    "sim_transient": ["--step-channel", "2", "--step-at", "0.5", "--step-gain", "1.33", "--step-relax-s", "21600"],
    "sim_condition": ["--condition-at", "0.5", "--condition-gain", "1.3"],
    "sim_gap": ["--gap-at", "0.5", "--gap-s", "86400", "--gap-gain", "1.22", "--gap-spread", "0.04"],
}

# name -> (train args, evaluate args)
CASES: dict[str, tuple[list[str], list[str]]] = {
    "article_csv": (
        ["--data", f"{DATA}/ims/features/Averaged_BearingTest_Dataset.csv", "--healthy-until", IMS_HEALTHY],
        ["--data", f"{DATA}/ims/features/Averaged_BearingTest_Dataset.csv", "--failed", "Bearing 1"],
    ),
    "ims2": (
        ["--data", f"{DATA}/ims/2nd_test_full.npz", "--config", "configs/ims2.toml"],
        ["--data", f"{DATA}/ims/2nd_test_full.npz", "--failed", "bearing1"],
    ),
    "ims2_defaults": (
        ["--data", f"{DATA}/ims/2nd_test_full.npz", "--healthy-until", IMS_HEALTHY],
        ["--data", f"{DATA}/ims/2nd_test_full.npz", "--failed", "bearing1"],
    ),
    "femto1_1": (
        ["--data", f"{DATA}/femto/Learning_set_Bearing1_1.npz"],
        ["--data", f"{DATA}/femto/Learning_set_Bearing1_1.npz"],
    ),
    "femto2_1": (
        ["--data", f"{DATA}/femto/Learning_set_Bearing2_1.npz"],
        ["--data", f"{DATA}/femto/Learning_set_Bearing2_1.npz"],
    ),
    # the same runs with the rig's sensor layout declared (configs/femto.toml: both channels are one bearing)
    "femto1_1_layout": (
        ["--data", f"{DATA}/femto/Learning_set_Bearing1_1.npz", "--config", "configs/femto.toml"],
        ["--data", f"{DATA}/femto/Learning_set_Bearing1_1.npz"],
    ),
    "femto2_1_layout": (
        ["--data", f"{DATA}/femto/Learning_set_Bearing2_1.npz", "--config", "configs/femto.toml"],
        ["--data", f"{DATA}/femto/Learning_set_Bearing2_1.npz"],
    ),
    **{name: (["--data", f"{{out}}/{name}.npz", "--healthy-until", "40%"],
              ["--data", f"{{out}}/{name}.npz", "--failed", "bearing1"]) for name in SIMS},
    "lorenz_json": (
        ["--data", f"{DATA}/lorenz/watsoniotp.healthy.phase_aligned.json", "--healthy-until", "70%"],
        ["--data", f"{DATA}/lorenz/watsoniotp.broken.phase_aligned.json",
         "--normal-data", f"{DATA}/lorenz/watsoniotp.healthy.phase_aligned.json"],
    ),
    "lorenz_sim": (
        ["--data", "{out}/lorenz_healthy.npz", "--healthy-until", "70%"],
        ["--data", "{out}/lorenz_broken.npz", "--normal-data", "{out}/lorenz_healthy.npz"],
    ),
}


# The generality table: (case, what the row says about the run); one default configuration except that IMS raw
# also runs with configs/ims2.toml, the headline configuration (docs/benchmarks.md).
GENERAL = [
    ("ims2", "IMS test 2 raw, `configs/ims2.toml`"),
    ("ims2_defaults", "IMS test 2 raw, defaults"),
    ("article_csv", "IMS test 2 table (mean \\|x\\|), defaults"),
    ("femto1_1", "FEMTO Bearing1_1, defaults"),
    ("femto2_1", "FEMTO Bearing2_1, defaults"),
    ("femto1_1_layout", "FEMTO Bearing1_1, its sensor layout (`configs/femto.toml`)"),
    ("femto2_1_layout", "FEMTO Bearing2_1, its sensor layout (`configs/femto.toml`)"),
    ("sim", "simulator, defaults"),
    ("sim_transient", "simulator + one-channel transient (bearing3, +33%, relaxes over 6 h)"),
    ("sim_condition", "simulator + shared condition change (all x1.3)"),
    ("sim_gap", "simulator + a day's recording gap, every channel x1.17-1.27 after it"),
]
DETECTORS = [("product", "**product**"), ("autoencoder", "autoencoder"), ("pca", "PCA"),
             ("isolation_forest", "IsolationForest"), ("rms", "RMS floor"), ("mean_abs", "mean \\|x\\| floor"),
             ("table_value", "table floor")]
# The outside baselines' table (train/outside.py): each cell as in the generality table.
OUTSIDE = [("pyod_ecod", "ECOD (PyOD)"), ("pyod_copod", "COPOD (PyOD)"), ("pyod_hbos", "HBOS (PyOD)"),
           ("pyod_lof", "LOF (PyOD)"), ("pyod_knn", "KNN (PyOD)"), ("ecod_upper", "ECOD, upper tails only")]


def cell(r: dict | None) -> str:
    """'from 2004-02-16 03:12:39: 78.2 h, 0 nuisance, AUC 0.971' for one detector on one run (docs/detection.md,
    "Scoring": the warning is the alarm that lasted until the failure, every other alarm a nuisance)."""
    if not r:
        return "-"
    w = r.get("warning")
    lead = f"from {w['start']}: {r['lead_h']:.1f} h" if w else "no warning"
    nz = r.get("nuisance") or {}
    rate = f" ({nz['in_healthy']} in the healthy part: {nz['per_1000_h']:.1f}/1000 h)" if nz.get("in_healthy") else ""
    auc = f", AUC {r['auc']:.3f}" if r.get("auc") is not None else ""
    return f"{lead}, {nz.get('count', r.get('false_alarms'))} nuisance{rate}{auc}"


def general_table(reports: dict[str, dict]) -> str:
    """The generality table as markdown, from the evaluate reports of the GENERAL cases."""
    present = [k for k, _ in DETECTORS if any(k == "product" or k in r.get("baselines", {}) for r in reports.values())]
    heads = dict(DETECTORS)
    lines = ["| run | warning (product) | " + " | ".join(heads[k] for k in present)
             + " | diagnosis | transients / condition changes |",
             "|---|---|" + "---|" * len(present) + "---|---|"]
    for name, label in GENERAL:
        r = reports.get(name)
        if r is None:
            continue
        cells = [cell(r) if k == "product" else cell(r.get("baselines", {}).get(k)) for k in present]
        dg, found = r.get("diagnosis"), r.get("diagnosed")
        diag = "-" if dg is None else (f"{found['defect'].upper()} x{found['ratio']:.2f} at {found['at']}" if found
                                      else f"none stands out (x{dg['ratio']:.2f})")
        ev = f"{len(r.get('transients', []))} / {len(r.get('condition_changes', []))}"
        w = r.get("warning")
        first = f"{w['start']} ({w['channel']})" if w else "none"
        lines.append(f"| {label} | {first} | " + " | ".join(cells) + f" | {diag} | {ev} |")
    return "\n".join(lines)


def outside_table(reports: dict[str, dict]) -> str:
    """The outside baselines beside the product on every GENERAL case that ran them ('' if none did), and the
    longest lead among them that had no nuisance alarm, which the product's lead must beat."""
    present = [k for k, _ in OUTSIDE if any(k in r.get("baselines", {}) for r in reports.values())]
    if not present:
        return ""
    heads = dict(OUTSIDE)
    lines = ["| run | **product** | " + " | ".join(heads[k] for k in present)
             + " | best clean outside lead | product's lead at least it, no nuisance |",
             "|---|---|" + "---|" * len(present) + "---|---|"]
    for name, label in GENERAL:
        r = reports.get(name)
        if r is None or not any(k in r.get("baselines", {}) for k in present):
            continue
        base = r["baselines"]
        clean = [base[k]["lead_h"] for k in present if k in base and base[k].get("lead_h") is not None
                 and (base[k].get("nuisance") or {}).get("count") == 0]
        best = max(clean) if clean else None
        mine = r.get("lead_h") if (r.get("nuisance") or {}).get("count") == 0 else None
        leads = "-" if best is None else ("**no**" if mine is None or mine < best else "yes" if mine > best
                                          else "level")  # the bar: at least every baseline's lead (issue 20)
        lines.append(f"| {label} | {cell(r)} | " + " | ".join(cell(base.get(k)) for k in present)
                     + f" | {'-' if best is None else f'{best:.1f} h'} | {leads} |")
    return "\n".join(lines)


def write_docs(table: str, header: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace what is between docs/benchmarks.md's markers ``begin`` ... ``end`` with the table; the rest of the
    file is untouched."""
    target = ROOT / "docs" / "benchmarks.md"
    text = target.read_text()
    if begin not in text or end not in text:
        sys.exit(f"docs/benchmarks.md has no markers {begin!r} ... {end!r}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    target.write_text(f"{head}{begin}\n{header}\n\n{table}\n{end}{tail}")


def doc_header(how: str) -> str:
    """'Generated by `bench/detection.py <how>` on <host> (<cores> cores, Python <version>)'."""
    import platform

    return (f"Generated by `bench/detection.py {how}` on {platform.node() or 'this machine'} ({os.cpu_count()} "
            f"cores, Python {platform.python_version()})")


def seeded_section(out: Path) -> str:
    """The seeded-fault table and the diagnosis confusion on the same records (bench/diagnosis.py)."""
    import diagnosis  # bench/diagnosis.py, beside this script

    return (seeded_fault_table(out) + "\n\nDiagnosis on the same records (`bench/diagnosis.py`, the product's own "
            "diagnosis code; [detection.md](detection.md) says how it names):\n\n" + diagnosis.report())


def with_scaling(train_args: list[str], scaling: str, path: Path) -> list[str]:
    """The case's train arguments with ``[features] scaling`` set: its --config (if any) copied to ``path`` with
    the key added, so a scaling variant runs every case exactly as the default does otherwise."""
    args = list(train_args)
    text = ""
    if "--config" in args:
        i = args.index("--config") + 1
        text, args[i] = (ROOT / args[i]).read_text(), str(path)
    else:
        args += ["--config", str(path)]
    line = f'scaling = "{scaling}"'
    text = text.replace("[features]\n", f"[features]\n{line}\n", 1) if "[features]\n" in text \
        else f"{text}\n[features]\n{line}\n"
    path.write_text(text)
    return args


def vibrawatch(*args: str) -> str:
    """Run the CLI as a user would; stop the benchmark with its message if it fails."""
    cmd = [str(Path(sys.executable).with_name("vibrawatch")), *args]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"failed: {shlex.join(cmd)}\n{res.stderr[-2000:]}")
    return res.stdout


def row(name: str, r: dict, seconds: float) -> str:
    """One case: the product's warning, lead, nuisance alarms and AUC, the level floors' leads, how it was scored."""
    base = r.get("baselines", {})
    floors = [k for k in ("rms", "mean_abs", "table_value") if isinstance(base.get(k), dict)]
    floor = " / ".join(f"{base[k]['lead_h']} h, {base[k]['nuisance']['count']} nuisance"
                       if base[k].get("lead_h") is not None else f"none, {base[k]['nuisance']['count']} nuisance"
                       for k in floors) or "-"
    w = r.get("warning")
    nz = r.get("nuisance", {})
    sc = r.get("scoring", {})
    return (f"| {name} | {w['start'] if w else 'none'} | {r['lead_h'] if w else 'none'} | "
            f"{w['channel'] if w else '-'} | {nz.get('count')} ({nz.get('per_1000_h')}) | {r.get('auc')} | {floor} | "
            f"{sc.get('healthy_until') or '-'} ({sc.get('healthy_from') or 'not known'}) | {seconds:.0f} s |")


# Seeded faults (CWRU drive end, 12 kHz, 0 hp; ../shared/data/cwru/PROVENANCE.md): each record follows the normal
# record as one continuous run, cut into snapshots of SEEDED_SNAPSHOT samples (one default frame each).
SEEDED_SNAPSHOT = 1024
SEEDED_HEALTHY = "60%"  # of the normal record: trained on; its remaining 40% is healthy data the model never saw


def seeded_records() -> list[str]:
    """The seeded-fault records present, fault files in name order (the normal record is the reference)."""
    return sorted(p.stem for p in (DATA / "cwru").glob("12k_Drive_End_*.mat"))


def seeded_npz(out: Path, name: str | None) -> Path:
    """``normal`` (brought from 48 to 12 kHz: anti-aliased FIR decimation by 4) alone, or followed by record
    ``name``, as one run of snapshots SEEDED_SNAPSHOT samples long and as far apart; channels drive_end and
    fan_end (the normal record has no base accelerometer). Labels: 1 on the fault record's snapshots."""
    import numpy as np
    from scipy.signal import decimate

    from vibrawatch.agent.detect.recording import Recording
    from vibrawatch.agent.sources.loaders import save_snapshot_npz
    from vibrawatch.train.cwru import load_cwru_mat

    normal = load_cwru_mat(DATA / "cwru" / "normal_0_97.mat", fs_hz=48000.0)
    parts = [decimate(normal.data[0, :, :2].astype(np.float64), 4, ftype="fir", axis=0, zero_phase=True)]
    if name is not None:
        parts.append(load_cwru_mat(DATA / "cwru" / f"{name}.mat").data[0, :, :2].astype(np.float64))
    snaps = [x[: len(x) // SEEDED_SNAPSHOT * SEEDED_SNAPSHOT].reshape(-1, SEEDED_SNAPSHOT, 2) for x in parts]
    labels = np.concatenate([np.full(len(x), i) for i, x in enumerate(snaps)])
    data = np.concatenate(snaps).astype(np.float32)
    path = out / f"cwru_{name or 'normal'}.npz"
    save_snapshot_npz(Recording(data, np.arange(len(data)) * SEEDED_SNAPSHOT / 12000.0, 12000.0,
                                ("drive_end", "fan_end"), path.stem, relative_time=True, labels=labels), path)
    return path


SEEDED_PROTOCOLS = {
    # what a commissioning on the whole normal record gives: every fault against all the healthy data there is
    "whole": "100%",
    # healthy data the model never saw: its last 40% (about 2 s) is scored as the normal record
    "held_out": SEEDED_HEALTHY,
}


def seeded_alarm(episodes: list[dict], start: float) -> tuple[str, int]:
    """From a run's alarm episodes: the time from the fault's first sample ``start`` to the first alarm on the
    fault's data (raised on it, or raised before and not cleared by then), and the alarms raised before it."""
    on = [max(e["raised_s"], start) for e in episodes if e["cleared_s"] is None or e["cleared_s"] > start]
    before = sum(1 for e in episodes if e["raised_s"] < start)
    held = any(e["raised_s"] < start and (e["cleared_s"] is None or e["cleared_s"] > start) for e in episodes)
    return ("none" if not on else f"{min(on) - start:.2f} s" + (" (already in alarm)" if held else "")), before


def seeded_fault_table(out: Path) -> str:
    """Train on the normal record (defaults, no config) two ways, ``SEEDED_PROTOCOLS``, then evaluate every
    normal + fault run: per record the drive end's RMS step, the time from the fault's first sample to the
    product's first alarm and to the RMS floor's, what the event layer read, and alarms raised on the normal
    record."""
    import numpy as np

    from vibrawatch.agent.sources.loaders import load

    out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for proto, share in SEEDED_PROTOCOLS.items():
        runs[proto] = out / f"cwru_run_{proto}"
        vibrawatch("train", "--data", str(seeded_npz(out, None)), "--healthy-until", share, "--out",
                   str(runs[proto]), "--quiet")
    window_s = json.loads((runs["whole"] / "run.json").read_text())["window"]["length"] * SEEDED_SNAPSHOT / 12000.0
    lines = ["| record | RMS step (drive end, fan end) | whole normal record: product | RMS floor | events "
             "(product) | first 60%: product | RMS floor |",
             "|---|---|---|---|---|---|---|"]
    normal = {proto: [] for proto in SEEDED_PROTOCOLS}
    for name in seeded_records():
        data = seeded_npz(out, name)
        rec = load(data)
        fault = rec.labels.astype(bool)
        start = float(rec.timestamps[int(np.argmax(fault))])
        rms = np.sqrt(np.mean(np.square(rec.data, dtype=np.float64), axis=1))
        ratio = np.median(rms[fault], axis=0) / np.median(rms[~fault], axis=0)
        cells = [f"x{ratio[0]:.2f}, x{ratio[1]:.2f}"]
        for proto, run in runs.items():
            r = json.loads(vibrawatch("evaluate", str(run), "--data", str(data), "--json", "--quiet"))
            mine, floor = seeded_alarm(r["episodes"], start), seeded_alarm(r["baselines"]["rms"]["episodes"], start)
            normal[proto].append((mine[1], floor[1]))
            cells += [mine[0], floor[0]]
            if proto == "whole":
                events = [f"condition change at {c['at']}" for c in r["condition_changes"]]
                events += [f"transient on {t['channel']}" for t in r["transients"]]
                cells.append(", ".join(events) or "-")
        lines.append(f"| {name.removeprefix('12k_Drive_End_')} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    said = "; ".join(f"{proto} ({SEEDED_PROTOCOLS[proto]} of it healthy): product {max(p for p, _ in n)}, RMS "
                     f"floor {max(f for _, f in n)}" for proto, n in normal.items())
    return "\n".join(lines) + (f"\n\nOne window is {window_s:.2f} s (1 frame = {SEEDED_SNAPSHOT} samples at 12 kHz, "
                               f"T = 10 frames). Alarms raised on the normal record (the same record before every "
                               f"fault): {said}.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench", help="where the runs go (default runs/bench)")
    ap.add_argument("--only", default="", help="comma-separated case names: " + ", ".join(CASES))
    ap.add_argument("--write-docs", action="store_true", help="write the generality table into docs/benchmarks.md")
    ap.add_argument("--scaling", choices=("minmax", "robust"), help="train every case with this [features] "
                    "scaling (default: each case's own config, min-max unless it says otherwise)")
    ap.add_argument("--baselines", default="pyod", help="outside baselines for every case's evaluate: pyod (all "
                    "five, the default), some of ecod,copod,hbos,lof,knn, or none")
    ap.add_argument("--seeded-faults", action="store_true", help="only the seeded-fault and diagnosis tables "
                    "(../shared/data/cwru; --write-docs writes them too, and a full --write-docs run does both)")
    a = ap.parse_args()
    if a.seeded_faults or a.write_docs and not a.only:
        section = seeded_section((ROOT / a.out).resolve() / "cwru")
        print(section)
        if a.write_docs:
            write_docs(section, doc_header("--seeded-faults --write-docs") + ".", SEEDED_BEGIN, SEEDED_END)
        if a.seeded_faults:
            return
    out = (ROOT / a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in a.only.split(",") if n] or list(CASES)
    if "lorenz_sim" in names:
        for kind in ("healthy", "broken"):
            vibrawatch("simulate", "lorenz", "--kind", kind, "--out", str(out / f"lorenz_{kind}.npz"))
    for name, extra in SIMS.items():
        if name in names:
            vibrawatch("simulate", "bearing", "--out", str(out / f"{name}.npz"), *SIM, *extra)
    rows = ["| case | warning | lead h | channel | nuisance (per 1000 h) | AUC | floors: lead, nuisance | "
            "known healthy until | train+evaluate |",
            "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(rows))
    reports: dict[str, dict] = {}
    for name in names:
        train_args, eval_args = (
            [s.replace("{out}", str(out)) for s in part] for part in CASES[name]
        )
        if a.scaling:
            train_args = with_scaling(train_args, a.scaling, out / f"{name}.toml")
        t0 = time.perf_counter()
        vibrawatch("train", *train_args, "--out", str(out / name), "--quiet")
        outside = [] if a.baselines.strip().lower() in ("", "none") else ["--baselines", a.baselines]
        report = json.loads(vibrawatch("evaluate", str(out / name), *eval_args, *outside, "--json", "--quiet"))
        reports[name] = report
        rows.append(row(name, report, time.perf_counter() - t0))
        print(rows[-1], flush=True)
    table = general_table(reports)
    print("\n" + table)
    others = outside_table(reports)
    if others:
        print("\n" + others)
    if a.write_docs:
        header = (doc_header("--write-docs") + "; every case as `vibrawatch train` then `vibrawatch evaluate --json` "
                  "(arguments in `bench/detection.py`).")
        general = ("Generality: the product (the combined detector, the default) against each of its baselines "
                   "on every run, one configuration, no per-run tuning. Each cell: the warning (the alarm that lasted "
                   "until the failure) and its lead, nuisance alarms (every other alarm; per 1,000 healthy "
                   "machine-hours), AUC of the detector's alarm level. Diagnosis: the first alarm's defect "
                   "frequency, when it first stood out.")
        outside = ("Outside baselines: PyOD's detectors (`vibrawatch evaluate --baselines pyod`) on the same "
                   "min-max scaled windows as IsolationForest, fitted on the same healthy windows, threshold by the "
                   "run's rule (the highest healthy score x its margin), the same alarm rule, one alarm for the "
                   "machine; ECOD, upper tails only: ECOD's sum of tail improbabilities over the upper tails alone "
                   "(train/outside.py), which tells a lead carried by vibration that rose from one carried by "
                   "vibration that fell below the healthy period. The product's lead must be at least the longest of "
                   "theirs that had no nuisance alarm.")
        tail = f"\n\n{outside}\n\n{others}" if others else ""
        write_docs("\n".join(rows) + "\n\n" + general + "\n\n" + table + tail, header)


if __name__ == "__main__":
    main()
