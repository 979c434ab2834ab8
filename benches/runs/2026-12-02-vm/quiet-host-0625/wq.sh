# wq.sh BIN SHARDS CPUS(empty: leave) [flags]: wrk 8s; re-taskset io workers every 0.5s
BIN=$1; SH=$2; CP=$3; shift 3
st=$(mktemp -d /tmp/st.XXXX)
$BIN serve --listen 127.0.0.1:0 --shards $SH --users 1000000 --state-dir $st "$@" > /tmp/m/srv.out 2>/tmp/m/srv.err &
pid=$!
for i in $(seq 100); do grep -q '^listening on' /tmp/m/srv.out && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' /tmp/m/srv.out)
t0=$(awk '{print $14+$15}' /proc/$pid/stat)
wrk -t1 -c64 -d8s --latency -s /work/main/scripts/random_users.lua http://$addr/ > /tmp/m/wq.wrk &
w=$!
n=0
while kill -0 $w 2>/dev/null; do
  if [ -n "$CP" ]; then for t in /proc/$pid/task/*; do case $(cat $t/comm 2>/dev/null) in iou*) taskset -pc $CP $(basename $t) >/dev/null 2>&1;; esac; done; fi
  sleep 0.3
done
curl -s http://$addr/stats > /tmp/m/wq.s1
ps -L -o comm,psr,time -p $pid | grep iou | head -5
kill -TERM $pid; wait $pid; rm -rf $st
python3 - <<'PY'
import json,re
w=open('/tmp/m/wq.wrk').read()
rps=float(re.search(r'Requests/sec:\s+([\d.]+)',w).group(1)); p99=re.search(r'99%\s+(\S+)',w).group(1)
s=json.load(open('/tmp/m/wq.s1'))
j=[x['stats']['journal'] for x in s['shards']]
syncs=sum(x['syncs'] for x in j); rec=sum(x['records'] for x in j)
print(f"rps {rps:9.0f} p99 {p99:>8}  rec/sync {rec/max(syncs,1):.1f} sync p50 {[x['sync_latency_us']['p50'] for x in j]}")
PY
