"""What ``[commissioning] keep`` costs and saves: the fit on a subsample against every window, and the memory
and bytes written of a 24 h commissioning at 3 and 20 windows a second.

    nice .venv/bin/python bench/commissioning_keep.py [--out runs/bench_commissioning] [--windows 16000]

- fit: bench/commissioning.py's simulator bundle (the default combined detector, trained on the reference
  machine; reused from ``--out`` when there) on a sister machine's healthy run: ``--windows`` windows from
  the gateway's pipeline. Each fitted number group is compared between a commissioning that keeps every
  window and ones whose ``keep`` leaves every 4th, 16th and 128th window (the strides a 24 h commissioning
  ends with at keep = 20000: 3 windows/s -> 16, 20 windows/s -> 128), fitted by the streaming
  ``Commissioning`` (checked equal to the batch twin).
- cost: the streaming ``Commissioning`` with its state files in a temporary directory, fed 24 h of windows
  (those windows again, their times at 3 and 20 a second) with its once-a-minute save on window time.
  Bytes written = the process's write() bytes (/proc/self/io wchar); memory = the EvidenceLog's arrays and
  the peak Python allocation while commissioning (tracemalloc). "Before" (every window kept, the previous
  format: one JSON object with keys per window) is computed from the same windows: lines x their bytes,
  windows x 8 bytes a number.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from commissioning import ROOT, SIM, SIM_CONFIG, bundle  # noqa: E402

from vibrawatch.agent.detect.calibrate import KEEP, CommissioningSection, commission, fitted_parts
from vibrawatch.agent.detect.decide import Decision  # noqa: E402
from vibrawatch.agent.detect.healthy import Evidence  # noqa: E402
from vibrawatch.agent.detect.results import Scored
from vibrawatch.agent.model.commission import Commissioning  # noqa: E402
from vibrawatch.agent.model.commission_windows import row_shapes  # noqa: E402
from vibrawatch.agent.pipeline import Pipeline  # noqa: E402
from vibrawatch.agent.sources.simulate import BearingSimulator, simulate_bearing_run  # noqa: E402
from vibrawatch.agent.sources.source import Chunk  # noqa: E402


def healthy_windows(b: object, n: int) -> Evidence:
    """n windows of a sister machine (noise 0.07, seed 2) that stays healthy, through the gateway's pipeline."""
    sim = BearingSimulator(n_snapshots=10**9, snapshot_samples=SIM["samples"], onset=0.99, noise=0.07, seed=2)
    p = Pipeline(b)
    evs: list[Evidence] = []
    i = 0
    while len(evs) < n:
        for e in p.process(Chunk(sim.snapshot(i), i * sim.interval_s, new_segment=True)):
            if isinstance(e, Scored) and e.evidence is not None:
                evs.append(e.evidence)
        i += 1
    return Evidence.concat(evs[:n])


def stream(b: object, ev: Evidence, cfg: CommissioningSection, state: Path | None = None) -> Commissioning:
    """Every window through the streaming commissioning (without the decider: the same windows reach it)."""
    comm = Commissioning.open(b.detector, b.version, cfg, state) if state else Commissioning(b.detector, b.version, cfg)
    quiet = Decision(above=False, active=False, event=None, channel=None, level=0.0)
    for i in range(len(ev)):
        one = ev.window(slice(i, i + 1))
        comm.window(Scored(float(one.t[0]), float(one.score[0]), 0.0, one.contributions[0], quiet, None,
                           evidence=one))
    return comm


def numbers(d: object) -> dict[str, np.ndarray]:
    return {f"{k}.{f}": np.asarray(v, float) for k, part in fitted_parts(d).items() for f, v in part.items()
            if f != "features"}


