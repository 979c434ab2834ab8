//! `shardfeed relayout`: the old instances' state directories rewritten for
//! a new cluster file, one state directory per new instance holding exactly
//! the progress of the users the new file gives it.
//!
//! Offline and blocking (the old instances are stopped): every `--from`
//! directory is read with the server's own recovery ([`journal::recover_existing`]:
//! checkpoints and segments of any shard count, torn tails dropped and
//! said, the directory's `LOCK` taken, so a running server's directory is
//! refused and none can start on it meanwhile); each user goes to its owner
//! under the new file ([`Cluster::owner`], the function `serve --cluster`
//! and the nginx front use); each new instance's directory gets one
//! checkpoint per shard ([`journal::seed_checkpoints`]), which is then read
//! back with the same recovery and compared, user by user, before the
//! command reports success.
//!
//! A user must come from one place. With `--old-cluster`, each `--from`
//! names its old instance and contributes only the users that instance
//! owned (a state directory can hold stale copies of other instances'
//! users: a backup restored over the wrong directory, state of an earlier
//! layout copied in). Without it, a user found in two directories with
//! different progress is an error that says so, and nothing is written.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, Marker};
use crate::journal::{self, DirLock, Progress};

/// One `--from` directory, and the old instance it belonged to (an index
/// into the old cluster) when `--old-cluster` is given.
#[derive(Debug, Clone)]
pub struct Source {
    pub dir: PathBuf,
    pub old_instance: Option<usize>,
}

/// What to do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The new cluster file.
    pub cluster: Cluster,
    /// The old one, if given (then every source names its old instance).
    pub old: Option<Cluster>,
    pub sources: Vec<Source>,
    /// `ROOT`: instance `NAME`'s directory is `ROOT/NAME`.
    pub out: PathBuf,
    /// The new instances to write (indexes); empty: all of them.
    pub only: Vec<usize>,
    /// `--partial`: one old host's pieces. With one `--from`, each piece is
    /// marked as that old instance's (an `INSTANCE` file), so that the
    /// gathering run sees a missing piece as it sees a missing directory.
    pub partial: bool,
}

/// One `--from` directory as read.
#[derive(Debug, Clone)]
pub struct Read {
    pub dir: PathBuf,
    /// Users with progress in the directory.
    pub users: usize,
    /// Of those, the users taken (all, or those its old instance owned).
    pub taken: usize,
    /// Users of new instances not being written (`--instance`).
    pub not_written: usize,
    /// The recovery's own notes: files that lost data or were ignored.
    pub notes: Vec<String>,
}

/// One new instance's directory as written.
#[derive(Debug, Clone)]
pub struct Written {
    pub name: String,
    pub dir: PathBuf,
    /// Users per shard.
    pub users: Vec<usize>,
    pub bytes: u64,
}

/// What [`relayout`] did.
#[derive(Debug, Clone)]
pub struct Report {
    pub read: Vec<Read>,
    pub written: Vec<Written>,
    /// Users found in more than one directory with the same progress
    /// (kept once).
    pub same_twice: usize,
    pub took: Duration,
}

/// A user in a bucket, and the source it came from.
type Found = (Progress, u32);

/// Reads the sources, checks them, writes and verifies the new directories.
/// `Err` says what to change; nothing is written unless every source reads
/// and agrees.
pub fn relayout(plan: &Plan) -> Result<Report, String> {
    let created = check_out_dir(&plan.out)?;
    let r = relayout_into(plan);
    if r.is_err() && created {
        // Refused: leave no trace. Only if still empty: a write that failed
        // halfway leaves its parts (remove ROOT and run again, the README says).
        let _ = std::fs::remove_dir(&plan.out);
    }
    r
}

