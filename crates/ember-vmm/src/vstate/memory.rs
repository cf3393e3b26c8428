//! Guest memory: anonymous for a fresh boot, a private copy-on-write mapping of a snapshot's
//! memory file for a restore (the file is never written), or an eager copy of the file into
//! anonymous memory; and the sparse dump of guest memory into a new memory file.
//!
//! Memory file layout: the guest's RAM regions back to back, in guest-physical order (so for
//! guests up to 3 GiB, file offset == guest-physical address). All-zero pages are holes.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap};

const PAGE_SIZE: usize = 4096;

/// Errors creating, loading or dumping guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap failed.
    #[error("mapping {size} bytes of guest memory: {source}")]
    Map {
        /// Bytes requested.
        size: u64,
        /// Why.
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The regions are not valid.
    #[error("invalid guest memory layout: {0}")]
    Layout(String),
    /// I/O on a memory file.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
}

/// How the memory is backed (decides how a later sparse dump finds non-zero pages).
#[derive(Debug)]
enum Backing {
    Anonymous,
    /// MAP_PRIVATE of a memory file (pages with file data may be non-zero without being
    /// resident); the file is kept for SEEK_DATA queries.
    PrivateFile(File),
}

/// Guest RAM.
#[derive(Debug)]
pub struct GuestMemory {
    mmap: GuestMemoryMmap,
    /// `(guest address, size, file offset)` per region.
    regions: Vec<(u64, u64, u64)>,
    backing: Backing,
}

/// What a sparse dump wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct DumpStats {
    /// Bytes of guest memory.
    pub total_bytes: u64,
    /// Bytes actually written (non-zero pages).
    pub written_bytes: u64,
}

fn with_offsets(regions: &[(u64, u64)]) -> Result<Vec<(u64, u64, u64)>, MemoryError> {
    let mut out = Vec::with_capacity(regions.len());
    let mut offset = 0u64;
    for &(gpa, size) in regions {
        if size == 0 || size % PAGE_SIZE as u64 != 0 || gpa % PAGE_SIZE as u64 != 0 {
            return Err(MemoryError::Layout(format!(
                "region {gpa:#x}+{size:#x} is not page-aligned"
            )));
        }
        out.push((gpa, size, offset));
        offset += size;
    }
    Ok(out)
}

fn build(
    regions: Vec<(u64, u64, u64)>,
    file: Option<&File>,
    backing: Backing,
) -> Result<GuestMemory, MemoryError> {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let mut mapped = Vec::with_capacity(regions.len());
    for &(gpa, size, file_offset) in &regions {
        let (fo, flags) = match file {
            // Private: guest writes go to anonymous copy-on-write pages, never to the file.
            Some(f) => {
                let dup = f.try_clone().map_err(|source| MemoryError::Io {
                    what: "dup memory file",
                    source,
                })?;
                (
                    Some(FileOffset::new(dup, file_offset)),
                    libc::MAP_PRIVATE | libc::MAP_NORESERVE,
                )
            }
            None => (
                None,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            ),
        };
        let region = MmapRegion::build(fo, size as usize, prot, flags)
            .map_err(|source| MemoryError::Map { size, source })?;
        let region = GuestRegionMmap::new(region, GuestAddress(gpa))
            .ok_or_else(|| MemoryError::Layout(format!("region at {gpa:#x} overflows")))?;
        mapped.push(region);
    }
    let mmap =
        GuestMemoryMmap::from_regions(mapped).map_err(|e| MemoryError::Layout(e.to_string()))?;
    Ok(GuestMemory {
        mmap,
        regions,
        backing,
    })
}

impl GuestMemory {
    /// Fresh zeroed memory (pages materialize on first touch).
    pub fn anonymous(regions: &[(u64, u64)]) -> Result<GuestMemory, MemoryError> {
        build(with_offsets(regions)?, None, Backing::Anonymous)
    }

    /// Maps `file` MAP_PRIVATE (copy-on-write, no pre-faulting): restore cost independent of
    /// the guest size, pages shared with every other VM restored from the same file.
    pub fn from_file_private(
        file: File,
        regions: &[(u64, u64)],
    ) -> Result<GuestMemory, MemoryError> {
        let r = with_offsets(regions)?;
        let mem = build(r, Some(&file), Backing::Anonymous)?;
        Ok(GuestMemory {
            backing: Backing::PrivateFile(file),
            ..mem
        })
    }

