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
//! # The hook
//!
//! glommio creates every ring through its bundled liburing 2.0:
//! `io_uring_queue_init_params` (`liburing/src/setup.c`) calls
//! `__sys_io_uring_setup(entries, p)`, a global function of its own object
//! file (`liburing/src/syscall.c`) that is `return syscall(__NR_io_uring_setup,
//! entries, p);`: the ring's descriptor, or -1 with `errno`. `build.rs` links
//! this package's binary, tests and benches with
//! `-Wl,--wrap=__sys_io_uring_setup`, so that setup.o's call, and only it,
//! reaches [`__wrap___sys_io_uring_setup`] below. Nothing else is redirected:
//! libc's `syscall()`, std's futex calls and glommio's other io_uring calls
//! go where they always went. The hook keeps liburing's convention and issues
//! the same system call through libc, adding `IORING_SETUP_COOP_TASKRUN` once
//! [`enable_coop_taskrun`] has been called. Rings that ask for any flag of
//! their own (glommio's `IOPOLL` ring for NVMe polling) are left alone, and a
//! kernel that refuses the flag (`EINVAL`, before 5.19) gets the call again
//! without it (`retry_flags`, and `create` for the whole sequence).
//!
//! Crates that use shardfeed as a library (`fuzz/`) link without the
//! `--wrap` (a build script's link arguments apply to its own package only):
//! they link as before, their rings are glommio's defaults, and the hook is
//! code nobody calls. [`report`] says so if such a program starts shards.
//!
//! If a glommio upgrade bundles a newer liburing, whose system-call wrappers
//! became inline functions returning `-errno`, the wrap silently matches
//! nothing: then the start-up line says that no ring went through the hook,
//! and the black-box test `io_uring_rings_report_coop_taskrun`
//! (tests/cli.rs) and the unit test below fail.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use libc::{c_int, c_long, c_uint};

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
static HOOKED: AtomicBool = AtomicBool::new(false);
static REFUSED: AtomicBool = AtomicBool::new(false);
static COOP_RINGS: AtomicU32 = AtomicU32::new(0);
static OTHER_RINGS: AtomicU32 = AtomicU32::new(0);

/// Rings created from now on get `IORING_SETUP_COOP_TASKRUN` (where the
/// hook is linked in and the kernel accepts the flag).
pub fn enable_coop_taskrun() {
    ENABLED.store(true, Ordering::SeqCst);
}

/// What happened to the rings created so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingReport {
    /// [`enable_coop_taskrun`] was called.
    pub requested: bool,
    /// At least one ring was created through the hook: this executable was
    /// linked with `--wrap=__sys_io_uring_setup`.
    pub hooked: bool,
    pub refused_by_kernel: bool,
    /// Rings created with the flag once it was enabled.
    pub coop_rings: u32,
    /// Rings created without it once it was enabled (their own flags, or
    /// refused).
    pub other_rings: u32,
}

