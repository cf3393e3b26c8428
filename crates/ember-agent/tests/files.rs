//! The file requests against the real agent binary on a real directory.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs
)]

mod common;

use common::Agent;
use ember_agent_proto::{ClientError, ErrorCode, FileKind};

fn code(e: ClientError) -> ErrorCode {
    match e {
        ClientError::Agent { code, .. } => code,
        other => panic!("expected an agent error, got {other}"),
    }
}

#[test]
fn ten_mib_round_trip_byte_for_byte() {
    let agent = Agent::start();
    let mut c = agent.client();
    let data: Vec<u8> = (0..10 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let path = agent.work().join("big/blob.bin");
    c.put_file(path.as_os_str().as_encoded_bytes(), 0o640, &data)
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    let back = c
        .get_file(path.as_os_str().as_encoded_bytes(), 64 << 20)
        .unwrap();
    assert_eq!(back.mode, 0o640);
    assert!(back.data == data, "bytes differ");
    // Too large for the caller's limit: refused, the connection stays.
    assert!(matches!(
        c.get_file(path.as_os_str().as_encoded_bytes(), 1024),
        Err(ClientError::FileTooLarge { .. })
    ));
    c.ping().unwrap();
}

#[test]
fn stat_list_mkdir_remove_rename() {
    let agent = Agent::start();
    let mut c = agent.client();
    // Relative paths are taken from the agent's workdir.
    assert!(c.make_dir("a/b/c", 0o700, true).unwrap());
    assert!(!c.make_dir("a/b/c", 0o700, true).unwrap());
    assert_eq!(
        code(c.make_dir("x/y", 0o755, false).unwrap_err()),
        ErrorCode::NOT_FOUND
    );
    c.put_file("a/file.txt", 0o600, b"hello").unwrap();
    assert_eq!(
        code(c.make_dir("a/file.txt", 0o755, false).unwrap_err()),
        ErrorCode::ALREADY_EXISTS
    );
    std::os::unix::fs::symlink("file.txt", agent.work().join("a/link")).unwrap();

    let st = c.stat("a/b/c").unwrap();
    assert_eq!((st.kind, st.mode), (FileKind::Directory, 0o700));
    let st = c.stat("a/file.txt").unwrap();
    assert_eq!((st.kind, st.size, st.mode), (FileKind::File, 5, 0o600));
    assert!(st.mtime_ns > 0);
    let st = c.stat("a/link").unwrap();
    assert_eq!(
        (st.kind, st.target.as_slice()),
        (FileKind::Symlink, &b"file.txt"[..])
    );
    assert_eq!(code(c.stat("nope").unwrap_err()), ErrorCode::NOT_FOUND);

    let names = |entries: Vec<ember_agent_proto::ListedEntry>| -> Vec<String> {
        entries
            .into_iter()
            .map(|e| String::from_utf8(e.name).unwrap())
            .collect()
    };
    assert_eq!(
        names(c.list_dir("a", 1, 100).unwrap()),
        ["b", "file.txt", "link"]
    );
    assert_eq!(
        names(c.list_dir("a", 3, 100).unwrap()),
        ["b", "b/c", "file.txt", "link"]
    );
    // Paged: one entry per page.
    let (page, more) = c
        .list_dir_page(&ember_agent_proto::ListDir {
            path: b"a",
            depth: 3,
            offset: 1,
            max_entries: 1,
        })
        .unwrap();
    assert_eq!((names(page), more), (vec!["b/c".to_owned()], true));
    assert_eq!(
        code(c.list_dir("a/file.txt", 1, 10).unwrap_err()),
        ErrorCode::NOT_A_DIRECTORY
    );
    // Many entries across pages of a small frame still come back whole.
    for i in 0..300 {
        std::fs::write(agent.work().join(format!("a/b/f{i:03}")), b"").unwrap();
    }
    assert_eq!(c.list_dir("a/b", 1, 1000).unwrap().len(), 301);

    c.rename("a/file.txt", "a/renamed.txt").unwrap();
    assert_eq!(
        std::fs::read(agent.work().join("a/renamed.txt")).unwrap(),
        b"hello"
    );
    assert_eq!(
        code(c.rename("a/missing", "a/x").unwrap_err()),
        ErrorCode::NOT_FOUND
    );
    assert_eq!(
        code(c.rename("/", "a/x").unwrap_err()),
        ErrorCode::INVALID_ARGUMENT
    );

    assert_eq!(
        code(c.remove("a/b", false).unwrap_err()),
        ErrorCode::NOT_EMPTY
    );
    c.remove("a/link", false).unwrap();
    assert!(
        agent.work().join("a/renamed.txt").exists(),
        "the link's target stays"
    );
    c.remove("a", true).unwrap();
    assert!(!agent.work().join("a").exists());
    assert_eq!(
        code(c.remove("/", true).unwrap_err()),
        ErrorCode::INVALID_ARGUMENT
    );
    assert_eq!(code(c.remove("a", true).unwrap_err()), ErrorCode::NOT_FOUND);
}

#[test]
fn file_errors_are_clear() {
    let agent = Agent::start();
    let mut c = agent.client();
    assert_eq!(
        code(c.get_file("missing", 10).unwrap_err()),
        ErrorCode::NOT_FOUND
    );
    std::fs::create_dir(agent.work().join("d")).unwrap();
    assert_eq!(
        code(c.get_file("d", 10).unwrap_err()),
        ErrorCode::IS_A_DIRECTORY
    );
    assert_eq!(
        code(c.put_file("d", 0o644, b"x").unwrap_err()),
        ErrorCode::IS_A_DIRECTORY
    );
    c.put_file("f", 0o644, b"x").unwrap();
    assert_eq!(
        code(c.put_file("f/g", 0o644, b"x").unwrap_err()),
        ErrorCode::NOT_A_DIRECTORY
    );
    assert_eq!(code(c.stat("f/").unwrap_err()), ErrorCode::NOT_A_DIRECTORY);
    // /proc files say size 0 and still have content.
    let got = c.get_file("/proc/self/status", 1 << 20).unwrap();
    assert!(got.data.starts_with(b"Name:"));
}

#[test]
fn fifos_are_refused_not_waited_on() {
    let agent = Agent::start();
    let mut c = agent.client();
    let fifo = agent.work().join("pipe");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        code(c.get_file("pipe", 10).unwrap_err()),
        ErrorCode::INVALID_ARGUMENT
    );
    assert!(c.put_file("pipe", 0o644, b"x").is_err());
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}
