"""The source registry: ``[source] kind`` -> the class that reads it (Telegraf's ``inputs/all`` in one dict).

Each class carries its own ``Settings`` dataclass (the only keys ``[source]`` accepts for that kind), a
commented ``SAMPLE`` of them and ``open(settings, ctx)``; the agent never lists kinds anywhere else. A new
sensor is one file with such a class and one line here.
"""

from __future__ import annotations

from typing import Any

from .adxl345 import ADXL345Source
from .mqtt_source import MqttSampleSource
from .source import ReplaySource, SimulatorSource

SOURCES: dict[str, Any] = {cls.kind: cls for cls in (ReplaySource, SimulatorSource, ADXL345Source, MqttSampleSource)}


def source_class(kind: str) -> Any:
    """The class registered for ``kind``; KeyError if there is none (the config loader names the choices)."""
    return SOURCES[kind]
