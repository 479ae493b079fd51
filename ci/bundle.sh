#!/usr/bin/env bash
# Real third-party clients against `getmany serve` (the bundle endpoint): the PyPI packages
# tigris-boto3-ext (bundle_objects over boto3) and aistore (Client.batch), each running its
# scenarios from tests/python/. Needs python3 with venv and PyPI; without Python it says so
# and exits 0. About a minute, after the test build.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "bundle clients: skipped (no python3 with venv on this machine)"
    exit 0
fi

VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check tigris-boto3-ext aistore boto3
# lz4 (PyPI) reads the .tar.lz4 output; without it that scenario is skipped.
"$VENV/bin/pip" install --quiet --disable-pip-version-check lz4 || echo "lz4 not installed: the .tar.lz4 scenario is skipped"

# The binary needs feature `cli` (which brings `server` and `bundle`). By default it is the
# debug binary that `cargo test --all-features` already built (nothing to compile after the
# test run); BUNDLE_RELEASE=1 builds `cargo build --release --features cli` instead.
TARGET="${CARGO_TARGET_DIR:-target}"
if [ "${BUNDLE_RELEASE:-0}" = "1" ]; then
    echo "== cargo build --release --features cli"
    cargo build --release --features cli
    BIN="$TARGET/release/getmany"
else
    echo "== cargo test --all-features --no-run (builds target/debug/getmany)"
    cargo test --all-features --no-run --quiet
    BIN="$TARGET/debug/getmany"
fi

ROOT="$(mktemp -d)"
mkdir -p "$ROOT/data"
LOG="$ROOT.log"
ACCESS=ci-access
SECRET=ci-secret
TOKEN=ci-token
"$BIN" serve --root "$ROOT" --listen 127.0.0.1:0 \
    --access-key "$ACCESS" --secret-key "$SECRET" --token "$TOKEN" >"$LOG" 2>&1 &
PID=$!
cleanup() {
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    rm -rf "$ROOT" "$LOG"
}
trap cleanup EXIT

ENDPOINT=""
for _ in $(seq 1 100); do
    ENDPOINT="$(sed -n 's/^listening on //p' "$LOG" | head -n 1)"
    [ -n "$ENDPOINT" ] && break
    if ! kill -0 "$PID" 2>/dev/null; then
        cat "$LOG"
        echo "bundle clients: getmany serve exited"
        exit 1
    fi
    sleep 0.1
done
if [ -z "$ENDPOINT" ]; then
    cat "$LOG"
    echo "bundle clients: getmany serve did not start"
    exit 1
fi
echo "== getmany serve at $ENDPOINT"

echo "== tigris-boto3-ext scenarios"
"$VENV/bin/python" tests/python/tigris_scenarios.py "$ENDPOINT" "$ROOT" "$ACCESS" "$SECRET"
echo "== aistore scenarios"
"$VENV/bin/python" tests/python/aistore_scenarios.py "$ENDPOINT" "$ROOT" "$TOKEN"
echo "bundle clients: all scenarios passed"
