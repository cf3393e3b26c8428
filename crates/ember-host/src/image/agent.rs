//! The ember-agent binary that goes into every image at [`AGENT_GUEST_PATH`]: where it is
//! found (`--agent`, `$EMBER_AGENT_BIN`, next to the running executable) and the check that it
//! is statically linked (the image's own libc, if any, is not the one it was built against).

use std::path::{Path, PathBuf};

use ember_jailer::elf::ElfError;

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
    match ember_jailer::elf::interpreter(path) {
        Err(ElfError::Io(e)) => Err(bad(format!(
            "{e} (give --agent PATH or $EMBER_AGENT_BIN; build one with {STATIC_AGENT_BUILD})"
        ))),
        Err(e @ ElfError::NotElf(_)) => Err(bad(e.to_string())),
        Ok(Some(interp)) => Err(bad(format!(
            "dynamically linked (interpreter {interp}); the image needs a static one: {STATIC_AGENT_BUILD}"
        ))),
        Ok(None) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_dynamic_and_garbage_is_not_elf() {
        // Test binaries are built without crt-static: they have an interpreter.
        let exe = std::env::current_exe().unwrap();
        let e = check_static(&exe).unwrap_err().to_string();
        assert!(
            e.contains("dynamically linked") && e.contains("crt-static"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("agent");
        std::fs::write(&script, b"#!/bin/sh\n").unwrap();
        let e = check_static(&script).unwrap_err().to_string();
        assert!(e.contains("not a 64-bit little-endian ELF"), "{e}");
    }
}
