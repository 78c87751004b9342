#!/usr/bin/env bash
# The test command (the README's, and CI's through .ci/run): all set-up first
# (scripts/setup.sh: packages, the Python venv, the test guest and the demo app, all
# idempotent), then formatting, lints and every test in the workspace.
#
#   ./scripts/test.sh
#
# HERD_TEST_TIME_SCALE (a number, default 1) stretches every test deadline, for slow or
# loaded machines.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HERD_TESTGUEST_OUT=${HERD_TESTGUEST_OUT:-$PWD/target/testguest}
export HERD_APP_OUT=${HERD_APP_OUT:-$PWD/target/guest-app-out}
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast
