//! Every call round-trips; volume (1,000 sequential, 32 concurrent); frame limits.

use std::thread;
use std::time::Instant;

use crate::common::Fixture;
use ember_agent_proto::test_agent::{Fault, TestAgentConfig};
use ember_agent_proto::{ClientError, ErrorCode, Exec, Kind, Reseed};

#[test]
fn every_call_round_trips() {
    let fx = Fixture::new(Fault::None);
    let mut client = fx.connect();

    client.ping().unwrap();
    let big = vec![0xa5u8; 100_000];
    client.ping_payload(&big).unwrap();

    let h1 = client.health().unwrap();
    let h2 = client.health().unwrap();
    assert_eq!(h1.generation, 0);
    assert_eq!(h1.boot_id, h2.boot_id);
    assert!(h2.uptime_ns >= h1.uptime_ns);

    let out = client
        .exec(&Exec::new(&["echo", "hello", "world"]))
        .unwrap();
    assert!(out.success());
    assert_eq!(out.stdout, b"hello world\n");
    let out = client
        .exec(&Exec::new(&["cat"]).with_stdin(b"piped input"))
        .unwrap();
    assert_eq!(out.stdout, b"piped input");
    let out = client
        .exec(&Exec::new(&["env"]).with_env(&["A=1", "B=two"]))
        .unwrap();
    assert_eq!(out.stdout, b"A=1\nB=two\n");
    assert_eq!(
        client.exec(&Exec::new(&["exit", "3"])).unwrap().exit_code,
        3
    );
    let out = client.exec(&Exec::new(&["nope"])).unwrap();
    assert_eq!(out.exit_code, 127);
    assert_eq!(out.stderr, b"nope: command not found\n");
    let out = client.exec(&Exec::new(&["yes", "1000000"])).unwrap();
    assert!(out.stdout_truncated);
    assert!(out.stdout.len() < 256 * 1024);

    client.put_file("/etc/motd", 0o644, b"welcome\n").unwrap();
    assert_eq!(
        fx.agent.file("/etc/motd"),
        Some((0o644, b"welcome\n".to_vec()))
    );
    let file = client.get_file("/etc/motd", 1024).unwrap();
    assert_eq!(
        (file.mode, file.data.as_slice()),
        (0o644, &b"welcome\n"[..])
    );

    // Larger than one frame: chunked both ways.
    let blob: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    client.put_file("/data/blob", 0o600, &blob).unwrap();
    assert_eq!(fx.agent.file("/data/blob").unwrap().1, blob);
    let back = client.get_file("/data/blob", 1 << 20).unwrap();
    assert_eq!(back.data, blob);
    client.put_file("/empty", 0o600, b"").unwrap();
    assert!(client.get_file("/empty", 0).unwrap().data.is_empty());

    // Agent-side errors are errors that keep the connection.
    let err = client.get_file("/missing", 1024).unwrap_err();
    assert!(
        matches!(&err, ClientError::Agent { code, request: Kind::GetFile, .. } if *code == ErrorCode::NOT_FOUND),
        "{err}"
    );
    let err = client.get_file("/data/blob", 1000).unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::FileTooLarge {
                size: 700_000,
                max: 1000
            }
        ),
        "{err}"
    );
    assert!(client.poisoned().is_none());

    // Limits are enforced before sending, without poisoning.
    let err = client.exec(&Exec::new(&[])).unwrap_err();
    assert!(matches!(err, ClientError::Encode { .. }), "{err}");

    client
        .reseed(&Reseed {
            generation: 7,
            wall_clock_ns: 1_700_000_000_000_000_000,
            entropy: &[9; 32],
        })
        .unwrap();
    let record = fx.agent.last_reseed().unwrap();
    assert_eq!(
        (record.generation, record.entropy.as_slice()),
        (7, &[9u8; 32][..])
    );
    assert_eq!(client.health().unwrap().generation, 7);
    client.reseed_fresh(8).unwrap();
    let record = fx.agent.last_reseed().unwrap();
    assert_eq!(record.generation, 8);
    assert_ne!(record.entropy, vec![0u8; 32]);
    assert!(record.wall_clock_ns > 1_600_000_000_000_000_000);

    client.ping().unwrap();
    client.shutdown().unwrap();
    assert!(fx.agent.shutdown_requested());
}

