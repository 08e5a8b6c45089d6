"""Run a command under a systemd unit's restrictions without systemd as PID 1 (the test machine has none).

What a unit's [Service] section asks for is rebuilt from the unit file itself, as far as one root process
can: bubblewrap gives the file system (ProtectSystem=strict: / read-only; StateDirectory= bound writable at
/var/lib/<dir>; ConfigurationDirectory= read-only at /etc/<dir>; LoadCredential= as $CREDENTIALS_DIRECTORY;
PrivateTmp=, ProtectHome=, PrivateDevices=: an empty /tmp, /home and /root, a minimal /dev), new PID, IPC
and UTS namespaces. Then this file, run as the sandbox's first process, does what systemd's executor does
last: ProcSubset=pid and ProtectProc=invisible (a new /proc), DynamicUser= (an unprivileged uid and gid, no
capabilities), NoNewPrivileges=, and three seccomp filters built with libseccomp from systemd's own
syscall tables (``systemd-analyze syscall-filter``): SystemCallFilter= (allow list minus deny list, errno
EPERM), RestrictAddressFamilies= and MemoryDenyWriteExecute= (the same argument checks systemd 252 uses:
no mmap with PROT_WRITE|PROT_EXEC, no mprotect/pkey_mprotect adding PROT_EXEC, no shmat with SHM_EXEC),
plus the kernel's own PR_SET_MDWE where the kernel has it. Then it execs the command.

Not rebuilt (they need PID 1 or cgroups): DevicePolicy=/DeviceAllow=, RestrictNamespaces=, RestrictRealtime=,
LockPersonality=, ProtectKernel*=, ProtectClock=, ProtectControlGroups=, PrivateMounts=, KeyringMode=,
RemoveIPC=, SupplementaryGroups=, the watchdog and restart logic, StartLimit*=.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import socket
import subprocess
import sys
from functools import cache
from pathlib import Path

DYNAMIC_UID = 61873  # in systemd's DynamicUser= range (61184-65519)


def unit_settings(path: Path) -> dict[str, list[str]]:
    """The [Service] settings of a unit file, each key with all its values in order."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service":
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@cache
def syscall_group(name: str) -> frozenset[str]:
    """A systemd syscall group (``@system-service``) fully expanded, from ``systemd-analyze syscall-filter``."""
    text = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True,
                          check=True).stdout
    names: set[str] = set()
    for line in text.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        names |= syscall_group(item) if item.startswith("@") else {item}
    return frozenset(names)


def syscall_allowlist(settings: dict[str, list[str]]) -> list[str]:
    """SystemCallFilter= as systemd reads it: the first allow list, minus every '~' deny list after it."""
    allowed: set[str] = set()
    for value in settings.get("SystemCallFilter", []):
        deny = value.startswith("~")
        items: set[str] = set()
        for item in value.lstrip("~").split():
            items |= syscall_group(item) if item.startswith("@") else {item}
        allowed = allowed - items if deny else allowed | items
    return sorted(allowed)


def needed_paths() -> list[Path]:
    """What the command run inside needs to see: this checkout (this launcher, the code an editable install
    maps to), the virtual environment, the interpreter it is made from and every folder it imports from,
    wherever they live."""
    found = {Path(__file__).resolve().parents[1], Path(sys.prefix), Path(sys.executable).parent,
             Path(sys.base_prefix), *(Path(p) for p in sys.path if p and Path(p).is_absolute() and Path(p).exists())}
    found |= {p.resolve() for p in found}
    return sorted(found)


def keep_visible(hidden: list[Path], needed: list[Path]) -> list[str]:
    """bubblewrap arguments that bind, read-only, every ``needed`` path that a tmpfs in ``hidden`` covers.

    A checkout cloned under /tmp (PrivateTmp=), or a home directory (ProtectHome=; this machine's Python is
    in /root/.pyenv), would otherwise vanish inside the sandbox: ``execvp .venv/bin/python: No such file``.
    """
    covered = [p for p in needed if any(p != h and p.is_relative_to(h) for h in hidden)]
    outer = [p for p in covered if not any(p != q and p.is_relative_to(q) for q in covered)]
    args: list[str] = []
    made: set[Path] = set()
    for p in outer:
        for d in reversed(p.parents):  # bubblewrap would make them 0700, root's: the dynamic user must pass
            if d not in made and any(d != h and d.is_relative_to(h) for h in hidden):
                made.add(d)
                args += ["--perms", "0755", "--dir", str(d)]
        args += ["--ro-bind", str(p), str(p)]
    return args


