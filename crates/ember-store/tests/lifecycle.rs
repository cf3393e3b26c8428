//! The store's API on a real file: machines, snapshots and pools through save, load, list, update
//! and remove; persistence across reopen; rollback of failed or panicking updates; allocation
//! uniqueness, release and exhaustion; name validation; many threads sharing one store.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ember_core::{SnapshotId, StackKey};
use ember_store::{
    MachineName, MachineState, NetworkConfig, NetworkRequest, PoolConfig, ProcessIdentity,
    RecordKind, Resource, Store, StoreError, UpdateError,
};
use support::{config, machine, name, snapshot, temp_db};

#[test]
fn machine_round_trip_survives_reopen() {
    let (_dir, path) = temp_db();
    let store = Store::open(&path, config()).unwrap();
    assert!(store.list().unwrap().is_empty());
    let saved = store
        .save(
            &name("web-1"),
            &machine("vm-web-1"),
            NetworkRequest::Allocate,
        )
        .unwrap();
    assert_eq!(saved.revision, 1);
    let net = saved.network.clone().expect("allocated");
    assert_eq!(
        net.ip.to_string(),
        "10.77.0.2",
        "lowest host after the gateway"
    );
    assert_eq!(net.mac.to_string(), "06:00:0a:4d:00:02");
    assert_eq!(net.tap, "tst0");
    assert_eq!(net.vsock_cid, 3);
    assert_eq!(
        (net.prefix_len, net.gateway.to_string().as_str()),
        (22, "10.77.0.1")
    );

    let me = ProcessIdentity::current().unwrap();
    let updated = store
        .update(&name("web-1"), |m| {
            m.state = MachineState::Running;
            m.vmm = Some(me.clone());
            m.api_socket = Some("/run/ember/web-1/api.sock".into());
            Ok::<_, std::convert::Infallible>(())
        })
        .unwrap();
    assert_eq!(updated.revision, 2);
    assert_eq!(updated.created_at, saved.created_at);
    assert!(updated.updated_at >= saved.updated_at);
    assert_eq!(
        updated.network, saved.network,
        "update never touches the allocation"
    );
    drop(store);

    let store = Store::open(&path, config()).unwrap();
    let loaded = store.load(&name("web-1")).unwrap();
    assert_eq!(loaded, updated);
    assert_eq!(store.list().unwrap(), vec![updated]);
    assert_eq!(store.recovery_report().len(), 1, "it was stored running");
    assert!(store.integrity_check().unwrap().is_empty());
}

#[test]
fn save_is_insert_only_and_remove_is_idempotent() {
    let (_dir, path) = temp_db();
    let store = Store::open(&path, config()).unwrap();
    let first = store
        .save(&name("a"), &machine("vm-a"), NetworkRequest::Allocate)
        .unwrap();
    let mut other = machine("vm-other");
    other.vcpus = 4;
    let err = store
        .save(&name("a"), &other, NetworkRequest::Allocate)
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::AlreadyExists { kind: RecordKind::Machine, key } if key == "a"),
        "{err:?}"
    );
    assert!(err.to_string().contains("use update"), "{err}");
    assert_eq!(
        store.load(&name("a")).unwrap(),
        first,
        "the original is untouched"
    );
    assert_eq!(store.list().unwrap().len(), 1, "and no allocation leaked");

    let removed = store.remove(&name("a")).unwrap().unwrap();
    assert_eq!(removed, first);
    assert!(store.remove(&name("a")).unwrap().is_none());
    let err = store.load(&name("a")).unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert!(store.get(&name("a")).unwrap().is_none());
}

