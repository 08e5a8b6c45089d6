"""Where samples come from: the source interface and its registry, the ADXL345 over I2C, raw samples over MQTT,
recorded runs (``loaders``; the IMS and FEMTO rig directories in ``bearing_dirs``) replayed, and the bearing
simulator; the sensor checks a chunk must pass, and the allocator settings that keep a long-running reader's
memory flat.

May import: ``vibrawatch.agent.detect`` and ``vibrawatch.agent.errors``; never ``link``, ``model`` or the
service modules above them.
"""
