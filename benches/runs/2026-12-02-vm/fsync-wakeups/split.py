import os, mmap, threading, time, sys
path = sys.argv[1]; dur = float(sys.argv[2])
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
SIZE = 64 << 20
buf = mmap.mmap(-1, 1 << 20); buf.write(b"\0" * (1 << 20))
for off in range(0, SIZE, 1 << 20): os.pwritev(fd, [buf], off)
os.fdatasync(fd)
def q(l, p): return l[min(len(l)-1, int(len(l)*p))]*1e6
def worker(i, n, out):
    b = mmap.mmap(-1, 4096); b.write(b"x" * 4096)
    w = []; s = []; off = i * (SIZE // n); end = time.monotonic() + dur
    while time.monotonic() < end:
        t = time.monotonic(); os.pwritev(fd, [b], off); t1 = time.monotonic(); os.fdatasync(fd); t2 = time.monotonic()
        w.append(t1 - t); s.append(t2 - t1); off += 4096
    out[i] = (w, s)
for n in (1, 2, 1, 2):
    out = {}; ts = [threading.Thread(target=worker, args=(i, n, out)) for i in range(n)]
    [t.start() for t in ts]; [t.join() for t in ts]
    w = sorted(x for v in out.values() for x in v[0]); s = sorted(x for v in out.values() for x in v[1])
    print(f"threads={n} ops/s={len(w)/dur:.0f} write p50={q(w,.5):.0f} p90={q(w,.9):.0f} sync p50={q(s,.5):.0f} p90={q(s,.9):.0f} p99={q(s,.99):.0f}", flush=True)
os.close(fd); os.unlink(path)
