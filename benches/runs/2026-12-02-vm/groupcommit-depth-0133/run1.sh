#!/bin/bash
# usage: run1.sh BIN SHARDS DUR [extra args...]  -> prints wrk summary + journal stats
BIN=$1; SH=$2; DUR=$3; shift 3
D=$(mktemp -d /tmp/gc/state.XXXX)
PORTFILE=$(mktemp /tmp/gc/out.XXXX)
ARGS=(); for a in "$@"; do ARGS+=("${a//\{tmp\}/$D}"); done
$BIN serve --listen 127.0.0.1:0 --shards $SH --users 1000000 --feed-len 200 "${ARGS[@]}" > $PORTFILE 2>/tmp/gc/err.log &
PID=$!
for i in $(seq 100); do grep -q "listening on" $PORTFILE && break; sleep 0.1; done
ADDR=$(grep "listening on" $PORTFILE | awk '{print $NF}')
echo "pid $PID addr $ADDR"
T0=$(awk '{print $14+$15}' /proc/$PID/stat)
if [ -n "$PERF" ]; then perf record -g -o /tmp/gc/perf.data -p $PID -- sleep 6 >/dev/null 2>&1 & PP=$!; fi
if [ -n "$PSTAT" ]; then perf stat -e raw_syscalls:sys_enter,context-switches -p $PID -- sleep 6 2>/tmp/gc/pstat.txt & PP=$!; fi
wrk -t1 -c64 -d$DUR --latency -s /work/main/scripts/random_users.lua http://$ADDR > /tmp/gc/wrk.txt
T1=$(awk '{print $14+$15}' /proc/$PID/stat)
[ -n "$PP" ] && wait $PP
REQ=$(grep "requests in" /tmp/gc/wrk.txt | awk '{print $1}')
grep -E "Requests/sec|99%|50%" /tmp/gc/wrk.txt
echo "cpu_us_per_req $(python3 -c "print(($T1-$T0)*1e6/100/$REQ)")"
curl -s http://$ADDR/stats > /tmp/gc/stats.json; python3 -c "
import json,sys
d=json.load(open('/tmp/gc/stats.json'))
for s in d['shards']:
  j=s['stats'].get('journal')
  if j: print('shard',s['shard'],json.dumps(j))
a=d['all']; print('requests',a['requests'])
" 2>&1 | head
kill -TERM $PID; wait $PID
rm -rf $D $PORTFILE
