"""Keras -> TFLite with builtin ops only, the LSTMs fused, a fixed batch of 1; and the checks that refuse anything else.

Measured on TF 2.21 (see issue 3): tf-keras tanh LSTMs with a fixed batch of 1 become the fused
``UNIDIRECTIONAL_SEQUENCE_LSTM`` op (about 19 KB, tens of microseconds a window). Keras 3 LSTMs become a
``WHILE`` loop over subgraphs (slower, and their int8 conversion crashes), relu LSTMs do not fuse, and a
model converted from concrete functions can carry resource-variable ops that crash or return NaN.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

from vibrawatch.agent.errors import VibrawatchError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

QUANTIZE = ("none", "dynamic", "float16", "int8")
FUSED = "UNIDIRECTIONAL_SEQUENCE_LSTM"
REFUSED = {
    "WHILE": "an LSTM converted to a WHILE loop over subgraphs (a Keras 3 LSTM, or one that did not fuse); "
    "train with `vibrawatch train`, which builds tf-keras tanh LSTMs that fuse",
    "CUSTOM": "a custom op the gateway's interpreter does not have; use builtin layers only",
    "VAR_HANDLE": "resource variables (a Keras 3 model converted from concrete functions), which crash or "
    "return NaN on the gateway; convert a tf-keras model",
    "READ_VARIABLE": "resource variables (a Keras 3 model converted from concrete functions); convert a tf-keras model",
    "ASSIGN_VARIABLE": "resource variables (a Keras 3 model converted from concrete functions); convert a "
    "tf-keras model",
}


class ConversionError(VibrawatchError):
    """The model cannot become a gateway model; the message names the layer or op and the fix."""


def check_layers(model: Any) -> None:
    """Refuse, before converting, LSTM layers that cannot fuse: name the layer and what to change."""
    for layer in _all_layers(model):
        if layer.__class__.__name__ != "LSTM":
            continue
        cfg = layer.get_config()
        if cfg.get("activation") != "tanh":
            raise ConversionError(
                f"layer {layer.name!r} is an LSTM with activation {cfg.get('activation')!r}: TFLite fuses only tanh "
                "LSTMs; rebuild it with activation='tanh' (vibrawatch's default)"
            )
        if cfg.get("recurrent_activation") != "sigmoid":
            raise ConversionError(
                f"layer {layer.name!r} has recurrent_activation {cfg.get('recurrent_activation')!r}: the fused "
                "TFLite LSTM needs 'sigmoid'"
            )
        if cfg.get("unroll"):
            raise ConversionError(f"layer {layer.name!r} has unroll=True: it converts to hundreds of ops; unset it")


def _all_layers(model: Any) -> Iterable[Any]:
    for layer in getattr(model, "layers", []):
        yield layer
        inner = getattr(layer, "layer", None)  # TimeDistributed, Bidirectional
        if inner is not None:
            yield inner


def check_ops(model_content: bytes, n_lstm: int) -> Counter[str]:
    """Refuse a model with a WHILE loop, Flex/custom or resource-variable ops, or LSTMs that did not fuse."""
    ops = ops_of(model_content)
    for name in ops:
        if name.startswith("Flex") or name in REFUSED:
            why = REFUSED.get(name, "a TensorFlow (Flex/SELECT_TF_OPS) op the gateway's interpreter does not have")
            raise ConversionError(f"the converted model contains {name}: {why}")
    if ops.get(FUSED, 0) != n_lstm:
        raise ConversionError(
            f"{ops.get(FUSED, 0)} of the model's {n_lstm} LSTM layers became {FUSED}; the others did not fuse: "
            "use tf-keras tanh LSTMs with a fixed batch of 1"
        )
    return ops


def ops_of(model_content: bytes) -> Counter[str]:
    """Op names from the interpreter, which reads every subgraph (a WHILE body included)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model_content)
    names: Counter[str] = Counter()
    for op in interp._get_ops_details():
        names[op["op_name"]] += 1
    return names


def convert_keras(model: Any, quantize: str = "none", representative: np.ndarray | None = None) -> bytes:
    """A tf-keras model with a fixed batch of 1 -> TFLite flatbuffer bytes (builtin ops only)."""
    import tensorflow as tf

    if quantize not in QUANTIZE:
        raise ConversionError(f"--quantize {quantize!r}: choose one of {', '.join(QUANTIZE)}")
    check_layers(model)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        if representative is None or len(representative) == 0:
            raise ConversionError("int8 needs representative windows (the healthy training windows)")
        reps = np.asarray(representative, dtype=np.float32)

        def gen() -> Iterable[list[np.ndarray]]:
            for w in reps:
                yield [w[None]]

        converter.representative_dataset = gen
    try:
        return bytes(converter.convert())
    except Exception as e:  # the converter raises many types (ConverterError, ValueError, ...); say which
        raise ConversionError(f"TFLite conversion failed: {str(e).splitlines()[0][:300]}") from None


def rebuild_batch1(model: Any) -> Any:
    """The same network with a fixed batch of 1 (what fuses) and the trained weights."""
    from vibrawatch.train.model import build_autoencoder

    _, t, f = model.input_shape
    lstms = [layer for layer in model.layers if layer.__class__.__name__ == "LSTM"]
    encoder = [layer.units for layer in lstms[: len(lstms) // 2]]
    act = lstms[0].get_config()["activation"] if lstms else "tanh"
    fixed = build_autoencoder(int(t), int(f), encoder, activation=act, batch_size=1)
    fixed.set_weights(model.get_weights())
    return fixed


def n_lstm_layers(model: Any) -> int:
    return sum(1 for layer in _all_layers(model) if layer.__class__.__name__ == "LSTM")
