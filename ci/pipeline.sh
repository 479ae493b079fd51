#!/usr/bin/env bash
# CI part of the chunk-read pipeline / zarr reader (issue 5): checks the committed zarr
# fixtures against zarr-python. `cargo test --all-features` compares getmany's reads with the
# committed expected arrays without Python; this script checks that zarr-python (pinned
# below) still reads the committed arrays as those expected arrays, and that regenerating the
# fixtures gives the same expected arrays. About a minute (mostly pip).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check "zarr==3.1.6" "numpy>=2"
"$VENV/bin/python" tests/fixtures/zarr/make_fixtures.py --check
