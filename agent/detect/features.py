"""Per-channel features of vibration frames: the one implementation training and the gateway share.

A frame is N contiguous samples of every channel, shape (n_frames, N, C). Every feature maps a frame
to one number per channel; the feature vector is laid out channel-major (all features of channel 0,
then channel 1, ...), so a channel's share of a reconstruction error is a contiguous slice.

Formulas (x is one channel of one frame, N samples, X its real FFT):
- ``mean``      : sum(x) / N (for N=1 the raw sample: the IBM Lorenz article feeds raw samples)
- ``mean_abs``  : sum(|x|) / N (the IMS article's feature)
- ``rms``       : sqrt(sum(x^2) / N)
- ``peak``      : max |x|
- ``crest``     : peak / rms (1 for a square wave, sqrt(2) for a sine; impacts raise it)
- ``kurtosis``  : m4 / m2^2 with m_k = mean((x - mean(x))^k) (Pearson; 3 for Gaussian noise)
- ``band_energy`` (params ``bands_hz``: [[lo, hi], ...], or ``bands_nyquist``: fractions of fs/2):
  log10(sum over lo <= f < hi of |X(f)|^2 / N^2 + 1e-12) per band: the spectral shape, where a
  defect's resonance shows before the overall level moves.
- ``envelope`` (params ``band_hz`` [lo, hi] demodulation band, ``defects_hz`` {name: Hz},
  ``harmonics`` (3), ``width_hz`` (2 bins)): the envelope is |analytic signal| of x band-passed
  to band_hz; its spectrum's energy within +-width_hz of k * f for k = 1..harmonics, log10 as above,
  one feature per defect frequency. This is classic bearing envelope analysis (BPFO, BPFI, BSF).
  With ``statistic = "peak"`` (``slip`` 0.03, ``background`` 10 widths) each column is instead how far
  the defect's lines stand above the envelope spectrum's local background: log10 of the geometric mean
  over k of max(power within +-max(width_hz, slip * k * f) of k * f) / median(power within
  background * width_hz beyond that range on either side). Broadband noise lifts the line and its
  background alike; a defect lifts its line only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ..errors import ConfigError
from .bands import power_plan, segment_powers
from .envelope import envelope_statistics

_EPS = 1e-12
SIMPLE_FEATURES = ("mean", "mean_abs", "rms", "peak", "crest", "kurtosis")
# The signal's shape, free of its level: a gain (a louder load, a sensor's sensitivity) leaves them as they were,
# the impacts of a defect raise them.
LEVEL_FREE_FEATURES = ("crest", "kurtosis")
SPECTRAL_FEATURES = ("band_energy", "envelope")
ENVELOPE_STATISTICS = ("energy", "peak")
DEFAULT_FEATURES = ("rms", "kurtosis", "crest", "band_energy")
# Log-spaced bands as fractions of Nyquist: on any sample rate they cover low-frequency imbalance up to
# the high-frequency resonances that bearing impacts excite.
DEFAULT_BANDS_NYQUIST = ((0.0, 0.0625), (0.0625, 0.125), (0.125, 0.25), (0.25, 0.375), (0.375, 0.5),
                         (0.5, 0.75), (0.75, 1.0))


@dataclass(frozen=True)
class FeatureDef:
    """One configured feature: its name and parameters (plain JSON values)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params)}


