"""Detection benchmark: every README result, trained and evaluated from the CLI, printed as one markdown table.

    .venv/bin/python bench/detection.py [--out runs/bench] [--only ims2,femto1_1]

Reads the real data sets from ../shared/data (never copied into the repo) and the built-in simulators.
Each case is exactly the `vibrawatch train` and `vibrawatch evaluate --json` commands shown in its row.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
IMS_HEALTHY = "2004-02-15 12:52:39"

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


def vibrawatch(*args: str) -> str:
    """Run the CLI as a user would; stop the benchmark with its message if it fails."""
    cmd = [str(Path(sys.executable).with_name("vibrawatch")), *args]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"failed: {shlex.join(cmd)}\n{res.stderr[-2000:]}")
    return res.stdout


def row(name: str, r: dict, seconds: float) -> str:
    base = r.get("baselines", {})
    floor = " / ".join(
        f"{base[k]['lead_hours']} h" if base.get(k, {}).get("lead_hours") is not None else "none"
        for k in ("rms", "mean_abs")
        if k in base
    ) or ("none" if "table_value" not in base else f"{base['table_value']['lead_hours']} h (table)")
    lead = f"{r['lead_hours']} h" if r.get("lead_hours") is not None else "none"
    auc = f", AUC {r['auc']}" if r.get("auc") is not None else ""
    return (f"| {name} | {r.get('first_alarm')} | {lead} | {r.get('alarm_channel')} | {r['false_alarms']} | "
            f"{floor}{auc} | {seconds:.0f} s |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench", help="where the runs go (default runs/bench)")
    ap.add_argument("--only", default="", help="comma-separated case names: " + ", ".join(CASES))
    a = ap.parse_args()
    out = (ROOT / a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in a.only.split(",") if n] or list(CASES)
    if "lorenz_sim" in names:
        for kind in ("healthy", "broken"):
            vibrawatch("simulate", "lorenz", "--kind", kind, "--out", str(out / f"lorenz_{kind}.npz"))
    print("| case | first alarm | lead | channel | false alarms | floor RMS / mean\\|x\\| | train+evaluate |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        train_args, eval_args = (
            [s.replace("{out}", str(out)) for s in part] for part in CASES[name]
        )
        t0 = time.perf_counter()
        vibrawatch("train", *train_args, "--out", str(out / name), "--quiet")
        report = json.loads(vibrawatch("evaluate", str(out / name), *eval_args, "--json", "--quiet"))
        print(row(name, report, time.perf_counter() - t0), flush=True)


if __name__ == "__main__":
    main()
