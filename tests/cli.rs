//! Start-up failures: each exits non-zero with one message saying what to
//! change, and no panic.

mod common;

use common::*;
use std::io::Read;
use std::time::Duration;

fn fails_with(out: std::process::Output, wanted: &str) {
    common::fails_with(out, &[wanted]);
}

#[test]
fn bad_flags() {
    let cases: &[(&[&str], &str)] = &[
        (&["--shards", "x"], "invalid value 'x'"),
        (&["--no-such-flag"], "--no-such-flag"),
        (&["--listen", "nowhere"], "invalid value 'nowhere'"),
        (
            &["--listen", "nowhere"],
            "use IP:PORT, [IPv6]:PORT, HOST:PORT, :PORT or PORT",
        ),
        (&["--admin-listen", "x:y"], "`y` is not a port number"),
        (&["--drain", "forever"], "invalid value 'forever'"),
        (&["--shards", "0"], "--shards must be at least 1"),
        (&["--shards", "999"], "--shards 999 is more than"),
        (&["--cpus", "9999"], "CPU 9999 in --cpus is not available"),
        (&["--cpus", "1-x"], "invalid CPU list"),
        (
            &["--default-size", "50", "--max-size", "20"],
            "--default-size must be between 1 and --max-size (20)",
        ),
        (&["--max-size", "0"], "--max-size must be between"),
        (
            &["--idle-poll", "fast"],
            "use auto, 0, or a duration such as 200us",
        ),
        (
            &["--idle-poll", "2s"],
            "--idle-poll `2s` must be between 0 and 1s",
        ),
        (
            &["--feed-len", "100", "--items", "10"],
            "--items (10) must be at least --feed-len (100)",
        ),
        // A sync policy with nowhere to keep progress: not silently nothing.
        (&["--fsync", "always"], "--state-dir <DIR>"),
    ];
    for (flags, wanted) in cases {
        let mut args = vec!["serve"];
        args.extend_from_slice(flags);
        fails_with(run(&args), wanted);
    }
}

#[test]
fn unusable_files_name_the_file_and_line() {
    let dir = TempDir::new("cli-files");
    let bad = dir.file("bad.tsv", "1\t1,2,3\n2\t4,5\n3\t6,seven\n");
    fails_with(
        run(&["serve", "--listen", "127.0.0.1:0", "--feed", path_str(&bad)]),
        "bad.tsv:3: item 2: `seven` is not a decimal number",
    );
    let dup = dir.file("dup.tsv", "1\t1\n# again\n1\t2\n");
    fails_with(
        run(&["serve", "--listen", "127.0.0.1:0", "--feed", path_str(&dup)]),
        "dup.tsv:3: user 1 appears a second time",
    );
    fails_with(
        run(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--feed",
            "/nonexistent/feeds.tsv",
        ]),
        "/nonexistent/feeds.tsv: cannot read",
    );
    let (feeds, _) = known_files(&dir);
    let empty_pool = dir.file("pool.txt", "# nothing here\n");
    fails_with(
        run(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--feed",
            path_str(&feeds),
            "--fallback",
            path_str(&empty_pool),
        ]),
        "the fallback file holds no item ids",
    );
}

#[test]
fn low_locked_memory_limit_is_explained() {
    fails_with(
        run_in_shell(
            "ulimit -l 256;",
            &["serve", "--listen", "127.0.0.1:0", "--users", "10"],
        ),
        "raise it with `ulimit -l",
    );
}

#[test]
fn port_in_use_is_an_error_not_a_silent_share() {
    let first = Server::start(&["--shards", "1", "--users", "10"]);
    let addr = first.addr.to_string();
    fails_with(
        run(&["serve", "--listen", &addr, "--users", "10"]),
        "is already in use",
    );
}