@dataclass(frozen=True)
class FeatureSpec:
    """What turns raw samples into feature vectors; shipped in the model bundle so the edge matches training.

    ``input == "table"`` means the data already are per-snapshot features (one column per channel
    feature, e.g. the IMS article's table): frames are rows and the features are the values themselves.
    """

    fs_hz: float
    frame_length: int
    channels: tuple[str, ...]
    features: tuple[FeatureDef, ...]
    input: str = "samples"

    def __post_init__(self) -> None:
        if self.input not in ("samples", "table"):
            raise ConfigError(f"features.input: {self.input!r} is not 'samples' or 'table'")
        if self.input == "samples":
            if self.frame_length < 1:
                raise ConfigError(f"features.frame_length: {self.frame_length} must be >= 1")
            if not self.fs_hz > 0:
                raise ConfigError(f"features.fs_hz: {self.fs_hz} must be > 0")
            for f in self.features:
                _check_def(f, self.fs_hz, self.frame_length)

    @property
    def names(self) -> list[str]:
        """Feature names, channel-major, e.g. ``bearing1:rms``."""
        if self.input == "table":
            return list(self.channels)
        per = [n for f in self.features for n in _feature_columns(f, self.fs_hz)]
        return [f"{ch}:{n}" for ch in self.channels for n in per]

    @cached_property
    def per_channel(self) -> int:
        """Features per channel (1 for a table); cached, like ``n_features``: the gateway asks every frame."""
        return len(self.names) // len(self.channels)

    @cached_property
    def n_features(self) -> int:
        return len(self.names)

    @cached_property
    def level_free(self) -> tuple[int, ...]:
        """Which of a channel's columns are free of its level (``LEVEL_FREE_FEATURES``); none for a table."""
        if self.input == "table":
            return ()
        per = [n.split(":", 1)[1] for n in self.names[: self.per_channel]]
        return tuple(i for i, n in enumerate(per) if n in LEVEL_FREE_FEATURES)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "fs_hz": self.fs_hz,
            "frame_length": self.frame_length,
            "channels": list(self.channels),
            "features": [f.to_dict() for f in self.features],
            "names": self.names,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        try:
            return cls(
                fs_hz=float(d["fs_hz"]),
                frame_length=int(d["frame_length"]),
                channels=tuple(str(c) for c in d["channels"]),
                features=tuple(FeatureDef(f["name"], dict(f.get("params", {}))) for f in d["features"]),
                input=str(d.get("input", "samples")),
            )
        except KeyError as e:
            raise ConfigError(f"feature spec: missing key {e.args[0]!r}") from None


def parse_features(items: Sequence[Any]) -> tuple[FeatureDef, ...]:
    """Feature definitions from config: a name (``"rms"``) or a table (``{name = "band_energy", ...}``)."""
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            out.append(FeatureDef(item, {}))
        elif isinstance(item, Mapping) and "name" in item:
            out.append(FeatureDef(str(item["name"]), {k: v for k, v in item.items() if k != "name"}))
        else:
            raise ConfigError(f"features.list[{i}]: {item!r} is neither a feature name nor a table with 'name'")
    return tuple(out)


def _bands(fdef: FeatureDef, fs_hz: float) -> list[tuple[float, float]]:
    nyq = fs_hz / 2.0
    if "bands_hz" in fdef.params:
        return [(float(lo), float(hi)) for lo, hi in fdef.params["bands_hz"]]
    fr = fdef.params.get("bands_nyquist", DEFAULT_BANDS_NYQUIST)
    return [(float(lo) * nyq, float(hi) * nyq) for lo, hi in fr]


def _feature_columns(fdef: FeatureDef, fs_hz: float) -> list[str]:
    if fdef.name in SIMPLE_FEATURES:
        return [fdef.name]
    if fdef.name == "band_energy":
        return [f"band_{lo:g}_{hi:g}Hz" for lo, hi in _bands(fdef, fs_hz)]
    if fdef.name == "envelope":
        if "defects_hz" not in fdef.params or "band_hz" not in fdef.params:
            raise ConfigError("envelope: needs params 'band_hz' = [lo, hi] and 'defects_hz' = {name = Hz, ...}")
        return [f"env_{name}" for name in fdef.params["defects_hz"]]
    raise ConfigError(f"unknown feature {fdef.name!r}; known: {', '.join(SIMPLE_FEATURES + SPECTRAL_FEATURES)}")


def _check_def(fdef: FeatureDef, fs_hz: float, n: int) -> None:
    names = _feature_columns(fdef, fs_hz)  # raises for unknown names
    nyq = fs_hz / 2.0
    if fdef.name in SPECTRAL_FEATURES and n < 8:
        raise ConfigError(f"feature {fdef.name!r} needs frames of at least 8 samples, frame_length is {n}")
    if fdef.name == "band_energy":
        df = fs_hz / n
        for lo, hi in _bands(fdef, fs_hz):
            if not (0 <= lo < hi <= nyq + 1e-9):
                raise ConfigError(f"band_energy: band [{lo:g}, {hi:g}] Hz must satisfy 0 <= lo < hi <= {nyq:g} (fs/2)")
            if hi - lo < df:
                raise ConfigError(
                    f"band_energy: band [{lo:g}, {hi:g}] Hz is narrower than one FFT bin ({df:g} Hz); "
                    "widen it or use longer frames"
                )
    if fdef.name == "envelope":
        if fdef.params.get("statistic", "energy") not in ENVELOPE_STATISTICS:
            raise ConfigError(f"envelope: statistic {fdef.params['statistic']!r} is not one of "
                              f"{', '.join(ENVELOPE_STATISTICS)}")
        for key, default, lo in (("background", 10, 1.0), ("slip", 0.03, 0.0)):
            v = fdef.params.get(key, default)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v < 1e3 and (v > lo or lo == 0)):
                raise ConfigError(f"envelope: {key} {v!r} must be a number {'> 1 (widths)' if lo else '>= 0'}")
        lo, hi = (float(v) for v in fdef.params["band_hz"])
        if not (0 <= lo < hi <= nyq):
            raise ConfigError(f"envelope: band_hz [{lo:g}, {hi:g}] must lie within 0..{nyq:g} Hz")
        harmonics = int(fdef.params.get("harmonics", 3))
        for name, f in fdef.params["defects_hz"].items():
            if not 0 < float(f) * harmonics < nyq:
                raise ConfigError(f"envelope: defect {name} = {f} Hz (x{harmonics}) must lie within 0..{nyq:g} Hz")
    if not names:
        raise ConfigError(f"feature {fdef.name!r} yields no columns")


