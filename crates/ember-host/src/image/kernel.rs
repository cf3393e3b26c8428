//! The guest kernel: Debian's `linux-image-cloud-amd64`, resolved with `apt-cache` to the real
//! `linux-image-<ver>-cloud-amd64` package it depends on, downloaded with `apt-get download`,
//! unpacked with `dpkg -x` and indexed with `depmod` once per package version under the kernel
//! cache; and the modules the initramfs loads, with their dependencies in load order (those the
//! kernel's `boot/config-*` says are built in are skipped).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::ImageError;
use super::tools;

/// The Debian meta package that names the current cloud kernel.
pub const META_PACKAGE: &str = "linux-image-cloud-amd64";

/// The modules the initramfs needs: (module name, the kernel option that builds it). The block
/// device and ext4 for the root, overlayfs over it, virtio-net, vsock for the agent, virtio-rng.
pub const WANTED: &[(&str, &str)] = &[
    ("virtio_mmio", "CONFIG_VIRTIO_MMIO"),
    ("virtio_blk", "CONFIG_VIRTIO_BLK"),
    ("crc32c_generic", "CONFIG_CRYPTO_CRC32C"),
    ("ext4", "CONFIG_EXT4_FS"),
    ("overlay", "CONFIG_OVERLAY_FS"),
    ("virtio_net", "CONFIG_VIRTIO_NET"),
    ("vmw_vsock_virtio_transport", "CONFIG_VIRTIO_VSOCKETS"),
    ("virtio_rng", "CONFIG_HW_RANDOM_VIRTIO"),
];

/// The kernel package an image uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelPackage {
    /// The real package (`linux-image-6.1.0-57-cloud-amd64`).
    pub package: String,
    /// Its version (`6.1.192-3`).
    pub version: String,
}

