"""`vibrawatch monitor` and `vibrawatch fleet`, added to the workstation CLI by ``register``."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from . import alarmcli, fleet
from .config import MonitorConfig, load_monitor_config
from .measures import READS, measures


def register(app: typer.Typer, user_errors: Callable[[Any], Any]) -> None:
    """Add the fleet-side commands to the main ``vibrawatch`` app (``user_errors`` turns bad input into one line)."""

    @app.command()
    @user_errors
    def monitor(
        broker: Annotated[str | None, typer.Option(help="mqtt://HOST:PORT or mqtts://HOST:PORT (TLS).")] = None,
        db: Annotated[str | None, typer.Option(help="sqlite:///PATH (default sqlite:///fleet.db) or "
                                               "postgresql://USER@HOST/DB (its password from [monitor] "
                                               "db_password_file or the credential db-password).")] = None,
        http: Annotated[str | None, typer.Option(help="Serve the page at HOST:PORT (default 127.0.0.1:8080); "
                                                 "'off' for none.")] = None,
        config: Annotated[Path | None, typer.Option(help="TOML settings; see configs/monitor.example.toml.")] = None,
        group: Annotated[str | None, typer.Option(help="Shared-subscription group: monitors in one group split "
                                                  "the fleet's traffic.")] = None,
        shared: Annotated[bool | None, typer.Option("--shared/--no-shared", help="Shared subscription (default) "
                                                    "or a plain one (one monitor; see docs/monitor.md).")] = None,
        client_id: Annotated[str | None, typer.Option(help="MQTT client id, one per monitor process (default "
                                                      "vibrawatch-monitor-<group>-<host>).")] = None,
        webhook: Annotated[str | None, typer.Option(help="POST alerts (JSON) to this URL.")] = None,
        raw_days: Annotated[float | None, typer.Option(help="Keep raw scores this many days, then hourly "
                                                       "aggregates (default 30).")] = None,
        operators: Annotated[Path | None, typer.Option(help="Who may act on alarms: NAME:ARGON2-HASH lines "
                                                       "(`vibrawatch operators add`); default [monitor] "
                                                       "operators_file or $CREDENTIALS_DIRECTORY/operators.")] = None,
        signing_key: Annotated[Path | None, typer.Option(help="The deploy signing key (mode 0600): closing an alarm "
                                                         "with 'recalibrate' sends the gateway the signed request "
                                                         "([remote] signing_key; without, the page shows the "
                                                         "command).")] = None,
        verbose: Annotated[bool, typer.Option("--verbose", help="Log every connection and retention step.")] = False,
    ) -> None:
        """Store the fleet's scores, alarms and status, alert on them, and serve the fleet page.

        Example: vibrawatch monitor --broker mqtt://127.0.0.1:1883 --db sqlite:///fleet.db --http 127.0.0.1:8080
        """
        cfg = load_monitor_config(config, broker=broker, db=db, http=http, group=group, shared=shared,
                                  client_id=client_id, webhook=webhook, raw_days=raw_days,
                                  operators_file=None if operators is None else str(operators),  # http "off": none
                                  signing_key=None if signing_key is None else str(signing_key))
        run_monitor(cfg, verbose)

    @app.command("fleet")
    @user_errors
    def fleet_cmd(
        db: Annotated[str, typer.Option(help="The monitor's database: sqlite:///PATH or postgresql://...")],
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object (for scripts).")] = False,
        silent_factor: Annotated[float, typer.Option(help="Silent after this many usual intervals.")] = 5.0,
        min_silent_s: Annotated[float, typer.Option(help="... and never sooner than this.")] = 30.0,
    ) -> None:
        """Print the fleet table: one row per device, worst first.

        Example: vibrawatch fleet --db sqlite:///fleet.db
        """
        from .schema import DEVICE_COLUMNS
        from .store import COUNTED, open_store

        # It only reads: a typo in --db is an error, not an empty fleet; a database an older monitor made is read
        # as it is when it has what is read here, else refused in one line (never migrated: schema.readable).
        reads: dict[str, tuple[str, ...]] = {**{t: () for t in COUNTED}, **READS, "devices": DEVICE_COLUMNS}
        store = open_store(db, reads=reads)
        try:
            now = time.time()
            rows = fleet.table(store, now, silent_factor, min_silent_s)
            counts = store.counts()
            verdicts = measures(store.db, now)
        finally:
            store.close()
        if as_json:
            typer.echo(json.dumps({"devices": rows, "counts": counts, "measures": verdicts}, indent=2))
            return
        typer.echo(format_table(rows))
        typer.echo(f"{counts['scores']} scores, {counts['alarms']} alarms, {counts['dead_letters']} dead letters, "
                   f"{sum(r['lost'] or 0 for r in rows)} messages lost")
        f = verdicts["fleet"]
        typer.echo(f"alarm episodes: {f['episodes']} ({f['open']} open), {f['confirmed_faults']} confirmed faults, "
                   f"{f['nuisance_alarms']} nuisance alarms ({_num(f['nuisance_per_machine_month'])} per "
                   f"machine-month), {f['maintenance']} maintenance; warning to repair median "
                   f"{_num((f['warning_to_repair_h'] or {}).get('median'))} h")

    alarmcli.register(app, user_errors)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The fleet as fixed-width text."""
    head = f"{'site/device':28s} {'health':13s} {'level':>6s} {'score':>9s} {'thresh':>9s} {'thresholds':13s} " \
           f"{'alarm since':24s} {'last':>7s} {'lost':>5s} {'model':24s} {'sha256':12s} note"
    lines = [head]
    for r in rows:
        lvl = f"{r['level']:.2f}" if r["level"] is not None else "-"
        sc = f"{r['last_score']:.4g}" if r["last_score"] is not None else "-"
        th = f"{r['threshold']:.4g}" if r["threshold"] is not None else "-"
        age = f"{r['age_s']:.0f}s" if r["age_s"] is not None else "-"
        lines.append(f"{r['site'] + '/' + r['device']:28s} {r['health']:13s} {lvl:>6s} {sc:>9s} {th:>9s} "
                     f"{r.get('threshold_source') or '-':13s} {r['alarm_since'] or '-':24s} {age:>7s} "
                     f"{r['lost'] or 0:>5d} {r['model'] or '-':24s} {(r.get('model_sha256') or '-')[:12]:12s} "
                     f"{r['note']}".rstrip())
    return "\n".join(lines)


def run_monitor(cfg: MonitorConfig, verbose: bool = False) -> None:
    """Run until SIGTERM or Ctrl-C."""
    from .service import Monitor

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("vibrawatch.monitor").setLevel(logging.INFO)
    mon = Monitor(cfg)
    signal.signal(signal.SIGTERM, lambda *_: mon.stop_event.set())
    signal.signal(signal.SIGINT, lambda *_: mon.stop_event.set())
    typer.echo(f"monitor: {cfg.monitor.broker} -> {mon.store.safe_url}" + (f"; page at {mon.url}" if mon.url else ""))
    mon.run()
