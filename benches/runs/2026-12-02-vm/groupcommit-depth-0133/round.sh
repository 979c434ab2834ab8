#!/bin/bash
# interleaved rounds: label:bin:env  (1 shard always unless SH set)
SH=${SH:-1}; ROUNDS=${ROUNDS:-3}; DUR=${DUR:-6s}
for r in $(seq $ROUNDS); do
 exec 9>/work/briefs/bench.lock; flock 9; echo "# round $r start $(date +%T) load $(cut -d" " -f1 /proc/loadavg)"
 for spec in "$@"; do
  IFS=: read label bin envk extra spin <<< "$spec"
  if [ "$extra" = "none" ]; then A=(); else A=(--state-dir {tmp} --fsync ${extra:-always}); fi
  out=$(env SHARDFEED_MAX_SYNCS_TMP=$envk ${spin:+SHARDFEED_SPIN_US_TMP=$spin} /tmp/gc/run1.sh $bin $SH $DUR "${A[@]}" 2>&1)
  rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  p99=$(echo "$out" | awk '/ 99%/{print $2}')
  p50=$(echo "$out" | awk '/ 50%/{print $2}')
  cpu=$(echo "$out" | awk '/cpu_us_per_req/{printf "%.1f", $2}')
  sl=$(echo "$out" | grep -o '"syncs": [0-9]*' | awk '{s+=$2} END{print s}')
  rq=$(echo "$out" | awk '/^requests/{print $2}')
  lat=$(echo "$out" | grep -o '"sync_latency_us": {[^}]*}' | head -1 | sed 's/"sync_latency_us": //; s/"count": [0-9]*, //; s/"max".*//')
  echo "round $r $label shards=$SH rps=$rps p50=$p50 p99=$p99 cpu_us=$cpu syncs=$sl req=$rq sync_lat=$lat"
 done
 flock -u 9; exec 9>&-
done
