"""`vibrawatch alarms list|show|ack|shelve|close|recalibrate` and `vibrawatch operators add`.

The alarm commands talk to the running monitor's HTTP API, not to its database: the monitor is where operators
are authenticated, where every action is audited and sent to the webhook, and where the page hears of it at
once; a database URL would let anyone who can read it write anything, and would bypass all of that. Viewing
needs no credentials; acting sends ``Authorization: Bearer NAME:SECRET`` from ``$VIBRAWATCH_TOKEN`` or
``--token-file`` (never an option's value: ``ps`` shows those).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import typer

from vibrawatch.agent.errors import ConfigError, VibrawatchError

DEFAULT_URL = "http://127.0.0.1:8080"
UrlOpt = Annotated[str | None, typer.Option("--url", help="The monitor's page (default $VIBRAWATCH_MONITOR or "
                                                          f"{DEFAULT_URL}).")]
TokenOpt = Annotated[Path | None, typer.Option("--token-file", help="A file holding NAME:SECRET (default "
                                                                    "$VIBRAWATCH_TOKEN).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON (for scripts).")]


class ApiError(VibrawatchError):
    """The monitor refused, or could not be reached: one line saying which and why."""


def _base(url: str | None) -> str:
    return (url or os.environ.get("VIBRAWATCH_MONITOR") or DEFAULT_URL).rstrip("/")


def _token(token_file: Path | None) -> str:
    if token_file is not None:
        try:
            text = token_file.read_text().strip()
        except OSError as e:
            raise ApiError(f"--token-file {token_file}: {e.strerror}") from None
        if ":" not in text:
            raise ApiError(f"--token-file {token_file}: expected NAME:SECRET on one line")
        return text
    token = os.environ.get("VIBRAWATCH_TOKEN", "").strip()
    if not token:
        raise ApiError("acting on an alarm needs an operator: set VIBRAWATCH_TOKEN=NAME:SECRET or pass --token-file")
    return token


def call(base: str, path: str, body: dict[str, Any] | None = None, token: str | None = None) -> dict[str, Any]:
    """GET (``body`` None) or POST JSON to the monitor; its JSON answer, or an ApiError with its reason."""
    headers = {"Accept": "application/json", "User-Agent": "vibrawatch-cli"}
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(base + path, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - the operator's own monitor
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            reason = json.loads(e.read()).get("error", e.reason)
        except ValueError:
            reason = e.reason
        raise ApiError(f"monitor {base}: {e.code}: {reason}") from None
    except (urllib.error.URLError, OSError) as e:
        why = getattr(e, "reason", e)
        raise ApiError(f"monitor {base}: cannot reach it ({why}); is `vibrawatch monitor` running with --http "
                       "there?") from None


def format_episodes(rows: list[dict[str, Any]]) -> str:
    """Episodes as fixed-width text, newest first."""
    lines = [f"{'id':32s} {'state':12s} {'channel':10s} {'raised':24s} {'level':>6s} {'diagnosis':28s} "
             f"{'by':12s} verdict"]
    for r in rows:
        by = r.get("closed_by") or r.get("shelved_by") or r.get("ack_by") or "-"
        verdict = r.get("verdict") or "-"
        if r.get("part"):
            verdict += f": {r['part']} ({r.get('work') or ''})"
        lvl = f"{r['level']:.2f}" if r.get("level") is not None else "-"
        lines.append(f"{r['id']:32s} {r['state']:12s} {r['channel'] or '-':10s} {r['raised_ts']:24s} {lvl:>6s} "
                     f"{(r.get('diagnosis_text') or '-')[:28]:28s} {by[:12]:12s} {verdict}".rstrip())
    return "\n".join(lines)


def _show(answer: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
    else:
        e = answer["episode"]
        typer.echo(f"{e['id']}: {e['state']}" + (f" ({e['verdict']})" if e.get("verdict") else ""))


def _recalibrate(app: typer.Typer, site: str, device: str, broker: str | None, extra: list[str]) -> str:
    """After a repair: ask the gateway to learn the machine's new healthy state (`vibrawatch recalibrate`, a
    signed request made here, where the signing key is, as deploys are). Says so when this version has none."""
    import typer.main

    if "recalibrate" not in typer.main.get_command(app).commands:  # type: ignore[attr-defined]
        return (f"recalibration not sent: this vibrawatch has no `recalibrate` command yet; after the repair run "
                f"`vibrawatch-agent recalibrate` on {site}/{device}'s gateway")
    if not broker:
        return (f"recalibration not sent: no broker (--broker or $VIBRAWATCH_BROKER); run `vibrawatch recalibrate "
                f"--broker mqtt://HOST:PORT --site {site} --device {device}`")
    exe = shutil.which("vibrawatch") or str(Path(sys.executable).with_name("vibrawatch"))
    done = subprocess.run([exe, "recalibrate", "--broker", broker, "--site", site, "--device", device, *extra],
                          capture_output=True, text=True, check=False)
    out = (done.stdout + done.stderr).strip()
    return out if done.returncode == 0 else f"recalibration failed: {out}"


def register(app: typer.Typer, user_errors: Any) -> None:
    """Add `vibrawatch alarms ...` and `vibrawatch operators add` to the main app."""
    alarms = typer.Typer(help="Alarm episodes at a running monitor: list, acknowledge, shelve, close with a verdict.",
                         no_args_is_help=True)
    operators = typer.Typer(help="Who may act on alarms (the monitor's operators file).", no_args_is_help=True)
    app.add_typer(alarms, name="alarms")
    app.add_typer(operators, name="operators")

    @alarms.command("list")
    @user_errors
    def list_cmd(url: UrlOpt = None, site: Annotated[str | None, typer.Option()] = None,
                 device: Annotated[str | None, typer.Option()] = None,
                 state: Annotated[str | None, typer.Option(help="open, active, acknowledged, shelved, cleared or "
                                                                "closed (default: all).")] = None,
                 limit: Annotated[int, typer.Option(help="At most this many (the API pages by 200).")] = 200,
                 as_json: JsonOpt = False) -> None:
        """Alarm episodes, newest first (with --json, each with its whole history). Example: vibrawatch alarms list
        --state open"""
        base = _base(url)
        q = {k: v for k, v in (("site", site), ("device", device), ("state", state)) if v}
        rows: list[dict[str, Any]] = []
        offset: int | None = 0
        while offset is not None and len(rows) < limit:
            page = call(base, "/api/episodes?" + urlencode({**q, "limit": min(limit - len(rows), 200),
                                                            "offset": offset, **({"history": 1} if as_json else {})}))
            rows += page["items"]
            offset = page["next"]
        if as_json:
            typer.echo(json.dumps({"episodes": rows, "monitor": base, "at": time.time()}, indent=2))
        else:
            typer.echo(format_episodes(rows) if rows else "no alarm episodes")

    @alarms.command("show")
    @user_errors
    def show_cmd(episode: Annotated[str, typer.Argument(help="SITE/DEVICE/SEQ (from `alarms list`).")],
                 url: UrlOpt = None, as_json: JsonOpt = False) -> None:
        """One episode and its whole history (every change: who, what, when, from where)."""
        answer = call(_base(url), "/api/episode?" + urlencode({"id": episode}))
        if as_json:
            typer.echo(json.dumps(answer, indent=2))
            return
        typer.echo(format_episodes([answer["episode"]]))
        for h in answer["history"]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(h["at"]))
            typer.echo(f"  {when}Z {h['action']:12s} {h['actor']:24s} {h['source']:20s} "
                       f"{json.dumps(h['detail'])}")

    @alarms.command("ack")
    @user_errors
    def ack_cmd(episode: Annotated[str, typer.Argument(help="SITE/DEVICE/SEQ.")],
                note: Annotated[str, typer.Option(help="What you saw or will do.")] = "",
                url: UrlOpt = None, token_file: TokenOpt = None, as_json: JsonOpt = False) -> None:
        """Acknowledge an active alarm. Example: vibrawatch alarms ack plant/press7/812 --note 'on it'"""
        _show(call(_base(url), "/api/episodes/ack", {"id": episode, "note": note}, _token(token_file)), as_json)

    @alarms.command("shelve")
    @user_errors
    def shelve_cmd(episode: Annotated[str, typer.Argument(help="SITE/DEVICE/SEQ.")],
                   hours: Annotated[float, typer.Option(help="Shelved this long (at most 30 days).")],
                   note: Annotated[str, typer.Option(help="Why.")] = "",
                   url: UrlOpt = None, token_file: TokenOpt = None, as_json: JsonOpt = False) -> None:
        """Set an alarm aside for a stated time. Example: vibrawatch alarms shelve plant/press7/812 --hours 8"""
        _show(call(_base(url), "/api/episodes/shelve", {"id": episode, "hours": hours, "note": note},
                   _token(token_file)), as_json)

    @alarms.command("close")
    @user_errors
    def close_cmd(episode: Annotated[str, typer.Argument(help="SITE/DEVICE/SEQ.")],
                  verdict: Annotated[str, typer.Option(help="fault_confirmed, no_fault_found (a false alarm) or "
                                                            "maintenance (planned work).")],
                  part: Annotated[str, typer.Option(help="fault_confirmed: which part failed.")] = "",
                  work: Annotated[str, typer.Option(help="fault_confirmed: what was done.")] = "",
                  note: Annotated[str, typer.Option()] = "",
                  recalibrate: Annotated[bool, typer.Option("--recalibrate", help="After the repair, have the "
                                                            "gateway learn the machine's new healthy state.")] = False,
                  broker: Annotated[str | None, typer.Option(help="--recalibrate: the fleet's broker (default "
                                                             "$VIBRAWATCH_BROKER).")] = None,
                  sign_key: Annotated[Path | None, typer.Option(help="--recalibrate: the deploy signing key "
                                                                "(default as `vibrawatch recalibrate`).")] = None,
                  url: UrlOpt = None, token_file: TokenOpt = None, as_json: JsonOpt = False) -> None:
        """Close with a verdict. Example: vibrawatch alarms close plant/press7/812 --verdict fault_confirmed
        --part 'bearing 1' --work 'bearing replaced' --recalibrate"""
        answer = call(_base(url), "/api/episodes/close", {"id": episode, "verdict": verdict, "part": part,
                                                           "work": work, "note": note, "recalibrate": recalibrate},
                      _token(token_file))
        _show(answer, as_json)
        r = answer.get("recalibration") or {}
        if r.get("outcome") not in (None, "not_sent"):  # the monitor holds the key and sent (or tried) it itself
            typer.echo(f"recalibration {r['outcome']}" + (f" (request {r['id']})" if r.get("id") else "")
                       + (f": {r['reason']}" if r.get("reason") else ""), err=as_json)
        elif answer.get("recalibrate"):
            e = answer["episode"]
            extra = ["--note", f"{part}: {work}".strip(": ") or "alarm closed"]
            if sign_key is not None:
                extra += ["--sign-key", str(sign_key)]
            typer.echo(_recalibrate(app, e["site"], e["device"], broker or os.environ.get("VIBRAWATCH_BROKER"),
                                    extra), err=as_json)

    @alarms.command("recalibrate")
    @user_errors
    def recalibrate_cmd(episode: Annotated[str, typer.Argument(help="SITE/DEVICE/SEQ.")],
                        note: Annotated[str, typer.Option(help="Why (goes to the gateway's log and status).")] = "",
                        url: UrlOpt = None, token_file: TokenOpt = None, as_json: JsonOpt = False) -> None:
        """Have the monitor send the episode's gateway the signed recalibration (it needs [remote] signing_key).

        Example: vibrawatch alarms recalibrate plant/press7/812 --note 'bearing replaced'"""
        answer = call(_base(url), "/api/episodes/recalibrate", {"id": episode, "note": note}, _token(token_file))
        r = answer["recalibration"]
        if as_json:
            typer.echo(json.dumps(answer, indent=2))
        else:
            typer.echo(f"recalibration {r['outcome']}" + (f" (request {r['id']})" if r.get("id") else "")
                       + (f": {r['reason']}" if r.get("reason") else ""))
        if r["outcome"] not in ("sent", "queued"):
            raise typer.Exit(1)

    @operators.command("add")
    @user_errors
    def add_cmd(name: Annotated[str, typer.Argument(help="The operator's name (letters, digits, _ . @ -).")],
                file: Annotated[Path, typer.Option("--file", help="The operators file (created 0600).")],
                password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from "
                                                             "stdin (scripts) instead of asking.")] = False) -> None:
        """Add an operator (an Argon2id hash of the password; the password itself is never stored).

        Example: vibrawatch operators add alice --file /etc/vibrawatch/operators"""
        from .auth import hash_line

        if file.is_dir():  # said before the password is asked for
            raise ConfigError(f"--file {file}: a directory; name the operators file, e.g. {file / 'operators'}")
        if not file.parent.is_dir():
            raise ConfigError(f"--file {file}: no directory {file.parent}")
        if password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
        line = hash_line(name, password)
        try:  # as htpasswd does: an operator already there gets the new password (one line a name, never two)
            old = file.read_text(encoding="utf-8").splitlines() if file.exists() else []
            kept = [ln for ln in old if ln.split(":", 1)[0] != name]
            tmp = file.with_name(f".{file.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("".join(ln + "\n" for ln in [*kept, line]))
            os.replace(tmp, file)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--file {file}: cannot write it ({getattr(e, 'strerror', None) or e})") from None
        did = "password replaced" if len(kept) < len(old) else "added"
        typer.echo(f"{file}: operator {name} {did}; the CLI sends VIBRAWATCH_TOKEN={name}:<password>")
