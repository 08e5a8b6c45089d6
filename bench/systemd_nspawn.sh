#!/usr/bin/env bash
# The units under a real systemd: a Debian bookworm container booted with systemd-nspawn (systemd 252 as its
# PID 1, sharing the host's network), the agent installed offline from an x86-64 wheelhouse into /opt/vibrawatch,
# both units started with systemctl against a Mosquitto on the host's 127.0.0.1 that requires the password.
#
#   sudo bench/systemd_nspawn.sh [WORKDIR]        (default /var/tmp/vw-nspawn; needs root, debootstrap,
#                                                  systemd-container, mosquitto; 10-15 minutes the first time)
#
# It shows, and prints: 216/GROUP without an i2c group; Type=notify READY after the first window; the dynamic
# user, its i2c group, no capabilities, no_new_privs and seccomp; the state directory; the credential reaching
# the broker; commissioning in the state directory; reload (SIGHUP); the watchdog restarting a stalled agent
# (SIGSTOP, 60 s); a clean stop (exit 0); a missing credential (243/CREDENTIALS) and a missing bundle (exit 2)
# failing at once without restarts; the per-machine template; recalibrate. Not shown: a real I2C device.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/var/tmp/vw-nspawn}
PY=${PY:-$REPO/.venv/bin/python}
PORT=${PORT:-18883}
ROOT=$WORK/root
mkdir -p "$WORK" && cd "$WORK"
say() { printf '\n## %s\n' "$*"; }

command -v systemd-nspawn >/dev/null || apt-get install -y -qq systemd-container
if [ ! -x "$ROOT/usr/bin/python3" ]; then
    say "debootstrap bookworm (amd64) with systemd and python3-venv"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,libseccomp2,procps,python3-venv \
        bookworm "$ROOT" http://deb.debian.org/debian >debootstrap.log
fi

say "offline wheelhouse for cp311 x86-64, installed with --no-index into /opt/vibrawatch"
rm -rf wh && mkdir wh
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w wh "$REPO"
"$PY" -m pip download -q --dest wh --find-links wh --only-binary=:all: --python-version 3.11 --implementation cp \
    --abi cp311 --abi abi3 --abi none --platform manylinux2014_x86_64 \
    $(for m in $(seq 17 36); do echo --platform manylinux_2_${m}_x86_64; done) --platform any "vibrawatch[edge]" \
    2>&1 | grep -v '^WARNING' || true
rm -rf "$ROOT/opt/wh" "$ROOT/opt/vibrawatch" && cp -r wh "$ROOT/opt/wh"
chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin sh -c \
    'python3 -m venv /opt/vibrawatch && /opt/vibrawatch/bin/pip install -q --no-index --find-links /opt/wh "vibrawatch[edge]"'

say "bundle and data (the tests' tiny model on a simulated run to failure)"
if [ ! -f fx/bundle.tar ]; then
    V=$(dirname "$PY")/vibrawatch
    "$V" simulate bearing --out fx/bearing.npz --snapshots 80 --samples 4096 --fs-hz 20000 --onset 0.6 --seed 3
    # the autoencoder alone ([product] combined = false): the agent commissions only such bundles
    { cat "$REPO/tests/data/tiny.toml"; printf '\n[product]\ncombined = false\n'; } > fx/tiny-plain.toml
    "$V" train --data fx/bearing.npz --healthy-until 50% --config fx/tiny-plain.toml --out fx/run --quiet
    "$V" convert fx/run --out fx/bundle.tar >/dev/null
fi
rm -rf "$ROOT/var/lib/private/vibrawatch" "$ROOT/var/lib/vibrawatch" "$ROOT/etc/vibrawatch" \
    "$ROOT/var/lib/private/vibrawatch.single" "$ROOT/var/lib/private/press7.keep"
