"""Run a TFLite autoencoder on one window: the interpreter adapter every caller goes through.

Runtimes are tried in order: ai-edge-litert (LiteRT, the maintained one), tflite-runtime (the last
release, 2.14, needs numpy<2), and TensorFlow's own ``tf.lite`` as a last resort on a workstation.

The fused LSTM keeps its state in TFLite variable tensors that persist between ``invoke()`` calls:
without a reset, the second window's output depends on the first (measured: an error of 0.41 on outputs
of about 0.4). ``TFLiteModel.reconstruct`` resets the variables before every window, so every window is
scored on its own, exactly as Keras scores it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import VibrawatchError

RUNTIMES = ("ai-edge-litert", "tflite-runtime", "tensorflow")


class RuntimeUnavailable(VibrawatchError):
    """No TFLite interpreter could be imported."""


def _litert() -> tuple[Callable[..., Any], str]:
    from ai_edge_litert.interpreter import Interpreter

    v = getattr(importlib.import_module("ai_edge_litert"), "__version__", None)
    if v is None:  # older wheels: ask the installed distribution (importlib.metadata costs ~1 MB resident)
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("ai-edge-litert")
        except PackageNotFoundError:  # a missing dist-info must not stop inference
            v = "unknown"
    return Interpreter, str(v)


def _tflite_runtime() -> tuple[Callable[..., Any], str]:
    mod = importlib.import_module("tflite_runtime.interpreter")
    return mod.Interpreter, getattr(importlib.import_module("tflite_runtime"), "__version__", "unknown")


def _tensorflow() -> tuple[Callable[..., Any], str]:
    tf = importlib.import_module("tensorflow")  # a workstation fallback only: never on the gateway path
    return tf.lite.Interpreter, tf.__version__


_LOADERS: dict[str, Callable[[], tuple[Callable[..., Any], str]]] = {
    "ai-edge-litert": _litert,
    "tflite-runtime": _tflite_runtime,
    "tensorflow": _tensorflow,
}


def find_runtime(prefer: str | None = None) -> tuple[str, str, Callable[..., Any]]:
    """(name, version, Interpreter class) of the first runtime that imports; ``prefer`` forces one."""
    names = (prefer,) if prefer else RUNTIMES
    errors = []
    for name in names:
        if name not in _LOADERS:
            raise RuntimeUnavailable(f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}")
        try:
            cls, ver = _LOADERS[name]()
            return name, ver, cls
        except ImportError as e:
            errors.append(f"{name}: {e}")
    raise RuntimeUnavailable(
        "no TFLite interpreter could be imported (" + "; ".join(errors) + "); install one: "
        "pip install 'vibrawatch[edge]' (ai-edge-litert) or 'vibrawatch[edge-tflite]' (tflite-runtime)"
    )


def _no_default_delegates(cls: Callable[..., Any]) -> dict[str, Any]:
    """Interpreter options that skip the XNNPACK delegate where the runtime allows it: it takes over
    none of a fused LSTM's work at these sizes (same latency measured), costs ~1 MB resident and
    prints a line on stderr at every model load."""
    kind = getattr(sys.modules.get(cls.__module__), "OpResolverType", None)
    if kind is None or not hasattr(kind, "BUILTIN_WITHOUT_DEFAULT_DELEGATES"):
        return {}
    return {"experimental_op_resolver_type": kind.BUILTIN_WITHOUT_DEFAULT_DELEGATES}


@dataclass(frozen=True)
class TensorInfo:
    """Shape, dtype and (scale, zero point) of a model input or output."""

    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int


class TFLiteModel:
    """One loaded model; ``reconstruct`` scores windows one at a time, stateless between calls."""

    def __init__(self, model_content: bytes, runtime: str | None = None, num_threads: int = 1) -> None:
        self.runtime_name, self.runtime_version, cls = find_runtime(runtime)
        self._interp = cls(model_content=model_content, num_threads=num_threads, **_no_default_delegates(cls))
        self._interp.allocate_tensors()
        inp = self._interp.get_input_details()
        out = self._interp.get_output_details()
        if len(inp) != 1 or len(out) != 1:
            raise VibrawatchError(f"the model has {len(inp)} inputs and {len(out)} outputs; expected 1 and 1")
        self._in, self._out = inp[0], out[0]
        self.input = _info(self._in)
        self.output = _info(self._out)
        if self.input.shape[0] != 1:
            raise VibrawatchError(f"model input {self.input.shape}: expected a fixed batch of 1")
        self._in_dtype = np.dtype(self._in["dtype"])

    @property
    def runtime(self) -> str:
        """'name version' of the interpreter in use, for logs and status messages."""
        return f"{self.runtime_name} {self.runtime_version}"

    @property
    def window_shape(self) -> tuple[int, int]:
        """(T, F) of one window."""
        return int(self.input.shape[1]), int(self.input.shape[2])

    def reconstruct(self, window: np.ndarray) -> np.ndarray:
        """One scaled window (T, F) -> its reconstruction (T, F) float32, with the LSTM state reset first."""
        x = np.asarray(window, dtype=np.float32).reshape(self.input.shape)
        if self.input.scale:  # integer input: quantize with the model's own parameters
            info = np.iinfo(self._in_dtype)
            x = np.clip(np.round(x / self.input.scale + self.input.zero_point), info.min, info.max)
        self._interp.reset_all_variables()
        self._interp.set_tensor(self._in["index"], x.astype(self._in_dtype, copy=False))
        self._interp.invoke()
        y = self._interp.get_tensor(self._out["index"])
        if self.output.scale:
            y = (y.astype(np.float32) - self.output.zero_point) * self.output.scale
        return np.asarray(y, dtype=np.float32).reshape(self.window_shape)

    def reconstruct_batch(self, windows: np.ndarray) -> np.ndarray:
        """(n, T, F) -> (n, T, F), window by window (the model has a fixed batch of 1)."""
        return np.stack([self.reconstruct(w) for w in windows]) if len(windows) else np.empty_like(windows)


def _info(d: dict[str, Any]) -> TensorInfo:
    scale, zero = d.get("quantization", (0.0, 0))
    return TensorInfo(tuple(int(v) for v in d["shape"]), np.dtype(d["dtype"]).name, float(scale), int(zero))
