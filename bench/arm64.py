"""Proof on arm64 (Raspberry Pi OS 64-bit is Debian bookworm on arm64), and the offline install it uses.

    sudo nice .venv/bin/python bench/arm64.py [--work /var/tmp/vibrawatch-arm64]

Not a test: it needs root, debootstrap and qemu-user-static (installed with apt-get when missing) and
takes tens of minutes. What it does, each step printed with its wall time:

1. binfmt_misc: mounted if it is not, and ``qemu-aarch64`` registered from /usr/lib/binfmt.d/ (flag F: the
   emulator is opened at registration, so the root needs no copy of it).
2. A Debian bookworm arm64 root by ``debootstrap`` (python3, python3-venv; kept and reused on a rerun).
3. The wheelhouse, filled on the host: ``pip wheel`` of this project and ``pip download --only-binary=:all:
   --platform manylinux_2_xx_aarch64 --python-version 3.11`` of ``vibrawatch[edge]``'s dependencies. This
   is also the documented offline install (docs/install.md): the root gets neither the host's CA bundle
   nor its pip settings, and installs with ``--no-index`` as a gateway without internet would.
4. On the host: a simulated bearing run to failure, a tiny model trained on its healthy half, converted to
   a bundle (the same commands as the tests' fixtures).
5. In the root (chroot, /proc and /dev bound, NOT /sys: the host's /sys made the emulated interpreter
   crash; without it the runtime prints harmless ``Error in cpuinfo`` lines): a venv in /opt/vibrawatch,
   ``pip install --no-index --find-links wheelhouse vibrawatch[edge]``, ``vibrawatch-agent check`` and
   ``vibrawatch-agent run`` over the replay, publishing to a Mosquitto on the host's 127.0.0.1.
6. The same replay by the host's agent; both runs' scores and alarms as received by one subscriber,
   compared window by window.

Wall times under qemu-user emulation say nothing about a Raspberry Pi's speed (emulation is 10-50x slower
than the host and a Pi is not an EPYC): they show only that it ran. The report goes to stdout and to
``<work>/report.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from mosquitto import Broker  # noqa: E402  (the tests' real-Mosquitto helper)

PY = "3.11"  # bookworm's python3
PLATFORMS = ["manylinux2014_aarch64", *(f"manylinux_2_{m}_aarch64" for m in range(17, 37)), "any"]  # glibc 2.36
BINFMT = Path("/proc/sys/fs/binfmt_misc")
REPORT: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    REPORT.append(line)


def sh(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float | None = None,
       check: bool = True) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run a command, return it and its wall time; stop the benchmark with its output when it fails."""
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    dt = time.monotonic() - t0
    if check and res.returncode != 0:
        sys.exit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res, dt


def ensure_tools() -> None:
    """debootstrap and qemu-user-static from Debian, when missing."""
    if shutil.which("debootstrap") and shutil.which("qemu-aarch64-static"):
        return
    sh(["apt-get", "update", "-qq"])
    sh(["apt-get", "install", "-y", "-qq", "debootstrap", "qemu-user-static"],
       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def ensure_binfmt() -> None:
    """Mount binfmt_misc and register qemu-aarch64 (the machine has binfmt_misc unmounted)."""
    if not (BINFMT / "register").exists():
        sh(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)])
    if not (BINFMT / "qemu-aarch64").exists():
        (BINFMT / "register").write_text(Path("/usr/lib/binfmt.d/qemu-aarch64.conf").read_text().strip())
    state = (BINFMT / "qemu-aarch64").read_text().split("\n")[0]
    if state != "enabled":
        sys.exit(f"{BINFMT}/qemu-aarch64 is {state}")


def ensure_root(rootfs: Path) -> float:
    """A bookworm arm64 root with python3 and venv; reused when it is already there."""
    if (rootfs / "usr/bin/python3").exists() and (rootfs / "usr/lib/python3.11/ensurepip").exists():
        return 0.0
    _, dt = sh(["debootstrap", "--arch=arm64", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                "bookworm", str(rootfs), "http://deb.debian.org/debian"], timeout=7200)
    return dt


def fill_wheelhouse(wheels: Path) -> float:
    """This project's wheel and its [edge] dependencies for cp311 / aarch64, binary wheels only."""
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    t0 = time.monotonic()
    pip = [sys.executable, "-m", "pip"]
    sh([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)])
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    sh([*pip, "download", "-q", "--dest", str(wheels), "--find-links", str(wheels), "--only-binary=:all:",
        "--python-version", PY, "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none",
        *plat, "vibrawatch[edge]"])
    return time.monotonic() - t0