/// [`relayout`], its `--out-dir` checked.
fn relayout_into(plan: &Plan) -> Result<Report, String> {
    let started = Instant::now();
    let cluster = &plan.cluster;
    if plan.sources.is_empty() {
        return Err("no --from directory: give the old instances' state directories".into());
    }
    match &plan.old {
        None => check_every_instance_given(&plan.sources)?,
        Some(old) => check_names_match_markers(old, &plan.sources)?,
    }

    // The first pair of each new instance, in `cluster.pairs()` order.
    let mut base = Vec::with_capacity(cluster.instances.len());
    let mut n = 0;
    for i in &cluster.instances {
        base.push(n);
        n += i.shards;
    }
    let writing: Vec<bool> = (0..cluster.instances.len())
        .map(|i| plan.only.is_empty() || plan.only.contains(&i))
        .collect();
    let mut buckets: Vec<Vec<Found>> = vec![Vec::new(); n];

    // Read every source, keep its locks until the end.
    let mut locks: Vec<DirLock> = Vec::with_capacity(plan.sources.len());
    let mut read = Vec::with_capacity(plan.sources.len());
    for (src, source) in plan.sources.iter().enumerate() {
        let r = journal::recover_existing(&source.dir, "--from")?;
        if !r.inherited {
            return Err(format!(
                "--from {} holds no checkpoint or journal file: is it an instance's \
                 --state-dir? (leave it out if it is right that it holds nothing)",
                source.dir.display()
            ));
        }
        let notes: Vec<String> = r
            .report
            .to_string()
            .lines()
            .skip(1)
            .map(|l| l.trim_start().to_string())
            .collect();
        let mut one = Read {
            dir: source.dir.clone(),
            users: r.users.len(),
            taken: 0,
            not_written: 0,
            notes,
        };
        for p in &r.users {
            if let (Some(old), Some(i)) = (&plan.old, source.old_instance) {
                if old.owner(p.user).instance != i {
                    continue;
                }
            }
            one.taken += 1;
            let o = cluster.owner(p.user);
            if !writing[o.instance] {
                one.not_written += 1;
                continue;
            }
            buckets[base[o.instance] + o.shard].push((*p, src as u32));
        }
        locks.push(r.lock);
        read.push(one);
    }

    // A user comes from one place: same progress twice is kept once,
    // different progress is an error (before anything is written).
    let mut same_twice = 0;
    let mut conflicts = 0usize;
    let mut examples = Vec::new();
    for bucket in &mut buckets {
        bucket.sort_unstable_by_key(|(p, src)| (p.user, *src));
        let mut w = 0;
        for i in 0..bucket.len() {
            if w > 0 && bucket[w - 1].0.user == bucket[i].0.user {
                let (kept, other) = (bucket[w - 1], bucket[i]);
                if kept.0 == other.0 {
                    same_twice += 1;
                } else {
                    conflicts += 1;
                    if examples.len() < 3 {
                        examples.push(format!(
                            "user {}: {} served {} of version {:016x}, {} served {} of version {:016x}",
                            kept.0.user,
                            plan.sources[kept.1 as usize].dir.display(),
                            kept.0.served,
                            kept.0.version,
                            plan.sources[other.1 as usize].dir.display(),
                            other.0.served,
                            other.0.version,
                        ));
                    }
                }
                continue;
            }
            bucket[w] = bucket[i];
            w += 1;
        }
        bucket.truncate(w);
    }
    if conflicts > 0 {
        let hint = if plan.old.is_some() {
            "check that each --from NAME=DIR names the right old instance"
        } else {
            "give --old-cluster FILE (the cluster file the old instances ran with) and \
             --from NAME=DIR for each, so that every user is taken from the instance that owned it"
        };
        return Err(format!(
            "{conflicts} users have different progress in two --from directories ({}): \
             nothing written; {hint}",
            examples.join("; ")
        ));
    }

    // Write, then read back and compare.
    let mut written = Vec::new();
    for (i, inst) in cluster.instances.iter().enumerate() {
        if !writing[i] {
            continue;
        }
        let dir = plan.out.join(&inst.name);
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let range = base[i]..base[i] + inst.shards;
        let mut parts: Vec<Vec<Progress>> = buckets[range.clone()]
            .iter_mut()
            .map(|b| std::mem::take(b).into_iter().map(|(p, _)| p).collect())
            .collect();
        let incomplete = |e: String| {
            format!(
                "{e}; {} is incomplete: remove it and run again",
                plan.out.display()
            )
        };
        let seeded = journal::seed_checkpoints(&dir, &mut parts).map_err(incomplete)?;
        let mut want: Vec<Progress> = parts.iter().flatten().copied().collect();
        want.sort_unstable_by_key(|p| p.user);
        verify(&dir, &want).map_err(incomplete)?;
        if let (true, [source], Some(old)) = (plan.partial, &plan.sources[..], &plan.old) {
            if let Some(from) = source.old_instance {
                let marker = Marker {
                    instance: old.instances[from].name.clone(),
                    cluster: old.instances.iter().map(|i| i.name.clone()).collect(),
                };
                marker
                    .write(&dir)
                    .map_err(|e| incomplete(format!("cannot write {}: {e}", dir.display())))?;
            }
        }
        written.push(Written {
            name: inst.name.clone(),
            dir,
            users: parts.iter().map(Vec::len).collect(),
            bytes: seeded.bytes,
        });
    }
    drop(locks);
    Ok(Report {
        read,
        written,
        same_twice,
        took: started.elapsed(),
    })
}

