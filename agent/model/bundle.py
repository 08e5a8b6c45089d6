"""Open and verify a model bundle before the gateway trusts it (numpy + standard library; a signature is
checked by ``ed25519``, in a child process that holds ``cryptography`` so the gateway never does).

A bundle is a directory or a single ``.tar`` holding ``manifest.json``, ``model.tflite`` and, when signed,
``manifest.sig`` (an Ed25519 signature of the manifest's bytes, base64). ``load_bundle`` checks, in this
order, each with its own error: the layout (and, for a tar, that it is small and holds only those regular
files: nothing is extracted to disk), the signature when a public key is given (over the manifest's raw
bytes, before anything in it is parsed or believed), the schema version and the type of every field the
agent reads (a wrong one is a BundleSchemaError naming it, never a traceback), the sha256 of every file,
that this runtime is one the bundle can run on, and a golden self-test that runs the model on the real
interpreter over several different windows in a row.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..detect.detector import Detector
from ..detect.infer import TFLiteModel, find_runtime
from ..errors import ConfigError, VibrawatchError
from . import ed25519

SCHEMA = "vibrawatch.bundle/2"  # /2: the PCA residual's per-feature weights (an agent reading /1 would ignore them)
READS = (SCHEMA, "vibrawatch.bundle/1")  # /1 bundles still load: their PCA residual is unweighted
MANIFEST, SIGNATURE, MODEL = "manifest.json", "manifest.sig", "model.tflite"
ALLOWED = (MANIFEST, SIGNATURE, MODEL)
MAX_BUNDLE_BYTES = 64 * 1024 * 1024  # a few hundred KB is normal; anything near this is not a bundle


class BundleError(VibrawatchError):
    """The bundle cannot be used; the subclass says which check failed."""


class BundleLayoutError(BundleError):
    """Missing, extra, oversized or unsafe files (a tar with links, absolute paths or '..')."""


class BundleSchemaError(BundleError):
    """The manifest is not JSON of a schema version this agent understands."""


class BundleChecksumError(BundleError):
    """A file's sha256 differs from the manifest's: the bundle was altered or damaged."""


class BundleSignatureError(BundleError):
    """The manifest's signature is missing or does not verify with the configured public key."""


class BundleRuntimeError(BundleError):
    """This gateway's interpreter cannot run this bundle's model."""


class BundleSelfTestError(BundleError):
    """The model, run here, does not reproduce the bundle's golden outputs."""


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: everything the agent needs to turn samples into decisions."""

    path: Path
    manifest: dict[str, Any]
    detector: Detector
    version: str
    model: TFLiteModel


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_bundle_files(path: str | Path) -> dict[str, bytes]:
    """The bundle's files by name, read from a directory or a tar without extracting anything."""
    p = Path(path)
    if p.is_dir():
        files = {}
        for name in ALLOWED:
            f = p / name
            if f.is_symlink():
                raise BundleLayoutError(f"{f}: is a symbolic link; a bundle holds regular files only")
            if f.is_file():
                if f.stat().st_size > MAX_BUNDLE_BYTES:
                    raise BundleLayoutError(f"{f}: larger than {MAX_BUNDLE_BYTES} bytes")
                files[name] = f.read_bytes()
        return _require(p, files)
    if not p.is_file():
        raise BundleLayoutError(f"{p}: no such bundle (expected a directory or a .tar)")
    if p.stat().st_size > MAX_BUNDLE_BYTES:
        raise BundleLayoutError(f"{p}: {p.stat().st_size} bytes, larger than the {MAX_BUNDLE_BYTES}-byte limit")
    try:
        with tarfile.open(p, "r:") as tar:
            files = {}
            for m in tar.getmembers():
                if not m.isfile():
                    kind = "link" if m.issym() or m.islnk() else "directory" if m.isdir() else "special file"
                    raise BundleLayoutError(f"{p}: member {m.name!r} is a {kind}; a bundle holds regular files only")
                if m.name not in ALLOWED:
                    raise BundleLayoutError(
                        f"{p}: member {m.name!r} is not one of {', '.join(ALLOWED)} (paths and '..' are refused)"
                    )
                if m.name in files:
                    raise BundleLayoutError(f"{p}: member {m.name!r} appears twice")
                fh = tar.extractfile(m)
                assert fh is not None  # a regular file always has content
                files[m.name] = fh.read()
    except tarfile.TarError as e:
        raise BundleLayoutError(f"{p}: not a readable tar archive ({e})") from None
    return _require(p, files)