    /// Copies the file's data ranges into fresh anonymous memory (holes stay untouched).
    pub fn from_file_eager(
        file: &File,
        regions: &[(u64, u64)],
    ) -> Result<GuestMemory, MemoryError> {
        let mem = Self::anonymous(regions)?;
        for (i, &(_, size, file_offset)) in mem.regions.iter().enumerate() {
            for (start, end) in data_ranges(file, file_offset, file_offset + size)? {
                let dst = mem.region_bytes_mut(i);
                let slice = &mut dst[(start - file_offset) as usize..(end - file_offset) as usize];
                file.read_exact_at(slice, start)
                    .map_err(|source| MemoryError::Io {
                        what: "reading memory file",
                        source,
                    })?;
            }
        }
        Ok(mem)
    }

    /// The vm-memory view.
    pub fn mmap(&self) -> &GuestMemoryMmap {
        &self.mmap
    }

    /// `(guest address, size)` of each region.
    pub fn layout(&self) -> Vec<(u64, u64)> {
        self.regions.iter().map(|&(g, s, _)| (g, s)).collect()
    }

    /// Total bytes of RAM.
    pub fn total_size(&self) -> u64 {
        self.regions.iter().map(|r| r.1).sum()
    }

    fn region_host_ptr(&self, index: usize) -> *mut u8 {
        self.mmap
            .iter()
            .nth(index)
            .map(|r| r.as_ptr())
            .unwrap_or(std::ptr::null_mut())
    }

    /// Region `index` as bytes. Callers only use it while no vCPU runs (fresh memory before
    /// boot, or a paused VM).
    fn region_bytes(&self, index: usize) -> &[u8] {
        let ptr = self.region_host_ptr(index);
        let len = self.regions[index].1 as usize;
        if ptr.is_null() {
            return &[];
        }
        // SAFETY: `ptr` is the start of a live mapping of `len` bytes owned by `self.mmap`,
        // which outlives the returned borrow; vCPUs are stopped while this is used, so nothing
        // writes the memory concurrently (KVM only writes on behalf of a running vCPU).
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }

