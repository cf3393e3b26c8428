//! `ember image build` with the real tools: root, debootstrap against deb.debian.org,
//! mkfs.ext4, cpio, depmod, apt-get download of Debian's cloud kernel (cached once for all
//! tests under `$CARGO_TARGET_DIR/ember-image-test-cache`, or `$EMBER_IMAGE_TEST_CACHE`).
//! The static agent is `$EMBER_AGENT_BIN`, or built with crt-static into the target dir.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ember_core::GuestSpec;
use ember_host::image::{self, BuildOptions, ImageError, ImageManifest, Source};
use ember_host::ui::Quiet;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

/// The kernel cache every test shares (the kernel is downloaded once).
fn kernel_cache() -> PathBuf {
    std::env::var_os("EMBER_IMAGE_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("ember-image-test-cache"))
        .join("kernels")
}

/// The static agent: `$EMBER_AGENT_BIN`, or built (release, crt-static) as the Linux rig does.
fn static_agent() -> PathBuf {
    ember_test_support::static_ember_agent(Some(&target_dir()))
}

/// Image builds need root; without it the test says so loudly and passes.
fn root_or_skip(test: &str) -> bool {
    let root = image::tools::ensure_root().is_ok();
    if !root {
        eprintln!("SKIPPED {test}: image builds need root");
    }
    root
}

fn options(source: Source, cache: &Path) -> BuildOptions {
    BuildOptions {
        source,
        agent: static_agent(),
        cache_dir: cache.to_path_buf(),
        kernel_cache: Some(kernel_cache()),
    }
}

/// What is in the cache directory besides build logs.
fn cache_entries(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !(n.starts_with("build-") && n.ends_with(".log")))
        .collect();
    names.sort();
    names
}

#[test]
fn a_package_that_does_not_exist_is_named_and_nothing_is_left() {
    if !root_or_skip("a_package_that_does_not_exist_is_named_and_nothing_is_left") {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let source = Source::Debootstrap {
        suite: "bookworm".into(),
        mirror: image::source::DEFAULT_MIRROR.into(),
        packages: vec!["bash".into(), "ember-no-such-package".into()],
    };
    let err = image::build(&options(source, cache.path()), &Quiet).unwrap_err();
    let text = err.to_string();
    match &err {
        ImageError::NoSuchPackage {
            packages,
            suite,
            log,
            ..
        } => {
            assert_eq!(packages, &["ember-no-such-package"], "{text}");
            assert_eq!(suite, "bookworm");
            let log_text = std::fs::read_to_string(log).unwrap();
            assert!(log_text.contains("Couldn't find these debs"), "{log_text}");
        }
        other => panic!("expected NoSuchPackage, got {other:?}: {text}"),
    }
    assert!(
        text.contains("ember-no-such-package") && text.contains("bookworm"),
        "{text}"
    );
    assert!(
        cache_entries(cache.path()).is_empty(),
        "{:?}",
        cache_entries(cache.path())
    );
}

/// A tiny root: static busybox as /bin/sh, a file owned by uid 1234.
fn tiny_tree(dir: &Path, motd: &str) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", dir.join("bin/sh")).unwrap();
    std::fs::write(dir.join("etc/motd"), motd).unwrap();
    std::os::unix::fs::chown(dir.join("etc/motd"), Some(1234), Some(1234)).unwrap();
}

fn tar_of(dir: &Path, out: &Path) {
    let status = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
}

