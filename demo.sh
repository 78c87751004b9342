#!/usr/bin/env bash
# herd's main job in one command: build herd, start a server on the process driver, create a
# 3-instance scale set across zones, show each instance answering, scale, and clean up.
# Pass --keep to leave it running.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v cargo >/dev/null 2>&1; then
  echo "herd is written in Rust: install a Rust toolchain (https://rustup.rs or 'apt-get install cargo') and run ./demo.sh again." >&2
  exit 1
fi
if ! command -v python3 >/dev/null 2>&1; then
  echo "note: python3 is not installed; the demo instances will run but not serve a web page ('apt-get install python3')." >&2
fi
echo "Building herd (first build takes a few minutes)..." >&2
cargo build --quiet --bin herd
exec target/debug/herd demo "$@"
