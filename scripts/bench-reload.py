#!/usr/bin/env python3
"""Latency and memory during a SIGHUP reload, against the same run without one.

Each round starts the server twice on a feed file of USERS x LEN (written
once by `shardfeed gen`, two versions with different seeds), runs
`wrk -t1 -cC` with random users for DURATION seconds, and in the `reload`
run renames the other version over the feed file and sends SIGHUP at
SIGNAL_AT seconds. Runs alternate (steady, reload, steady, reload, ...) so
that the machine's drift falls on both. Per run: requests/s, wrk's p50/p99/
p99.9/max, the peak resident memory (VmHWM) and, for reloads, the time from
the signal to the `reload: version ...` line.

wrk runs on the same CPUs as the server (say so with the figures). Loopback
only; every server is stopped by its PID.

    scripts/bench-reload.py [--users N] [--rounds R] [--duration S] [--bin BIN]
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(bin_, feed, shards, extra):
    err = tempfile.TemporaryFile(mode="w+")
    p = subprocess.Popen(
        [bin_, "serve", "--listen", "127.0.0.1:0", "--shards", str(shards), "--feed", feed]
        + extra,
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
    )
    line = p.stdout.readline()
    m = re.match(r"listening on (\S+)", line)
    if not m:
        p.kill()
        err.seek(0)
        sys.exit(f"server did not start: {line!r} {err.read()}")
    return p, m.group(1), err


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def vm(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def wrk(addr, users, conns, duration):
    env = dict(os.environ, SHARDFEED_USERS=str(users))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency",
         "-s", os.path.join(ROOT, "scripts/random_users.lua"), f"http://{addr}"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    pct = [int(x) for x in re.search(r"percentiles_us ([\d ]+)", out).group(1).split()]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return rps, pct, int(non2xx.group(1)) if non2xx else 0, errors.group(1) if errors else ""


def run(args, feed, other, reload_):
    p, addr, err = start(args.bin, feed, args.shards, args.server_arg)
    try:
        # Warm: every user's slot and items touched once by the load.
        wrk(addr, args.users, args.conns, 2)
        signalled = [None]

        def hup():
            time.sleep(args.signal_at)
            tmp = feed + ".new"
            os.link(other, tmp)  # a pipeline writes a new file; a link costs no disk
            os.rename(tmp, feed)
            signalled[0] = time.monotonic()
            p.send_signal(signal.SIGHUP)

        t = threading.Thread(target=hup)
        if reload_:
            t.start()
        rps, pct, non2xx, errors = wrk(addr, args.users, args.conns, args.duration)
        if reload_:
            t.join()
        took = None
        if reload_:
            # A reload that outlasts the run is waited for (and marked).
            waited = time.monotonic()
            while True:
                err.seek(0)
                log = err.read()
                m = re.search(r"reload: version \S+ serves on every shard, ([\d.]+) s", log)
                if m:
                    took = m.group(1) + ("" if time.monotonic() - waited < 0.5 else " (after the run)")
                    break
                if time.monotonic() - waited > 300:
                    sys.exit(f"the reload did not finish within 300 s of the run:\n{log}")
                time.sleep(0.1)
        hwm = vm(p.pid, "VmHWM")
        return rps, pct, non2xx, errors, took, hwm
    finally:
        stop(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--feed-len", type=int, default=200)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--signal-at", type=float, default=2.0)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/shardfeed"))
    ap.add_argument("--server-arg", action="append", default=[])
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-reload-")
    try:
        versions = []
        for seed in (1, 2):
            path = os.path.join(work, f"v{seed}.tsv")
            subprocess.run([args.bin, "gen", "--users", str(args.users), "--feed-len",
                            str(args.feed_len), "--seed", str(seed), "-o", path], check=True)
            versions.append(path)
        feed = os.path.join(work, "feed.tsv")
        print(f"# {args.users} users x {args.feed_len} (TSV, {os.path.getsize(versions[0]) >> 20} MiB),"
              f" {args.shards} shards, wrk -t1 -c{args.conns} -d{args.duration}s random users,"
              f" SIGHUP at {args.signal_at} s; wrk shares the {os.cpu_count()} CPUs")
        print("# run     req/s     p50_us  p99_us  p99.9_us  max_us  non2xx  reload_s  peak_rss_MiB")
        for r in range(args.rounds):
            for reload_ in (False, True):
                if os.path.exists(feed):
                    os.unlink(feed)
                os.link(versions[0], feed)
                rps, pct, non2xx, errors, took, hwm = run(args, feed, versions[1], reload_)
                print(f"{'reload' if reload_ else 'steady':7} {rps:9.0f} {pct[0]:9} {pct[2]:7}"
                      f" {pct[3]:9} {pct[4]:7} {non2xx:7} {took if took is not None else '-':>9}"
                      f" {hwm >> 20:13} {errors}", flush=True)
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
