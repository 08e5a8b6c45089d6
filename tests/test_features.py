"""Feature formulas against independent scipy/numpy references, and streaming == batch for frames and windows."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal, stats

from vibrawatch.agent.detect.features import FeatureDef, FeatureSpec, default_spec, extract
from vibrawatch.agent.detect.frames import Framer, iter_frames
from vibrawatch.agent.detect.recording import Recording
from vibrawatch.agent.detect.window import WindowBuffer, sliding_windows
from vibrawatch.agent.errors import ConfigError

FS = 10000.0
N = 1000


def _frames(seed: int = 0, n: int = 5, c: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(N) / FS
    x = rng.standard_normal((n, N, c)) + 0.5 * np.sin(2 * np.pi * 440 * t)[None, :, None]
    x[:, ::97, 0] += 6.0  # impacts on channel 0 make it impulsive
    return x


def _one(name: str, frames: np.ndarray, **params: object) -> np.ndarray:
    spec = FeatureSpec(FS, N, tuple(f"c{i}" for i in range(frames.shape[2])), (FeatureDef(name, params),))
    return extract(frames, spec)


def test_time_domain_features_match_scipy() -> None:
    x = _frames()
    np.testing.assert_allclose(_one("mean_abs", x), np.abs(x).mean(axis=1))
    np.testing.assert_allclose(_one("rms", x), np.sqrt((x**2).mean(axis=1)))
    np.testing.assert_allclose(_one("peak", x), np.abs(x).max(axis=1))
    np.testing.assert_allclose(_one("crest", x), np.abs(x).max(axis=1) / np.sqrt((x**2).mean(axis=1)))
    np.testing.assert_allclose(_one("kurtosis", x), stats.kurtosis(x, axis=1, fisher=False), rtol=1e-10)
    k = _one("kurtosis", x)
    assert (k[:, 0] > k[:, 1] + 3).all()  # impacts make channel 0 far more impulsive than noise-plus-sine


def test_band_energy_is_parseval_consistent_with_the_periodogram() -> None:
    x = _frames()
    bands = [[0, 500], [400, 480], [500, 4900]]
    got = _one("band_energy", x, bands_hz=bands)  # (n, C * 3), channel-major
    f, pxx = signal.periodogram(x, fs=FS, axis=1, window="boxcar", scaling="spectrum", detrend=False,
                                return_onesided=False)
    for b, (lo, hi) in enumerate(bands):
        # the one-sided |X|^2 / N^2 per bin is the two-sided periodogram's bin at +f
        mask = (f >= lo) & (f < hi)
        ref = np.log10(pxx[:, mask, :].sum(axis=1) + 1e-12)
        np.testing.assert_allclose(got[:, b::3], ref, rtol=1e-9)
    # the 440 Hz tone (amplitude 0.5: 0.0625 at +f, give or take the noise) dominates the 400-480 Hz band
    assert np.all(got[:, 1] > np.log10(0.03))


def test_envelope_finds_the_modulation_frequency_like_a_hilbert_reference() -> None:
    t = np.arange(N) / FS
    carrier = np.sin(2 * np.pi * 3000 * t)
    x = ((1 + 0.8 * np.sin(2 * np.pi * 120 * t)) * carrier)[None, :, None]
    params = {"band_hz": [2000, 4000], "defects_hz": {"hit": 120.0, "other": 170.0}, "harmonics": 1, "width_hz": 5}
    got = _one("envelope", x, **params)[0]
    assert got[0] > got[1] + 4  # 10^4 more energy at the modulation frequency
    # reference: ideal band-pass, scipy's Hilbert envelope, its spectrum around 120 Hz
    spec = np.fft.fft(x[0, :, 0])
    freqs = np.fft.fftfreq(N, 1 / FS)
    bp = np.real(np.fft.ifft(spec * ((np.abs(freqs) >= 2000) & (np.abs(freqs) < 4000))))
    env = np.abs(signal.hilbert(bp))
    env -= env.mean()
    p = np.abs(np.fft.rfft(env)) ** 2 / N**2
    rf = np.fft.rfftfreq(N, 1 / FS)
    assert got[0] == pytest.approx(np.log10(p[np.abs(rf - 120) <= 5].sum() + 1e-12), rel=1e-6)


def test_batch_rows_equal_frames_one_by_one() -> None:
    x = _frames(n=4)
    spec = default_spec(FS, N, ("a", "b"))
    whole = extract(x, spec)
    singles = np.concatenate([extract(x[i : i + 1], spec) for i in range(4)])
    np.testing.assert_array_equal(whole, singles)
    assert whole.shape == (4, spec.n_features) and spec.names[0].startswith("a:")


@pytest.mark.parametrize(
    ("fdef", "message"),
    [
        (FeatureDef("wobble"), "unknown feature 'wobble'"),
        (FeatureDef("band_energy", {"bands_hz": [[0, 6000]]}), r"must satisfy 0 <= lo < hi <= 5000"),
        (FeatureDef("band_energy", {"bands_hz": [[100, 105]]}), "narrower than one FFT bin"),
        (FeatureDef("envelope", {"band_hz": [100, 200]}), "needs params 'band_hz'"),
    ],
)
def test_bad_feature_definitions_are_refused(fdef: FeatureDef, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FeatureSpec(FS, N, ("a",), (fdef,))


def test_streaming_framer_equals_batch_frames_and_never_crosses_a_gap() -> None:
    rng = np.random.default_rng(1)
    rec = Recording(rng.normal(size=(3, 250, 2)).astype(np.float32), np.array([0.0, 60.0, 120.0]), 100.0,
                    ("a", "b"), "mem", relative_time=True)
    batch = np.concatenate([b.frames for b in iter_frames(rec, 64)])
    framer = Framer(64, 2, 100.0)
    streamed = []
    for i in range(3):
        framer.reset()  # a new snapshot: the partial frame of the last one is dropped
        for chunk in np.array_split(rec.data[i], 7):  # odd chunk sizes, as a sensor delivers them
            frames, _ = framer.push(chunk, rec.timestamps[i])
            streamed.append(frames)
    np.testing.assert_array_equal(np.concatenate(streamed), batch)
    assert len(batch) == 3 * (250 // 64)


def test_window_buffer_equals_sliding_windows() -> None:
    feats = np.random.default_rng(2).normal(size=(23, 4))
    for hop in (1, 3):
        buf = WindowBuffer(5, hop, 4)
        streamed = [w for w in (buf.push(r) for r in feats) if w is not None]
        np.testing.assert_array_equal(np.stack(streamed), sliding_windows(feats, 5, hop))
