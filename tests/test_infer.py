"""The interpreter adapter: stateless between windows (the fused LSTM's variable tensors) and equal to Keras.

Speed is measured by bench/agent.py, not asserted here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vibrawatch.agent.model.bundle import load_bundle


def test_windows_in_a_row_equal_keras_in_any_order(tiny_run: Path, tiny_bundle: Path) -> None:
    import tf_keras

    model = load_bundle(tiny_bundle).model
    assert model.runtime.startswith("ai-edge-litert")
    x = np.load(tiny_run / "windows.npz")["x"][:12]
    want = tf_keras.models.load_model(tiny_run / "model.keras", compile=False).predict(x, verbose=0)
    forward = model.reconstruct_batch(x)
    backward = model.reconstruct_batch(x[::-1])[::-1]
    # carried-over LSTM state would make window i depend on window i-1 and on the order
    np.testing.assert_allclose(forward, want, atol=1e-5)
    np.testing.assert_array_equal(forward, backward)

