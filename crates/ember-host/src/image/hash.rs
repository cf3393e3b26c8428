//! The image's content hash: sha256 over everything that decides the image's bytes — the
//! builder's format version, the source (suite, mirror and sorted packages; a tarball's bytes;
//! a directory's paths, modes, owners, symlink targets and file bytes), the agent binary, the
//! kernel package, the busybox binary and the initramfs script. Its first [`HASH_LEN`] hex
//! digits name the image's cache directory.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::error::ImageError;

/// Hex digits of the hash that name an image.
pub const HASH_LEN: usize = 20;

/// A sha256 fed with length-prefixed fields (no two inputs hash alike by concatenation).
pub struct ContentHash(Sha256);

impl Default for ContentHash {
    fn default() -> Self {
        Self(Sha256::new())
    }
}

impl ContentHash {
    /// Adds one field.
    pub fn field(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    /// Adds a labelled text field.
    pub fn text(&mut self, label: &str, value: &str) {
        self.field(label.as_bytes());
        self.field(value.as_bytes());
    }

    /// Adds a file's bytes (streamed), under `label`.
    pub fn file(&mut self, label: &str, path: &Path) -> Result<(), ImageError> {
        self.field(label.as_bytes());
        let mut f = std::fs::File::open(path).map_err(ImageError::io("reading", path))?;
        let len = f.metadata().map_err(ImageError::io("reading", path))?.len();
        self.0.update(len.to_le_bytes());
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).map_err(ImageError::io("reading", path))?;
            if n == 0 {
                return Ok(());
            }
            self.0.update(&buf[..n]);
        }
    }

    /// Adds a directory tree: every entry's relative path, type, mode, owner and group, in
    /// path order; symlinks' targets, files' bytes, device nodes' numbers.
    pub fn tree(&mut self, root: &Path) -> Result<(), ImageError> {
        self.field(b"tree");
        self.walk(root, Path::new(""))
    }

    fn walk(&mut self, root: &Path, rel: &Path) -> Result<(), ImageError> {
        let dir = root.join(rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map_err(ImageError::io("reading the directory", &dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(ImageError::io("reading the directory", &dir))?;
        names.sort();
        for name in names {
            let rel = rel.join(&name);
            let path = root.join(&rel);
            let meta =
                std::fs::symlink_metadata(&path).map_err(ImageError::io("reading", &path))?;
            self.field(rel.as_os_str().as_encoded_bytes());
            self.field(&meta.mode().to_le_bytes());
            self.field(&meta.uid().to_le_bytes());
            self.field(&meta.gid().to_le_bytes());
            let ft = meta.file_type();
            if ft.is_symlink() {
                let target = std::fs::read_link(&path).map_err(ImageError::io("reading", &path))?;
                self.field(target.as_os_str().as_encoded_bytes());
            } else if ft.is_file() {
                self.file("", &path)?;
            } else if ft.is_dir() {
                self.walk(root, &rel)?;
                self.field(b"end");
            } else {
                self.field(&meta.rdev().to_le_bytes());
            }
        }
        Ok(())
    }

    /// The hash's first [`HASH_LEN`] hex digits.
    pub fn finish(self) -> String {
        let digest = self.0.finalize();
        let mut hex = String::with_capacity(64);
        for b in digest.iter() {
            hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            hex.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        hex.truncate(HASH_LEN);
        hex
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_do_not_run_together_and_trees_see_modes() {
        let h = |parts: &[&str]| {
            let mut c = ContentHash::default();
            parts.iter().for_each(|p| c.field(p.as_bytes()));
            c.finish()
        };
        assert_ne!(h(&["ab", "c"]), h(&["a", "bc"]));
        assert_eq!(h(&["x"]).len(), HASH_LEN);

        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/f"), b"one").unwrap();
        let tree = || {
            let mut c = ContentHash::default();
            c.tree(dir.path()).unwrap();
            c.finish()
        };
        let first = tree();
        assert_eq!(first, tree());
        std::os::unix::fs::symlink("f", dir.path().join("d/l")).unwrap();
        let linked = tree();
        assert_ne!(first, linked);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("d/f"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        assert_ne!(linked, tree());
    }
}
