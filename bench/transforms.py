"""The transform options for the gateway's features, measured in one process (issue 23's floor table).

    .venv/bin/python bench/transforms.py [--reps 300] [--frame 20000] [--channels 4]

One frame of ``channels`` x ``frame`` samples (1 s at 20 kHz by default), each option timed on the same
data, in turn, ``reps`` times (min and median, ms a frame), and its band powers compared with the product's
(numpy, float64) where rounding bites: a 1 g offset, a loud line at 3 kHz and quiet vibration elsewhere; the
largest relative error of the power summed over each default band (float32 input rounds the samples
themselves). The options: numpy ``rfft`` in float64 into a reused array (the
product's), numpy on float32 input, numpy at the next power of two below (another frame length: other bins),
``scipy.fft.rfft`` in float64 and float32 (scipy is not on the gateway), and the TFLite runtime's own RFFT
op (RFFT2D) in a bundle-like model, built here with TensorFlow and run by the gateway's interpreter; that op
takes powers of two only, so at ``frame`` it is refused and is timed at the power of two below. Pin it to a
core (``taskset -c 1``) on a quiet machine; the ratios within one run are what to compare.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def band_powers(power: np.ndarray, n: int, fs: float) -> np.ndarray:
    """(C, K) one-sided power -> (C, bands) summed over the default bands (fractions of Nyquist)."""
    from vibrawatch.agent.detect.bands import band_bins
    from vibrawatch.agent.detect.features import DEFAULT_BANDS_NYQUIST

    lo, hi = band_bins(fs, n, [(a * fs / 2, b * fs / 2) for a, b in DEFAULT_BANDS_NYQUIST])
    return np.stack([power[:, a:b].sum(axis=1) for a, b in zip(lo, hi, strict=True)], axis=1)


def tflite_rfft(n: int, channels: int, workdir: Path) -> tuple[Callable[[np.ndarray], np.ndarray] | None, str]:
    """A model that is one RFFT (and |X|^2) of (channels, n) float32, run by the gateway's interpreter; None and
    the runtime's reason when it refuses the length."""
    import tensorflow as tf

    from vibrawatch.agent.detect.infer import find_runtime

    @tf.function(input_signature=[tf.TensorSpec([channels, n], tf.float32)])
    def f(x: tf.Tensor) -> tf.Tensor:
        spec = tf.signal.rfft(x)
        return tf.math.real(spec) ** 2 + tf.math.imag(spec) ** 2

    path = workdir / f"rfft{n}.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f).convert())
    name, version, interp_cls = find_runtime()
    runtime = f"{name} {version}"
    it = interp_cls(model_path=str(path), num_threads=1)
    try:
        it.allocate_tensors()
    except RuntimeError as e:
        return None, f"{runtime} refuses it: {str(e).splitlines()[0][:120]}"
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

    def run(x: np.ndarray) -> np.ndarray:
        it.set_tensor(i, x)
        it.invoke()
        return it.get_tensor(o)

    return run, runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--frame", type=int, default=20000)
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--fs", type=float, default=20000.0)
    ap.add_argument("--noise", type=float, default=1e-3, help="the quiet broadband vibration's RMS (default 1e-3)")
    a = ap.parse_args()
    n, c = a.frame, a.channels
    pow2 = 1 << (n.bit_length() - 1)
    rng = np.random.default_rng(0)
    t = np.arange(n) / a.fs
    # an accelerometer's 1 g offset (9.81 m/s^2), a loud line at 3 kHz, quiet broadband vibration elsewhere
    x64 = 9.81 + rng.normal(0, a.noise, (c, n)) + 0.5 * np.sin(2 * np.pi * 3000 * t)
    x32 = x64.astype(np.float32)
    out = np.empty((c, n // 2 + 1), complex)
    ref = band_powers(np.abs(np.fft.rfft(x64, axis=-1)) ** 2, n, a.fs)

    options: dict[str, tuple[Callable[[], object], Callable[[], np.ndarray] | None, str]] = {
        f"numpy rfft float64, {n} points, into a reused array (the product's)":
            (lambda: np.fft.rfft(x64, axis=-1, out=out), lambda: np.abs(np.fft.rfft(x64, axis=-1)) ** 2,
             "yes"),
        f"numpy rfft of float32 input, {n} points":
            (lambda: np.fft.rfft(x32, axis=-1), lambda: np.abs(np.fft.rfft(x32, axis=-1)) ** 2, "yes"),
        f"numpy rfft float64, {pow2} points (a power of two)":
            (lambda: np.fft.rfft(x64[:, :pow2], axis=-1), None, "yes, but another frame length: other bins"),
    }
    try:
        import scipy.fft as sfft

        options[f"scipy.fft.rfft float64, {n} points, one worker"] = (
            lambda: sfft.rfft(x64, axis=-1, workers=1), lambda: np.abs(sfft.rfft(x64, axis=-1)) ** 2,
            "no: scipy is not on the gateway")
        options[f"scipy.fft.rfft float32, {n} points, one worker"] = (
            lambda: sfft.rfft(x32, axis=-1, workers=1),
            lambda: np.abs(sfft.rfft(x32, axis=-1)).astype(np.float64) ** 2, "no: scipy is not on the gateway")
    except ImportError:
        print("scipy not installed: its rows are left out", file=sys.stderr)
    with tempfile.TemporaryDirectory() as d:
        refused = ""
        try:
            run_n, why = tflite_rfft(n, c, Path(d))
            if run_n is None:
                refused = why
            else:
                options[f"TFLite RFFT2D float32, {n} points ({why})"] = (
                    lambda: run_n(x32), lambda: run_n(x32).astype(np.float64), "yes (the interpreter)")
            run_p, why = tflite_rfft(pow2, c, Path(d))
            if run_p is not None:
                options[f"TFLite RFFT2D float32, {pow2} points ({why})"] = (
                    lambda: run_p(np.ascontiguousarray(x32[:, :pow2])), None,
                    "yes (the interpreter), but another frame length")
        except ImportError:
            print("TensorFlow not installed: the TFLite rows are left out", file=sys.stderr)
        times: dict[str, list[float]] = {k: [] for k in options}
        for _ in range(a.reps):  # in turn, so a busy moment slows every option alike
            for k, (fn, _, _) in options.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        print(f"{platform.processor() or platform.machine()}, numpy {np.__version__}; {c} x {n} samples, "
              f"min and median of {a.reps}")
        print("| transform | ms a frame (min / median) | band powers, worst relative error (1 g offset) | "
              "on the gateway's dependencies? |")
        print("|---|---|---|---|")
        for k, (_, power, gateway) in options.items():
            err = "-" if power is None else f"{np.max(np.abs(band_powers(power(), n, a.fs) - ref) / ref):.1e}"
            print(f"| {k} | {min(times[k]) * 1e3:.3f} / {np.median(times[k]) * 1e3:.3f} | {err} | {gateway} |")
        if refused:
            print(f"| TFLite RFFT2D float32, {n} points | - | - | refused: {refused} |")


if __name__ == "__main__":
    main()
