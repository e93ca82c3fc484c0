#!/usr/bin/env bash
# `make run`: the Flowlang server on flows/ (a fresh SQLite file) talking to the local
# Messenger emulator instead of Facebook. Ctrl-C stops both.
#
# The demo settings below are not secrets; `flowc say` uses the same ones by default, so
#   .venv/bin/flowc say "I'm interested in a demo"
# in another terminal talks to this server. Ports: SERVER_PORT (8080), EMULATOR_PORT (8081).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
SERVER_PORT=${SERVER_PORT:-8080}
EMULATOR_PORT=${EMULATOR_PORT:-8081}
FLOWS=${FLOWS:-flows/}
STATE=$(mktemp -d "${TMPDIR:-/tmp}/flowlang-run.XXXXXX")

export FLOW_APP_SECRET=flowlang-demo-app-secret
export FLOW_VERIFY_TOKEN=flowlang-demo-verify-token
export FLOW_SECRET_KEY=flowlang-demo-secret-key
export FLOW_ADMIN_TOKEN=flowlang-demo-admin-token
export FLOW_PAGE_ID=1000000000000001
export FLOW_PAGE_TOKEN=flowlang-demo-page-token
export FLOW_DATABASE_URL="sqlite:///$STATE/flowlang.db"
export FLOW_GRAPH_API_URL="http://127.0.0.1:$EMULATOR_PORT/v25.0"
export PYTHONUNBUFFERED=1

pids=()
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$STATE"
}
trap stop INT TERM EXIT

# The emulator checks appsecret_proof as Meta does with "Require App Secret" switched on.
"$BIN/flowc" emulator --port "$EMULATOR_PORT" --app-secret "$FLOW_APP_SECRET" --quiet &
pids+=($!)
"$BIN/flowc" serve "$FLOWS" --host 127.0.0.1 --port "$SERVER_PORT" --log-level warning &
pids+=($!)

# Say how to talk to it once the server answers (or stop if either process died first).
for _ in $(seq 1 300); do
  if "$BIN/python" -c "import httpx,sys; sys.exit(httpx.get('http://127.0.0.1:$SERVER_PORT/readyz').status_code != 200)" 2>/dev/null; then
    echo
    echo "Ready: the bot answers on http://127.0.0.1:$SERVER_PORT/webhook and sends to the emulator."
    echo "In another terminal, talk to it:"
    echo "  $BIN/flowc say \"I'm interested in a demo\""
    echo "Its replies appear here and there. Ctrl-C stops both."
    echo
    break
  fi
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || exit 1; done
  sleep 0.1
done

# Stop when either process stops (a bad setting or flow stops `flowc serve` with one line).
wait -n "${pids[@]}"
