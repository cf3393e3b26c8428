//! Where an image's root tree comes from ([`Source`]): a debootstrap of a Debian suite with
//! extra packages (its downloaded .debs and package lists removed), a directory, or a tarball
//! (e.g. `docker export` output); and what every tree gets before it becomes a filesystem:
//! ember-agent at
//! [`AGENT_GUEST_PATH`](super::agent::AGENT_GUEST_PATH), root's account, `/root` and `/tmp`.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::agent::AGENT_GUEST_PATH;
use super::error::ImageError;
use super::hash::ContentHash;
use super::tools;

/// Where an image's root tree comes from: ember-core's model, shared with the API.
pub use ember_core::ImageSource as Source;
pub use ember_core::image_source::{DEFAULT_MIRROR, DEFAULT_PACKAGES, DEFAULT_SUITE};

/// The external tools populating `source` needs.
pub fn tools(source: &Source) -> &'static [&'static str] {
    match source {
        Source::Debootstrap { .. } => &["debootstrap"],
        Source::Dir { .. } => &["cp"],
        Source::Tar { .. } => &["tar"],
    }
}

/// Checks `source` before anything starts: its names (errors name the command line's
/// options), and that a directory or tarball exists (made absolute first); sorts and
/// de-duplicates the package list.
pub fn validate(source: &mut Source) -> Result<(), ImageError> {
    if let Source::Dir { path } | Source::Tar { path } = source {
        *path = std::path::absolute(&*path).map_err(ImageError::io("resolving", &*path))?;
    }
    source
        .normalize("--")
        .map_err(|e| ImageError::BadOption(e.to_string()))?;
    match source {
        Source::Debootstrap { .. } => Ok(()),
        Source::Dir { path } => match std::fs::metadata(&*path) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(bad(path, "not a directory")),
            Err(e) => Err(bad(path, &e.to_string())),
        },
        Source::Tar { path } => match std::fs::metadata(&*path) {
            Ok(m) if m.is_file() => Ok(()),
            Ok(_) => Err(bad(path, "not a file")),
            Err(e) => Err(bad(path, &e.to_string())),
        },
    }
}

/// Feeds what decides `source`'s tree into `h`.
pub fn hash_into(source: &Source, h: &mut ContentHash) -> Result<(), ImageError> {
    match source {
        Source::Debootstrap {
            suite,
            mirror,
            packages,
        } => {
            h.text("source", "debootstrap");
            h.text("suite", suite);
            h.text("mirror", mirror);
            h.text("packages", &packages.join(","));
            Ok(())
        }
        Source::Dir { path } => {
            h.text("source", "dir");
            h.tree(path)
        }
        Source::Tar { path } => {
            h.text("source", "tar");
            h.file("tar", path)
        }
    }
}

/// Fills `tree` (an empty directory) from `source`, logging the tools' output to `log`;
/// debootstrap's `I: ...` progress lines are passed to `on_line` as they come.
pub fn populate(
    source: &Source,
    tree: &Path,
    log: &Path,
    on_line: &dyn Fn(&str),
) -> Result<(), ImageError> {
    match source {
        Source::Debootstrap {
            suite,
            mirror,
            packages,
        } => {
            let include = format!("--include={}", packages.join(","));
            let mut args = vec![OsStr::new("--variant=minbase")];
            if !packages.is_empty() {
                args.push(OsStr::new(&include));
            }
            args.extend([OsStr::new(suite), tree.as_os_str(), OsStr::new(mirror)]);
            let what = format!("debootstrap {suite} from {mirror}");
            run_watched(&what, &args, log, on_line).map_err(|e| {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                match missing_debs(&text) {
                    Some(packages) => ImageError::NoSuchPackage {
                        packages,
                        suite: suite.clone(),
                        mirror: mirror.clone(),
                        log: log.to_path_buf(),
                    },
                    None => e,
                }
            })?;
            // The downloaded .debs and the archive's package lists (~100 MiB): not needed
            // to run, and `apt-get update` fetches fresh lists.
            for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
                clear_files(&inside(tree, dir)?)?;
            }
            // debootstrap copies the build host's resolv.conf and hostname: not the guest's.
            // (a link itself is removed, not followed)
            let resolv = inside(tree, "etc")?.join("resolv.conf");
            let _ = std::fs::remove_file(&resolv);
            write(&resolv, "", 0o644)?;
            write(&inside(tree, "etc/hostname")?, "ember\n", 0o644)
        }
        Source::Dir { path } => {
            let mut from = path.clone().into_os_string();
            from.push("/.");
            tools::run(
                &format!("copying {}", path.display()),
                "cp",
                &[OsStr::new("-a"), &from, tree.as_os_str()],
                None,
                log,
            )
        }
        Source::Tar { path } => tools::run(
            &format!("unpacking {}", path.display()),
            "tar",
            &[
                OsStr::new("-x"),
                OsStr::new("-p"),
                OsStr::new("--numeric-owner"),
                OsStr::new("-f"),
                path.as_os_str(),
                OsStr::new("-C"),
                tree.as_os_str(),
            ],
            None,
            log,
        ),
    }
}

