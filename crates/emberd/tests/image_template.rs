//! A template whose guest is an `image`: emberd builds the Linux image itself (ember-host's
//! builder with the real tools — root, mkfs.ext4, cpio, depmod, apt-get download of Debian's
//! cloud kernel — into its state dir's image cache), then boots it. This host's nested KVM
//! cannot boot a stock Linux kernel, so here the boot runs out of its (short) timeout and the
//! build is refused with the agent named; on a host that boots Linux the template is ready and
//! records the image's kernel guest. Either way the image is built once and then found in the
//! cache. The boot itself is proven in the daemon rig (`scripts/rig-daemon.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::path::Path;

use common::{Daemon, runtime};
use ember_core::{GuestSpec, ImageSource, Template, TemplateName, TemplateSpec};
use emberd::client::ClientError;
use emberd::engine::templates::BuildTemplate;

fn root() -> bool {
    ember_host::image::tools::ensure_root().is_ok()
}

/// The image directories in the daemon's cache (one per content hash).
fn images(d: &Daemon) -> Vec<String> {
    let dir = d.state().join("images");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .filter(|e| e.path().join("image.json").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Builds template `name` from an image of `tree` (no client timeout: an image build takes
/// tens of seconds).
fn build(d: &Daemon, name: &str, tree: &Path) -> Result<Template, ClientError> {
    let req = BuildTemplate {
        name: TemplateName::new(name).unwrap(),
        spec: TemplateSpec {
            guest: GuestSpec::Image {
                source: ImageSource::Dir {
                    path: tree.to_path_buf(),
                },
            },
            mem_size_mib: 256,
            boot_timeout_ms: 4000,
            ..TemplateSpec::probe()
        },
    };
    runtime().block_on(d.client().build_template(&req))
}

/// A build either made the template (a host that boots Linux) or ran out of its boot timeout
/// (this host); anything else fails the test.
fn booted(r: &Result<Template, ClientError>) -> bool {
    match r {
        Ok(_) => true,
        Err(ClientError::Api {
            status, message, ..
        }) if *status == 503 => {
            assert!(message.contains("agent"), "{message}");
            false
        }
        Err(e) => panic!("the image template build failed: {e}"),
    }
}

#[test]
fn the_daemon_builds_an_image_template_once_and_caches_its_image() {
    if !root() {
        eprintln!("SKIPPED: image builds need root");
        return;
    }
    let agent = ember_test_support::static_ember_agent(None);
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/motd"), "built by emberd\n").unwrap();

    let mut d = Daemon::new();
    d.extra = vec!["--agent-bin".into(), agent.display().to_string()];
    d.start();

    let r = build(&d, "img", &tree);
    let built = images(&d);
    assert_eq!(built.len(), 1, "one image in the cache: {built:?}; {r:?}");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(d.state().join("images").join(&built[0]).join("image.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["source"]["kind"], "dir", "{manifest}");
    if booted(&r) {
        // A host that boots Linux: the record names the image's kernel guest.
        let t = r.unwrap();
        let GuestSpec::Kernel { kernel, rootfs, .. } = &t.spec.guest else {
            panic!("expected the image's kernel guest: {:?}", t.spec.guest);
        };
        assert!(kernel.starts_with(d.state().join("images")), "{kernel:?}");
        assert!(rootfs.as_ref().unwrap().ends_with("rootfs.ext4"));
    } else {
        // This host: the image was built, the kernel did not come up; nothing recorded.
        let listed = runtime().block_on(d.client().templates()).unwrap();
        assert!(listed.is_empty(), "{listed:?}");
    }

    // The same source again: found in the cache (no second image), whatever the boot does.
    booted(&build(&d, "img2", &tree));
    assert_eq!(images(&d), built);
    assert!(
        d.log_text().contains("image cached"),
        "the second build should find the image cached: {}",
        d.log_text()
    );
}