mkdir -p "$ROOT/etc/vibrawatch" "$ROOT/var/lib/private/vibrawatch/press7" "$ROOT/opt/data"
chmod 700 "$ROOT/var/lib/private"
cp fx/bundle.tar "$ROOT/var/lib/private/vibrawatch/bundle.tar"
cp fx/bundle.tar "$ROOT/var/lib/private/vibrawatch/press7/bundle.tar"
install -m 0644 fx/bearing.npz "$ROOT/opt/data/bearing.npz"
cp "$REPO"/systemd/*.service "$ROOT/etc/systemd/system/"
install -m 0600 /dev/stdin "$ROOT/etc/vibrawatch/mqtt-password" <<<"s3cret-nspawn"
install -m 0600 /dev/stdin "$ROOT/etc/vibrawatch/press7.mqtt-password" <<<"s3cret-nspawn"
config() {  # $1: state directory, $2: commissioning windows
    cat <<EOF
[agent]
site = "plant1"
device = "press7"
bundle = "$1/bundle.tar"
spool = "$1/spool.sqlite"
[source]
kind = "replay"
path = "/opt/data/bearing.npz"
speed = 100
[mqtt]
host = "127.0.0.1"
port = $PORT
username = "press7"
max_backoff_s = 1
[commissioning]
windows = $2
EOF
}
config /var/lib/vibrawatch 60 >"$ROOT/etc/vibrawatch/agent.toml"
config /var/lib/vibrawatch/press7 20 >"$ROOT/etc/vibrawatch/press7.toml"
chroot "$ROOT" getent group i2c >/dev/null && chroot "$ROOT" groupdel i2c

say "broker on 127.0.0.1:$PORT, password required"
mkdir -p broker && : >broker/passwd && chmod 600 broker/passwd
mosquitto_passwd -b broker/passwd press7 s3cret-nspawn && mosquitto_passwd -b broker/passwd sub subpw
printf 'user root\nlistener %s 127.0.0.1\nallow_anonymous false\npassword_file %s\n' "$PORT" "$WORK/broker/passwd" \
    >broker/mosquitto.conf
mosquitto -c broker/mosquitto.conf >/dev/null 2>&1 & BROKER=$!
sleep 1
mosquitto_sub -h 127.0.0.1 -p "$PORT" -u sub -P subpw -t 'vibrawatch/v1/#' -v -q 1 >broker/sub.log 2>&1 & SUB=$!

say "boot the container"
set +e  # from here on, every step prints what systemd says, failures included
systemd-nspawn -D "$ROOT" --boot --register=no --keep-unit --console=pipe --machine=vwgw >nspawn.log 2>&1 </dev/null &
NSPAWN=$!
cleanup() { kill "$NSPAWN" "$SUB" "$BROKER" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 60); do L=$(pgrep -P "$NSPAWN" || true); [ -n "$L" ] && break; sleep 1; done
C() { nsenter -t "$L" -a /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
for _ in $(seq 60); do [ "$(C systemctl is-system-running 2>/dev/null || true)" = running ] && break; sleep 1; done
C systemctl --version | head -1
show() { C systemctl show "$1" -p ActiveState -p Result -p ExecMainStatus -p NRestarts | tr '\n' ' '; echo; }
log() { C journalctl -u "$1" --no-pager -o cat | grep -v 'Error in cpuinfo' | tail -n "${2:-4}"; }

say "no i2c group: the unit cannot start (216/GROUP) and is not restarted"
C systemctl start vibrawatch-agent || true; sleep 2; show vibrawatch-agent; log vibrawatch-agent 2
C systemctl reset-failed vibrawatch-agent; C groupadd --system i2c

say "start: Type=notify, started after the first scored window"
C systemctl start vibrawatch-agent; show vibrawatch-agent; log vibrawatch-agent 3
P=$(C systemctl show -p MainPID --value vibrawatch-agent)
C ps -o user,uid,gid,supgid,cmd -p "$P"
C grep -E 'CapEff|NoNewPrivs|Seccomp' "/proc/$P/status"
sleep 90
say "commissioned, from the state directory; watchdog pings"
log vibrawatch-agent 2; C ls -l /var/lib/private/vibrawatch/
C systemctl show vibrawatch-agent -p WatchdogUSec -p WatchdogTimestamp | tr '\n' ' '; echo
say "reload (SIGHUP)"
C systemctl reload vibrawatch-agent; sleep 2; log vibrawatch-agent 3
say "a stalled agent (SIGSTOP): the watchdog kills it after 60 s and it is restarted"
C kill -STOP "$(C systemctl show -p MainPID --value vibrawatch-agent)"; sleep 80
C journalctl -u vibrawatch-agent --no-pager -o cat | grep -E 'Watchdog|SIGABRT|first window' | tail -3; show vibrawatch-agent
say "stop: drains the spool, exit 0"
C systemctl stop vibrawatch-agent; show vibrawatch-agent; log vibrawatch-agent 3
say "missing credential file: 243/CREDENTIALS at once, no restart"
mv "$ROOT/etc/vibrawatch/mqtt-password"{,.away}
C systemctl start vibrawatch-agent || true; sleep 12; show vibrawatch-agent; log vibrawatch-agent 3
mv "$ROOT/etc/vibrawatch/mqtt-password"{.away,}; C systemctl reset-failed vibrawatch-agent
say "missing bundle: the agent's one line, exit 2, no restart"
sed -i 's#^bundle = .*#bundle = "/var/lib/vibrawatch/missing.tar"#' "$ROOT/etc/vibrawatch/agent.toml"
C systemctl start vibrawatch-agent || true; sleep 12; show vibrawatch-agent; log vibrawatch-agent 3
C systemctl reset-failed vibrawatch-agent

say "the per-machine template, on its own state layout (the single unit's is moved away: pick one per gateway)"
rm -f "$ROOT/var/lib/vibrawatch"; mkdir -p "$ROOT/var/lib/private/press7.keep"
mv "$ROOT/var/lib/private/vibrawatch/press7" "$ROOT/var/lib/private/press7.keep/"
mv "$ROOT/var/lib/private/vibrawatch" "$ROOT/var/lib/private/vibrawatch.single"
mkdir -p "$ROOT/var/lib/private/vibrawatch" && mv "$ROOT/var/lib/private/press7.keep/press7" "$ROOT/var/lib/private/vibrawatch/"
C systemctl start vibrawatch-agent@press7; sleep 40; show vibrawatch-agent@press7; log vibrawatch-agent@press7 2
say "recalibrate, then reload"
C /opt/vibrawatch/bin/vibrawatch-agent recalibrate --config /etc/vibrawatch/press7.toml
C systemctl reload vibrawatch-agent@press7; sleep 2; log vibrawatch-agent@press7 2
C systemctl stop vibrawatch-agent@press7; show vibrawatch-agent@press7

say "what the broker received"
grep -o '"state":"[a-z_]*"' broker/sub.log | sort | uniq -c
grep -o '"threshold_source":"[a-z]*"' broker/sub.log | sort | uniq -c
