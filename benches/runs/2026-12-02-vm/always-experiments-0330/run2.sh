#!/bin/bash
# like run1 but also system-wide context switches and interrupts per request
BIN=${BIN:-/work/main/target/release/shardfeed}
SH=$1; shift
rm -rf /tmp/m/state; mkdir -p /tmp/m/state
$BIN serve --listen 127.0.0.1:0 --shards $SH --users 1000000 --feed-len 200 "$@" > /tmp/m/srv.log 2>&1 &
PID=$!
for i in $(seq 100); do grep -q "listening on" /tmp/m/srv.log && break; sleep 0.1; done
PORT=$(grep -o "listening on [0-9.:]*" /tmp/m/srv.log | head -1 | sed 's/.*://')
T0=$(awk '{print $14+$15}' /proc/$PID/stat)
C0=$(awk '/^ctxt/{print $2}' /proc/stat); I0=$(awk '/^intr/{print $2}' /proc/stat)
SHARDFEED_USERS=1000000 wrk -t1 -c64 -d${DUR:-8}s --latency -s /work/main/scripts/random_users.lua http://127.0.0.1:$PORT > /tmp/m/wrk.txt
T1=$(awk '{print $14+$15}' /proc/$PID/stat)
C1=$(awk '/^ctxt/{print $2}' /proc/stat); I1=$(awk '/^intr/{print $2}' /proc/stat)
RPS=$(grep Requests/sec /tmp/m/wrk.txt | awk '{print $2}')
REQ=$(grep "requests in" /tmp/m/wrk.txt | awk '{print $1}')
P99=$(grep " 99%" /tmp/m/wrk.txt | head -1 | awk '{print $2}')
python3 -c "print('sh=$SH $* rps=$RPS p99=$P99 cpu_us/req=%.1f cs/req=%.2f irq/req=%.2f' % (($T1-$T0)*10000/$REQ, ($C1-$C0)/$REQ, ($I1-$I0)/$REQ))"
curl -s http://127.0.0.1:$PORT/stats > /tmp/m/stats.json
kill $PID; wait $PID 2>/dev/null
