#!/usr/bin/env python3
"""Load runs of shardfeed against its baselines, saved as reproducible records.

    scripts/bench.sh --quick                 # seconds: wrk -t1 -c64 -d10s, one round
    scripts/bench.sh                         # the reference's wrk -t5 -c200 -d30s
    scripts/bench.sh --latency               # low load: wrk -t1 -c4 -d10s
    scripts/bench.sh --open-loop 10000       # oha at a fixed 10k req/s, latency corrected
    scripts/bench.sh --quick --rounds 3 --shards 2 --record
    scripts/bench.sh --quick --server-arg=--no-pin        # flags for shardfeed: with `=`
    scripts/bench.sh --quick --rounds 4 --no-baselines --against /tmp/shardfeed-old
                                             # A B A B against another build
    scripts/bench.sh --quick --no-baselines --against target/release/shardfeed \
        --server-arg=--state-dir --server-arg={tmp}   # with a journal against without
    scripts/bench.sh --quick --rounds 3 --jwt  # the cost of --jwt-secret (see below)

Each round starts every server afresh, in turn (A B C D, A B C D, ...), so
that the noisy machine drifts alike over all of them:
  shardfeed --shards N, nginx with N workers (`return 200` with a body of the
  same length: the ceiling for HTTP on this host), and, when N > 1,
  shardfeed --shards 1 and nginx with 1 worker.
For every run: requests/s, p50/p99/p99.9 (wrk's own histogram), non-2xx and
socket errors, and the server's CPU time per request (user + system of all
its threads and processes, from /proc): on a small machine where wrk takes a
core, CPU per request is the steadier measure of a server's own cost. For
shardfeed also the share of requests forwarded to another shard (/stats) and
its resident memory. IPI/req is the machine's rescheduling and function-call
interrupts (/proc/interrupts RES + CAL, all CPUs, wrk included) per request:
wake-ups across CPUs and membarrier broadcasts show there. The summary gives
medians over rounds and the ratios to the baselines. The load generator
shares the machine with the servers.

wrk is closed-loop: its latencies omit the queueing a client at a fixed rate
would see. --open-loop RATE uses oha instead (`-q RATE --latency-correction`,
cargo install oha --locked), sending RATE requests/s whatever the answers do.

--jwt measures what --jwt-secret costs: four shardfeed servers in turn, each
round, all with the same shard count and no baselines: without tokens and
random users; with --jwt-secret and a token per request for a random user
(every request pays the full check: base64, JSON, HMAC-SHA256); with
--jwt-secret and one user per wrk thread (every connection repeats one token:
checked once per connection, then only `exp`); and that last load without
tokens. Tokens are minted here (HS256) for up to 100,000 users
(scripts/jwt_users.lua).

--record saves the commands, versions, CPU, raw wrk output and summary under
benches/runs/<date>-<host>/<profile>-<time>/.
Needs wrk and nginx (Debian: apt-get install -y wrk nginx-light).
"""
import argparse
import datetime
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
LUA = os.path.join(ROOT, "scripts", "random_users.lua")
PROFILES = {
    "quick": dict(threads=1, conns=64, duration="10s"),
    "reference": dict(threads=5, conns=200, duration="30s"),
    "latency": dict(threads=1, conns=4, duration="10s"),
}
# A 10-item page of 7-digit ids, like shardfeed's answers with the default data.
NGINX_BODY = "[" + ",".join(str(4_000_000 + 12_345 * i) for i in range(10)) + "]"


def die(msg):
    sys.exit(f"bench: {msg}")


def cpu_ticks(pids):
    """User + system clock ticks of every thread of `pids`."""
    total = 0
    for pid in pids:
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return total