#[derive(Debug, PartialEq)]
struct Veto(&'static str);

#[test]
fn failed_invalid_or_panicking_updates_write_nothing() {
    let (_dir, path) = temp_db();
    let store = Store::open(&path, config()).unwrap();
    let before = store
        .save(&name("m"), &machine("vm-m"), NetworkRequest::None)
        .unwrap();

    let err = store
        .update(&name("m"), |m| {
            m.vcpus = 8;
            Err(Veto("no"))
        })
        .unwrap_err();
    assert!(matches!(err, UpdateError::Rejected(Veto("no"))), "{err:?}");
    assert_eq!(store.load(&name("m")).unwrap(), before);

    let err = store
        .update(&name("m"), |m| {
            m.state = MachineState::Running; // without a VMM process: invalid
            Ok::<_, Veto>(())
        })
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err.store_error(), Some(StoreError::InvalidField { field, .. }) if field == "machine.vmm"),
        "{text}"
    );
    assert_eq!(store.load(&name("m")).unwrap(), before);

    let store = Arc::new(store);
    let s = Arc::clone(&store);
    let panicked = std::thread::spawn(move || {
        let _ = s.update(&name("m"), |m| -> Result<(), Veto> {
            m.vcpus = 16;
            panic!("closure panics mid-transaction");
        });
    })
    .join();
    assert!(panicked.is_err());
    assert_eq!(store.load(&name("m")).unwrap(), before, "rolled back");
    // The store is still usable after the panic.
    let after = store
        .update(&name("m"), |m| {
            m.vcpus = 4;
            Ok::<_, Veto>(())
        })
        .unwrap();
    assert_eq!((after.machine.vcpus, after.revision), (4, 2));

    let err = store
        .update(&name("ghost"), |_| Ok::<_, Veto>(()))
        .unwrap_err();
    assert!(
        matches!(err.store_error(), Some(StoreError::NotFound { .. })),
        "{err:?}"
    );
}

#[test]
fn invalid_names_say_what_is_allowed() {
    for bad in ["", "-x", "a/b", "sp ace", &"n".repeat(64)] {
        let err = MachineName::new(bad).unwrap_err().to_string();
        assert!(err.contains("1 to 63 ASCII letters, digits"), "{err}");
        // The store's error wraps the same message.
        let store_err: StoreError = MachineName::new(bad).unwrap_err().into();
        assert_eq!(store_err.to_string(), err);
    }
}

#[test]
fn allocations_are_unique_released_and_reused() {
    let (_dir, path) = temp_db();
    let store = Store::open(&path, config()).unwrap();
    let mut records = Vec::new();
    for i in 0..60 {
        records.push(
            store
                .save(
                    &name(&format!("m{i}")),
                    &machine(&format!("vm{i}")),
                    NetworkRequest::Allocate,
                )
                .unwrap(),
        );
    }
    let nets: Vec<_> = records.iter().map(|r| r.network.clone().unwrap()).collect();
    for (what, distinct) in [
        (
            "ip",
            nets.iter()
                .map(|n| n.ip.to_string())
                .collect::<HashSet<_>>()
                .len(),
        ),
        (
            "mac",
            nets.iter()
                .map(|n| n.mac.to_string())
                .collect::<HashSet<_>>()
                .len(),
        ),
        (
            "cid",
            nets.iter()
                .map(|n| n.vsock_cid.to_string())
                .collect::<HashSet<_>>()
                .len(),
        ),
        (
            "tap",
            nets.iter()
                .map(|n| n.tap.clone())
                .collect::<HashSet<_>>()
                .len(),
        ),
    ] {
        assert_eq!(distinct, 60, "{what} values collide");
    }
    assert!(
        nets.iter().all(|n| n.ip.to_string() != "10.77.0.1"),
        "gateway handed out"
    );

    // Release m7's allocation; the next save gets exactly those values back (lowest free).
    let freed = store.remove(&name("m7")).unwrap().unwrap().network.unwrap();
    let again = store
        .save(&name("new"), &machine("vm-new"), NetworkRequest::Allocate)
        .unwrap()
        .network
        .unwrap();
    assert_eq!(again, freed);
}

