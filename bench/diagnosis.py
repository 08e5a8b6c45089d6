"""Diagnosis confusion on the CWRU seeded faults (workstation; numpy/scipy; reads ../shared/data/cwru, never copies it).

The healthy statistic is the median over the normal record's frames (drive end, brought from 48 to 12 kHz as
bench/detection.py's ``seeded_npz`` does); every record's frames are then diagnosed by the product's own code
(``envelope_energies`` and ``Diagnosis.diagnose``, as the gateway does): per record the name given on the median
statistic over its frames, and the share of its frames named each way. Frames of 4096 samples at 12 kHz by default
(2.93 Hz bins: the shortest ``frame_needed`` allows for FTF 11.9 Hz; docs/detection.md, "Diagnosis").

    .venv/bin/python bench/diagnosis.py [--frame 4096] [--hop 1024] [--own-lines]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CWRU = ROOT.parent / "shared" / "data" / "cwru"
FS = 12000.0
SHAFT_HZ = 1797.0 / 60.0
# ../shared/data/cwru/PROVENANCE.md: SKF 6205-2RS, 9 balls, 0.3126 in balls on a 1.537 in pitch, contact 0
GEOMETRY = {"shaft_hz": SHAFT_HZ, "n_balls": 9, "ball_diameter": 0.3126, "pitch_diameter": 1.537,
            "contact_angle_deg": 0.0}
FAULTS = {"IR": "inner", "OR": "outer", "B0": "ball"}
TRUE_ROWS = ("inner", "outer", "ball", "none")
NAMED = {"bpfo": "outer race", "bpfi": "inner race", "bsf": "ball", "ftf": "cage", None: "none"}
COLUMNS = ("outer race", "inner race", "ball", "cage", "none")


def drive_end(name: str) -> np.ndarray:
    """The drive-end signal of record ``name`` at 12 kHz (the 48 kHz normal record decimated by 4, FIR)."""
    from scipy.signal import decimate

    from vibrawatch.train.cwru import load_cwru_mat

    if name == "normal_0_97":
        x = load_cwru_mat(CWRU / f"{name}.mat", fs_hz=48000.0).data[0, :, 0].astype(np.float64)
        return decimate(x, 4, ftype="fir", zero_phase=True)
    return load_cwru_mat(CWRU / f"{name}.mat").data[0, :, 0].astype(np.float64)


def frames_of(x: np.ndarray, frame: int, hop: int) -> np.ndarray:
    """(n, frame, 1) frames ``hop`` apart."""
    starts = np.arange(0, len(x) - frame + 1, hop)
    return x[starts[:, None] + np.arange(frame)][:, :, None].astype(np.float32)


def records() -> list[str]:
    return ["normal_0_97"] + sorted(p.stem for p in CWRU.glob("12k_Drive_End_*.mat"))


def truth(name: str) -> str:
    return "none" if name.startswith("normal") else FAULTS[name.split("_")[3][:2]]


def confusion(frame: int = 4096, hop: int = 1024, own_lines: bool = False) -> list[dict]:
    """Per record: its true fault, the name on its median statistic, the ratios that decided, and the share of
    its frames named each way. The normal record's healthy statistic is fitted on its own frames (all of them:
    CWRU has one healthy record), so its row says whether a healthy machine's frames are named."""
    from vibrawatch.agent.detect.diagnosis import envelope_energies
    from vibrawatch.agent.detect.features import FeatureSpec
    from vibrawatch.train.config import DiagnosisConfig
    from vibrawatch.train.product import diagnosis_from_config

    dg = diagnosis_from_config(DiagnosisConfig(**GEOMETRY, own_lines=own_lines), FS, frame, 1)
    spec = FeatureSpec(FS, frame, ("drive_end",), ())
    stats = {n: envelope_energies(frames_of(drive_end(n), frame, hop), spec, dg) for n in records()}
    dg = replace(dg, healthy=np.median(stats["normal_0_97"], axis=0))
    out = []
    for name, e in stats.items():
        d = dg.diagnose(np.median(e, axis=0), 0)
        per_frame = [NAMED[dg.diagnose(f, 0)["defect"]] for f in e]
        out.append({"record": name, "truth": truth(name), "named": NAMED[d["defect"]], "ratios": d["ratios"],
                    "frames": len(e), "shares": {c: per_frame.count(c) / len(e) for c in COLUMNS}})
    return out