def ipis():
    """Rescheduling and function-call interrupts so far, all CPUs (from
    /proc/interrupts): a wake-up or a `membarrier` on another CPU costs one."""
    total = 0
    try:
        with open("/proc/interrupts") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name.strip() in ("RES", "CAL"):
                    total += sum(int(x) for x in rest.split() if x.isdigit())
    except OSError:
        pass
    return total


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def stop_process(proc, sig, timeout):
    """Stops `proc` with `sig`, killing it if it is still there after `timeout` s."""
    if proc and proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Shardfeed:
    def __init__(self, binary, shards, args, label="shardfeed", lua=None, env=None):
        self.name = f"{label}-{shards}"
        self.command = [binary, "serve", "--listen", "127.0.0.1:0", "--shards", str(shards)] + args
        self.proc = None
        self.lua = lua or LUA
        self.env = env or {}

    def start(self):
        # `{tmp}` in a flag is a fresh directory for every start (e.g.
        # --server-arg=--state-dir --server-arg={tmp}).
        self.tmp = tempfile.mkdtemp(prefix="bench-shardfeed-")
        command = [a.replace("{tmp}", self.tmp) for a in self.command]
        started = time.monotonic()
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        self.startup_s = time.monotonic() - started
        if not line.startswith("listening on "):
            self.stop()
            die(f"{self.name} did not start: {' '.join(command)}")
        self.addr = line.split()[-1]
        return self.addr

    def pids(self):
        return [self.proc.pid]

    def extra(self):
        """Forwarded share and RSS, read from the live server."""
        host, port = self.addr.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"GET /stats HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        stats = json.loads(data.split(b"\r\n\r\n", 1)[1])["all"]
        requests = max(stats["requests"], 1)
        return {"forwarded_share": stats["forwarded_out"] / requests, "rss_mb": rss_mb(self.proc.pid),
                "startup_s": self.startup_s}

    def stop(self):
        # SIGTERM: shardfeed drains and prints its summary.
        stop_process(self.proc, signal.SIGTERM, 15)
        shutil.rmtree(self.tmp, ignore_errors=True)


class Nginx:
    def __init__(self, workers):
        self.name = f"nginx-{workers}"
        self.workers = workers
        self.dir = tempfile.mkdtemp(prefix="bench-nginx-")
        self.proc = None

    def start(self):
        port = free_port()
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""worker_processes {self.workers};
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  server {{
    listen 127.0.0.1:{port} reuseport;
    location / {{ default_type application/json; return 200 '{NGINX_BODY}'; }}
  }}
}}
""")
        self.command = ["nginx", "-c", conf, "-p", self.dir]
        self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            self.stop()
            die("nginx did not start")
        self.addr = f"127.0.0.1:{port}"
        return self.addr

    def pids(self):
        children = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        return [self.proc.pid] + [int(c) for c in children]

    def extra(self):
        return {}

    def stop(self):
        # SIGQUIT: nginx's graceful stop.
        stop_process(self.proc, signal.SIGQUIT, 10)


def parse_wrk(text):
    out = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    out["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    out["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"percentiles_us (\d+) (\d+) (\d+) (\d+) (\d+)", text)
    if m:
        out.update(p50_us=int(m.group(1)), p90_us=int(m.group(2)), p99_us=int(m.group(3)),
                   p999_us=int(m.group(4)), max_us=int(m.group(5)))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(int(g) for g in m.groups()) if m else 0
    return out


def parse_oha(text):
    """oha --output-format json -> the same fields as parse_wrk."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError:
        return {"requests": 0, "rps": 0.0, "non_2xx": 0, "socket_errors": 1}
    codes = d.get("statusCodeDistribution") or {}
    errors = d.get("errorDistribution") or {}
    p = d["latencyPercentiles"]
    us = lambda key: int((p.get(key) or 0) * 1e6)
    return {
        "requests": sum(codes.values()),
        "rps": d["summary"]["requestsPerSec"],
        "p50_us": us("p50"), "p90_us": us("p90"), "p99_us": us("p99"), "p999_us": us("p99.9"),
        "max_us": int(d["summary"]["slowest"] * 1e6) if d["summary"].get("slowest") else 0,
        "non_2xx": sum(n for code, n in codes.items() if not code.startswith("2")),
        # Requests still in flight when the time is up are not errors.
        "socket_errors": sum(n for e, n in errors.items() if "deadline" not in e),
    }


def oha_command(load, addr, path, urls_file):
    cmd = ["oha", "--no-tui", "--output-format", "json", "-z", load["duration"], "-c", str(load["conns"]),
           "-q", str(load["rate"]), "--latency-correction"]
    if path:
        return cmd + [f"http://{addr}{path}"]
    with open(urls_file, "w") as f:
        rng = __import__("random").Random(42)
        for _ in range(100_000):
            f.write(f"http://{addr}/feed/{rng.randint(1, load['users'])}?size={load['size']}\n")
    return cmd + ["--urls-from-file", urls_file]


