"""vibrawatch edge agent: numpy, a TFLite interpreter, paho-mqtt and the standard library only.

Rooms, lowest first; a module imports only from its own room or a lower one (tests/test_layers.py checks every
import, inside functions and under TYPE_CHECKING too):
- the bottom: ``errors`` (the error classes every room raises), ``sections`` (the one TOML section parser, also
  training's and the monitor's) and ``files`` (file-system helpers).
- ``detect/``: the numpy detection core shared with training (frames, features, window, scale, infer, decide,
  measures, events, diagnosis, detector, healthy statistics, calibration, a scored window's result).
- ``sources/`` and ``link/``: where samples come from; how messages go to the broker. Neither imports the other.
- ``model/``: the bundle, signed deploys (request, state directory, probation) and commissioning.
- this folder: ``config`` (composes the rooms' sections), ``pipeline`` (source -> frames -> features -> window ->
  scale -> infer -> decide), ``reader`` (the source's thread), ``reconfigure`` (a new config or bundle, all or
  nothing), ``service`` (the systemd service's loop), ``checks``, ``preflight`` and ``cli``.
"""

__version__ = "0.1.0"
