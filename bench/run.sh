#!/usr/bin/env bash
# Benchmark run: our figures beside the machine's limits, measured in the same run.
#
#   bench/run.sh             MOVIES=100000 movies, DURATION=20 s per measurement, CONNECTIONS=64
#   SMOKE=1 bench/run.sh     50 movies, 2 s per measurement: checks that everything runs
#   SMOKE=1 BENCH_PROFILE=dev bench/run.sh   the same with the debug build (what CI runs)
#
# Makes a scratch database (moviestore_bench, dropped and created), seeds it, starts
# `moviestore serve` without rate or concurrency limits, measures the limits (pgbench appends of
# event-shaped rows one per transaction, pgbench index lookups, redis-benchmark GET, a bare axum
# server doing one Redis GET under the same load generator), runs the scenarios, and prints one
# Markdown table of figures, limits and ratios. Exits 1 when any scenario saw an unexpected answer.
# The browse scenario also runs in an open loop at BROWSE_RATE (500) requests/s, a rate the
# machine sustains, for search and category p99 without saturated cores.
# Other knobs: ACCOUNT_CONNECTIONS (8; password hashing makes account calls CPU-bound),
# BENCH_DATABASE_BASE (postgres://postgres@127.0.0.1:5432), BENCH_DATABASE (moviestore_bench),
# BENCH_REDIS_PREFIX (moviestore-bench:), REDIS_HOST/REDIS_PORT (127.0.0.1/6379), REBUILD (0 skips
# the rebuild benchmark), REBUILD_MOVIES (111111: 1,000,009 events; 1000 when SMOKE), HISTORY_CYCLES
# (5000 rent → return cycles build the long-history movie: 10,000 events) and HISTORY_SAMPLES (1000
# measured cycles on it and as many on a fresh movie), RENTAL_HISTORY_SECS (15; 1 with SMOKE) of
# rent → return → pay cycles that give the seeded store a rental history before any measurement,
# DEADLINE_TIMERS (10000; 200 with SMOKE) timers falling due at once, fired by two schedulers, and
# DEADLINES (0 skips that step), MAIL_EMAILS (10000; 100 with SMOKE) emails queued and drained to a
# local SMTP sink by MAIL_SENDERS (1, then 2) senders, and MAIL (0 skips that step),
# HOLD_CONNECTIONS (1000, 200 with SMOKE): idle keep-alive connections held open while serve's
# memory is read (needs a file-descriptor limit above that: `ulimit -n`, raised here up to the hard
# limit when too low), WRK_ROUNDS (4): rounds of wrk on the bare server, then the cached details,
# sharing the measurement's window.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${SMOKE:-}" ]; then
  movies=${MOVIES:-50}
  secs=${DURATION:-2}
  redis_requests=20000
  history_cycles=${HISTORY_CYCLES:-25}
  history_samples=${HISTORY_SAMPLES:-10}
  rental_history_secs=${RENTAL_HISTORY_SECS:-1}
  rebuild_movies=${REBUILD_MOVIES:-1000}
  deadline_timers=${DEADLINE_TIMERS:-200}
  deadline_lead=${DEADLINE_LEAD_SECS:-3}
  mail_emails=${MAIL_EMAILS:-100}
else
  movies=${MOVIES:-100000}
  secs=${DURATION:-20}
  redis_requests=500000
  history_cycles=${HISTORY_CYCLES:-5000}
  history_samples=${HISTORY_SAMPLES:-1000}
  rental_history_secs=${RENTAL_HISTORY_SECS:-15}
  rebuild_movies=${REBUILD_MOVIES:-111111}
  deadline_timers=${DEADLINE_TIMERS:-10000}
  deadline_lead=${DEADLINE_LEAD_SECS:-30}
  mail_emails=${MAIL_EMAILS:-10000}
fi
conns=${CONNECTIONS:-64}
# BENCH_PROFILE=dev runs unoptimised binaries (CI's smoke run reuses the test build); figures
# are only meaningful with the default, release.
profile=${BENCH_PROFILE:-release}
export BENCH_PROFILE=$profile
account_conns=${ACCOUNT_CONNECTIONS:-8}
browse_rate=${BROWSE_RATE:-500}
base=${BENCH_DATABASE_BASE:-postgres://postgres@127.0.0.1:5432}
redis_host=${REDIS_HOST:-127.0.0.1}
redis_port=${REDIS_PORT:-6379}
db=${BENCH_DATABASE:-moviestore_bench}
if [ -n "${SMOKE:-}" ]; then hold_conns=${HOLD_CONNECTIONS:-200}; else hold_conns=${HOLD_CONNECTIONS:-1000}; fi
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((hold_conns + 256)) ]; then
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  [ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $((hold_conns + 256)) ] ||
    { echo "ulimit -n is $(ulimit -n): too low to hold $hold_conns connections" >&2; exit 1; }