def make_bundle(work: Path) -> tuple[Path, Path]:
    """A simulated run to failure and a tiny model trained on its healthy half, converted (as the tests do)."""
    data, run, bundle = work / "bearing.npz", work / "run", work / "bundle.tar"
    if bundle.exists() and data.exists():
        return bundle, data
    cli = str(Path(sys.executable).with_name("vibrawatch"))
    sh([cli, "simulate", "bearing", "--out", str(data), "--snapshots", "80", "--samples", "4096",
        "--fs-hz", "20000", "--onset", "0.6", "--seed", "3"])
    shutil.rmtree(run, ignore_errors=True)
    sh([cli, "train", "--data", str(data), "--healthy-until", "50%", "--config", str(ROOT / "tests/data/tiny.toml"),
        "--out", str(run), "--quiet"])
    sh([cli, "convert", str(run), "--out", str(bundle)])
    return bundle, data


def agent_config(path: Path, device: str, bundle: str, data: str, spool: str, port: int) -> None:
    path.write_text(f'[agent]\nsite = "arm64bench"\ndevice = "{device}"\nbundle = "{bundle}"\nspool = "{spool}"\n\n'
                    f'[source]\nkind = "replay"\npath = "{data}"\nspeed = 0\n\n'
                    f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nmax_backoff_s = 1\n')


class Collector:
    """Every score and alarm both agents publish, by device, as a fleet consumer receives them."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.msgs: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self.lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="arm64-bench-collector")
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe("vibrawatch/v1/arm64bench/#", qos=1)
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on(self, c: Any, u: Any, m: Any) -> None:
        _, _, _, device, kind = m.topic.split("/")
        with self.lock:
            self.msgs.setdefault(device, []).append((kind, json.loads(m.payload)))

    def of(self, device: str, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [p for k, p in self.msgs.get(device, []) if k == kind]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


class Chroot:
    """/proc and /dev bound into the root for the commands run in it (never /sys), unmounted after."""

    def __init__(self, rootfs: Path) -> None:
        self.rootfs = rootfs
        self.mounts: list[Path] = []

    def __enter__(self) -> Chroot:
        for src, opts in (("/proc", ["-t", "proc", "proc"]), ("/dev", ["--rbind", "/dev"])):
            dst = self.rootfs / src.lstrip("/")
            dst.mkdir(exist_ok=True)
            sh(["mount", *opts, str(dst)])
            self.mounts.append(dst)
        return self

    def __exit__(self, *_: Any) -> None:
        for dst in reversed(self.mounts):
            subprocess.run(["umount", "-R", "-l", str(dst)], check=False)

    def run(self, *cmd: str, timeout: float = 3600,
            check: bool = True) -> tuple[subprocess.CompletedProcess[str], float]:
        env = {"PATH": "/opt/vibrawatch/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
        return sh(["chroot", str(self.rootfs), *cmd], env=env, timeout=timeout, check=check)


def quiet(text: str) -> str:
    """The output without the emulated runtime's harmless 'Error in cpuinfo' lines (counted)."""
    lines = text.splitlines()
    noise = sum("Error in cpuinfo" in x for x in lines)
    kept = [x for x in lines if "Error in cpuinfo" not in x]
    if noise:
        kept.append(f"({noise} 'Error in cpuinfo' line(s) from the emulated runtime left out)")
    return "\n".join(kept)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/vibrawatch-arm64"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/arm64.py needs root (debootstrap, binfmt_misc, chroot, mount)")
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    rootfs, wheels = work / "root", work / "wheelhouse"
    say("# arm64 proof (bench/arm64.py)")
    ensure_tools()
    qemu = sh(["qemu-aarch64-static", "--version"])[0].stdout.splitlines()[0]
    say(f"host: {os.uname().machine}, {os.cpu_count()} cores; emulation: {qemu}")
    ensure_binfmt()
    dt = ensure_root(rootfs)
    say(f"debootstrap bookworm arm64: {dt:.0f} s" if dt else f"debootstrap bookworm arm64: reused {rootfs}")
    dt = fill_wheelhouse(wheels)
    whl = sorted(wheels.glob("*.whl"))
    say(f"\n## Wheelhouse (filled on the host in {dt:.0f} s): {len(whl)} wheels, "
        f"{sum(w.stat().st_size for w in whl) / 1e6:.1f} MB")
    say("\n| wheel | MB |\n|---|---|")
    for w in whl:
        say(f"| {w.name} | {w.stat().st_size / 1e6:.2f} |")
    bundle, data = make_bundle(work)

    stage = rootfs / "opt/vw-bench"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "state").mkdir(parents=True)
    shutil.copytree(wheels, stage / "wheelhouse")
    shutil.copy(bundle, stage / "bundle.tar")
    shutil.copy(data, stage / "bearing.npz")
    shutil.rmtree(rootfs / "opt/vibrawatch", ignore_errors=True)
    (work / "broker").mkdir(exist_ok=True)
    broker = Broker(work / "broker").start()
    col = Collector(broker.port)
    agent_config(stage / "agent.toml", "arm64", "/opt/vw-bench/bundle.tar", "/opt/vw-bench/bearing.npz",
                 "/opt/vw-bench/state/spool.sqlite", broker.port)
    times: dict[str, float] = {}
    try:
        with Chroot(rootfs) as ch:
            arch = ch.run("uname", "-m")[0].stdout.strip()
            pyv = ch.run("python3", "-c", "import platform,sys;print(platform.machine(), sys.version.split()[0])")[0]
            say(f"\n## In the root\nuname -m: {arch}; python3: {pyv.stdout.strip()}")
            _, times["venv"] = ch.run("python3", "-m", "venv", "/opt/vibrawatch")
            res, times["pip install (offline)"] = ch.run(
                "/opt/vibrawatch/bin/pip", "install", "--no-index", "--find-links", "/opt/vw-bench/wheelhouse",
                "vibrawatch[edge]")
            say("pip install --no-index --find-links wheelhouse vibrawatch[edge]: "
                + res.stdout.strip().splitlines()[-1])
            du = sh(["du", "-sm", str(rootfs / "opt/vibrawatch")])[0].stdout.split()[0]
            say(f"installed venv: {du} MB")
            res, times["vibrawatch-agent check"] = ch.run("/opt/vibrawatch/bin/vibrawatch-agent", "check", "--config",
                                                          "/opt/vw-bench/agent.toml")
            say("\n`vibrawatch-agent check` in the root:\n```\n" + quiet(res.stdout + res.stderr).strip() + "\n```")
            res, times["vibrawatch-agent run (replay, 80 snapshots)"] = ch.run(
                "/opt/vibrawatch/bin/vibrawatch-agent", "run", "--config", "/opt/vw-bench/agent.toml")
            (work / "arm64-run.log").write_text(res.stdout + res.stderr)
            log = quiet(res.stdout + res.stderr)
            say("\n`vibrawatch-agent run` log in the root (first and last lines):\n```\n"
                + "\n".join(log.splitlines()[:4] + ["..."] + log.splitlines()[-3:]) + "\n```")
        host_dir = work / "host"
        host_dir.mkdir(exist_ok=True)
        (host_dir / "spool.sqlite").unlink(missing_ok=True)
        agent_config(host_dir / "agent.toml", "host", str(bundle), str(data), str(host_dir / "spool.sqlite"),
                     broker.port)
        agent = str(Path(sys.executable).with_name("vibrawatch-agent"))
        _, times["host: vibrawatch-agent run (same replay)"] = sh(
            [agent, "run", "--config", str(host_dir / "agent.toml")])
        time.sleep(2)
    finally:
        col.close()
        broker.stop()
    compare(col)
    say("\n## Wall times (under qemu-user emulation: they say nothing about a Raspberry Pi's speed)")
    say("\n| step | s |\n|---|---|")
    for k, v in times.items():
        say(f"| {k} | {v:.1f} |")
    (work / "report.md").write_text("\n".join(REPORT) + "\n")
    print(f"\nreport: {work / 'report.md'}")


