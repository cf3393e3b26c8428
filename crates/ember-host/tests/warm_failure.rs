//! A warm stack that fails to start after its template was built (here: a pool depth the pool
//! refuses) leaves nothing behind: no pooled VM, no template snapshot, no file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ember_core::StackKey;
use ember_host::session::Session;
use ember_host::ui::Quiet;
use ember_host::warm::{PROBE_TEMPLATE_ARGS, Pooled, WarmOptions, WarmStack};

#[test]
fn a_stack_that_fails_after_its_template_leaves_nothing() {
    let workdir = tempfile::Builder::new()
        .prefix("w")
        .tempdir_in("/dev/shm")
        .unwrap();
    let session = Session::start(&ember_test_support::vmm_bin(), workdir.path(), 2).unwrap();
    let result = WarmStack::start(
        session.provider(),
        &WarmOptions {
            stack: StackKey::new("probe", "1", 1, 128).unwrap(),
            kernel: ember_probe_image::probe_elf_path().into(),
            boot_args: Some(PROBE_TEMPLATE_ARGS.to_string()),
            pooled: Pooled::Paused,
            agent_port: ember_probe_image::AGENT_PORT,
            agent_timeout: Duration::from_secs(5),
            // Refused by the pool at register, after the template snapshot exists.
            depth: 0,
            refill_parallelism: 1,
        },
        &Quiet,
    );
    let err = match result {
        Ok(_) => panic!("a depth of 0 was accepted"),
        Err(e) => ember_core::error_chain(&e),
    };
    assert!(err.contains("max_depth"), "{err}");
    let leftovers = session.finish();
    assert!(leftovers.is_clean(), "{leftovers:?}");
}