def run_one(server, wrk_args, env, hz, load=None):
    addr = server.start()
    try:
        pids = server.pids()
        if load:
            cmd = oha_command(load, addr, env.get("BENCH_PATH"), load["urls_file"])
        else:
            cmd = ["wrk"] + wrk_args + ["-s", getattr(server, "lua", LUA), f"http://{addr}"]
            env = dict(env, **getattr(server, "env", {}))
        before, ipis_before = cpu_ticks(pids), ipis()
        wrk = subprocess.run(cmd, capture_output=True, text=True, env=env)
        after, ipis_after = cpu_ticks(pids), ipis()
        result = parse_oha(wrk.stdout) if load else parse_wrk(wrk.stdout)
        result["cpu_us_per_request"] = (after - before) / hz * 1e6 / max(result["requests"], 1)
        result["ipis_per_request"] = (ipis_after - ipis_before) / max(result["requests"], 1)
        result.update(server.extra())
        return result, wrk.stdout + wrk.stderr, cmd
    finally:
        server.stop()


def jwt_servers(binary, args, sf_args):
    """Four shardfeeds for --jwt: (tokens?, which users) x with/without --jwt-secret."""
    import base64, hashlib, hmac, random
    work = tempfile.mkdtemp(prefix="bench-jwt-")
    secret = b"bench secret of the gateway"
    secret_file = os.path.join(work, "jwt.secret")
    with open(secret_file, "wb") as f:
        f.write(secret)
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    header = b64(b'{"alg":"HS256","typ":"JWT"}')
    exp = int(time.time()) + 86400
    tokens = os.path.join(work, "tokens.txt")
    rng = random.Random(42)
    with open(tokens, "w") as f:
        for user in rng.sample(range(1, args.users + 1), min(args.users, 100_000)):
            claims = b64(f'{{"sub":"{user}","exp":{exp}}}'.encode())
            signed = f"{header}.{claims}"
            sig = b64(hmac.new(secret, signed.encode(), hashlib.sha256).digest())
            f.write(f"{user} {signed}.{sig}\n")
    lua = os.path.join(ROOT, "scripts", "jwt_users.lua")
    jwt = sf_args + ["--jwt-secret", secret_file]
    env = lambda pick, auth: {"SHARDFEED_TOKENS": tokens, "SHARDFEED_PICK": pick, "SHARDFEED_AUTH": auth}
    return [
        Shardfeed(binary, args.shards, sf_args, "plain-random", lua, env("random", "0")),
        Shardfeed(binary, args.shards, jwt, "jwt-random", lua, env("random", "1")),
        Shardfeed(binary, args.shards, jwt, "jwt-repeat", lua, env("thread", "1")),
        Shardfeed(binary, args.shards, sf_args, "plain-repeat", lua, env("thread", "0")),
    ]


def median(runs, key):
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else None


def spread(runs, key):
    values = [r[key] for r in runs if key in r]
    return (min(values), max(values)) if values else (None, None)


