//! `ember image build`: the command-line side of ember-host's [`image`](ember_host::image)
//! builder — its options, and the summary it prints (or `image.json` with `--json`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use ember_core::GuestSpec;
use ember_host::image::{self, BuildOptions, Built, Source};
use ember_host::ui::Ui;

/// `ember image build`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// Debian packages to install on top of debootstrap's minbase, comma-separated (replaces
    /// the default bash,coreutils,python3).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["from_dir", "from_tar"])]
    pub packages: Option<Vec<String>>,
    /// The Debian suite.
    #[arg(long, default_value = image::source::DEFAULT_SUITE, conflicts_with_all = ["from_dir", "from_tar"])]
    pub suite: String,
    /// The Debian mirror.
    #[arg(long, default_value = image::source::DEFAULT_MIRROR, conflicts_with_all = ["from_dir", "from_tar"])]
    pub mirror: String,
    /// Make the root tree from this directory instead (copied with owners and modes).
    #[arg(long, conflicts_with = "from_tar")]
    pub from_dir: Option<PathBuf>,
    /// Make the root tree from this tarball instead (e.g. `docker export` output).
    #[arg(long)]
    pub from_tar: Option<PathBuf>,
    /// The static ember-agent binary (default: $EMBER_AGENT_BIN, or ember-agent next to this
    /// executable).
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// Where images are kept (one directory per content hash).
    #[arg(long, default_value = image::cache::DEFAULT_CACHE_DIR)]
    pub cache_dir: PathBuf,
    /// Where unpacked kernels are kept (default: kernels/ in the cache directory).
    #[arg(long)]
    pub kernel_cache: Option<PathBuf>,
}

impl BuildArgs {
    /// The library's options (the agent located and checked).
    pub fn options(&self) -> Result<BuildOptions> {
        let source = match (&self.from_dir, &self.from_tar) {
            (Some(d), _) => Source::Dir { path: d.clone() },
            (None, Some(t)) => Source::Tar { path: t.clone() },
            (None, None) => Source::Debootstrap {
                suite: self.suite.clone(),
                mirror: self.mirror.clone(),
                packages: match &self.packages {
                    Some(p) => p.iter().map(|s| s.trim().to_string()).collect(),
                    None => image::source::DEFAULT_PACKAGES
                        .iter()
                        .map(|p| p.to_string())
                        .collect(),
                },
            },
        };
        Ok(BuildOptions {
            source,
            agent: image::agent::locate(self.agent.as_deref())?,
            cache_dir: self.cache_dir.clone(),
            kernel_cache: self.kernel_cache.clone(),
        })
    }
}

/// Builds the image and prints its summary (or its `image.json` with `json`).
pub fn build(args: &BuildArgs, json: bool, ui: &dyn Ui, out: &mut dyn Write) -> Result<()> {
    let opts = args.options()?;
    let built = image::build(&opts, ui).context("ember image build")?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&built.manifest)?)?;
    } else {
        write!(out, "{}", summary(&built))?;
    }
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// The human summary of a build.
pub fn summary(b: &Built) -> String {
    let m = &b.manifest;
    let how = if b.cached {
        format!("cached (took {:.1} s)", b.took.as_secs_f64())
    } else {
        format!("built in {:.1} s", b.took.as_secs_f64())
    };
    let source = match &m.source {
        Source::Debootstrap {
            suite, packages, ..
        } => format!("debootstrap {suite} + {}", packages.join(",")),
        Source::Dir { path } => format!("directory {}", path.display()),
        Source::Tar { path } => format!("tarball {}", path.display()),
    };
    let mut s = format!("image {} {how}\n", m.hash);
    s += &format!("  source   {source}\n");
    s += &format!(
        "  vmlinuz  {}  {} ({} {}), {}\n",
        m.dir.join("vmlinuz").display(),
        m.kernel_release,
        m.kernel.package,
        m.kernel.version,
        mib(m.sizes.vmlinuz)
    );
    s += &format!(
        "  initrd   {}  {}, {} modules\n",
        m.dir.join("initrd.img").display(),
        mib(m.sizes.initrd),
        m.modules.len()
    );
    s += &format!(
        "  rootfs   {}  {} (tree {}), attached read-only and shared by clones\n",
        m.dir.join("rootfs.ext4").display(),
        mib(m.sizes.rootfs),
        mib(m.sizes.tree)
    );
    s += "  guest writes go to a tmpfs overlay in guest RAM (ember.overlay_size=, default 50%),\n";
    s += "  which the template's memory snapshot carries\n";
    if let GuestSpec::Kernel { boot_args, .. } = &m.template.guest {
        s += &format!("  boot     {}\n", boot_args.as_deref().unwrap_or(""));
    }
    s += &format!(
        "  use it:  ember template build NAME --image {}\n",
        m.dir.display()
    );
    s
}
