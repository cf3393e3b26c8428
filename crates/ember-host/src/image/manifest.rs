//! `image.json`: what an image is (hash, source, kernel, sizes, when it was made) and a
//! ready-to-use template spec (ember-core's [`TemplateSpec`] with a
//! [`GuestSpec::Kernel`](ember_core::GuestSpec::Kernel) guest).

use std::path::{Path, PathBuf};

use ember_core::TemplateSpec;
use serde::{Deserialize, Serialize};

use super::error::ImageError;
use super::kernel::KernelPackage;
use super::source::Source;

/// The manifest's file name in an image directory.
pub const MANIFEST: &str = "image.json";

/// An image's `image.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageManifest {
    /// The builder's format version ([`FORMAT_VERSION`](super::FORMAT_VERSION)).
    pub format: u32,
    /// The content hash (the directory's name).
    pub hash: String,
    /// The image's directory.
    pub dir: PathBuf,
    /// Where the root tree came from.
    pub source: Source,
    /// The kernel package.
    pub kernel: KernelPackage,
    /// The kernel's release (`uname -r` in the guest).
    pub kernel_release: String,
    /// The modules the initramfs loads, in order.
    pub modules: Vec<String>,
    /// The files' sizes.
    pub sizes: ImageSizes,
    /// When it was built, seconds since the Unix epoch.
    pub created_unix_secs: u64,
    /// How long the build took, seconds.
    pub build_secs: f64,
    /// A template that boots it: `ember template build` or emberd's API take this spec.
    pub template: TemplateSpec,
}

/// The sizes of an image's files, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSizes {
    /// `vmlinuz`.
    pub vmlinuz: u64,
    /// `initrd.img`.
    pub initrd: u64,
    /// `rootfs.ext4` (its length; sparse on disk).
    pub rootfs: u64,
    /// The root tree's disk usage before it became a filesystem.
    pub tree: u64,
}

impl ImageManifest {
    /// Reads `dir/image.json`.
    pub fn read(dir: &Path) -> Result<Self, ImageError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read(&path).map_err(ImageError::io("reading", &path))?;
        serde_json::from_slice(&text).map_err(|source| ImageError::Manifest { path, source })
    }

    /// Writes `dir/image.json`.
    pub fn write(&self, dir: &Path) -> Result<(), ImageError> {
        let path = dir.join(MANIFEST);
        let text = serde_json::to_vec_pretty(self).map_err(|source| ImageError::Manifest {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&path, text).map_err(ImageError::io("writing", &path))
    }
}
