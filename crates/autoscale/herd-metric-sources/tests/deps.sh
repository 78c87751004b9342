#!/bin/sh
# Installs the real servers that herd-metric-sources' tests start (each on a free loopback
# port, in a temporary directory, stopped when the test ends): redis-server (Redis 7),
# nats-server (JetStream), prometheus, postgresql (images/app/pg-test-cluster.sh): the
# "metrics" group of scripts/packages.txt plus PostgreSQL, checked after installing.
# Debian's packages do not leave a service running here without systemd; where systemd runs
# them they use the default ports, which the tests never use.
# Usage (as root): crates/autoscale/herd-metric-sources/tests/deps.sh (scripts/setup.sh does this too).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
exec "$HERE/../../../../scripts/packages.sh" metrics
