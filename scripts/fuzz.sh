#!/usr/bin/env bash
# Fuzzes a live kagzi-server against the committed OpenAPI document with schemathesis:
# every request schemathesis derives from the spec (valid and invalid), every check it has.
# Fails on any 5xx and on any answer the spec does not allow.
#
#   scripts/fuzz.sh                 # 100 examples per operation
#   FUZZ_MAX_EXAMPLES=25 scripts/fuzz.sh
#   FUZZ_MAX_TIME=120 scripts/fuzz.sh   # also stop after about this many seconds
#
# The long-polls (GET /v1/runs/{id}/result, POST /v1/workers/{id}/poll) may take up to their
# timeout by design; the server under test holds them at most 0.5 s
# (KAGZI_LONG_POLL_MAX_MS) so the pass stays quick. One worker: hypothesis is not
# thread-safe on every Python (CPython 3.11 fails with "AST constructor recursion depth
# mismatch" under --workers 4).
#
# Needs PostgreSQL (see scripts/postgres.sh) and python3. schemathesis is installed into a
# virtualenv under ~/.cache/kagzi (override with KAGZI_FUZZ_VENV), never into the repository.
# The server runs on a free port, on a fresh database that is dropped afterwards, with an
# API key, so authentication is fuzzed too.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION="${SCHEMATHESIS_VERSION:-4.32.5}"
venv="${KAGZI_FUZZ_VENV:-$HOME/.cache/kagzi/schemathesis-$SCHEMATHESIS_VERSION}"
max_examples="${FUZZ_MAX_EXAMPLES:-100}"
admin_url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

if [ ! -x "$venv/bin/st" ]; then
  echo "--- installing schemathesis $SCHEMATHESIS_VERSION into $venv"
  python3 -m venv "$venv"
  if ! "$venv/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"; then
    echo "error: could not install schemathesis from PyPI; the fuzz pass cannot run" >&2
    rm -rf "$venv"
    exit 1
  fi
fi

scripts/postgres.sh
cargo build --quiet -p kagzi-server

db="kagzi_fuzz_$$"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
key="fuzz-key-$$"
log=$(mktemp)
psql "$admin_url" -q -c "create database $db" >/dev/null
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  psql "$admin_url" -q -c "drop database if exists $db with (force)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

db_url="${admin_url%/*}/$db"
KAGZI_DB_URL="$db_url" KAGZI_SERVER_HOST=127.0.0.1 KAGZI_SERVER_PORT="$port" \
  KAGZI_API_KEY="$key" KAGZI_LONG_POLL_MAX_MS=500 RUST_LOG="${RUST_LOG:-warn}" \
  target/debug/kagzi-server >"$log" 2>&1 &
server_pid=$!

for _ in $(seq 1 100); do
  if curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; then
    break
  fi
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "error: kagzi-server exited; its log:" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.1
done

# No generated string holds U+0000: PostgreSQL cannot store it, so the API refuses it with a
# 422 by design wherever a payload may hold any JSON value (tests/api.rs checks that), and
# a schema cannot say "no U+0000 anywhere in this value".
st_run() {
  "$venv/bin/st" run openapi/openapi.json \
    --url "http://127.0.0.1:$port" \
    --header "Authorization: Bearer $key" \
    --checks all \
    --max-examples "$max_examples" \
    --max-response-time 10 \
    --request-timeout 30 \
    --workers 1 \
    ${FUZZ_MAX_TIME:+--max-time "$FUZZ_MAX_TIME"} \
    --seed 1 \
    --generation-allow-x00 false \
    --no-color \
    "$@"
}

# Some schema-valid requests are refused with a 422 that says what is wrong, and for these
# operations every check but "a schema-valid request is accepted" applies:
# - a cron expression or time zone can be well-formed by the schema yet mean nothing (the
#   two schedule operations that take one);
# - a batch carries many arbitrary JSON payloads, and a payload with U+0000 in a string
#   (which PostgreSQL cannot store) refuses the batch, naming the item, as its own route
#   refuses it; with dozens of generated payloads per batch, schemathesis makes one nearly
#   every time;
# - a bulk cancel or retry must name at least one filter field, so that no call touches every
#   run by default, which a schema of optional fields cannot say.
lenient_ops=(create_schedule update_schedule report_batch start_runs cancel_runs retry_runs)
include=() exclude=()
for op in "${lenient_ops[@]}"; do
  include+=(--include-operation-id "$op")
  exclude+=(--exclude-operation-id "$op")
done
echo "--- schemathesis $SCHEMATHESIS_VERSION against http://127.0.0.1:$port ($max_examples examples per operation)"
status=0
st_run "${exclude[@]}" || status=$?
echo "--- schemathesis: schedules (cron expressions) and batches (many payloads)"
st_run "${include[@]}" --exclude-checks positive_data_acceptance || status=$?

if grep -qiE 'panicked|request failed|ERROR' "$log"; then
  echo "--- the server logged errors:" >&2
  grep -iE 'panicked|request failed|ERROR' "$log" | head -50 >&2
  status=1
fi
exit "$status"
