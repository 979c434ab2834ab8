import os, mmap, time, resource
path = "/work/dio-test.bin"
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
os.posix_fallocate(fd, 0, 64 << 20)
z = mmap.mmap(-1, 1 << 20); z.write(b"\0" * (1 << 20))
for off in range(0, 64 << 20, 1 << 20): os.pwrite(fd, z, off)
os.fsync(fd)
for size in [4096, 32768, 262144, 1 << 20]:
    buf = mmap.mmap(-1, size); buf.write(b"x" * size)
    n = max(200, (32 << 20) // size)
    r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.time()
    for i in range(n):
        os.pwrite(fd, buf, (i * size) % (64 << 20))
    r1 = resource.getrusage(resource.RUSAGE_SELF); t1 = time.time()
    cpu = (r1.ru_stime - r0.ru_stime + r1.ru_utime - r0.ru_utime) / n * 1e6
    wall = (t1 - t0) / n * 1e6
    print(f"{size >> 10:5d} KiB O_DIRECT writes: {cpu:8.1f} us CPU each ({cpu / (size >> 10):.2f} us/KiB), wall {wall:8.1f} us")
r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.time()
for i in range(200): os.fdatasync(fd)
r1 = resource.getrusage(resource.RUSAGE_SELF); t1=time.time()
print(f"fdatasync (nothing dirty): {(r1.ru_stime - r0.ru_stime)/200*1e6:.1f} us CPU, wall {(t1-t0)/200*1e6:.1f} us")
os.close(fd); os.unlink(path)