class FeatureBuffers:
    """Arrays reused from one ``extract_spectra`` call to the next: a gateway extracts one frame at a time, and
    the float64 copy, the |x| scratch and the spectrum are the same shapes every time; so is the spec's plan."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}
        self._plan: tuple[FeatureSpec, _Plan] | None = None  # the spec itself, held: identity stays meaningful

    def get(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        a = self._arrays.get(name)
        if a is None or a.shape != shape or a.dtype != dtype:
            a = self._arrays[name] = np.empty(shape, dtype)
        return a

    def plan(self, spec: FeatureSpec) -> _Plan:
        if self._plan is None or self._plan[0] is not spec:
            self._plan = (spec, _Plan.of(spec))
        return self._plan[1]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays.values())


@dataclass(frozen=True)
class _Plan:
    """What a spec asks of every frame, worked out once: the simple features' names, whether a transform is
    needed, and for the band energies the spectrum's segments (slices of its interleaved re/im view) and per
    band_energy feature the matrix summing each band's segments (``bands.power_plan``)."""

    names: frozenset[str]
    spectral: bool
    segments: tuple[slice, ...]
    sums: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, spec: FeatureSpec) -> _Plan:
        bands = tuple(tuple(_bands(f, spec.fs_hz)) for f in spec.features if f.name == "band_energy")
        segments: tuple[slice, ...] = ()
        sums: tuple[np.ndarray, ...] = ()
        if bands:
            edges, sums = power_plan(float(spec.fs_hz), spec.frame_length, bands)
            segments = tuple(slice(2 * int(a), 2 * int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True))
        return cls(frozenset(f.name for f in spec.features if f.name in SIMPLE_FEATURES),
                   any(f.name in SPECTRAL_FEATURES for f in spec.features), segments, sums)


_RFFT_OUT = int(np.__version__.split(".")[0]) >= 2  # numpy 2 transforms into a given array


