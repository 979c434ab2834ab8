#!/usr/bin/env python3
"""Snapshot start time, interleaved between builds (A B A B ...).

For each round and each binary: starts `BIN serve --feed SNAPSHOT --shards
N` on a free 127.0.0.1 port with the page cache warm (the file is read
once before every start), and measures from exec to

  - `listening on` on its stdout, and
  - the first `200` of `GET /feed/{id}` (polled every 2 ms; the port answers
    `503 loading` while the feeds load),

then, at once, the first requests' latencies: REQUESTS pages of random
users 1..USERS, one at a time on one keep-alive connection (the first
pages after start, when pages not yet touched since the load would fault;
latency includes this Python client's own time, the same for every
binary) with the server's page faults during them (minor and major,
/proc/PID/stat: a page first touched on the hot path shows there, free
of the timing noise), and the server's memory (VmRSS, RssAnon, RssFile from
/proc/PID/status). Stops every server by its PID.

  flock /work/briefs/bench.lock scripts/bench-snapshot-start.py \\
      --feed /tmp/feeds-5000000.snap --users 5000000 --rounds 3 \\
      old=/tmp/shardfeed-main new=target/release/shardfeed

No thresholds: numbers to compare within one run. The machine's other
load counts (the load average is printed).
"""

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def warm(path):
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def get(sock, path):
    """One GET on a keep-alive socket; returns the status code."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        body += chunk
    return status


def status_of(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) // 1024  # MiB
    return out


def faults(pid):
    """Minor and major page faults of the whole process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[7]), int(fields[9])


def one_start(binary, args):
    port = free_port()
    warm(args.feed)
    cmd = [binary, "serve", "--listen", f"127.0.0.1:{port}", "--shards",
           str(args.shards), "--feed", args.feed] + args.extra
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    listening = [None]
    err_lines = []

    def read_out():
        for line in p.stdout:
            if line.startswith(b"listening on") and listening[0] is None:
                listening[0] = time.monotonic() - t0

    def read_err():
        for line in p.stderr:
            err_lines.append(line.decode(errors="replace").rstrip())

    threads = [threading.Thread(target=read_out, daemon=True),
               threading.Thread(target=read_err, daemon=True)]
    for t in threads:
        t.start()
    try:
        first = None
        sock = None
        deadline = t0 + 120
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise RuntimeError(f"{binary} exited: {err_lines}")
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                if get(sock, "/feed/1?size=10") == 200:
                    first = time.monotonic() - t0
                    break
            except (ConnectionError, OSError):
                if sock is not None:
                    sock.close()
                sock = None
            time.sleep(0.002)
        if first is None:
            raise RuntimeError(f"{binary}: no 200 within 120 s")
        rng = random.Random(7)
        before = faults(p.pid)
        lat = []
        for _ in range(args.requests):
            u = rng.randint(1, args.users)
            a = time.perf_counter()
            status = get(sock, f"/feed/{u}?size=10")
            lat.append((time.perf_counter() - a) * 1e6)
            if status != 200:
                raise RuntimeError(f"status {status} for user {u}")
        sock.close()
        after = faults(p.pid)
        mem = status_of(p.pid)
        # Wait briefly for the `listening on` line's reader.
        for _ in range(100):
            if listening[0] is not None:
                break
            time.sleep(0.01)
        loaded = next((l for l in err_lines if "loaded in" in l), "")
        return {
            "listening": listening[0],
            "first": first,
            "lat": lat,
            "mem": mem,
            "faults": (after[0] - before[0], after[1] - before[1]),
            "loaded": loaded.split("loaded in")[-1].strip() if loaded else "?",
        }
    finally:
        p.terminate()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--feed", required=True)
    ap.add_argument("--users", type=int, required=True)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--extra", nargs="*", default=[], help="more serve arguments")
    ap.add_argument("builds", nargs="+", help="NAME=BINARY, run in this order each round")
    args = ap.parse_args()
    builds = [b.split("=", 1) for b in args.builds]
    print(f"# {args.feed} ({os.path.getsize(args.feed) / 1e9:.2f} GB), {args.users} users, "
          f"--shards {args.shards}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}")
    results = {name: [] for name, _ in builds}
    for r in range(1, args.rounds + 1):
        for name, binary in builds:
            res = one_start(binary, args)
            results[name].append(res)
            lat = res["lat"]
            m = res["mem"]
            print(f"round {r} {name:>6}: listening {res['listening']:.2f} s, first 200 "
                  f"{res['first']:.2f} s (loaded in {res['loaded']}); first page "
                  f"{lat[0]:.0f} us, first {len(lat)} pages p50 {pct(lat, 0.5):.0f} "
                  f"p99 {pct(lat, 0.99):.0f} max {max(lat):.0f} us, page faults during them "
                  f"{res['faults'][0]} minor {res['faults'][1]} major; RSS {m.get('VmRSS')} MiB "
                  f"(anon {m.get('RssAnon')}, file {m.get('RssFile')}); load "
                  f"{os.getloadavg()[0]:.2f}", flush=True)
    print("# medians over rounds")
    for name, rs in results.items():
        med = lambda f: statistics.median(f(x) for x in rs)
        print(f"{name:>6}: listening {med(lambda x: x['listening']):.2f} s "
              f"[{min(x['listening'] for x in rs):.2f}-{max(x['listening'] for x in rs):.2f}], "
              f"first 200 {med(lambda x: x['first']):.2f} s, first page "
              f"{med(lambda x: x['lat'][0]):.0f} us, p99 of first pages "
              f"{med(lambda x: pct(x['lat'], 0.99)):.0f} us, RSS "
              f"{med(lambda x: x['mem'].get('VmRSS', 0)):.0f} MiB (anon "
              f"{med(lambda x: x['mem'].get('RssAnon', 0)):.0f})")


if __name__ == "__main__":
    sys.exit(main())
