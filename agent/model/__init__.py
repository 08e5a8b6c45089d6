"""The model's life on a gateway: the signed bundle it loads and verifies (``bundle``), signed deploys with
probation and rollback (``deploy``), and commissioning, which fits this machine's healthy state
(``commission``).

May import: ``vibrawatch.agent.detect``, ``link`` and ``errors``; never ``sources`` or the service modules above
(``pipeline``, ``service``, ``config``, ``preflight``, ``cli``).
"""
