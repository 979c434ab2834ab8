//! What a new user meets before running anything: the build's host
//! requirements, the license, the scripts, and a README in step with
//! `--help`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(name: &str) -> String {
    std::fs::read_to_string(root().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Old toolchains failed deep in a dependency; Cargo.toml now says which
/// Rust it needs, and so does the README.
#[test]
fn the_rust_version_is_declared_and_documented() {
    let cargo = read("Cargo.toml");
    let version = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("rust-version in Cargo.toml");
    let readme = read("README.md");
    assert!(
        readme.contains(&format!("Rust {version} or newer")),
        "README names Rust {version}"
    );
    for needed in ["a C compiler", "git"] {
        assert!(
            readme.contains(needed),
            "README host requirements name {needed}"
        );
    }
}

#[test]
fn the_license_file_is_the_one_cargo_toml_names() {
    assert!(read("Cargo.toml").contains("license = \"MIT\""));
    assert!(read("LICENSE").starts_with("MIT License"));
}

/// The README's fuzz command failed unless its corpus folder existed.
#[test]
fn the_fuzz_command_makes_its_own_corpus_folder() {
    let readme = read("README.md");
    assert!(
        readme.contains("scripts/fuzz"),
        "the README fuzzes through scripts/fuzz"
    );
    assert!(!readme.contains("cargo fuzz run answer_loop /tmp/corpus"));
    let script = read("scripts/fuzz");
    assert!(script.contains("mktemp -d") && script.contains("mkdir -p"));
    assert!(read(".ci/run").contains("scripts/fuzz"));
}

/// Every `serve` flag of `--help` is in the README's table.
#[test]
fn the_readme_lists_every_serve_flag() {
    let help = String::from_utf8(run(&["serve", "--help"]).stdout).unwrap();
    let readme = read("README.md");
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches([',', '.', ')', ']', ':', ';']))
        .filter(|w| *w != "--help")
        .collect();
    assert!(flags.len() > 30, "{flags:?}");
    for flag in flags {
        assert!(
            readme.contains(&format!("`{flag}")),
            "{flag} is not in the README"
        );
    }
}

/// `scripts/plot-latency` wrote `latency.png` into the directory it ran in
/// (the repository root) unless told otherwise.
#[test]
fn plot_latency_writes_beside_its_input_by_default() {
    let test = "plot_latency_writes_beside_its_input_by_default";
    let has_matplotlib = Command::new("python3")
        .args(["-c", "import matplotlib"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_matplotlib {
        return skipped(
            test,
            "python3 with matplotlib is missing (pip install matplotlib)",
        );
    }
    let dir = TempDir::new("plot");
    let input = dir.0.join("data");
    let cwd = dir.0.join("cwd");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::create_dir_all(&cwd).unwrap();
    let stats = input.join("stats.json");
    std::fs::write(
        &stats,
        r#"{"shards":[{"shard":0,"stats":{"latency_us":{"count":3,"p50":10,"p90":20,"p99":30,"p99_9":40,"max":50}}}],
            "all":{"latency_us":{"count":3,"p50":10,"p90":20,"p99":30,"p99_9":40,"max":50}}}"#,
    )
    .unwrap();
    let out = Command::new(root().join("scripts/plot-latency"))
        .arg(&stats)
        .current_dir(&cwd)
        .env("SHARDFEED", BIN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png: PathBuf = input.join("stats.png");
    assert!(png.is_file(), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        std::fs::read_dir(&cwd).unwrap().count(),
        0,
        "nothing where it ran"
    );
}

/// The shipped unit was `Type=simple`: systemd thought the service up
/// before it loaded, and knew nothing of its stop.
#[test]
fn the_shipped_unit_is_type_notify_and_outlasts_the_drain() {
    let unit = read("scripts/shardfeed.service");
    assert!(unit.lines().any(|l| l == "Type=notify"), "{unit}");
    let seconds = |key: &str| -> u64 {
        let line = unit
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("{key}"));
        let digits: String = line
            .split(key)
            .nth(1)
            .unwrap()
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().unwrap()
    };
    // --shutdown-timeout is its default, 10 s.
    assert!(seconds("TimeoutStopSec=") > seconds("--drain ") + 10);
    // It shipped without --state-dir: every restart sent every user back
    // to their first page.
    assert!(
        unit.lines().any(|l| l == "StateDirectory=shardfeed"),
        "{unit}"
    );
    assert!(
        unit.contains("--state-dir /var/lib/shardfeed/"),
        "progress kept under the StateDirectory: {unit}"
    );
}
