//! The store's API on a real file: ember-core's records through insert, get, list, put,
//! replace, update and remove; persistence across reopen; rollback of failed, invalid or
//! panicking transactions; references and users; a hand-edited row reported, not handed on;
//! sandbox listings by state, template and labels, page by page; allocation uniqueness, release
//! and exhaustion; many threads sharing one store.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::sync::Arc;

use ember_core::{
    EndCause, PoolSpec, Pooled, Sandbox, SandboxEnd, SandboxState, SnapshotInfo, Template,
    TemplateName, VmOwner, VmRecord,
};
use ember_store::{
    Durability, NetworkConfig, RecordKind, Resource, SandboxFilter, Store, StoreError,
};
use support::{config, sandbox, seed_template, snapshot, stack, t0, temp_db, template};

fn write<T>(
    store: &Store,
    f: impl FnOnce(&ember_store::Tx<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    store.write("test", Durability::Full, f)
}

fn pool(template: &str) -> PoolSpec {
    PoolSpec {
        template: TemplateName::new(template).unwrap(),
        min_depth: 2,
        max_depth: 8,
        pooled: Pooled::Running,
        max_age_secs: Some(600),
        refill_parallelism: 2,
    }
}

fn vm(id: &str) -> VmRecord {
    VmRecord {
        id: ember_core::VmId::new(id).unwrap(),
        owner: VmOwner::Sandbox,
        status: ember_core::VmStatus::Running,
        stack: Some(stack("probe")),
        restored_from: None,
        created_at: t0(),
        snapshots: vec![],
        vcpu_count: 1,
        mem_size_mib: 128,
        vsock_cid: Some(3),
        network_interfaces: vec![],
        disks: vec![],
        process: ember_core::VmProcess {
            identity: ember_core::ProcessIdentity {
                pid: 4242,
                start_time: 99,
                boot_id: "boot".into(),
            },
            slot: 3,
            dir: "/run/ember/slots/3".into(),
            api_socket: "/run/ember/slots/3/api.sock".into(),
            vsock_socket: "/run/ember/slots/3/vsock.sock".into(),
        },
    }
}

#[test]
fn every_record_kind_round_trips_and_survives_reopen() {
    let (_dir, path) = temp_db();
    let store = Store::open(&path, config()).unwrap();
    seed_template(&store, "probe");
    write(&store, |tx| {
        tx.insert(&pool("probe"))?;
        tx.insert(&sandbox("sb-1", "probe"))?;
        tx.insert(&vm("sb-1"))?;
        Ok(())
    })
    .unwrap();
    let updated = write(&store, |tx| {
        tx.update::<Sandbox, StoreError>("sb-1", |s| {
            s.state = SandboxState::Paused;
            Ok(())
        })
    })
    .unwrap();
    assert_eq!(updated.revision, 2);
    drop(store);

    let store = Store::open(&path, config()).unwrap();
    assert_eq!(store.load::<Sandbox>("sb-1").unwrap(), updated);
    assert_eq!(store.load::<VmRecord>("sb-1").unwrap().record, vm("sb-1"));
    assert_eq!(
        store.load::<PoolSpec>("probe").unwrap().record,
        pool("probe")
    );
    assert_eq!(
        store.load::<Template>("probe").unwrap().record,
        template("probe", "tpl-probe")
    );
    assert_eq!(
        store.list::<SnapshotInfo>().unwrap()[0].record,
        snapshot("tpl-probe", Some(stack("probe")))
    );
    assert!(store.integrity_check().unwrap().is_empty());
}

#[test]
fn insert_never_overwrites_and_remove_is_idempotent() {
    let (_dir, path) = temp_db();
    let store = Store::open(&path, config()).unwrap();
    seed_template(&store, "probe");
    let first = write(&store, |tx| tx.insert(&sandbox("a", "probe"))).unwrap();
    let mut other = sandbox("a", "probe");
    other.labels.insert("x".into(), "y".into());
    let err = write(&store, |tx| tx.insert(&other)).unwrap_err();
    assert!(
        matches!(&err, StoreError::AlreadyExists { kind: RecordKind::Sandbox, key } if key == "a"),
        "{err:?}"
    );
    assert_eq!(store.load::<Sandbox>("a").unwrap(), first, "untouched");
    // put replaces; replace checks the revision.
    let put = write(&store, |tx| tx.put(&other)).unwrap();
    assert_eq!(put.revision, 2);
    let err = write(&store, |tx| tx.replace(&sandbox("a", "probe"), 1)).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Stale {
                expected: 1,
                found: 2,
                ..
            }
        ),
        "{err:?}"
    );
    let removed = write(&store, |tx| tx.remove::<Sandbox>("a"))
        .unwrap()
        .unwrap();
    assert_eq!(removed, other);
    assert!(
        write(&store, |tx| tx.remove::<Sandbox>("a"))
            .unwrap()
            .is_none()
    );
    let err = store.load::<Sandbox>("a").unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");

    // delete: the same without reading the record back.
    write(&store, |tx| tx.insert(&sandbox("b", "probe"))).unwrap();
    assert!(write(&store, |tx| tx.delete::<Sandbox>("b")).unwrap());
    assert!(!write(&store, |tx| tx.delete::<Sandbox>("b")).unwrap());
    assert!(store.get::<Sandbox>("b").unwrap().is_none());
}

