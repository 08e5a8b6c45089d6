"""Training configuration: TOML on disk, dataclasses in code, defaults that adapt to the data.

Every key is optional. What is left out is derived from the data (sample rate, snapshot length,
channels), so ``vibrawatch train`` without ``--config`` does something sensible on a machine it has
never seen. Unknown keys are errors: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vibrawatch.agent.detect.decide import AlarmRule
from vibrawatch.agent.detect.scale import SCALINGS
from vibrawatch.agent.detect.threshold import ThresholdRule
from vibrawatch.agent.errors import ConfigError
from vibrawatch.agent.sections import checked, known_sections, parse_section, positive, read_toml


@dataclass(frozen=True)
class FeaturesConfig:
    # samples; default (left out): 1 s, or the whole snapshot if shorter
    frame_length: int | None = checked(None, lambda v: v is None or v >= 1, "a whole number of samples >= 1")
    list: tuple[Any, ...] | None = None  # feature names / tables; default: agent.features.DEFAULT_FEATURES
    # override the data's sample rate (IMS text files do not carry one)
    fs_hz: float | None = checked(None, positive, "a sample rate > 0 (Hz)")
    scaling: str = "minmax"  # "minmax": healthy min..max -> 0..1; "robust": (x - median) / (q95 - q05)


@dataclass(frozen=True)
class ModelConfig:
    window: int = 10  # T: consecutive frames per sequence
    hop: int = 1  # frames between windows
    encoder: tuple[int, ...] = (16, 4)  # the IMS article's widths; the decoder mirrors them
    epochs: int = 100
    batch_size: int = 32
    learning_rate: float = 1e-3
    validation_fraction: float = 0.2  # the chronologically last part of the healthy windows
    patience: int = 15
    seed: int = 42


@dataclass(frozen=True)
class DiagnosisConfig:
    """Bearing geometry and shaft speed: when given, every alarm names the defect frequency that rose most."""

    shaft_hz: float | None = None  # or rpm
    rpm: float | None = None
    n_balls: int | None = None
    ball_diameter: float | None = None
    pitch_diameter: float | None = None
    contact_angle_deg: float = 0.0
    band_hz: tuple[float, float] | None = None  # demodulation band; default 0.2-0.8 of Nyquist
    harmonics: int = 3
    min_ratio: float = 1.5
    margin: float = 1.25
    statistic: str = "peak"  # "peak": defect lines over their local background; "energy": energy at the lines
    # peak only: a ball's lines at 2 x BSF, and a line another defect's search range also holds counted for neither
    own_lines: bool = False

    @property
    def enabled(self) -> bool:
        return self.n_balls is not None


@dataclass(frozen=True)
class ProductConfig:
    """The decision layer around the autoencoder (agent/detect/events.py); ``combined = false`` is the bare model."""

    combined: bool = True
    # A PCA residual as a second whole-window score beside the autoencoder's: off by default. It gained 10-40
    # minutes on three shared runs and, with the healthy period a different share of the run, raised nuisance
    # alarms the autoencoder did not (IMS test 2 at the default 30%: 2 against 1; at 20%: 10 against 0);
    # docs/detection.md, "The PCA residual: an option, not the default".
    pca: bool = False
    pca_variance: float = 0.95  # share of healthy variance the PCA residual's axes keep (with pca = true)
    transient_s: float = 12 * 3600.0
    relaxed: float = 0.5
    grows: float = 2.0
    history: int = 6
    share: float = 0.8
    # Optional per-channel absolute levels (the first floor feature's units, e.g. RMS in g) beyond which a channel
    # alarms at once, as ISO 10816/20816 zone limits are used; off unless given (agent/detect/events.py).
    absolute: tuple[float, ...] | None = None
    # Channels that measure one bearing in several directions (horizontal, vertical, axial), e.g.
    # [["horiz_acc_g", "vert_acc_g"]]: the sensor layout, a fact of the installation, not a tuning. Attribution
    # then compares bearings, so one bearing's directions never mask each other. None (not given): read from the
    # channel names where they differ only by a direction word (train/sensor_layout.py); [] keeps every channel a
    # bearing of its own.
    same_bearing: tuple[tuple[str, ...], ...] | None = None


@dataclass(frozen=True)
class TrainConfig:
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    threshold: ThresholdRule = field(default_factory=ThresholdRule)
    alarm: AlarmRule = field(default_factory=AlarmRule)
    product: ProductConfig = field(default_factory=ProductConfig)
    diagnosis: DiagnosisConfig = field(default_factory=DiagnosisConfig)
    healthy_until: str | None = None  # used when the CLI gives none
    source: str = "<defaults>"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["alarm"] = self.alarm.to_dict()
        return d


@dataclass(frozen=True)
class DataSection:
    healthy_until: str | None = None  # used when the CLI gives none


_SECTIONS = {"features": FeaturesConfig, "model": ModelConfig, "threshold": ThresholdRule,
             "product": ProductConfig, "diagnosis": DiagnosisConfig, "alarm": AlarmRule}


def load_config(path: str | Path | None) -> TrainConfig:
    """Read a TOML training config; errors name the file and the key."""
    if path is None:
        return TrainConfig()
    p = Path(path)
    return config_from_dict(read_toml(p), source=str(p))


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> TrainConfig:
    known_sections(raw, {*_SECTIONS, "data"}, source)
    parts: dict[str, Any] = {name: parse_section(cls, raw.get(name), name, source) for name, cls in _SECTIONS.items()}
    data = parse_section(DataSection, raw.get("data"), "data", source)
    cfg = TrainConfig(healthy_until=data.healthy_until, source=source, **parts)
    _validate(cfg)
    return cfg


def _validate(cfg: TrainConfig) -> None:
    m = cfg.model
    checks = [
        (m.window >= 1, "[model] window must be >= 1"),
        (m.hop >= 1, "[model] hop must be >= 1"),
        (len(m.encoder) >= 1 and all(int(u) >= 1 for u in m.encoder), "[model] encoder must list widths >= 1"),
        (m.epochs >= 1, "[model] epochs must be >= 1"),
        (m.batch_size >= 1, "[model] batch_size must be >= 1"),
        (math.isfinite(m.learning_rate) and m.learning_rate > 0, "[model] learning_rate must be a number > 0"),
        (m.patience >= 0, "[model] patience must be >= 0"),
        (0 <= m.seed < 2**32, "[model] seed must be from 0 to 2**32 - 1"),
        (0 < m.validation_fraction < 0.9, "[model] validation_fraction must be in (0, 0.9)"),
        (0 < cfg.product.pca_variance < 1, "[product] pca_variance must be in (0, 1)"),
        (cfg.product.transient_s > 0 and 0 < cfg.product.relaxed < 1 and cfg.product.grows > 1
         and cfg.product.history >= 1, "[product] need transient_s > 0, 0 < relaxed < 1, grows > 1, history >= 1"),
    ]
    if cfg.features.scaling not in SCALINGS:
        raise ConfigError(f"{cfg.source}: [features] scaling must be one of {', '.join(map(repr, SCALINGS))}, "
                          f"got {cfg.features.scaling!r}")
    dg = cfg.diagnosis
    if dg != DiagnosisConfig():
        need = {"n_balls": dg.n_balls, "ball_diameter": dg.ball_diameter, "pitch_diameter": dg.pitch_diameter}
        missing = [k for k, v in need.items() if v is None] + ([] if dg.shaft_hz or dg.rpm else ["shaft_hz or rpm"])
        if missing:
            raise ConfigError(f"{cfg.source}: [diagnosis] needs {', '.join(missing)} (the bearing geometry and speed)")
        if dg.n_balls < 1 or dg.ball_diameter <= 0 or dg.pitch_diameter <= dg.ball_diameter:
            raise ConfigError(f"{cfg.source}: [diagnosis] needs n_balls >= 1 and 0 < ball_diameter < pitch_diameter")
        if dg.statistic not in ("peak", "energy"):
            raise ConfigError(f"{cfg.source}: [diagnosis] statistic {dg.statistic!r} must be 'peak' or 'energy'")
        if dg.own_lines and dg.statistic != "peak":
            raise ConfigError(f"{cfg.source}: [diagnosis] own_lines applies to statistic 'peak' only")
    for ok, msg in checks:
        if not ok:
            raise ConfigError(f"{cfg.source}: {msg}")
