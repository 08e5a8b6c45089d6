"""The monitor's quick schema check never accepts what the schema refuses (fastjsonschema, the authority, and
jsonschema agree on every case here), takes the quick path for what agents send, and names the same reason
as fastjsonschema for a broken message."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import fastjsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker

from vibrawatch.agent.link.topics import alarm_payload, score_payload, status_payload
from vibrawatch.monitor.schemacheck import Checker, compile_quick

SCHEMAS = Path(__file__).resolve().parents[1] / "agent" / "link" / "schemas"
SHA = "ab" * 32
TS = "2026-11-23T02:10:00.000Z"


def _examples() -> dict[str, list[dict[str, Any]]]:
    """Valid messages of every kind, as the agent builds them (and with every optional field)."""
    contributions = {"bearing1": 0.151, "bearing2": 0.031, "bearing3": 0.0, "bearing4": 3}
    score = {**score_payload(t=1076890359.0, score=0.2412, threshold=0.2137, level=1.13, contributions=contributions,
                             model="ims2-none-f845fe5516"), "seq": 1013}
    alarm = {**alarm_payload(t=1076890359.0, event="raised", channel="bearing1", score=0.2412, level=1.13,
                             since=1076890359.0, model="ims2-none-f845fe5516"), "seq": 1014}
    diag = {"defect": "bpfo", "ratio": 2.4, "ratios": {"bpfo": 2.4, "bpfi": 1.1, "bsf": 1.0, "ftf": 1.0}}
    deploy = {"deployment": 7, "outcome": "applied", "reason": "probation passed", "from": "a", "to": "b",
              "sha256": SHA, "timestamp": TS}
    return {
        "score": [score, {**score, "threshold_source": "commissioning", "model_sha256": SHA}],
        "alarm": [alarm, {**alarm, "event": "cleared", "channel": None, "since": None},
                  {**alarm, "channels": ["bearing1"], "diagnosis": diag, "model_sha256": SHA},
                  {**alarm, "diagnosis": {**diag, "defect": None}}],
        "status": [status_payload("online", agent="0.1.0", model="m", runtime="ai-edge-litert 2.3.0", numpy="2.4.6",
                                  channels=["a", "b"], spool_dropped=0, model_sha256=SHA, deploy=deploy),
                   status_payload("offline", reason="crashed", error="RuntimeError: x"),
                   status_payload("commissioning", threshold_source="commissioning", windows=12, note="starts"),
                   status_payload("commissioned", threshold_source="commissioned", threshold=0.55,
                                  channel_thresholds=[0.14, 0.13], windows=5000, median_level=0.82, standout=1.06,
                                  bundle_threshold=0.58),
                   status_payload("sensor", fault="flatline")],
        "transient": [{"v": 1, "timestamp": TS, "t": 72000.0, "seq": 733, "channels": ["bearing3"], "ratio": [1.33],
                       "relaxed_by": TS, "model": "m"}],
        "condition_change": [{"v": 1, "timestamp": TS, "t": 1.5, "seq": 9, "channels": ["a", "b"], "ratio": [1.3, 1],
                              "model": "m", "model_sha256": SHA}],
        "diagnosis": [{"v": 1, "timestamp": TS, "t": 3.0, "seq": 10, "channel": "a", "since": TS, "defect": "bsf",
                       "ratio": 1.6, "ratios": {"bsf": 1.6}, "model": "m"}],
    }


EXAMPLES = _examples()
ODD = [None, True, False, 0, -1, 1, 1.0, 0.5, -0.5, 10**20, "", "x", "2026-13-01T00:00:00Z", TS, "2026-11-23 02:10:00",
       [], ["a"], [1], [-1], {}, {"a": 1}, {"a": -1}, {"a": "x"}]


def _schema(kind: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{kind}.json").read_text())


@functools.cache
def _checker(kind: str) -> Checker:
    return Checker(_schema(kind))


def _full_ok(kind: str, msg: Any) -> bool:
    try:
        _checker(kind).full(copy.deepcopy(msg))
    except fastjsonschema.JsonSchemaException:
        return False
    return True


def _mutations(msg: dict[str, Any]) -> list[Any]:
    """Every field removed, every field (and every nested field) set to each odd value, an unknown field."""
    out: list[Any] = [None, [], "x", {**msg, "unknown": 1}]
    for key, value in msg.items():
        out.append({k: v for k, v in msg.items() if k != key})
        out += [{**msg, key: odd} for odd in ODD]
        if isinstance(value, dict):
            for inner in list(value):
                out.append({**msg, key: {k: v for k, v in value.items() if k != inner}})
                out += [{**msg, key: {**value, inner: odd}} for odd in ODD]
    return out


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_what_agents_send_passes_the_quick_check(kind: str) -> None:
    quick = compile_quick(_schema(kind))
    for msg in EXAMPLES[kind]:
        Draft202012Validator(_schema(kind), format_checker=FormatChecker()).validate(msg)
        assert quick(msg), (kind, msg)


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_the_quick_check_never_accepts_what_the_schema_refuses_and_reasons_are_fastjsonschemas(kind: str) -> None:
    checker = _checker(kind)
    refused = 0
    for msg in EXAMPLES[kind]:
        for bad in _mutations(msg):
            ok = _full_ok(kind, bad)
            if checker.quick(bad):
                assert ok, (kind, bad)
            error = checker.errors(bad)
            assert (error is None) == ok, (kind, bad, error)
            if not ok:
                refused += 1
                with pytest.raises(fastjsonschema.JsonSchemaException) as e:
                    checker.full(copy.deepcopy(bad))
                assert error == e.value.message
    assert refused > 50  # the mutations did break messages


JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-2, 2, allow_nan=False)
                    | st.sampled_from(["", "a", TS, "2026-02-30T00:00:00Z", SHA, "bundle", "raised", "bpfo"]),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["a", "b"]), inner,
                                                                                max_size=2), max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(EXAMPLES)), which=st.integers(0, 10), field=st.integers(0, 40), value=JSON)
def test_random_values_in_any_field_never_pass_quick_where_the_schema_refuses(kind: str, which: int, field: int,
                                                                              value: Any) -> None:
    msg = dict(EXAMPLES[kind][which % len(EXAMPLES[kind])])
    msg[sorted(msg)[field % len(msg)]] = value
    if _checker(kind).quick(msg):
        assert _full_ok(kind, msg), msg