fi
prefix=${BENCH_REDIS_PREFIX:-moviestore-bench:}

export DATABASE_URL="$base/$db"
export REDIS_URL="redis://$redis_host:$redis_port"
export RUST_LOG=warn
export PGOPTIONS="-c client_min_messages=warning"
export MOVIESTORE_ADDR=127.0.0.1:0
export MOVIESTORE_RATE_LIMIT_PER_SEC=0
export MOVIESTORE_MAX_CONCURRENT_REQUESTS=0
export MOVIESTORE_REDIS_PREFIX=$prefix
export MOVIESTORE_BENCH_ADMIN_USER=bench-admin
export MOVIESTORE_BENCH_ADMIN_PASSWORD=bench-admin-password
export MOVIESTORE_ADMIN="$MOVIESTORE_BENCH_ADMIN_USER:$MOVIESTORE_BENCH_ADMIN_PASSWORD"

out=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  redis-cli -h "$redis_host" -p "$redis_port" --scan --pattern "$prefix*" |
    xargs -r redis-cli -h "$redis_host" -p "$redis_port" del >/dev/null
  rm -rf "$out"
}
trap cleanup EXIT

log() { printf '==> %s\n' "$*" >&2; }

# Starts a server writing to $out/$1.log; sets $url from its `listening on` line.
start() {
  local name=$1
  shift
  "$@" >"$out/$name.log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 1 100); do
    url=$(grep -o 'listening on http://[0-9.:]*' "$out/$name.log" | head -n 1 | sed 's/listening on //' || true)
    [ -n "$url" ] && return 0
    sleep 0.1
  done
  echo "$name did not start:" >&2
  cat "$out/$name.log" >&2
  exit 1
}

# field FILE ROW COLUMN: a value from a loadgen --tsv file.
field() {
  awk -F'\t' -v row="$2" -v col="$3" '
    NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
    $1 == row { print $c[col]; found = 1 }
    END { if (!found) print "" }' "$1"
}
# cpu_ticks: CPU time (clock ticks) used so far by PostgreSQL's processes, by serve, by Redis, and
# the machine's busy and total time, as one line: postgres serve redis busy total.
cpu_ticks() {
  local pg=0 srv=0 rds=0 line comm rest
  for stat in /proc/[0-9]*/stat; do
    { read -r line <"$stat"; } 2>/dev/null || continue  # the process may have exited
    comm=${line#*(}; comm=${comm%%)*}
    rest=${line##*) }
    # shellcheck disable=SC2086
    set -- $rest
    case $comm in
      postgres) pg=$((pg + ${12} + ${13})) ;;
      moviestore) srv=$((srv + ${12} + ${13})) ;;
      redis-server) rds=$((rds + ${12} + ${13})) ;;
    esac
  done
  awk -v pg=$pg -v srv=$srv -v rds=$rds '/^cpu / {
    busy = $2 + $3 + $4 + $7 + $8 + $9; print pg, srv, rds, busy, busy + $5 + $6; exit }' /proc/stat
}
# cpu_split BEFORE AFTER: the shares of the machine's time (both cores) over a window.
cpu_split() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    split(a, x, " "); split(b, y, " "); t = y[5] - x[5]; if (t <= 0) { print "-"; exit }
    pg = (y[1] - x[1]) / t * 100; srv = (y[2] - x[2]) / t * 100; rds = (y[3] - x[3]) / t * 100
    busy = (y[4] - x[4]) / t * 100
    printf "PostgreSQL %.0f%%, serve %.0f%%, Redis %.0f%%, load generator and the rest %.0f%%, idle %.0f%%",
      pg, srv, rds, busy - pg - srv - rds, 100 - busy }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }'; }
num() { awk -v a="$1" 'BEGIN { if (a == "") print "-"; else printf "%.0f", a }'; }
ms() { awk -v a="$1" 'BEGIN { if (a == "") print "-"; else printf "%.2f ms", a }'; }

log "building ($profile)"
if [ "$profile" = release ]; then
  cargo build --release -q -p moviestore -p moviestore-bench
  bins=target/release
else
  cargo build -q -p moviestore -p moviestore-bench
  bins=target/debug
fi
bin=$bins/moviestore
loadgen=$bins/loadgen

