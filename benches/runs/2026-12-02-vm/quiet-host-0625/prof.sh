#!/bin/bash
# prof.sh BIN SHARDS OUT [serve flags...]: one server, wrk 10s, perf 5s in the middle, /stats before/after
BIN=$1; SH=$2; OUT=$3; shift 3
st=$(mktemp -d /tmp/st.XXXX)
$BIN serve --listen 127.0.0.1:0 --shards $SH --users 1000000 $( [ -z "$NOSTATE" ] && echo --state-dir $st) "$@" > /tmp/m/srv.out 2>/tmp/m/srv.err &
pid=$!
for i in $(seq 100); do grep -q '^listening on' /tmp/m/srv.out && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' /tmp/m/srv.out)
curl -s http://$addr/stats > $OUT.stats0
wrk -t1 -c64 -d10s -s /work/main/scripts/random_users.lua http://$addr/ > $OUT.wrk &
w=$!
sleep 3
if [ -n "$PERF" ]; then perf record -F 2999 -g -p $pid -o $OUT.perf -- sleep 4 2>/dev/null >/dev/null; fi
if [ -n "$STAT" ]; then perf stat -e 'syscalls:sys_enter_io_uring_enter,io_uring:io_uring_submit_req,context-switches,cpu-migrations' -p $pid -- sleep 4 2> $OUT.pstat; fi
wait $w
curl -s http://$addr/stats > $OUT.stats1
kill -TERM $pid; wait $pid
rm -rf $st
grep -E "Requests/sec|99%" $OUT.wrk
