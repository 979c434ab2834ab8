//! What the host must provide, checked before anything starts, so that a
//! missing piece is one clear message instead of a hang or a backtrace.

use std::io;

use crate::uring::IoUringParams;

/// glommio's own floor for `RLIMIT_MEMLOCK`: below it, it refuses to start.
pub const MIN_MEMLOCK: u64 = 512 * 1024;

/// Parses a CPU list such as `0-3,8` (ranges inclusive, repeats allowed so
/// that tests can put two shards on one CPU).
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let bad = |part: &str| format!("invalid CPU list `{s}` at `{part}`: use e.g. `0-3,8`");
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let lo: usize = lo.trim().parse().map_err(|_| bad(part))?;
        let hi: usize = hi.trim().parse().map_err(|_| bad(part))?;
        if lo > hi {
            return Err(bad(part));
        }
        cpus.extend(lo..=hi);
    }
    Ok(cpus)
}

/// CPUs this process may run on (its affinity mask), ascending.
pub fn available_cpus() -> Vec<usize> {
    let mut cpus: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    cpus.sort_unstable();
    cpus
}

/// Chooses one CPU per shard from `--cpus` and `--shards`.
pub fn choose_cpus(
    cpus: Option<&str>,
    shards: Option<usize>,
    available: &[usize],
) -> Result<Vec<usize>, String> {
    let listed = match cpus {
        Some(list) => {
            let listed = parse_cpu_list(list)?;
            if let Some(cpu) = listed.iter().find(|c| !available.contains(c)) {
                return Err(format!(
                    "CPU {cpu} in --cpus is not available to this process (available: {}): \
                     choose CPUs from that list",
                    format_cpus(available)
                ));
            }
            listed
        }
        None => available.to_vec(),
    };
    if listed.is_empty() {
        return Err("no CPU available to run a shard on".into());
    }
    match shards {
        Some(0) => Err("--shards must be at least 1".into()),
        Some(n) if n > listed.len() => Err(format!(
            "--shards {n} is more than the {} CPUs available ({}): lower --shards or list \
             more CPUs with --cpus",
            listed.len(),
            format_cpus(&listed)
        )),
        Some(n) => Ok(listed[..n].to_vec()),
        None => Ok(listed),
    }
}

fn format_cpus(cpus: &[usize]) -> String {
    cpus.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Creates and closes a tiny io_uring, to say clearly why it fails if it does.
pub fn check_io_uring() -> Result<(), String> {
    // All zero means "defaults".
    let mut params = IoUringParams::default();
    // SAFETY: io_uring_setup reads and writes only `params`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            4 as libc::c_long,
            &mut params as *mut IoUringParams,
        )
    };
    if fd >= 0 {
        // SAFETY: `fd` is a descriptor we own.
        unsafe { libc::close(fd as i32) };
        return Ok(());
    }
    let err = io::Error::last_os_error();
    Err(match err.raw_os_error() {
        Some(libc::ENOSYS) => {
            "this kernel has no io_uring: shardfeed needs Linux 5.8 or newer with io_uring".into()
        }
        Some(libc::EPERM) => {
            "io_uring is not permitted here: check `sysctl kernel.io_uring_disabled` \
             (must be 0, or 1 with this user in kernel.io_uring_group), and run containers with a \
             seccomp profile that allows io_uring (Docker's default one blocks it)"
                .into()
        }
        Some(libc::ENOMEM) => format!(
            "cannot create an io_uring ({err}): raise the locked-memory limit (`ulimit -l`, \
             systemd LimitMEMLOCK)"
        ),
        _ => format!("cannot create an io_uring: {err}"),
    })
}

/// Fails when the locked-memory limit is below what glommio needs to start.
pub fn check_memlock() -> Result<(), String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Ok(());
    }
    if lim.rlim_cur == libc::RLIM_INFINITY || lim.rlim_cur >= MIN_MEMLOCK {
        return Ok(());
    }
    Err(format!(
        "the locked-memory limit is {} KiB; shardfeed (io_uring) needs at least {} KiB: raise it \
         with `ulimit -l 8192` in the shell, or LimitMEMLOCK=8M in the systemd unit",
        lim.rlim_cur / 1024,
        MIN_MEMLOCK / 1024
    ))
}

