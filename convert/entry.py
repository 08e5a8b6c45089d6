"""The `vibrawatch` command's entry point: a missing extra is one line naming the extra to install.

The workstation's commands import their heavy packages when they run (TensorFlow for ``train``, psycopg for a
PostgreSQL monitor, ...), and typer itself comes with the ``train`` and ``monitor`` extras, so a machine with
another extra would otherwise end in a ModuleNotFoundError traceback. This module imports nothing that an
extra brings.
"""

from __future__ import annotations

import sys

# The top-level module a package installs -> the extra that brings it (pyproject.toml).
EXTRAS = {
    "tensorflow": "train", "tf_keras": "train", "keras": "train", "sklearn": "train", "scipy": "train",
    "matplotlib": "train", "tqdm": "train", "amqtt": "train", "cryptography": "train", "typer": "train",
    "click": "train", "psycopg": "monitor", "fastjsonschema": "monitor", "orjson": "monitor", "argon2": "monitor",
    "paho": "edge", "ai_edge_litert": "edge", "tflite_runtime": "edge-tflite", "smbus2": "edge", "pyod": "baselines",
    "numba": "baselines",
}


def missing_extra(e: ModuleNotFoundError) -> str | None:
    """The one line for a module an extra would have brought, or None when it is not one of ours."""
    top = (e.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    command = " ".join(sys.argv[1:2]) or "this command"
    return (f"error: `vibrawatch {command}` needs {top}, which the [{extra}] extra installs: "
            f"pip install \"vibrawatch[{extra}]\"")


def main() -> None:
    """Console entry point (`vibrawatch`)."""
    try:
        from .cli import main as cli_main

        cli_main()
    except ModuleNotFoundError as e:
        line = missing_extra(e)
        if line is None:
            raise
        print(line, file=sys.stderr)
        sys.exit(2)