/// `debugfs -R CMD image`'s standard output.
fn debugfs(image: &Path, cmd: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", cmd])
        .arg(image)
        .output()
        .unwrap();
    assert!(out.status.success(), "debugfs {cmd}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dump(image: &Path, path: &str, to: &Path) -> Vec<u8> {
    debugfs(image, &format!("dump {path} {}", to.display()));
    std::fs::read(to).unwrap_or_default()
}

#[test]
fn a_tarball_becomes_an_image_cached_by_content() {
    if !root_or_skip("a_tarball_becomes_an_image_cached_by_content") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let tree = work.path().join("tree");
    tiny_tree(&tree, "hello from the tarball\n");
    let tar = work.path().join("root.tar");
    tar_of(&tree, &tar);

    let built = image::build(&options(Source::Tar { path: tar.clone() }, &cache), &Quiet).unwrap();
    assert!(!built.cached);
    let dir = built.dir().to_path_buf();
    assert_eq!(dir, cache.join(&built.manifest.hash));
    let (rootfs, initrd, vmlinuz) = (
        dir.join("rootfs.ext4"),
        dir.join("initrd.img"),
        dir.join("vmlinuz"),
    );

    // The root filesystem: the agent byte for byte, the tree's files with their owners.
    let agent = dump(
        &rootfs,
        "/usr/local/bin/ember-agent",
        &work.path().join("agent"),
    );
    assert!(
        agent == std::fs::read(static_agent()).unwrap(),
        "the agent in the image differs"
    );
    let motd = dump(&rootfs, "/etc/motd", &work.path().join("motd"));
    assert_eq!(motd, b"hello from the tarball\n");
    let stat = debugfs(&rootfs, "stat /etc/motd");
    assert!(stat.contains("User:  1234"), "{stat}");
    let passwd = dump(&rootfs, "/etc/passwd", &work.path().join("passwd"));
    assert!(String::from_utf8_lossy(&passwd).contains("root:x:0:0:root:/root:"));
    for d in ["/root", "/tmp", "/bin"] {
        assert!(
            debugfs(&rootfs, &format!("stat {d}")).contains("Type: directory"),
            "{d}"
        );
    }
    assert!(debugfs(&rootfs, "stat /bin/sh").contains("Type: symlink"));

    // The initramfs: /init and the modules.
    let list = Command::new("cpio")
        .args(["-t", "--quiet"])
        .stdin(std::fs::File::open(&initrd).unwrap())
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(list.lines().any(|l| l == "init"), "{list}");
    assert!(list.lines().any(|l| l == "bin/busybox"), "{list}");
    for m in [
        "virtio_mmio.ko",
        "virtio_blk.ko",
        "overlay.ko",
        "vmw_vsock_virtio_transport.ko",
    ] {
        assert!(
            list.lines().any(|l| l == format!("lib/modules/{m}")),
            "{m} not in {list}"
        );
    }

    // The kernel is a bzImage.
    let k = std::fs::read(&vmlinuz).unwrap();
    assert_eq!(&k[0x202..0x206], b"HdrS");

    // image.json: the manifest and a template spec that validates.
    let manifest = ImageManifest::read(&dir).unwrap();
    assert_eq!(manifest, built.manifest);
    manifest.template.validate().unwrap();
    match &manifest.template.guest {
        GuestSpec::Kernel {
            kernel,
            initrd: i,
            rootfs: r,
            rootfs_read_only,
            boot_args,
        } => {
            assert_eq!(kernel, &vmlinuz);
            assert_eq!(i.as_ref(), Some(&initrd));
            assert_eq!(r.as_ref(), Some(&rootfs));
            assert!(rootfs_read_only);
            assert!(boot_args.as_deref().unwrap().contains("console=ttyS0"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(manifest.template.agent_port, 52);
    assert_eq!(
        manifest.sizes.rootfs,
        std::fs::metadata(&rootfs).unwrap().len()
    );

    // Again: a cache hit, fast, the same image.
    let again = image::build(&options(Source::Tar { path: tar.clone() }, &cache), &Quiet).unwrap();
    assert!(again.cached);
    assert_eq!(again.manifest, manifest);
    assert!(again.took < Duration::from_secs(10), "{:?}", again.took);

    // One file changed: another image.
    std::fs::write(tree.join("etc/motd"), "changed\n").unwrap();
    tar_of(&tree, &tar);
    let other = image::build(&options(Source::Tar { path: tar }, &cache), &Quiet).unwrap();
    assert!(!other.cached);
    assert_ne!(other.manifest.hash, manifest.hash);
    let mut want = vec![manifest.hash.clone(), other.manifest.hash.clone()];
    want.sort();
    assert_eq!(cache_entries(&cache), want, "only the two images are left");
}

#[test]
fn a_directory_becomes_an_image() {
    if !root_or_skip("a_directory_becomes_an_image") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    tiny_tree(&tree, "from a directory\n");
    std::fs::set_permissions(
        tree.join("etc/motd"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let cache = work.path().join("cache");
    let built = image::build(&options(Source::Dir { path: tree.clone() }, &cache), &Quiet).unwrap();
    let rootfs = built.dir().join("rootfs.ext4");
    let motd = dump(&rootfs, "/etc/motd", &work.path().join("motd"));
    assert_eq!(motd, b"from a directory\n");
    assert!(debugfs(&rootfs, "stat /etc/motd").contains("Mode:  0640"));

    // The same tree with another mode is another image.
    std::fs::set_permissions(
        tree.join("etc/motd"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let again = image::build(&options(built.manifest.source.clone(), &cache), &Quiet).unwrap();
    assert!(!again.cached);
    assert_ne!(again.manifest.hash, built.manifest.hash);
}

#[test]
fn bad_inputs_are_named() {
    if !root_or_skip("bad_inputs_are_named") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");

    let missing = work.path().join("no-such-dir");
    let err = image::build(
        &options(
            Source::Dir {
                path: missing.clone(),
            },
            &cache,
        ),
        &Quiet,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains(&missing.display().to_string()), "{err}");

    let err = image::build(
        &options(
            Source::Tar {
                path: work.path().join("none.tar"),
            },
            &cache,
        ),
        &Quiet,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("none.tar"), "{err}");

    // A dynamic agent (this test binary is not built static) is refused with the fix.
    let mut opts = options(
        Source::Dir {
            path: work.path().to_path_buf(),
        },
        &cache,
    );
    opts.agent = std::env::current_exe().unwrap();
    let err = image::build(&opts, &Quiet).unwrap_err().to_string();
    assert!(
        err.contains("dynamically linked") && err.contains("crt-static"),
        "{err}"
    );

    opts.agent = work.path().join("no-agent");
    let err = image::build(&opts, &Quiet).unwrap_err().to_string();
    assert!(
        err.contains("no-agent") && err.contains("EMBER_AGENT_BIN"),
        "{err}"
    );

    // A bad package name never reaches debootstrap.
    let err = image::build(
        &options(Source::debootstrap(Some(vec!["bad name".into()])), &cache),
        &Quiet,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("bad name"), "{err}");
    assert!(!cache.exists() || cache_entries(&cache).is_empty());
}
