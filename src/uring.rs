//! io_uring rings without a rescheduling interrupt per completion.
//!
//! glommio 0.9 creates its rings with no setup flags and offers no way to
//! pass any. Without `IORING_SETUP_COOP_TASKRUN` (Linux 5.19), a completion
//! raised on another CPU (a client's request arriving on a socket this shard
//! polls, a peer's eventfd write) interrupts the shard with a rescheduling
//! IPI so that it posts the completion at once. A shard that is already
//! running gains nothing from that: it enters the kernel for its next
//! `recv`/`send` within microseconds and the completion is posted then. A
//! sleeping shard is woken either way. With the flag the kernel only sets a
//! flag on the thread (`TWA_SIGNAL_NO_IPI`); the completion is posted at the
//! shard's next system call or timer tick. Other io_uring runtimes set the
//! flag by default (compio, netty, fs2-io_uring); liburing's maintainers call
//! it safe for any ring that is not SQPOLL.
//!
//! Measured on the 2-vCPU development VM (`scripts/bench.sh --quick`, three
//! pairs, see the README's Performance notes): the IPI handling was 7% of one
//! shard's CPU time in the guest's `perf` profile (the VM exits behind it do
//! not show there), and the flag cut CPU per request by 14-27% at 1 shard and
//! 18-32% at 2 shards.
//!
//! The flag is added by interposing libc's `syscall()` in this executable:
//! glommio's bundled liburing calls `syscall(__NR_io_uring_setup, ...)`, which
//! the static link resolves to the definition below before libc's. Every
//! other call is passed to the kernel unchanged, with libc's `errno`
//! convention. Only `x86_64` Linux has the interposer; elsewhere rings keep
//! glommio's defaults and [`report`] says so. Rings that ask for any flag of
//! their own (glommio's `IOPOLL` ring for NVMe polling) are left alone, and a
//! kernel that refuses the flag (`EINVAL`, before 5.19) gets the call again
//! without it.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// `IORING_SETUP_COOP_TASKRUN` from `<linux/io_uring.h>`.
const IORING_SETUP_COOP_TASKRUN: u32 = 1 << 8;

/// `struct io_uring_params` of `<linux/io_uring.h>` (kernel ABI since 5.1,
/// 120 bytes, 8-byte aligned): what `io_uring_setup(2)` reads and, on
/// success, copies back.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IoUringParams {
    pub sq_entries: u32,
    pub cq_entries: u32,
    pub flags: u32,
    pub sq_thread_cpu: u32,
    pub sq_thread_idle: u32,
    pub features: u32,
    pub wq_fd: u32,
    pub resv: [u32; 3],
    /// `struct io_sqring_offsets`, filled in by the kernel (40 bytes).
    pub sq_off: [u64; 5],
    /// `struct io_cqring_offsets`, filled in by the kernel (40 bytes).
    pub cq_off: [u64; 5],
}

const _: () = {
    assert!(std::mem::size_of::<IoUringParams>() == 120);
    assert!(std::mem::align_of::<IoUringParams>() == 8);
    assert!(std::mem::offset_of!(IoUringParams, flags) == 8);
    assert!(std::mem::offset_of!(IoUringParams, sq_off) == 40);
    assert!(std::mem::offset_of!(IoUringParams, cq_off) == 80);
};

static ENABLED: AtomicBool = AtomicBool::new(false);
static REFUSED: AtomicBool = AtomicBool::new(false);
static COOP_RINGS: AtomicU32 = AtomicU32::new(0);
static OTHER_RINGS: AtomicU32 = AtomicU32::new(0);

/// Rings created from now on get `IORING_SETUP_COOP_TASKRUN` (where the
/// interposer exists and the kernel accepts the flag).
pub fn enable_coop_taskrun() {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        // Taking the interposer's address keeps its object in the link even in
        // builds that split the crate into many codegen units.
        std::hint::black_box(interpose::syscall as interpose::Syscall);
    }
    ENABLED.store(true, Ordering::SeqCst);
}

/// What happened to the rings created so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingReport {
    pub requested: bool,
    pub available: bool,
    pub refused_by_kernel: bool,
    pub coop_rings: u32,
    pub other_rings: u32,
}

pub fn report() -> RingReport {
    RingReport {
        requested: ENABLED.load(Ordering::SeqCst),
        available: cfg!(all(target_os = "linux", target_arch = "x86_64")),
        refused_by_kernel: REFUSED.load(Ordering::SeqCst),
        coop_rings: COOP_RINGS.load(Ordering::SeqCst),
        other_rings: OTHER_RINGS.load(Ordering::SeqCst),
    }
}

