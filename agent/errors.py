"""Errors a user can act on: each says which file, where in it, and what was expected."""

from __future__ import annotations

from pathlib import Path


class VibrawatchError(Exception):
    """Base class: a problem with the user's input or setup, never a bug; the message says what to do."""


class DataFormatError(VibrawatchError):
    """A data file is not in the format it claims to be; nothing is guessed or silently coerced."""

    def __init__(
        self,
        path: str | Path,
        problem: str,
        *,
        where: str | None = None,
        expected: str | None = None,
    ) -> None:
        self.path = str(path)
        self.problem = problem
        self.where = where
        self.expected = expected
        location = self.path + (f", {where}" if where else "")
        message = f"{location}: {problem}"
        if expected:
            message += f" (expected {expected})"
        super().__init__(message)


class ConfigError(VibrawatchError):
    """A configuration file or option is wrong; names the file and the key."""