def at_alarm(frame: int = 4096, window: int = 6, own_lines: bool = False) -> list[dict]:
    """As a gateway diagnoses an alarm: the mean statistic over ``window`` consecutive frames (not overlapping,
    ``frame`` samples each), per record the share of its windows named each way, and the share the cage would
    have been named without the rule that it needs evidence of its own."""
    from vibrawatch.agent.detect.diagnosis import envelope_energies
    from vibrawatch.agent.detect.features import FeatureSpec
    from vibrawatch.train.config import DiagnosisConfig
    from vibrawatch.train.product import diagnosis_from_config

    dg = diagnosis_from_config(DiagnosisConfig(**GEOMETRY, own_lines=own_lines), FS, frame, 1)
    spec = FeatureSpec(FS, frame, ("drive_end",), ())
    stats = {n: envelope_energies(frames_of(drive_end(n), frame, frame), spec, dg) for n in records()}
    dg = replace(dg, healthy=np.median(stats["normal_0_97"], axis=0))
    out = []
    for name, e in stats.items():
        w = e[: len(e) // window * window].reshape(-1, window, *e.shape[1:]).mean(axis=1)
        ds = [dg.diagnose(m, 0) for m in w]
        names = [NAMED[d["defect"]] for d in ds]
        old_cage = sum(max(d["ratios"], key=d["ratios"].get) == "ftf" and d["ratio"] >= dg.min_ratio
                       and d["ratio"] >= dg.margin * max(sorted(d["ratios"].values())[-2], 1.0) for d in ds)
        out.append({"record": name, "truth": truth(name), "windows": len(w),
                    "shares": {c: names.count(c) / len(w) for c in COLUMNS}, "cage_without_rule": old_cage / len(w)})
    return out


def table(rows: list[dict]) -> str:
    """The confusion table: true fault rows, named columns, records counted on their median statistic."""
    lines = ["| true \\ named | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for t in TRUE_ROWS:
        mine = [r for r in rows if r["truth"] == t]
        lines.append(f"| {t} ({len(mine)}) | " + " | ".join(str(sum(r["named"] == c for r in mine)) for c in COLUMNS)
                     + " |")
    return "\n".join(lines)


def wrong(rows: list[dict]) -> list[str]:
    """Records named something other than their fault ('none' is silent, never wrong)."""
    right = {"inner": "inner race", "outer": "outer race", "ball": "ball", "none": "none"}
    return [r["record"] for r in rows if r["named"] not in ("none", right[r["truth"]])]


def report(frame: int = 4096, hop: int = 1024, own_lines: bool = False, window: int = 3) -> str:
    """Everything this benchmark prints: the confusion table, each record's ratios and shares, the wrongly named
    records, and (``window`` > 0) the names given at an alarm, as markdown."""
    rows = confusion(frame, hop, own_lines)
    out = [f"frames of {frame} samples at 12 kHz ({FS / frame:.2f} Hz bins), {hop} apart; drive end; "
           f"healthy = median over the normal record's frames\n", table(rows) + "\n",
           "| record | true | named (median) | ratios bpfo / bpfi / bsf / ftf | share of frames o/i/b/c/none |",
           "|---|---|---|---|---|"]
    for r in rows:
        ra = " / ".join(f"{v:.2f}" for v in r["ratios"].values())
        sh = " / ".join(f"{r['shares'][c]:.2f}" for c in COLUMNS)
        out.append(f"| {r['record']} | {r['truth']} | {r['named']} | {ra} | {sh} ({r['frames']}) |")
    bad = wrong(rows)
    out.append(f"\nwrongly named: {', '.join(bad) if bad else 'none'}")
    if window:
        out += [f"\nAt an alarm: the mean over {window} consecutive frames of {frame} samples (not overlapping)\n",
                "| record | true | share of windows o/i/b/c/none | cage without its own-evidence rule |",
                "|---|---|---|---|"]
        for r in at_alarm(frame, window, own_lines):
            sh = " / ".join(f"{r['shares'][c]:.2f}" for c in COLUMNS)
            out.append(f"| {r['record']} | {r['truth']} | {sh} ({r['windows']}) | {r['cage_without_rule']:.2f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frame", type=int, default=4096,
                    help="frame length, samples at 12 kHz (default 4096: the shortest that resolves the lines)")
    ap.add_argument("--hop", type=int, default=1024, help="samples between frame starts (default 1024)")
    ap.add_argument("--own-lines", action="store_true", help="[diagnosis] own_lines = true (docs/detection.md)")
    ap.add_argument("--window", type=int, default=3, help="frames per alarm window for the at-alarm table (0: none)")
    a = ap.parse_args()
    print(report(a.frame, a.hop, a.own_lines, a.window))


if __name__ == "__main__":
    main()
