//! What an ELF executable asks of its loader: its program interpreter (`PT_INTERP`), if any.
//! A file without one is static (or static-pie) and needs no shared library. Only the headers
//! and the interpreter's name are read, never the whole file.
//!
//! Used by the jail (a static VMM gets no library binds, and no `ldd` runs: a minimal host may
//! not have one) and by image builds (the guest agent and busybox must be static).
#![forbid(unsafe_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Why a file's interpreter could not be told.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// The file could not be read.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// It is not an ELF file this reads (64-bit, little-endian).
    #[error("not a 64-bit little-endian ELF executable: {0}")]
    NotElf(&'static str),
}

/// The program interpreter the ELF64 little-endian executable at `path` asks for (`None`:
/// static).
pub fn interpreter(path: &Path) -> Result<Option<String>, ElfError> {
    const PT_INTERP: u32 = 3;
    let file = File::open(path)?;
    let mut header = [0u8; 64];
    file.read_exact_at(&mut header, 0)
        .map_err(|_| ElfError::NotElf("no ELF header"))?;
    if header[..4] != *b"\x7fELF" {
        return Err(ElfError::NotElf("no ELF header"));
    }
    if header[4] != 2 || header[5] != 1 {
        return Err(ElfError::NotElf("not ELFCLASS64 little-endian"));
    }
    let u16_at = |at: usize| u64::from(u16::from_le_bytes([header[at], header[at + 1]]));
    let mut phoff = [0u8; 8];
    phoff.copy_from_slice(&header[0x20..0x28]);
    let phoff = u64::from_le_bytes(phoff);
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    if phnum > 0 && phentsize < 0x28 {
        return Err(ElfError::NotElf("program headers too small"));
    }
    let out_of_range = |_| ElfError::NotElf("program headers out of range");
    for i in 0..phnum {
        // phnum and phentsize are 16-bit: no overflow.
        let at = phoff
            .checked_add(i * phentsize)
            .ok_or(ElfError::NotElf("program headers out of range"))?;
        let mut ph = [0u8; 0x28];
        file.read_exact_at(&mut ph, at).map_err(out_of_range)?;
        if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) != PT_INTERP {
            continue;
        }
        let mut word = [0u8; 8];
        word.copy_from_slice(&ph[0x08..0x10]);
        let offset = u64::from_le_bytes(word);
        word.copy_from_slice(&ph[0x20..0x28]);
        let size = u64::from_le_bytes(word);
        if size > 4096 {
            return Err(ElfError::NotElf("interpreter name too long"));
        }
        let mut name = vec![0u8; size as usize];
        file.read_exact_at(&mut name, offset)
            .map_err(|_| ElfError::NotElf("interpreter out of range"))?;
        let name = String::from_utf8_lossy(&name)
            .trim_end_matches('\0')
            .to_string();
        return Ok(Some(name));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn static_and_dynamic_executables_are_told_apart() {
        // This test binary is dynamically linked (the default target); /bin/sh too.
        let me = std::env::current_exe().unwrap();
        let interp = interpreter(&me).unwrap().unwrap();
        assert!(
            interp.starts_with('/') && interp.contains("ld-linux"),
            "{interp}"
        );
        assert!(interpreter(Path::new("/bin/sh")).unwrap().is_some());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        // Not an ELF at all.
        std::fs::write(&file, b"#!/bin/sh\necho hi\n").unwrap();
        assert!(matches!(interpreter(&file), Err(ElfError::NotElf(_))));
        assert!(matches!(
            interpreter(&dir.path().join("missing")),
            Err(ElfError::Io(_))
        ));
        // A static ELF: the headers of a minimal one (no program headers at all).
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        std::fs::write(&file, &elf).unwrap();
        assert_eq!(interpreter(&file).unwrap(), None);
        // One PT_INTERP program header pointing at its name makes it dynamic.
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let mut ph = vec![0u8; 56];
        ph[..4].copy_from_slice(&3u32.to_le_bytes());
        ph[0x08..0x10].copy_from_slice(&120u64.to_le_bytes());
        ph[0x20..0x28].copy_from_slice(&8u64.to_le_bytes());
        elf.extend_from_slice(&ph);
        elf.extend_from_slice(b"/ld.so\0\0");
        std::fs::write(&file, &elf).unwrap();
        assert_eq!(interpreter(&file).unwrap().as_deref(), Some("/ld.so"));
    }
}
