import os, mmap, time, sys
path = sys.argv[1]; dur = float(sys.argv[2])
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
SIZE = 16 << 20
buf = mmap.mmap(-1, 1 << 20); buf.write(b"\0" * (1 << 20))
for off in range(0, SIZE, 1 << 20): os.pwritev(fd, [buf], off)
os.fdatasync(fd)
def q(l, p): return sorted(l)[min(len(l)-1, int(len(l)*p))]*1e6
b = mmap.mmap(-1, 4096); b.write(b"x" * 4096)
w = []; s = []; off = 0; end = time.monotonic() + dur
while time.monotonic() < end:
    t = time.monotonic(); os.pwritev(fd, [b], off); t1 = time.monotonic(); os.fdatasync(fd); t2 = time.monotonic()
    w.append(t1 - t); s.append(t2 - t1); off = (off + 4096) % SIZE
print(f"{sys.argv[3]}: ops/s={len(w)/dur:.0f} write p50={q(w,.5):.0f} p90={q(w,.9):.0f} sync p50={q(s,.5):.0f} p90={q(s,.9):.0f} p99={q(s,.99):.0f}", flush=True)
os.close(fd); os.unlink(path)
