"""The publisher on a real Mosquitto: TLS (CA, client certificate, password), the fallback to MQTT 3.1.1, and
two gateways sharing a client id.

Certificates are made per test with ``cryptography``. Mosquitto 2.0 cannot be told to refuse MQTT 5, so
the fallback test puts a small gate in front of the real broker that answers an MQTT 5 CONNECT the way
an MQTT 3.1.1-only broker does (CONNACK, return code 1: unacceptable protocol version, then close) and
passes any 3.1.1 connection through to Mosquitto untouched.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mosquitto import Broker, free_port
from paho.mqtt.enums import CallbackAPIVersion

from vibrawatch.agent.config import AgentConfig, AgentSection
from vibrawatch.agent.link.broker import MqttSection
from vibrawatch.agent.link.publish import Publisher
from vibrawatch.agent.link.spool import Spool

SCORE_TOPIC = "vibrawatch/v1/lab/gw/score"


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def make_ca(d: Path, name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = d / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, path


def issue(d: Path, name: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path],
          server: bool) -> tuple[Path, Path]:
    """A certificate signed by ``ca``: for the broker at 127.0.0.1, or for a client."""
    ca_cert, ca_key, _ = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
         .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1)))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    cert_path, key_path = d / f"{name}.pem", d / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    return cert_path, key_path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = make_ca(tmp_path, "vibrawatch-test-ca")
    other_ca = make_ca(tmp_path, "someone-elses-ca")
    server = issue(tmp_path, "broker", ca, server=True)
    client = issue(tmp_path, "gateway", ca, server=False)
    return {"ca": ca[2], "other_ca": other_ca[2], "server_cert": server[0], "server_key": server[1],
            "client_cert": client[0], "client_key": client[1]}


def tls_broker(tmp_path: Path, pki: dict[str, Path], require_certificate: bool, password_file: Path | None = None
               ) -> Broker:
    broker = Broker(tmp_path)
    user = "user root\n" if os.geteuid() == 0 else ""
    auth = f"allow_anonymous false\npassword_file {password_file}\n" if password_file else "allow_anonymous true\n"
    broker.conf.write_text(
        f"{user}listener {broker.port} 127.0.0.1\n{auth}cafile {pki['ca']}\ncertfile {pki['server_cert']}\n"
        f"keyfile {pki['server_key']}\nrequire_certificate {'true' if require_certificate else 'false'}\n"
        f"log_dest file {tmp_path}/mosquitto.log\n")
    return broker.start()


class Subscriber:
    def __init__(self, port: int, **tls: str) -> None:
        self.got: list[dict] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2)
        if tls:
            self.c.tls_set(**tls)
        self.c.on_message = lambda c, u, m: self.got.append(json.loads(m.payload))
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe("vibrawatch/v1/lab/gw/#", qos=1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def wait(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def publisher(tmp_path: Path, port: int, **mqtt_fields: object) -> tuple[Publisher, Spool]:
    cfg = AgentConfig(AgentSection("lab", "gw", "unused", spool=str(tmp_path / "spool.sqlite")),
                      mqtt=MqttSection(port=port, max_backoff_s=1, **mqtt_fields))  # type: ignore[arg-type]
    spool = Spool(cfg.agent.spool)
    return Publisher(cfg.mqtt, spool, {"model": "test"}, site=cfg.agent.site, device=cfg.agent.device,
                     password=cfg.password), spool


def test_tls_with_client_certificate_delivers(tmp_path: Path, pki: dict[str, Path]) -> None:
    broker = tls_broker(tmp_path, pki, require_certificate=True)
    sub = Subscriber(broker.port, ca_certs=str(pki["ca"]), certfile=str(pki["client_cert"]),
                     keyfile=str(pki["client_key"]))
    pub, spool = publisher(tmp_path, broker.port, tls=True, ca_file=str(pki["ca"]), cert_file=str(pki["client_cert"]),
                           key_file=str(pki["client_key"]))
    try:
        pub.start()
        assert wait(lambda: pub.connected), "no TLS connection with the right CA and client certificate"
        seq = pub.enqueue("score", {"v": 1, "score": 0.5})
        assert wait(lambda: any(m.get("seq") == seq for m in sub.got)), "the score did not arrive over TLS"
        assert pub.wait_drained(5) and len(spool) == 0
    finally:
        pub.stop()
        sub.close()
        spool.close()
        broker.stop()


@pytest.mark.parametrize("case", ["wrong CA", "no client certificate"])
def test_tls_refused_keeps_the_message_in_the_spool(tmp_path: Path, pki: dict[str, Path], case: str) -> None:
    broker = tls_broker(tmp_path, pki, require_certificate=True)
    fields: dict[str, object] = {"tls": True, "ca_file": str(pki["ca"])}
    if case == "wrong CA":  # a broker whose certificate this CA did not sign: never trusted
        fields.update(ca_file=str(pki["other_ca"]), cert_file=str(pki["client_cert"]),
                      key_file=str(pki["client_key"]))
    pub, spool = publisher(tmp_path, broker.port, **fields)
    try:
        pub.start()
        pub.enqueue("score", {"v": 1, "score": 0.5})
        assert not wait(lambda: pub.connected, timeout=3.0), f"connected despite {case}"
        assert len(spool) == 1  # nothing lost: it waits on disk for a connection that is allowed
        assert pub.sender.thread.is_alive()
    finally:
        pub.stop()
        spool.close()
        broker.stop()


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd (package mosquitto) missing")
def test_tls_with_username_and_password_file(tmp_path: Path, pki: dict[str, Path]) -> None:
    users = tmp_path / "users"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(users), "press7", "s3cret-from-a-file"], check=True)
    users.chmod(0o644)
    broker = tls_broker(tmp_path, pki, require_certificate=False, password_file=users)
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret-from-a-file\n")
    secret.chmod(0o600)
    pub, spool = publisher(tmp_path, broker.port, tls=True, ca_file=str(pki["ca"]), username="press7",
                           password_file=str(secret))
    wrong_secret = tmp_path / "wrong"
    wrong_secret.write_text("guess\n")
    wrong_secret.chmod(0o600)  # a password file others can read is refused before it is ever sent
    intruder, intruder_spool = publisher(tmp_path / "x", broker.port, tls=True, ca_file=str(pki["ca"]),
                                         username="press7", password_file=str(wrong_secret), client_id="intruder")
    try:
        pub.start()
        intruder.start()
        assert wait(lambda: pub.connected), "the password from password_file was not accepted"
        assert not wait(lambda: intruder.connected, timeout=2.0), "a wrong password was accepted"
    finally:
        for p, s in ((pub, spool), (intruder, intruder_spool)):
            p.stop()
            s.close()
        broker.stop()


class Mqtt311Gate:
    """Listens on a port of its own; refuses MQTT 5 as a 3.1.1-only broker does, pipes 3.1.1 to ``upstream``."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.refused_v5 = 0
        self.passed_311 = 0
        self._srv = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _read_packet(conn: socket.socket) -> bytes:
        head = conn.recv(1)
        length, shift, raw = 0, 0, b""
        while True:  # the remaining length: a base-128 varint
            b = conn.recv(1)
            raw += b
            length |= (b[0] & 0x7F) << shift
            shift += 7
            if not b[0] & 0x80:
                break
        body = b""
        while len(body) < length:
            body += conn.recv(length - len(body))
        return head + raw + body

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                packet = self._read_packet(conn)
            except (OSError, IndexError):
                return
            body = packet[2:] if packet[1] < 0x80 else packet[3:]
            level = body[6]  # after the protocol name: 00 04 'M' 'Q' 'T' 'T'
            if level == 5:
                self.refused_v5 += 1
                conn.sendall(b"\x20\x02\x00\x01")  # CONNACK, return code 1: unacceptable protocol version
                return
            self.passed_311 += 1
            with socket.create_connection(("127.0.0.1", self.upstream)) as up:
                up.sendall(packet)

                def pipe(a: socket.socket, b: socket.socket) -> None:
                    try:
                        while data := a.recv(65536):
                            b.sendall(data)
                    except OSError:
                        pass
                    finally:
                        for s in (a, b):
                            with contextlib.suppress(OSError):
                                s.shutdown(socket.SHUT_RDWR)

                t = threading.Thread(target=pipe, args=(up, conn), daemon=True)
                t.start()
                pipe(conn, up)
                t.join(timeout=5)

    def close(self) -> None:
        self._srv.close()


