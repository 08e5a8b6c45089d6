"""The hidden directories `train` makes beside a run: ``.NAME.training-...`` while it builds the run,
``.NAME.old-...`` for the moment it swaps the old run out (run.py, ``publish``).

Each is named after the process that made it (``-<pid>-<host>-<random>``), so a later train into the same run can
tell one left by a train killed with SIGKILL (or a power cut), which it removes, from one a second train is still
writing, which it must not touch. Whatever it cannot prove abandoned it leaves, and says where.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import socket
import sys
from pathlib import Path

_OWNER = re.compile(r"([0-9]{1,10})-([0-9a-f]{8})-[0-9a-f]{8}")


def host_tag() -> str:
    """This machine, in 8 hex digits: a pid says nothing about a process on another host sharing the folder."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def sibling(out: Path, what: str) -> Path:
    """A hidden name beside ``out`` (never a name a user would pick) carrying this process's pid and host."""
    return out.parent / f".{out.name}.{what}-{os.getpid()}-{host_tag()}-{secrets.token_hex(4)}"


def sweep_abandoned(out: Path, what: str = "training") -> None:
    """Remove ``out``'s hidden ``what`` directories whose maker is provably gone; leave any other with one line
    on stderr, so a second train at work is never robbed of its directory."""
    if not out.parent.is_dir():
        return
    prefix = f".{out.name}.{what}-"
    for p in sorted(out.parent.iterdir()):
        if p.name.startswith(prefix) and p.is_dir() and not p.is_symlink():
            _sweep_one(p, p.name[len(prefix):], out)


def _sweep_one(p: Path, tag: str, out: Path) -> None:
    why = still_owned(tag)
    if why is None:
        shutil.rmtree(p, ignore_errors=True)
        if not p.exists():
            return
        why = "it could not be removed"
    print(f"note: {p}: an unfinished train's directory left in place ({why}); remove it once no train writes "
          f"to {out}", file=sys.stderr)


def still_owned(tag: str) -> str | None:
    """Why a directory tagged ``pid-host-random`` may still be in use, or None when its maker is provably gone."""
    m = _OWNER.fullmatch(tag)
    if m is None:
        return "no maker recorded in its name (an older vibrawatch made it)"
    pid, host = int(m[1]), m[2]
    if host != host_tag():
        return f"made on another host ({host}), whose processes this one cannot see"
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # it exists, as another user's
    except (OSError, OverflowError) as e:
        return f"process {pid} cannot be asked ({e})"
    return f"process {pid} that made it is still running"