/// Raises the open-files soft limit to the hard limit: every connection is a
/// descriptor, and the default soft limit (1024) is far too low for a server.
/// Memory the kernel says is available for new allocations without
/// swapping (`MemAvailable` of `/proc/meminfo`), in bytes.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Fails when `bytes` (for `what`) is more than the host has available,
/// with a message that says so and what to change, instead of letting the
/// allocation abort the process (or the OOM killer end it) later.
pub fn check_memory(bytes: u64, what: &str, change: &str) -> Result<(), String> {
    match available_memory() {
        Some(avail) if bytes > avail => Err(format!(
            "{what} needs about {} of memory, and this host has {} available: {change}",
            gib(bytes),
            gib(avail)
        )),
        _ => Ok(()),
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Lowers the calling thread's scheduling priority to nice 10 (and that of
/// the threads it starts after this, which inherit it): work beside the
/// shards (a reload's loaders, freeing an old feed) then gets about a tenth
/// of a CPU that a shard keeps busy, and all of one that it leaves idle.
/// Not nice 19: against a saturated shard that is ~1.5 %, and a 5 s load
/// would take minutes. Best effort: on failure the work runs at normal
/// priority, which is only harder on the shards.
pub fn lower_thread_priority() {
    // SAFETY: setpriority has no memory preconditions; `who` 0 with
    // PRIO_PROCESS is the calling thread on Linux.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

pub fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain rlimit calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The open-files soft limit, if there is one.
pub fn nofile_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    Some(lim.rlim_cur)
}

/// Descriptors a server needs besides its connections: listeners, io_uring
/// rings, eventfds, the feed files.
const NOFILE_RESERVE: u64 = 64;

/// A warning if `max_connections` per shard over `shards` shards cannot all
/// be open under the open-files limit (each connection is a descriptor).
pub fn nofile_warning(max_connections: usize, shards: usize) -> Option<String> {
    nofile_shortfall(max_connections, shards, nofile_limit()?)
}

fn nofile_shortfall(max_connections: usize, shards: usize, limit: u64) -> Option<String> {
    let wanted = (max_connections as u64).saturating_mul(shards as u64);
    if wanted.saturating_add(NOFILE_RESERVE) <= limit {
        return None;
    }
    Some(format!(
        "--max-connections {max_connections} x {shards} shards = {wanted} connections, but the \
         open-files limit is {limit}: connections beyond it fail to be accepted. Raise the limit \
         (`ulimit -n`, systemd LimitNOFILE) or lower --max-connections to at most {}",
        limit.saturating_sub(NOFILE_RESERVE) / shards.max(1) as u64
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8").unwrap(), [0, 1, 2, 3, 8]);
        assert_eq!(parse_cpu_list("1").unwrap(), [1]);
        assert_eq!(parse_cpu_list("0,0").unwrap(), [0, 0]);
        for bad in ["", "a", "3-1", "1,", "-1", "1-2-3"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nofile_shortfalls() {
        assert_eq!(nofile_shortfall(10_000, 2, 1 << 20), None);
        let w = nofile_shortfall(60, 2, 48).unwrap();
        assert!(
            w.contains("60 x 2 shards = 120 connections") && w.contains("is 48"),
            "{w}"
        );
        assert!(
            nofile_shortfall(10_000, 2, 20_000).is_some(),
            "no room for the rest"
        );
    }

    #[test]
    fn choosing_cpus() {
        let avail = [0, 1];
        assert_eq!(choose_cpus(None, None, &avail).unwrap(), [0, 1]);
        assert_eq!(choose_cpus(None, Some(1), &avail).unwrap(), [0]);
        assert_eq!(choose_cpus(Some("1"), None, &avail).unwrap(), [1]);
        assert_eq!(choose_cpus(Some("0,0"), Some(2), &avail).unwrap(), [0, 0]);
        let err = choose_cpus(Some("0,7"), None, &avail).unwrap_err();
        assert!(
            err.contains("CPU 7") && err.contains("available: 0,1"),
            "{err}"
        );
        let err = choose_cpus(None, Some(3), &avail).unwrap_err();
        assert!(err.contains("--shards 3"), "{err}");
        assert!(choose_cpus(None, Some(0), &avail).is_err());
    }
}
