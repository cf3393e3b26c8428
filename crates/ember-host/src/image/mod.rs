//! `ember image build`: a kernel, an initramfs and a root filesystem for Linux guests, cached
//! by content hash.
//!
//! The root tree is a debootstrap of Debian (default `bookworm` with bash, coreutils and
//! python3), a directory or a tarball ([`Source`]); ember-agent goes in at
//! `/usr/local/bin/ember-agent` ([`agent`]) and the tree becomes an ext4 image ([`rootfs`]).
//! The kernel is Debian's `linux-image-cloud-amd64` ([`kernel`]); the initramfs
//! ([`initramfs`]) loads its virtio modules, mounts the root disk **read-only** with a tmpfs
//! overlay, and starts the agent as PID 1. The root disk is shared by every clone of a
//! template; a guest's writes live in its RAM (the overlay's tmpfs), which the template's
//! memory snapshot carries.
//!
//! Modules: [`source`] (the root tree), [`agent`] (finding and checking the agent binary),
//! [`kernel`], [`initramfs`], [`rootfs`], [`hash`] (the content hash), [`cache`] (directories,
//! atomic rename), [`manifest`] (`image.json`), [`tools`] (external commands), [`error`].
//!
//! Needs root and these Debian packages: debootstrap (for a debootstrap source), e2fsprogs,
//! busybox-static, cpio, kmod, apt and dpkg.

pub mod agent;
pub mod cache;
pub mod error;
pub mod hash;
pub mod initramfs;
pub mod kernel;
pub mod manifest;
pub mod rootfs;
pub mod source;
pub mod tools;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use ember_core::{GuestSpec, TemplateSpec};

pub use error::ImageError;
pub use manifest::{ImageManifest, ImageSizes};
pub use source::Source;

use crate::ui::Ui;
use hash::ContentHash;

/// The builder's format: bump it when what a build makes changes for the same inputs.
pub const FORMAT_VERSION: u32 = 3;

/// The kernel command line of an image's template: serial console, reboot and panic exit the
/// VMM, no PCI (virtio-mmio), quiet; the network settings `/init` applies when the guest has
/// an `eth0` (ember-core's guest address and gateway).
pub const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=-1 pci=off quiet loglevel=3 ember.ip=172.16.0.2/30 ember.gw=172.16.0.1";

/// The vsock port the image's agent listens on.
pub const AGENT_PORT: u32 = 52;

/// The memory of an image's template, MiB (half of it is the overlay's tmpfs at most).
pub const TEMPLATE_MEM_MIB: u32 = 256;

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The root tree's source.
    pub source: Source,
    /// The ember-agent binary (static; see [`agent::locate`]).
    pub agent: PathBuf,
    /// The image cache ([`cache::DEFAULT_CACHE_DIR`] by default).
    pub cache_dir: PathBuf,
    /// Where unpacked kernels are kept (default: `kernels/` in the cache directory).
    pub kernel_cache: Option<PathBuf>,
}

/// A built (or found) image.
#[derive(Debug, Clone)]
pub struct Built {
    /// Its manifest.
    pub manifest: ImageManifest,
    /// It was in the cache already.
    pub cached: bool,
    /// How long this call took.
    pub took: Duration,
}

impl Built {
    /// The image's directory.
    pub fn dir(&self) -> &Path {
        &self.manifest.dir
    }
}

/// The tools every build needs, besides its source's.
const TOOLS: &[&str] = &[
    "mkfs.ext4",
    "cpio",
    "depmod",
    "apt-get",
    "apt-cache",
    "dpkg-deb",
    "du",
];

