//! The ember-agent binary that goes into every image at [`AGENT_GUEST_PATH`]: where it is
//! found (`--agent`, `$EMBER_AGENT_BIN`, next to the running executable) and the check that it
//! is statically linked (the image's own libc, if any, is not the one it was built against).

use std::path::{Path, PathBuf};

use super::error::ImageError;

/// Where the agent lives in the guest.
pub const AGENT_GUEST_PATH: &str = "/usr/local/bin/ember-agent";

/// The build command that makes a static agent.
pub const STATIC_AGENT_BUILD: &str = "RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release -p ember-agent --target x86_64-unknown-linux-gnu";

/// The agent binary: `explicit` if given, else `$EMBER_AGENT_BIN`, else `ember-agent` next to
/// the running executable. Checked to exist and to be static.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ImageError> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os("EMBER_AGENT_BIN") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|d| d.join("ember-agent")))
                .ok_or_else(|| ImageError::Agent {
                    path: PathBuf::from("ember-agent"),
                    reason: "cannot tell where the running executable is; give --agent".into(),
                })?,
        },
    };
    check_static(&path)?;
    Ok(path)
}

/// Checks `path` is a 64-bit little-endian ELF executable without a program interpreter
/// (`PT_INTERP`): static, or static-pie.
pub fn check_static(path: &Path) -> Result<(), ImageError> {
    let bad = |reason: String| ImageError::Agent {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| {
        bad(format!(
            "{e} (give --agent PATH or $EMBER_AGENT_BIN; build one with {STATIC_AGENT_BUILD})"
        ))
    })?;
    match elf_interpreter(&bytes) {
        Err(why) => Err(bad(format!(
            "not a 64-bit little-endian ELF executable: {why}"
        ))),
        Ok(Some(interp)) => Err(bad(format!(
            "dynamically linked (interpreter {interp}); the image needs a static one: {STATIC_AGENT_BUILD}"
        ))),
        Ok(None) => Ok(()),
    }
}

/// The program interpreter an ELF64 little-endian file asks for, if any.
pub fn elf_interpreter(b: &[u8]) -> Result<Option<String>, &'static str> {
    const PT_INTERP: u32 = 3;
    if b.len() < 64 || &b[..4] != b"\x7fELF" {
        return Err("no ELF header");
    }
    if b[4] != 2 || b[5] != 1 {
        return Err("not ELFCLASS64 little-endian");
    }
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map(u64::from_le_bytes)
    };
    let phoff = u64_at(0x20).ok_or("short header")?;
    let phentsize = usize::from(u16_at(0x36).ok_or("short header")?);
    let phnum = usize::from(u16_at(0x38).ok_or("short header")?);
    let phoff = usize::try_from(phoff).map_err(|_| "program headers out of range")?;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph).ok_or("program headers out of range")? == PT_INTERP {
            let off = u64_at(ph + 8).ok_or("program headers out of range")?;
            let size = u64_at(ph + 32).ok_or("program headers out of range")?;
            let (off, size) = (
                usize::try_from(off).map_err(|_| "interpreter out of range")?,
                usize::try_from(size).map_err(|_| "interpreter out of range")?,
            );
            let name = b
                .get(off..off.saturating_add(size))
                .ok_or("interpreter out of range")?;
            let name = String::from_utf8_lossy(name)
                .trim_end_matches('\0')
                .to_string();
            return Ok(Some(name));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_dynamic_and_garbage_is_not_elf() {
        let exe = std::env::current_exe().unwrap();
        let bytes = std::fs::read(&exe).unwrap();
        // Test binaries are built without crt-static: they have an interpreter.
        assert!(elf_interpreter(&bytes).unwrap().is_some());
        assert!(elf_interpreter(b"#!/bin/sh\n").is_err());
        let e = check_static(&exe).unwrap_err().to_string();
        assert!(
            e.contains("dynamically linked") && e.contains("crt-static"),
            "{e}"
        );
    }
}
