#!/usr/bin/env python3
"""The session workload (issue 12): every connection is one user's app
session (10 pages of one random user, then a new connection as another
user), from benches/session_load.rs, against

  A moves:     `serve --shards 2` (connections move to their user's shard
               after 2 requests for it, the default)
  A1 moves-1:  the same with `--move-after 1` (after the first)
  B no-moves:  `serve --shards 2 --no-move-connections`
  C nginx-2:   nginx, 2 workers, `return 200` with a body of the same length

side by side in one run, each round starting every server afresh in turn
(A A1 B C, A A1 B C, ...):

    scripts/session-bench.py [--rounds 3] [--duration 8] [--users 1000000]
        [--connections 64] [--threads 2] [--record DIR]

Per run: requests/s and client latency p50/p99 (the load generator's),
server CPU per request (user+system of every thread and process, /proc),
the forwarded share and connections moved (/metrics), and the servers'
own service time p99 of local and of forwarded pages (/stats). The load
generator runs on the same 2 vCPUs as the servers. Needs nginx (Debian
nginx-light), a release build (`cargo build --release`) and the load
generator's (`cargo bench --bench session_load --no-run`), made before.
"""
import argparse, json, os, platform, random, re, signal, socket, statistics, subprocess, sys, tempfile, time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/shardfeed")
TICK = os.sysconf("SC_CLK_TCK")
BODY = "[" + ",".join(str(4_000_000 + 12_345 * i) for i in range(10)) + "]"


def free_port():
    while True:
        p = random.randrange(20000, 32000)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
            return p
        except OSError:
            pass
        finally:
            s.close()


def ticks(pids):
    total = 0
    for pid in pids:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except FileNotFoundError:
            pass
    return total


def load_generator():
    """The newest build of benches/session_load.rs. Not built here: this
    script runs under the bench lock, and compiling there would hold it."""
    import glob
    found = [p for p in glob.glob(os.path.join(ROOT, "target/release/deps/session_load-*"))
             if os.access(p, os.X_OK) and not p.endswith(".d")]
    if not found:
        sys.exit("build the load generator first: cargo bench --bench session_load --no-run")
    return max(found, key=os.path.getmtime)


def get(port, path):
    return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10).read().decode()


def metric(text, family):
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith(family + "{") or l.startswith(family + " "))


