#!/usr/bin/env python3
"""Start time of `shardfeed serve` on feed files, interleaved A B C A B C:
from exec to the `listening on` line, with the start line's own `loaded in`
figure and the RSS when listening. Every server is stopped by its PID.

    scripts/bench-load.py [--bin target/release/shardfeed] [--rounds 3]
        [--shards 2] LABEL=FEED[@BIN] ...

`@BIN` runs that entry with another binary (A/B of two builds on one feed).

Run it under `flock /work/briefs/bench.lock` on the shared VM; warm the
page cache first (`cat FEED >/dev/null`) when comparing warm starts.
"""
import argparse
import os
import re
import signal
import statistics
import subprocess
import threading
import time

ap = argparse.ArgumentParser()
ap.add_argument("--bin", default="target/release/shardfeed")
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--shards", default="2")
ap.add_argument("feeds", nargs="+", metavar="LABEL=FEED[@BIN]")
a = ap.parse_args()
feeds = [f.split("=", 1) for f in a.feeds]
feeds = [(label, *(spec.split("@", 1) if "@" in spec else (spec, a.bin))) for label, spec in feeds]


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def one(feed, binary):
    started = time.monotonic()
    p = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--shards", a.shards, "--feed", feed],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = []
    t = threading.Thread(target=lambda: err.extend(p.stderr), daemon=True)
    t.start()
    try:
        line = p.stdout.readline()
        took = time.monotonic() - started
        if not line.startswith("listening on"):
            p.wait(30)
            raise SystemExit(f"{feed}: no listening line: {''.join(err)}")
        rss = rss_mib(p.pid)
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
    t.join(5)
    loaded = next((float(m.group(1)) for l in err for m in [re.search(r"loaded in ([0-9.]+) s", l)] if m), None)
    return took, loaded, rss


results = {label: [] for label, _, _ in feeds}
print(f"load average before: {os.getloadavg()}")
for r in range(a.rounds):
    for label, feed, binary in feeds:
        took, loaded, rss = one(feed, binary)
        results[label].append(took)
        print(f"round {r + 1} {label:>24}: listening after {took:6.2f} s "
              f"(start line: loaded in {loaded} s), RSS {rss:7.0f} MiB", flush=True)
print(f"load average after: {os.getloadavg()}")
for label, times in results.items():
    print(f"{label:>24}: median {statistics.median(times):6.2f} s, "
          f"min {min(times):6.2f}, max {max(times):6.2f} over {len(times)}")
