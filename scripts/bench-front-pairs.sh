#!/usr/bin/env bash
# What the number of (instance, shard) pairs costs the nginx front itself:
# the generated routing (map + split_clients + one upstream per pair) with
# a server that answers `return 200 "$shardfeed_route"` (no proxying, so
# only the routing is measured), for 2 instances x 2 shards (4 pairs)
# against 100 instances x 32 shards (3200 pairs), interleaved A B A B.
# Prints requests/s of `wrk -t1 -c32` with random canonical ids, nginx's
# workers' RSS, and `nginx -t`'s time. Loopback only; nginx is stopped by
# PID after each run. Compare only within one run.
#
#   scripts/bench-front-pairs.sh [ROUNDS [SECONDS]]     (3 5)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}; secs=${2:-5}
bin=$PWD/target/release/shardfeed
[ -x "$bin" ] || cargo build --release --quiet
nginx=$(command -v nginx || echo /usr/sbin/nginx)
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
make() { # NAME INSTANCES SHARDS
  local d="$work/$1"; mkdir -p "$d/logs"
  for i in $(seq 1 "$2"); do echo "i$i 10.0.$((i / 250)).$((i % 250 + 1)):8080 $3"; done >"$d/cluster.txt"
  "$bin" nginx-conf --cluster "$d/cluster.txt" | awk '/^server \{/ { exit } { print }' >"$d/routing.conf"
  cat >"$d/nginx.conf" <<CONF
worker_processes 2;
daemon off;
pid $d/nginx.pid;
error_log $d/logs/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $d/b; proxy_temp_path $d/p; fastcgi_temp_path $d/f; uwsgi_temp_path $d/u; scgi_temp_path $d/s;
  include $d/routing.conf;
  server { listen 127.0.0.1:$port; keepalive_requests 1000000; location / { return 200 "\$shardfeed_route"; } }
}
CONF
  echo "# $1: $(grep -c '^upstream' "$d/routing.conf") upstreams, $(wc -c <"$d/routing.conf") bytes of routing; nginx -t: $( { /usr/bin/time -f '%e s, %M KB peak' "$nginx" -q -t -p "$d" -c "$d/nginx.conf"; } 2>&1 | tail -1)"
}
run() { # NAME
  local d="$work/$1" rps rss
  "$nginx" -p "$d" -c "$d/nginx.conf" & pid=$!
  until curl -s -o /dev/null "http://127.0.0.1:$port/feed/1"; do sleep 0.05; done
  rps=$(SHARDFEED_USERS=4000000000 wrk -t1 -c32 -d"${secs}s" -s scripts/random_users.lua "http://127.0.0.1:$port" | awk '/Requests\/sec/ { print $2 }')
  rss=$(ps -o rss= --ppid "$pid" | awk '{ s += $1 } END { print s }')
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=
  echo "$1 ${rps} req/s, workers ${rss} KB RSS"
}
make p4 2 2
make p3200 100 32
echo "# $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg); wrk -t1 -c32 -d${secs}s on the same CPUs"
for r in $(seq "$rounds"); do
  echo "round $r: $(run p4); $(run p3200)"
done
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