def bwrap_command(unit: Path, argv: list[str], *, state: Path, config: Path, credentials: Path | None,
                  runtime: Path, env: dict[str, str]) -> list[str]:
    """bubblewrap arguments for ``unit``'s file-system view, then this launcher, then ``argv``.

    The state, config and runtime directories keep their paths (bubblewrap 0.8 cannot add a mount point
    under the read-only /etc or /var/lib); what matters is which of them is writable. The checkout, its
    virtual environment and interpreter are bound back, read-only, where the empty /tmp, /run, /home or /root
    would hide them (keep_visible): the tests pass wherever the checkout lives.
    """
    s = unit_settings(unit)
    cmd = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp",
           "--tmpfs", "/run",
           "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent", "--new-session",
           "--cap-add", "ALL", "--clearenv"]
    hidden = [Path("/tmp"), Path("/run")]
    if s.get("ProtectHome") == ["yes"]:
        cmd += ["--tmpfs", "/home", "--tmpfs", "/root"]
        hidden += [Path("/home"), Path("/root")]
    cmd += keep_visible(hidden, needed_paths())
    for d in sorted({p for x in (state, config, runtime) for p in x.parents if p.is_relative_to("/tmp")})[1:]:
        cmd += ["--perms", "0755", "--dir", str(d)]  # the way down to them in the private /tmp
    cmd += ["--bind", str(state), str(state), "--ro-bind", str(config), str(config),
            "--bind", str(runtime), str(runtime)]
    env = {**env, "STATE_DIRECTORY": str(state), "CONFIGURATION_DIRECTORY": str(config),
           "NOTIFY_SOCKET": str(runtime / "notify"), "HOME": "/nonexistent", "PATH": "/usr/bin:/bin"}
    if credentials is not None:
        cred_dir = "/run/credentials/" + unit.name.replace("@.", "@test.")
        cmd += ["--perms", "0755", "--dir", "/run/credentials", "--ro-bind", str(credentials), cred_dir]
        env["CREDENTIALS_DIRECTORY"] = cred_dir
    for k, v in env.items():
        cmd += ["--setenv", k, v]
    return [*cmd, sys.executable, str(Path(__file__).resolve()), str(unit), *argv]