log "scratch database $db, Redis prefix $prefix"
psql -q "$base/postgres" -c "drop database if exists $db" -c "create database $db"
redis-cli -h "$redis_host" -p "$redis_port" --scan --pattern "$prefix*" |
  xargs -r redis-cli -h "$redis_host" -p "$redis_port" del >/dev/null
$bin migrate >/dev/null

start serve $bin serve
api=$url
serve_pid=${pids[-1]}
log "serve at $api; seeding $movies movies"
seed_start=$(date +%s.%N)
$bin seed --movies "$movies" 2>&1 | tail -n 1 >&2
admin=$(curl -sf "$api/api/v1/auth/login" -H 'content-type: application/json' \
  -d "{\"username\":\"$MOVIESTORE_BENCH_ADMIN_USER\",\"password\":\"$MOVIESTORE_BENCH_ADMIN_PASSWORD\"}" | jq -r .token)
# Waits until every projection has applied every committed event.
caught_up() {
  for _ in $(seq 1 600); do
    lag=$(curl -sf "$api/api/v1/admin/projections" -H "authorization: Bearer $admin" | jq '[.items[].lag_events] | max')
    [ "$lag" = "0" ] && return 0
    sleep 0.5
  done
  echo "projections did not catch up (lag $lag events)" >&2
  exit 1
}
caught_up
# A rental history, as a video club with this catalogue has: rent → return → pay cycles on the
# seeded movies, unmeasured. Without it the rental tables hold the seed's 5 demo rentals when the
# statistics are gathered, the connections plan for tables of 5 rows, and those plans (a
# sequential scan of the rental lookup for every return and payment, 0.9 ms a call once the
# window had added 24,000 rentals) stay for the whole 20 s window while the tables grow a
# thousandfold: measured on 100,000 movies, 1,832 commands/s against 4,086/s once the
# connections planned with statistics of the grown tables.
failed=()
log "rental history: $rental_history_secs s of rent → return → pay cycles, unmeasured"
$loadgen --base "$api" --scenario rent --connections "$conns" --duration "$rental_history_secs" \
  --tsv "$out/rental-history.tsv" || failed+=(rental-history)
caught_up
# Statistics for the planner, gathered once seeded and again before each measurement, as
# PostgreSQL's autovacuum would as the tables grow (it re-analyzes a table once a tenth of it has
# changed, and that replaces the plans the connections keep). It may be off (it is on some CI
# machines): then every table keeps the statistics of an empty one and each connection the plans
# it made while the tables were nearly empty (measured: a read model's batch load at 100,000 movies
# took 3.7-5.4 ms instead of 0.1 ms, and lag p99 at half load rose to 73-133 ms); gathered only
# once, after seeding, they describe a store with 5 rentals for the rest of the run.
# Autovacuum also vacuums: without it the rows that updates and deletes leave behind pile up from
# one scenario to the next (41,850 dead timer rows behind 232 live ones after five windows, each
# return's timer delete taking 0.78 ms), so `settle` vacuums as well.
settle() { psql -q "$DATABASE_URL" -c "vacuum analyze"; }
settle
events=$(psql -tA "$DATABASE_URL" -c "select count(*) from events")
log "seeded and projected $events events in $(awk -v a="$seed_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"

# hold prints: connections, VmRSS KiB, VmHWM KiB, threads (of serve, read from /proc/PID/status).
log "serve memory at $hold_conns held keep-alive connections, after seeding"
mem_seeded=$($bins/hold --base "$api" --connections "$hold_conns" --pid "$serve_pid")

log "limit: pgbench appends, $conns clients, $secs s"
psql -q "$DATABASE_URL" -c "drop table if exists bench_append" \
  -c "create table bench_append (like events including defaults including identity including indexes)"
pgbench -n -c "$conns" -j 2 -T "$secs" -f bench/append.sql "$DATABASE_URL" >"$out/append.txt" 2>&1
append_tps=$(awk '/^tps = / { print $3 }' "$out/append.txt")
rows=$(psql -tA "$DATABASE_URL" -c "select count(*) from bench_append")

log "limit: pgbench index lookups, $conns clients, $secs s"
pgbench -n -c "$conns" -j 2 -T "$secs" -D rows="$rows" -f bench/select.sql "$DATABASE_URL" >"$out/select.txt" 2>&1
select_tps=$(awk '/^tps = / { print $3 }' "$out/select.txt")
psql -q "$DATABASE_URL" -c "drop table bench_append"

log "limit: redis-benchmark GET, $conns clients, $redis_requests requests"
redis_rps=$(redis-benchmark -h "$redis_host" -p "$redis_port" -t get -c "$conns" -n "$redis_requests" -q |
  tr '\r' '\n' | awk '/^GET: [0-9]/ { print $2 }' | tail -n 1)

