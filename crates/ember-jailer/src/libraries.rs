//! The shared libraries a dynamically linked VMM binary needs inside its jail. Each library
//! `ldd` reports (the loader included) is bound read-only at the path the loader looks for,
//! from its real file — the jail gets those files and nothing else of the host's `/lib`. A
//! statically linked VMM (`-C target-feature=+crt-static`) needs none: [`crate::elf`] tells
//! it from its headers, without running `ldd` (which a minimal host may not even have).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::Bind;

/// Why the libraries could not be listed.
#[derive(Debug, thiserror::Error)]
#[error("listing the shared libraries of {exec} with ldd: {why}")]
pub struct LibraryError {
    /// The binary.
    pub exec: PathBuf,
    /// What went wrong.
    pub why: String,
}

/// Parses `ldd` output into the absolute library paths it names.
pub fn parse_ldd(output: &str) -> Vec<PathBuf> {
    output
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            // "name => /path (0x...)" or "/path (0x...)"; "linux-vdso.so.1 (0x...)" has no file.
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => line,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The binds that make `exec`'s shared libraries visible in a jail (none for a static binary).
pub fn binds_for(exec: &Path) -> Result<Vec<Bind>, LibraryError> {
    let err = |why: String| LibraryError {
        exec: exec.to_path_buf(),
        why,
    };
    if matches!(crate::elf::interpreter(exec), Ok(None)) {
        return Ok(Vec::new());
    }
    let out = Command::new("ldd")
        .arg(exec)
        .output()
        .map_err(|e| err(e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable" (static): nothing to bind.
        let all = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
        if all.contains("not a dynamic executable") || all.contains("statically linked") {
            return Ok(Vec::new());
        }
        return Err(err(format!("{}: {}", out.status, all.trim())));
    }
    let mut binds = Vec::new();
    for path in parse_ldd(&text) {
        let real =
            std::fs::canonicalize(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        binds.push(Bind {
            source: real,
            target: path,
            read_only: true,
        });
    }
    Ok(binds)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ldd_lines_give_their_paths() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x7f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x7f)\n\t/lib64/ld-linux-x86-64.so.2 (0x7f)\n";
        assert_eq!(
            parse_ldd(out),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn a_dynamic_binary_gets_its_loader_and_libc() {
        let binds = binds_for(Path::new("/bin/true")).unwrap();
        assert!(
            binds
                .iter()
                .any(|b| b.target.ends_with("ld-linux-x86-64.so.2")),
            "{binds:?}"
        );
        assert!(binds.iter().all(|b| b.read_only && b.source.is_file()));
    }
}
