"""`vibrawatch agent ...`: the gateway's commands; imports only what a gateway has."""

from __future__ import annotations

import typer

agent_app = typer.Typer(help="Run the edge agent on a gateway (no TensorFlow needed).", no_args_is_help=True)
