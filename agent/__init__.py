"""vibrawatch edge agent: numpy, a TFLite interpreter, paho-mqtt and the standard library only.

The modules read top to bottom as the data flows:
source -> frames -> features -> window -> scale -> infer -> decide -> publish.
"""

__version__ = "0.1.0"