def test_falls_back_to_mqtt_311_when_the_broker_refuses_5(tmp_path: Path) -> None:
    broker = Broker(tmp_path).start()
    gate = Mqtt311Gate(broker.port)
    sub = Subscriber(broker.port)
    pub, spool = publisher(tmp_path, gate.port)
    try:
        pub.start()
        assert wait(lambda: pub.connected), "no connection after the MQTT 5 refusal"
        assert gate.refused_v5 >= 1 and gate.passed_311 >= 1
        assert pub.connection.protocol == mqtt.MQTTv311
        seq = pub.enqueue("score", {"v": 1, "score": 0.25})
        assert wait(lambda: any(m.get("seq") == seq for m in sub.got)), "the score did not arrive over 3.1.1"
        assert wait(lambda: any(m.get("state") == "online" for m in sub.got)), "no retained online status"
        pub.stop()
        assert wait(lambda: any(m.get("state") == "offline" for m in sub.got)), "no offline status on stop"
    finally:
        pub.stop()
        gate.close()
        sub.close()
        spool.close()
        broker.stop()


def test_two_agents_with_one_client_id_are_named_in_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    """A copied config makes two gateways take each other's session every reconnect: say so, plainly."""
    broker = Broker(tmp_path).start()
    first, first_spool = publisher(tmp_path / "a", broker.port)
    second, second_spool = publisher(tmp_path / "b", broker.port)
    try:
        with caplog.at_level("ERROR", logger="vibrawatch.publish"):
            first.start()
            assert wait(lambda: first.connected)
            second.start()
            assert wait(lambda: "client id 'vibrawatch-lab-gw'" in caplog.text, timeout=20), caplog.text
        assert "two agents share a config" in caplog.text
    finally:
        for p, s in ((first, first_spool), (second, second_spool)):
            p.stop()
            s.close()
        broker.stop()


def test_a_normal_stop_is_no_warning_and_a_lost_broker_is(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The journal's warnings are for faults: the agent's own disconnect at stop is logged at INFO; a broker
    that goes away is a WARNING that says the agent spools meanwhile."""
    broker = Broker(tmp_path).start()
    pub, spool = publisher(tmp_path, broker.port)
    try:
        with caplog.at_level(logging.INFO, logger="vibrawatch.publish"):
            pub.start()
            assert wait(lambda: pub.connected)
            pub.stop()
        said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "vibrawatch.publish"]
        assert any(lv == logging.INFO and "disconnected from the broker" in m for lv, m in said), said
        assert not [m for lv, m in said if lv >= logging.WARNING], said
        caplog.clear()
        again, again_spool = publisher(tmp_path / "again", broker.port)
        with caplog.at_level(logging.INFO, logger="vibrawatch.publish"):
            again.start()
            assert wait(lambda: again.connected)
            broker.stop()
            assert wait(lambda: any(r.levelno == logging.WARNING and "spooling until it is back" in r.getMessage()
                                    for r in caplog.records))
        again.stop()
        again_spool.close()
    finally:
        pub.stop()
        spool.close()
        broker.stop()
