"""The agent's side of the broker: the versioned topic and payload scheme (``topics``, JSON Schemas in ``schemas/``,
documented in docs/mqtt.md), the on-disk spool that keeps messages across outages (``spool``; its SQLite file,
one agent's only and kept within the disk, ``spool_file``; in memory once that file went read-only,
``spool_memory``) and the MQTT connection that publishes them:
``publish`` (the ``Publisher`` the service uses) composed of ``broker`` (the ``[mqtt]`` settings), ``connection``
(the paho client and its callbacks), ``guard`` (no exception leaves a callback), ``reach`` (an unreachable
broker's reason and log), ``sender`` (the thread that drains the spool) and ``status`` (the retained status and
the last will).

May import: ``vibrawatch.agent.detect`` and ``vibrawatch.agent.errors``; never ``sources``, ``model`` or the
service modules above them.
"""
