"""The monitor's settings: the example file loads; a mistake is one line naming the file, key or option."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import ROOT
from monitor_helpers import vibrawatch_command

from vibrawatch.agent.errors import ConfigError
from vibrawatch.monitor.config import load_monitor_config


def test_example_config_loads_and_the_command_line_overrides_it() -> None:
    cfg = load_monitor_config(ROOT / "configs" / "monitor.example.toml", broker="mqtt://127.0.0.1:1884", group=None)
    assert (cfg.host, cfg.port, cfg.tls, cfg.monitor.group) == ("127.0.0.1", 1884, False, "vibrawatch")
    assert cfg.monitor.db.startswith("sqlite:////") and cfg.retention.raw_days == 30


@pytest.mark.parametrize(("text", "message"), [
    ("[monitor]\nbrokr = 'mqtt://x:1'\n", "[monitor] unknown key(s) ['brokr']"),
    ("[mqtt]\npassword = 'x'\n", "never write a password"),
    ("[monitor]\nbroker = 'http://x'\n", "expected mqtt://HOST:PORT"),
    ("[alerts]\nwebhook = 'ftp://x'\n", "expected an http:// or https:// URL"),
    ("[nope]\n", "unknown section(s) ['nope']"),
    ("[mqtt]\nreceive_maximum = 70000\n", "[mqtt] receive_maximum = 70000: expected an integer from 1 to 65535"),
    ("[mqtt]\nreceive_maximum = 0\n", "[mqtt] receive_maximum = 0: expected an integer from 1 to 65535"),
])
def test_a_bad_setting_names_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "monitor.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_monitor_config(p)
    assert str(e.value).startswith(str(p)) and message in str(e.value)


def test_the_command_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    r = subprocess.run(vibrawatch_command("monitor", "--db", "mysql://x/y", "--http", "off"), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert r.stderr.startswith("error: --db mysql://x/y: unknown database")


def test_http_off_in_the_file_as_on_the_command_line(tmp_path: Path) -> None:
    """Issue 21: `http = "off"` was refused while `--http off` worked."""
    p = tmp_path / "monitor.toml"
    p.write_text('[monitor]\nhttp = "off"\n')
    assert load_monitor_config(p).monitor.http is None
    assert load_monitor_config(None, http="off").monitor.http is None
    p.write_text('[monitor]\nhttp = "127.0.0.1:9"\n')
    assert load_monitor_config(p, http="off").monitor.http is None  # the option over the file
    p.write_text('[monitor]\nhttp = "of"\n')
    with pytest.raises(ConfigError, match=r"http 'of': expected HOST:PORT .* or \"off\""):
        load_monitor_config(p)


PASSWORD = "p@ss:w/rd %41"  # every character a URL would mangle unquoted


def _db_config(tmp_path: Path, db: str, mode: int = 0o600, key: bool = True) -> Path:
    secret = tmp_path / "db-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(mode)
    p = tmp_path / "monitor.toml"
    p.write_text(f'[monitor]\ndb = "{db}"\n' + ('db_password_file = "db-password"\n' if key else ""))  # relative
    return p


def test_the_database_password_comes_from_a_file_and_is_never_shown(tmp_path: Path) -> None:
    from urllib.parse import unquote, urlparse

    cfg = load_monitor_config(_db_config(tmp_path, "postgresql://fleet@127.0.0.1:5/fleet"))
    assert unquote(urlparse(cfg.monitor.db).password or "") == PASSWORD  # what libpq decodes
    assert PASSWORD not in repr(cfg) and "%40" not in repr(cfg) and "fleet:***@127.0.0.1" in repr(cfg)


def test_the_database_password_from_systemds_credentials_directory(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from urllib.parse import unquote, urlparse

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "db-password").write_text(PASSWORD)
    (creds / "db-password").chmod(0o400)  # as systemd hands it over
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = load_monitor_config(None, db="postgresql://fleet@127.0.0.1:5/fleet")
    assert unquote(urlparse(cfg.monitor.db).password or "") == PASSWORD
    assert load_monitor_config(None, db=f"sqlite:///{tmp_path}/f.db").monitor.db == f"sqlite:///{tmp_path}/f.db"
    (creds / "db-password").chmod(0o600)
    (creds / "db-password").write_text("")  # the unit needs the file; empty: no password
    assert load_monitor_config(None, db="postgresql://fleet@h/f").monitor.db == "postgresql://fleet@h/f"


@pytest.mark.parametrize(("db", "mode", "message"), [
    ("postgresql://fleet@127.0.0.1/fleet", 0o644, "has mode 0644: other users can read it; run chmod 600"),
    ("postgresql://fleet:inline@127.0.0.1/fleet", 0o600, "has a password in the URL and [monitor] db_password_file"),
    ("postgresql://127.0.0.1/fleet", 0o600, "needs a user in the URL"),
    ("sqlite:///fleet.db", 0o600, "db_password_file is for a postgresql:// database"),
])
def test_a_bad_database_password_setting_is_one_line_without_the_password(tmp_path: Path, db: str, mode: int,
                                                                          message: str) -> None:
    p = _db_config(tmp_path, db, mode)
    with pytest.raises(ConfigError) as e:
        load_monitor_config(p)
    assert str(e.value).startswith(str(p)) and message in str(e.value)
    assert PASSWORD not in str(e.value) and "inline" not in str(e.value)


def test_the_monitor_logs_in_to_postgresql_with_the_password_from_the_file(tmp_path: Path) -> None:
    """A real cluster that asks this role for its password (SCRAM): the file's password opens it, a wrong one
    does not, and the monitor's own line shows the URL masked."""
    import shutil

    import psycopg
    from postgres import Postgres, postgres_bin

    from vibrawatch.monitor.store import open_store

    if postgres_bin() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not installed: apt-get install postgresql (tests/run.sh)")
    pg = Postgres().start()
    try:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("SET password_encryption = 'scram-sha-256'")
            conn.execute(f"CREATE ROLE fleet LOGIN PASSWORD '{PASSWORD}'")
            conn.execute("CREATE DATABASE fleet OWNER fleet")
            hba = pg.data / "pg_hba.conf"
            owner = hba.stat()
            hba.write_text("host all fleet 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
            shutil.chown(hba, owner.st_uid, owner.st_gid)
            conn.execute("SELECT pg_reload_conf()")
        url = f"postgresql://fleet@127.0.0.1:{pg.port}/fleet"
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(url, connect_timeout=10).close()  # the role really needs its password
        cfg = load_monitor_config(_db_config(tmp_path, url))
        store = open_store(cfg.monitor.db)
        try:
            assert store.counts()["scores"] == 0
            assert PASSWORD not in store.safe_url and "fleet:***@" in store.safe_url
        finally:
            store.close()
        (tmp_path / "db-password").write_text("wrong\n")
        r = subprocess.run(vibrawatch_command("monitor", "--config", str(tmp_path / "monitor.toml"), "--http", "off",
                                              "--broker", "mqtt://127.0.0.1:1"),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and "wrong" not in r.stderr + r.stdout and "fleet:***@" in r.stderr, r.stderr
    finally:
        pg.remove()


def test_the_signing_key_from_systemds_credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no [remote] signing_key, LoadCredential=signing-key hands the monitor the key (its dynamic user need not
    read /etc); an empty file is none, the config's own key wins, and a bad one is refused at start, named."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    creds = tmp_path / "creds"
    creds.mkdir()
    key = creds / "signing-key"
    key.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key.chmod(0o400)  # as systemd hands it over
    assert load_monitor_config(None).remote.signing_key is None  # no credentials directory: none
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load_monitor_config(None).remote.signing_key == str(key)
    own = tmp_path / "own.key"
    own.write_bytes(key.read_bytes())
    own.chmod(0o600)
    assert load_monitor_config(None, signing_key=str(own)).remote.signing_key == str(own)
    key.chmod(0o600)
    key.write_text("not a key")
    with pytest.raises(ConfigError, match=r"\[remote\] signing_key .*signing-key: not a readable unencrypted PEM"):
        load_monitor_config(None)
    key.write_text("")
    assert load_monitor_config(None).remote.signing_key is None
