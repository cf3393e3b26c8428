//! Where a Linux guest image's root tree comes from ([`ImageSource`]): the one model shared by
//! `ember image build`, ember-host's image builder and emberd's template API (a template whose
//! guest is `{"kind": "image", ...}` is built from it). The checks here need no host: names and
//! paths only; the builder checks what exists.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::VmError;

/// The suite debootstrap installs by default.
pub const DEFAULT_SUITE: &str = "bookworm";
/// The mirror debootstrap downloads from by default.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// The packages installed by default (on top of debootstrap's minbase).
pub const DEFAULT_PACKAGES: &[&str] = &["bash", "coreutils", "python3"];

/// Where an image's root tree comes from.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ImageSource {
    /// `debootstrap --variant=minbase --include=<packages> <suite> <dir> <mirror>`.
    Debootstrap {
        /// The Debian suite (default `bookworm`).
        #[serde(default = "default_suite")]
        suite: String,
        /// The archive mirror (default `http://deb.debian.org/debian`).
        #[serde(default = "default_mirror")]
        mirror: String,
        /// Packages on top of minbase (default bash, coreutils, python3).
        #[serde(default = "default_packages")]
        packages: Vec<String>,
    },
    /// A copy of a directory on the host (owners, modes and links kept).
    Dir {
        /// The directory (absolute).
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        path: PathBuf,
    },
    /// A tarball on the host (e.g. `docker export` output), unpacked with numeric owners.
    Tar {
        /// The tarball (absolute).
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        path: PathBuf,
    },
}

fn default_suite() -> String {
    DEFAULT_SUITE.into()
}

fn default_mirror() -> String {
    DEFAULT_MIRROR.into()
}

fn default_packages() -> Vec<String> {
    DEFAULT_PACKAGES.iter().map(|p| p.to_string()).collect()
}

impl ImageSource {
    /// A debootstrap of the default suite from the default mirror with `packages` (the
    /// default packages when `None`).
    pub fn debootstrap(packages: Option<Vec<String>>) -> Self {
        ImageSource::Debootstrap {
            suite: default_suite(),
            mirror: default_mirror(),
            packages: packages.unwrap_or_else(default_packages),
        }
    }

    /// Checks names and paths (errors name `<prefix>suite`, `<prefix>mirror`,
    /// `<prefix>packages` or `<prefix>path`: `--` for the command line, `spec.guest.source.`
    /// for the API); sorts and de-duplicates the package list, so one set of packages is one
    /// image.
    pub fn normalize(&mut self, prefix: &str) -> Result<(), VmError> {
        let field = |name: &str| format!("{prefix}{name}");
        match self {
            ImageSource::Debootstrap {
                suite,
                mirror,
                packages,
            } => {
                let word = |s: &str| {
                    !s.is_empty()
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"+-._~".contains(&b))
                };
                if !word(suite) {
                    return Err(VmError::invalid_spec(
                        field("suite"),
                        format!("{suite:?} is not a suite name"),
                    ));
                }
                if mirror.is_empty() || mirror.contains(char::is_whitespace) {
                    return Err(VmError::invalid_spec(
                        field("mirror"),
                        format!("{mirror:?} is not a URL"),
                    ));
                }
                if let Some(bad) = packages
                    .iter()
                    .find(|p| !word(p) || !p.starts_with(|c: char| c.is_ascii_alphanumeric()))
                {
                    return Err(VmError::invalid_spec(
                        field("packages"),
                        format!("{bad:?} is not a Debian package name"),
                    ));
                }
                packages.sort();
                packages.dedup();
                Ok(())
            }
            ImageSource::Dir { path } | ImageSource::Tar { path } => {
                if path.as_os_str().is_empty() || !path.is_absolute() {
                    return Err(VmError::invalid_spec(
                        field("path"),
                        format!("{} must be an absolute path", path.display()),
                    ));
                }
                Ok(())
            }
        }
    }

    /// One line saying what it is (`debootstrap bookworm + bash,python3`, `directory /x`).
    pub fn describe(&self) -> String {
        match self {
            ImageSource::Debootstrap {
                suite, packages, ..
            } => format!("debootstrap {suite} + {}", packages.join(",")),
            ImageSource::Dir { path } => format!("directory {}", path.display()),
            ImageSource::Tar { path } => format!("tarball {}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_a_bare_debootstrap() {
        let s: ImageSource = serde_json::from_str(r#"{"kind": "debootstrap"}"#).unwrap();
        assert_eq!(s, ImageSource::debootstrap(None));
        let s: ImageSource =
            serde_json::from_str(r#"{"kind": "debootstrap", "packages": ["curl"]}"#).unwrap();
        assert_eq!(s, ImageSource::debootstrap(Some(vec!["curl".into()])));
    }

    #[test]
    fn normalize_sorts_and_names_the_bad_field() {
        let mut s = ImageSource::debootstrap(Some(vec!["vim".into(), "curl".into(), "vim".into()]));
        s.normalize("--").unwrap();
        assert_eq!(
            s,
            ImageSource::debootstrap(Some(vec!["curl".into(), "vim".into()]))
        );

        let mut s = ImageSource::debootstrap(Some(vec!["bad name".into()]));
        let e = s.normalize("spec.guest.source.").unwrap_err().to_string();
        assert!(
            e.contains("spec.guest.source.packages") && e.contains("bad name"),
            "{e}"
        );

        let mut s = ImageSource::Debootstrap {
            suite: "book worm".into(),
            mirror: DEFAULT_MIRROR.into(),
            packages: vec![],
        };
        assert!(
            s.normalize("--")
                .unwrap_err()
                .to_string()
                .contains("--suite")
        );

        let mut s = ImageSource::Tar {
            path: "rel/x.tar".into(),
        };
        let e = s.normalize("--").unwrap_err().to_string();
        assert!(e.contains("--path") && e.contains("absolute"), "{e}");
    }

    #[test]
    fn unknown_fields_and_kinds_are_refused() {
        assert!(serde_json::from_str::<ImageSource>(r#"{"kind": "docker"}"#).is_err());
        assert!(
            serde_json::from_str::<ImageSource>(r#"{"kind": "dir", "path": "/x", "y": 1}"#)
                .is_err()
        );
    }
}
