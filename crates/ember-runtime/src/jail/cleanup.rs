//! Removing what jails leave: every mount under a jail directory (read from
//! `/proc/self/mountinfo`, deepest first) and the directory; for a provider root whose VMMs are
//! all gone, its jail roots, the shared `jails` mount and its cgroups.

use std::io;
use std::path::{Path, PathBuf};

use ember_jailer::cgroup;
use nix::mount::{MntFlags, umount2};

use super::root_tag;

/// The mount points in this mount namespace, from `/proc/self/mountinfo` (octal escapes
/// decoded).
pub(super) fn mount_points() -> io::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect())
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts (lazily) every mount at or under `dir`, deepest first, then removes `dir`. A
/// missing directory is fine.
pub fn remove_jail_dir(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let mut under: Vec<PathBuf> = mount_points()?
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect();
    under.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in under {
        match umount2(&m, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes what jailing leaves of a provider root whose VMMs are all gone (killed by an
/// operator, or a test): the jail roots with their mounts, the shared `<root>/jails` mount, and
/// the root's cgroups (waiting up to ~1 s for just-killed processes to leave them). For a
/// detached provider's root after its daemon is gone for good; a running provider cleans up
/// after itself.
pub fn remove_leftovers(root: &Path, cgroup_root: &Path) -> io::Result<()> {
    let root = std::path::absolute(root)?;
    remove_jail_dir(&root.join("jails"))?;
    let Ok(version) = cgroup::detect(cgroup_root) else {
        return Ok(());
    };
    let parent = format!("ember-{}", root_tag(&root));
    for dir in cgroup::dirs(cgroup_root, version, &parent, "x") {
        let Some(parent_dir) = dir.parent() else {
            continue;
        };
        let slots: Vec<PathBuf> = std::fs::read_dir(parent_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("slot") || name.starts_with(super::recycle::FREE_CGROUP_PREFIX)
            })
            .map(|e| e.path())
            .collect();
        for slot in slots {
            for _ in 0..200 {
                match std::fs::remove_dir(&slot) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    _ => break,
                }
            }
        }
        let _ = std::fs::remove_dir(parent_dir);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }
}
