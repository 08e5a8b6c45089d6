"""Make paho-mqtt's MQTT 5 receive path cheaper for a consumer that takes thousands of messages a second.

paho (2.x) decodes every incoming MQTT 5 PUBLISH with a fresh ``Properties`` object, and each one builds its
lookup tables anew: two dicts of about thirty entries, a list scanned thirty times. That is about half of
what MQTT 5 costs over 3.1.1 per message in the monitor (~20 us of ~45 us). The tables are constants (paho
never writes to them after ``__init__``), so the subclass here builds them once and shares them; everything
else, parsing included, is paho's own code. Installed only where paho's module layout is the one checked.
"""

from __future__ import annotations

from typing import Any

from paho.mqtt.properties import Properties

_TEMPLATE = Properties(0)


class SharedTableProperties(Properties):
    """``Properties`` whose constant lookup tables are built once per process, not once per packet."""

    def __init__(self, packetType: int) -> None:  # noqa: N803 - paho's name
        object.__setattr__(self, "packetType", packetType)
        object.__setattr__(self, "types", _TEMPLATE.types)
        object.__setattr__(self, "names", _TEMPLATE.names)
        object.__setattr__(self, "properties", _TEMPLATE.properties)


def install() -> bool:
    """Use ``SharedTableProperties`` where paho decodes PUBLISH packets; False if paho is laid out differently."""
    try:
        from paho.mqtt import _packet
    except ImportError:
        return False
    current: Any = getattr(_packet, "Properties", None)
    if current is SharedTableProperties:
        return True
    if current is not Properties:
        return False
    _packet.Properties = SharedTableProperties  # type: ignore[attr-defined]
    return True