/// In a cluster the ports and the shard count come from the cluster file:
/// the errors say to change it there, not `--listen` or `--shards`, which
/// `--cluster` does not take.
#[test]
fn cluster_errors_name_the_cluster_file_not_flags_it_replaces() {
    let dir = TempDir::new("cli-cluster-errors");
    let cpus = std::thread::available_parallelism().unwrap().get();
    let port = free_ports(2);
    let many = dir.file("many.txt", &format!("a 127.0.0.1:{port} {}\n", cpus + 1));
    let out = run(&[
        "serve",
        "--cluster",
        path_str(&many),
        "--instance",
        "a",
        "--users",
        "10",
    ]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    common::fails_with(out, &["instance a has", "--cluster file", "fewer SHARDS"]);
    assert!(!said.contains("lower --shards"), "{said}");

    // Shard 0's own port (PORT+1) taken by someone else.
    let taken = std::net::TcpListener::bind(("127.0.0.1", port + 1)).unwrap();
    let one = dir.file("one.txt", &format!("a 127.0.0.1:{port} 1\n"));
    let out = run(&[
        "serve",
        "--cluster",
        path_str(&one),
        "--instance",
        "a",
        "--users",
        "10",
    ]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    common::fails_with(
        out,
        &[
            "is already in use",
            "give instance a another PORT in the --cluster file",
        ],
    );
    assert!(!said.contains("--listen"), "{said}");
    drop(taken);
}

/// A server killed with `kill -9` while clients hold connections leaves its
/// listeners behind for a moment (the kernel tears its io_uring rings down
/// after it); a new one started at once on the same port waits for them
/// instead of calling the port taken.
#[test]
fn a_restart_right_after_kill_9_gets_the_port() {
    let port = free_ports(0).to_string();
    let listen = format!("127.0.0.1:{port}");
    let mut first = Spawned::serve(&["--listen", &listen, "--shards", "2", "--users", "10"]);
    first.listening();
    let idle: Vec<_> = (0..8)
        .map(|_| Client::connect(listen.parse().unwrap()))
        .collect();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(first.child.id() as i32, libc::SIGKILL) };
    let _ = first.child.wait();
    let mut second = Spawned::serve(&["--listen", &listen, "--shards", "2", "--users", "10"]);
    let addr = second.listening();
    assert_eq!(addr.to_string(), listen);
    assert_eq!(get_from(addr, "/feed/1?size=2").status, 200);
    drop(idle);
    second.stop(Duration::from_secs(10));
}

#[test]
fn gen_writes_a_feed_file() {
    let out = run(&["gen", "--users", "3", "--feed-len", "4", "--items", "100"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 3);
    for (i, line) in lines.iter().enumerate() {
        let (user, items) = line.split_once('\t').unwrap();
        assert_eq!(user, (i + 1).to_string());
        assert_eq!(items.split(',').count(), 4);
    }
}

/// As an unprivileged user (no CAP_IPC_LOCK), `ulimit -l` is enforced: 512
/// KiB is enough for 2 shards, less fails at start with a message naming it.
/// As root, drops to `nobody` with setpriv; otherwise runs as the user it is.
#[test]
fn unprivileged_user_with_a_small_locked_memory_limit() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // `nobody` may not reach the build directory: run a copy from /tmp.
    let dir = TempDir::new("nobody");
    let bin = dir.0.join("shardfeed");
    std::fs::copy(BIN, &bin).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run_as = |limit: u32, args: &[&str]| -> std::process::Child {
        let script = format!("ulimit -l {limit}; exec \"$0\" \"$@\"");
        let mut cmd = if root {
            let mut c = std::process::Command::new("setpriv");
            c.args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "sh",
            ]);
            c
        } else {
            std::process::Command::new("sh")
        };
        cmd.args(["-c", &script, path_str(&bin)])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run sh (and setpriv, from util-linux, as root)")
    };
    let serve = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--users",
        "50",
    ];

    let refused = run_as(256, &serve).wait_with_output().unwrap();
    fails_with(refused, "raise it with `ulimit -l");

    let mut ok = run_as(512, &serve);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(ok.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .map(str::to_string);
    let served = addr.map(|a| Client::connect(a.parse().unwrap()).get("/feed/1?size=2"));
    let _ = ok.kill();
    let _ = ok.wait();
    assert_eq!(served.expect("started with 512 KiB").items().len(), 2);
}

