"""The evaluation report as a user reads it: one line per detector (warning, lead time, channel, nuisance alarms,
AUC), then how the run was scored, the diagnosis, transients and condition changes. Printed by `vibrawatch
evaluate` and both demos."""

from __future__ import annotations

from typing import Any

import typer

from vibrawatch.agent.detect.diagnosis import describe


def print_report(r: dict[str, Any]) -> None:
    """Print ``evaluate_run``'s report (train/evaluate.py) as a table and a few lines, for a person, not a script."""
    typer.echo(f"data {r['data']}: {r['windows']} windows, failure at {r['failure_at']}")
    first = "combined" if r.get("detector") == "combined" else "lstm_autoencoder"
    rows = [(first, r)] + list(r.get("baselines", {}).items())
    typer.echo(f"{'detector':20s} {'warning from':22s} {'lead h':>8s} {'channel':12s} {'nuisance':>8s} "
               f"{'/1000 h':>8s} {'AUC':>6s}")
    for name, d in rows:
        if not isinstance(d, dict):
            continue
        lead = f"{d['lead_hours']:.2f}" if d.get("lead_hours") is not None else "-"
        nz = d.get("nuisance") or {}
        rate = f"{nz['per_1000_h']:.1f}" if nz.get("per_1000_h") is not None else "-"
        auc = f"{d['auc']:.3f}" if d.get("auc") is not None else "-"
        typer.echo(f"{name:20s} {str(d.get('first_alarm')):22s} {lead:>8s} {str(d.get('alarm_channel')):12s} "
                   f"{d.get('false_alarms', '-')!s:>8s} {rate:>8s} {auc:>6s}")
    sc = r.get("scoring") or {}
    if sc:
        typer.echo(f"scoring: failure {sc.get('failure_at')} on {sc.get('failed')}; known healthy until "
                   f"{sc.get('healthy_until') or '-'} ({sc.get('healthy_from') or 'not known'}); merge gaps < "
                   f"{sc.get('merge_s', 0):g} s; AUC: {sc.get('auc_basis') or 'no healthy/faulty split known'}")
    if r.get("diagnosis"):
        found = r.get("diagnosed")
        typer.echo(f"diagnosis at the first alarm: {describe(r['diagnosis'])}"
                   + (f"; {describe(found)} from {found['at']}" if found and found["at"] != r["first_alarm"] else ""))
    for t in r.get("transients", []):
        typer.echo(f"transient {t['at']}: {t['channel']} x{t['ratio']}, relaxed by {t['relaxed_by']}")
    for c in r.get("condition_changes", []):
        typer.echo(f"condition change {c['at']}: every channel x{min(c['ratios'])}..x{max(c['ratios'])}")
