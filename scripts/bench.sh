#!/usr/bin/env bash
# Load run: a freshly started release shardfeed, wrk with random user ids.
#
#   scripts/bench.sh                 # like the reference: wrk -t5 -c200 -d30s --latency
#   scripts/bench.sh --quick         # wrk -t1 -c64 -d10s
#   scripts/bench.sh --shards 1 -c 100 -d 20s --users 5000000
#   scripts/bench.sh --quick --bin /tmp/old/shardfeed         # another build, not rebuilt
#   scripts/bench.sh --quick --server-arg --histogram-log --server-arg /tmp/l.hlog
#
# Prints wrk's output, then the server's CPU time per request (user + system
# of all its threads, from /proc) and its resident memory. The load generator
# runs on the same machine: on a small host it takes CPU from the server.
# Needs wrk (Debian: apt-get install wrk).
set -euo pipefail

threads=5 conns=200 duration=30s users=1000000 feed_len=200 shards="" cpus="" size=10
bin="" extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) threads=1 conns=64 duration=10s ;;
    -t) threads=$2; shift ;;
    -c) conns=$2; shift ;;
    -d) duration=$2; shift ;;
    --users) users=$2; shift ;;
    --feed-len) feed_len=$2; shift ;;
    --shards) shards=$2; shift ;;
    --cpus) cpus=$2; shift ;;
    --size) size=$2; shift ;;
    --bin) bin=$2; shift ;;
    --server-arg) extra+=("$2"); shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

command -v wrk >/dev/null || { echo "bench.sh: wrk is missing: apt-get install -y wrk" >&2; exit 1; }
cd "$(dirname "$0")/.."
if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin=./target/release/shardfeed
fi

args=(serve --listen 127.0.0.1:0 --users "$users" --feed-len "$feed_len")
[ -n "$shards" ] && args+=(--shards "$shards")
[ -n "$cpus" ] && args+=(--cpus "$cpus")
args+=("${extra[@]}")
out=$(mktemp)
"$bin" "${args[@]}" >"$out" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 600); do
  grep -q '^listening on' "$out" && break
  kill -0 $pid 2>/dev/null || { echo "bench.sh: the server did not start" >&2; exit 1; }
  sleep 0.1
done
addr=$(sed -n 's/^listening on //p' "$out")
[ -n "$addr" ] || { echo "bench.sh: no 'listening on' line after 60 s" >&2; exit 1; }

cpu_ticks() { awk '{s += $14 + $15} END {print s}' /proc/$pid/task/*/stat; }
before=$(cpu_ticks)
echo "# shardfeed $(git rev-parse --short HEAD 2>/dev/null) on $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
echo "# server: ${args[*]}"
echo "# load:   wrk -t$threads -c$conns -d$duration --latency (same machine)"
result=$(SHARDFEED_USERS=$users SHARDFEED_SIZE=$size \
  wrk -t"$threads" -c"$conns" -d"$duration" --latency -s scripts/random_users.lua "http://$addr")
echo "$result"
after=$(cpu_ticks)
requests=$(echo "$result" | awk '/requests in/ {print $1}')
hz=$(getconf CLK_TCK)
rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
awk -v t=$((after - before)) -v hz="$hz" -v n="$requests" -v rss="$rss" 'BEGIN {
  printf "server CPU per request: %.2f us (%d requests)\nserver RSS: %.0f MB\n", t / hz * 1e6 / n, n, rss / 1024 }'