#[test]
fn failed_invalid_or_panicking_transactions_write_nothing() {
    let (_dir, path) = temp_db();
    let store = Arc::new(Store::open(&path, config()).unwrap());
    seed_template(&store, "probe");
    let before = write(&store, |tx| tx.insert(&sandbox("m", "probe"))).unwrap();

    // The closure fails after writing: everything rolls back.
    let err = write(&store, |tx| {
        tx.insert(&sandbox("n", "probe"))?;
        tx.allocate_network("n")?;
        tx.update::<Sandbox, StoreError>("m", |s| {
            s.labels.insert("k".into(), "v".into());
            Ok(())
        })?;
        Err::<(), _>(StoreError::invalid("test", "changed my mind"))
    })
    .unwrap_err();
    assert!(err.to_string().contains("changed my mind"));
    assert_eq!(store.load::<Sandbox>("m").unwrap(), before);
    assert!(store.get::<Sandbox>("n").unwrap().is_none());
    assert!(
        store
            .read("net", |tx| tx.network_of("n"))
            .unwrap()
            .is_none()
    );

    // An invalid record is refused naming the field.
    let mut bad = sandbox("bad", "probe");
    bad.env.insert("1X".into(), "v".into());
    let err = write(&store, |tx| tx.insert(&bad)).unwrap_err();
    assert!(err.to_string().contains("1X"), "{err}");
    // An update may not change the key.
    let err = write(&store, |tx| {
        tx.update::<Sandbox, StoreError>("m", |s| {
            s.id = ember_core::SandboxId::new("other").unwrap();
            Ok(())
        })
    })
    .unwrap_err();
    assert!(err.to_string().contains("may not change the key"), "{err}");

    // A panic inside the transaction rolls it back and leaves the store usable.
    let s2 = Arc::clone(&store);
    let panicked = std::thread::spawn(move || {
        let _ = write(&s2, |tx| {
            tx.insert(&sandbox("p", "probe"))?;
            panic!("boom");
            #[allow(unreachable_code)]
            Ok(())
        });
    })
    .join();
    assert!(panicked.is_err());
    assert!(store.get::<Sandbox>("p").unwrap().is_none());
    write(&store, |tx| tx.insert(&sandbox("q", "probe"))).unwrap();

    // A read transaction cannot write.
    let err = store
        .read("read", |tx| tx.insert(&sandbox("r", "probe")))
        .unwrap_err();
    assert!(err.to_string().contains("read transaction"), "{err}");
}

#[test]
fn references_must_exist_and_users_block_removal() {
    let (_dir, path) = temp_db();
    let store = Store::open(&path, config()).unwrap();
    // A template needs its snapshot, a pool its template, a live sandbox its template.
    let err = write(&store, |tx| tx.insert(&template("probe", "tpl-probe"))).unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::UnknownReference {
                field: "template.snapshot",
                ..
            }
        ),
        "{err:?}"
    );
    let err = write(&store, |tx| tx.insert(&pool("probe"))).unwrap_err();
    assert!(err.to_string().contains("pool.template"), "{err}");
    let err = write(&store, |tx| tx.insert(&sandbox("s", "probe"))).unwrap_err();
    assert!(err.to_string().contains("sandbox.template"), "{err}");

    seed_template(&store, "probe");
    write(&store, |tx| {
        tx.insert(&pool("probe"))?;
        tx.insert(&sandbox("s", "probe"))
    })
    .unwrap();
    let err = write(&store, |tx| tx.remove::<Template>("probe")).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, StoreError::InUse { .. })
            && text.contains("pool probe")
            && text.contains("sandbox s"),
        "{text}"
    );
    let err = write(&store, |tx| tx.remove::<SnapshotInfo>("tpl-probe")).unwrap_err();
    assert!(err.to_string().contains("template probe"), "{err}");
    let err = write(&store, |tx| tx.delete::<Template>("probe")).unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
    assert!(store.get::<Template>("probe").unwrap().is_some());

    // An ended sandbox and a removed pool no longer hold the template.
    write(&store, |tx| {
        tx.remove::<PoolSpec>("probe")?;
        tx.update::<Sandbox, StoreError>("s", |s| {
            s.state = SandboxState::Ended;
            s.end = Some(SandboxEnd {
                cause: EndCause::Killed,
                message: "killed by its owner".into(),
                at: t0(),
            });
            Ok(())
        })
    })
    .unwrap();
    write(&store, |tx| {
        tx.remove::<Template>("probe")?;
        tx.remove::<SnapshotInfo>("tpl-probe")
    })
    .unwrap();
    // The ended sandbox keeps its record (and the template's name).
    assert_eq!(
        store.load::<Sandbox>("s").unwrap().record.template.as_str(),
        "probe"
    );
}

