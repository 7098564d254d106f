#!/usr/bin/env bash
# Make sure PostgreSQL answers on 127.0.0.1:5432; start the local cluster if it is installed
# but down. In CI (CI=true) a PostgreSQL that cannot be reached fails the run.
set -euo pipefail
host=127.0.0.1 port=5432

answers() {
    python3 - "$host" "$port" <<'PY'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
except OSError:
    sys.exit(1)
PY
}

if answers; then
    echo "PostgreSQL answers on $host:$port"
    exit 0
fi
if [ -d /etc/postgresql ] && command -v pg_ctlcluster >/dev/null; then
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    echo "PostgreSQL is down; starting cluster $version/main"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do
        answers && { echo "PostgreSQL answers on $host:$port"; exit 0; }
        sleep 1
    done
fi
if [ "${CI:-}" = "true" ]; then
    echo "PostgreSQL does not answer on $host:$port, and CI needs it" >&2
    exit 1
fi
echo "warning: PostgreSQL does not answer on $host:$port; its tests will be skipped" >&2