#[test]
fn exhaustion_names_the_range() {
    let (dir, path) = temp_db();
    let mut cfg = config();
    // A /29 has hosts .1-.6; .1 is the gateway, so five machines fit.
    cfg.network.subnet = "10.9.0.0/29".parse().unwrap();
    cfg.network.gateway = "10.9.0.1".parse().unwrap();
    let store = Store::open(&path, cfg.clone()).unwrap();
    for i in 0..5 {
        store
            .save(
                &name(&format!("m{i}")),
                &machine("vm"),
                NetworkRequest::Allocate,
            )
            .unwrap();
    }
    let err = store
        .save(&name("m5"), &machine("vm"), NetworkRequest::Allocate)
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Exhausted {
                resource: Resource::Ipv4,
                in_use: 5,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("10.9.0.0/29") && text.contains("10.9.0.1"),
        "{text}"
    );
    assert!(
        store.get(&name("m5")).unwrap().is_none(),
        "the machine row was rolled back too"
    );
    // Without an allocation the machine can still be saved.
    store
        .save(&name("m5"), &machine("vm"), NetworkRequest::None)
        .unwrap();
    drop(store);

    // CIDs and TAP names run out on their own ranges.
    let path2 = dir.path().join("cids.db");
    let mut small = config();
    small.network.first_cid = 10;
    small.network.last_cid = 11;
    let store = Store::open(&path2, small).unwrap();
    for i in 0..2 {
        store
            .save(
                &name(&format!("c{i}")),
                &machine("vm"),
                NetworkRequest::Allocate,
            )
            .unwrap();
    }
    let err = store
        .save(&name("c2"), &machine("vm"), NetworkRequest::Allocate)
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Exhausted {
                resource: Resource::VsockCid,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("vsock CIDs 10 to 11"), "{err}");
    drop(store);

    let path3 = dir.path().join("taps.db");
    let mut taps = config();
    taps.network.last_tap_index = 1;
    let store = Store::open(&path3, taps).unwrap();
    for i in 0..2 {
        store
            .save(
                &name(&format!("t{i}")),
                &machine("vm"),
                NetworkRequest::Allocate,
            )
            .unwrap();
    }
    let err = store
        .save(&name("t2"), &machine("vm"), NetworkRequest::Allocate)
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Exhausted {
                resource: Resource::TapName,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("TAP names tst0 to tst1"), "{err}");
}

#[test]
fn a_changed_tap_prefix_never_reissues_a_name() {
    let (_dir, path) = temp_db();
    let mut cfg = config();
    cfg.network.tap_prefix = "a".into();
    let store = Store::open(&path, cfg.clone()).unwrap();
    for i in 0..11 {
        store
            .save(
                &name(&format!("m{i}")),
                &machine("vm"),
                NetworkRequest::Allocate,
            )
            .unwrap();
    }
    drop(store);
    // With prefix "a1", index 0 would be "a10", which "a" + 10 already holds.
    cfg.network.tap_prefix = "a1".into();
    let store = Store::open(&path, cfg).unwrap();
    let tap = store
        .save(&name("late"), &machine("vm"), NetworkRequest::Allocate)
        .unwrap()
        .network
        .unwrap()
        .tap;
    assert_eq!(tap, "a11");
}