def wait_port(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--feed-len", type=int, default=100)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pages", type=int, default=10)
    ap.add_argument("--record")
    a = ap.parse_args()
    gen = load_generator()
    tmp = tempfile.mkdtemp(prefix="session-bench-")
    log = open(os.path.join(tmp, "servers.log"), "w")
    data = ["--users", str(a.users), "--feed-len", str(a.feed_len)]
    configs = {"A moves": [], "A1 moves-1": ["--move-after", "1"], "B no-moves": ["--no-move-connections"], "C nginx-2": None}
    results = {k: [] for k in configs}
    raw = []
    for r in range(a.rounds):
        for name, flags in configs.items():
            port = free_port()
            if flags is None:
                prefix = os.path.join(tmp, f"nginx-{r}")
                os.makedirs(prefix)
                open(os.path.join(prefix, "nginx.conf"), "w").write(
                    f"worker_processes 2;\ndaemon off;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n"
                    f"events {{ worker_connections 4096; }}\nhttp {{\n access_log off;\n"
                    f" keepalive_requests 1000000;\n server {{\n  listen 127.0.0.1:{port} reuseport;\n"
                    f"  location / {{ default_type application/json; return 200 '{BODY}'; }}\n }}\n}}\n")
                proc = subprocess.Popen(["nginx", "-p", prefix, "-c", f"{prefix}/nginx.conf"],
                                        stdout=subprocess.DEVNULL, stderr=log)
                wait_port(port)
                kids = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
                pids = [proc.pid] + [int(k) for k in kids]
            else:
                proc = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}", "--shards", "2"] + data + flags,
                                        stdout=subprocess.PIPE, stderr=log, text=True)
                line = proc.stdout.readline()
                assert line.startswith("listening on"), line
                pids = [proc.pid]
            try:
                before = ticks(pids)
                out = subprocess.run([gen, "--addr", f"127.0.0.1:{port}", "--connections", str(a.connections),
                                      "--threads", str(a.threads), "--duration", str(a.duration),
                                      "--pages", str(a.pages), "--users", str(a.users)],
                                     capture_output=True, text=True, check=True).stdout
                used = ticks(pids) - before
                load = json.loads(out.strip().splitlines()[-1])
                row = {"round": r, "config": name, "rps": load["rps"], "requests": load["requests"],
                       "cpu_us_per_req": used / TICK * 1e6 / max(load["requests"], 1),
                       "client_p50_us": load["p50_us"], "client_p99_us": load["p99_us"],
                       "errors": load["errors"], "not_2xx": load["not_2xx"], "sessions": load["sessions"]}
                if flags is not None:
                    m = get(port, "/metrics")
                    feed = metric(m, "shardfeed_requests_total")
                    row["forwarded_share"] = metric(m, "shardfeed_forwarded_out_total") / max(feed, 1)
                    row["moved"] = int(metric(m, "shardfeed_connections_moved_total"))
                    st = json.loads(get(port, "/stats"))["all"]
                    row["local_p50_us"] = st["local_latency_us"]["p50"]
                    row["local_p99_us"] = st["local_latency_us"]["p99"]
                    row["forwarded_p50_us"] = st["forwarded_latency_us"]["p50"]
                    row["forwarded_p99_us"] = st["forwarded_latency_us"]["p99"]
                    row["local_pages"] = st["local_latency_us"]["count"]
                    row["forwarded_pages"] = st["forwarded_latency_us"]["count"]
                results[name].append(row)
                raw.append({"row": row, "load": load})
                print(json.dumps(row), flush=True)
            finally:
                proc.send_signal(signal.SIGQUIT if flags is None else signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def med(rows, key, fmt="{:.0f}"):
        xs = [x[key] for x in rows if key in x]
        if not xs:
            return "-"
        return f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"

    lines = ["| configuration | requests/s | CPU us/request | client p99 us | forwarded share | moved | local p99 us | forwarded p99 us |",
             "|---|---|---|---|---|---|---|---|"]
    for name, rows in results.items():
        lines.append(f"| {name} | {med(rows, 'rps')} | {med(rows, 'cpu_us_per_req', '{:.1f}')} | {med(rows, 'client_p99_us')} | "
                     f"{med(rows, 'forwarded_share', '{:.3f}')} | {med(rows, 'moved')} | {med(rows, 'local_p99_us')} | "
                     f"{med(rows, 'forwarded_p99_us')} |")
    # Ratios of each round's pair (same round, adjacent in time).
    ratio = lambda x, y: [p["rps"] / q["rps"] for p, q in zip(results[x], results[y])]
    lines.append("")
    for x, y in (("A moves", "B no-moves"), ("A1 moves-1", "B no-moves"), ("A moves", "C nginx-2"),
                 ("A1 moves-1", "C nginx-2"), ("B no-moves", "C nginx-2")):
        rs = ratio(x, y)
        lines.append(f"requests/s {x} / {y}: median {statistics.median(rs):.2f} (per round: "
                     + ", ".join(f"{v:.2f}" for v in rs) + ")")
    summary = "\n".join(lines)
    print(summary)
    if a.record:
        os.makedirs(a.record, exist_ok=True)
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        open(os.path.join(a.record, "summary.txt"), "w").write(summary + "\n")
        open(os.path.join(a.record, "runs.json"), "w").write(json.dumps(raw, indent=1))
        open(os.path.join(a.record, "commands.txt"), "w").write(" ".join(sys.argv) + f"\ncommit {commit}\n")
        machine = {"kernel": platform.release(), "cpus": os.cpu_count(),
                   "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), ""),
                   "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
                   "load": f"benches/session_load.rs --threads {a.threads} --connections {a.connections}, "
                           f"{a.pages} pages per session, on the same 2 vCPUs as the servers"}
        open(os.path.join(a.record, "machine.json"), "w").write(json.dumps(machine, indent=1))


main()
