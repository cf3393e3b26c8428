//! The kernel-image seam: recognizes the image format and loads it into guest memory.
//!
//! Today: ELF (a vmlinux or the probe guest), entered in 64-bit mode at `e_entry` with
//! Firecracker's convention. A bzImage (linux-loader's `BzImage`, setup header copied into the
//! zero page) or a PVH entry (the ELF note linux-loader reports) slots in here as another
//! [`KernelFormat`] without touching the builder.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use linux_loader::loader::{KernelLoader, elf::Elf};
use vm_memory::GuestAddress;

use crate::arch::x86_64::layout::HIMEM_START;
use crate::vstate::memory::GuestMemory;

/// Kernel image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF executable.
    Elf,
    /// A Linux bzImage (not supported yet).
    BzImage,
}

/// A loaded kernel.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Entry point (64-bit).
    pub entry: u64,
    /// First byte past the loaded image.
    pub end: u64,
}

/// Loader errors.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The file cannot be read.
    #[error("cannot read kernel image {path}: {source}")]
    Io {
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
}

/// Detects the format from the first bytes.
pub fn detect(path: &Path) -> Result<KernelFormat, LoaderError> {
    let io = |source| LoaderError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = File::open(path).map_err(io)?;
    let mut head = vec![0u8; 0x210];
    let n = f.read(&mut head).map_err(io)?;
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
    match detect(path)? {
        KernelFormat::Elf => {
            let mut f = File::open(path).map_err(|source| LoaderError::Io {
                path: path.display().to_string(),
                source,
            })?;
            let res = Elf::load(mem.mmap(), None, &mut f, Some(GuestAddress(HIMEM_START)))
                .map_err(|source| LoaderError::Load {
                    path: path.display().to_string(),
                    source,
                })?;
            // For ELF, linux-loader's `kernel_load` is the entry point.
            Ok(LoadedKernel {
                entry: res.kernel_load.0,
                end: res.kernel_end,
            })
        }
        KernelFormat::BzImage => Err(LoaderError::Unsupported {
            path: path.display().to_string(),
            reason: "bzImage boot is not supported yet (use an uncompressed vmlinux ELF)".into(),
        }),
    }
}
