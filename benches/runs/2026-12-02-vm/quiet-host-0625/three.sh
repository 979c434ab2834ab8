#!/bin/bash
# three.sh ROUNDS SHARDS: interleaved none / everysec 32K (head) / everysec 1M, wrk -t1 -c64 -d10s
R=$1; SH=$2
for r in $(seq $R); do
for cfg in none e32 e1m; do
  st=$(mktemp -d /tmp/st.XXXX)
  case $cfg in none) B=/tmp/sf-head; A="";; e32) B=/tmp/sf-head; A="--state-dir $st";; e1m) B=/tmp/sf-wb1024; A="--state-dir $st";; esac
  $B serve --listen 127.0.0.1:0 --shards $SH --users 1000000 $A > /tmp/m/t.out 2>/tmp/m/t.err &
  pid=$!
  for i in $(seq 100); do grep -q '^listening on' /tmp/m/t.out && break; sleep 0.1; done
  addr=$(sed -n 's/^listening on //p' /tmp/m/t.out)
  t0=$(awk '{print $14+$15}' /proc/$pid/stat)
  wrk -t1 -c64 -d10s --latency -s /work/main/scripts/random_users.lua http://$addr/ > /tmp/m/t.wrk
  t1=$(awk '{print $14+$15}' /proc/$pid/stat)
  kill -TERM $pid; wait $pid; rm -rf $st
  python3 - $cfg $r $t0 $t1 <<'PY'
import re,sys
cfg,r,t0,t1=sys.argv[1],sys.argv[2],int(sys.argv[3]),int(sys.argv[4])
w=open('/tmp/m/t.wrk').read()
n=int(re.search(r'(\d+) requests in',w).group(1)); rps=float(re.search(r'Requests/sec:\s+([\d.]+)',w).group(1))
p99=re.search(r'99%\s+(\S+)',w).group(1)
print(f"{r} {cfg} {rps:.0f} {(t1-t0)/100*1e6/n:.3f} {p99}",flush=True)
PY
done; done