def prepare(state: Path, config: Path, credentials: Path | None, runtime: Path) -> None:
    """Ownership as systemd sets it: the state directory the service's, config and credentials readable."""
    for d in (state, runtime):
        d.mkdir(parents=True, exist_ok=True)
        for p in [d, *d.rglob("*")]:
            os.chown(p, DYNAMIC_UID, DYNAMIC_UID)
    state.chmod(0o700)
    for p in [config, *config.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    if credentials is not None:  # systemd hands them over owned by the service's user, mode 0400
        for p in [credentials, *credentials.iterdir()]:
            os.chown(p, DYNAMIC_UID, DYNAMIC_UID)
            p.chmod(0o500 if p.is_dir() else 0o400)
    # the tests' tmp directories must be traversable by the unprivileged user to reach the bound paths
    for p in {*state.parents, *config.parents, *runtime.parents}:
        if p.stat().st_uid == 0 and str(p).startswith(("/tmp/", "/var/tmp/")):
            p.chmod(p.stat().st_mode | 0o011)


def available() -> str | None:
    """Why the sandbox cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (bubblewrap binding paths, a new /proc, dropping to a dynamic uid)"
    for tool in ("bwrap", "systemd-analyze"):
        if not shutil.which(tool):
            return f"{tool} not installed (apt-get install bubblewrap systemd)"
    if not ctypes.util.find_library("seccomp"):
        return "libseccomp not found"
    return None


# --- inside the sandbox -------------------------------------------------------------------------------

SCMP_ACT_ALLOW = 0x7FFF0000
PR_SET_NO_NEW_PRIVS, PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 38, 65, 1
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
PROT_WRITE, PROT_EXEC, SHM_EXEC = 2, 4, 0o100000
SCMP_CMP_EQ, SCMP_CMP_GT, SCMP_CMP_MASKED_EQ = 4, 6, 7
FAMILIES = {"AF_UNIX": socket.AF_UNIX, "AF_INET": socket.AF_INET, "AF_INET6": socket.AF_INET6,
            "AF_NETLINK": 16, "AF_PACKET": 17}


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


def _errno_action(e: int) -> int:
    return 0x00050000 | (e & 0xFFFF)


class Filter:
    """One seccomp filter (libseccomp through ctypes); several load on top of each other, as systemd's do."""

    lib = None

    def __init__(self, default: int) -> None:
        if Filter.lib is None:
            Filter.lib = ctypes.CDLL(ctypes.util.find_library("seccomp"), use_errno=True)
            Filter.lib.seccomp_init.restype = ctypes.c_void_p
            Filter.lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
            Filter.lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                                          ctypes.c_uint, ctypes.POINTER(ArgCmp)]
            Filter.lib.seccomp_load.argtypes = [ctypes.c_void_p]
        self.ctx = Filter.lib.seccomp_init(ctypes.c_uint32(default))

    def rule(self, action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
        nr = Filter.lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:  # not a syscall of this architecture (systemd's tables list every architecture's)
            return
        arr = (ArgCmp * max(1, len(cmps)))(*[ArgCmp(*c) for c in cmps])
        rc = Filter.lib.seccomp_rule_add_array(self.ctx, ctypes.c_uint32(action), nr, len(cmps), arr)
        if rc < 0:
            raise OSError(-rc, f"seccomp rule for {name}")

    def load(self) -> None:
        rc = Filter.lib.seccomp_load(self.ctx)
        if rc < 0:
            raise OSError(-rc, "seccomp_load")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def enter(unit: Path, argv: list[str]) -> None:
    """As the sandbox's first process: /proc, user, privileges, seccomp; then exec ``argv``."""
    s = unit_settings(unit)
    allowlist = syscall_allowlist(s)  # before anything is restricted (it asks systemd-analyze)
    libc = _libc()
    if s.get("ProcSubset") == ["pid"] or s.get("ProtectProc"):
        opts = []
        if s.get("ProcSubset") == ["pid"]:
            opts.append("subset=pid")
        if s.get("ProtectProc"):
            opts.append("hidepid=" + s["ProtectProc"][0])
        if libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, ",".join(opts).encode()) != 0:
            raise OSError(ctypes.get_errno(), "mount /proc " + ",".join(opts))
    os.umask(int(s.get("UMask", ["0022"])[0], 8))
    if s.get("DynamicUser") == ["yes"]:
        os.setgroups([])
        os.setgid(DYNAMIC_UID)
        os.setuid(DYNAMIC_UID)  # from root to a plain uid: every capability is dropped with it
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    loaded = []
    if s.get("MemoryDenyWriteExecute") == ["yes"]:
        if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) == 0:
            loaded.append("PR_SET_MDWE")
        f = Filter(SCMP_ACT_ALLOW)
        eperm = _errno_action(errno.EPERM)
        f.rule(eperm, "mmap", (2, SCMP_CMP_MASKED_EQ, PROT_WRITE | PROT_EXEC, PROT_WRITE | PROT_EXEC))
        for name in ("mprotect", "pkey_mprotect"):
            f.rule(eperm, name, (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
        f.rule(eperm, "shmat", (2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
        f.load()
        loaded.append("MemoryDenyWriteExecute")
    if s.get("RestrictAddressFamilies"):
        allowed = sorted(FAMILIES[x] for x in s["RestrictAddressFamilies"][0].split())
        f = Filter(SCMP_ACT_ALLOW)
        refuse = _errno_action(errno.EAFNOSUPPORT)
        for name in ("socket", "socketpair"):
            for fam in range(0, allowed[-1]):
                if fam not in allowed:
                    f.rule(refuse, name, (0, SCMP_CMP_EQ, fam, 0))
            f.rule(refuse, name, (0, SCMP_CMP_GT, allowed[-1], 0))
        f.load()
        loaded.append("RestrictAddressFamilies")
    if s.get("SystemCallFilter"):
        f = Filter(_errno_action(errno.EPERM))
        for name in allowlist:
            f.rule(SCMP_ACT_ALLOW, name)
        f.load()
        loaded.append("SystemCallFilter")
    os.environ["VIBRAWATCH_SANDBOX"] = ",".join(loaded)
    print(f"sandbox: uid {os.getuid()}, {', '.join(loaded)}", file=sys.stderr, flush=True)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    enter(Path(sys.argv[1]), sys.argv[2:])
