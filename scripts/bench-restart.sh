#!/usr/bin/env bash
# Restart time with and without a state directory, interleaved (A B A B):
# seconds from exec to `listening on` for `serve --users N --shards 2`,
# without --state-dir and with a copy of a state directory that holds a
# checkpoint of every user plus a journal tail (built once by the journal
# benchmark: JOURNAL_BENCH_STATE). Prints one line per round and the
# replay time each shard reports. The machine's other load counts: run it
# quiet, and compare only within one run.
#
#   scripts/bench-restart.sh [USERS [TAIL [ROUNDS]]]     (5000000 4000000 3)
set -euo pipefail
cd "$(dirname "$0")/.."
users=${1:-5000000}; tail=${2:-4000000}; rounds=${3:-3}
cargo build --release --quiet
bin=target/release/shardfeed
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
JOURNAL_BENCH_STATE="$work/state" JOURNAL_BENCH_USERS=$users JOURNAL_BENCH_TAIL=$tail \
  cargo bench --quiet --bench journal
# Seconds until `listening on`; the server's /stats replay times go to $work/replay.
start() {
  local out="$work/out" t0 t1 pid addr
  rm -f "$out"
  t0=$(date +%s.%N)
  "$bin" serve --listen 127.0.0.1:0 --shards 2 --users "$users" "$@" >"$out" 2>"$work/err" &
  pid=$!
  until grep -q '^listening on' "$out" 2>/dev/null; do
    kill -0 $pid 2>/dev/null || { cat "$work/err" >&2; exit 1; }
    sleep 0.02
  done
  t1=$(date +%s.%N)
  addr=$(sed -n 's/^listening on //p' "$out")
  curl -s "http://$addr/stats" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(" ".join(str(s["stats"].get("journal", {}).get("replay_s", "-")) for s in d["shards"]))' >"$work/replay"
  kill -TERM $pid
  wait $pid || true
  echo "$t1 - $t0" | bc
}
echo "# $users users x 200 (synthetic), 2 shards; state: checkpoints + $tail journal records; $(nproc) CPUs"
for r in $(seq "$rounds"); do
  a=$(start)
  rm -rf "$work/run"; cp -a "$work/state" "$work/run"; cat "$work/run"/* >/dev/null
  b=$(start --state-dir "$work/run")
  echo "round $r: without state ${a} s, with state ${b} s (replay per shard: $(cat "$work/replay") s)"
done
