"""The gateway's signature check (agent/model/ed25519.py): right answers, key files named when wrong, the library
kept out of the calling process, and a planted look-alike of the library unable to say "verified"."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vibrawatch.agent.errors import ConfigError
from vibrawatch.agent.model import ed25519

MESSAGE = b'{"schema": "vibrawatch.manifest/1", "model": "m"}'


def _public_pem(key: object) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture()
def signed(tmp_path: Path) -> tuple[Path, bytes]:
    """A public key file and the base64 signature of MESSAGE by its private key."""
    key = Ed25519PrivateKey.generate()
    pub = tmp_path / "signing.pub"
    pub.write_bytes(_public_pem(key))
    return pub, base64.b64encode(key.sign(MESSAGE))


def test_the_right_signature_verifies_and_every_wrong_one_is_a_mismatch(signed: tuple[Path, bytes]) -> None:
    pub, sig = signed
    ed25519.verify(pub, MESSAGE, sig)
    other = base64.b64encode(Ed25519PrivateKey.generate().sign(MESSAGE))
    raw = base64.b64decode(sig)
    for message, signature in [(MESSAGE + b" ", sig),  # the message altered by one byte
                               (MESSAGE, other),  # signed with another key
                               (MESSAGE, base64.b64encode(raw[:-1] + bytes([raw[-1] ^ 1]))),  # one bit of it
                               (MESSAGE, b"not base64!"), (MESSAGE, b"")]:
        with pytest.raises(ed25519.SignatureMismatch):
            ed25519.verify(pub, message, signature)


def test_a_key_file_that_is_missing_unreadable_or_not_ed25519_is_named(signed: tuple[Path, bytes],
                                                                        tmp_path: Path) -> None:
    _, sig = signed
    with pytest.raises(ConfigError, match=r"nowhere\.pub: not a readable PEM public key"):
        ed25519.verify(tmp_path / "nowhere.pub", MESSAGE, sig)
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ConfigError, match=r"garbage\.pub: not a readable PEM public key \(.+\)"):
        ed25519.verify(garbage, MESSAGE, sig)
    ecdsa = tmp_path / "ecdsa.pub"
    ecdsa.write_bytes(_public_pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(ConfigError, match=r"ecdsa\.pub: not an Ed25519 public key"):
        ed25519.verify(ecdsa, MESSAGE, sig)


def test_the_calling_process_never_imports_the_library(signed: tuple[Path, bytes]) -> None:
    pub, sig = signed
    code = (f"import sys\nfrom vibrawatch.agent.model import ed25519\n"
            f"ed25519.verify({str(pub)!r}, {MESSAGE!r}, {sig!r})\n"
            "try:\n    ed25519.verify(" + repr(str(pub)) + f", {MESSAGE + b'x'!r}, {sig!r})\n"
            "except ed25519.SignatureMismatch:\n    print('refused')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cryptography', '_cffi_backend')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["refused", "[]"]


def test_a_look_alike_library_in_the_working_directory_or_on_pythonpath_cannot_say_verified(
        signed: tuple[Path, bytes], tmp_path: Path) -> None:
    """The child starts isolated (python -I): a planted ``cryptography`` whose verify accepts everything is not
    the one it imports."""
    pub, sig = signed
    fake = tmp_path / "plant" / "cryptography"
    (fake / "hazmat" / "primitives" / "asymmetric").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "exceptions.py").write_text("class InvalidSignature(Exception): pass\n")
    (fake / "hazmat" / "__init__.py").write_text("")
    (fake / "hazmat" / "primitives" / "__init__.py").write_text("")
    (fake / "hazmat" / "primitives" / "asymmetric" / "__init__.py").write_text("")
    (fake / "hazmat" / "primitives" / "asymmetric" / "ed25519.py").write_text(
        "class Ed25519PublicKey:\n    def verify(self, sig, msg): return None\n")
    (fake / "hazmat" / "primitives" / "serialization.py").write_text(
        "from .asymmetric.ed25519 import Ed25519PublicKey\ndef load_pem_public_key(pem): return Ed25519PublicKey()\n")
    plant = str(fake.parent)
    code = ("import sys\nfrom vibrawatch.agent.model import ed25519\n"
            f"try:\n    ed25519.verify({str(pub)!r}, {MESSAGE + b'x'!r}, {sig!r})\n    print('verified')\n"
            "except ed25519.SignatureMismatch:\n    print('refused')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=plant, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": plant + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "refused"


def test_without_the_library_nothing_signed_is_trusted_and_it_says_what_to_install(
        signed: tuple[Path, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pub, sig = signed
    env = tmp_path / "bare"
    venv.create(env, with_pip=False)  # a Python with nothing installed: no cryptography
    monkeypatch.setattr(sys, "executable", str(env / "bin" / "python"))
    with pytest.raises(ed25519.MissingLibrary, match=r"needs the 'cryptography' package: pip install"):
        ed25519.verify(pub, MESSAGE, sig)
