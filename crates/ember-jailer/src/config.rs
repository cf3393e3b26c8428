//! What a jail is made of, checked before anything is created: the VM's id, its root
//! directory, the uid/gid it runs as, the host files it may see (bind mounts), the network
//! namespace to join, and its cgroup limits.

use std::path::{Component, Path, PathBuf};

use crate::cgroup::Limits;

/// Longest VM id (it names a cgroup and the hostname).
pub const MAX_ID_LEN: usize = 64;

/// One host path made visible inside the jail.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bind {
    /// The host path (file or directory).
    pub source: PathBuf,
    /// Where it appears inside the jail (absolute, no `..`).
    pub target: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

impl Bind {
    /// Parses `SOURCE[:TARGET][:ro|:rw]` (TARGET defaults to SOURCE; read-only by default).
    pub fn parse(spec: &str) -> Result<Bind, ConfigError> {
        let bad = |why: &str| ConfigError::Bind {
            spec: spec.to_string(),
            why: why.to_string(),
        };
        let mut parts: Vec<&str> = spec.split(':').collect();
        let read_only = match parts.last() {
            Some(&"ro") if parts.len() > 1 => {
                parts.pop();
                true
            }
            Some(&"rw") if parts.len() > 1 => {
                parts.pop();
                false
            }
            _ => true,
        };
        let (source, target) = match parts.as_slice() {
            [s] => (*s, *s),
            [s, t] => (*s, *t),
            _ => return Err(bad("expected SOURCE[:TARGET][:ro|:rw]")),
        };
        if source.is_empty() || target.is_empty() {
            return Err(bad("empty path"));
        }
        let target = PathBuf::from(target);
        check_inside(&target).map_err(bad)?;
        Ok(Bind {
            source: PathBuf::from(source),
            target,
            read_only,
        })
    }
}

/// A path inside the jail must be absolute, normal, and not the root itself.
fn check_inside(path: &Path) -> Result<(), &'static str> {
    if !path.is_absolute() {
        return Err("the target must be an absolute path inside the jail");
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err("the target must not contain '.' or '..'");
    }
    if path.components().count() < 2 {
        return Err("the target cannot be the jail's root");
    }
    Ok(())
}

/// Everything the jailer needs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct JailConfig {
    /// The VM's id: `[A-Za-z0-9_-]`, 1..=64 characters.
    pub id: String,
    /// The directory that becomes the VMM's `/` (it must exist; it is chowned to uid:gid).
    pub root: PathBuf,
    /// The VMM binary, bind-mounted read-only at `/<file name>` in the jail and executed.
    pub exec_file: PathBuf,
    /// The uid the VMM runs as (not 0).
    pub uid: u32,
    /// The gid the VMM runs as (not 0).
    pub gid: u32,
    /// Host files the VMM may see.
    pub binds: Vec<Bind>,
    /// A network namespace to join (e.g. `/var/run/netns/<name>`); a new, empty one otherwise.
    pub netns: Option<PathBuf>,
    /// The cgroup (under `parent_cgroup`) and its limits.
    pub limits: Limits,
    /// The cgroup directory under each controller's root that holds the VMs' cgroups.
    pub parent_cgroup: String,
    /// The VMM's arguments.
    pub args: Vec<String>,
    /// Tie the VMM to this process's life (the owner that started the jailer): the jailer
    /// stays as the VMM's parent with a parent-death signal on itself, and the VMM gets one on
    /// the jailer, so the owner's death takes the VMM with it. `None`: the jailer exits once
    /// the VMM runs, and the VMM lives on its own.
    pub tie_to: Option<u32>,
    /// List the VMM binary's shared libraries with `ldd` and bind them. Off when the caller
    /// passes them in `binds` itself (a runtime lists them once, not per VMM).
    pub scan_libraries: bool,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The id has characters or a length a cgroup/hostname cannot carry.
    #[error("invalid id {0:?}: use 1 to 64 of A-Z a-z 0-9 _ -")]
    Id(String),
    /// uid or gid 0.
    #[error("the VMM must not run as {what} 0")]
    Root {
        /// "uid" or "gid".
        what: &'static str,
    },
    /// A path that must exist does not, or is of the wrong kind.
    #[error("{what} {path}: {why}")]
    Path {
        /// Which path.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A malformed bind.
    #[error("invalid bind {spec:?}: {why}")]
    Bind {
        /// The argument.
        spec: String,
        /// What is wrong.
        why: String,
    },
    /// The parent cgroup name is not a plain relative path.
    #[error("invalid parent cgroup {0:?}: use names of A-Z a-z 0-9 _ - separated by /")]
    ParentCgroup(String),
}

