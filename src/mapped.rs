//! Read-only memory mappings of a file's regions: how a snapshot's item
//! arrays are served without being copied (see `snapshot.rs`).
//!
//! A [`Mapping`] owns its pages: dropping it unmaps them, and the only way
//! to its bytes is a borrow of the `Mapping`, so no pointer into it outlives
//! it (a store that holds one unmaps it when the store is dropped, e.g. by a
//! reload).
//!
//! The pages are `PROT_READ` and `MAP_PRIVATE`: nothing in this process can
//! write them (a stray write faults instead of changing the file), and they
//! are the page cache's own pages (no copy, no zeroing, shared with every
//! other mapping of the file).
//!
//! The one hazard of a file mapping: if the file is truncated (or rewritten
//! in place) while mapped, touching a page past the new end raises SIGBUS.
//! Snapshots are therefore replaced by rename (`pack` writes `OUTPUT.tmp`
//! and renames it; a pipeline does the same), which leaves the mapped inode
//! intact until the last mapping of it goes; the loader only maps regular
//! files.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// A read-only mapping of `len` bytes of a file from `offset`.
pub struct Mapping {
    /// Start of the mapped pages (page-aligned, at or before the region).
    base: *mut libc::c_void,
    /// Bytes mapped from `base`.
    mapped: usize,
    /// The region asked for: `base + lead .. + len`.
    lead: usize,
    len: usize,
}

// SAFETY: the pages are read-only for the mapping's whole life and owned by
// it alone; reading them from any thread is as safe as reading a `&[u8]`.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `file` from `offset`. `len` 0 maps nothing.
    /// Pages are mapped as they are first read (a minor fault when the
    /// file is cached; the kernel maps a whole cached folio at once).
    pub fn new(file: &File, offset: u64, len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Ok(Mapping {
                base: std::ptr::null_mut(),
                mapped: 0,
                lead: 0,
                len: 0,
            });
        }
        let page = page_size() as u64;
        let start = offset / page * page;
        let lead = (offset - start) as usize;
        let mapped = lead
            .checked_add(len)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let at = libc::off_t::try_from(start)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a fresh mapping chosen by the kernel (no address given),
        // of a file we hold open; nothing else refers to it yet.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                at,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            base,
            mapped,
            lead,
            len,
        })
    }

    /// The mapped region's bytes.
    pub fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `base + lead .. + len` lies inside the live, readable
        // mapping, borrowed for no longer than `self`.
        unsafe { std::slice::from_raw_parts(self.base.cast::<u8>().add(self.lead), self.len) }
    }

    /// The region as `u32`s; `None` if it is not 4-byte aligned in memory
    /// or not a whole number of them.
    pub fn u32s(&self) -> Option<&[u32]> {
        let b = self.bytes();
        // SAFETY: every bit pattern is a valid u32; `align_to` only hands
        // out the aligned middle.
        let (head, mid, tail) = unsafe { b.align_to::<u32>() };
        (head.is_empty() && tail.is_empty()).then_some(mid)
    }

    /// The region as an array of `u32`s, checked once here so that reading
    /// it costs nothing more than a slice; `Err(self)` if it is not 4-byte
    /// aligned in memory or not a whole number of them.
    pub fn into_u32s(self) -> Result<MappedU32s, Mapping> {
        match self.u32s() {
            Some(_) => Ok(MappedU32s(self)),
            None => Err(self),
        }
    }
}

/// A [`Mapping`] known to be an aligned array of `u32`.
#[derive(Debug)]
pub struct MappedU32s(Mapping);

impl MappedU32s {
    #[inline]
    pub fn as_slice(&self) -> &[u32] {
        let m = &self.0;
        if m.len == 0 {
            return &[];
        }
        // SAFETY: checked aligned and whole by `into_u32s`; inside the live
        // mapping, borrowed for no longer than `self`; every bit pattern is
        // a valid u32.
        unsafe {
            std::slice::from_raw_parts(m.base.cast::<u8>().add(m.lead).cast::<u32>(), m.len / 4)
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.mapped != 0 {
            // SAFETY: our own mapping; no borrow of it outlives `self`.
            unsafe { libc::munmap(self.base, self.mapped) };
        }
    }
}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mapping({} bytes)", self.len)
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// Whether this process maps the file at `path` (a line of
/// `/proc/self/maps` names it), for tests.
#[cfg(test)]
pub(crate) fn is_mapped(path: &std::path::Path) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let name = path.to_str().unwrap();
    maps.lines().any(|l| l.ends_with(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn maps_any_region_reads_it_and_unmaps_on_drop() {
        let path = std::env::temp_dir().join(format!("shardfeed-map-{}", std::process::id()));
        let mut f = File::create(&path).unwrap();
        let words: Vec<u32> = (0..5000).collect();
        for w in &words {
            f.write_all(&w.to_le_bytes()).unwrap();
        }
        drop(f);
        let file = File::open(&path).unwrap();
        for from in [0usize, 1234] {
            let m = Mapping::new(&file, from as u64 * 4, (5000 - from) * 4).unwrap();
            assert_eq!(m.u32s().unwrap(), &words[from..]);
            assert!(is_mapped(&path));
            drop(m);
            assert!(!is_mapped(&path), "dropped: unmapped");
        }
        let odd = Mapping::new(&file, 2, 8).unwrap();
        assert_eq!(odd.u32s(), None, "not aligned");
        assert_eq!(odd.bytes(), &[0, 0, 1, 0, 0, 0, 2, 0]);
        let empty = Mapping::new(&file, 0, 0).unwrap();
        assert_eq!(empty.u32s().unwrap(), &[] as &[u32]);
        drop((odd, empty));
        std::fs::remove_file(&path).unwrap();
    }
}
