#!/usr/bin/env bash
# Rebuild benchmark: fills a scratch database with a synthetic log of about 1M events, then
# rebuilds every read model and reports events/s beside the machine's raw rate of reading the
# same log in projection order (COPY of the same columns), measured in the same run.
#   bench/rebuild.sh [MOVIES] [CYCLES]     (default 111111 movies x 4 rent/return cycles = 1,000,009 events)
set -euo pipefail
cd "$(dirname "$0")/.."
movies=${1:-111111}
cycles=${2:-4}
base=${BENCH_DATABASE_BASE:-postgres://postgres@127.0.0.1:5432}
db=${BENCH_REBUILD_DATABASE:-moviestore_bench_rebuild}
export DATABASE_URL="$base/$db"
export RUST_LOG=error
export PGOPTIONS="-c client_min_messages=warning"
trap 'psql -q "$base/postgres" -c "drop database if exists $db" || true' EXIT

# BENCH_PROFILE=dev: the debug build (for a smoke run; figures need the default, release).
if [ "${BENCH_PROFILE:-release}" = release ]; then
  # The same packages as run.sh builds, so the binary is not rebuilt with other features.
  cargo build --release -q -p moviestore -p moviestore-bench
  bin=target/release/moviestore
else
  cargo build -q -p moviestore -p moviestore-bench
  bin=target/debug/moviestore
fi

psql -q "$base/postgres" -c "drop database if exists $db" -c "create database $db"
$bin migrate >/dev/null
echo "generating $movies movies x $cycles cycles ..."
psql -q "$DATABASE_URL" -v movies="$movies" -v cycles="$cycles" -f bench/generate_events.sql
events=$(psql -tA "$DATABASE_URL" -c "select count(*) from events")
# The generation leaves about a gigabyte of write-ahead log and dirty pages behind it; a checkpoint
# now writes them out, so neither measurement below pays for the generation's checkpoint (measured
# without it: the checkpoint PostgreSQL started for the generation's log ran during the rebuild).
psql -q "$DATABASE_URL" -c "checkpoint"

start=$(date +%s.%N)
psql -q "$DATABASE_URL" -c "copy (select position, transaction_id, event_id, aggregate_type, aggregate_id, sequence,
  event_type, event_version, payload, recorded_at from events order by transaction_id, position) to stdout" >/dev/null
raw_secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
raw_rate=$(awk -v n="$events" -v s="$raw_secs" 'BEGIN { print n / s }')

printf '\n| what | events | seconds | events/s | ratio to raw read |\n| --- | ---: | ---: | ---: | ---: |\n'
printf '| raw log read (COPY, projection order) | %d | %.2f | %.0f | 1.00 |\n' "$events" "$raw_secs" "$raw_rate"
# One line: "catalogue, rentals, analytics: rebuilt from N events in S s (R events/s)".
line=$($bin rebuild)
names=${line%%: rebuilt*}
n=$(sed -E 's/.*rebuilt from ([0-9]+) events.*/\1/' <<<"$line")
secs=$(sed -E 's/.* in ([0-9.]+) s .*/\1/' <<<"$line")
rate=$(awk -v n="$n" -v s="$secs" 'BEGIN { print n / s }')
printf '| rebuild every read model (%s), one read of the log | %d | %.2f | %.0f | %.2f |\n' \
  "$names" "$n" "$secs" "$rate" "$(awk -v r="$rate" -v w="$raw_rate" 'BEGIN { print r / w }')"
if $bin verify >/dev/null; then echo "verify: read models equal a replay of the log"; else echo "verify: DIFFERENCES"; exit 1; fi
