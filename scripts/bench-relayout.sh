#!/usr/bin/env bash
# Time and peak memory of `shardfeed relayout`, interleaved (A B A B):
#   A: one 2-shard state directory (a checkpoint of every user plus a
#      journal tail, built once by the journal benchmark:
#      JOURNAL_BENCH_STATE) -> a 2-instance cluster (2 shards each);
#   B: those 2 directories -> a 3-instance cluster (2 shards each).
# Each includes the read-back check of every directory written. Files are
# in the page cache (read once before each round). The machine's other
# load counts: compare only within one run, and say how loaded it was.
#
#   scripts/bench-relayout.sh [USERS [TAIL [ROUNDS]]]     (5000000 4000000 3)
set -euo pipefail
cd "$(dirname "$0")/.."
users=${1:-5000000}; tail=${2:-4000000}; rounds=${3:-3}
cargo build --release --quiet
bin=$PWD/target/release/shardfeed
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
JOURNAL_BENCH_STATE="$work/old" JOURNAL_BENCH_USERS=$users JOURNAL_BENCH_TAIL=$tail \
  cargo bench --quiet --bench journal
printf 'a 127.0.0.1:9000 2\nb 127.0.0.1:9010 2\n' >"$work/two.txt"
printf 'a 127.0.0.1:9000 2\nb 127.0.0.1:9010 2\nc 127.0.0.1:9020 2\n' >"$work/three.txt"
# `relayout ARGS`: "SECONDS s, PEAK_KB KB peak" on stdout; the command's
# last line (its summary) to $work/summary.
timed() {
  /usr/bin/time -f '%e s, %M KB peak' -o "$work/time" "$bin" relayout "$@" >"$work/summary"
  cat "$work/time"
}
echo "# $users users x 1 progress each + $tail journal records; $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
du -sh "$work/old" | sed 's/^/# old state: /'
for r in $(seq "$rounds"); do
  rm -rf "$work/r2" "$work/r3"
  cat "$work/old"/* >/dev/null
  a=$(timed --cluster "$work/two.txt" --from "$work/old" --out-dir "$work/r2")
  sa=$(tail -1 "$work/summary")
  cat "$work/r2"/*/* >/dev/null
  b=$(timed --cluster "$work/three.txt" --from "$work/r2/a" --from "$work/r2/b" --out-dir "$work/r3")
  sb=$(tail -1 "$work/summary")
  echo "round $r: 1 dir -> 2 instances ${a}; 2 dirs -> 3 instances ${b}"
  echo "  $sa"
  echo "  $sb"
done
du -sh "$work/r3"/* | sed 's/^/# new state: /'
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