def fit_table(b: object, ev: Evidence) -> dict[str, object]:
    n = len(ev)
    full = stream(b, ev, CommissioningSection(windows=n, keep=n)).calibration
    assert full is not None and full.state == "commissioned"
    ref = numbers(full.detector)
    dets: dict[str, object] = {f"every window ({n})": full.detector}
    cols = []
    for stride in (4, 16, 128):
        keep = -(-n // stride)
        cfg = CommissioningSection(windows=n, keep=keep)
        cal = stream(b, ev, cfg).calibration
        batch, _ = commission(ev, b.detector, cfg, b.version)
        assert cal is not None and batch is not None and cal.detector.to_dict() == batch.detector.to_dict()
        cols.append((stride, keep, numbers(cal.detector)))
        dets[f"every {stride}th (keep {keep})"] = cal.detector
    print(f"\nfit on every window ({n}) vs on the kept ones: relative difference (kept - all) / |all|, the "
          "element furthest from 0 of each group (and how many of its elements came out lower/higher)\n")
    print("| fitted numbers | statistic | " + " | ".join(f"every {s}th (keep {k})" for s, k, _ in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    kind = {"threshold.value": "max x margin", "threshold.channels": "max x margin",
            "floor.thresholds": "max x margin", "floor.median": "median", "floor.step": "max jump x 1.5",
            "pca.threshold": "max x margin", "pca.channel_thresholds": "max x margin", "own.center": "median",
            "own.spread": "max abs deviation", "diagnosis.healthy": "median"}
    for key, a in ref.items():
        cells = []
        for _, _, got in cols:
            rel = (got[key] - a) / np.maximum(np.abs(a), 1e-300)
            worst = float(rel.flat[np.argmax(np.abs(rel))])
            cells.append(f"{worst:+.2%} ({int((rel < 0).sum())} lower, {int((rel > 0).sum())} higher of {rel.size})")
        print(f"| {key} | {kind.get(key, '')} | " + " | ".join(cells) + " |")
    return dets


def alarm_table(dets: dict[str, object], ev: Evidence) -> None:
    """What the tighter numbers do: each commissioned detector decides the same machine's next healthy windows."""
    from vibrawatch.agent.pipeline import Decider

    print(f"\nthe same machine's next {len(ev)} healthy windows, decided by each commissioned detector\n")
    print("| commissioned on | alarms raised | windows above 1 (level) | highest level |")
    print("|---|---|---|---|")
    for name, d in dets.items():
        dec = Decider(d)
        out = [dec.window(ev.window(slice(i, i + 1))) for i in range(len(ev))]
        got = [o for o in out if o is not None]
        raised = sum(o.decision.event == "raised" for o in got)
        above = sum(o.level > 1.0 for o in got)
        print(f"| {name} | {raised} | {above} | {max(o.level for o in got):.2f} |")


def wchar() -> int:
    return int(next(x for x in Path("/proc/self/io").read_text().splitlines() if x.startswith("wchar")).split()[1])


def numbers_a_window(b: object, ev: Evidence) -> int:
    return sum(np.asarray(getattr(ev, k)[0]).size for k in row_shapes(b.detector))


def cost(b: object, ev: Evidence, rate: float, hours: float = 24.0, keep: int = KEEP) -> dict[str, float]:
    """A ``hours`` commissioning at ``rate`` windows a second: bytes written per hour and memory."""
    n = int(hours * 3600 * rate)
    cfg = CommissioningSection(windows=n, keep=keep)
    clock = [0.0]
    real = time.monotonic
    time.monotonic = lambda: clock[0]  # type: ignore[assignment]  # saves once a minute of window time
    quiet = Decision(above=False, active=False, event=None, channel=None, level=0.0)
    per_hour: list[int] = []
    rewrites: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "calibration.json"
        tracemalloc.start()
        w0 = wchar()
        comm = Commissioning.open(b.detector, b.version, cfg, state)
        try:
            hour_start = w0
            for i in range(n):
                t = i / rate
                clock[0] = t
                one = replace(ev.window(slice(i % len(ev), i % len(ev) + 1)), t=np.array([t]))
                stride = comm.log.stride
                t0 = time.perf_counter()
                comm.window(Scored(t, float(one.score[0]), 0.0, one.contributions[0], quiet, None, evidence=one))
                if comm.calibration is None and comm.log.stride != stride:
                    rewrites.append(time.perf_counter() - t0)
                if (i + 1) % int(3600 * rate) == 0:
                    w = wchar()
                    per_hour.append(w - hour_start)
                    hour_start = w
                if i == n - 2:
                    arrays = comm.log.nbytes
                    kept, stride_end = len(comm.log), comm.log.stride
                    size = comm.windows_file.stat().st_size if comm.windows_file.exists() else 0  # type: ignore[union-attr]
            _, peak = tracemalloc.get_traced_memory()
            total = wchar() - w0
        finally:
            tracemalloc.stop()
            time.monotonic = real  # type: ignore[assignment]
        assert comm.calibration is not None
    row_numbers = numbers_a_window(b, ev)
    old_line = np.mean([len(json.dumps(ev.window(slice(i, i + 1)).rows()[0])) + 1 for i in range(min(len(ev), 2000))])
    return {"windows": n, "kept": kept, "stride": stride_end, "arrays_mb": arrays / 1e6, "peak_mb": peak / 1e6,
            "file_mb": size / 1e6, "written_mb": total / 1e6,
            "max_hour_mb": max(per_hour, default=total) / 1e6, "rewrites": len(rewrites),
            "rewrite_s": max(rewrites) if rewrites else 0.0, "numbers": row_numbers,
            "before_mem_mb": n * row_numbers * 8 / 1e6, "before_line_b": float(old_line),
            "before_hour_mb": rate * 3600 * old_line / 1e6, "before_file_mb": n * old_line / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench_commissioning")
    ap.add_argument("--windows", type=int, default=16000, help="healthy windows for the fit comparison")
    ap.add_argument("--rates", default="3,20", help="windows a second for the 24 h cost")
    ap.add_argument("--hours", type=float, default=24.0)
    a = ap.parse_args()
    out = (ROOT / a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ref = out / "sim_reference.npz"
    if not (out / "sim.tar").exists():
        from vibrawatch.agent.sources.loaders import save_snapshot_npz

        save_snapshot_npz(simulate_bearing_run(n_snapshots=SIM["snapshots"], snapshot_samples=SIM["samples"],
                                               onset=SIM["onset"], noise=0.07, seed=1), ref)
    b, how = bundle(out, "sim", ref, SIM_CONFIG)
    print(f"# bench/commissioning_keep.py: simulator bundle ({how})")
    t0 = time.perf_counter()
    both = healthy_windows(b, a.windows + a.windows // 2)
    ev, later = both.window(slice(0, a.windows)), both.window(slice(a.windows, None))
    print(f"{len(both)} healthy windows of a sister machine in {time.perf_counter() - t0:.0f} s")
    alarm_table(fit_table(b, ev), later)
    if not a.rates:
        return
    print(f"\n{a.hours:g} h commissioning, keep = {KEEP}: memory and bytes written (window numbers: "
          f"{numbers_a_window(b, ev)} float64 a window)\n")
    print("| windows/s | windows | kept (stride) | before: memory / written per hour / file at the end | "
          "after: EvidenceLog arrays / peak Python memory / written per hour (mean, worst hour) / file at the end "
          "| halvings (longest rewrite) |")
    print("|---|---|---|---|---|---|")
    for rate in (float(x) for x in a.rates.split(",")):
        t0 = time.perf_counter()
        c = cost(b, ev, rate, a.hours)
        print(f"| {rate:g} | {c['windows']:,} | {c['kept']:,} ({c['stride']}) | {c['before_mem_mb']:.0f} MB / "
              f"{c['before_hour_mb']:.1f} MB ({c['before_line_b']:.0f} B a line) / {c['before_file_mb']:.0f} MB | "
              f"{c['arrays_mb']:.1f} MB / {c['peak_mb']:.1f} MB / {c['written_mb'] / a.hours:.1f} MB, "
              f"{c['max_hour_mb']:.1f} MB / {c['file_mb']:.1f} MB | {c['rewrites']} ({c['rewrite_s']:.2f} s) |",
              flush=True)
        print(f"  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