impl fmt::Display for RingReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.coop_rings + self.other_rings;
        if !self.requested {
            write!(f, "io_uring: COOP_TASKRUN off (--no-coop-taskrun)")
        } else if !self.available {
            write!(
                f,
                "io_uring: COOP_TASKRUN not available on this architecture"
            )
        } else if self.refused_by_kernel {
            write!(
                f,
                "io_uring: the kernel refused COOP_TASKRUN (it needs Linux 5.19): \
                 every completion interrupts its shard"
            )
        } else {
            write!(
                f,
                "io_uring: COOP_TASKRUN on {} of {total} rings (IOPOLL rings keep their own flags)",
                self.coop_rings
            )
        }
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod interpose {
    use super::*;
    use libc::{c_int, c_long};

    pub type Syscall =
        unsafe extern "C" fn(c_long, c_long, c_long, c_long, c_long, c_long, c_long) -> c_long;

    /// The kernel's `io_uring_setup(entries, params)`; `flags` is the third
    /// `u32` of `struct io_uring_params` (kernel ABI, stable since 5.1).
    const FLAGS_INDEX: usize = 2;

    /// libc's `syscall()`, defined here so that the io_uring setup calls of
    /// glommio's liburing pass through [`io_uring_setup`].
    ///
    /// Callers see libc's variadic `long syscall(long, ...)`. On x86_64 a
    /// variadic call passes its integer arguments exactly as this fixed
    /// seven-argument function receives them (six registers, then the stack),
    /// and libc's own implementation reads the same six argument slots
    /// whatever the call passed; the kernel ignores the ones a system call
    /// does not take.
    ///
    /// # Safety
    /// As for libc's `syscall()`: the arguments must be valid for system
    /// call `n`.
    #[no_mangle]
    pub unsafe extern "C" fn syscall(
        n: c_long,
        a1: c_long,
        a2: c_long,
        a3: c_long,
        a4: c_long,
        a5: c_long,
        a6: c_long,
    ) -> c_long {
        if n == libc::SYS_io_uring_setup && a2 != 0 {
            return io_uring_setup(a1, a2 as *mut u32);
        }
        with_errno(raw_syscall(n, [a1, a2, a3, a4, a5, a6]))
    }

    unsafe fn io_uring_setup(entries: c_long, params: *mut u32) -> c_long {
        let call = || {
            raw_syscall(
                libc::SYS_io_uring_setup,
                [entries, params as c_long, 0, 0, 0, 0],
            )
        };
        let flags = params.add(FLAGS_INDEX);
        let asked = flags.read();
        // Rings made before `enable_coop_taskrun` (the host check's probe) are
        // neither changed nor counted; rings with flags of their own are left
        // as asked.
        let enabled = ENABLED.load(Ordering::Relaxed);
        let try_flag = enabled && asked == 0 && !REFUSED.load(Ordering::Relaxed);
        let mut fd = -1;
        if try_flag {
            flags.write(IORING_SETUP_COOP_TASKRUN);
            fd = call();
        }
        let with_flag = fd >= 0;
        if !with_flag {
            // Not necessarily the flag's fault: blame it only if the call works
            // without it.
            let refused = try_flag && fd == -(libc::EINVAL as c_long);
            flags.write(asked);
            fd = call();
            if fd >= 0 && refused {
                REFUSED.store(true, Ordering::Relaxed);
            }
        }
        if fd >= 0 && enabled {
            let count = if with_flag { &COOP_RINGS } else { &OTHER_RINGS };
            count.fetch_add(1, Ordering::Relaxed);
        }
        with_errno(fd)
    }

    /// libc's convention: -1 and `errno` for results in -4095..=-1.
    unsafe fn with_errno(ret: c_long) -> c_long {
        if (-4095..0).contains(&ret) {
            *libc::__errno_location() = -ret as c_int;
            -1
        } else {
            ret
        }
    }

    #[inline(always)]
    unsafe fn raw_syscall(n: c_long, a: [c_long; 6]) -> c_long {
        let ret: c_long;
        std::arch::asm!(
            "syscall",
            inlateout("rax") n => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
        ret
    }
}

#[cfg(all(test, target_os = "linux", target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Calls `io_uring_setup` the way liburing does, closes the ring, and
    /// returns the flags the kernel saw (it copies the parameters back).
    fn setup(flags: u32, cq_entries: u32) -> std::io::Result<u32> {
        let mut params = [0u32; 30]; // struct io_uring_params is 120 bytes
        params[1] = cq_entries;
        params[2] = flags;
        // SAFETY: io_uring_setup reads and writes only `params`.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_io_uring_setup,
                4 as libc::c_long,
                params.as_mut_ptr(),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is the ring we just made.
        unsafe { libc::close(fd as i32) };
        Ok(params[2])
    }

    #[test]
    fn rings_get_the_flag_once_enabled_and_other_calls_pass_through() {
        // Other system calls through the interposer keep libc's convention.
        let pid = unsafe { libc::syscall(libc::SYS_getpid) };
        assert_eq!(pid, std::process::id() as libc::c_long);
        let bad = unsafe { libc::syscall(libc::SYS_close, -1 as libc::c_long) };
        assert_eq!(bad, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EBADF)
        );

        enable_coop_taskrun();
        let before = report();
        let flags = setup(0, 0).expect("io_uring_setup");
        let after = report();
        if after.refused_by_kernel {
            assert_eq!(flags & IORING_SETUP_COOP_TASKRUN, 0);
        } else {
            assert_ne!(flags & IORING_SETUP_COOP_TASKRUN, 0, "flags {flags:#x}");
            assert!(after.coop_rings > before.coop_rings);
        }

        // A ring with flags of its own is left as asked (CQSIZE needs a size).
        let cqsize = 1 << 3;
        assert_eq!(
            setup(cqsize, 8).expect("io_uring_setup with CQSIZE"),
            cqsize
        );

        // Errors come back as -1 and errno, as from libc.
        let err = setup(1 << 31, 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }
}
