#!/usr/bin/env python3
"""One process with 2 shards against two 1-shard instances, direct and behind
the generated nginx front (issue 12), side by side in one run.

    scripts/cluster-bench.py [--rounds 3] [--duration 8] [--users 1000000] [--record DIR]

Every round starts each configuration afresh, in turn (A B C D, A B C D ...):
  A one-process-shared: `serve --shards 2`, random ids on the shared port
    (half of the requests forwarded between the cores);
  B one-process-shard-ports: the same process as a one-instance cluster
    (2 shards), each shard's own ids on its own port (nothing forwarded,
    one process);
  C two-instances-direct: two `--cluster` instances of 1 shard (`--cpus 0`,
    `--cpus 1`), each asked for its own users on its port (no front);
  D two-instances-nginx: the same two instances behind `shardfeed
    nginx-conf` on nginx with 2 workers, random ids on the front.
Load: two `wrk -t1 -c32` at once (one per shard/instance, or both on the
front), on the same 2-vCPU machine as the servers: the load generator
shares the cores. CPU per request: user+system ticks of the servers (and of
nginx's master and workers in D) over the requests wrk completed.
"""
import argparse, json, os, platform, re, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/shardfeed")
TICK = os.sysconf("SC_CLK_TCK")


def free_port(extra=0):
    """A free port p (and p+1..p+extra), below the ephemeral range, so that
    wrk's and nginx's client sockets never take a shard port."""
    import random
    while True:
        p = random.randrange(20000, 32000, 16)
        ok = True
        for i in range(0, extra + 1):
            t = socket.socket()
            try:
                t.bind(("127.0.0.1", p + i))
            except OSError:
                ok = False
            t.close()
        if ok and p not in USED:
            USED.add(p)
            return p


USED = set()


def ticks(pids):
    total = 0
    for pid in pids:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except FileNotFoundError:
            pass
    return total


def start(args, log):
    p = subprocess.Popen([BIN, "serve"] + args, stdout=subprocess.PIPE, stderr=log, text=True)
    line = p.stdout.readline()
    assert line.startswith("listening on"), line
    return p


def stop(procs):
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill(); p.wait()


def metric(port, family):
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith(family + "{") or l.startswith(family + " "))