#[test]
fn snapshots_and_pools_keep_their_references() {
    let (_dir, path) = temp_db();
    let store = Store::open(&path, config()).unwrap();
    let stack = StackKey::new("alpha", "1.0", 2, 256).unwrap();
    let base = snapshot("base", Some(stack.clone()), None);
    store.save_snapshot(&base).unwrap();
    assert!(matches!(
        store.save_snapshot(&base).unwrap_err(),
        StoreError::AlreadyExists {
            kind: RecordKind::Snapshot,
            ..
        }
    ));
    let orphan = snapshot("diff-x", None, Some("missing"));
    let err = store.save_snapshot(&orphan).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::UnknownReference {
                field: "snapshot.parent",
                ..
            }
        ),
        "{err:?}"
    );
    store
        .save_snapshot(&snapshot("diff-1", Some(stack.clone()), Some("base")))
        .unwrap();
    store.save_snapshot(&snapshot("other", None, None)).unwrap();
    assert_eq!(
        store
            .load_snapshot(&SnapshotId::new("base").unwrap())
            .unwrap(),
        base
    );
    let of_stack: Vec<_> = store
        .list_snapshots(Some(&stack))
        .unwrap()
        .into_iter()
        .map(|s| s.id.to_string())
        .collect();
    assert_eq!(of_stack, ["base", "diff-1"]);
    assert_eq!(store.list_snapshots(None).unwrap().len(), 3);

    let pool = PoolConfig {
        template_snapshot: SnapshotId::new("base").unwrap(),
        min_depth: 2,
        max_depth: 4,
        max_age: Some(Duration::from_secs(300)),
        refill_parallelism: 2,
    };
    let saved = store.save_pool(&stack, &pool).unwrap();
    assert_eq!((saved.config.clone(), saved.revision), (pool.clone(), 1));
    assert!(matches!(
        store.save_pool(&stack, &pool).unwrap_err(),
        StoreError::AlreadyExists {
            kind: RecordKind::Pool,
            ..
        }
    ));
    let mut bad = pool.clone();
    bad.template_snapshot = SnapshotId::new("nope").unwrap();
    let other_stack = StackKey::new("beta", "1", 1, 128).unwrap();
    assert!(matches!(
        store.save_pool(&other_stack, &bad).unwrap_err(),
        StoreError::UnknownReference {
            field: "pool.template_snapshot",
            ..
        }
    ));
    let err = store
        .update_pool(&stack, |p| {
            p.min_depth = 9;
            Ok::<_, Veto>(())
        })
        .unwrap_err();
    assert!(err.to_string().contains("pool.min_depth"), "{err}");
    let updated = store
        .update_pool(&stack, |p| {
            p.max_depth = 16;
            p.max_age = None;
            Ok::<_, Veto>(())
        })
        .unwrap();
    assert_eq!(
        (
            updated.config.max_depth,
            updated.config.max_age,
            updated.revision
        ),
        (16, None, 2)
    );
    assert_eq!(store.list_pools().unwrap(), vec![updated.clone()]);

    // A machine restored from the template.
    let mut m = machine("vm-r");
    m.stack = Some(stack.clone());
    m.source_snapshot = Some(SnapshotId::new("base").unwrap());
    store
        .save(&name("restored"), &m, NetworkRequest::None)
        .unwrap();
    let mut dangling = machine("vm-d");
    dangling.source_snapshot = Some(SnapshotId::new("gone").unwrap());
    let err = store
        .save(&name("dangling"), &dangling, NetworkRequest::None)
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::UnknownReference {
                field: "machine.source_snapshot",
                ..
            }
        ),
        "{err:?}"
    );

    // "base" is used by a machine, a pool and a diff snapshot.
    let err = store
        .remove_snapshot(&SnapshotId::new("base").unwrap())
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("machine restored")
            && text.contains("pool alpha@1.0")
            && text.contains("snapshot diff-1"),
        "{text}"
    );
    store.remove(&name("restored")).unwrap();
    assert_eq!(store.remove_pool(&stack).unwrap(), Some(updated));
    assert_eq!(store.remove_pool(&stack).unwrap(), None);
    store
        .remove_snapshot(&SnapshotId::new("diff-1").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .remove_snapshot(&SnapshotId::new("base").unwrap())
            .unwrap(),
        Some(base)
    );
    assert!(store.integrity_check().unwrap().is_empty());
}

#[test]
fn threads_sharing_one_store_lose_nothing() {
    let (_dir, path) = temp_db();
    let store = Arc::new(Store::open(&path, config()).unwrap());
    store
        .save(&name("counter"), &machine("vm-c"), NetworkRequest::None)
        .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..25 {
                    store
                        .save(
                            &name(&format!("t{t}-{i}")),
                            &machine("vm"),
                            NetworkRequest::Allocate,
                        )
                        .unwrap();
                    store
                        .update(&name("counter"), |m| {
                            m.disk_gib += 1;
                            Ok::<_, Veto>(())
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let counter = store.load(&name("counter")).unwrap();
    assert_eq!((counter.machine.disk_gib, counter.revision), (100, 101));
    let all = store.list().unwrap();
    assert_eq!(all.len(), 101);
    let ips: HashSet<_> = all
        .iter()
        .filter_map(|r| r.network.as_ref().map(|n| n.ip))
        .collect();
    assert_eq!(ips.len(), 100);
}

#[test]
fn invalid_network_config_is_refused_at_open() {
    let (_dir, path) = temp_db();
    let mut cfg = config();
    cfg.network = NetworkConfig {
        tap_prefix: "far-too-long-tap".into(),
        ..NetworkConfig::default()
    };
    let err = Store::open(&path, cfg).unwrap_err();
    assert!(err.to_string().contains("network.tap_prefix"), "{err}");
    assert!(!path.exists(), "nothing was created");
}
