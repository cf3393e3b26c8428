//! The initramfs (`initrd.img`, a newc cpio written by `cpio`): the host's static busybox, the
//! kernel modules the guest needs (dependencies first, listed in `/etc/ember-modules`) and
//! [`INIT_SCRIPT`] as `/init`.
//!
//! `/init` mounts `/dev/vda` (the image's ext4 root, attached read-only and shared by every
//! clone of a template) at `/lower`, a tmpfs at `/upper` (`ember.overlay_size=` on the kernel
//! command line, default 50% of RAM) and an overlay of both at `/newroot`; configures `eth0`
//! from `ember.ip=A.B.C.D/NN ember.gw=G` (and `/etc/resolv.conf` from `ember.dns=`) when the
//! guest has one; moves `/dev`, `/proc` and `/sys` over and `switch_root`s to
//! `/usr/local/bin/ember-agent --listen vsock:52` as PID 1. The guest's writes thus live in its
//! RAM, which a memory snapshot carries: clones share the disk and start from the template's
//! writes. On a failure it prints `EMBER-INITRD-ERROR <what>` on the console and powers off.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::error::ImageError;
use super::tools;

/// `/init`.
pub const INIT_SCRIPT: &str = include_str!("init.sh");

/// Where the static busybox is taken from (Debian's busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

/// Checks [`BUSYBOX`] is there and static.
pub fn check_busybox() -> Result<PathBuf, ImageError> {
    let path = PathBuf::from(BUSYBOX);
    match ember_jailer::elf::interpreter(&path) {
        Ok(None) => Ok(path),
        Err(ember_jailer::elf::ElfError::Io(_)) => Err(ImageError::MissingTool {
            tool: BUSYBOX.into(),
            package: "busybox-static".into(),
        }),
        _ => Err(ImageError::MissingTool {
            tool: format!("a static {BUSYBOX} (this one is not)"),
            package: "busybox-static".into(),
        }),
    }
}

/// Writes `out` from a staging directory `stage` (made here): busybox, `modules`, `/init`.
pub fn build(
    stage: &Path,
    busybox: &Path,
    modules: &[PathBuf],
    out: &Path,
    log: &Path,
) -> Result<(), ImageError> {
    let mkdir = |p: &Path| std::fs::create_dir_all(p).map_err(ImageError::io("creating", p));
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "etc",
        "lib/modules",
        "lower",
        "upper",
        "newroot",
        "root",
    ] {
        mkdir(&stage.join(d))?;
    }
    let copy = |from: &Path, to: &Path| {
        std::fs::copy(from, to)
            .map(|_| ())
            .map_err(ImageError::io("copying into the initramfs", from))
    };
    copy(busybox, &stage.join("bin/busybox"))?;
    let sh = stage.join("bin/sh");
    std::os::unix::fs::symlink("busybox", &sh).map_err(ImageError::io("creating", &sh))?;
    let mut list = String::new();
    for m in modules {
        let name = m
            .file_name()
            .ok_or_else(|| ImageError::Kernel(format!("module path {}", m.display())))?;
        copy(m, &stage.join("lib/modules").join(name))?;
        list.push_str(&name.to_string_lossy());
        list.push('\n');
    }
    let write = |p: &Path, text: &str, mode: u32| {
        std::fs::write(p, text).map_err(ImageError::io("writing", p))?;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .map_err(ImageError::io("chmod", p))
    };
    write(&stage.join("etc/ember-modules"), &list, 0o644)?;
    write(&stage.join("init"), INIT_SCRIPT, 0o755)?;

    // cpio reads the names to archive from its standard input.
    let mut names = Vec::new();
    walk(stage, Path::new("."), &mut names)?;
    let names_file = stage.with_extension("list");
    std::fs::write(&names_file, names.join("\n") + "\n")
        .map_err(ImageError::io("writing", &names_file))?;
    let mut cmd = tools::command(
        "cpio",
        &[
            OsStr::new("-o"),
            OsStr::new("-H"),
            OsStr::new("newc"),
            OsStr::new("-R"),
            OsStr::new("0:0"),
            OsStr::new("--reproducible"),
            OsStr::new("--quiet"),
        ],
        log,
    )?;
    let input = File::open(&names_file).map_err(ImageError::io("reading", &names_file))?;
    let output = File::create(out).map_err(ImageError::io("creating", out))?;
    cmd.current_dir(stage)
        .stdin(Stdio::from(input))
        .stdout(Stdio::from(output));
    tools::wait("cpio (writing initrd.img)", "cpio", cmd, log)?;
    let _ = std::fs::remove_file(&names_file);
    Ok(())
}

/// Every path under `dir` (relative, `./`-prefixed), parents before children.
fn walk(root: &Path, rel: &Path, out: &mut Vec<String>) -> Result<(), ImageError> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(ImageError::io("reading", &dir))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let rel = rel.join(e.file_name());
        out.push(rel.to_string_lossy().into_owned());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(root, &rel, out)?;
        }
    }
    Ok(())
}