/// Runs debootstrap with `args`, its output going to `log`, whose new `I: ` lines are passed to
/// `on_line` every quarter second.
fn run_watched(
    what: &str,
    args: &[&OsStr],
    log: &Path,
    on_line: &dyn Fn(&str),
) -> Result<(), ImageError> {
    let failed = |status: String| ImageError::ToolFailed {
        what: what.to_string(),
        status,
        log: log.to_path_buf(),
    };
    let mut child = tools::command("debootstrap", args, log)?
        .spawn()
        .map_err(|e| failed(format!("debootstrap could not start: {e}")))?;
    let start = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    let mut seen = usize::try_from(start).unwrap_or(0);
    loop {
        let done = child
            .try_wait()
            .map_err(|e| failed(format!("waiting for debootstrap: {e}")))?;
        if let Ok(bytes) = std::fs::read(log)
            && let Some(new) = bytes.get(seen..)
            && let Some(end) = new.iter().rposition(|&b| b == b'\n')
        {
            for line in String::from_utf8_lossy(&new[..end]).lines() {
                if line.starts_with("I: ") {
                    on_line(line);
                }
            }
            seen += end + 1;
        }
        match done {
            Some(status) if status.success() => return Ok(()),
            Some(status) => return Err(failed(status.to_string())),
            None => std::thread::sleep(std::time::Duration::from_millis(250)),
        }
    }
}

/// Removes the regular files directly in `dir` (not its subdirectories, e.g. `partial/`).
fn clear_files(dir: &Path) -> Result<(), ImageError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ImageError::io("reading", dir)(e)),
    };
    for e in entries.filter_map(|e| e.ok()) {
        if e.file_type().is_ok_and(|t| t.is_file()) && e.file_name() != "lock" {
            std::fs::remove_file(e.path()).map_err(ImageError::io("removing", e.path()))?;
        }
    }
    Ok(())
}

fn bad(path: &Path, reason: &str) -> ImageError {
    ImageError::BadSource {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), ImageError> {
    std::fs::write(path, text).map_err(ImageError::io("writing", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(ImageError::io("chmod", path))
}

/// The packages of debootstrap's `E: Couldn't find these debs: a b` line.
pub fn missing_debs(log: &str) -> Option<Vec<String>> {
    log.lines().find_map(|l| {
        let list = l.split("Couldn't find these debs:").nth(1)?;
        let names: Vec<String> = list.split_whitespace().map(str::to_string).collect();
        (!names.is_empty()).then_some(names)
    })
}

/// `tree/rel`, refused when it or a directory on the way is a symbolic link: the tree is
/// written to as root, and a link (`usr -> /usr`) would lead the write out of it.
fn inside(tree: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    let mut path = tree.to_path_buf();
    for part in rel.split('/') {
        path.push(part);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(ImageError::BadSource {
                path: path.clone(),
                reason: format!("a symbolic link where the image builder writes /{rel}"),
            });
        }
    }
    Ok(path)
}

/// What every tree gets: the agent at [`AGENT_GUEST_PATH`] (0755), root in `/etc/passwd` (home
/// `/root`) and `/etc/group`, `/root` (0700) and `/tmp` (1777); and, unless the tree has one
/// already, the unprivileged account E2B's clients run commands as: `user` (uid and gid
/// [`USER_ID`], home `/home/user`, bash when the tree has it).
pub fn finish_tree(tree: &Path, agent: &Path) -> Result<(), ImageError> {
    finish_root(tree, agent)?;
    add_user(tree)
}

/// The uid and gid of the `user` account images get.
pub const USER_ID: u32 = 1000;

/// Adds the `user` account and its home, unless the tree names a `user` or uses uid 1000.
fn add_user(tree: &Path) -> Result<(), ImageError> {
    let passwd_path = inside(tree, "etc/passwd")?;
    let group_path = inside(tree, "etc/group")?;
    let read = |p: &Path| std::fs::read_to_string(p).map_err(ImageError::io("reading", p));
    let passwd = read(&passwd_path)?;
    let taken = |text: &str| {
        text.lines().any(|l| {
            let f: Vec<&str> = l.split(':').collect();
            f.first() == Some(&"user") || f.get(2) == Some(&USER_ID.to_string().as_str())
        })
    };
    if taken(&passwd) {
        return Ok(());
    }
    // Only looked at (merged-/usr trees have /bin as a link): nothing is written there.
    let shell = if tree.join("usr/bin/bash").is_file() || tree.join("bin/bash").is_file() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let home = inside(tree, "home/user")?;
    std::fs::create_dir_all(&home).map_err(ImageError::io("creating", &home))?;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755))
        .map_err(ImageError::io("chmod", &home))?;
    std::os::unix::fs::chown(&home, Some(USER_ID), Some(USER_ID))
        .map_err(ImageError::io("chown", &home))?;
    let mut text = passwd;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "user:x:{USER_ID}:{USER_ID}:user:/home/user:{shell}\n"
    ));
    write(&passwd_path, &text, 0o644)?;
    let mut group = read(&group_path)?;
    if !taken(&group) {
        if !group.is_empty() && !group.ends_with('\n') {
            group.push('\n');
        }
        group.push_str(&format!("user:x:{USER_ID}:\n"));
        write(&group_path, &group, 0o644)?;
    }
    Ok(())
}