/// Whether `s` is a valid VM id.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl JailConfig {
    /// Checks everything that can be checked before creating anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !valid_id(&self.id) {
            return Err(ConfigError::Id(self.id.clone()));
        }
        if self.uid == 0 {
            return Err(ConfigError::Root { what: "uid" });
        }
        if self.gid == 0 {
            return Err(ConfigError::Root { what: "gid" });
        }
        if self.parent_cgroup.is_empty() || !self.parent_cgroup.split('/').all(valid_id) {
            return Err(ConfigError::ParentCgroup(self.parent_cgroup.clone()));
        }
        let path_err = |what, path: &Path, why: String| ConfigError::Path {
            what,
            path: path.to_path_buf(),
            why,
        };
        match std::fs::symlink_metadata(&self.root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(path_err("root", &self.root, "not a directory".into())),
            Err(e) => return Err(path_err("root", &self.root, e.to_string())),
        }
        if !self.root.is_absolute() {
            return Err(path_err(
                "root",
                &self.root,
                "must be an absolute path".into(),
            ));
        }
        match std::fs::metadata(&self.exec_file) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(path_err(
                    "exec file",
                    &self.exec_file,
                    "not a regular file".into(),
                ));
            }
            Err(e) => return Err(path_err("exec file", &self.exec_file, e.to_string())),
        }
        if self.exec_file.file_name().is_none() {
            return Err(path_err(
                "exec file",
                &self.exec_file,
                "no file name".into(),
            ));
        }
        for bind in &self.binds {
            if let Err(e) = std::fs::metadata(&bind.source) {
                return Err(path_err("bind source", &bind.source, e.to_string()));
            }
        }
        if let Some(ns) = &self.netns
            && let Err(e) = std::fs::metadata(ns)
        {
            return Err(path_err("network namespace", ns, e.to_string()));
        }
        Ok(())
    }

    /// Where the VMM binary appears inside the jail.
    pub fn exec_in_jail(&self) -> PathBuf {
        let name = self.exec_file.file_name().unwrap_or_default();
        Path::new("/").join(name)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn binds_parse_with_defaults_and_refuse_escapes() {
        let b = Bind::parse("/srv/k").unwrap();
        assert_eq!(
            (b.source.to_str(), b.target.to_str(), b.read_only),
            (Some("/srv/k"), Some("/srv/k"), true)
        );
        let b = Bind::parse("/srv/k:/kernel:rw").unwrap();
        assert_eq!((b.target.to_str(), b.read_only), (Some("/kernel"), false));
        let b = Bind::parse("/srv/k:/kernel").unwrap();
        assert!(b.read_only);
        for bad in ["", "/a:", "/a:rel", "/a:/../etc", "/a:/", "/a:/b:/c:ro"] {
            assert!(Bind::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_are_plain_names() {
        assert!(valid_id("vm-1_A"));
        for bad in ["", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("vmm");
        std::fs::write(&exe, b"").unwrap();
        let good = JailConfig {
            id: "vm1".into(),
            root: dir.path().to_path_buf(),
            exec_file: exe.clone(),
            uid: 1000,
            gid: 1000,
            binds: vec![],
            netns: None,
            limits: Limits::default(),
            parent_cgroup: "ember".into(),
            args: vec![],
            tie_to: None,
            scan_libraries: true,
        };
        good.validate().unwrap();
        assert_eq!(good.exec_in_jail(), Path::new("/vmm"));
        let mut c = good.clone();
        c.uid = 0;
        assert!(c.validate().unwrap_err().to_string().contains("uid 0"));
        let mut c = good.clone();
        c.root = dir.path().join("missing");
        assert!(c.validate().unwrap_err().to_string().contains("root"));
        let mut c = good.clone();
        c.binds = vec![Bind::parse("/nonexistent-file:/x").unwrap()];
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("/nonexistent-file")
        );
        let mut c = good.clone();
        c.parent_cgroup = "../x".into();
        assert!(c.validate().is_err());
        let mut c = good;
        c.id = "a/b".into();
        assert!(c.validate().unwrap_err().to_string().contains("invalid id"));
    }
}
