//! The kernel-image seam: recognizes the image format and loads it (and an initrd) into guest
//! memory.
//!
//! - ELF (a vmlinux or the probe guest): segments loaded at their physical addresses. With a
//!   PVH note (linux-loader reports it) the builder enters there in 32-bit mode
//!   (`arch::x86_64::pvh`); without one, in 64-bit mode at `e_entry` (Firecracker's convention).
//! - bzImage (Linux boot protocol ≥ 2.06, 64-bit capable): the protected-mode kernel loaded at
//!   its `code32_start` (1 MiB), entered at its 64-bit entry (load address + 0x200); its setup
//!   header is handed to the zero page.
//! - An initrd goes at the top of low memory (below the 32-bit MMIO gap and the kernel's
//!   `initrd_addr_max`), page aligned, above everything the kernel may decompress into.
//!
//! Bad input is refused with the path and what is wrong with it.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{KernelLoader, bzimage::BzImage, elf::Elf, elf::PvhBootCapability};
use vm_memory::{ByteValued, Bytes, GuestAddress};

use crate::arch::x86_64::layout::{HIMEM_START, MMIO32_START};
use crate::vstate::memory::GuestMemory;

/// Kernel image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF executable.
    Elf,
    /// A Linux bzImage.
    BzImage,
}

/// A loaded kernel.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    /// The format it was loaded as.
    pub format: KernelFormat,
    /// Entry point (64-bit).
    pub entry: u64,
    /// First byte past everything the kernel may use while booting (for a bzImage, past
    /// its decompression buffer).
    pub end: u64,
    /// The bzImage's setup header (`struct setup_header` bytes), for the zero page.
    pub setup_header: Option<Vec<u8>>,
    /// Highest address an initrd may end at (`initrd_addr_max` + 1; 4 GiB for an ELF).
    pub initrd_limit: u64,
    /// The ELF's PVH entry point, if it has one.
    pub pvh_entry: Option<u64>,
}