def machine():
    def sh(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip() or \
                subprocess.run(cmd, capture_output=True, text=True).stderr.strip()
        except FileNotFoundError:
            return "missing"
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "host": socket.gethostname(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "git": sh("git", "-C", ROOT, "describe", "--always", "--dirty"),
        "rustc": sh("rustc", "-V"),
        "wrk": sh("wrk", "-v").splitlines()[0] if shutil.which("wrk") else "missing",
        "nginx": sh("nginx", "-v"),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    prof = p.add_mutually_exclusive_group()
    prof.add_argument("--quick", action="store_const", dest="profile", const="quick")
    prof.add_argument("--latency", action="store_const", dest="profile", const="latency")
    prof.add_argument("--open-loop", type=int, metavar="RATE",
                      help="oha at RATE requests/s, latency corrected (default 16 connections, 10s)")
    p.add_argument("-t", type=int, help="wrk threads")
    p.add_argument("-c", type=int, help="wrk connections")
    p.add_argument("-d", help="wrk duration, e.g. 10s")
    p.add_argument("--shards", type=int, default=os.cpu_count())
    p.add_argument("--cpus", help="--cpus for shardfeed")
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--feed-len", type=int, default=200)
    p.add_argument("--size", type=int, default=10)
    p.add_argument("--rounds", type=int, default=1, help="A B A B rounds")
    p.add_argument("--no-baselines", action="store_true", help="shardfeed only")
    p.add_argument("--bin", help="shardfeed binary to run instead of building")
    p.add_argument("--against", metavar="BIN",
                   help="another shardfeed binary (e.g. a build of the previous commit, or this one with other flags), run interleaved with this one as `against-N`")
    p.add_argument("--against-arg", action="append", default=[],
                   help="extra flag for the --against runs only (--server-arg is for this binary's runs only); write --against-arg=--flag")
    p.add_argument("--server-arg", action="append", default=[], help="extra flag for shardfeed serve; write --server-arg=--flag")
    p.add_argument("--record", action="store_true", help="save a record under benches/runs/")
    p.add_argument("--jwt", action="store_true", help="the cost of --jwt-secret: with and without tokens")
    args = p.parse_args()
    profile = args.profile or ("open-loop" if args.open_loop else "reference")
    wrk = dict(PROFILES.get(profile, dict(threads=1, conns=16, duration="10s")))
    wrk.update({k: v for k, v in (("threads", args.t), ("conns", args.c), ("duration", args.d)) if v})

    load = None
    if args.open_loop:
        if not shutil.which("oha"):
            die("oha is missing: cargo install oha --locked (about 6 minutes)")
        load = dict(rate=args.open_loop, conns=wrk["conns"], duration=wrk["duration"],
                    users=args.users, size=args.size,
                    urls_file=os.path.join(tempfile.mkdtemp(prefix="bench-oha-"), "urls.txt"))
    elif not shutil.which("wrk"):
        die("wrk is missing: apt-get install -y wrk")
    baselines = not args.no_baselines
    if baselines and not shutil.which("nginx"):
        die("nginx is missing (for the baseline): apt-get install -y nginx-light, or pass --no-baselines")
    binary = args.bin
    if not binary:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        binary = os.path.join(ROOT, "target", "release", "shardfeed")

    base_args = ["--users", str(args.users), "--feed-len", str(args.feed_len)]
    if args.cpus:
        base_args += ["--cpus", args.cpus]
    sf_args = base_args + args.server_arg
    def group(shards):
        group = [Shardfeed(binary, shards, sf_args)]
        if args.against:
            group.append(Shardfeed(args.against, shards, base_args + args.against_arg, label="against"))
        if baselines:
            group.append(Nginx(shards))
        return group
    servers = group(args.shards)
    if (baselines or args.against) and args.shards > 1:
        servers += group(1)
    if args.jwt:
        servers = jwt_servers(binary, args, sf_args)
    wrk_args = ["-t", str(wrk["threads"]), "-c", str(wrk["conns"]), "-d", wrk["duration"], "--latency"]
    env = dict(os.environ, SHARDFEED_USERS=str(args.users), SHARDFEED_SIZE=str(args.size))
    hz = os.sysconf("SC_CLK_TCK")
    info = machine()
    print(f"# {info['cpu']}, {info['cpus']} CPUs, {info['kernel']}; shardfeed {info['git']}; wrk on the same machine")
    driver = f"oha -q {args.open_loop} -c {wrk['conns']} -z {wrk['duration']} --latency-correction" if load \
        else f"wrk {' '.join(wrk_args)}"
    print(f"# {driver}; {args.users} users x {args.feed_len}; {args.rounds} round(s)")

    summary_driver = driver
    results = {s.name: [] for s in servers}
    raw = []
    for r in range(args.rounds):
        for s in servers:
            env_run = dict(env)
            if isinstance(s, Nginx):
                env_run["BENCH_PATH"] = "/"
            result, text, cmd = run_one(s, wrk_args, env_run, hz, load)
            results[s.name].append(result)
            raw.append((f"{s.name}-round{r + 1}", s.command, cmd, text))
            print(f"  round {r + 1} {s.name:<12} {result['rps']:>10,.0f} req/s  p99 {result.get('p99_us', 0) / 1000:6.2f} ms"
                  f"  {result['cpu_us_per_request']:6.2f} us CPU/req  {result['ipis_per_request']:5.2f} IPI/req  non-2xx {result['non_2xx']}  errors {result['socket_errors']}",
                  flush=True)

    lines = [f"{'server':<12} {'req/s (min-max)':>26} {'p50':>8} {'p99':>8} {'p99.9':>8} {'CPU/req':>9} {'IPI/req':>8} {'fwd':>6} {'RSS':>8} {'start':>7} {'non-2xx':>8} {'errors':>7}"]
    summary = {"machine": info, "profile": profile, "load": summary_driver, "users": args.users,
               "feed_len": args.feed_len, "rounds": args.rounds, "servers": {}}
    for name, runs in results.items():
        lo, hi = spread(runs, "rps")
        m = {k: median(runs, k) for k in ("rps", "p50_us", "p99_us", "p999_us", "cpu_us_per_request",
                                          "ipis_per_request", "forwarded_share", "rss_mb", "startup_s")}
        m["non_2xx"] = sum(r["non_2xx"] for r in runs)
        m["socket_errors"] = sum(r["socket_errors"] for r in runs)
        m["runs"] = runs
        summary["servers"][name] = m
        fwd = f"{m['forwarded_share'] * 100:5.1f}%" if m["forwarded_share"] is not None else "     -"
        rss = f"{m['rss_mb']:6.0f}MB" if m["rss_mb"] is not None else "       -"
        start = f"{m['startup_s']:6.1f}s" if m["startup_s"] is not None else "      -"
        lines.append(f"{name:<12} {m['rps']:>10,.0f} ({lo:,.0f}-{hi:,.0f}) {m['p50_us'] / 1000:7.2f}ms {m['p99_us'] / 1000:7.2f}ms"
                     f" {m['p999_us'] / 1000:7.2f}ms {m['cpu_us_per_request']:7.2f}us {m['ipis_per_request']:8.2f} {fwd} {rss} {start} {m['non_2xx']:>8} {m['socket_errors']:>7}")
    ratios = []
    pairs = [(f"shardfeed-{n}", f"{other}-{n}") for other in ("nginx", "against") for n in sorted({args.shards, 1}, reverse=True)]
    for sf, ng in pairs:
        a, b = summary["servers"].get(sf), summary["servers"].get(ng)
        if a and b:
            ratio = {"rps": a["rps"] / b["rps"], "cpu_per_request": a["cpu_us_per_request"] / b["cpu_us_per_request"],
                     "p99": a["p99_us"] / max(b["p99_us"], 1)}
            summary.setdefault("ratios", {})[f"{sf} / {ng}"] = ratio
            ratios.append(f"{sf} / {ng}: requests/s {ratio['rps']:.2f}x, CPU per request {ratio['cpu_per_request']:.2f}x, p99 {ratio['p99']:.2f}x")
    a, b = summary["servers"].get(f"shardfeed-{args.shards}"), summary["servers"].get("shardfeed-1")
    if a and b and args.shards > 1:
        ratios.append(f"shardfeed-{args.shards} / shardfeed-1: requests/s {a['rps'] / b['rps']:.2f}x, CPU per request {a['cpu_us_per_request'] / b['cpu_us_per_request']:.2f}x")
    if args.jwt:
        for with_jwt, without in (("jwt-random", "plain-random"), ("jwt-repeat", "plain-repeat")):
            a, b = summary["servers"].get(f"{with_jwt}-{args.shards}"), summary["servers"].get(f"{without}-{args.shards}")
            if a and b:
                extra = a["cpu_us_per_request"] - b["cpu_us_per_request"]
                ratios.append(f"{with_jwt} / {without}: CPU per request {a['cpu_us_per_request'] / b['cpu_us_per_request']:.2f}x"
                              f" ({extra:+.2f} us), requests/s {a['rps'] / b['rps']:.2f}x")
    text = "\n".join(lines + [""] + ratios) + "\n"
    print()
    print(text, end="")

    if args.record:
        now = datetime.datetime.now()
        out = os.path.join(ROOT, "benches", "runs", f"{now:%Y-%m-%d}-{info['host']}", f"{profile}-{now:%H%M%S}")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "commands.txt"), "w") as f:
            f.write("scripts/bench.sh " + " ".join(sys.argv[1:]) + "\n\n")
            for name, server_cmd, wrk_cmd, _ in raw:
                f.write(f"{name}:\n  server: {' '.join(server_cmd)}\n  load:   {' '.join(wrk_cmd)}\n")
        with open(os.path.join(out, "machine.json"), "w") as f:
            json.dump(info, f, indent=2)
        with open(os.path.join(out, "wrk.txt"), "w") as f:
            for name, _, _, text_raw in raw:
                f.write(f"===== {name}\n{text_raw}\n")
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        with open(os.path.join(out, "summary.txt"), "w") as f:
            f.write(f"# {info['cpu']}, {info['cpus']} CPUs, {info['kernel']}; shardfeed {info['git']}; {info['rustc']}; {info['wrk']}; {info['nginx']}\n")
            f.write(f"# {driver}; {args.users} users x {args.feed_len}; {args.rounds} round(s), medians; the load generator shares the machine\n")
            f.write(text)
        print(f"record: {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
