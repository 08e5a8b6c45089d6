"""The agent's side of the broker: the versioned topic and payload scheme (``topics``, JSON Schemas in
``schemas/``, documented in docs/mqtt.md), the on-disk spool that keeps messages across outages (``spool``)
and the MQTT connection that publishes them (``publish``).

May import: ``vibrawatch.agent.detect`` and ``vibrawatch.agent.errors``; never ``sources``, ``model`` or the
service modules above them.
"""
