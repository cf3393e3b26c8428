//! Bad input and failures over real VMM processes: unknown VMs and snapshots, specs that cannot
//! boot, missing / truncated / corrupt / wrong-version snapshots (caught at verify with a clear
//! error), and failed creates that leave nothing behind.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use std::fs;
use std::path::PathBuf;

use common::*;
use ember_core::{
    ResourceKind, SnapshotId, SnapshotRef, VmError, VmProvider, VmQuery, VmSpec, VsockOverride,
    error_chain,
};
use ember_runtime::VmmProvider;

/// Nothing of any VM is left: no VM listed, no link, and only spare processes running.
fn nothing_left(p: &VmmProvider) {
    assert!(p.list().unwrap().is_empty());
    assert_eq!(
        fs::read_dir(p.root().join("vms")).unwrap().count(),
        0,
        "VM links left"
    );
    let slots_dir = p.root().join("slots");
    wait_for(DEFAULT_TIMEOUT, "only spare processes and slots", || {
        let s = p.stats();
        let spares = s.spares.ready + s.spares.starting;
        let slots = fs::read_dir(&slots_dir).unwrap().count();
        (s.processes == spares && slots == spares).then_some(())
    });
}

#[test]
fn unknown_vms_and_snapshots() {
    let dir = short_tempdir();
    let p = provider(dir.path(), flavor(Kind::EmberVmm).unwrap(), 1);
    let ghost = vm("ghost");
    for r in [
        p.get(&ghost).map(drop),
        p.start(&ghost).map(drop),
        p.pause(&ghost).map(drop),
        p.resume(&ghost).map(drop),
        p.stop(&ghost).map(drop),
        p.destroy(&ghost),
        p.rename(&ghost, &vm("other")).map(drop),
        p.vsock_path(&ghost).map(drop),
    ] {
        match r.unwrap_err() {
            VmError::NotFound {
                kind: ResourceKind::Vm,
                id,
            } => assert_eq!(id, "ghost"),
            other => panic!("{other}"),
        }
    }
    let missing = SnapshotRef::new(
        SnapshotId::new("nope").unwrap(),
        None,
        PathBuf::from("/nope/state"),
        PathBuf::from("/nope/mem"),
    );
    for err in [
        p.create_with_spec(&vm("a"), &VmSpec::restore(missing.clone()))
            .unwrap_err(),
        p.verify_snapshot(&missing).unwrap_err(),
        p.delete_snapshot(&missing.snapshot_id).unwrap_err(),
    ] {
        assert!(
            matches!(
                err,
                VmError::NotFound {
                    kind: ResourceKind::Snapshot,
                    ..
                }
            ),
            "{err}"
        );
    }
    nothing_left(&p);
    shutdown_and_check(&p);
}