    #[allow(clippy::mut_from_ref)]
    fn region_bytes_mut(&self, index: usize) -> &mut [u8] {
        let ptr = self.region_host_ptr(index);
        let len = self.regions[index].1 as usize;
        if ptr.is_null() {
            return &mut [];
        }
        // SAFETY: as in `region_bytes`; only used while loading memory before any vCPU exists,
        // with no other reference to these bytes alive.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }

    /// Pages of region `index` that are resident (anything not resident and not backed by
    /// file data is zero).
    fn resident_pages(&self, index: usize) -> Vec<u8> {
        let ptr = self.region_host_ptr(index);
        let len = self.regions[index].1 as usize;
        let mut vec = vec![1u8; len / PAGE_SIZE];
        if ptr.is_null() {
            return vec;
        }
        // SAFETY: `ptr`/`len` describe a live page-aligned mapping; `vec` has one byte per page.
        let rc = unsafe { libc::mincore(ptr.cast(), len, vec.as_mut_ptr()) };
        if rc != 0 {
            vec.fill(1); // be conservative: scan every page
        }
        vec
    }

    /// Writes memory to `out` sparsely: only non-zero pages, the rest left as holes. The VM
    /// must be paused.
    pub fn dump_sparse(&self, out: &File) -> Result<DumpStats, MemoryError> {
        let total = self.total_size();
        out.set_len(0).map_err(|source| MemoryError::Io {
            what: "truncating memory file",
            source,
        })?;
        out.set_len(total).map_err(|source| MemoryError::Io {
            what: "sizing memory file",
            source,
        })?;
        let mut written = 0u64;
        for (i, &(_, size, file_offset)) in self.regions.iter().enumerate() {
            let bytes = self.region_bytes(i);
            let resident = self.resident_pages(i);
            let mut backed = vec![false; size as usize / PAGE_SIZE];
            if let Backing::PrivateFile(src) = &self.backing {
                for (s, e) in data_ranges(src, file_offset, file_offset + size)? {
                    let first = ((s - file_offset) as usize) / PAGE_SIZE;
                    let last = ((e - file_offset) as usize).div_ceil(PAGE_SIZE);
                    let last = last.min(backed.len());
                    backed[first.min(last)..last].fill(true);
                }
            }
            let mut run: Option<usize> = None;
            let pages = size as usize / PAGE_SIZE;
            for p in 0..=pages {
                let non_zero = p < pages
                    && (resident[p] & 1 != 0 || backed[p])
                    && bytes[p * PAGE_SIZE..(p + 1) * PAGE_SIZE]
                        .iter()
                        .any(|&b| b != 0);
                match (non_zero, run) {
                    (true, None) => run = Some(p),
                    (false, Some(start)) => {
                        let chunk = &bytes[start * PAGE_SIZE..p * PAGE_SIZE];
                        out.write_all_at(chunk, file_offset + (start * PAGE_SIZE) as u64)
                            .map_err(|source| MemoryError::Io {
                                what: "writing memory file",
                                source,
                            })?;
                        written += chunk.len() as u64;
                        run = None;
                    }
                    _ => {}
                }
            }
        }
        Ok(DumpStats {
            total_bytes: total,
            written_bytes: written,
        })
    }
}

/// `[start, end)` file ranges holding data within `[from, to)` (SEEK_DATA / SEEK_HOLE).
fn data_ranges(file: &File, from: u64, to: u64) -> Result<Vec<(u64, u64)>, MemoryError> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = from;
    while pos < to {
        // SAFETY: lseek on a valid fd has no memory-safety preconditions.
        let start = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if start < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // no data past `pos`
            }
            // Filesystems without SEEK_DATA: treat everything as data.
            out.push((pos, to));
            break;
        }
        let start = (start as u64).min(to);
        if start >= to {
            break;
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start as libc::off_t, libc::SEEK_HOLE) };
        let end = if end < 0 { to } else { (end as u64).min(to) };
        out.push((start, end));
        pos = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn sparse_dump_and_private_restore_round_trip() {
        let mem = GuestMemory::anonymous(&[(0, 1 << 20)]).unwrap();
        mem.mmap()
            .write_obj(0xdead_beefu64, GuestAddress(0x3000))
            .unwrap();
        mem.mmap()
            .write_obj(0x1234u32, GuestAddress(0xf_f000))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem");
        let f = File::create(&path).unwrap();
        let stats = mem.dump_sparse(&f).unwrap();
        assert_eq!(stats.total_bytes, 1 << 20);
        assert_eq!(stats.written_bytes, 2 * PAGE_SIZE as u64);
        drop(f);

        let restored =
            GuestMemory::from_file_private(File::open(&path).unwrap(), &[(0, 1 << 20)]).unwrap();
        assert_eq!(
            restored
                .mmap()
                .read_obj::<u64>(GuestAddress(0x3000))
                .unwrap(),
            0xdead_beef
        );
        // Writes stay private.
        restored
            .mmap()
            .write_obj(7u64, GuestAddress(0x3000))
            .unwrap();
        let eager =
            GuestMemory::from_file_eager(&File::open(&path).unwrap(), &[(0, 1 << 20)]).unwrap();
        assert_eq!(
            eager.mmap().read_obj::<u64>(GuestAddress(0x3000)).unwrap(),
            0xdead_beef
        );
        assert_eq!(
            eager
                .mmap()
                .read_obj::<u32>(GuestAddress(0xf_f000))
                .unwrap(),
            0x1234
        );

        // A dump of the restored memory keeps file-backed pages that were never touched.
        let path2 = dir.path().join("mem2");
        let f2 = File::create(&path2).unwrap();
        let stats2 = restored.dump_sparse(&f2).unwrap();
        assert_eq!(stats2.written_bytes, 2 * PAGE_SIZE as u64);
        let again =
            GuestMemory::from_file_private(File::open(&path2).unwrap(), &[(0, 1 << 20)]).unwrap();
        assert_eq!(
            again.mmap().read_obj::<u64>(GuestAddress(0x3000)).unwrap(),
            7
        );
        assert_eq!(
            again
                .mmap()
                .read_obj::<u32>(GuestAddress(0xf_f000))
                .unwrap(),
            0x1234
        );
    }
}
