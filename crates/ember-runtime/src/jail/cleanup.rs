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
/// missing directory is fine. Nothing is ever removed through a mount: the mounts are found
/// first and detached before the directory goes.
///
/// The mounts are found by walking `dir` (`mount_roots_under`: `statx`'s mount-root
/// attribute, never descending into a mount), which costs a few calls per file in the jail;
/// reading `/proc/self/mountinfo` instead costs as much as the host has mounts — every live
/// jailed VM's exposed files — and was ~2% of the host's CPU during a jailed pool refill
/// (`ember bench jail`, 32 VMs). Kernels without the attribute (before 5.8) use mountinfo.
pub fn remove_jail_dir(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let mut under = match mount_roots_under(dir) {
        Some(found) => found?,
        None => mount_points()?
            .into_iter()
            .filter(|m| m.starts_with(dir))
            .collect(),
    };
    under.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in under {
        // Mounts may be stacked on one path: detach until none is left.
        for _ in 0..16 {
            match umount2(&m, MntFlags::MNT_DETACH) {
                Ok(()) => {}
                Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The mount points at or under `dir` (`dir` included if it is one), found by walking it and
/// asking `statx` whether each entry is the root of a mount; mounts are not descended into.
/// An entry on another device than its directory counts as a mount too. `None` when the
/// kernel does not report the attribute.
fn mount_roots_under(dir: &Path) -> Option<io::Result<Vec<PathBuf>>> {
    use rustix::fs::{AtFlags, CWD, StatxAttributes, StatxFlags, statx};
    let look = |p: &Path| {
        statx(
            CWD,
            p,
            AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT,
            StatxFlags::TYPE,
        )
    };
    let top = match look(dir) {
        Ok(s) => s,
        Err(e) => return Some(Err(e.into())),
    };
    if !top
        .stx_attributes_mask
        .contains(StatxAttributes::MOUNT_ROOT)
    {
        return None;
    }
    let is_mount = |s: &rustix::fs::Statx, parent: &rustix::fs::Statx| {
        s.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
            || (s.stx_dev_major, s.stx_dev_minor) != (parent.stx_dev_major, parent.stx_dev_minor)
    };
    let mut found = Vec::new();
    if top.stx_attributes.contains(StatxAttributes::MOUNT_ROOT) {
        found.push(dir.to_path_buf());
    }
    let mut stack = vec![(dir.to_path_buf(), top)];
    while let Some((d, st)) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Some(Err(e)),
        };
        for entry in entries {
            let path = match entry {
                Ok(e) => e.path(),
                Err(e) => return Some(Err(e)),
            };
            let s = match look(&path) {
                Ok(s) => s,
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Some(Err(e.into())),
            };
            if is_mount(&s, &st) {
                found.push(path);
            } else if rustix::fs::FileType::from_raw_mode(s.stx_mode.into())
                == rustix::fs::FileType::Directory
            {
                stack.push((path, s));
            }
        }
    }
    Some(Ok(found))
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
    fn the_walk_finds_the_mounts_in_a_jail_and_the_removal_spares_what_they_show() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let host = tempfile::tempdir().unwrap();
        let data = host.path().join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::write(data.join("sub/keep"), b"x").unwrap();
        std::fs::write(host.path().join("file"), b"y").unwrap();
        let jail = host.path().join("jail");
        std::fs::create_dir_all(jail.join("a/b")).unwrap();
        std::fs::create_dir_all(jail.join("dir")).unwrap();
        std::fs::write(jail.join("a/b/f"), b"").unwrap();
        let bind = |src: &Path, dst: &Path| {
            nix::mount::mount(
                Some(src),
                dst,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .unwrap()
        };
        bind(&host.path().join("file"), &jail.join("a/b/f"));
        bind(&data, &jail.join("dir"));
        let Some(found) = mount_roots_under(&jail) else {
            eprintln!("skipped: the kernel does not report mount roots");
            return;
        };
        let mut found = found.unwrap();
        found.sort();
        assert_eq!(found, vec![jail.join("a/b/f"), jail.join("dir")]);
        remove_jail_dir(&jail).unwrap();
        assert!(!jail.exists());
        assert_eq!(std::fs::read(data.join("sub/keep")).unwrap(), b"x");
        assert_eq!(std::fs::read(host.path().join("file")).unwrap(), b"y");
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }
}