def _require(p: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    missing = [n for n in (MANIFEST, MODEL) if n not in files]
    if missing:
        raise BundleLayoutError(f"{p}: missing {', '.join(missing)}; make bundles with `vibrawatch convert`")
    return files


def parse_manifest(p: Path, raw: bytes) -> dict[str, Any]:
    """The manifest as JSON of this agent's schema version (its fields are checked by ``check_manifest``)."""
    try:
        manifest = json.loads(raw)
    except RecursionError:
        raise BundleSchemaError(f"{p}: {MANIFEST} is nested too deeply to be a manifest") from None
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError, and Python's limit on integer digits
        raise BundleSchemaError(f"{p}: {MANIFEST} is not JSON ({str(e)[:200]})") from None
    if not isinstance(manifest, dict) or manifest.get("schema") not in READS:
        got = manifest.get("schema") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleSchemaError(
            f"{p}: {MANIFEST} schema {got!r}; this agent reads {' or '.join(map(repr, READS))}: rebuild the bundle "
            "with this version's `vibrawatch convert`, or update the agent"
        )
    return manifest


def _typed(p: Path, d: Any, key: str, where: str, kind: type | tuple[type, ...], expected: str,
           optional: bool = False) -> Any:
    """``d[key]`` if it is of ``kind`` (bool never counts as a number), else a BundleSchemaError naming it."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if key not in d:
        if optional:
            return None
        raise BundleSchemaError(f"{p}: {MANIFEST} field {where}{key!r}: expected {expected}, got nothing")
    v = d[key]
    if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
        raise BundleSchemaError(f"{p}: {MANIFEST} field {where}{key!r}: expected {expected}, "
                                f"got {type(v).__name__} {str(v)[:40]!r}")
    return v


def check_manifest(p: Path, manifest: dict[str, Any]) -> Detector:
    """Every field the agent reads has the type it expects, before any of it is used: the detector's
    parameters, ``version``, ``files`` ({name: sha256}), ``model.quantize``, ``runtimes`` and ``golden``."""
    _typed(p, manifest, "version", "", str, "a string")
    files = _typed(p, manifest, "files", "", dict, "an object {file name: sha256}")
    for name, digest in files.items():
        if not isinstance(digest, str):
            raise BundleSchemaError(f"{p}: {MANIFEST} field 'files'[{name!r}]: expected a sha256 string, "
                                    f"got {type(digest).__name__}")
    _typed(p, _typed(p, manifest, "model", "", dict, "an object"), "quantize", "'model'.", str, "a string")
    runtimes = _typed(p, manifest, "runtimes", "", dict, "an object {runtime: result}", optional=True) or {}
    for name, seen in runtimes.items():
        if not isinstance(seen, dict):
            raise BundleSchemaError(f"{p}: {MANIFEST} field 'runtimes'[{name!r}]: expected an object, "
                                    f"got {type(seen).__name__}")
        _typed(p, seen, "ok", f"'runtimes'[{name!r}].", bool, "true or false", optional=True)
    try:
        detector = Detector.from_dict(manifest)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError, ConfigError) as e:
        raise BundleSchemaError(f"{p}: {MANIFEST} is incomplete or wrong ({str(e)[:200]})") from None
    golden = _typed(p, manifest, "golden", "", dict, "an object {inputs, outputs, atol}")
    atol = _typed(p, golden, "atol", "'golden'.", (int, float), "a number >= 0")
    if not np.isfinite(atol) or atol < 0:
        raise BundleSchemaError(f"{p}: {MANIFEST} field 'golden'.'atol': expected a number >= 0, got {atol}")
    shape = (detector.window, detector.spec.n_features)
    for key in ("inputs", "outputs"):
        rows = _typed(p, golden, key, "'golden'.", list, "a list of windows")
        try:
            with np.errstate(over="ignore"):  # a huge number becomes inf: the self-test then fails, and says so
                a = np.asarray(rows, dtype=np.float32)
        except (ValueError, TypeError, OverflowError):
            a = None
        if a is None or a.ndim != 3 or a.shape[0] < 1 or a.shape[1:] != shape:
            got = "ragged or non-numeric" if a is None else f"shape {a.shape}"
            raise BundleSchemaError(f"{p}: {MANIFEST} field 'golden'.{key!r}: expected windows of shape (n, "
                                    f"{shape[0]}, {shape[1]}) (window, features), got {got}")
    return detector


def verify_checksums(p: Path, manifest: dict[str, Any], files: dict[str, bytes]) -> None:
    listed = manifest.get("files", {})
    if MODEL not in listed:
        raise BundleChecksumError(f"{p}: {MANIFEST} lists no sha256 for {MODEL}")
    for name, digest in listed.items():
        if name not in files:
            raise BundleChecksumError(f"{p}: {MANIFEST} lists {name!r}, which the bundle does not hold")
        if sha256(files[name]) != digest:
            raise BundleChecksumError(
                f"{p}: {name} has sha256 {sha256(files[name])[:16]}..., the manifest says {digest[:16]}...: "
                "the bundle was altered or damaged; fetch it again"
            )


def verify_signature(p: Path, files: dict[str, bytes], public_key: str | Path) -> None:
    """Ed25519 over the manifest's exact bytes; the manifest in turn pins every file by sha256."""
    if SIGNATURE not in files:
        raise BundleSignatureError(f"{p}: unsigned ({SIGNATURE} missing) but a public key is configured")
    try:
        ed25519.verify(public_key, files[MANIFEST], files[SIGNATURE])
    except ed25519.MissingLibrary as e:
        raise BundleSignatureError(str(e)) from None
    except ed25519.SignatureMismatch:
        raise BundleSignatureError(
            f"{p}: the signature does not verify with {public_key}: the manifest was altered, or it was signed "
            "with another key"
        ) from None


def check_runtime(p: Path, manifest: dict[str, Any], runtime: str | None) -> None:
    """Refuse a bundle that conversion ran on this runtime and saw fail."""
    name, version, _ = find_runtime(runtime)
    seen = manifest.get("runtimes", {}).get(name)
    if seen is not None and not seen.get("ok", False):
        raise BundleRuntimeError(
            f"{p}: conversion ran this {manifest['model']['quantize']} model on {name} {seen.get('version')} and it "
            f"failed ({seen.get('error', 'wrong results')}); build a variant this runtime can run, e.g. "
            "`vibrawatch convert RUN_DIR --quantize none`, or install ai-edge-litert"
        )


def self_test(p: Path, model: TFLiteModel, manifest: dict[str, Any]) -> float:
    """Run the golden windows in a row and compare: returns the largest absolute difference."""
    golden = manifest["golden"]
    x = np.asarray(golden["inputs"], dtype=np.float32)
    want = np.asarray(golden["outputs"], dtype=np.float32)
    got = model.reconstruct_batch(x)
    err = float(np.max(np.abs(got - want)))
    if not np.isfinite(err) or err > float(golden["atol"]):
        raise BundleSelfTestError(
            f"{p}: golden self-test failed on {model.runtime}: outputs differ by {err:.3g} "
            f"(allowed {golden['atol']:.3g}) over {len(x)} windows; this runtime does not run the model as "
            "conversion did: rebuild the bundle as float32 (--quantize none) or use ai-edge-litert"
        )
    return err


def load_bundle(path: str | Path, public_key: str | Path | None = None, runtime: str | None = None) -> Bundle:
    """Read, verify (see module docstring) and load a bundle; raises a BundleError subclass on any failure."""
    p = Path(path)
    files = read_bundle_files(p)
    if public_key is not None:
        verify_signature(p, files, public_key)  # first: nothing an attacker wrote is parsed before this
    manifest = parse_manifest(p, files[MANIFEST])
    detector = check_manifest(p, manifest)
    verify_checksums(p, manifest, files)
    check_runtime(p, manifest, runtime)
    try:
        model = TFLiteModel(files[MODEL], runtime=runtime)
    except (ValueError, RuntimeError) as e:
        raise BundleRuntimeError(
            f"{p}: the interpreter cannot load this model ({str(e).splitlines()[0]}); a {manifest['model']['quantize']}"
            " model may need a newer runtime: build the float32 variant (`vibrawatch convert RUN_DIR --quantize "
            "none`) or install ai-edge-litert"
        ) from None
    self_test(p, model, manifest)
    return Bundle(path=p, manifest=manifest, detector=detector, version=str(manifest["version"]), model=model)
