#!/bin/sh
# Installs the real servers that herd-metric-sources' tests start (each on a free loopback
# port, in a temporary directory, stopped when the test ends):
#   redis-server (Redis 7), nats-server (JetStream), prometheus, postgresql (pg-test-cluster.sh).
# Debian's packages do not leave a service running here without systemd; where systemd runs
# them they use the default ports, which the tests never use.
# Usage (CI, as root): crates/herd-metric-sources/tests/deps.sh
set -eu
missing=""
for pair in redis-server:redis-server nats-server:nats-server prometheus:prometheus psql:postgresql; do
    cmd=${pair%%:*}
    pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing="$missing $pkg"
done
[ -n "$missing" ] || exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "herd-metric-sources: install$missing (no apt-get here)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086 # a list of package names
apt-get install -y -qq --no-install-recommends $missing >/dev/null