/// Builds the image `opts` asks for, or finds it in the cache. Progress goes to `ui`.
pub fn build(opts: &BuildOptions, ui: &dyn Ui) -> Result<Built, ImageError> {
    let start = Instant::now();
    tools::ensure_root()?;
    let mut source = opts.source.clone();
    source::validate(&mut source)?;
    tools::require(source::tools(&source))?;
    tools::require(TOOLS)?;
    agent::check_static(&opts.agent)?;
    let busybox = initramfs::check_busybox()?;
    let cache = absolute(&opts.cache_dir)?;
    let kernels = match &opts.kernel_cache {
        Some(k) => absolute(k)?,
        None => cache.join(cache::KERNELS_DIR),
    };
    for dir in [&cache, &kernels] {
        std::fs::create_dir_all(dir).map_err(ImageError::io("creating", dir))?;
        cache::clean_stale(dir)?;
    }

    ui.stage("[1/6] finding the kernel package", None);
    let kpkg = kernel::resolve(&kernels.join("apt-cache.log"))?;
    ui.finish(&format!("{} {}", kpkg.package, kpkg.version));

    ui.stage("[2/6] hashing the inputs", None);
    let mut h = ContentHash::default();
    h.text("format", &FORMAT_VERSION.to_string());
    source::hash_into(&source, &mut h)?;
    h.file("agent", &opts.agent)?;
    h.file("busybox", &busybox)?;
    h.text("kernel", &format!("{}={}", kpkg.package, kpkg.version));
    h.text("init", initramfs::INIT_SCRIPT);
    h.text("boot_args", BOOT_ARGS);
    let hash = h.finish();
    let dir = cache.join(&hash);
    if dir.join(manifest::MANIFEST).is_file() {
        let manifest = ImageManifest::read(&dir)?;
        ui.finish(&format!("{hash}: cached"));
        tracing::info!(%hash, dir = %dir.display(), "image cached");
        return Ok(Built {
            manifest,
            cached: true,
            took: start.elapsed(),
        });
    }
    ui.finish(&format!("{hash}: not cached, building"));

    let tmp = cache::tmp_dir(&cache, &hash);
    let log = cache::log_path(&cache, &hash);
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_file(&log);
    std::fs::create_dir_all(&tmp).map_err(ImageError::io("creating", &tmp))?;
    tracing::info!(%hash, tmp = %tmp.display(), log = %log.display(), "building an image");
    let result = build_in(
        &source, opts, &busybox, &kpkg, &kernels, &tmp, &dir, &hash, &log, ui, start,
    );
    match result {
        Ok(manifest) => {
            if let Err(e) = std::fs::rename(&tmp, &dir) {
                let _ = std::fs::remove_dir_all(&tmp);
                // Another build of the same image won the race: use its.
                if dir.join(manifest::MANIFEST).is_file() {
                    let manifest = ImageManifest::read(&dir)?;
                    return Ok(Built {
                        manifest,
                        cached: true,
                        took: start.elapsed(),
                    });
                }
                return Err(ImageError::io("renaming the build into place", &dir)(e));
            }
            let _ = std::fs::rename(&log, dir.join("build.log"));
            Ok(Built {
                manifest,
                cached: false,
                took: start.elapsed(),
            })
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            tracing::warn!(%hash, error = %e, log = %log.display(), "image build failed");
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn build_in(
    source: &Source,
    opts: &BuildOptions,
    busybox: &Path,
    kpkg: &kernel::KernelPackage,
    kernels: &Path,
    tmp: &Path,
    dir: &Path,
    hash: &str,
    log: &Path,
    ui: &dyn Ui,
    start: Instant,
) -> Result<ImageManifest, ImageError> {
    ui.stage(&format!("[3/6] kernel {}", kpkg.package), None);
    let k = kernel::fetch(kpkg, kernels, log, || {
        ui.stage(
            &format!("[3/6] downloading {} {}", kpkg.package, kpkg.version),
            None,
        );
    })?;
    let modules = k.initramfs_modules()?;
    ui.finish(&format!(
        "{} ({} modules for the initramfs)",
        k.release,
        modules.len()
    ));

    let tree = tmp.join("tree");
    std::fs::create_dir_all(&tree).map_err(ImageError::io("creating", &tree))?;
    let what = match source {
        Source::Debootstrap {
            suite, packages, ..
        } => {
            format!("debootstrap {suite} (minbase + {})", packages.join(", "))
        }
        Source::Dir { path } => format!("copying {}", path.display()),
        Source::Tar { path } => format!("unpacking {}", path.display()),
    };
    let stage = format!("[4/6] {what}");
    ui.stage(&stage, None);
    let populating = Instant::now();
    // debootstrap takes minutes: its progress lines become the stage's name as they come.
    source::populate(source, &tree, log, &|line| {
        ui.stage(
            &format!("[4/6] debootstrap: {}", line.trim_start_matches("I: ")),
            None,
        )
    })?;
    source::finish_tree(&tree, &opts.agent)?;
    ui.stage(&stage, None);
    ui.finish(&format!(
        "done in {:.0} s",
        populating.elapsed().as_secs_f64()
    ));

    ui.stage("[5/6] writing rootfs.ext4", None);
    let used = rootfs::tree_usage(&tree, log)?;
    let rootfs_path = tmp.join("rootfs.ext4");
    let rootfs_size = rootfs::build(&tree, &rootfs_path, log)?;
    std::fs::remove_dir_all(&tree).map_err(ImageError::io("removing", &tree))?;
    ui.finish(&format!(
        "{} MiB (tree {} MiB)",
        rootfs_size >> 20,
        used >> 20
    ));

    ui.stage("[6/6] writing initrd.img", None);
    let initrd = tmp.join("initrd.img");
    let stage = tmp.join("initrd");
    initramfs::build(&stage, busybox, &modules, &initrd, log)?;
    std::fs::remove_dir_all(&stage).map_err(ImageError::io("removing", &stage))?;
    let vmlinuz = tmp.join("vmlinuz");
    std::fs::copy(&k.vmlinuz, &vmlinuz).map_err(ImageError::io("copying", &k.vmlinuz))?;
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(ImageError::io("reading", p))
    };
    let sizes = ImageSizes {
        vmlinuz: size(&vmlinuz)?,
        initrd: size(&initrd)?,
        rootfs: rootfs_size,
        tree: used,
    };
    ui.finish(&format!("{} KiB", sizes.initrd >> 10));

    let manifest = ImageManifest {
        format: FORMAT_VERSION,
        hash: hash.to_string(),
        dir: dir.to_path_buf(),
        source: source.clone(),
        kernel: kpkg.clone(),
        kernel_release: k.release.clone(),
        modules: modules
            .iter()
            .filter_map(|m| m.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect(),
        sizes,
        created_unix_secs: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        build_secs: start.elapsed().as_secs_f64(),
        template: template_spec(dir),
    };
    manifest.write(tmp)?;
    Ok(manifest)
}

/// The template spec that boots the image in `dir`.
pub fn template_spec(dir: &Path) -> TemplateSpec {
    TemplateSpec {
        guest: GuestSpec::Kernel {
            kernel: dir.join("vmlinuz"),
            initrd: Some(dir.join("initrd.img")),
            boot_args: Some(BOOT_ARGS.to_string()),
            rootfs: Some(dir.join("rootfs.ext4")),
            rootfs_read_only: true,
        },
        mem_size_mib: TEMPLATE_MEM_MIB,
        agent_port: AGENT_PORT,
        ..TemplateSpec::probe()
    }
}

fn absolute(p: &Path) -> Result<PathBuf, ImageError> {
    std::path::absolute(p).map_err(ImageError::io("resolving", p))
}