#[test]
fn specs_that_cannot_boot_leave_nothing_behind() {
    let dir = short_tempdir();
    let p = provider(dir.path(), flavor(Kind::EmberVmm).unwrap(), 1);
    // No kernel; the provider's default spec is unset too.
    let err = p
        .create_with_spec(&vm("a"), &VmSpec::default())
        .unwrap_err();
    assert!(
        matches!(&err, VmError::InvalidSpec { field, .. } if field == "kernel"),
        "{err}"
    );
    let err = p.create(&vm("a")).unwrap_err();
    assert!(
        matches!(&err, VmError::InvalidSpec { field, .. } if field == "kernel"),
        "{err}"
    );
    // A kernel that does not exist.
    let mut spec = probe_spec("");
    spec.kernel = Some(dir.path().join("no-such-kernel"));
    let err = p.create_with_spec(&vm("a"), &spec).unwrap_err();
    assert!(err.to_string().contains("no-such-kernel"), "{err}");
    // A spec the VMM refuses (ember-vmm: SMT-less 1..32 vCPUs, but 64 GiB on 128 MiB...):
    // an invalid machine shape is caught by the contract first.
    let mut spec = probe_spec("");
    spec.vcpu_count = 0;
    assert!(matches!(
        p.create_with_spec(&vm("a"), &spec).unwrap_err(),
        VmError::InvalidSpec { .. }
    ));
    // A kernel file that is not a kernel: configuring works, booting fails with the VMM's
    // message, and the VM can still be destroyed cleanly.
    let junk = dir.path().join("junk-kernel");
    fs::write(&junk, b"definitely not an ELF").unwrap();
    let mut spec = probe_spec("");
    spec.kernel = Some(junk);
    let id = vm("junk");
    p.create_with_spec(&id, &spec).unwrap();
    let err = p.start(&id).unwrap_err();
    assert!(err.is_provider_failure(), "{err}");
    eprintln!("booting junk: {}", error_chain(&err));
    assert!(
        error_chain(&err).contains("HTTP 400"),
        "{}",
        error_chain(&err)
    );
    p.destroy(&id).unwrap();
    // A restore refusing a caller-chosen vsock socket.
    let stack = probe_stack("e1");
    let snap = make_template(&p, "tpl-src", "e1", &stack, "ember.report=10");
    p.destroy(&vm("tpl-src")).unwrap();
    let mut s = snap.clone();
    s.vsock_override = Some(VsockOverride {
        uds_path: "/tmp/x.sock".into(),
    });
    let err = p
        .create_with_spec(&vm("b"), &VmSpec::restore(s))
        .unwrap_err();
    assert!(
        matches!(&err, VmError::InvalidSpec { field, .. } if field.contains("vsock_override")),
        "{err}"
    );
    // Taken ids.
    p.create_with_spec(&vm("b"), &VmSpec::restore(snap.clone()))
        .unwrap();
    assert!(matches!(
        p.create_with_spec(&vm("b"), &VmSpec::restore(snap.clone()))
            .unwrap_err(),
        VmError::AlreadyExists {
            kind: ResourceKind::Vm,
            ..
        }
    ));
    p.destroy(&vm("b")).unwrap();
    nothing_left(&p);
    p.delete_snapshot(&snap.snapshot_id).unwrap();
    shutdown_and_check(&p);
}

/// The catalog entry with its size and CRC matching the state file again (a snapshot whose
/// files are intact as far as the provider can tell, but which the VMM refuses).
fn reseal(info: &ember_core::SnapshotInfo) -> ember_core::SnapshotInfo {
    let (len, crc) = ember_runtime::snapshots::file_crc32(&info.state_path).unwrap();
    ember_core::SnapshotInfo {
        state_len: len,
        state_crc32: crc,
        ..info.clone()
    }
}

/// A new provider on the same root, told about `info` (as a store would).
fn reload(
    p: std::sync::Arc<VmmProvider>,
    dir: &std::path::Path,
    info: ember_core::SnapshotInfo,
) -> std::sync::Arc<VmmProvider> {
    let flavor = p.flavor().clone();
    drop(p);
    let p = provider(dir, flavor, 1);
    p.register_snapshot(info).unwrap();
    p
}

