"""Filesystem questions every room asks: here, at the bottom beside ``errors``, so that the model's life
(commissioning's state directory) and the preflight checks above it share one answer.

May import: ``errors`` and ``sections`` only (the bottom room); the standard library.
"""

from __future__ import annotations

import os
from pathlib import Path


def creatable_dir(d: Path) -> tuple[bool, Path]:
    """(can this user have directory ``d``, the path that decides): an existing directory it may write, or a
    missing one whose nearest existing ancestor is such a directory (the agent creates it, owner only)."""
    anc = d
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    return anc.is_dir() and os.access(anc, os.W_OK | os.X_OK), anc


def fsync_dir(d: Path) -> None:
    """Make a rename or a new entry in ``d`` durable (POSIX: a directory's entries are on disk once the directory
    itself is fsynced)."""
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
