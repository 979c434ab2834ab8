//! A cluster of instances, and which (instance, shard) pair owns each user.
//!
//! The cluster file lists instances, one per line: `NAME HOST:PORT SHARDS`
//! (`#` starts a comment, blank lines are ignored). Instance `NAME` listens
//! on `HOST:PORT` with all its shards (`SO_REUSEPORT`), and shard `i` also on
//! its own port `PORT+1+i`.
//!
//! Ownership is one function of the user id over all pairs, in file order
//! (instance by instance, shard 0 first): pair `k` of `P` owns the users
//! whose id's decimal text hashes (MurmurHash2, seed 0, as nginx's
//! `ngx_murmur_hash2`) below nginx's `split_clients` boundary `k`, the last
//! pair (`*`) everything above. The shares are 0.01 % steps: each pair gets
//! `10000 / P` hundredths of a percent, the first `10000 % P` pairs one
//! more, the last pair the remainder. That is exactly what the
//! `split_clients` block that `nginx.rs` writes computes, so a stock nginx
//! sends every user to the shard port that owns it. Only canonical ids
//! (the decimal text of a `u32`, no sign, no leading zero) are hashed;
//! nginx sends any other target to any instance.
//!
//! Within one process, `shard.rs` is still the only module that turns this
//! into "ask the local store or forward"; this module knows instances and
//! pairs, not cores.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

/// Most (instance, shard) pairs: `split_clients` shares are 0.01 % steps,
/// so every pair must get at least one.
pub const MAX_PAIRS: usize = 10_000;

/// One line of the cluster file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    /// As written (a name or an IP), for the nginx configuration.
    pub host: String,
    /// The shared port; shard `i` also listens on `port + 1 + i`.
    pub port: u16,
    pub shards: usize,
}

impl Instance {
    /// `HOST:PORT` of the shared port, as written (IPv6 in brackets).
    pub fn shared(&self) -> String {
        self.host_port(self.port)
    }

    /// `HOST:PORT` of shard `i`'s own port.
    pub fn shard_port(&self, i: usize) -> String {
        self.host_port(self.port + 1 + i as u16)
    }

    fn host_port(&self, port: u16) -> String {
        if self.host.contains(':') {
            format!("[{}]:{port}", self.host)
        } else {
            format!("{}:{port}", self.host)
        }
    }

    /// The shared address, resolved (first address), to listen on.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        let text = self.shared();
        text.to_socket_addrs()
            .map_err(|e| format!("instance {}: cannot resolve {text}: {e}", self.name))?
            .next()
            .ok_or_else(|| format!("instance {}: {text} resolves to no address", self.name))
    }
}

/// Who owns a user: an instance (its index in the file) and its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    pub instance: usize,
    pub shard: usize,
}

/// One instance of a cluster: what `serve --cluster FILE --instance NAME`
/// runs as.
#[derive(Debug, Clone)]
pub struct ClusterSeat {
    pub cluster: std::sync::Arc<Cluster>,
    /// Index of this instance in `cluster.instances`.
    pub instance: usize,
}

impl ClusterSeat {
    /// What to change when this instance's ports are taken: they come from
    /// its line of the cluster file, not from `--listen`.
    pub fn change_port(&self) -> String {
        let me = &self.cluster.instances[self.instance];
        format!(
            "give instance {} another PORT in the --cluster file (it uses PORT and the {} \
             after it, one per shard)",
            me.name, me.shards
        )
    }
}

/// What a cluster instance's state directory says of itself (its
/// `INSTANCE` file): its name, and the names of every instance of its
/// cluster then. `relayout` uses it to refuse a layout change that leaves
/// out an old instance's directory (whose users would start again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub instance: String,
    pub cluster: Vec<String>,
}

/// The marker's file in a state directory.
pub const MARKER_FILE: &str = "INSTANCE";
/// A marker file larger than this is not one.
const MARKER_MAX: u64 = 64 << 10;

impl Marker {
    fn encode(&self) -> String {
        format!(
            "shardfeed state of instance {}\ncluster {}\n",
            self.instance,
            self.cluster.join(" ")
        )
    }

    /// `None` for text that is not a marker (a hand-edited or torn file):
    /// then nothing is checked against it.
    pub fn decode(text: &str) -> Option<Marker> {
        let mut lines = text.lines();
        let instance = lines.next()?.strip_prefix("shardfeed state of instance ")?;
        let cluster: Vec<String> = lines
            .next()?
            .strip_prefix("cluster ")?
            .split(' ')
            .map(str::to_string)
            .collect();
        let ok = |n: &str| !n.is_empty() && !n.contains(char::is_whitespace);
        (ok(instance) && cluster.iter().all(|n| ok(n)) && cluster.iter().any(|n| n == instance))
            .then(|| Marker {
                instance: instance.to_string(),
                cluster,
            })
    }