log "limit: bare axum + Redis GET under loadgen, $conns connections, $secs s"
start bare $bins/bare --addr 127.0.0.1:0 --redis "$REDIS_URL" --key "${prefix}bare"
bare_pid=${pids[-1]}
$loadgen --base "$url" --scenario bare --connections "$conns" --duration "$secs" --tsv "$out/bare.tsv" ||
  failed+=(bare)

# wrk, a C load generator, drives the bare server and the cached details too: loadgen's own CPU
# is part of its figures, and wrk's far less so. wrk_run NAME URL [HEADER [SECONDS]]: writes
# $out/NAME.wrk; with $out/NAME.paths present, each request takes the next of its paths.
wrk_run() {
  local name=$1 target=$2 header=${3:-x-bench: wrk} duration=${4:-$secs} script=()
  if [ -f "$out/$name.paths" ]; then
    cat >"$out/$name.lua" <<LUA
local paths = {}
for line in io.lines("$out/$name.paths") do paths[#paths + 1] = line end
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
LUA
    script=(-s "$out/$name.lua")
  fi
  log "wrk: $name, $conns connections, $duration s"
  wrk -t 2 -c "$conns" -d "${duration}s" --latency -H "$header" "${script[@]}" "$target" >"$out/$name.wrk" 2>&1 ||
    failed+=("wrk-$name")
  # Every answer must be a 200 and no socket may fail.
  if grep -qE 'Non-2xx|Socket errors' "$out/$name.wrk"; then
    cat "$out/$name.wrk" >&2
    failed+=("wrk-$name")
  fi
}
# wrk_field NAME rps|p50|p99: requests/s, or a latency percentile in ms.
wrk_field() {
  awk -v want="$2" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    want == "rps" && /^Requests\/sec:/ { print $2 }
    want == "p50" && $1 == "50%" { printf "%.2f\n", ms($2) }
    want == "p99" && $1 == "99%" { printf "%.2f\n", ms($2) }' "$out/$1.wrk"
}
# wrk_rounds NAME rps|p50|p99: over the rounds NAME-1 .. NAME-$wrk_count (see below), the mean
# rate or the highest percentile; empty when a round has no figure.
wrk_rounds() {
  local round values=""
  for round in $(seq 1 "$wrk_count"); do values="$values $(wrk_field "$1-$round" "$2")"; done
  echo "$values" | awk -v want="$2" -v n="$wrk_count" '{
    if (NF < n) { print ""; exit }
    for (i = 1; i <= NF; i++) { sum += $i; if ($i > top) top = $i }
    if (want == "rps") printf "%.0f\n", sum / NF; else printf "%.2f\n", top }'
}
# wrk_pairs: each round's details and bare rates, "d vs b, ...", for the figures table.
wrk_pairs() {
  local round pairs=""
  for round in $(seq 1 "$wrk_count"); do
    pairs="$pairs${pairs:+, }$(num "$(wrk_field "details-$round" rps)") vs $(num "$(wrk_field "bare-$round" rps)")"
  done
  echo "$pairs"
}
bare_url=$url

# scenario NAME CONNECTIONS: one closed-loop measurement (statistics gathered first, see settle).
scenario() {
  local name=$1 connections=$2
  log "scenario $name, $connections connections, $secs s"
  $loadgen --base "$api" --scenario "$name" --connections "$connections" --duration "$secs" \
    --tsv "$out/$name.tsv" || failed+=("$name")
}
settle
cpu_before=$(cpu_ticks)
scenario details "$conns"
cpu_details=$(cpu_split "$cpu_before" "$(cpu_ticks)")
# The same kind of target for wrk: the details of 100 movies, cached first.
curl -sf "$api/api/v1/movies?limit=100&available=any" -H "authorization: Bearer $admin" |
  jq -r '.items[].id | "/api/v1/movies/" + .' >"$out/details.paths"
while read -r path; do curl -sf -o /dev/null "$api$path" -H "authorization: Bearer $admin"; done <"$out/details.paths"
# The machine's speed drifts from minute to minute (the bare server's own rate under wrk differed
# by 30 % between two runs of one night), so wrk drives the bare server and the cached details in
# turn, in WRK_ROUNDS rounds (4 by default) sharing the window, and the two are compared by their
# mean rates: the shorter the rounds, the less a drift of the machine's speed between a bare round
# and its details round moves the ratio (two rounds of 10 s gave 0.77 and 0.58 in one run).
wrk_count=${WRK_ROUNDS:-4}
wrk_secs=$(((secs + wrk_count - 1) / wrk_count))
for round in $(seq 1 "$wrk_count"); do
  wrk_run "bare-$round" "$bare_url/" "" "$wrk_secs"
  cp "$out/details.paths" "$out/details-$round.paths"
  wrk_run "details-$round" "$api/" "authorization: Bearer $admin" "$wrk_secs"
