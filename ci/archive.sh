#!/usr/bin/env bash
# ArchiveStore against archives written by real tools, regenerated now: Python's tarfile
# and zipfile, GNU tar, Info-ZIP zip and the webdataset package write a fresh set of
# fixtures, and the Rust fixture test reads them byte for byte against what Python reads.
# Also checks that the committed tests/fixtures/archive/expected.json still matches what
# Python reads from the committed archives. Takes about a minute after the main build.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v zip >/dev/null || ! tar --version 2>/dev/null | grep -q "GNU tar"; then
    apt-get update -qq && apt-get install -y -qq zip tar >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q webdataset

echo "== archive fixtures: committed expected.json matches Python"
.venv/bin/python tests/fixtures/archive/make_fixtures.py --check

echo "== archive fixtures: fresh archives from the tools, read by ArchiveStore"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
.venv/bin/python tests/fixtures/archive/make_fixtures.py --out "$out"
# --all-features: the same build as the main test run, so nothing is recompiled.
GETMANY_ARCHIVE_FIXTURES="$out" cargo test --all-features --test archive_fixtures