pub fn report() -> RingReport {
    RingReport {
        requested: ENABLED.load(Ordering::SeqCst),
        hooked: HOOKED.load(Ordering::SeqCst),
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
        } else if !self.hooked {
            write!(
                f,
                "io_uring: COOP_TASKRUN not applied: no ring went through the setup hook \
                 (linked without --wrap=__sys_io_uring_setup, see src/uring.rs)"
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

/// The flags to create a ring with first: those it asks for, plus
/// COOP_TASKRUN for a ring that asks for none once the flag is `enabled`,
/// unless the kernel has `refused` it already.
fn first_flags(asked: u32, enabled: bool, refused: bool) -> u32 {
    if enabled && !refused && asked == 0 {
        IORING_SETUP_COOP_TASKRUN
    } else {
        asked
    }
}

/// Whether to create a ring again after a first try with `tried` flags that
/// gave `first` (the descriptor, or `errno`), and with which flags. Only
/// `EINVAL` for a ring we added the flag to is retried, with the flags it
/// asked for; any other error is not about the flag and goes back to glommio
/// as it is. (`EINVAL` may also mean other bad parameters: then the retry
/// fails the same way.)
fn retry_flags(asked: u32, tried: u32, first: Result<c_int, c_int>) -> Option<u32> {
    (tried != asked && first == Err(libc::EINVAL)).then_some(asked)
}

/// One ring's creation, as [`create`] ran it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Created {
    /// The last try's result: the descriptor, or `errno`.
    result: Result<c_int, c_int>,
    /// The last try's flags.
    flags: u32,
    /// The kernel refused the flag: the first try failed and the retry
    /// without it worked.
    refused: bool,
}

/// Creates a ring that asks for `asked` flags with `setup(flags)` (the
/// system call, or a model of the kernel in the tests), following
/// [`first_flags`] and [`retry_flags`].
fn create(
    asked: u32,
    enabled: bool,
    refused: bool,
    mut setup: impl FnMut(u32) -> Result<c_int, c_int>,
) -> Created {
    let flags = first_flags(asked, enabled, refused);
    let result = setup(flags);
    match retry_flags(asked, flags, result) {
        None => Created {
            result,
            flags,
            refused: false,
        },
        Some(flags) => {
            let result = setup(flags);
            Created {
                result,
                flags,
                refused: result.is_ok(),
            }
        }
    }
}

/// liburing's `__sys_io_uring_setup`, which `--wrap` sends here: the same
/// system call, issued the same way (libc's `syscall()`: the descriptor, or
/// -1 and `errno`), with the flag added as `create` decides. Counts the
/// rings created once the flag is enabled. On success `*p` holds the flags
/// the ring has, as the kernel copied them back; on failure, those asked for.
///
/// # Safety
/// As for `io_uring_setup(2)`: `p` points to a valid, writable
/// `struct io_uring_params`.
#[no_mangle]
pub unsafe extern "C" fn __wrap___sys_io_uring_setup(
    entries: c_uint,
    p: *mut IoUringParams,
) -> c_int {
    HOOKED.store(true, Ordering::Relaxed);
    let enabled = ENABLED.load(Ordering::Relaxed);
    // SAFETY: the caller's `p` is valid for reads and writes.
    let asked = unsafe { (*p).flags };
    let created = create(asked, enabled, REFUSED.load(Ordering::Relaxed), |flags| {
        // SAFETY: as above; the kernel reads and writes only `*p`.
        let fd = unsafe {
            (*p).flags = flags;
            libc::syscall(libc::SYS_io_uring_setup, entries as c_long, p)
        };
        if fd < 0 {
            Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL))
        } else {
            Ok(fd as c_int)
        }
    });
    if created.refused {
        REFUSED.store(true, Ordering::Relaxed);
    }
    match created.result {
        Ok(fd) => {
            if enabled {
                let coop = created.flags & IORING_SETUP_COOP_TASKRUN != 0;
                let count = if coop { &COOP_RINGS } else { &OTHER_RINGS };
                count.fetch_add(1, Ordering::Relaxed);
            }
            fd
        }
        Err(errno) => {
            // SAFETY: `p` as above; the calling thread's errno.
            unsafe {
                (*p).flags = asked;
                *libc::__errno_location() = errno;
            }
            -1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOP: u32 = IORING_SETUP_COOP_TASKRUN;
    const IOPOLL: u32 = 1 << 0;
    const CQSIZE: u32 = 1 << 3;

    #[test]
    fn first_try_adds_the_flag_only_to_rings_without_flags_once_enabled() {
        // (asked, enabled, refused before) -> flags of the first try
        for (asked, enabled, refused, flags) in [
            (0, true, false, COOP),
            (0, false, false, 0),
            (0, true, true, 0),
            (IOPOLL, true, false, IOPOLL),
            (CQSIZE, true, false, CQSIZE),
            (IOPOLL, false, false, IOPOLL),
        ] {
            assert_eq!(
                first_flags(asked, enabled, refused),
                flags,
                "asked {asked:#x} enabled {enabled} refused {refused}"
            );
        }
    }

    #[test]
    fn only_einval_for_the_added_flag_is_retried_and_without_it() {
        // (asked, tried, first result) -> retry with
        for (asked, tried, first, retry) in [
            (0, COOP, Ok(5), None),
            (0, COOP, Err(libc::EINVAL), Some(0)),
            (0, COOP, Err(libc::ENOMEM), None),
            (0, COOP, Err(libc::EPERM), None),
            (0, COOP, Err(libc::ENOSYS), None),
            (0, 0, Err(libc::EINVAL), None),
            (IOPOLL, IOPOLL, Err(libc::EINVAL), None),
            (IOPOLL, IOPOLL, Ok(5), None),
        ] {
            assert_eq!(
                retry_flags(asked, tried, first),
                retry,
                "asked {asked:#x} tried {tried:#x} first {first:?}"
            );
        }
    }

    /// A kernel before 5.19, which knows no COOP_TASKRUN.
    fn old_kernel(calls: &mut Vec<u32>) -> impl FnMut(u32) -> Result<c_int, c_int> + '_ {
        |flags| {
            calls.push(flags);
            if flags & COOP != 0 {
                Err(libc::EINVAL)
            } else {
                Ok(7)
            }
        }
    }

    #[test]
    fn a_kernel_that_refuses_the_flag_gets_the_call_again_without_it() {
        let mut calls = Vec::new();
        let created = create(0, true, false, old_kernel(&mut calls));
        assert_eq!(
            created,
            Created {
                result: Ok(7),
                flags: 0,
                refused: true
            }
        );
        assert_eq!(calls, [COOP, 0]);

        // Once refused, later rings do not try again.
        let mut calls = Vec::new();
        let created = create(0, true, true, old_kernel(&mut calls));
        assert_eq!((created.result, created.refused), (Ok(7), false));
        assert_eq!(calls, [0]);

        // A ring with flags of its own is created once, as asked.
        let mut calls = Vec::new();
        assert_eq!(
            create(IOPOLL, true, false, old_kernel(&mut calls)).result,
            Ok(7)
        );
        assert_eq!(calls, [IOPOLL]);
    }

    #[test]
    fn errors_that_are_not_about_the_flag_are_not_retried() {
        // A kernel that allows no io_uring at all, or whose retry fails too.
        let mut calls = Vec::new();
        let created = create(0, true, false, |flags| {
            calls.push(flags);
            Err(libc::EPERM)
        });
        assert_eq!((created.result, created.refused), (Err(libc::EPERM), false));
        assert_eq!(calls, [COOP]);

        let mut calls = Vec::new();
        let created = create(0, true, false, |flags| {
            calls.push(flags);
            Err(libc::EINVAL)
        });
        assert_eq!(
            created,
            Created {
                result: Err(libc::EINVAL),
                flags: 0,
                refused: false
            }
        );
        assert_eq!(calls, [COOP, 0]);
    }

    /// Calls the hook as liburing does, closes the ring, and returns the
    /// flags the kernel saw (it copies the parameters back).
    fn setup(flags: u32, cq_entries: u32) -> std::io::Result<u32> {
        let mut params = IoUringParams {
            flags,
            cq_entries,
            ..IoUringParams::default()
        };
        // SAFETY: `params` is valid for the call.
        let fd = unsafe { __wrap___sys_io_uring_setup(4, &mut params) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is the ring we just made.
        unsafe { libc::close(fd) };
        Ok(params.flags)
    }

    /// The hook against the real kernel, then glommio's own rings through
    /// the `--wrap` of this test binary's link.
    #[test]
    fn rings_get_the_flag_once_enabled() {
        enable_coop_taskrun();
        let before = report();
        let flags = setup(0, 0).expect("io_uring_setup");
        let after = report();
        if after.refused_by_kernel {
            assert_eq!(flags & COOP, 0);
            assert!(after.other_rings > before.other_rings);
        } else {
            assert_ne!(flags & COOP, 0, "flags {flags:#x}");
            assert!(after.coop_rings > before.coop_rings);
        }

        // A ring with flags of its own is left as asked (CQSIZE needs a size).
        assert_eq!(setup(CQSIZE, 8).expect("with CQSIZE"), CQSIZE);

        // Errors come back as -1 and errno, as from liburing's function.
        let err = setup(1 << 31, 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));

        // glommio's rings: a probe ring, then two sleepable rings and an
        // IOPOLL ring per executor.
        let before = report();
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(512 << 10)
            .spawn(|| async {})
            .expect("executor")
            .join()
            .expect("executor ran");
        let after = report();
        assert!(after.hooked);
        let (coop, other) = (
            after.coop_rings - before.coop_rings,
            after.other_rings - before.other_rings,
        );
        if after.refused_by_kernel {
            assert!(other >= 3, "{after:?}");
        } else {
            assert!(coop >= 2 && other >= 1, "{after:?}");
        }
    }
}
