"""The model's life on a gateway: the signed bundle it loads and verifies (``bundle``), signed deploys with
probation and rollback (``deploy``, which sequences ``deploy_request``, ``deploy_inbox``, ``deploy_state``
and ``probation``; its request checks are ``signed_request``'s, shared with the remote ``command``), and
commissioning, which fits this machine's healthy state
(``commission``; its state file and windows file: ``commission_store``, ``commission_windows``).

May import: ``vibrawatch.agent.detect``, ``link`` and the bottom room (``errors``, ``sections``, ``files``);
never ``sources`` or the service modules above (``pipeline``, ``service``, ``config``, ``preflight``, ``cli``).
"""
