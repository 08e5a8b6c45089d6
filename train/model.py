"""The LSTM autoencoder of the IMS article, built so that it converts to a fused TFLite LSTM.

tf-keras (Keras 2) with tanh LSTMs: measured on TF 2.21, these become TFLite's fused
UNIDIRECTIONAL_SEQUENCE_LSTM op, while Keras 3 LSTMs convert to a slow WHILE loop and relu LSTMs
(the article's choice) do not fuse at all.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402


def build_autoencoder(
    window: int,
    n_features: int,
    encoder: Sequence[int] = (16, 4),
    activation: str = "tanh",
    batch_size: int | None = None,
) -> keras.Model:
    """Encoder LSTMs -> RepeatVector(T) -> mirrored decoder LSTMs -> TimeDistributed(Dense(F))."""
    inputs = keras.Input(shape=(window, n_features), batch_size=batch_size, name="window")
    h = inputs
    for i, units in enumerate(encoder):
        last = i == len(encoder) - 1
        h = keras.layers.LSTM(int(units), activation=activation, return_sequences=not last, name=f"enc_lstm{i}")(h)
    h = keras.layers.RepeatVector(window, name="repeat")(h)
    for i, units in enumerate(reversed(encoder)):
        h = keras.layers.LSTM(int(units), activation=activation, return_sequences=True, name=f"dec_lstm{i}")(h)
    outputs = keras.layers.TimeDistributed(keras.layers.Dense(n_features), name="reconstruction")(h)
    return keras.Model(inputs, outputs, name="lstm_autoencoder")


def fit(
    x_train: np.ndarray,
    x_val: np.ndarray,
    *,
    encoder: Sequence[int],
    epochs: int,
    batch_size: int,
    learning_rate: float,
    patience: int,
    seed: int,
    progress: bool = True,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train on healthy windows only (MAE, Adam), keep the best validation epoch; seeded and repeatable."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    model = build_autoencoder(x_train.shape[1], x_train.shape[2], encoder)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mae")
    callbacks: list[Any] = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    ]
    if progress:
        from tqdm.keras import TqdmCallback

        callbacks.append(TqdmCallback(verbose=0, desc="training"))
    hist = model.fit(
        x_train.astype(np.float32),
        x_train.astype(np.float32),
        validation_data=(x_val.astype(np.float32), x_val.astype(np.float32)),
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    return model, {k: [float(v) for v in vals] for k, vals in hist.history.items()}


def reconstruct(model: keras.Model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Keras reconstruction of windows (n, T, F), float32 in and out."""
    if len(x) == 0:
        return np.empty_like(x, dtype=np.float32)
    return model.predict(x.astype(np.float32), batch_size=batch_size, verbose=0)


def save(model: keras.Model, path: str | os.PathLike[str]) -> None:
    model.save(os.fspath(path))


def load(path: str | os.PathLike[str]) -> keras.Model:
    return keras.models.load_model(os.fspath(path), compile=False)