#[test]
fn broken_snapshots_are_caught_with_clear_errors() {
    let dir = short_tempdir();
    let mut p = provider(dir.path(), flavor(Kind::EmberVmm).unwrap(), 2);
    let stack = probe_stack("broken");
    let snap = make_template(&p, "src", "good", &stack, "ember.report=10");
    p.destroy(&vm("src")).unwrap();
    p.verify_snapshot(&snap).unwrap();
    let info = p.snapshot_info(&snap.snapshot_id).unwrap();
    let state = fs::read(&snap.state_path).unwrap();
    let mem_len = fs::metadata(&snap.mem_path).unwrap().len();

    let check = |p: &VmmProvider, what: &str, needle: &str| {
        let err = p.verify_snapshot(&snap).unwrap_err();
        let text = error_chain(&err);
        eprintln!("{what}: {text}");
        assert!(text.contains(needle), "{what}: {text}");
        // Restoring it fails too, and leaves nothing behind.
        let err = p
            .create_with_spec(&vm("victim"), &VmSpec::restore(snap.clone()))
            .unwrap_err();
        eprintln!("{what} (restore): {}", error_chain(&err));
        nothing_left(p);
    };

    // Truncated memory file (the intact one put back afterwards: extending the truncated file
    // would zero its end, where ember-vmm's trailer pairs it with the state file).
    let intact = snap.mem_path.with_extension("intact");
    fs::copy(&snap.mem_path, &intact).unwrap();
    fs::File::options()
        .write(true)
        .open(&snap.mem_path)
        .unwrap()
        .set_len(mem_len / 2)
        .unwrap();
    check(&p, "truncated memory", "truncated");
    fs::rename(&intact, &snap.mem_path).unwrap();

    // Truncated state file.
    fs::write(&snap.state_path, &state[..state.len() / 2]).unwrap();
    check(&p, "truncated state", "truncated");

    // Corrupt state file (same size).
    let mut bad = state.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x5a;
    fs::write(&snap.state_path, &bad).unwrap();
    check(&p, "corrupt state", "corrupt");

    // Corrupt, but resealed: only the trial restore can tell.
    p = reload(p, dir.path(), reseal(&info));
    check(&p, "corrupt state, resealed", "does not load");

    // A format version this ember-vmm does not read, resealed.
    let mut v = state.clone();
    v[8..12].copy_from_slice(&99u32.to_le_bytes());
    fs::write(&snap.state_path, &v).unwrap();
    p = reload(p, dir.path(), reseal(&info));
    check(&p, "wrong version", "version 99");

    // Not an ember-vmm file at all.
    let mut m = state.clone();
    m[..8].copy_from_slice(b"NOTSNAP!");
    fs::write(&snap.state_path, &m).unwrap();
    p = reload(p, dir.path(), reseal(&info));
    check(&p, "bad magic", "not an ember-vmm snapshot");

    // Missing files.
    fs::write(&snap.state_path, &state).unwrap();
    p = reload(p, dir.path(), reseal(&info));
    p.verify_snapshot(&snap).unwrap();
    fs::remove_file(&snap.mem_path).unwrap();
    check(&p, "missing memory", "missing");

    p.delete_snapshot(&snap.snapshot_id).unwrap();
    shutdown_and_check(&p);
}

#[test]
fn a_missing_binary_is_a_clear_start_error() {
    let dir = short_tempdir();
    let config = ember_runtime::ProviderConfig::new(
        dir.path().join("root"),
        ember_runtime::Flavor::EmberVmm {
            binary: dir.path().join("no-such-vmm"),
        },
    );
    let err = VmmProvider::new(config).unwrap_err();
    assert!(err.to_string().contains("no-such-vmm"), "{err}");
}

#[test]
fn a_relative_binary_path_still_names_the_binary() {
    // VMM processes start in their own directories; a path relative to the caller's must
    // keep naming the same binary there.
    let abs = vmm_bin();
    let cwd = std::env::current_dir().unwrap();
    let up = cwd.components().count() - 1;
    let rel: PathBuf = std::iter::repeat_n(std::path::Component::ParentDir, up)
        .collect::<PathBuf>()
        .join(abs.strip_prefix("/").unwrap());
    assert!(rel.is_relative() && rel.is_file(), "{}", rel.display());
    let dir = short_tempdir();
    let p = provider(
        dir.path(),
        ember_runtime::Flavor::EmberVmm { binary: rel },
        1,
    );
    let id = vm("relative-bin");
    p.create_with_spec(&id, &probe_spec("ember.hz=10")).unwrap();
    p.start(&id).unwrap();
    p.destroy(&id).unwrap();
    shutdown_and_check(&p);
}

#[test]
fn a_vmm_that_cannot_start_fails_creates_quickly() {
    // A "VMM" that exits at once: every spawn fails and creates say why, without waiting for
    // the whole spare timeout.
    let dir = short_tempdir();
    let fake = dir.path().join("fake-vmm");
    fs::write(
        &fake,
        "#!/bin/sh\necho 'fake-vmm: KVM is not usable' >&2\nexit 2\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    let p = provider(
        dir.path(),
        ember_runtime::Flavor::EmberVmm { binary: fake },
        1,
    );
    let t0 = std::time::Instant::now();
    let err = p.create_with_spec(&vm("a"), &probe_spec("")).unwrap_err();
    let text = error_chain(&err);
    eprintln!("{text}");
    assert!(text.contains("KVM is not usable"), "{text}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(30));
    assert!(p.list().unwrap().is_empty());
    shutdown_and_check(&p);
}
