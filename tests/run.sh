#!/usr/bin/env bash
# Set up a fresh machine for the test suite and run it: the one test command of the README and of CI.
#   - Debian's Mosquitto broker (the MQTT tests start their own on 127.0.0.1, on a free port);
#   - PostgreSQL and Chromium for the fleet monitor's tests (a throwaway cluster; the page in a real browser);
#   - bubblewrap and systemd-analyze for the systemd units' tests;
#   - .venv: the project with its train, edge, dev and monitor extras (TensorFlow is real in the tests);
#   - .venv-tflite: a second environment with tflite-runtime and numpy<2, the way some gateways run,
#     so a bundle is really invoked through that runtime too.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
fi

# The fleet monitor's tests: a throwaway PostgreSQL cluster (initdb/pg_ctl) and the page in headless Chromium.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql chromium >/dev/null
fi

# The systemd units' tests: systemd-analyze (security, verify, the system-call filter's tables) and bubblewrap,
# which runs the real agent under the units' restrictions.
if ! command -v bwrap >/dev/null 2>&1 || ! command -v systemd-analyze >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq bubblewrap systemd >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e ".[train,edge,dev,monitor,baselines]"

if [ ! -x .venv-tflite/bin/python ]; then
    "$PY" -m venv .venv-tflite
fi
.venv-tflite/bin/pip install -q --disable-pip-version-check "numpy<2" "tflite-runtime>=2.14" "paho-mqtt>=2.0" \
    "cryptography>=42"
.venv-tflite/bin/pip install -q --disable-pip-version-check --no-deps -e .
export VIBRAWATCH_TFLITE_RUNTIME_PYTHON="$PWD/.venv-tflite/bin/python"

.venv/bin/ruff check .
echo "tests/run.sh: the whole suite takes about 20-25 min on a 2-core machine (models trained for real, brokers," \
     "databases and a browser started); what it skipped and why is listed at the end"
# -ra (pyproject's addopts too): the short summary names every skipped test with its reason; "$@" (-q from
# .ci/run) comes after it, so a caller's own -r wins. The output is kept to list the skips again at the end.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
color=no; [ -t 1 ] && color=yes
start=$SECONDS
set +e
.venv/bin/python -m pytest -ra --color="$color" "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
took=$((SECONDS - start))
echo "tests/run.sh: took $((took / 60)) min $((took % 60)) s, pytest exit status $status"
skips=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep '^SKIPPED' || true)  # without the colours
if [ -n "$skips" ]; then
    echo "tests/run.sh: skipped, and why (file:line of the skip: reason):"
    echo "$skips" | sed 's/^/    /'
else
    echo "tests/run.sh: nothing skipped"
fi
exit "$status"
