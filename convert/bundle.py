"""A trained run directory -> the one artifact a gateway receives: a verified, self-describing model bundle.

``build_bundle`` converts, checks the op list, measures parity against Keras with the agent's own
interpreter adapter (several different windows in a row, state reset between them), records which runtimes
it ran the model on, writes ``manifest.json`` (schema ``vibrawatch.bundle/2``) with a golden input/output
pair, signs it when given a key, and writes a directory or a ``.tar``.
"""

from __future__ import annotations

import io
import json
import os
import platform
import secrets
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from vibrawatch.agent.detect.decide import Decision, reconstruction_scores, run_alarms
from vibrawatch.agent.detect.infer import TFLiteModel
from vibrawatch.agent.errors import ConfigError, VibrawatchError
from vibrawatch.agent.files import fsync_dir
from vibrawatch.agent.model.bundle import MANIFEST, MODEL, SCHEMA, SIGNATURE, load_bundle, sha256

from .tflite import ConversionError, check_ops, convert_keras, n_lstm_layers, rebuild_batch1

PARITY_REL = 1e-5  # float32: max |score difference| relative to the score
AGREEMENT = 0.995  # quantized: share of windows whose alarm state agrees with Keras
GOLDEN_WINDOWS = 4
GOLDEN_ATOL = {"none": 1e-4, "float16": 1e-3, "dynamic": 5e-2, "int8": 5e-2}
TFLITE_RUNTIME_PYTHON = "VIBRAWATCH_TFLITE_RUNTIME_PYTHON"


def _first_alarm(decisions: list[Decision]) -> int | None:
    return next((i for i, d in enumerate(decisions) if d.event == "raised"), None)


def parity(run: Any, model: TFLiteModel, keras_model: Any) -> tuple[dict[str, Any], np.ndarray]:
    """Compare TFLite with Keras on every window of the training run; returns (metrics, TFLite outputs)."""
    from vibrawatch.train.model import reconstruct

    w = run.windows()
    x, healthy, t_end = w["x"], w["healthy"], w["end_times"]
    n_ch = len(run.detector.spec.channels)
    y_tfl = model.reconstruct_batch(x)
    s_tfl, c_tfl = reconstruction_scores(x, y_tfl, n_ch)
    s_ker, c_ker = reconstruction_scores(x, reconstruct(keras_model, x), n_ch)
    diff = np.abs(s_tfl - s_ker)
    det = run.detector
    d_ker = run_alarms(s_ker, det.threshold, det.rule, c_ker, det.channel_thresholds)
    d_tfl = run_alarms(s_tfl, det.threshold, det.rule, c_tfl, det.channel_thresholds)
    agree = float(np.mean([a.active == b.active for a, b in zip(d_ker, d_tfl, strict=True)]))
    i_k, i_t = _first_alarm(d_ker), _first_alarm(d_tfl)

    def lead(i: int | None) -> float | None:
        return None if i is None else round(float(t_end[-1] - t_end[i]) / 3600.0, 3)

    metrics = {
        "windows": int(len(x)),
        "healthy_windows": int(healthy.sum()),
        "failing_windows": int((~healthy).sum()),
        "max_abs_score_diff": float(diff.max()),
        "max_rel_score_diff": float(np.max(diff / np.maximum(np.abs(s_ker), 1e-12))),
        "max_rel_score_diff_healthy": float(np.max(diff[healthy] / np.maximum(np.abs(s_ker[healthy]), 1e-12))),
        "decision_agreement": agree,
        "lead_hours_keras": lead(i_k),
        "lead_hours_tflite": lead(i_t),
    }
    return metrics, y_tfl


def golden_indices(healthy: np.ndarray) -> np.ndarray:
    """A few different windows: the last healthy ones and the last failing ones (or spread over the run)."""
    h = np.flatnonzero(healthy)
    f = np.flatnonzero(~healthy)
    half = GOLDEN_WINDOWS // 2
    idx = np.concatenate([h[-half:], f[-half:]]) if len(f) >= half else np.linspace(0, len(healthy) - 1,
                                                                                    GOLDEN_WINDOWS).astype(int)
    return np.unique(idx)


def run_on_tflite_runtime(model_content: bytes, inputs: np.ndarray, expected: np.ndarray,
                          atol: float) -> dict[str, Any] | None:
    """Run the golden windows through tflite-runtime in its own environment (numpy<2), if one is configured."""
    python = os.environ.get(TFLITE_RUNTIME_PYTHON)
    if not python:
        return None
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "m.tflite").write_bytes(model_content)
        np.save(Path(d) / "x.npy", inputs)
        code = (
            "import sys, numpy as np; from vibrawatch.agent.detect.infer import TFLiteModel; "
            f"m = TFLiteModel(open({str(Path(d) / 'm.tflite')!r}, 'rb').read(), runtime='tflite-runtime'); "
            f"np.save({str(Path(d) / 'y.npy')!r}, m.reconstruct_batch(np.load({str(Path(d) / 'x.npy')!r}))); "
            "print(m.runtime_version)"
        )
        res = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or ["unknown error"])[-1]
            return {"ok": False, "version": "2.14", "error": last[:300]}
        err = float(np.max(np.abs(np.load(Path(d) / "y.npy") - expected)))
    return {"ok": bool(err <= atol), "version": res.stdout.strip(), "max_abs_output_diff": err}


