"""`vibrawatch-agent`: the gateway's command, standard library only (argparse).

The workstation CLI (`vibrawatch`, typer) is not needed on a gateway: typer, click and what they pull in
cost ~10 MB of resident memory and 0.1 s of start-up on every service start, for two subcommands.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import ConfigError, VibrawatchError

_EPILOG = """examples:
  vibrawatch-agent check --config /etc/vibrawatch/agent.toml   # before (re)starting the service
  vibrawatch-agent run --config /etc/vibrawatch/agent.toml     # what the systemd unit runs
  vibrawatch-agent sources simulator                           # a commented [source] sample for one kind
  vibrawatch-agent recalibrate --config /etc/vibrawatch/agent.toml && systemctl reload vibrawatch-agent

The config file is documented in configs/agent.example.toml and docs/gateway.md; the topics and payloads
in docs/mqtt.md; commissioning and recalibrate in docs/install.md. Exit codes: 0 done, 1 crashed (the
status topic says so, with the error), 2 bad config, bundle, data, state directory, credential or device,
or a source that does not fit the bundle (one line on stderr says which file and what to fix; the systemd
units do not restart on it)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vibrawatch-agent", epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score a machine's vibration on the gateway and publish scores, alarms and status over "
                    "MQTT. Needs numpy, a TFLite runtime and paho-mqtt; no TensorFlow.")
    p.add_argument("--version", action="version", version=f"vibrawatch-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run", help="score and publish until stopped",
        description="Verify the bundle (checksums, signature if public_key is set, golden self-test), then "
                    "score the configured source and publish over MQTT. SIGTERM drains the spool and exits; "
                    "SIGHUP reloads the config and bundle. Under systemd (Type=notify) it reports READY and "
                    "feeds the watchdog only while windows are being scored.")
    run.add_argument("--config", required=True, metavar="FILE.toml", help="the agent config")
    check = sub.add_parser(
        "check", help="verify the config and the bundle, then exit",
        description="Everything `run` checks before it starts, without connecting or scoring: the config "
                    "file, the bundle's checksums, signature and golden self-test on this gateway's runtime.")
    check.add_argument("--config", required=True, metavar="FILE.toml", help="the agent config")
    sources = sub.add_parser(
        "sources", help="list the source kinds, or print one's commented [source] sample",
        description="Each source kind takes its own settings in [source]; a key of another kind is an error.")
    sources.add_argument("kind", nargs="?", help="print this kind's commented sample config")
    recal = sub.add_parser(
        "recalibrate", help="commission this machine's thresholds again",
        description="Mark the calibration in the state directory so that the agent learns this machine's "
                    "thresholds again ([commissioning] in the config) from its next start or reload "
                    "(systemctl reload vibrawatch-agent). Use it after maintenance that changes the machine's "
                    "healthy vibration level (new bearings, a re-alignment).")
    recal.add_argument("--config", required=True, metavar="FILE.toml", help="the agent config")
    return p


def _sources(kind: str | None) -> int:
    from .sources.registry import SOURCES

    if kind is None:
        for name, cls in SOURCES.items():
            print(f"{name:10s} {cls.description}")
        return 0
    if kind not in SOURCES:
        print(f"error: no source kind {kind!r}; choose one of {', '.join(SOURCES)}", file=sys.stderr)
        return 2
    print(SOURCES[kind].SAMPLE, end="")
    return 0


def recalibrate(config_path: str | Path) -> str:
    """``vibrawatch-agent recalibrate``: ask for a new commissioning; what to do next. Here, on top, because it
    reads the config: the model room below only marks the state file (``request_recalibration``)."""
    from .config import load_agent_config
    from .model.commission_store import length_text, request_recalibration, state_file_for

    cfg = load_agent_config(config_path)
    c = cfg.commissioning
    path = state_file_for(c, cfg.agent.spool)
    if c is None or path is None:
        raise ConfigError(f"{config_path}: no [commissioning] section: add one (windows = N or hours = H) "
                          "to learn this machine's thresholds")
    request_recalibration(path)
    return (f"{path}: a new commissioning ({length_text(c)}) starts at the agent's next start or reload: "
            "systemctl reload vibrawatch-agent (vibrawatch-agent@<machine> for the template), or kill -HUP its pid")


def _hold_signals() -> list[int]:
    """Until the service takes them over: a stop or reload signal during start-up (imports, the preflight's bundle
    check) is noted, not fatal, so `systemctl reload` or `stop` right after a start ends cleanly (a default SIGHUP
    would kill the service with a status systemd counts as clean, and it would not come back)."""
    held: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: held.append(signum))
    return held


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vibrawatch-agent``; returns the exit code."""
    args = _parser().parse_args(argv)
    held = _hold_signals() if args.command == "run" else []
    try:
        if args.command == "sources":
            return _sources(args.kind)
        if args.command in ("check", "run"):
            from .config import load_agent_config
            from .preflight import preflight

            preflight(load_agent_config(args.config))  # bundle, state directory, credential, device: one line each
        if args.command == "check":
            from .checks import check

            print(check(args.config))
            return 0
        if args.command == "recalibrate":
            print(recalibrate(args.config))
            return 0
        from .service import run

        return run(args.config, held)
    except KeyboardInterrupt:  # Ctrl-C in check, recalibrate, sources (run takes SIGINT as a clean stop)
        return 130
    except VibrawatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file or device the checks could not foresee (it vanished, a disk error): one line
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
