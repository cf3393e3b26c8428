//! The external tools a build runs (debootstrap, mkfs.ext4, tar, cpio, depmod, apt-get,
//! dpkg-deb), where they are, which Debian package provides each, and running one with its
//! output captured in a log file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::error::ImageError;

/// The Debian package that provides `tool`.
pub fn package_of(tool: &str) -> &'static str {
    match tool {
        "debootstrap" => "debootstrap",
        "mkfs.ext4" | "debugfs" => "e2fsprogs",
        "busybox" => "busybox-static",
        "cpio" => "cpio",
        "depmod" | "modinfo" => "kmod",
        "tar" => "tar",
        "apt-get" | "apt-cache" => "apt",
        "dpkg-deb" | "dpkg" => "dpkg",
        "du" | "cp" => "coreutils",
        _ => "(unknown)",
    }
}

/// The full path of `tool`: on `$PATH`, or in the sbin directories (not always on a user's
/// `$PATH`).
pub fn find(tool: &str) -> Result<PathBuf, ImageError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .ok_or_else(|| ImageError::MissingTool {
            tool: tool.to_string(),
            package: package_of(tool).to_string(),
        })
}

/// Checks every tool in `tools` is installed, naming the first missing one and its package.
pub fn require(tools: &[&str]) -> Result<(), ImageError> {
    tools.iter().try_for_each(|t| find(t).map(|_| ()))
}

/// Fails unless the process runs as root (its effective uid, from `/proc/self/status`).
pub fn ensure_root() -> Result<(), ImageError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(ImageError::io("reading", "/proc/self/status"))?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse::<u32>().ok());
    if euid == Some(0) {
        Ok(())
    } else {
        Err(ImageError::NotRoot)
    }
}

/// Runs `tool` with `args` (in `cwd` when given), its standard output and error appended to
/// `log`; `what` names the step in the error when it fails.
pub fn run(
    what: &str,
    tool: &str,
    args: &[&std::ffi::OsStr],
    cwd: Option<&Path>,
    log: &Path,
) -> Result<(), ImageError> {
    let mut cmd = command(tool, args, log)?;
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    wait(what, tool, cmd, log)
}

/// A [`Command`] for `tool` with its output appended to `log` and no standard input.
pub fn command(tool: &str, args: &[&std::ffi::OsStr], log: &Path) -> Result<Command, ImageError> {
    let exe = find(tool)?;
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(ImageError::io("opening the log", log))?;
    let err = out
        .try_clone()
        .map_err(ImageError::io("opening the log", log))?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .env("LC_ALL", "C");
    Ok(cmd)
}

/// Runs `cmd` to its end; a failure names `what` and the log.
pub fn wait(what: &str, tool: &str, mut cmd: Command, log: &Path) -> Result<(), ImageError> {
    tracing::debug!(tool, ?cmd, "running");
    let status = cmd.status().map_err(|e| ImageError::ToolFailed {
        what: what.to_string(),
        status: format!("{tool} could not start: {e}"),
        log: log.to_path_buf(),
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(ImageError::ToolFailed {
            what: what.to_string(),
            status: status.to_string(),
            log: log.to_path_buf(),
        })
    }
}

/// Runs `tool` and returns its standard output (its standard error goes to `log`).
pub fn output(
    what: &str,
    tool: &str,
    args: &[&std::ffi::OsStr],
    log: &Path,
) -> Result<String, ImageError> {
    let mut cmd = command(tool, args, log)?;
    cmd.stdout(Stdio::piped());
    tracing::debug!(tool, ?cmd, "running");
    let out = cmd.output().map_err(|e| ImageError::ToolFailed {
        what: what.to_string(),
        status: format!("{tool} could not start: {e}"),
        log: log.to_path_buf(),
    })?;
    if !out.status.success() {
        return Err(ImageError::ToolFailed {
            what: what.to_string(),
            status: out.status.to_string(),
            log: log.to_path_buf(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