done
kill "$bare_pid"
settle
scenario browse "$conns"
log "scenario browse, open loop at $browse_rate req/s, at most $conns connections, $secs s"
settle
$loadgen --base "$api" --scenario browse --connections "$conns" --duration "$secs" --rate "$browse_rate" \
  --tsv "$out/browse-rate.tsv" || failed+=(browse-rate)
settle
scenario rent "$conns"
settle
scenario accounts "$account_conns"
settle
scenario mixed "$conns"

# Commands that do not wait for the charge. Append transactions in the window are counted in the
# log (every distinct transaction that recorded an event in it: HTTP commands and the payments
# process manager's); the projections' commit lag comes from /metrics before and after, once they
# have caught up with everything the scenario appended.
caught_up
settle
curl -sf "$api/metrics" >"$out/metrics-before.txt"
window_start=$(psql -tA "$DATABASE_URL" -c "select clock_timestamp()")
cpu_before=$(cpu_ticks)
scenario commands "$conns"
cpu_commands=$(cpu_split "$cpu_before" "$(cpu_ticks)")
window_end=$(psql -tA "$DATABASE_URL" -c "select clock_timestamp()")
caught_up
curl -sf "$api/metrics" >"$out/metrics-after.txt"
$bins/lag "$out/metrics-before.txt" "$out/metrics-after.txt" >"$out/lag.tsv"
read -r append_txs window_secs < <(psql -tA -F ' ' "$DATABASE_URL" -c "
  select count(distinct transaction_id), extract(epoch from '$window_end'::timestamptz - '$window_start'::timestamptz)
    from events where recorded_at >= '$window_start' and recorded_at < '$window_end'")
append_txps=$(awk -v n="$append_txs" -v s="$window_secs" 'BEGIN { if (s > 0) printf "%.1f", n / s }')

# The same cycles in an open loop at half the closed loop's rate (cores not saturated): command
# latency from each step's due time, and the projections' commit lag in that window; then rent →
# return → pay cycles at half their closed-loop rate, for the time from a return's answer to an
# accepted payment.
half() { awk -v r="$1" 'BEGIN { r = r / 2; if (r < 1) r = 1; printf "%.1f", r }'; }
commands_rate=$(half "$(field "$out/commands.tsv" count:cycles per_sec)")
rent_rate=$(half "$(field "$out/rent.tsv" count:cycles per_sec)")
settle
curl -sf "$api/metrics" >"$out/metrics-rate-before.txt"
log "scenario commands, open loop at $commands_rate cycles/s, at most $conns connections, $secs s"
$loadgen --base "$api" --scenario commands --connections "$conns" --duration "$secs" --rate "$commands_rate" \
  --tsv "$out/commands-rate.tsv" || failed+=(commands-rate)
caught_up
curl -sf "$api/metrics" >"$out/metrics-rate-after.txt"
$bins/lag "$out/metrics-rate-before.txt" "$out/metrics-rate-after.txt" >"$out/lag-rate.tsv"
log "scenario rent, open loop at $rent_rate cycles/s, at most $conns connections, $secs s"
settle
rent_rate_start=$(psql -tA "$DATABASE_URL" -c "select clock_timestamp()")
$loadgen --base "$api" --scenario rent --connections "$conns" --duration "$secs" --rate "$rent_rate" \
  --tsv "$out/rent-rate.tsv" || failed+=(rent-rate)
caught_up
# The time from each return to its charge, read from the log: both are the `recorded_at` of the
# events (taken inside their append transactions, just before each commits), so it counts the
# process manager's reaction and its append, and none of the client's polling for the charge.
read -r charge_p50 charge_p99 charges < <(psql -tA -F ' ' "$DATABASE_URL" -c "
  with returned as (
         select (payload->>'rental_id') as rental_id, recorded_at from events
          where event_type = 'MovieReturned' and recorded_at >= '$rent_rate_start'),
       charged as (
         select aggregate_id as rental_id, recorded_at from events
          where aggregate_type = 'rental' and event_type = 'ChargeAssessed' and recorded_at >= '$rent_rate_start'),
       delays as (
         select extract(epoch from c.recorded_at - r.recorded_at) * 1000 as ms
           from returned r join charged c using (rental_id))
  select round(percentile_cont(0.5) within group (order by ms)::numeric, 2),
         round(percentile_cont(0.99) within group (order by ms)::numeric, 2), count(*) from delays")

log "scenario history: $history_cycles rent → return cycles on one movie, then $history_samples on it and on a fresh one"
$loadgen --base "$api" --scenario history --connections 1 --history-cycles "$history_cycles" \
  --samples "$history_samples" --tsv "$out/history.tsv" || failed+=(history)
rss_kib=$(ps -o rss= -p "$serve_pid" | tr -d ' ')
log "serve memory at $hold_conns held keep-alive connections, after the scenarios"
mem_after=$($bins/hold --base "$api" --connections "$hold_conns" --pid "$serve_pid")
mb() { awk -v k="$(echo "$1" | cut -f "$2")" 'BEGIN { if (k == "") print "-"; else printf "%.1f MB", k / 1024 }'; }
# lag_ms PROJECTION COLUMN [FILE]: p50_ms or p99_ms of a projection's commit lag in the commands
# scenario (or in the window FILE was measured over).
lag_ms() { awk -F'\t' -v p="$1" -v col="$2" 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next } $1 == p { print $c[col] }' "${3:-$out/lag.tsv}"; }
lag_row() { echo "| commit → $1 commit lag p50 / p99 (commands) | $(ms "$(lag_ms "$1" p50_ms)") / $(ms "$(lag_ms "$1" p99_ms)") | | | |"; }
lag_rate_row() { echo "| commit → $1 commit lag p50 / p99 (commands, open loop at $commands_rate cycles/s) | $(ms "$(lag_ms "$1" p50_ms "$out/lag-rate.tsv")") / $(ms "$(lag_ms "$1" p99_ms "$out/lag-rate.tsv")") | | | p99 < 50 ms |"; }
h() { field "$out/history.tsv" "$1" "$2"; }

commands=$(field "$out/rent.tsv" count:commands per_sec)
rent_long='POST /api/v1/movies/{id}/rent (long history)'
rent_fresh='POST /api/v1/movies/{id}/rent (fresh movie)'
return_long='POST /api/v1/rentals/{id}/return (long history)'
return_fresh='POST /api/v1/rentals/{id}/return (fresh movie)'
details_rps=$(field "$out/details.tsv" total per_sec)
bare_rps=$(field "$out/bare.tsv" total per_sec)
late=$(field "$out/browse-rate.tsv" 'count:started late' requests)
late=${late:-0}

echo
echo "## Figures ($movies generated movies, $events events after seeding, $conns connections, $secs s each)"
echo
echo "| figure | ours | limit | ratio | goal |"
echo "| --- | ---: | ---: | ---: | --- |"
echo "| commands/s in rent → return → pay cycles vs raw one-row appends/s (pgbench) | $(num "$commands") | $(num "$append_tps") | $(ratio "$commands" "$append_tps") | ≥ 0.6 |"
echo "| cached details req/s vs bare axum + Redis GET req/s | $(num "$details_rps") | $(num "$bare_rps") | $(ratio "$details_rps" "$bare_rps") | ≥ 0.6 |"
echo "| cached details p99 (bare: $(ms "$(field "$out/bare.tsv" total p99_ms)")) | $(ms "$(field "$out/details.tsv" total p99_ms)") | | | < 5 ms |"
echo "| cached details req/s vs bare axum + Redis GET req/s, both driven by wrk in turn (rounds: $(wrk_pairs)) | $(num "$(wrk_rounds details rps)") | $(num "$(wrk_rounds bare rps)") | $(ratio "$(wrk_rounds details rps)" "$(wrk_rounds bare rps)") | ≥ 0.8 |"
echo "| cached details p50 / p99 with wrk (bare: $(ms "$(wrk_rounds bare p50)") / $(ms "$(wrk_rounds bare p99)")) | $(ms "$(wrk_rounds details p50)") / $(ms "$(wrk_rounds details p99)") | | | |"
echo "| the load generators' own ceiling: bare server req/s under loadgen vs under wrk | $(num "$bare_rps") | $(num "$(wrk_rounds bare rps)") | $(ratio "$bare_rps" "$(wrk_rounds bare rps)") | |"
echo "| search p99 (browse) | $(ms "$(field "$out/browse.tsv" 'GET /api/v1/movies?q' p99_ms)") | | | < 20 ms |"
echo "| category list p99 (browse) | $(ms "$(field "$out/browse.tsv" 'GET /api/v1/movies?category' p99_ms)") | | | < 20 ms |"
echo "| append transactions/s in the commands scenario (HTTP commands and the process manager's) vs raw one-row appends/s (pgbench) | $(num "$append_txps") | $(num "$append_tps") | $(ratio "$append_txps" "$append_tps") | ≥ 0.6 |"
http_commands=$(field "$out/commands.tsv" count:commands per_sec)
echo "| HTTP commands/s (commands scenario) vs raw one-row appends/s (pgbench) | $(num "$http_commands") | $(num "$append_tps") | $(ratio "$http_commands" "$append_tps") | ≥ 1.0 |"
echo "| rent → return cycles/s (commands) | $(num "$(field "$out/commands.tsv" count:cycles per_sec)") | | | |"
for p in catalogue rentals analytics payments; do lag_row "$p"; done
rate_p50=$(field "$out/commands-rate.tsv" total p50_ms)
rate_p99=$(field "$out/commands-rate.tsv" total p99_ms)
echo "| HTTP command p50 / p99, open loop at half the closed loop's cycles ($commands_rate cycles/s, $(num "$(field "$out/commands-rate.tsv" total per_sec)") commands/s), and p99 / p50 | $(ms "$rate_p50") / $(ms "$rate_p99") | | $(ratio "$rate_p99" "$rate_p50") | ≤ 3 |"
rate_late=$(field "$out/commands-rate.tsv" 'count:started late' requests)
echo "| cycles started late (open loop at $commands_rate cycles/s) | $(num "${rate_late:-0}") | | | |"
for p in catalogue rentals analytics payments notifications; do lag_rate_row "$p"; done
echo "| return recorded → charge recorded, from the log, p50 / p99 ($charges rentals; rent, open loop at $rent_rate cycles/s) | $(ms "$charge_p50") / $(ms "$charge_p99") | | | p99 < 50 ms |"
echo "| return answered → payment accepted, p50 / p99 (rent, open loop at $rent_rate cycles/s) | $(ms "$(field "$out/rent-rate.tsv" '(return answered -> paid)' p50_ms)") / $(ms "$(field "$out/rent-rate.tsv" '(return answered -> paid)' p99_ms)") | | | p99 < 50 ms |"
echo "| rent p50 on a $(h 'count:history events' requests)-event movie vs a fresh one | $(ms "$(h "$rent_long" p50_ms)") | $(ms "$(h "$rent_fresh" p50_ms)") | $(ratio "$(h "$rent_long" p50_ms)" "$(h "$rent_fresh" p50_ms)") | ≤ 1.5 |"
echo "| rent p99 on the long-history movie vs a fresh one | $(ms "$(h "$rent_long" p99_ms)") | $(ms "$(h "$rent_fresh" p99_ms)") | $(ratio "$(h "$rent_long" p99_ms)" "$(h "$rent_fresh" p99_ms)") | ≤ 1.5 |"
echo "| return p50 on the long-history movie vs a fresh one | $(ms "$(h "$return_long" p50_ms)") | $(ms "$(h "$return_fresh" p50_ms)") | $(ratio "$(h "$return_long" p50_ms)" "$(h "$return_fresh" p50_ms)") | ≤ 1.5 |"
echo "| return p99 on the long-history movie vs a fresh one | $(ms "$(h "$return_long" p99_ms)") | $(ms "$(h "$return_fresh" p99_ms)") | $(ratio "$(h "$return_long" p99_ms)" "$(h "$return_fresh" p99_ms)") | ≤ 1.5 |"
echo "| search p99 (browse, open loop at $browse_rate req/s) | $(ms "$(field "$out/browse-rate.tsv" 'GET /api/v1/movies?q' p99_ms)") | | | < 20 ms |"
echo "| category list p99 (browse, open loop at $browse_rate req/s) | $(ms "$(field "$out/browse-rate.tsv" 'GET /api/v1/movies?category' p99_ms)") | | | < 20 ms |"
echo "| browse achieved req/s / started late (open loop at $browse_rate req/s) | $(num "$(field "$out/browse-rate.tsv" total per_sec)") / $late | | | |"
echo "| rent → return → pay cycles/s | $(num "$(field "$out/rent.tsv" count:cycles per_sec)") | | | |"
echo "| return answered → payment accepted, p50 / p99 (rent) | $(ms "$(field "$out/rent.tsv" '(return answered -> paid)' p50_ms)") / $(ms "$(field "$out/rent.tsv" '(return answered -> paid)' p99_ms)") | | | |"
echo "| cache hits / details reads (details) | $(field "$out/details.tsv" 'count:cache hits' requests) / $(field "$out/details.tsv" total requests) | | | |"
echo "| CPU during details (share of both cores) | $cpu_details | | | |"
echo "| CPU during commands (share of both cores) | $cpu_commands | | | |"
echo "| serve RSS after the run | $(awk -v k="$rss_kib" 'BEGIN { printf "%.1f MB", k / 1024 }') | | | < 64 MB at 1k connections |"
echo "| serve RSS at $hold_conns held connections, after seeding ($(echo "$mem_seeded" | cut -f 4) threads) | $(mb "$mem_seeded" 2) | | | < 64 MB at 1k connections |"
echo "| serve RSS at $hold_conns held connections, after the scenarios ($(echo "$mem_after" | cut -f 4) threads) | $(mb "$mem_after" 2) | | | < 64 MB at 1k connections |"
echo "| serve peak RSS (VmHWM) after the scenarios | $(mb "$mem_after" 3) | | | |"
echo
echo "Limits: pgbench one-row appends $(num "$append_tps") tx/s; pgbench index lookups $(num "$select_tps") tx/s;"
echo "redis-benchmark GET $(num "$redis_rps") req/s; bare axum + Redis GET $(num "$bare_rps") req/s (all at $conns clients)."
echo
echo "## Scenarios"
echo
echo "| scenario | connections | requests | req/s | p50 ms | p99 ms | errors | expected retries |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for name in bare details browse rent accounts mixed commands; do
  f="$out/$name.tsv"
  [ -f "$f" ] || continue
  c=$conns
  [ "$name" = accounts ] && c=$account_conns
  echo "| $name | $c | $(field "$f" total requests) | $(num "$(field "$f" total per_sec)") | $(field "$f" total p50_ms) | $(field "$f" total p99_ms) | $(field "$f" total errors) | $(field "$f" total retries) |"
done
echo
echo "Per endpoint:"
for name in details browse browse-rate rent rent-rate accounts mixed commands commands-rate history; do
  f="$out/$name.tsv"
  [ -f "$f" ] || continue
  echo
  echo "$name:"
  echo
  echo "| endpoint | requests | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | retries |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  awk -F'\t' 'NR > 1 && $1 !~ /^(count:|elapsed)/ && $1 != "total" {
    printf "| %s | %s | %.0f | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9 }' "$f"
done

# The rebuild: its own scratch database with a synthetic log of rebuild_movies x 4 rent → return
# cycles (1,000,009 events by default), every read model rebuilt beside the raw read of that log.
# The serve process is stopped first so it does not share the cores.
kill "$serve_pid" 2>/dev/null || true
if [ "${REBUILD:-1}" != 0 ]; then
  log "rebuild: $rebuild_movies movies x 4 cycles"
  echo
  echo "## Rebuild"
  bench/rebuild.sh "$rebuild_movies" 4 || failed+=(rebuild)
fi

# Due-date timers: DEADLINE_TIMERS (10,000; 200 with SMOKE) rentals falling due at one instant
# in a scratch database of their own, fired by two schedulers; the delay from the due time to each
# RentalOverdue, p50 / p99 / max. DEADLINES=0 skips it.
if [ "${DEADLINES:-1}" != 0 ]; then
  deadline_db="${db}_deadlines"
  psql -q "$base/postgres" -c "drop database if exists $deadline_db" -c "create database $deadline_db"
  log "deadlines: $deadline_timers timers falling due at once"
  echo
  echo "## Due-date timers"
  echo
  $bins/deadlines --database-url "$base/$deadline_db" --timers "$deadline_timers" --schedulers 2 \
    --lead-secs "$deadline_lead" || failed+=(deadlines)
fi

# Email: MAIL_EMAILS (10,000; 100 with SMOKE) welcome emails queued in a scratch database, then
# drained to an SMTP sink on 127.0.0.1 by one sender, then (a fresh queue) by two, as that many
# processes would: the drain time and emails per second. MAIL=0 skips it.
if [ "${MAIL:-1}" != 0 ]; then
  mail_db="${db}_mail"
  echo
  echo "## Email"
  echo
  for senders in ${MAIL_SENDERS:-1 2}; do
    psql -q "$base/postgres" -c "drop database if exists $mail_db" -c "create database $mail_db"
    log "mail: $mail_emails emails drained by $senders sender(s)"
    $bins/mail --database-url "$base/$mail_db" --emails "$mail_emails" --senders "$senders" || failed+=(mail)
  done
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo
  echo "unexpected answers in: ${failed[*]}" >&2
  exit 1
fi
