"""The detection core, the same numpy code on the workstation and the gateway.

Frames and features from samples (``recording``, ``frames``, ``features``), windows and scaling (``window``,
``scale``), the TFLite model (``infer``), the autoencoder's alarm rule (``decide``, ``threshold``), the
combined detector's measures (``measures``: level floors, PCA residual, own deviation), event layer
(``events``) and defect diagnosis (``diagnosis``), their manifest fields read as a boundary
(``manifest_fields``), the detector's parameters as one object (``detector``), its healthy statistics and
their fit (``healthy``, ``calibrate``) and a scored window (``results``). Training, conversion and the gateway
all import it, so a window scores the same everywhere.

May import: numpy, the standard library and ``vibrawatch.agent.errors``; nothing else of the agent.
"""
