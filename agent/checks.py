"""``vibrawatch-agent check``, what ``run`` verifies before it starts, and whether a live sensor's windows come
often enough for the shipped systemd units' watchdog (``watchdog_fit``, also said at start and by ``check``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .config import load_agent_config
from .detect.detector import Detector
from .detect.diagnosis import resolution_line
from .link.topics import topic
from .model.bundle import load_bundle
from .model.commission_store import describe, state_file_for
from .model.deploy_state import bundle_path
from .reader import open_source
from .sources.sensor_check import two_rates

log = logging.getLogger("vibrawatch.agent")

UNIT_WATCHDOG_S, UNIT_START_S = 60.0, 120.0  # the shipped units' WatchdogSec= and TimeoutStartSec=
LIVE_SOURCES = ("adxl345", "mqtt")  # paced by the sensor, not by a replay's speed


def check(config_path: str | Path) -> str:
    """Verify the config, the bundle and that the source fits it, as ``run`` does at start (nothing connects,
    nothing is scored); a summary of what would run, or a VibrawatchError saying what is wrong."""
    cfg = load_agent_config(config_path)
    b = load_bundle(bundle_path(cfg.deploy, cfg.agent.bundle), cfg.agent.public_key)
    # The very function `run` reads the password with (its file's mode refused as run refuses it), in run's order.
    password = "read (the file's mode ok)" if cfg.password() is not None else "none"
    reader = open_source(cfg, b, lambda _topic, _handler: None)
    src = reader.source
    spec = b.detector.spec
    signature = "verified" if cfg.agent.public_key else "not checked (no public_key in [agent])"
    rate = "feature-table rows" if src.provides == "table" else f"{two_rates(src.fs_hz, 1)[0]} Hz"
    return "\n".join([
        f"config   {config_path}: ok",
        f"bundle   {b.path}: {b.version}, checksums ok, signature {signature}, golden self-test ok",
        f"runtime  {b.model.runtime}",
        f"model    {len(spec.channels)} channel(s) {', '.join(spec.channels)} at {spec.fs_hz:g} Hz, "
        f"{spec.n_features} features, window {b.detector.window}, threshold {b.detector.threshold:.6g}",
        f"source   {cfg.source.kind}: {len(src.channels)} channel(s), {rate}: fits the model",
        f"broker   {cfg.mqtt.host}:{cfg.mqtt.port} (tls {'on' if cfg.mqtt.tls else 'off'}, password {password})",
        f"topics   {topic(cfg.agent.site, cfg.agent.device, '{score,alarm,status}')}",
        f"thresholds {describe(cfg.commissioning, state_file_for(cfg.commissioning, cfg.agent.spool), b)}",
        f"watchdog {watchdog_fit(b.detector)[1]}",
        *([f"diagnosis {resolution_line(dg.defects_hz, spec.fs_hz, spec.frame_length) or 'frames resolve its lines'}"]
          if (dg := b.detector.diagnosis) is not None and spec.input == "samples" else []),
    ])


def window_seconds(d: Detector) -> tuple[float, float]:
    """Seconds of real-time samples to the first window and between windows: READY=1 waits for the first,
    each pings the watchdog."""
    frame_s = d.spec.frame_length / d.spec.fs_hz
    return d.window * frame_s, d.hop * frame_s


def watchdog_fit(d: Detector, watchdog_s: float = UNIT_WATCHDOG_S, start_s: float = UNIT_START_S
                 ) -> tuple[bool, str]:
    """Whether a live sensor's windows come often enough for the unit's watchdog and start timeout, and why."""
    if d.spec.input == "table":
        return True, "feature-table rows: one window per row"
    first, every = window_seconds(d)
    text = f"at the sensor's rate a window every {every:.3g} s, the first after {first:.3g} s"
    if every > watchdog_s / 2 or first > start_s:
        return False, (f"{text}: too slow for WatchdogSec={watchdog_s:g} / TimeoutStartSec={start_s:g}: raise them "
                       "in a drop-in (systemctl edit), or systemd will restart the agent between windows")
    return True, f"{text}: within WatchdogSec={watchdog_s:g} and TimeoutStartSec={start_s:g}"


def warn_watchdog(kind: str, d: Detector) -> None:
    """At start under systemd's watchdog (WATCHDOG_USEC): warn when a live sensor's windows come too rarely for it."""
    if (usec := os.environ.get("WATCHDOG_USEC", "")).isdigit() and kind in LIVE_SOURCES:
        fits, text = watchdog_fit(d, int(usec) / 1e6)
        if not fits:
            log.warning("watchdog: %s", text)
