"""`vibrawatch agent ...`: the gateway's commands; imports only what a gateway has."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from agent.errors import VibrawatchError

F = TypeVar("F", bound=Callable[..., Any])

agent_app = typer.Typer(help="Run the edge agent on a gateway (no TensorFlow needed).", no_args_is_help=True)


def user_errors(fn: F) -> F:
    """Turn a VibrawatchError into one clear line on stderr and exit code 2, not a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except VibrawatchError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@agent_app.command("run")
@user_errors
def run(
    config: Annotated[Path, typer.Option("--config", help="Agent TOML (see configs/agent.example.toml).")],
) -> None:
    """Score live vibration and publish scores, alarms and status over MQTT until stopped.

    Verifies the bundle first (checksums, signature if a public key is configured, golden self-test).
    SIGTERM drains the spool and exits; SIGHUP reloads the config and bundle. Under systemd
    (Type=notify) it reports READY and feeds the watchdog while windows are being scored.
    """
    from agent.service import run as run_service

    raise typer.Exit(run_service(config))
