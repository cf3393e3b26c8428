//! The shared libraries a dynamically linked VMM binary needs inside its jail. Each library
//! `ldd` reports (the loader included) is bound read-only at the path the loader looks for,
//! from its real file — the jail gets those files and nothing else of the host's `/lib`. A
//! statically linked VMM (`-C target-feature=+crt-static`) needs none: an ELF without a
//! program interpreter (`PT_INTERP`) is known static from its headers, without running `ldd`
//! (which a minimal host may not even have).

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

/// Whether `exec` is a 64-bit little-endian ELF with no program interpreter (`PT_INTERP`):
/// statically linked, nothing to load. `None` when its headers cannot be read as such.
pub fn is_static_elf(exec: &Path) -> Option<bool> {
    use std::os::unix::fs::FileExt;
    const PT_INTERP: u32 = 3;
    let file = std::fs::File::open(exec).ok()?;
    let mut header = [0u8; 64];
    file.read_exact_at(&mut header, 0).ok()?;
    // ELF magic, ELFCLASS64, ELFDATA2LSB.
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None;
    }
    let u16_at = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
    let phoff = u64::from_le_bytes(header[32..40].try_into().ok()?);
    let (phentsize, phnum) = (u64::from(u16_at(54)), u64::from(u16_at(56)));
    if phnum > 0 && phentsize < 4 {
        return None;
    }
    for i in 0..phnum {
        let mut p_type = [0u8; 4];
        file.read_exact_at(&mut p_type, phoff.checked_add(i * phentsize)?)
            .ok()?;
        if u32::from_le_bytes(p_type) == PT_INTERP {
            return Some(false);
        }
    }
    Some(true)
}

/// The binds that make `exec`'s shared libraries visible in a jail (none for a static binary).
pub fn binds_for(exec: &Path) -> Result<Vec<Bind>, LibraryError> {
    let err = |why: String| LibraryError {
        exec: exec.to_path_buf(),
        why,
    };
    if is_static_elf(exec) == Some(true) {
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
    fn static_and_dynamic_elves_are_told_apart() {
        // This test binary is dynamically linked (the default target); /bin/sh too.
        let me = std::env::current_exe().unwrap();
        assert_eq!(is_static_elf(&me), Some(false));
        assert_eq!(is_static_elf(Path::new("/bin/sh")), Some(false));
        // Not an ELF at all.
        let dir = std::env::temp_dir().join(format!("ember-elf-{}", std::process::id()));
        std::fs::write(&dir, b"#!/bin/sh\necho hi\n").unwrap();
        assert_eq!(is_static_elf(&dir), None);
        // A static ELF: the headers of a minimal one (no program headers at all).
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        std::fs::write(&dir, &elf).unwrap();
        assert_eq!(is_static_elf(&dir), Some(true));
        // One PT_INTERP program header makes it dynamic.
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&1u16.to_le_bytes());
        let mut ph = vec![0u8; 56];
        ph[..4].copy_from_slice(&3u32.to_le_bytes());
        elf.extend_from_slice(&ph);
        std::fs::write(&dir, &elf).unwrap();
        assert_eq!(is_static_elf(&dir), Some(false));
        std::fs::remove_file(&dir).unwrap();
    }

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