/// The start-up line about the shards' io_uring rings: with the default the
/// shards' rings are created with IORING_SETUP_COOP_TASKRUN (Linux 5.19+),
/// with `--no-coop-taskrun` as glommio makes them. Both serve requests.
#[test]
fn io_uring_rings_report_coop_taskrun() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().unwrap().parse().unwrap();
    let minor: u32 = parts.next().unwrap().parse().unwrap();
    let kernel_has_flag = (major, minor) >= (5, 19);

    let start = |extra: &[&str]| -> String {
        let mut args = vec!["--shards", "2", "--users", "100"];
        args.extend_from_slice(extra);
        let mut server = Server::start_with_stderr(&args, std::process::Stdio::piped());
        let mut stderr = server.child.stderr.take().unwrap();
        // Users 1..=100 spread over both shards: both paths answer.
        for user in [1, 2, 3, 4, 5, 6] {
            let response = server.get(&format!("/feed/{user}?size=3"));
            assert_eq!(response.status, 200, "user {user}");
            assert_eq!(response.items().len(), 3);
        }
        let (status, _, _) = server.terminate(Duration::from_secs(10));
        assert!(status.success(), "{status}");
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        text
    };

    let default = start(&[]);
    let line = default
        .lines()
        .find(|l| l.contains("io_uring:"))
        .unwrap_or_else(|| panic!("no io_uring line in {default:?}"));
    if kernel_has_flag {
        // Two sleepable rings per shard get the flag; the IOPOLL rings do not.
        let n: u32 = line
            .split("COOP_TASKRUN on ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected {line:?}"));
        assert!(n >= 4, "{line}");
    } else {
        assert!(line.contains("needs Linux 5.19"), "{line}");
    }

    let off = start(&["--no-coop-taskrun"]);
    assert!(
        off.contains("io_uring: COOP_TASKRUN off (--no-coop-taskrun)"),
        "{off}"
    );
}

/// `shardfeed owner` reads ids as the server reads `/feed/{id}`: `+7` is
/// refused (the server answers 422), `007` is user 7 and is said not to
/// reach its owner through the front (nginx hashes the text); every error
/// line carries a timestamp, as the README says of every log line.
#[test]
fn owner_reads_ids_as_the_server_does() {
    let dir = TempDir::new("cli-owner");
    let file = dir.file("c.txt", "a 127.0.0.1:7000 1\nb 127.0.0.1:7100 2\n");
    let owner = |ids: &[&str]| {
        let mut args = vec!["owner", "--cluster", path_str(&file)];
        args.extend_from_slice(ids);
        run(&args)
    };
    let seven = owner(&["7"]);
    assert!(seven.status.success());
    let line = String::from_utf8(seven.stdout).unwrap();
    assert_eq!(line.split(' ').count(), 4, "{line}");
    let padded = owner(&["007"]);
    assert!(padded.status.success());
    assert_eq!(String::from_utf8(padded.stdout).unwrap(), line, "user 7");
    let note = String::from_utf8(padded.stderr).unwrap();
    assert!(note.contains("not written canonically"), "{note}");
    // (`-1` as an argument is a flag to the parser.)
    for bad in ["+7", "4294967296", "7x", " 7"] {
        let out = owner(&[bad]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{bad}");
        assert!(stderr.contains("is not a user id"), "{bad}: {stderr}");
        // RFC 3339 UTC, then the program's name.
        assert!(
            stderr.starts_with("20") && stderr.contains("Z shardfeed: error: "),
            "{stderr}"
        );
    }
}
