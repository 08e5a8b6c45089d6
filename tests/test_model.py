"""The training architecture is one that converts to TFLite's fused LSTM: no WHILE loop, no Flex ops."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from vibrawatch.convert.tflite import ops_of
from vibrawatch.train.model import build_autoencoder


def _ops(model: Any) -> list[str]:
    """The op names of ``model`` (a tf_keras model) converted with builtin ops only, without convert's layer
    check (which would refuse the relu LSTM before showing what it becomes)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return sorted(ops_of(converter.convert()))


def test_default_architecture_fuses_into_unidirectional_sequence_lstm() -> None:
    ops = _ops(build_autoencoder(window=10, n_features=8, encoder=(16, 4), batch_size=1))
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in ops
    assert "WHILE" not in ops and not any(o.startswith("FlexOp") or o == "CUSTOM" for o in ops)


def test_the_articles_relu_lstm_does_not_fuse() -> None:
    ops = _ops(build_autoencoder(window=10, n_features=8, encoder=(16, 4), activation="relu", batch_size=1))
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" not in ops  # why vibrawatch trains tanh LSTMs


def test_window_shape_round_trips() -> None:
    m = build_autoencoder(window=6, n_features=5, encoder=(8, 4))
    y = m.predict(np.zeros((3, 6, 5), np.float32), verbose=0)
    assert y.shape == (3, 6, 5)


@pytest.mark.parametrize("encoder", [(16, 4), (32, 8, 4)])
def test_decoder_mirrors_the_encoder(encoder: tuple[int, ...]) -> None:
    m = build_autoencoder(window=4, n_features=3, encoder=encoder)
    units = [layer.units for layer in m.layers if layer.__class__.__name__ == "LSTM"]
    assert units == list(encoder) + list(reversed(encoder))
