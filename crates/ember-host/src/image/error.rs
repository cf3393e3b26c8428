//! What can go wrong building an image: [`ImageError`], each variant naming what failed and,
//! for external tools, the log file that holds their output.

use std::path::PathBuf;

/// Why `ember image build` failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Building an image needs root (debootstrap, device nodes, owners in the image).
    #[error(
        "building an image needs root (debootstrap, file owners and device nodes in the image); run it with sudo or as root"
    )]
    NotRoot,
    /// An external tool is not installed.
    #[error("`{tool}` is not installed (on Debian or Ubuntu: apt-get install {package})")]
    MissingTool {
        /// The command.
        tool: String,
        /// The Debian package that provides it.
        package: String,
    },
    /// An external tool failed.
    #[error("{what} failed ({status}); its output is in {}", log.display())]
    ToolFailed {
        /// What was being done.
        what: String,
        /// How it ended.
        status: String,
        /// Where its output went.
        log: PathBuf,
    },
    /// Packages asked for do not exist in the suite.
    #[error("no such package in Debian {suite} ({mirror}): {}; debootstrap's output is in {}", packages.join(", "), log.display())]
    NoSuchPackage {
        /// The packages debootstrap could not find.
        packages: Vec<String>,
        /// The suite.
        suite: String,
        /// The mirror.
        mirror: String,
        /// debootstrap's log.
        log: PathBuf,
    },
    /// The source (directory or tarball) is not usable.
    #[error("the image source {}: {reason}", path.display())]
    BadSource {
        /// The directory or tarball.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The options are not usable.
    #[error("{0}")]
    BadOption(String),
    /// The ember-agent binary is missing or unusable.
    #[error("the ember-agent binary {}: {reason}", path.display())]
    Agent {
        /// Where it was looked for.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The kernel could not be found, downloaded or understood.
    #[error("the kernel: {0}")]
    Kernel(String),
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// image.json could not be written or read.
    #[error("image.json {}: {source}", path.display())]
    Manifest {
        /// The file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
}

impl ImageError {
    /// An [`ImageError::Io`] for `what` on `path`.
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
    }
}
