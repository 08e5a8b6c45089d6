"""vibrawatch edge agent: numpy, a TFLite interpreter, paho-mqtt and the standard library only.

Rooms, lowest first; a module imports only from its own room or a lower one (tests/test_layers.py):
- ``errors``: the error classes every room raises.
- ``detect/``: the numpy detection core shared with training (frames, features, window, scale, infer, decide,
  events, detector, healthy statistics).
- ``sources/`` and ``link/``: where samples come from; how messages go to the broker. Neither imports the other.
- ``model/``: the bundle, deploys and commissioning.
- this folder: ``config``, ``pipeline`` (source -> frames -> features -> window -> scale -> infer -> decide),
  ``service`` (the systemd service), ``preflight`` and ``cli``.
"""

__version__ = "0.1.0"
