"""Who may act: operators from a file of Argon2id hashes, page sessions with a CSRF token, bearer tokens for the CLI.

The operators file (``[monitor] operators_file``, else ``$CREDENTIALS_DIRECTORY/operators``, systemd's
LoadCredential=) has one line per secret, ``NAME:$argon2id$...`` (``vibrawatch operators add`` writes them;
``#`` starts a comment); a name may have several lines (a password for the page, a token for a script). Only
hashes are stored, made and checked by argon2-cffi. A file other users can read is refused.

The CLI and scripts send ``Authorization: Bearer NAME:SECRET``; the page logs in once (``POST /api/login``) and
gets an HttpOnly, SameSite=Strict session cookie plus a CSRF token that every state-changing request must
carry in ``X-CSRF-Token``, so another site cannot make a logged-in browser act. Viewing needs neither.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from vibrawatch.agent.errors import ConfigError

log = logging.getLogger("vibrawatch.monitor.auth")
NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
SESSION_S = 12 * 3600.0
MAX_SESSIONS = 1000


def _hasher() -> object:
    try:
        from argon2 import PasswordHasher
    except ImportError:
        raise ConfigError("operators need argon2-cffi: pip install 'vibrawatch[monitor]'") from None
    return PasswordHasher()


def hash_line(name: str, secret: str) -> str:
    """The operators-file line for ``name`` and ``secret`` (an Argon2id hash, salted)."""
    if not NAME.match(name):
        raise ConfigError(f"operator name {name!r}: expected 1-64 letters, digits, '_', '.', '@' or '-'")
    if len(secret) < 8:
        raise ConfigError("password: at least 8 characters")
    return f"{name}:{_hasher().hash(secret)}"  # type: ignore[attr-defined]


def operators_path(configured: str | None) -> Path | None:
    """The operators file: the configured one, else the systemd credential if it exists, else none."""
    if configured:
        return Path(configured)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / "operators").is_file():
        return Path(creds) / "operators"
    return None


class Operators:
    """The accounts that may act, read once at start; ``check`` verifies ``NAME:SECRET`` (one at a time: Argon2
    takes ~50 ms and 64 MB by design, so guessing is slow and many guesses at once cannot exhaust memory)."""

    def __init__(self, hashes: dict[str, list[str]], source: str = "") -> None:
        self.hashes, self.source = hashes, source
        self._one = threading.Lock()
        self._dummy: str | None = None  # a hash nobody's secret matches: an unknown name costs a verification too

    @classmethod
    def load(cls, path: Path | None) -> Operators:
        """Read the file (none: nobody may act); a clear ConfigError names the file and line."""
        if path is None:
            return cls({})
        if not path.is_file():
            raise ConfigError(f"operators file {path} does not exist: create it with `vibrawatch operators add "
                              f"--file {path} NAME`")
        mode = path.stat().st_mode & 0o777
        if mode & 0o007:
            raise ConfigError(f"operators file {path} has mode {mode:04o}: other users can read it; run chmod 600 "
                              f"{path}")
        hashes: dict[str, list[str]] = {}
        for n, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, h = line.partition(":")
            if not NAME.match(name) or not h.startswith("$argon2"):
                raise ConfigError(f"{path}:{n}: expected NAME:$argon2id$... (from `vibrawatch operators add`)")
            hashes.setdefault(name, []).append(h)
        return cls(hashes, str(path))

    def __bool__(self) -> bool:
        return bool(self.hashes)

    def check(self, token: str) -> str | None:
        """The operator's name when ``token`` (``NAME:SECRET``) is right, else None."""
        name, _, secret = token.partition(":")
        from argon2.exceptions import InvalidHashError, VerificationError

        ph = _hasher()
        with self._one:
            for h in self.hashes.get(name, []):
                try:
                    ph.verify(h, secret)  # type: ignore[attr-defined]
                    return name
                except (VerificationError, InvalidHashError):
                    continue
            if name not in self.hashes:  # as long as a wrong password: the answer does not tell who exists
                if self._dummy is None:
                    self._dummy = ph.hash(secrets.token_hex(16))  # type: ignore[attr-defined]
                with contextlib.suppress(VerificationError, InvalidHashError):
                    ph.verify(self._dummy, secret)  # type: ignore[attr-defined]
        return None


@dataclass
class Session:
    operator: str
    csrf: str
    expires: float


class Sessions:
    """Logged-in pages, in memory (a restart logs everyone out), at most ``MAX_SESSIONS``, ``SESSION_S`` each."""

    def __init__(self) -> None:
        self._by_token: dict[str, Session] = {}
        self._lock = threading.Lock()

    def start(self, operator: str) -> tuple[str, Session]:
        token, s = secrets.token_urlsafe(32), Session(operator, secrets.token_urlsafe(24), time.time() + SESSION_S)
        with self._lock:
            if len(self._by_token) >= MAX_SESSIONS:
                self._by_token.pop(min(self._by_token, key=lambda t: self._by_token[t].expires))
            self._by_token[token] = s
        return token, s

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        with self._lock:
            s = self._by_token.get(token)
            if s is not None and s.expires < time.time():
                del self._by_token[token]
                s = None
        return s

    def end(self, token: str | None) -> None:
        with self._lock:
            self._by_token.pop(token or "", None)


def same(a: str, b: str) -> bool:
    """Constant-time comparison of two tokens."""
    return hmac.compare_digest(a.encode(), b.encode())
