#!/usr/bin/env bash
# Runs schemathesis against a real `stockroom serve` (fresh SQLite file, free port):
# every operation in the OpenAPI schema, no 5xx, responses that match the schema.
set -euo pipefail
BIN=${BIN:-.venv/bin}
workdir=$(mktemp -d)
port=$("$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export STOCKROOM_DATABASE_URL="sqlite+aiosqlite:///$workdir/schemathesis.db"
export STOCKROOM_LOG_LEVEL=warning

key=$("$BIN/stockroom" apikey create --name schemathesis --scopes admin 2>>"$workdir/server.log")

"$BIN/stockroom" serve --host 127.0.0.1 --port "$port" 2>"$workdir/server.log" &
server=$!
cleanup() {
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    rm -rf "$workdir"
}
trap cleanup EXIT

for _ in $(seq 1 50); do
    curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.2
done

"$BIN/schemathesis" --config-file schemathesis.toml run "http://127.0.0.1:$port/openapi.json" \
    --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-60}" \
    --seed "${SCHEMATHESIS_SEED:-20261125}" \
    --request-timeout 10 \
    --header "Authorization: Bearer $key" \
    --workers 1 || {
    status=$?
    echo "--- server log ---"
    tail -n 50 "$workdir/server.log"
    exit "$status"
}