def spectrum(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """One-sided spectra of float64 signals along the last axis: the one transform every spectral feature and
    the envelope share. float64 on purpose: numpy 2's float32 transform is no faster here (docs/benchmarks.md)
    and a quiet band's energy would lose its digits under a loud one's rounding."""
    if out is not None and _RFFT_OUT:
        return np.fft.rfft(x, axis=-1, out=out)
    return np.fft.rfft(x, axis=-1)


def extract(frames: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Feature vectors of frames (n_frames, N, C) -> (n_frames, C * per_channel), float64, channel-major.

    Pure and vectorised; a batch of frames gives the same rows as the frames one by one, which is what
    makes a window score the same on the workstation and on the gateway.
    """
    return extract_spectra(frames, spec)[0]


def extract_spectra(frames: np.ndarray, spec: FeatureSpec, buffers: FeatureBuffers | None = None
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """``extract``, and the frames' one-sided spectra (n_frames, C, N//2+1) complex128 when a spectral feature
    needed them (None otherwise), so a diagnosis can demodulate the same frames without a second transform.
    With ``buffers`` the working arrays, the spectra among them, are reused: valid until the next call."""
    if spec.input == "table":
        raise ValueError("extract() is for raw samples; table rows are already features")
    if frames.ndim != 3 or frames.shape[1] != spec.frame_length or frames.shape[2] != len(spec.channels):
        raise ValueError(
            f"frames of shape {frames.shape} do not match the spec "
            f"(n, {spec.frame_length}, {len(spec.channels)})"
        )
    buf = buffers or FeatureBuffers()
    plan = buf.plan(spec)
    n_frames, n, n_ch = frames.shape
    # Channel-major and contiguous: every reduction and transform below runs along the last, contiguous axis.
    x = buf.get("x", (n_frames, n_ch, n), np.float64)  # filled in one casting, transposing pass
    np.copyto(x, np.asarray(frames).transpose(0, 2, 1))
    spec_x = spectrum(x, buf.get("spectrum", (n_frames, n_ch, n // 2 + 1), np.complex128)) if plan.spectral else None
    segments = None
    if plan.segments:
        assert spec_x is not None
        segments = segment_powers(spec_x, plan.segments)
    stats = _statistics(x, spec_x, segments, plan.names, buf)  # x is overwritten: its last use
    cols: list[np.ndarray] = []  # each (n_frames, C, k)
    sums = iter(plan.sums)
    for fdef in spec.features:
        if fdef.name in SIMPLE_FEATURES:
            cols.append(stats[fdef.name][:, :, None])
        elif fdef.name == "band_energy":
            assert segments is not None
            cols.append(np.log10(segments @ next(sums) + _EPS))  # each band the sum of its few segments
        elif fdef.name == "envelope":
            assert spec_x is not None
            cols.append(envelope_statistics(spec_x, spec.fs_hz, n, fdef.params))
    out = np.concatenate(cols, axis=2)  # (n_frames, C, per_channel)
    return out.reshape(n_frames, n_ch * out.shape[2]), spec_x


def _statistics(x: np.ndarray, spec_x: np.ndarray | None, segments: np.ndarray | None, names: frozenset[str],
                buf: FeatureBuffers) -> dict[str, np.ndarray]:
    """The simple features named (each (n_frames, C)) of frames ``x`` (n_frames, C, N), in as few passes over the
    samples as they allow. The transform, when there is one, already holds two of them: the mean is its DC bin
    and, when the band energies summed its power (``segments``, DC and Nyquist bins on their own), the sum of
    squares is that power by Parseval (within 1e-15; not m2, which would lose digits to a large DC offset, e.g. an
    accelerometer's 1 g). The kurtosis centres ``x`` in place, so it comes last and ``x`` is spent."""
    n = x.shape[2]
    out: dict[str, np.ndarray] = {}
    if "mean" in names:
        out["mean"] = x.sum(axis=2) / n
    peak = None
    if "mean_abs" in names:  # |x| once, for the mean and the peak
        a = np.abs(x, out=buf.get("scratch", x.shape, np.float64))
        out["mean_abs"] = a.sum(axis=2) / n
        if "peak" in names or "crest" in names:
            peak = a.max(axis=2)
    elif "peak" in names or "crest" in names:  # max |x| without an |x| temporary
        peak = np.maximum(x.max(axis=2), -x.min(axis=2))
    if peak is not None:
        out["peak"] = peak
    if "rms" in names or "crest" in names:
        if segments is not None:  # Parseval: bins other than DC and Nyquist stand for their negative twins too
            nyquist = segments[..., -1] if n % 2 == 0 else 0.0
            sum_sq = (2.0 * segments.sum(axis=2) - segments[..., 0] - nyquist) / n
        else:
            sum_sq = np.einsum("fcn,fcn->fc", x, x)
        out["rms"] = np.sqrt(sum_sq / n)
        if peak is not None:
            out["crest"] = peak / np.maximum(out["rms"], _EPS)
    if "kurtosis" in names:  # central moments m2, m4 from (x - mean)^2, computed in place
        mean = out["mean"] if "mean" in out else (spec_x[..., 0].real / n if spec_x is not None else x.sum(axis=2) / n)
        d2 = np.subtract(x, mean[:, :, None], out=x)
        np.square(d2, out=d2)
        m2, m4 = d2.sum(axis=2) / n, np.einsum("fcn,fcn->fc", d2, d2) / n
        out["kurtosis"] = m4 / np.maximum(m2**2, _EPS)
    return out


def default_spec(fs_hz: float, snapshot_samples: int, channels: Sequence[str]) -> FeatureSpec:
    """Features that need no knowledge of the machine: level, impulsiveness and spectral shape.

    Frames are 1 s of signal or the whole snapshot if shorter, so a frame never straddles a gap.
    """
    frame = int(min(snapshot_samples, max(1, round(fs_hz * 1.0))))
    # Frames too short for a spectrum are raw samples (the IBM Lorenz case): the feature is the value itself.
    feats = tuple(FeatureDef(n, {}) for n in DEFAULT_FEATURES) if frame >= 64 else (FeatureDef("mean", {}),)
    return FeatureSpec(fs_hz=float(fs_hz), frame_length=frame, channels=tuple(channels), features=feats)