def wrk(targets, duration, lua_env):
    """targets: [(url, ids_file or None)]; all at once; returns (requests, per-run texts)."""
    procs = []
    for url, ids in targets:
        env = dict(os.environ, SHARDFEED_USERS=str(lua_env["users"]))
        script = os.path.join(ROOT, "scripts/random_users.lua")
        if ids:
            env["BENCH_IDS"] = ids
            script = os.path.join(ROOT, "scripts/ids_users.lua")
        procs.append(subprocess.Popen(["wrk", "-t1", "-c32", f"-d{duration}s", "-s", script, url],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
    outs = [p.communicate()[0] for p in procs]
    total = 0
    for o in outs:
        m = re.search(r"(\d+) requests in", o)
        total += int(m.group(1))
        assert "Non-2xx" not in o, o
    return total, outs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--feed-len", type=int, default=50)
    ap.add_argument("--record")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="cluster-bench-")
    log = open(os.path.join(tmp, "servers.log"), "w")
    data = ["--users", str(a.users), "--feed-len", str(a.feed_len)]
    p1, p2, pn, p0 = free_port(2), free_port(1), free_port(), free_port()
    p2b = free_port(1)
    one = os.path.join(tmp, "one.txt"); open(one, "w").write(f"solo 127.0.0.1:{p1} 2\n")
    two = os.path.join(tmp, "two.txt"); open(two, "w").write(f"x 127.0.0.1:{p2} 1\ny 127.0.0.1:{p2b} 1\n")
    ids = "\n".join(str(u) for u in range(1, a.users + 1)) + "\n"
    files = {}
    for name, cl in (("one", one), ("two", two)):
        out = subprocess.run([BIN, "owner", "--cluster", cl], input=ids, capture_output=True, text=True, check=True).stdout
        groups = {}
        for line in out.splitlines():
            u, inst, shard, port = line.split()
            groups.setdefault(port, []).append(u)
        for port, us in groups.items():
            f = os.path.join(tmp, f"ids-{name}-{port.rsplit(':', 1)[1]}")
            open(f, "w").write("\n".join(us) + "\n")
            files[(name, port.rsplit(":", 1)[1])] = f
    # nginx front for C/D
    conf = subprocess.run([BIN, "nginx-conf", "--cluster", two, "--listen", f"127.0.0.1:{pn}"],
                          capture_output=True, text=True, check=True).stdout
    prefix = os.path.join(tmp, "nginx"); os.makedirs(os.path.join(prefix, "logs"))
    open(os.path.join(prefix, "nginx.conf"), "w").write(
        f"worker_processes 2;\ndaemon off;\npid {prefix}/nginx.pid;\nerror_log {prefix}/logs/error.log;\n"
        f"events {{ worker_connections 4096; }}\nhttp {{\naccess_log off;\nclient_body_temp_path {prefix}/b;\n"
        f"proxy_temp_path {prefix}/p;\nfastcgi_temp_path {prefix}/f;\nuwsgi_temp_path {prefix}/u;\n"
        f"scgi_temp_path {prefix}/s;\nkeepalive_requests 1000000;\n{conf}\n}}\n")
    subprocess.run(["nginx", "-t", "-p", prefix, "-c", f"{prefix}/nginx.conf"], check=True, capture_output=True)
    env = {"users": a.users}
    results = {k: [] for k in ("A one-process-shared", "B one-process-shard-ports",
                               "C two-instances-direct", "D two-instances-nginx")}
    raw = []
    for r in range(a.rounds):
        for name in results:
            procs, extra = [], []
            try:
                if name.startswith("A"):
                    procs = [start(["--listen", f"127.0.0.1:{p0}", "--shards", "2"] + data, log)]
                    targets = [(f"http://127.0.0.1:{p0}", None)] * 2
                    ports = [p0]
                elif name.startswith("B"):
                    procs = [start(["--cluster", one, "--instance", "solo"] + data, log)]
                    targets = [(f"http://127.0.0.1:{p1 + 1 + i}", files[("one", str(p1 + 1 + i))]) for i in range(2)]
                    ports = [p1]
                else:
                    procs = [start(["--cluster", two, "--instance", n, "--cpus", str(i)] + data, log)
                             for i, n in enumerate("xy")]
                    ports = [p2, p2b]
                    if name.startswith("C"):
                        targets = [(f"http://127.0.0.1:{p + 1}", files[("two", str(p + 1))]) for p in ports]
                    else:
                        ng = subprocess.Popen(["nginx", "-p", prefix, "-c", f"{prefix}/nginx.conf"])
                        extra = [ng]
                        time.sleep(0.5)
                        targets = [(f"http://127.0.0.1:{pn}", None)] * 2
                pids = [p.pid for p in procs]
                for e in extra:
                    kids = subprocess.run(["pgrep", "-P", str(e.pid)], capture_output=True, text=True).stdout.split()
                    pids += [e.pid] + [int(k) for k in kids]
                before = ticks(pids)
                n, outs = wrk(targets, a.duration, env)
                used = ticks(pids) - before
                fwd = sum(metric(p, "shardfeed_forwarded_out_total") for p in ports)
                mis = sum(metric(p, "shardfeed_misdirected_total") for p in ports)
                feed = sum(metric(p, "shardfeed_requests_total") for p in ports)
                row = {"round": r, "config": name, "requests": n, "rps": n / a.duration,
                       "cpu_us_per_req": used / TICK * 1e6 / n, "forwarded_share": fwd / max(feed, 1),
                       "misdirected": mis}
                results[name].append(row); raw.append({"row": row, "wrk": outs})
                print(json.dumps(row), flush=True)
            finally:
                for e in extra:
                    e.send_signal(signal.SIGTERM); e.wait(10)
                stop(procs)
    lines = ["| configuration | requests/s (median, min-max) | CPU us/request (median, min-max) | forwarded share | misdirected |",
             "|---|---|---|---|---|"]
    for name, rows in results.items():
        rps = [x["rps"] for x in rows]; cpu = [x["cpu_us_per_req"] for x in rows]
        lines.append(f"| {name} | {statistics.median(rps)/1000:.0f}k ({min(rps)/1000:.0f}-{max(rps)/1000:.0f}k) | "
                     f"{statistics.median(cpu):.1f} ({min(cpu):.1f}-{max(cpu):.1f}) | "
                     f"{statistics.median(x['forwarded_share'] for x in rows):.3f} | {int(sum(x['misdirected'] for x in rows))} |")
    summary = "\n".join(lines)
    print(summary)
    if a.record:
        os.makedirs(a.record, exist_ok=True)
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        open(os.path.join(a.record, "summary.txt"), "w").write(summary + "\n")
        open(os.path.join(a.record, "runs.json"), "w").write(json.dumps(raw, indent=1))
        open(os.path.join(a.record, "commands.txt"), "w").write(
            " ".join(sys.argv) + f"\ncommit {commit}\nnginx front:\n{conf}\n")
        machine = {"kernel": platform.release(), "cpus": os.cpu_count(),
                   "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), ""),
                   "wrk": (lambda r: (r.stdout + r.stderr).splitlines()[0])(subprocess.run(["wrk", "-v"], capture_output=True, text=True)),
                   "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
                   "load": "two wrk -t1 -c32 at once, on the same 2 vCPUs as the servers"}
        open(os.path.join(a.record, "machine.json"), "w").write(json.dumps(machine, indent=1))


main()
