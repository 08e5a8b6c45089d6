"""Keep TensorFlow's start-up noise off a user's terminal (``vibrawatch --verbose`` shows it again).

TensorFlow's C++ side logs CUDA probing, oneDNN notices and graph attribute warnings to stderr. The level
in ``TF_CPP_MIN_LOG_LEVEL`` silences what it logs once absl logging is initialised, but the lines written
while the library loads come before that and ignore it; so the import itself runs with stderr (the file
descriptor, which C++ writes to) sent to a temporary file, and only lines that are not that noise are
written back afterwards: a real error while importing still reaches the user.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from types import ModuleType
from typing import Any

NOISY = ("tensorflow", "tf_keras")
# absl/TF log lines (I/W/E + MMDD + time), and absl's pre-initialisation notice.
_NOISE = re.compile(r"^([IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.]+:\d+\]|WARNING: All log messages before absl)")


def quiet_tensorflow() -> None:
    """Set the log levels and hook the import of TensorFlow; call before anything imports it."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # errors too: CUDA probing logs as one; --verbose shows them all
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of a noisy top-level package in a stderr filter."""

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if name not in NOISY:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        real = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            with _FilteredStderr():
                real(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


class _FilteredStderr:
    """Route file descriptor 2 to a temporary file; on exit, write back what is not TensorFlow's noise."""

    def __enter__(self) -> None:
        sys.stderr.flush()
        self._tmp = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._tmp.fileno(), 2)

    def __exit__(self, *exc: object) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._tmp.seek(0)
        kept = [ln for ln in self._tmp.read().decode(errors="replace").splitlines(keepends=True)
                if not _NOISE.match(ln)]
        self._tmp.close()
        if kept:
            sys.stderr.write("".join(kept))
