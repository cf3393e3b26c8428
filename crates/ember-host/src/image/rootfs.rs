//! The root filesystem image: `mkfs.ext4 -d TREE` (no loop mount), sized from the tree's disk
//! usage plus a margin, labelled `ember-root`, without a journal (it is attached read-only and
//! shared by every clone of a template; guests write to a RAM overlay, see
//! [`initramfs`](super::initramfs)).

use std::ffi::OsStr;
use std::path::Path;

use super::error::ImageError;
use super::tools;

/// The filesystem's label.
pub const LABEL: &str = "ember-root";

/// The image's size for a tree using `used` bytes: a quarter more for ext4's metadata (inodes,
/// directories, bitmaps), plus 16 MiB, rounded up to a MiB.
pub fn size_for(used: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    let size = used + used / 4 + 16 * MIB;
    size.div_ceil(MIB) * MIB
}

/// The disk space `tree` uses, bytes (`du -s --block-size=1`).
pub fn tree_usage(tree: &Path, log: &Path) -> Result<u64, ImageError> {
    let out = tools::output(
        "du (sizing the root tree)",
        "du",
        &[
            OsStr::new("-s"),
            OsStr::new("-x"),
            OsStr::new("--block-size=1"),
            tree.as_os_str(),
        ],
        log,
    )?;
    out.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ImageError::ToolFailed {
            what: "du (sizing the root tree)".into(),
            status: format!("unexpected output {out:?}"),
            log: log.to_path_buf(),
        })
}

/// Writes `out`, an ext4 image holding `tree`; returns its size.
pub fn build(tree: &Path, out: &Path, log: &Path) -> Result<u64, ImageError> {
    let size = size_for(tree_usage(tree, log)?);
    let f = std::fs::File::create(out).map_err(ImageError::io("creating", out))?;
    f.set_len(size).map_err(ImageError::io("sizing", out))?;
    drop(f);
    tools::run(
        "mkfs.ext4 (writing rootfs.ext4)",
        "mkfs.ext4",
        &[
            OsStr::new("-F"),
            OsStr::new("-q"),
            OsStr::new("-L"),
            OsStr::new(LABEL),
            OsStr::new("-O"),
            OsStr::new("^has_journal"),
            OsStr::new("-m"),
            OsStr::new("0"),
            OsStr::new("-E"),
            OsStr::new("root_owner=0:0"),
            OsStr::new("-d"),
            tree.as_os_str(),
            out.as_os_str(),
        ],
        None,
        log,
    )?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_have_room() {
        assert_eq!(super::size_for(0), 16 << 20);
        assert!(super::size_for(400 << 20) >= 500 << 20);
        assert_eq!(super::size_for(1) % (1 << 20), 0);
    }
}
