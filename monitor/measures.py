"""The fleet's own measure of its detector, from the operators' verdicts on closed alarm episodes.

Per site and per model: confirmed faults, nuisance alarms (closed as ``no_fault_found``) per machine-month,
planned maintenance, episodes still open, the share of verdicts that confirmed a fault, and the time from
warning (the raise reaching the monitor) to repair (the episode closed as ``fault_confirmed``). A machine-month
is 30 days of one device watched: from its first message at this monitor to its last (or now).
"""

from __future__ import annotations

import statistics
from typing import Any

MONTH_S = 30 * 86_400.0
READS = {"episodes": ("site", "device", "model", "state", "verdict", "raised_at", "closed_at"),
         "devices": ("site", "device", "model", "first_seen", "last_seen")}  # what ``measures`` reads


def _group(rows: list[dict[str, Any]], months: float) -> dict[str, Any]:
    confirmed = [r for r in rows if r["verdict"] == "fault_confirmed"]
    nff = sum(1 for r in rows if r["verdict"] == "no_fault_found")
    maintenance = sum(1 for r in rows if r["verdict"] == "maintenance")
    hours = sorted((r["closed_at"] - r["raised_at"]) / 3600 for r in confirmed)
    judged = len(confirmed) + nff
    return {"episodes": len(rows), "open": sum(1 for r in rows if r["state"] != "closed"),
            "confirmed_faults": len(confirmed), "nuisance_alarms": nff, "maintenance": maintenance,
            "machine_months": round(months, 4),
            "nuisance_per_machine_month": round(nff / months, 4) if months > 0 else None,
            "confirmed_share": round(len(confirmed) / judged, 4) if judged else None,
            "warning_to_repair_h": {"median": round(statistics.median(hours), 3), "max": round(hours[-1], 3),
                                    "n": len(hours)} if hours else None}


def measures(db: Any, now: float) -> dict[str, Any]:
    """``{"fleet": {...}, "sites": {site: {...}}, "models": {model: {...}}}`` (the measures above)."""
    eps = db.query(f"SELECT {', '.join(READS['episodes'])} FROM episodes")
    devices = db.query(f"SELECT {', '.join(READS['devices'])} FROM devices")
    span: dict[tuple[str, str], float] = {}
    for d in devices:
        if d["first_seen"] is not None:
            end = d["last_seen"] if d["last_seen"] is not None else now
            span[(d["site"], d["device"])] = max(float(end) - float(d["first_seen"]), 0.0) / MONTH_S
    model_of = {(d["site"], d["device"]): d["model"] or "?" for d in devices}

    def months(keys: set[tuple[str, str]]) -> float:
        return sum(span.get(k, 0.0) for k in keys)

    out: dict[str, Any] = {"fleet": _group(eps, months(set(span))), "sites": {}, "models": {}}
    for site in sorted({d["site"] for d in devices} | {e["site"] for e in eps}):
        keys = {k for k in model_of if k[0] == site}
        out["sites"][site] = _group([e for e in eps if e["site"] == site], months(keys))
    for model in sorted({m for m in model_of.values()} | {e["model"] for e in eps}):
        # an episode counts for the model that raised it; machine-months for the devices on the model now
        keys = {k for k, m in model_of.items() if m == model}
        out["models"][model] = _group([e for e in eps if e["model"] == model], months(keys))
    return out