/// A loaded initrd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedInitrd {
    /// Guest address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Loader errors.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The file cannot be read.
    #[error("cannot read {what} {path}: {source}")]
    Io {
        /// "kernel image" or "initrd".
        what: &'static str,
        /// The image path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not a format ember-vmm boots.
    #[error("kernel image {path}: {reason}")]
    Unsupported {
        /// The image path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// linux-loader refused the image.
    #[error("loading kernel image {path}: {source}")]
    Load {
        /// The image path.
        path: String,
        /// linux-loader's error.
        source: linux_loader::loader::Error,
    },
    /// The initrd cannot be placed.
    #[error("initrd {path}: {reason}")]
    Initrd {
        /// The initrd path.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Oldest boot protocol accepted: 2.12 added `xloadflags`, whose `XLF_KERNEL_64` says the
/// 64-bit entry exists (`pref_address` and `init_size` came with 2.10).
const MIN_BOOT_PROTOCOL: u16 = 0x020c;
/// `xloadflags` bit: the kernel has a 64-bit entry at load address + 0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// Offset of the 64-bit entry from the protected-mode kernel's start.
const BZIMAGE_64BIT_ENTRY: u64 = 0x200;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LoaderError {
    let path = path.display().to_string();
    move |source| LoaderError::Io { what, path, source }
}

/// Detects the format from the first bytes.
pub fn detect(path: &Path) -> Result<KernelFormat, LoaderError> {
    let mut f = File::open(path).map_err(io("kernel image", path))?;
    let mut head = vec![0u8; 0x210];
    let mut n = 0;
    // Read until full or end of file (short reads are legal).
    loop {
        let got = f.read(&mut head[n..]).map_err(io("kernel image", path))?;
        if got == 0 {
            break;
        }
        n += got;
        if n == head.len() {
            break;
        }
    }
    head.truncate(n);
    if head.starts_with(b"\x7fELF") {
        Ok(KernelFormat::Elf)
    } else if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        Ok(KernelFormat::BzImage)
    } else {
        Err(LoaderError::Unsupported {
            path: path.display().to_string(),
            reason: "neither an ELF kernel nor a bzImage".into(),
        })
    }
}

/// Loads the kernel at `path` into `mem`.
pub fn load(mem: &GuestMemory, path: &Path) -> Result<LoadedKernel, LoaderError> {
    let format = detect(path)?;
    let mut f = File::open(path).map_err(io("kernel image", path))?;
    let load_err = |source| LoaderError::Load {
        path: path.display().to_string(),
        source,
    };
    match format {
        KernelFormat::Elf => {
            let res = Elf::load(mem.mmap(), None, &mut f, Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?;
            let pvh_entry = match res.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(a) => Some(a.0),
                _ => None,
            };
            // For ELF, linux-loader's `kernel_load` is the entry point.
            Ok(LoadedKernel {
                format,
                entry: res.kernel_load.0,
                end: res.kernel_end,
                setup_header: None,
                initrd_limit: 1 << 32,
                pvh_entry,
            })
        }
        KernelFormat::BzImage => {
            let res = BzImage::load(mem.mmap(), None, &mut f, Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?;
            let Some(hdr) = res.setup_header else {
                return Err(LoaderError::Unsupported {
                    path: path.display().to_string(),
                    reason: "bzImage without a setup header".into(),
                });
            };
            check_bzimage_header(&hdr).map_err(|reason| LoaderError::Unsupported {
                path: path.display().to_string(),
                reason,
            })?;
            let load = res.kernel_load.0;
            // The decompressor may use `init_size` bytes from the larger of the load address
            // and the preferred address.
            let buffer_start = load.max(hdr.pref_address);
            let end = res
                .kernel_end
                .max(buffer_start.saturating_add(u64::from(hdr.init_size)));
            Ok(LoadedKernel {
                format,
                entry: load + BZIMAGE_64BIT_ENTRY,
                end,
                setup_header: Some(hdr.as_slice().to_vec()),
                initrd_limit: u64::from(hdr.initrd_addr_max) + 1,
                pvh_entry: None,
            })
        }
    }
}

/// What ember-vmm needs of a bzImage's header: protocol 2.12+, a 64-bit entry point.
fn check_bzimage_header(hdr: &setup_header) -> Result<(), String> {
    let version = hdr.version;
    if version < MIN_BOOT_PROTOCOL {
        return Err(format!(
            "boot protocol {}.{:02} is too old (2.12 or later needed)",
            version >> 8,
            version & 0xff
        ));
    }
    let xloadflags = hdr.xloadflags;
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err("not a 64-bit kernel (no 64-bit entry point)".into());
    }
    Ok(())
}

/// Where an initrd of `size` bytes goes: page aligned, as high as possible below `low_end`
/// (end of low RAM) and `limit`, and not below `kernel_end`.
pub fn place_initrd(size: u64, kernel_end: u64, low_end: u64, limit: u64) -> Result<u64, String> {
    if size == 0 {
        return Err("is empty".into());
    }
    let top = low_end.min(limit).min(MMIO32_START);
    let Some(start) = top.checked_sub(size) else {
        return Err(format!(
            "{size} bytes do not fit in {} MiB of low memory",
            top >> 20
        ));
    };
    let start = start & !0xfff;
    let floor = kernel_end.next_multiple_of(0x1000);
    if start < floor {
        return Err(format!(
            "{size} bytes do not fit between the kernel's end ({floor:#x}) and the top of \
             low memory ({top:#x}): give the VM more memory"
        ));
    }
    Ok(start)
}

/// Loads the initrd at `path` above `kernel`.
pub fn load_initrd(
    mem: &GuestMemory,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<LoadedInitrd, LoaderError> {
    let mut f = File::open(path).map_err(io("initrd", path))?;
    let size = f.metadata().map_err(io("initrd", path))?.len();
    let low_end = mem
        .layout()
        .iter()
        .find(|(start, _)| *start == 0)
        .map(|(_, len)| *len)
        .unwrap_or(0);
    let initrd_err = |reason: String| LoaderError::Initrd {
        path: path.display().to_string(),
        reason,
    };
    let addr = place_initrd(size, kernel.end, low_end, kernel.initrd_limit).map_err(initrd_err)?;
    let count = usize::try_from(size).map_err(|_| initrd_err("too large".into()))?;
    mem.mmap()
        .read_exact_volatile_from(GuestAddress(addr), &mut f, count)
        .map_err(|e| initrd_err(format!("reading into guest memory: {e}")))?;
    Ok(LoadedInitrd { addr, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_goes_high_and_aligned() {
        let a = place_initrd(10_000, 0x200_0000, 128 << 20, 1 << 32).unwrap();
        assert_eq!(a % 4096, 0);
        assert!(a + 10_000 <= 128 << 20);
        assert!((128 << 20) - a < 10_000 + 4096);
        // The kernel's limit wins over memory.
        let a = place_initrd(4096, 0x200_0000, 1 << 30, 0x1000_0000).unwrap();
        assert_eq!(a, 0x1000_0000 - 4096);
    }

    #[test]
    fn initrd_refusals_say_why() {
        let e = place_initrd(100 << 20, 0x400_0000, 128 << 20, 1 << 32).unwrap_err();
        assert!(e.contains("more memory"), "{e}");
        assert!(place_initrd(0, 0, 128 << 20, 1 << 32).is_err());
        assert!(place_initrd(256 << 20, 0, 128 << 20, 1 << 32).is_err());
    }

    #[test]
    fn detect_refuses_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, b"#!/bin/sh\n").unwrap();
        let e = detect(&p).unwrap_err().to_string();
        assert!(e.contains("neither an ELF kernel nor a bzImage"), "{e}");
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(&p, &bz).unwrap();
        assert_eq!(detect(&p).unwrap(), KernelFormat::BzImage);
        let e = detect(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(e.contains("cannot read kernel image"), "{e}");
    }

    #[test]
    fn bzimage_header_checks() {
        let mut h = setup_header {
            version: 0x020f,
            xloadflags: 1,
            ..Default::default()
        };
        check_bzimage_header(&h).unwrap();
        h.xloadflags = 0;
        assert!(check_bzimage_header(&h).unwrap_err().contains("64-bit"));
        h.version = 0x0204;
        assert!(check_bzimage_header(&h).unwrap_err().contains("too old"));
    }
}