#[test]
fn a_hand_edited_row_is_reported_not_handed_on() {
    let (_dir, path) = temp_db();
    let store = Store::open(&path, config()).unwrap();
    seed_template(&store, "probe");
    write(&store, |tx| tx.insert(&sandbox("s", "probe"))).unwrap();
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE sandboxes SET body = json_set(body, '$.env', json('{\"1X\":\"v\"}')) WHERE id = 's'",
        [],
    )
    .unwrap();
    drop(conn);
    let store = Store::open(&path, config()).unwrap();
    let err = store.load::<Sandbox>("s").unwrap_err();
    assert!(err.is_corruption(), "{err:?}");
    assert!(
        err.to_string().contains("sandbox \"s\"") && err.to_string().contains("1X"),
        "{err}"
    );
}

#[test]
fn sandboxes_are_listed_by_state_template_and_label_page_by_page() {
    let (_dir, path) = temp_db();
    let store = Store::open(&path, config()).unwrap();
    seed_template(&store, "a");
    seed_template(&store, "b");
    write(&store, |tx| {
        for i in 0..25u64 {
            let mut s = sandbox(&format!("s{i:02}"), if i % 2 == 0 { "a" } else { "b" });
            s.created_at = t0() + std::time::Duration::from_millis(i / 3);
            if i % 5 == 0 {
                s.state = SandboxState::Paused;
            }
            s.labels.insert("team".into(), format!("t{}", i % 3));
            s.labels.insert("role.kind/x".into(), "web".into());
            tx.insert(&s)?;
        }
        Ok(())
    })
    .unwrap();
    let all = |filter: SandboxFilter| -> Vec<String> {
        let mut out = Vec::new();
        let mut f = filter;
        loop {
            let page = store.sandboxes(&f).unwrap();
            assert!(page.items.len() <= f.limit);
            out.extend(page.items.iter().map(|s| s.id.to_string()));
            match page.next {
                Some(c) => f.after = Some(c.to_string().parse().unwrap()),
                None => return out,
            }
        }
    };
    let everything = all(SandboxFilter {
        limit: 4,
        ..SandboxFilter::default()
    });
    let want: Vec<String> = (0..25).map(|i| format!("s{i:02}")).collect();
    assert_eq!(everything, want, "oldest first, each once across pages");
    let paused = all(SandboxFilter {
        states: vec![SandboxState::Paused],
        limit: 2,
        ..SandboxFilter::default()
    });
    assert_eq!(paused, ["s00", "s05", "s10", "s15", "s20"]);
    let a_team1 = all(SandboxFilter {
        template: Some(TemplateName::new("a").unwrap()),
        labels: vec![
            ("team".into(), "t1".into()),
            ("role.kind/x".into(), "web".into()),
        ],
        ..SandboxFilter::default()
    });
    assert_eq!(a_team1, ["s04", "s10", "s16", "s22"]);
    let err = store
        .sandboxes(&SandboxFilter {
            limit: 0,
            ..SandboxFilter::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
    let err = store
        .sandboxes(&SandboxFilter {
            labels: vec![("bad key".into(), "x".into())],
            ..SandboxFilter::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("bad key"), "{err}");
}

#[test]
fn allocations_are_unique_released_and_reused() {
    let (_dir, path) = temp_db();
    let store = Store::open(&path, config()).unwrap();
    let first = write(&store, |tx| tx.allocate_network("web-1")).unwrap();
    assert_eq!(
        first.ip.to_string(),
        "10.77.0.2",
        "lowest host after the gateway"
    );
    assert_eq!(first.mac.to_string(), "06:00:0a:4d:00:02");
    assert_eq!((first.tap.as_str(), first.vsock_cid), ("tst0", 3));
    assert_eq!(
        (first.prefix_len, first.gateway.to_string().as_str()),
        (22, "10.77.0.1")
    );
    let err = write(&store, |tx| tx.allocate_network("web-1")).unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err:?}");
    let second = write(&store, |tx| tx.allocate_network("web-2")).unwrap();
    assert_ne!(first.ip, second.ip);
    assert!(write(&store, |tx| tx.release_network("web-1")).unwrap());
    assert!(!write(&store, |tx| tx.release_network("web-1")).unwrap());
    let third = write(&store, |tx| tx.allocate_network("web-3")).unwrap();
    assert_eq!(third, first, "the lowest free values are reused");
    drop(store);
    let store = Store::open(&path, config()).unwrap();
    assert_eq!(
        store.read("net", |tx| tx.network_of("web-3")).unwrap(),
        Some(third)
    );
}

#[test]
fn exhaustion_names_the_range() {
    let (dir, path) = temp_db();
    let mut cfg = config();
    // A /29 has hosts .1-.6; .1 is the gateway, so five guests fit.
    cfg.network.subnet = "10.9.0.0/29".parse().unwrap();
    cfg.network.gateway = "10.9.0.1".parse().unwrap();
    let store = Store::open(&path, cfg).unwrap();
    seed_template(&store, "probe");
    for i in 0..5 {
        write(&store, |tx| tx.allocate_network(&format!("m{i}"))).unwrap();
    }
    let err = write(&store, |tx| {
        tx.insert(&sandbox("m5", "probe"))?;
        tx.allocate_network("m5")
    })
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
        store.get::<Sandbox>("m5").unwrap().is_none(),
        "the sandbox row was rolled back too"
    );
    drop(store);

    let mut small = config();
    small.network.first_cid = 10;
    small.network.last_cid = 11;
    let store = Store::open(dir.path().join("cids.db"), small).unwrap();
    for i in 0..2 {
        write(&store, |tx| tx.allocate_network(&format!("c{i}"))).unwrap();
    }
    let err = write(&store, |tx| tx.allocate_network("c2")).unwrap_err();
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

    let mut taps = config();
    taps.network.last_tap_index = 1;
    let store = Store::open(dir.path().join("taps.db"), taps).unwrap();
    for i in 0..2 {
        write(&store, |tx| tx.allocate_network(&format!("t{i}"))).unwrap();
    }
    let err = write(&store, |tx| tx.allocate_network("t2")).unwrap_err();
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
        write(&store, |tx| tx.allocate_network(&format!("m{i}"))).unwrap();
    }
    drop(store);
    // With prefix "a1", index 0 would be "a10", which "a" + 10 already holds.
    cfg.network.tap_prefix = "a1".into();
    let store = Store::open(&path, cfg).unwrap();
    let tap = write(&store, |tx| tx.allocate_network("late")).unwrap().tap;
    assert_eq!(tap, "a11");
}