def build_bundle(run_dir: str | Path, out: str | Path, quantize: str = "none", sign_key: str | Path | None = None,
                 force: bool = False) -> dict[str, Any]:
    """Convert a run and write a bundle (a directory, or a tar when ``out`` ends in .tar); returns a summary."""
    import tensorflow as tf

    from vibrawatch.train.run import Run, versions

    check_bundle_out(Path(out))  # before the slow part
    run = Run.open(run_dir)
    evaluations = _evaluations(run.path)
    keras_model = run.keras_model()
    fixed = rebuild_batch1(keras_model)
    w = run.windows()
    rep = w["x"][w["healthy"] & ~w["validation"]][:256]
    content = convert_keras(fixed, quantize, rep)
    ops = check_ops(content, n_lstm_layers(fixed))
    model = TFLiteModel(content, runtime="ai-edge-litert")
    metrics, y_tfl = parity(run, model, keras_model)
    problems = []
    if quantize == "none" and metrics["max_rel_score_diff"] > PARITY_REL:
        problems.append(f"max relative score difference {metrics['max_rel_score_diff']:.2e} > {PARITY_REL:g}")
    if quantize != "none" and metrics["decision_agreement"] < AGREEMENT:
        problems.append(f"alarm decisions agree on {metrics['decision_agreement']:.2%} of windows < {AGREEMENT:.1%}")
    if problems and not force:
        raise ConversionError(
            f"the {quantize} model misses its accuracy target: {'; '.join(problems)}. Use another --quantize, or "
            "--force to write it anyway (the numbers go into the manifest)"
        )
    gi = golden_indices(w["healthy"])
    g_in, g_out = w["x"][gi].astype(np.float32), y_tfl[gi]
    atol = GOLDEN_ATOL[quantize]
    runtimes: dict[str, Any] = {"ai-edge-litert": {"ok": True, "version": model.runtime_version,
                                                   "max_rel_score_diff": metrics["max_rel_score_diff"]}}
    other = run_on_tflite_runtime(content, g_in, g_out, atol)
    if other is not None:
        runtimes["tflite-runtime"] = other
    digest = sha256(content)
    meta = run.meta
    manifest = {
        "schema": SCHEMA,
        "version": f"{run.path.name}-{quantize}-{digest[:10]}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "file": MODEL,
            "quantize": quantize,
            "size_bytes": len(content),
            "input": model.input.__dict__,
            "output": model.output.__dict__,
            "ops": dict(sorted(ops.items())),
            "encoder": meta["model"]["encoder"],
        },
        **run.detector.to_dict(),  # features, window, scaler, threshold, alarm: what the gateway reads back
        "training": {k: meta["training"][k] for k in ("source", "healthy_until", "healthy_end", "windows",
                                                      "healthy_windows", "train_windows", "validation_windows")},
        "metrics": {"parity": metrics, "evaluations": evaluations},
        "runtimes": runtimes,
        "versions": {**versions(), "tensorflow_converter": tf.__version__, "python": platform.python_version()},
        "golden": {"inputs": g_in.tolist(), "outputs": g_out.tolist(), "atol": atol},
        "files": {MODEL: digest},
    }
    files = {MODEL: content, MANIFEST: json.dumps(manifest, indent=1).encode()}
    if sign_key is not None:
        from vibrawatch.agent.model.signing import sign

        files[SIGNATURE] = sign(files[MANIFEST], sign_key)
    write_bundle(files, Path(out), check=load_bundle)  # the agent's own checks, before anyone ships it
    return {"bundle": str(out), "version": manifest["version"], "quantize": quantize, "size_bytes": len(content),
            "ops": dict(sorted(ops.items())), "parity": metrics, "runtimes": runtimes, "signed": sign_key is not None,
            "forced": bool(problems)}


def _evaluations(run_dir: Path) -> dict[str, Any]:
    """Lead time and false alarms from the run's `vibrawatch evaluate` reports, where there are any."""
    out = {}
    for p in sorted(run_dir.glob("evaluation_*.json")):
        try:
            r = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{p}: not readable JSON ({e}); run `vibrawatch evaluate` again or remove it") from None
        if not isinstance(r, dict):
            raise ConfigError(f"{p}: not an evaluation report (a {type(r).__name__}); run `vibrawatch evaluate` "
                              "again or remove it")
        out[p.stem.removeprefix("evaluation_")] = {k: r.get(k) for k in ("first_alarm", "lead_hours",
                                                                          "alarm_channel", "false_alarms", "auc")}
    return out


