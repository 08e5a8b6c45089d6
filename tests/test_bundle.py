"""Bundles through the CLI as a user makes and checks them; every tampering is caught by its own check."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import cli
from typer.testing import CliRunner

from vibrawatch.agent.model.bundle import (
    BundleChecksumError,
    BundleLayoutError,
    BundleSchemaError,
    BundleSelfTestError,
    BundleSignatureError,
    load_bundle,
)
from vibrawatch.convert.cli import app


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    cli("keys", "new", "--out-dir", d)
    return d / "vibrawatch-signing.key", d / "vibrawatch-signing.pub"


@pytest.fixture(scope="module")
def signed_bundle(tiny_run: Path, keys: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "b"
    report = json.loads(cli("convert", tiny_run, "--out", out, "--sign-key", keys[0]))
    assert report["ops"]["UNIDIRECTIONAL_SEQUENCE_LSTM"] == 4 and "WHILE" not in report["ops"]
    assert report["parity"]["max_rel_score_diff"] <= 1e-5
    assert report["parity"]["decision_agreement"] == 1.0
    return out


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def test_private_key_is_only_readable_by_its_owner(keys: tuple[Path, Path]) -> None:
    assert stat.S_IMODE(os.stat(keys[0]).st_mode) == 0o600
    assert b"PUBLIC KEY" in keys[1].read_bytes()


def test_signed_bundle_verifies_and_shows(signed_bundle: Path, keys: tuple[Path, Path]) -> None:
    out = cli("bundle", "verify", signed_bundle, "--public-key", keys[1])
    assert "signature ok" in out and "self-test ok on ai-edge-litert" in out
    show = cli("bundle", "show", signed_bundle)
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM x4" in show and "(signed)" in show


def test_tar_bundle_round_trip_scores_like_the_directory(tiny_run: Path, signed_bundle: Path, tmp_path: Path) -> None:
    tar = tmp_path / "b.tar"
    cli("convert", tiny_run, "--out", tar)
    a, b = load_bundle(signed_bundle), load_bundle(tar)
    w = np.load(tiny_run / "windows.npz")["x"][:5]
    np.testing.assert_array_equal(a.model.reconstruct_batch(w), b.model.reconstruct_batch(w))
    assert a.detector.spec == b.detector.spec and a.detector.threshold == b.detector.threshold
    assert a.detector.window == 6


def test_windows_in_a_row_score_as_each_alone(signed_bundle: Path, tiny_run: Path) -> None:
    """The fused LSTM's state is reset per window: the order of windows must not matter."""
    b = load_bundle(signed_bundle)
    w = np.load(tiny_run / "windows.npz")["x"]
    in_row = b.model.reconstruct_batch(w[[0, 40, 5, 60]])
    alone = np.stack([load_bundle(signed_bundle).model.reconstruct(w[i]) for i in (0, 40, 5, 60)])
    np.testing.assert_array_equal(in_row, alone)