    /// Reads `dir`'s marker, if it has a valid one.
    pub fn read(dir: &Path) -> Option<Marker> {
        // Only a small regular file: not a FIFO (it would block), not a
        // symbolic link, not something huge.
        let path = dir.join(MARKER_FILE);
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if !meta.is_file() || meta.len() > MARKER_MAX {
            return None;
        }
        let text = std::fs::read_to_string(path).ok()?;
        Marker::decode(&text)
    }
}

impl ClusterSeat {
    /// This instance's marker.
    pub fn marker(&self) -> Marker {
        Marker {
            instance: self.cluster.instances[self.instance].name.clone(),
            cluster: self
                .cluster
                .instances
                .iter()
                .map(|i| i.name.clone())
                .collect(),
        }
    }

    /// Refuses a state directory whose marker names another instance (a
    /// wrong `--instance` or `--state-dir`): its users would be left out,
    /// and this start's checkpoints would erase them. A directory without
    /// a (readable) marker is taken as it is.
    pub fn check_marker(&self, dir: &Path) -> Result<(), String> {
        let mine = &self.cluster.instances[self.instance].name;
        match Marker::read(dir) {
            Some(m) if &m.instance != mine => Err(format!(
                "--state-dir {}: it holds the state of instance {}, not of --instance {mine} \
                 (its {MARKER_FILE} file says so). Give this instance's own directory; if the \
                 instance was renamed, delete {}",
                dir.display(),
                m.instance,
                dir.join(MARKER_FILE).display()
            )),
            _ => Ok(()),
        }
    }

    /// Writes this instance's marker into its state directory `dir`.
    pub fn write_marker(&self, dir: &Path) -> std::io::Result<()> {
        self.marker().write(dir)
    }
}

impl Marker {
    /// Writes the marker into `dir` (whole: a temporary file, synced,
    /// renamed, the directory synced).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = dir.join(format!("{MARKER_FILE}.tmp"));
        // A new file: whatever had the name (a leftover, a FIFO, a link) is
        // removed, never written through.
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(self.encode().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(MARKER_FILE))?;
        std::fs::File::open(dir)?.sync_all()
    }
}

/// A parsed cluster file and its ownership table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub instances: Vec<Instance>,
    /// Every pair in ownership order.
    pairs: Vec<Owner>,
    /// `bounds[k]`: pair `k` owns hashes below it (and at or above
    /// `bounds[k-1]`); the last pair, which has no bound, owns the rest.
    bounds: Vec<u32>,
}

/// A cluster file that cannot be used, with the line it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterError {
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl Cluster {
    /// Reads and parses a cluster file; errors name the file and line.
    pub fn from_file(path: &Path) -> Result<Cluster, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the cluster file {}: {e}", path.display()))?;
        Cluster::parse(&text).map_err(|e| format!("cluster file {}: {e}", path.display()))
    }

    /// Parses the text of a cluster file.
    pub fn parse(text: &str) -> Result<Cluster, ClusterError> {
        let mut instances: Vec<Instance> = Vec::new();
        let mut lines = Vec::new();
        for (no, raw) in text.lines().enumerate() {
            let no = no + 1;
            let at = |message: String| ClusterError {
                line: Some(no),
                message,
            };
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, addr, shards] = fields[..] else {
                return Err(at(format!(
                    "expected `NAME HOST:PORT SHARDS`, found {} field(s): `{line}`",
                    fields.len()
                )));
            };
            let name_ok = name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !name_ok {
                return Err(at(format!(
                    "instance name `{name}`: use up to 64 letters, digits, `-` or `_`"
                )));
            }
            let (host, port) = split_host_port(addr).map_err(&at)?;
            let shards: usize = match shards.parse() {
                Ok(n) if (1..=1024).contains(&n) => n,
                _ => {
                    return Err(at(format!(
                        "SHARDS `{shards}` must be a number from 1 to 1024"
                    )))
                }
            };
            if port as usize + shards > u16::MAX as usize {
                return Err(at(format!(
                    "{addr} with {shards} shards: the shard ports PORT+1..PORT+{shards} \
                     go past 65535"
                )));
            }
            let new = Instance {
                name: name.to_string(),
                host,
                port,
                shards,
            };
            for (old, old_no) in instances.iter().zip(&lines) {
                if old.name == new.name {
                    return Err(at(format!(
                        "instance `{name}` is already listed on line {old_no}"
                    )));
                }
                let overlap = old.host == new.host
                    && new.port as usize <= old.port as usize + old.shards
                    && old.port as usize <= new.port as usize + new.shards;
                if overlap {
                    return Err(at(format!(
                        "the ports {}..={} overlap those of `{}` on line {old_no}",
                        new.port,
                        new.port as usize + new.shards,
                        old.name
                    )));
                }
            }
            instances.push(new);
            lines.push(no);
        }
        if instances.is_empty() {
            return Err(ClusterError {
                line: None,
                message: "no instances: expected lines `NAME HOST:PORT SHARDS`".into(),
            });
        }
        let pairs: Vec<Owner> = instances
            .iter()
            .enumerate()
            .flat_map(|(instance, i)| (0..i.shards).map(move |shard| Owner { instance, shard }))
            .collect();
        if pairs.len() > MAX_PAIRS {
            return Err(ClusterError {
                line: None,
                message: format!(
                    "{} shards in all: at most {MAX_PAIRS} (nginx's split_clients shares \
                     are 0.01 % steps)",
                    pairs.len()
                ),
            });
        }
        let bounds = bounds(&shares(pairs.len()));
        Ok(Cluster {
            instances,
            pairs,
            bounds,
        })
    }

    /// The instance called `name`, by index.
    pub fn find(&self, name: &str) -> Result<usize, String> {
        self.instances
            .iter()
            .position(|i| i.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self.instances.iter().map(|i| i.name.as_str()).collect();
                format!(
                    "no instance `{name}` in the cluster file (it lists: {})",
                    names.join(", ")
                )
            })
    }

    /// Every (instance, shard) pair, in ownership order.
    pub fn pairs(&self) -> &[Owner] {
        &self.pairs
    }

    /// Each pair's share in hundredths of a percent, as `split_clients`
    /// writes it (the last pair is `*`: the rest).
    pub fn shares(&self) -> Vec<u32> {
        shares(self.pairs.len())
    }

    /// The pair that owns `user`. Allocates nothing.
    #[inline]
    pub fn owner(&self, user: u32) -> Owner {
        let mut digits = itoa::Buffer::new();
        let hash = murmur2(digits.format(user).as_bytes());
        self.pairs[self.bounds.partition_point(|&b| b <= hash)]
    }
}