#[test]
fn thousand_sequential_requests_and_clients() {
    let fx = Fixture::new(Fault::None);
    let mut client = fx.connect();
    for i in 0..1000u32 {
        let arg = i.to_string();
        let out = client.exec(&Exec::new(&["echo", &arg])).unwrap();
        assert_eq!(out.stdout, format!("{i}\n").as_bytes());
    }
    drop(client);

    let started = Instant::now();
    for i in 0..1000u32 {
        let mut client = fx.connect();
        let payload = i.to_le_bytes();
        client.ping_payload(&payload).unwrap();
    }
    assert_eq!(fx.agent.connections(), 1001);
    eprintln!(
        "1000 sequential connect+hello+ping: {:?}",
        started.elapsed()
    );
}

#[test]
fn thirty_two_concurrent_clients() {
    let fx = Fixture::new(Fault::None);
    thread::scope(|s| {
        for t in 0..32u32 {
            let fx = &fx;
            s.spawn(move || {
                let mut client = fx.connect();
                for i in 0..50u32 {
                    let arg = format!("{t}-{i}");
                    let out = client.exec(&Exec::new(&["echo", &arg])).unwrap();
                    assert_eq!(out.stdout, format!("{arg}\n").as_bytes());
                    client.health().unwrap();
                }
            });
        }
    });
    // Every `counter` increment is seen exactly once across clients.
    thread::scope(|s| {
        let handles: Vec<_> = (0..32)
            .map(|_| {
                s.spawn(|| {
                    let mut client = fx.connect();
                    let out = client.exec(&Exec::new(&["counter"])).unwrap();
                    String::from_utf8(out.stdout)
                        .unwrap()
                        .parse::<u64>()
                        .unwrap()
                })
            })
            .collect();
        let mut seen: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (1..=32).collect::<Vec<_>>());
    });
}

#[test]
fn small_agent_frame_limit_is_respected_by_the_client() {
    let fx = Fixture::with_config(TestAgentConfig {
        max_frame_len: 4096,
        ..TestAgentConfig::default()
    });
    let mut client = fx.connect();
    assert_eq!(client.agent().max_frame_len, 4096);
    let err = client.ping_payload(&[0u8; 5000]).unwrap_err();
    assert!(matches!(err, ClientError::Encode { .. }), "{err}");
    let blob = vec![3u8; 20_000];
    client.put_file("/f", 0o644, &blob).unwrap();
    assert_eq!(client.get_file("/f", 1 << 20).unwrap().data, blob);
}

#[test]
fn reseed_sent_ahead_is_answered_before_the_next_call() {
    let fx = Fixture::new(Fault::None);
    let mut client = fx.connect();
    // Nothing pending: finishing is a no-op.
    client.finish_pending().unwrap();
    client.send_reseed_fresh(11).unwrap();
    assert!(client.has_pending());
    // The next call reads the Reseed's reply first, then its own.
    let out = client.exec(&Exec::new(&["echo", "after"])).unwrap();
    assert_eq!(out.stdout, b"after\n");
    assert!(!client.has_pending());
    assert_eq!(fx.agent.last_reseed().unwrap().generation, 11);
    assert_eq!(client.health().unwrap().generation, 11);

    // A second Reseed sent while one is pending finishes the first.
    client.send_reseed_fresh(12).unwrap();
    client.send_reseed_fresh(13).unwrap();
    client.finish_pending().unwrap();
    assert!(!client.has_pending());
    assert_eq!(client.health().unwrap().generation, 13);
    assert!(client.poisoned().is_none());
}