/// An unpacked kernel package.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The package.
    pub package: KernelPackage,
    /// Its release (`uname -r`: `6.1.0-57-cloud-amd64`).
    pub release: String,
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` (with a `modules.dep`).
    pub modules: PathBuf,
    /// `boot/config-<release>`.
    pub config: PathBuf,
}

/// Asks apt which kernel package `linux-image-cloud-amd64` currently depends on.
pub fn resolve(log: &Path) -> Result<KernelPackage, ImageError> {
    let text = tools::output(
        "apt-cache show linux-image-cloud-amd64",
        "apt-cache",
        &[
            OsStr::new("show"),
            OsStr::new("--no-all-versions"),
            OsStr::new(META_PACKAGE),
        ],
        log,
    )
    .map_err(|e| {
        ImageError::Kernel(format!(
            "{e} (is apt configured with Debian's main archive? try apt-get update)"
        ))
    })?;
    let depends = text
        .lines()
        .find_map(|l| l.strip_prefix("Depends:"))
        .ok_or_else(|| ImageError::Kernel(format!("{META_PACKAGE} has no Depends in apt-cache")))?;
    parse_depends(depends).ok_or_else(|| {
        ImageError::Kernel(format!(
            "no linux-image package in {META_PACKAGE}'s Depends: {depends}"
        ))
    })
}

/// The `linux-image-<digit>...` package (with an `(= version)`) in a Depends field.
fn parse_depends(depends: &str) -> Option<KernelPackage> {
    depends.split(',').find_map(|dep| {
        let dep = dep.trim();
        let (name, rest) = dep.split_once(' ').unwrap_or((dep, ""));
        let tail = name.strip_prefix("linux-image-")?;
        if !tail.starts_with(|c: char| c.is_ascii_digit()) {
            return None;
        }
        let version = rest
            .trim()
            .strip_prefix("(=")?
            .trim()
            .strip_suffix(')')?
            .trim()
            .to_string();
        Some(KernelPackage {
            package: name.to_string(),
            version,
        })
    })
}

/// The kernel `pkg` unpacked under `cache` (downloaded, unpacked and indexed the first time;
/// `on_download` is called then).
pub fn fetch(
    pkg: &KernelPackage,
    cache: &Path,
    log: &Path,
    on_download: impl FnOnce(),
) -> Result<Kernel, ImageError> {
    let dir = cache.join(format!("{}_{}", pkg.package, pkg.version));
    if !dir.join("boot").is_dir() {
        on_download();
        download(pkg, cache, &dir, log)?;
    }
    open(pkg, &dir)
}

fn download(pkg: &KernelPackage, cache: &Path, dir: &Path, log: &Path) -> Result<(), ImageError> {
    std::fs::create_dir_all(cache).map_err(ImageError::io("creating", cache))?;
    let tmp = cache.join(super::cache::tmp_name(&pkg.package));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(ImageError::io("creating", &tmp))?;
    let result = (|| {
        let spec = format!("{}={}", pkg.package, pkg.version);
        tools::run(
            &format!("apt-get download {spec}"),
            "apt-get",
            &[OsStr::new("download"), OsStr::new(&spec)],
            Some(&tmp),
            log,
        )?;
        let deb = std::fs::read_dir(&tmp)
            .map_err(ImageError::io("reading", &tmp))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .ok_or_else(|| ImageError::Kernel(format!("apt-get download {spec} left no .deb")))?;
        let root = tmp.join("root");
        tools::run(
            &format!("dpkg -x {}", deb.display()),
            "dpkg-deb",
            &[OsStr::new("-x"), deb.as_os_str(), root.as_os_str()],
            None,
            log,
        )?;
        let release = release_of(&root)?;
        tools::run(
            "depmod",
            "depmod",
            &[OsStr::new("-b"), root.as_os_str(), OsStr::new(&release)],
            None,
            log,
        )?;
        match std::fs::rename(&root, dir) {
            // Another build unpacked the same kernel meanwhile: use its.
            Err(_) if dir.join("boot").is_dir() => Ok(()),
            r => r.map_err(ImageError::io("renaming into place", dir)),
        }
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// The release of the kernel unpacked at `root` (from its `boot/vmlinuz-<release>`).
fn release_of(root: &Path) -> Result<String, ImageError> {
    let boot = root.join("boot");
    std::fs::read_dir(&boot)
        .map_err(ImageError::io("reading", &boot))?
        .filter_map(|e| e.ok())
        .find_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_string)
        })
        .ok_or_else(|| ImageError::Kernel(format!("no vmlinuz-* in {}", boot.display())))
}

fn open(pkg: &KernelPackage, dir: &Path) -> Result<Kernel, ImageError> {
    let release = release_of(dir)?;
    let kernel = Kernel {
        package: pkg.clone(),
        vmlinuz: dir.join("boot").join(format!("vmlinuz-{release}")),
        config: dir.join("boot").join(format!("config-{release}")),
        modules: dir.join("lib/modules").join(&release),
        release,
    };
    if !kernel.modules.join("modules.dep").is_file() {
        return Err(ImageError::Kernel(format!(
            "{} has no modules.dep (remove {} to download it again)",
            kernel.modules.display(),
            dir.display()
        )));
    }
    Ok(kernel)
}

impl Kernel {
    /// The module files (absolute paths) the initramfs loads, dependencies first: those of
    /// [`WANTED`] the kernel builds as modules. A wanted option the kernel lacks is an error.
    pub fn initramfs_modules(&self) -> Result<Vec<PathBuf>, ImageError> {
        let config = std::fs::read_to_string(&self.config)
            .map_err(ImageError::io("reading the kernel config", &self.config))?;
        let dep_path = self.modules.join("modules.dep");
        let deps =
            std::fs::read_to_string(&dep_path).map_err(ImageError::io("reading", &dep_path))?;
        let deps = parse_modules_dep(&deps);
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for (module, option) in WANTED {
            match config_value(&config, option) {
                Some("y") => continue,
                Some("m") => {}
                _ => {
                    return Err(ImageError::Kernel(format!(
                        "{} builds neither in nor as a module {option} (needed for {module})",
                        self.release
                    )));
                }
            }
            let file = deps
                .keys()
                .find(|f| module_name(f) == *module)
                .ok_or_else(|| {
                    ImageError::Kernel(format!("module {module} not in {}", dep_path.display()))
                })?;
            add(file, &deps, &mut seen, &mut order);
        }
        Ok(order.into_iter().map(|f| self.modules.join(f)).collect())
    }
}

fn add<'a>(
    file: &'a str,
    deps: &HashMap<&'a str, Vec<&'a str>>,
    seen: &mut HashSet<&'a str>,
    order: &mut Vec<&'a str>,
) {
    if !seen.insert(file) {
        return;
    }
    for d in deps.get(file).into_iter().flatten() {
        add(d, deps, seen, order);
    }
    order.push(file);
}

/// `modules.dep`: each module file and the files it depends on.
fn parse_modules_dep(text: &str) -> HashMap<&str, Vec<&str>> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(f, d)| (f.trim(), d.split_whitespace().collect()))
        .collect()
}

/// A module file's module name (`kernel/drivers/char/hw_random/virtio-rng.ko` → `virtio_rng`).
pub fn module_name(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

fn config_value<'a>(config: &'a str, option: &str) -> Option<&'a str> {
    config
        .lines()
        .find_map(|l| l.strip_prefix(option)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_and_modules_dep() {
        let p = parse_depends(" linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)").unwrap();
        assert_eq!(p.package, "linux-image-6.1.0-57-cloud-amd64");
        assert_eq!(p.version, "6.1.192-3");
        assert!(parse_depends("linux-image-cloud (= 1)").is_none());
        let deps = parse_modules_dep(
            "a/x.ko: a/v.ko a/r.ko\na/r.ko: a/v.ko\na/v.ko:\nb/virtio-rng.ko: a/v.ko\n",
        );
        let (mut seen, mut order) = (HashSet::new(), Vec::new());
        add("a/x.ko", &deps, &mut seen, &mut order);
        add("b/virtio-rng.ko", &deps, &mut seen, &mut order);
        assert_eq!(order, ["a/v.ko", "a/r.ko", "a/x.ko", "b/virtio-rng.ko"]);
        assert_eq!(module_name("b/virtio-rng.ko"), "virtio_rng");
        assert_eq!(
            config_value("CONFIG_A=m\nCONFIG_AB=y\n", "CONFIG_AB"),
            Some("y")
        );
    }
}
