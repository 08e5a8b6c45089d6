"""A real Eclipse Mosquitto for the tests: started on 127.0.0.1 on a free port, stopped after; restartable
on the same port, so a test can take the broker away and bring it back."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from vibrawatch.monitor.live import free_port, wait_listening

__all__ = ["Broker", "free_port", "mosquitto_binary"]


def mosquitto_binary() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("mosquitto is not installed: apt-get install mosquitto (tests/run.sh does it)")


class Broker:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        # Started as root, mosquitto drops to the 'mosquitto' user, which cannot write the test's folder.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"{user}listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {workdir}/\nlog_dest file {workdir}/mosquitto.log\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        if wait_listening(self.port, 10):
            return self
        raise RuntimeError(f"mosquitto did not start on port {self.port}; see {self.workdir}/mosquitto.log")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None