#[test]
fn threads_sharing_one_store_lose_nothing() {
    let (_dir, path) = temp_db();
    let store = Arc::new(Store::open(&path, config()).unwrap());
    seed_template(&store, "probe");
    write(&store, |tx| tx.insert(&sandbox("counter", "probe"))).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..25 {
                    let id = format!("t{t}-{i}");
                    let durability = if i % 2 == 0 {
                        Durability::Process
                    } else {
                        Durability::Full
                    };
                    store
                        .write::<_, StoreError>("insert", durability, |tx| {
                            tx.insert(&sandbox(&id, "probe"))?;
                            tx.allocate_network(&id)?;
                            tx.update::<Sandbox, StoreError>("counter", |s| {
                                let n: u64 = s.labels.get("n").map_or(0, |v| v.parse().unwrap());
                                s.labels.insert("n".into(), (n + 1).to_string());
                                Ok(())
                            })
                        })
                        .unwrap();
                    // Readers see committed states while writers write.
                    store.list::<Sandbox>().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let counter = store.load::<Sandbox>("counter").unwrap();
    assert_eq!(counter.record.labels["n"], "100");
    assert_eq!(counter.revision, 101);
    let all = store.list::<Sandbox>().unwrap();
    assert_eq!(all.len(), 101);
    let ips: HashSet<_> = store
        .read("nets", |tx| {
            all.iter()
                .filter_map(|s| tx.network_of(s.record.id.as_str()).transpose())
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap()
        .into_iter()
        .map(|n| n.ip)
        .collect();
    assert_eq!(ips.len(), 100);
}

#[test]
fn commits_are_observed_with_their_durability() {
    let (_dir, path) = temp_db();
    let store = Store::open(&path, config()).unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    store.set_commit_observer(Arc::new(move |op, d, took| {
        s.lock().unwrap().push((op, d, took));
    }));
    store
        .write::<_, StoreError>("one", Durability::Process, |tx| tx.allocate_network("x"))
        .unwrap();
    let _ = store.write::<(), StoreError>("failed", Durability::Full, |_| {
        Err(StoreError::invalid("x", "no"))
    });
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "only committed writes are observed");
    assert_eq!((seen[0].0, seen[0].1), ("one", Durability::Process));
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