def _fails(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    return result.output


def test_tampered_model_is_a_checksum_error(signed_bundle: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    b = _copy(signed_bundle, tmp_path)
    data = bytearray((b / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b / "model.tflite").write_bytes(bytes(data))
    with pytest.raises(BundleChecksumError, match="model.tflite has sha256"):
        load_bundle(b, keys[1])
    assert "the bundle was altered or damaged" in _fails("bundle", "verify", b, "--public-key", keys[1])


def test_tampered_manifest_is_a_signature_error(signed_bundle: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    b = _copy(signed_bundle, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["threshold"]["value"] *= 10  # a quieter gateway: exactly what an attacker would want
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleSignatureError, match="does not verify"):
        load_bundle(b, keys[1])


def test_tampered_signature_and_wrong_key(signed_bundle: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    b = _copy(signed_bundle, tmp_path)
    sig = bytearray(base64.b64decode((b / "manifest.sig").read_bytes()))
    sig[0] ^= 1
    (b / "manifest.sig").write_bytes(base64.b64encode(bytes(sig)))
    with pytest.raises(BundleSignatureError, match="does not verify"):
        load_bundle(b, keys[1])
    other = tmp_path / "other"
    cli("keys", "new", "--out-dir", other)
    with pytest.raises(BundleSignatureError, match="signed with another key"):
        load_bundle(signed_bundle, other / "vibrawatch-signing.pub")


def test_unsigned_bundle_is_refused_when_a_key_is_configured(tiny_run: Path, keys: tuple[Path, Path],
                                                               tmp_path: Path) -> None:
    cli("convert", tiny_run, "--out", tmp_path / "u")
    with pytest.raises(BundleSignatureError, match="unsigned"):
        load_bundle(tmp_path / "u", keys[1])


def test_golden_self_test_failure_is_reported(signed_bundle: Path, tmp_path: Path) -> None:
    b = _copy(signed_bundle, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["golden"]["outputs"] = (np.asarray(m["golden"]["outputs"]) + 0.01).tolist()
    (b / "manifest.json").write_text(json.dumps(m))
    (b / "manifest.sig").unlink()
    with pytest.raises(BundleSelfTestError, match="golden self-test failed on ai-edge-litert"):
        load_bundle(b)


def test_unknown_schema_is_refused(signed_bundle: Path, tmp_path: Path) -> None:
    b = _copy(signed_bundle, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["schema"] = "vibrawatch.bundle/9"
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleSchemaError, match="schema 'vibrawatch.bundle/9'"):
        load_bundle(b)


def test_a_bundle_1_manifest_still_loads_with_an_unweighted_pca_residual(signed_bundle: Path, tmp_path: Path) -> None:
    """Bundles made before the PCA residual's weights (schema /1) load and score their residual as they were
    made to; the current schema says the weights are there, so an agent that would ignore them refuses it."""
    from vibrawatch.agent.detect.decide import reconstruction_scores

    m = json.loads((signed_bundle / "manifest.json").read_text())
    assert m["schema"] == "vibrawatch.bundle/2" and len(m["pca"]["weights"]) == len(m["pca"]["mean"])
    b = _copy(signed_bundle, tmp_path)
    m["schema"] = "vibrawatch.bundle/1"
    del m["pca"]["weights"]
    (b / "manifest.json").write_text(json.dumps(m))
    (b / "manifest.sig").unlink()
    old, new = load_bundle(b).detector, load_bundle(signed_bundle).detector
    assert old.pca is not None and new.pca is not None and old.pca.weights is None and new.pca.weights is not None
    x = np.random.default_rng(0).uniform(0, 1, (5, old.window, old.spec.n_features))
    c = len(old.channels)
    np.testing.assert_array_equal(old.pca.scores(x, c)[0], reconstruction_scores(x, old.pca.reconstruct(x), c)[0])
    w = reconstruction_scores(x / new.pca.weights, new.pca.reconstruct(x) / new.pca.weights, c)[0]
    np.testing.assert_allclose(new.pca.scores(x, c)[0], w, rtol=1e-12)
    assert not np.allclose(w, old.pca.scores(x, c)[0])


def _tar_with(path: Path, members: list[tarfile.TarInfo], data: bytes = b"x") -> Path:
    with tarfile.open(path, "w") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(data) if m.isfile() else None)
    return path


def test_path_traversal_and_links_in_a_tar_are_refused(tmp_path: Path) -> None:
    evil = tarfile.TarInfo("../../etc/cron.d/evil")
    evil.size = 1
    with pytest.raises(BundleLayoutError, match=r"'../../etc/cron.d/evil' is not one of"):
        load_bundle(_tar_with(tmp_path / "a.tar", [evil]))
    link = tarfile.TarInfo("model.tflite")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(BundleLayoutError, match="'model.tflite' is a link"):
        load_bundle(_tar_with(tmp_path / "b.tar", [link]))
    assert not (tmp_path.parent / "etc").exists()


def test_relu_model_is_refused_naming_the_layer(tmp_path: Path) -> None:
    from vibrawatch.convert.tflite import ConversionError, convert_keras
    from vibrawatch.train.model import build_autoencoder

    with pytest.raises(ConversionError, match="layer 'enc_lstm0' is an LSTM with activation 'relu'.*tanh"):
        convert_keras(build_autoencoder(5, 3, (4, 2), activation="relu", batch_size=1))


def test_keras3_lstm_is_refused_for_its_while_loop() -> None:
    import keras  # Keras 3, what `pip install tensorflow` brings: its LSTM does not fuse
    import tensorflow as tf

    from vibrawatch.convert.tflite import ConversionError, check_ops

    inp = keras.Input(shape=(5, 3), batch_size=1)
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.LSTM(4, return_sequences=True)(inp)))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with pytest.raises(ConversionError, match="WHILE.*tf-keras tanh LSTMs"):
        check_ops(converter.convert(), n_lstm=1)


def test_a_runtime_that_failed_at_conversion_is_refused_with_the_variant_to_build(signed_bundle: Path,
                                                                                  tmp_path: Path) -> None:
    from vibrawatch.agent.model.bundle import BundleRuntimeError

    b = _copy(signed_bundle, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["runtimes"]["ai-edge-litert"] = {"ok": False, "version": "2.3.0", "error": "FULLY_CONNECTED version '12'"}
    (b / "manifest.json").write_text(json.dumps(m))
    (b / "manifest.sig").unlink()
    with pytest.raises(BundleRuntimeError, match=r"failed \(FULLY_CONNECTED version '12'\).*--quantize none"):
        load_bundle(b)