/// `ROOT` must be missing (it is created) or an empty directory.
/// Without `--old-cluster`: the `INSTANCE` files of the `--from`
/// directories (written by `serve --cluster`) name the instances of their
/// cluster; one of those whose directory is not given would have its users
/// start again. A directory without one (not a cluster's, written by
/// `relayout` and not started since, restored from a copy, run by an older
/// build) may be any instance's: as many missing names as there are such
/// directories are let go.
fn check_every_instance_given(sources: &[Source]) -> Result<(), String> {
    let markers: Vec<Marker> = sources
        .iter()
        .filter_map(|s| Marker::read(&s.dir))
        .collect();
    let given: BTreeSet<&str> = markers.iter().map(|m| m.instance.as_str()).collect();
    let missing: BTreeSet<&str> = markers
        .iter()
        .flat_map(|m| m.cluster.iter().map(String::as_str))
        .filter(|n| !given.contains(n))
        .collect();
    let unmarked = sources.len() - markers.len();
    if missing.len() <= unmarked {
        return Ok(());
    }
    let list = |s: &BTreeSet<&str>| s.iter().copied().collect::<Vec<_>>().join(", ");
    Err(format!(
        "the --from directories are of instance(s) {} of a cluster that also had {}, \
         whose directories are not given (their users would start again): \
         give each with --from; nothing written (if an instance's progress is gone for \
         good, delete the INSTANCE file of each given directory to skip this check)",
        list(&given),
        list(&missing)
    ))
}

/// With `--old-cluster`: a `NAME=DIR` whose `INSTANCE` file names another
/// instance is refused (two names swapped would take each directory's
/// stale copies of the other's users as their progress). A directory
/// without one is taken as named.
fn check_names_match_markers(old: &Cluster, sources: &[Source]) -> Result<(), String> {
    for s in sources {
        let (Some(i), Some(m)) = (s.old_instance, Marker::read(&s.dir)) else {
            continue;
        };
        let named = &old.instances[i].name;
        if &m.instance != named {
            return Err(format!(
                "--from {named}={}: that directory is instance {}'s (its INSTANCE file says \
                 so): name each directory after the instance that wrote it; nothing written",
                s.dir.display(),
                m.instance
            ));
        }
    }
    Ok(())
}

/// An empty `--out-dir`, made here if it did not exist (then `true`).
fn check_out_dir(out: &Path) -> Result<bool, String> {
    let shown = out.display();
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(format!(
                    "--out-dir {shown} is not empty: give a new or empty directory \
                     (nothing is written over)"
                ));
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(out)
            .map(|()| true)
            .map_err(|e| format!("cannot create --out-dir {shown}: {e}")),
        Err(e) if out.exists() && !out.is_dir() => Err(format!(
            "--out-dir {shown} is not a directory ({e}): give a new or empty directory"
        )),
        Err(e) => Err(format!("cannot use --out-dir {shown}: {e}")),
    }
}

/// Reads `dir` back as a server would and checks that it holds exactly
/// `want` (sorted by user).
fn verify(dir: &Path, want: &[Progress]) -> Result<(), String> {
    let r = journal::recover_existing(dir, "the written directory")?;
    if r.report.dropped_anything() || !r.report.ignored.is_empty() {
        return Err(format!("reading {} back: {}", dir.display(), r.report));
    }
    if r.users != want {
        let first = r
            .users
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(r.users.len().min(want.len()));
        return Err(format!(
            "reading {} back: {} users, expected {} (first difference at entry {first})",
            dir.display(),
            r.users.len(),
            want.len()
        ));
    }
    Ok(())
}