/// `HOST:PORT` or `[IPv6]:PORT`.
fn split_host_port(addr: &str) -> Result<(String, u16), String> {
    let bad = || format!("address `{addr}`: expected HOST:PORT (IPv6 as [ADDR]:PORT)");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']').ok_or_else(bad)?,
        None if host.contains(':') => return Err(bad()),
        None => host,
    };
    if host.is_empty() {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((host.to_string(), p)),
        _ => Err(format!("address `{addr}`: port `{port}` must be 1-65535")),
    }
}

/// Hundredths of a percent per pair: `10000 / n` each, one more for the
/// first `10000 % n`.
fn shares(n: usize) -> Vec<u32> {
    let (base, extra) = (10_000 / n as u32, 10_000 % n as u32);
    (0..n as u32).map(|k| base + (k < extra) as u32).collect()
}

/// nginx's `split_clients` boundaries for every share but the last (which
/// is written `*`): `last += percent * 0xffffffff / 10000`, in 32 bits, as
/// `ngx_conf_split_clients_block` computes them.
fn bounds(shares: &[u32]) -> Vec<u32> {
    let mut last: u32 = 0;
    shares[..shares.len() - 1]
        .iter()
        .map(|&p| {
            last = last.wrapping_add((p as u64 * 0xffff_ffff / 10_000) as u32);
            last
        })
        .collect()
}

