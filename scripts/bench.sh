#!/usr/bin/env bash
# Load runs of shardfeed against nginx and itself on one shard, with records:
# see scripts/bench.py --help. Needs python3, wrk and nginx
# (apt-get install -y wrk nginx-light).
exec python3 "$(dirname "$0")/bench.py" "$@"