def compare(col: Collector) -> None:
    """Scores window by window and the alarms of both runs, as the subscriber received them."""
    import numpy as np

    a, h = col.of("arm64", "score"), col.of("host", "score")
    a = sorted({p["seq"]: p for p in a}.values(), key=lambda p: p["seq"])
    h = sorted({p["seq"]: p for p in h}.values(), key=lambda p: p["seq"])
    say(f"\n## arm64 vs host, same bundle and replay\nscores received: arm64 {len(a)}, host {len(h)}")
    if not a or len(a) != len(h):
        say("MISMATCH: different numbers of scored windows")
        return
    sa, sh_ = np.array([p["score"] for p in a]), np.array([p["score"] for p in h])
    same_t = all(x["t"] == y["t"] for x, y in zip(a, h, strict=True))
    say(f"window times identical: {same_t}; max |score difference| {np.abs(sa - sh_).max():.3g} "
        f"(relative {np.abs(sa - sh_).max() / sh_.max():.3g}); runtime arm64 "
        f"{col.of('arm64', 'status')[0].get('runtime')}, numpy {col.of('arm64', 'status')[0].get('numpy')}")
    for dev in ("arm64", "host"):
        al = [(p["event"], p["t"], p["channel"]) for p in col.of(dev, "alarm")]
        say(f"alarms {dev}: {al}")
    same = [(p["event"], p["t"], p["channel"]) for p in col.of("arm64", "alarm")] == \
        [(p["event"], p["t"], p["channel"]) for p in col.of("host", "alarm")]
    say(f"alarms identical (event, window time, channel): {same}")


if __name__ == "__main__":
    main()
