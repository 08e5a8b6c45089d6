"""Workstation commands for conversion and bundles: `convert`, `keys new`, `bundle verify|show`.

Registered on the main app by ``register``; heavy imports (TensorFlow, cryptography) stay inside commands.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the conversion and bundle commands to the main ``vibrawatch`` app."""