def check_bundle_out(out: Path) -> None:
    """``--out`` for `convert`: a .tar that is not a directory, or a directory that is not a file."""
    if out.suffix == ".tar":
        if out.is_dir():
            raise ConfigError(f"--out {out}: a directory, but a name ending .tar is written as one file; "
                              "name another file, or a directory without .tar")
    elif out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: an existing file; a bundle directory is wanted here (or a name ending .tar)")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"--out {out}: {parent} is a file, not a directory")


def write_bundle(files: dict[str, bytes], out: Path, check: Callable[[Path], object] | None = None) -> None:
    """A directory, or a tar of regular files (no paths, fixed metadata) when ``out`` ends in .tar. ``check`` (the
    agent's ``load_bundle``) reads the new bundle before it replaces a tar: one that fails it never takes the old
    one's place."""
    if out.suffix == ".tar":
        _write_tar_atomic(files, out, check)
        return
    out.mkdir(parents=True, exist_ok=True)
    for stale in (SIGNATURE,):
        if stale not in files and (out / stale).exists():
            (out / stale).unlink()  # an old signature would not match the new manifest
    for name, data in files.items():
        (out / name).write_bytes(data)
    if check is not None:
        check(out)


def _write_tar_atomic(files: dict[str, bytes], out: Path, check: Callable[[Path], object] | None) -> None:
    """The tar whole or not at all: written to a hidden temporary sibling, fsynced, renamed over ``out``; an
    interrupted or failed convert (Ctrl-C, a full disk) leaves the previous bundle byte-identical."""
    target = out.resolve() if out.is_symlink() else out  # a link to a bundle: the bundle it names is replaced
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # as tarfile made it: the user's umask
    except OSError as e:
        raise _not_written(out, e) from None
    try:
        with open(fd, "wb") as fh:
            _tar_into(fh, files)
            fh.flush()
            os.fsync(fh.fileno())
        if check is not None:
            _checked(check, tmp, out)
        os.replace(tmp, target)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _not_written(out, e) from None
        raise
    fsync_dir(target.parent)


def _checked(check: Callable[[Path], object], tmp: Path, out: Path) -> None:
    """The new bundle read back by the agent's own checks; a failure is said of ``out``, not of the hidden file."""
    try:
        check(tmp)
    except (VibrawatchError, ValueError, OSError) as e:
        kept = "the previous bundle is as it was" if out.exists() else "nothing was written"
        raise ConfigError(f"--out {out}: the new bundle fails the agent's checks ({e}); {kept}") from None


def _tar_into(fh: BinaryIO, files: dict[str, bytes]) -> None:
    """Regular files only, no paths, fixed metadata: the same bytes for the same files."""
    with tarfile.open(fileobj=fh, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))


def _not_written(out: Path, e: OSError) -> ConfigError:
    """A full disk or a refused write said in one line, with what became of the previous bundle."""
    kept = "the previous bundle is as it was" if out.exists() else "nothing was written"
    return ConfigError(f"--out {out}: the bundle could not be written ({e.strerror or e}); {kept}")


def describe(path: str | Path) -> str:
    """A human summary of a bundle's manifest (no verification beyond reading it)."""
    from vibrawatch.agent.model.bundle import parse_manifest, read_bundle_files

    p = Path(path)
    files = read_bundle_files(p)
    m = parse_manifest(p, files[MANIFEST])
    par = m["metrics"]["parity"]
    spec = m["features"]
    lines = [
        f"bundle    {p}  ({'signed' if SIGNATURE in files else 'unsigned'})",
        f"version   {m['version']}   created {m['created']}",
        f"model     {m['model']['quantize']}, {m['model']['size_bytes']} bytes, input {m['model']['input']['shape']} "
        f"{m['model']['input']['dtype']}",
        f"ops       {', '.join(f'{k} x{v}' for k, v in m['model']['ops'].items())}",
        f"features  {', '.join(spec['channels'])}: {len(spec['names'])} features, frame {spec['frame_length']} "
        f"samples at {spec['fs_hz']:g} Hz; window T={m['window']['length']} hop {m['window']['hop']}",
        f"threshold {m['threshold']['value']:.5g} ({m['threshold']['method']} x {m['threshold']['margin']}); alarm "
        f"after {m['alarm']['raise_after']}, clear after {m['alarm']['clear_after']}",
        f"trained   {m['training']['source']} healthy until {m['training']['healthy_end']} "
        f"({m['training']['healthy_windows']} windows)",
        f"parity    max rel score diff {par['max_rel_score_diff']:.2e}, "
        f"decisions agree {par['decision_agreement']:.2%}, "
        f"lead {par['lead_hours_keras']} h (Keras) vs {par['lead_hours_tflite']} h (TFLite)",
        "runtimes  " + "; ".join(f"{k} {v.get('version')}: {'ok' if v.get('ok') else 'FAILS ' + v.get('error', '')}"
                                 for k, v in m["runtimes"].items()),
    ]
    return "\n".join(lines)