fn finish_root(tree: &Path, agent: &Path) -> Result<(), ImageError> {
    let mkdir = |p: &Path, mode: u32| -> Result<(), ImageError> {
        if std::fs::symlink_metadata(p).is_err() {
            std::fs::create_dir_all(p).map_err(ImageError::io("creating", p))?;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                .map_err(ImageError::io("chmod", p))?;
        }
        Ok(())
    };
    let agent_dst = inside(tree, AGENT_GUEST_PATH.trim_start_matches('/'))?;
    if let Some(dir) = agent_dst.parent() {
        mkdir(dir, 0o755)?;
    }
    let _ = std::fs::remove_file(&agent_dst);
    std::fs::copy(agent, &agent_dst).map_err(ImageError::io("copying the agent to", &agent_dst))?;
    std::fs::set_permissions(&agent_dst, std::fs::Permissions::from_mode(0o755))
        .map_err(ImageError::io("chmod", &agent_dst))?;
    for (dir, mode) in [
        ("etc", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
    ] {
        mkdir(&tree.join(dir), mode)?;
    }
    for (file, line) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh"),
        ("etc/group", "root:x:0:"),
    ] {
        let path = inside(tree, file)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(ImageError::io("reading", &path)(e)),
        };
        if !text.lines().any(|l| l.starts_with("root:")) {
            let mut new = format!("{line}\n");
            new.push_str(&text);
            write(&path, &new, 0o644)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_in_the_way_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"agent").unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), tree.join("usr")).unwrap();
        let e = finish_tree(&tree, &agent).unwrap_err().to_string();
        assert!(e.contains("symbolic link") && e.contains("usr"), "{e}");
        std::fs::remove_file(tree.join("usr")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", tree.join("etc/passwd")).unwrap();
        let e = finish_tree(&tree, &agent).unwrap_err().to_string();
        assert!(e.contains("etc/passwd"), "{e}");
        std::fs::remove_file(tree.join("etc/passwd")).unwrap();
        finish_tree(&tree, &agent).unwrap();
        assert_eq!(
            std::fs::read(tree.join("usr/local/bin/ember-agent")).unwrap(),
            b"agent"
        );
        let passwd = std::fs::read_to_string(tree.join("etc/passwd")).unwrap();
        assert!(passwd.starts_with("root:x:0:0:root:/root:"), "{passwd}");
        assert!(
            passwd.contains("\nuser:x:1000:1000:user:/home/user:/bin/sh\n"),
            "{passwd}"
        );
        let group = std::fs::read_to_string(tree.join("etc/group")).unwrap();
        assert!(group.contains("\nuser:x:1000:\n"), "{group}");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(tree.join("home/user")).unwrap().uid(),
            1000
        );
        // Once there, it is not added again.
        finish_tree(&tree, &agent).unwrap();
        let again = std::fs::read_to_string(tree.join("etc/passwd")).unwrap();
        assert_eq!(again, passwd);
    }

    #[test]
    fn missing_debs_line() {
        let log = "I: Retrieving Release\nE: Couldn't find these debs: nosuchpkg other\n";
        assert_eq!(missing_debs(log).unwrap(), ["nosuchpkg", "other"]);
        assert!(missing_debs("E: something else").is_none());
    }

    #[test]
    fn validate_sorts_and_refuses() {
        let mut s = Source::debootstrap(Some(vec!["b".into(), "a".into(), "b".into()]));
        validate(&mut s).unwrap();
        assert!(matches!(&s, Source::Debootstrap { packages, .. } if packages == &["a", "b"]));
        let mut s = Source::debootstrap(Some(vec!["a,b".into()]));
        let e = validate(&mut s).unwrap_err().to_string();
        assert!(e.contains("a,b") && e.contains("--packages"), "{e}");
        let mut s = Source::Dir {
            path: "/nonexistent-ember".into(),
        };
        assert!(
            validate(&mut s)
                .unwrap_err()
                .to_string()
                .contains("/nonexistent-ember")
        );
    }
}
