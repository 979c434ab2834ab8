import os, mmap, threading, time, sys
path = sys.argv[1]; dur = float(sys.argv[2])
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
SIZE = 64 << 20
buf = mmap.mmap(-1, 1 << 20); buf.write(b"\0" * (1 << 20))
if os.fstat(fd).st_size < SIZE:
    for off in range(0, SIZE, 1 << 20): os.pwritev(fd, [buf], off)
    os.fdatasync(fd)
def worker(i, n, out):
    b = mmap.mmap(-1, 4096); b.write(b"x" * 4096)
    lat = []; off = i * (SIZE // n); end = time.monotonic() + dur
    while time.monotonic() < end:
        t = time.monotonic(); os.pwritev(fd, [b], off); os.fdatasync(fd); lat.append(time.monotonic() - t)
        off += 4096
    out[i] = lat
for n in (1, 2, 4, 1, 2, 4):
    out = {}; ts = [threading.Thread(target=worker, args=(i, n, out)) for i in range(n)]
    [t.start() for t in ts]; [t.join() for t in ts]
    lat = sorted(x for v in out.values() for x in v)
    print(f"threads={n} ops/s={len(lat)/dur:.0f} p50={lat[len(lat)//2]*1e6:.0f}us p90={lat[int(len(lat)*.9)]*1e6:.0f}us p99={lat[int(len(lat)*.99)]*1e6:.0f}us", flush=True)
os.close(fd); os.unlink(path)
