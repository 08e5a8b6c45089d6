"""Manifests a gateway must refuse in one line: fields of the wrong type end in BundleSchemaError (exit 2 from
`vibrawatch bundle verify` and `vibrawatch-agent check`), never a traceback; with a public key configured the
signature is checked before anything in the manifest is parsed. Fuzzed with Hypothesis."""

from __future__ import annotations

import base64
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from conftest import cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vibrawatch.agent.cli import main as agent_main
from vibrawatch.agent.model.bundle import (
    MANIFEST,
    BundleError,
    BundleSchemaError,
    BundleSignatureError,
    check_manifest,
    check_runtime,
    load_bundle,
    parse_manifest,
    verify_checksums,
)
from vibrawatch.convert.cli import app


@pytest.fixture(scope="module")
def bundle_dir(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_bundle`` as a directory (unsigned), to edit."""
    d = tmp_path_factory.mktemp("bundle-dir") / "b"
    d.mkdir()
    with tarfile.open(tiny_bundle) as tar:
        for m in tar.getmembers():
            fh = tar.extractfile(m)
            assert fh is not None
            (d / m.name).write_bytes(fh.read())
    return d


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    cli("keys", "new", "--out-dir", d)
    return d / "vibrawatch-signing.key", d / "vibrawatch-signing.pub"


def _set(m: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for k in parents:
        m = m[k]
    if value is _DELETE:
        del m[last]
    else:
        m[last] = value


_DELETE = object()
WRONG = {  # the 8 drills found (a traceback, exit 1), and a few more of the same kind
    "files is a list": ("files", ["model.tflite"], "'files': expected an object"),
    "files is null": ("files", None, "'files': expected an object"),
    "golden missing": ("golden", _DELETE, "'golden': expected an object {inputs, outputs, atol}, got nothing"),
    "golden is a string": ("golden", "yes", "'golden': expected an object"),
    "threshold.value is a string": ("threshold.value", "0.2", "threshold.value: expected int or float, got str"),
    "alarm.raise_after is a string": ("alarm.raise_after", "3", "alarm.raise_after: expected int, got str"),
    "runtimes is a list": ("runtimes", ["ai-edge-litert"], "'runtimes': expected an object"),
    "model is a string": ("model", "lstm", "'model': expected an object"),
    "version is a number": ("version", 3, "'version': expected a string"),
    "features.fs_hz is a string": ("features.fs_hz", "20 kHz", "features.fs_hz: expected int or float"),
    "scaler is null": ("scaler", None, "detector.scaler: expected dict, got NoneType"),
    "golden.atol is a string": ("golden.atol", "1e-5", "'golden'.'atol': expected a number >= 0"),
    "golden.inputs of the wrong shape": ("golden.inputs", [[[1.0, 2.0]]], "'golden'.'inputs': expected windows of"),
    "runtimes entry is a list": ("runtimes.ai-edge-litert", [], "'runtimes'['ai-edge-litert']: expected an object"),
}


def _edited(src: Path, dst: Path, path: str, value: Any) -> Path:
    dst.mkdir()
    m = json.loads((src / MANIFEST).read_text())
    _set(m, path, value)
    (dst / MANIFEST).write_text(json.dumps(m))
    (dst / "model.tflite").write_bytes((src / "model.tflite").read_bytes())
    return dst


@pytest.mark.parametrize("name", list(WRONG))
def test_a_field_of_the_wrong_type_is_one_line_and_exit_2(name: str, bundle_dir: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    path, value, says = WRONG[name]
    b = _edited(bundle_dir, tmp_path / "b", path, value)
    with pytest.raises(BundleSchemaError, match=says.replace("[", r"\[").replace("(", r"\(").replace("{", r"\{")):
        load_bundle(b)
    result = CliRunner().invoke(app, ["bundle", "verify", str(b)])
    assert result.exit_code == 2 and result.output.startswith("error: ") and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nsite = "s"\ndevice = "d"\nbundle = "{b}"\nspool = "{tmp_path / "spool"}"\n'
                   '[source]\nkind = "simulator"\n')
    assert agent_main(["check", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {b}: {MANIFEST} ") and len(err.strip().splitlines()) == 1


def _sign(d: Path, private_key: Path) -> None:
    from vibrawatch.agent.model.signing import sign

    (d / "manifest.sig").write_bytes(sign((d / MANIFEST).read_bytes(), private_key))


def test_the_signature_is_checked_before_the_manifest_is_parsed(bundle_dir: Path, keys: tuple[Path, Path],
                                                                tmp_path: Path) -> None:
    """An attacker's manifest (unsigned, or re-typed after signing) must not reach the parsing code when a
    public key is configured: the signature check comes first and is the error."""
    priv, pub = keys
    signed = _edited(bundle_dir, tmp_path / "signed", "version", "v-signed")
    _sign(signed, priv)
    assert load_bundle(signed, pub).version == "v-signed"
    hostile = json.loads((signed / MANIFEST).read_text())
    hostile["files"] = None  # what reached verify_checksums before, and crashed it
    (signed / MANIFEST).write_text(json.dumps(hostile))
    with pytest.raises(BundleSignatureError, match="does not verify"):
        load_bundle(signed, pub)
    unsigned = _edited(bundle_dir, tmp_path / "unsigned", "files", [])
    with pytest.raises(BundleSignatureError, match="unsigned"):
        load_bundle(unsigned, pub)
    (unsigned / "manifest.sig").write_bytes(base64.b64encode(b"\0" * 64))
    with pytest.raises(BundleSignatureError, match="does not verify"):
        load_bundle(unsigned, pub)


# -- fuzzing the manifest parser: random fields of a real manifest replaced by random JSON, or deleted ---------
_scalar = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.sampled_from([10**401, 1e308, -1.0, 0])
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6))
_json = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                            max_size=3), max_leaves=6)


def _paths(m: Any, prefix: tuple = (), depth: int = 0) -> list[tuple]:
    """Every key path into the manifest down to depth 3 (and the first two items of a list)."""
    out = []
    if depth >= 4:
        return out
    items = m.items() if isinstance(m, dict) else enumerate(m[:2]) if isinstance(m, list) else []
    for k, v in items:
        out.append((*prefix, k))
        out += _paths(v, (*prefix, k), depth + 1)
    return out


def test_fuzz_the_manifest_parser(bundle_dir: Path) -> None:
    """Thousands of damaged manifests: each is accepted or refused with a BundleError, nothing else escapes."""
    base = json.loads((bundle_dir / MANIFEST).read_text())
    for key in ("inputs", "outputs"):  # one golden window is as valid to the parser, and 20x faster to fuzz
        base["golden"][key] = base["golden"][key][:1]
    text = json.dumps(base)
    files = {n: (bundle_dir / n).read_bytes() for n in (MANIFEST, "model.tflite")}
    paths = _paths(base)
    p = bundle_dir
    outcomes: dict[str, int] = {}

    def run(raw: bytes) -> None:
        try:
            manifest = parse_manifest(p, raw)
            check_manifest(p, manifest)
            verify_checksums(p, manifest, files)
            check_runtime(p, manifest, None)
            outcomes["ok"] = outcomes.get("ok", 0) + 1
        except BundleError as e:
            assert str(e).startswith(f"{p}: ") and "\n" not in str(e)
            outcomes[type(e).__name__] = outcomes.get(type(e).__name__, 0) + 1

    edits = st.lists(st.tuples(st.sampled_from(paths), st.one_of(st.just(_DELETE), _json)), min_size=1, max_size=3)

    @settings(max_examples=1200, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(edits)
    def edited(changes: list[tuple[tuple, Any]]) -> None:
        m = json.loads(text)
        for path, value in changes:
            node = m
            try:
                for k in path[:-1]:
                    node = node[k]
                if value is _DELETE:
                    del node[path[-1]]
                else:
                    node[path[-1]] = value
            except (KeyError, IndexError, TypeError):
                continue  # an earlier edit removed or replaced this path
        run(json.dumps(m, allow_nan=True).encode())

    @settings(max_examples=400, derandomize=True, deadline=None, database=None)
    @given(st.binary(max_size=64) | _json.map(lambda v: json.dumps(v, allow_nan=True).encode()))
    def raw(data: bytes) -> None:
        run(data)

    edited()
    raw()
    assert outcomes.get("BundleSchemaError", 0) > 600 and outcomes.get("ok", 0) > 0