/// MurmurHash2, seed 0, as nginx's `ngx_murmur_hash2` (little-endian
/// words; the length mixed into the initial value).
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h = data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_reads_back_and_junk_is_no_marker() {
        let cluster = Cluster::parse("a 127.0.0.1:7000 2\nb 127.0.0.1:7100 1\n").unwrap();
        let seat = ClusterSeat {
            cluster: std::sync::Arc::new(cluster),
            instance: 1,
        };
        let m = seat.marker();
        assert_eq!(
            (m.instance.as_str(), m.cluster.join(",")),
            ("b", "a,b".into())
        );
        assert_eq!(Marker::decode(&m.encode()), Some(m.clone()));
        for junk in [
            "",
            "hello\n",
            "shardfeed state of instance b\n",
            "shardfeed state of instance c\ncluster a b\n",
            "shardfeed state of instance \ncluster a b\n",
            "shardfeed state of instance b\ncluster a  b\n",
        ] {
            assert_eq!(Marker::decode(junk), None, "{junk:?}");
        }
    }

    /// The README's example cluster.
    pub const EXAMPLE: &str = "# two hosts\n\
        a 10.0.0.1:8080 2\n\
        b 10.0.0.2:8080 2  # same ports, other host\n";

    #[test]
    fn murmur2_vectors() {
        // Pinned; the nginx test (tests/cluster.rs) checks the same function
        // against a real nginx.
        assert_eq!(murmur2(b""), 0);
        assert_eq!(murmur2(b"0"), 0x423e_cf74);
        assert_eq!(murmur2(b"42"), 0x79ba_92f8);
        assert_eq!(murmur2(b"12345"), 0xb966_9dc2);
        assert_eq!(murmur2(b"4294967295"), 0x3d20_0936);
    }

    #[test]
    fn shares_and_bounds_are_nginx_arithmetic() {
        assert_eq!(shares(4), [2500; 4]);
        assert_eq!(shares(3), [3334, 3333, 3333]);
        assert_eq!(shares(1), [10_000]);
        assert_eq!(shares(3).iter().sum::<u32>(), 10_000);
        assert_eq!(shares(7).iter().sum::<u32>(), 10_000);
        assert_eq!(
            bounds(&shares(4)),
            [1_073_741_823, 2_147_483_646, 3_221_225_469]
        );
        assert!(bounds(&shares(1)).is_empty());
    }

    #[test]
    fn ownership_test_vectors() {
        // The README's table: changing the function moves users between
        // instances, so these never change.
        let c = Cluster::parse(EXAMPLE).unwrap();
        let got: Vec<(u32, String, usize)> = [0u32, 1, 2, 3, 7, 42, 1000, 12345, 4294967295]
            .iter()
            .map(|&u| {
                let o = c.owner(u);
                (u, c.instances[o.instance].name.clone(), o.shard)
            })
            .collect();
        let want = PINNED;
        let got: Vec<(u32, &str, usize)> =
            got.iter().map(|(u, n, s)| (*u, n.as_str(), *s)).collect();
        assert_eq!(got, want);
    }

    const PINNED: [(u32, &str, usize); 9] = [
        (0, "a", 1),
        (1, "a", 1),
        (2, "a", 0),
        (3, "b", 0),
        (7, "b", 1),
        (42, "a", 1),
        (1000, "b", 0),
        (12345, "b", 0),
        (4294967295, "a", 0),
    ];

    #[test]
    fn ownership_spreads_users() {
        let c = Cluster::parse("a 127.0.0.1:9000 3\nb 127.0.0.1:9100 2\n").unwrap();
        let mut counts = [0usize; 5];
        for user in 0..100_000u32 {
            let o = c.owner(user);
            counts[o.instance * 3 + o.shard] += 1;
        }
        for n in counts {
            assert!((19_000..21_000).contains(&n), "{counts:?}");
        }
        let one = Cluster::parse("solo 127.0.0.1:9000 1").unwrap();
        assert!((0..1000).all(|u| one.owner(u)
            == Owner {
                instance: 0,
                shard: 0
            }));
    }

    #[test]
    fn parsing() {
        let c = Cluster::parse(EXAMPLE).unwrap();
        assert_eq!(c.instances.len(), 2);
        assert_eq!(c.instances[1].shared(), "10.0.0.2:8080");
        assert_eq!(c.instances[1].shard_port(1), "10.0.0.2:8082");
        assert_eq!(c.pairs().len(), 4);
        assert_eq!(c.find("b").unwrap(), 1);
        assert!(c.find("z").unwrap_err().contains("it lists: a, b"));
        let v6 = Cluster::parse("x [::1]:7000 1").unwrap();
        assert_eq!(v6.instances[0].host, "::1");
        assert_eq!(v6.instances[0].shard_port(0), "[::1]:7001");
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            (
                "a 127.0.0.1:80 1\nb 127.0.0.1:90\n",
                Some(2),
                "found 2 field(s)",
            ),
            ("\n\na/b h:1 1\n", Some(3), "instance name `a/b`"),
            ("a host 1\n", Some(1), "expected HOST:PORT"),
            ("a host:0 1\n", Some(1), "must be 1-65535"),
            ("a host:x 1\n", Some(1), "must be 1-65535"),
            ("a h:1 0\n", Some(1), "from 1 to 1024"),
            ("a h:1 two\n", Some(1), "from 1 to 1024"),
            ("a h:65535 1\n", Some(1), "go past 65535"),
            (
                "a h:80 1\n# c\na h:90 1\n",
                Some(3),
                "already listed on line 1",
            ),
            (
                "a h:80 2\nb h:82 1\n",
                Some(2),
                "overlap those of `a` on line 1",
            ),
            ("# nothing\n\n", None, "no instances"),
            ("a ::1:80 1\n", Some(1), "IPv6 as [ADDR]:PORT"),
        ];
        for (text, line, says) in cases {
            let e = Cluster::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.to_string().contains(says), "{text:?}: {e}");
        }
        let big: String = (0..11)
            .map(|i| format!("i{i} h:{} 1000\n", 1 + i * 1001))
            .collect();
        assert!(Cluster::parse(&big)
            .unwrap_err()
            .message
            .contains("at most 10000"));
    }
}