impl std::fmt::Display for Report {
    /// The lines for the operator: what was read (and any notes of the
    /// recovery), then one `NAME DIR USERS` line per instance written.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for r in &self.read {
            write!(
                f,
                "read {}: {} users, {} taken",
                r.dir.display(),
                r.users,
                r.taken
            )?;
            if r.taken < r.users {
                write!(f, " ({} owned by other old instances)", r.users - r.taken)?;
            }
            if r.not_written > 0 {
                write!(f, ", {} of instances not written now", r.not_written)?;
            }
            writeln!(f)?;
            for note in &r.notes {
                writeln!(f, "  {note}")?;
            }
        }
        if self.same_twice > 0 {
            writeln!(
                f,
                "{} users found in two directories with the same progress: kept once",
                self.same_twice
            )?;
        }
        let users: usize = self.written.iter().flat_map(|w| &w.users).sum();
        for w in &self.written {
            let per: Vec<String> = w.users.iter().map(|n| n.to_string()).collect();
            writeln!(
                f,
                "wrote {} for instance {}: {} users (per shard: {}), {:.1} MB",
                w.dir.display(),
                w.name,
                w.users.iter().sum::<usize>(),
                per.join(" "),
                w.bytes as f64 / 1e6
            )?;
        }
        write!(
            f,
            "relayout: {users} users from {} directories into {} instances, checked by reading \
             them back, in {} ms",
            self.read.len(),
            self.written.len(),
            self.took.as_millis()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::format::{build_segment, FileHeader, FileKind, FileName};

    fn p(user: u32, served: u32) -> Progress {
        Progress {
            user,
            served,
            version: 3,
            prefix: served as u64 * 11,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shardfeed-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A segment of generation 1, shard 0 of 1, after a seeded checkpoint:
    /// its records win, as at a server's start.
    fn append_segment(dir: &Path, records: &[Progress]) {
        let header = FileHeader {
            kind: FileKind::Segment,
            unit: 512,
            shard: 0,
            shards: 1,
            generation: 1,
            seq: 0,
            first_lsn: 0,
            salt: 99,
            created_ms: 0,
        };
        let name = FileName::Segment {
            generation: 1,
            shard: 0,
            seq: 0,
        };
        std::fs::write(
            dir.join(name.to_string()),
            build_segment(&header, &[records], true),
        )
        .unwrap();
    }

    /// Checkpoints and segments are read as a server reads them (the latest
    /// record wins); the same progress in two sources is kept once;
    /// `--instance` writes only the chosen instances.
    #[test]
    fn latest_progress_goes_to_the_new_owner_and_only_chosen_instances_are_written() {
        let root = scratch("relayout-unit");
        let (a, b, out) = (root.join("a"), root.join("b"), root.join("out"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        journal::seed_checkpoints(&a, &mut [vec![p(1, 5), p(7, 5)]]).unwrap();
        append_segment(&a, &[p(1, 9)]);
        journal::seed_checkpoints(&b, &mut [vec![p(7, 5), p(3, 1)]]).unwrap();
        let cluster = Cluster::parse("x 127.0.0.1:7000 2\ny 127.0.0.1:7100 1\n").unwrap();
        let sources = [&a, &b].map(|d| Source {
            dir: d.clone(),
            old_instance: None,
        });
        let latest = [p(1, 9), p(3, 1), p(7, 5)];
        // Users 1 and 3 are x's, 7 (in both sources) is y's.
        let owners: Vec<usize> = latest
            .iter()
            .map(|q| cluster.owner(q.user).instance)
            .collect();
        assert_eq!(owners, [0, 0, 1]);
        for only in [vec![1], vec![]] {
            let _ = std::fs::remove_dir_all(&out);
            let plan = Plan {
                cluster: cluster.clone(),
                old: None,
                sources: sources.to_vec(),
                out: out.clone(),
                only: only.clone(),
                partial: false,
            };
            let report = relayout(&plan).unwrap();
            assert_eq!(report.read[0].users, 2);
            for (i, inst) in cluster.instances.iter().enumerate() {
                let dir = out.join(&inst.name);
                if !only.is_empty() && !only.contains(&i) {
                    assert!(!dir.exists());
                    continue;
                }
                let got = journal::recover_existing(&dir, "test").unwrap().users;
                let want: Vec<Progress> = latest
                    .iter()
                    .filter(|q| cluster.owner(q.user).instance == i)
                    .copied()
                    .collect();
                assert_eq!(got, want, "instance {}", inst.name);
            }
            let written: usize = report.written.iter().flat_map(|w| &w.users).sum();
            let skipped: usize = report.read.iter().map(|r| r.not_written).sum();
            assert_eq!(written + report.same_twice + skipped, 4);
            assert_eq!(report.same_twice, 1);
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
