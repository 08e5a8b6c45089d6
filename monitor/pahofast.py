"""Make paho-mqtt's MQTT 5 receive path cheaper for a consumer that takes thousands of messages a second.

Three costs paho (2.x) pays per message that a bare MQTT 3.1.1 subscriber with automatic acks does not, each
measured in the monitor under bench/monitor.py's drain (py-spy):

- every incoming MQTT 5 PUBLISH gets a fresh ``Properties`` object that builds its lookup tables anew (two
  dicts of about thirty entries) and then, in ``unpack``, "clears" itself by probing all thirty names with
  ``hasattr`` and copies the rest of the packet. The tables are constants (paho never writes to them after
  ``__init__``), so the subclass here shares them, clears only the attributes an instance actually holds,
  and answers an empty property list (one zero byte) at once (~25 us of 100 per message);
- every message walks the (empty) topic matcher of ``message_callback_add`` even when no filtered callback
  exists: the matcher here answers at once while it is empty, and is the real one otherwise;
- with manual acks, each ``ack`` queues its own 4-byte PUBACK packet and writes a byte to paho's wake-up
  socket; ``ack_many`` queues one packet holding every PUBACK of a committed batch (one socket write).

Everything else, parsing included, is paho's own code. Each piece is used only where paho's layout is the
one checked (``install`` and ``ack_many`` fall back to paho's own path otherwise).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.properties import Properties

_TEMPLATE = Properties(0)
_NAMES = frozenset(n.replace(" ", "") for n in _TEMPLATE.names)
_PUBACK = struct.Struct("!BBH")  # fixed header (PUBACK, remaining length 2), packet id: reason "success"


class SharedTableProperties(Properties):
    """``Properties`` whose constant lookup tables are built once per process, not once per packet."""

    def __init__(self, packetType: int) -> None:  # noqa: N803 - paho's name
        object.__setattr__(self, "packetType", packetType)
        object.__setattr__(self, "types", _TEMPLATE.types)
        object.__setattr__(self, "names", _TEMPLATE.names)
        object.__setattr__(self, "properties", _TEMPLATE.properties)

    def clear(self) -> None:
        """What paho's ``clear`` does (remove every property set), looking only at what is set."""
        for name in [k for k in self.__dict__ if k in _NAMES]:
            delattr(self, name)

    def unpack(self, buffer: bytes | bytearray) -> tuple[Properties, int]:
        """paho's ``unpack``; a PUBLISH without properties (length byte 0, what agents send) answered at once."""
        if buffer and buffer[0] == 0:
            self.clear()
            return self, 1
        return super().unpack(buffer)  # type: ignore[no-any-return]


class QuickMatcher(MQTTMatcher):
    """paho's topic matcher that answers "no callback" without walking the topic while nothing is added."""

    def iter_match(self, topic: str) -> Any:
        if not self._root._children:
            return iter(())
        return super().iter_match(topic)


def install() -> bool:
    """Use ``SharedTableProperties`` where paho decodes PUBLISH packets; False if paho is laid out differently."""
    try:
        from paho.mqtt import _packet
    except ImportError:
        return False
    current: Any = getattr(_packet, "Properties", None)
    if current is SharedTableProperties:
        return True
    if current is not Properties or set(vars(_TEMPLATE)) != {"packetType", "types", "names", "properties"}:
        return False  # another paho: what ``SharedTableProperties.__init__`` sets would not be all it needs
    _packet.Properties = SharedTableProperties  # type: ignore[attr-defined]
    return True


def quick_matcher(client: mqtt.Client) -> bool:
    """Give a new client the quick matcher (before any ``message_callback_add``); False if paho differs."""
    current = getattr(client, "_on_message_filtered", None)
    if type(current) is not MQTTMatcher or current._root._children:
        return False
    client._on_message_filtered = QuickMatcher()  # type: ignore[attr-defined]
    return True


def ack_many(client: mqtt.Client, mids: Sequence[int]) -> None:
    """Acknowledge QoS 1 messages (``manual_ack``) with one queued write instead of one per message.

    The bytes are exactly the PUBACKs paho's ``ack`` sends (MQTT 3.1.1 and 5: fixed header, packet id; in MQTT
    5 a PUBACK without reason code means success), in the same order, on the same outgoing queue."""
    if not mids:
        return
    queue = getattr(client, "_packet_queue", None)
    if queue is None or not getattr(client, "_manual_ack", False):
        for mid in mids:
            client.ack(mid, 1)
        return
    queue(mqtt.PUBACK, b"".join([_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in mids]), 0, 0)
