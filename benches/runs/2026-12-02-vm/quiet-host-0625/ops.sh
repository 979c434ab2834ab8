BIN=$1; SH=$2; shift 2
st=$(mktemp -d /tmp/st.XXXX)
$BIN serve --listen 127.0.0.1:0 --shards $SH --users 1000000 $( [ -z "$NOSTATE" ] && echo --state-dir $st) "$@" > /tmp/m/srv.out 2>/tmp/m/srv.err &
pid=$!
for i in $(seq 100); do grep -q '^listening on' /tmp/m/srv.out && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' /tmp/m/srv.out)
wrk -t1 -c64 -d8s -s /work/main/scripts/random_users.lua http://$addr/ > /tmp/m/ops.wrk &
w=$!
sleep 2
curl -s http://$addr/stats > /tmp/m/ops.s0
i0=$(awk '/^intr/{print $2}' /proc/stat); c0=$(awk '/^ctxt/{print $2}' /proc/stat)
perf record -e io_uring:io_uring_submit_req -a -o /tmp/m/ops.perf -- sleep 3 2>/dev/null >/dev/null
i1=$(awk '/^intr/{print $2}' /proc/stat); c1=$(awk '/^ctxt/{print $2}' /proc/stat)
curl -s http://$addr/stats > /tmp/m/ops.s1
wait $w
kill -TERM $pid; wait $pid; rm -rf $st
python3 - $i0 $i1 $c0 $c1 <<'PY'
import json,sys
a=json.load(open('/tmp/m/ops.s0'))['all']; b=json.load(open('/tmp/m/ops.s1'))['all']
i0,i1,c0,c1=map(int,sys.argv[1:])
req=b['requests']-a['requests']
ja=[s['stats']['journal'] for s in json.load(open('/tmp/m/ops.s0'))['shards']]
jb=[s['stats']['journal'] for s in json.load(open('/tmp/m/ops.s1'))['shards']]
syncs=sum(x['syncs'] for x in jb)-sum(x['syncs'] for x in ja)
print(f"req {req}  per req: intr {(i1-i0)/req:.3f} ctxt {(c1-c0)/req:.3f}  syncs {syncs} req/sync {req/max(syncs,1):.1f}")
PY
perf script -i /tmp/m/ops.perf 2>/dev/null | grep -o 'opcode [A-Z_]*' | sort | uniq -c | sort -rn | head
grep Requests/sec /tmp/m/ops.wrk
