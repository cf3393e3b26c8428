//! Stat, ListDir, MakeDir, Remove, Rename, ExecIn and PutFile's parents through the real client
//! against the test agent, whose files are a real directory: the client meets real file-system
//! semantics (and the error codes the host's errors map to).

use std::os::unix::fs::{PermissionsExt, symlink};

use crate::common::Fixture;
use ember_agent_proto::test_agent::{Fault, TestAgentConfig};
use ember_agent_proto::{
    AgentClient, ClientError, ConnectOptions, ErrorCode, Exec, ExecIn, FileKind, Kind, ListDir,
    ListedEntry,
};

/// Asserts `r` failed with an agent Error of `code`; returns its message.
#[track_caller]
fn agent_error<T: std::fmt::Debug>(r: Result<T, ClientError>, code: ErrorCode) -> String {
    match r {
        Err(ClientError::Agent {
            code: got, message, ..
        }) if got == code => message,
        other => panic!("expected an agent error {code}, got {other:?}"),
    }
}

fn names(entries: &[ListedEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8(e.name.clone()).unwrap())
        .collect()
}

#[test]
fn directories_are_made_listed_renamed_and_removed() {
    let fx = Fixture::new(Fault::None);
    let mut a = fx.connect();
    let root = fx.agent.root().to_path_buf();

    // MakeDir: created, already there, parents, exact mode, refusals.
    assert!(a.make_dir("/a", 0o700, false).unwrap());
    assert_eq!(
        std::fs::metadata(root.join("a"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o700
    );
    assert!(!a.make_dir("/a", 0o755, false).unwrap());
    assert!(!a.make_dir("/a/", 0o755, true).unwrap());
    assert!(!a.make_dir("/", 0o755, false).unwrap());
    agent_error(a.make_dir("/x/y", 0o755, false), ErrorCode::NOT_FOUND);
    assert!(a.make_dir("/x/y/z", 0o750, true).unwrap());
    assert!(root.join("x/y/z").is_dir());
    a.put_file("/a/file", 0o640, b"data").unwrap();
    agent_error(
        a.make_dir("/a/file", 0o755, false),
        ErrorCode::ALREADY_EXISTS,
    );
    agent_error(
        a.make_dir("/a/file/sub", 0o755, false),
        ErrorCode::NOT_A_DIRECTORY,
    );
    agent_error(
        a.make_dir("/a/file/sub", 0o755, true),
        ErrorCode::NOT_A_DIRECTORY,
    );

    // PutFile creates missing parents; GetFile and PutFile refuse directories.
    a.put_file("/deep/er/file.txt", 0o600, b"nested").unwrap();
    assert_eq!(
        fx.agent.file("/deep/er/file.txt").unwrap(),
        (0o600, b"nested".to_vec())
    );
    agent_error(a.get_file("/deep", 1024), ErrorCode::IS_A_DIRECTORY);
    agent_error(a.put_file("/deep", 0o644, b"x"), ErrorCode::IS_A_DIRECTORY);
    agent_error(a.get_file("/a/file/", 1024), ErrorCode::NOT_A_DIRECTORY);
    agent_error(
        a.put_file("/a/file/under", 0o644, b"x"),
        ErrorCode::NOT_A_DIRECTORY,
    );
    // `..` never leaves the root.
    a.put_file("/../../escape", 0o644, b"inside").unwrap();
    assert_eq!(std::fs::read(root.join("escape")).unwrap(), b"inside");
    a.remove("escape", false).unwrap();

    // Stat: file, directory, symlink, missing.
    let file = a.stat("/a/file").unwrap();
    assert_eq!(
        (file.kind, file.mode, file.size),
        (FileKind::File, 0o640, 4)
    );
    assert!(file.is_file() && file.target.is_empty());
    assert!(file.mtime_ns > 1_600_000_000_000_000_000);
    assert!(!file.owner.is_empty() && !file.group.is_empty());
    let dir = a.stat("/x/y").unwrap();
    assert!(dir.is_dir());
    assert_eq!(dir.mode, 0o755);
    assert!(a.stat("/").unwrap().is_dir());
    symlink("/a/file", root.join("link")).unwrap();
    let link = a.stat("/link").unwrap();
    assert_eq!(
        (link.kind, link.target.as_slice()),
        (FileKind::Symlink, &b"/a/file"[..])
    );
    agent_error(a.stat("/missing"), ErrorCode::NOT_FOUND);
    agent_error(a.stat("/a/file/x"), ErrorCode::NOT_A_DIRECTORY);
    std::fs::remove_file(root.join("link")).unwrap();

    // ListDir: depth 1 and 2, sorted, relative names; refusals.
    let top = a.list_dir("/", 1, 100).unwrap();
    assert_eq!(names(&top), ["a", "deep", "x"]);
    assert!(top.iter().all(|e| e.info.is_dir()));
    let two = a.list_dir("/", 2, 100).unwrap();
    assert_eq!(names(&two), ["a", "a/file", "deep", "deep/er", "x", "x/y"]);
    let file_entry = &two[1];
    assert_eq!(
        (file_entry.info.kind, file_entry.info.size),
        (FileKind::File, 4)
    );
    let all = a.list_dir("/x", u32::MAX, 100).unwrap();
    assert_eq!(names(&all), ["y", "y/z"]);
    assert_eq!(all[1].info.mode, 0o750);
    assert!(a.list_dir("/x/y/z", 1, 100).unwrap().is_empty());
    agent_error(a.list_dir("/a/file", 1, 100), ErrorCode::NOT_A_DIRECTORY);
    agent_error(a.list_dir("/missing", 1, 100), ErrorCode::NOT_FOUND);
    let err = a.list_dir("/", 2, 5).unwrap_err();
    assert!(
        matches!(err, ClientError::TooManyEntries { max: 5 }),
        "{err}"
    );
    // One page by hand: offset and max_entries.
    let (page, more) = a
        .list_dir_page(&ListDir {
            path: b"/",
            depth: 2,
            offset: 1,
            max_entries: 2,
        })
        .unwrap();
    assert_eq!(
        (names(&page), more),
        (vec!["a/file".to_owned(), "deep".to_owned()], true)
    );
    let (page, more) = a
        .list_dir_page(&ListDir {
            path: b"/",
            depth: 2,
            offset: 99,
            max_entries: 0,
        })
        .unwrap();
    assert!(page.is_empty() && !more);
    // depth 0 is refused before sending.
    let err = a.list_dir("/", 0, 100).unwrap_err();
    assert!(matches!(err, ClientError::Encode { .. }), "{err}");

    // Rename: a file, a directory with its children, replacing a file; refusals.
    a.rename("/a/file", "/a/renamed").unwrap();
    agent_error(a.stat("/a/file"), ErrorCode::NOT_FOUND);
    assert_eq!(a.get_file("/a/renamed", 1024).unwrap().data, b"data");
    a.rename("/deep", "/x/moved").unwrap();
    assert_eq!(
        a.get_file("/x/moved/er/file.txt", 1024).unwrap().data,
        b"nested"
    );
    a.put_file("/other", 0o644, b"other").unwrap();
    a.rename("/other", "/a/renamed").unwrap();
    assert_eq!(a.get_file("/a/renamed", 1024).unwrap().data, b"other");
    agent_error(a.rename("/a/renamed", "/x"), ErrorCode::IS_A_DIRECTORY);
    agent_error(a.rename("/x", "/a/renamed"), ErrorCode::NOT_A_DIRECTORY);
    agent_error(
        a.rename("/x", "/x/moved/inside"),
        ErrorCode::INVALID_ARGUMENT,
    );
    agent_error(a.rename("/x", "/a"), ErrorCode::NOT_EMPTY);
    agent_error(a.rename("/nothing", "/b"), ErrorCode::NOT_FOUND);
    agent_error(a.rename("/a/renamed", "/no/such/dir"), ErrorCode::NOT_FOUND);
    agent_error(a.rename("/", "/b"), ErrorCode::INVALID_ARGUMENT);

    // Remove: a file, an empty directory, a full one only recursively; refusals.
    a.remove("/a/renamed", false).unwrap();
    a.remove("/x/y/z", false).unwrap();
    agent_error(a.remove("/x", false), ErrorCode::NOT_EMPTY);
    a.remove("/x", true).unwrap();
    agent_error(a.remove("/x", true), ErrorCode::NOT_FOUND);
    agent_error(a.remove("/", true), ErrorCode::INVALID_ARGUMENT);
    assert_eq!(names(&a.list_dir("/", 3, 100).unwrap()), ["a"]);
    assert!(a.poisoned().is_none());
}

#[test]
fn listings_come_in_pages_that_fit_the_hosts_frame() {
    let fx = Fixture::new(Fault::None);
    let mut a = AgentClient::connect_with(
        fx.agent.path(),
        fx.agent.port(),
        &ConnectOptions {
            max_frame_len: 4096,
            ..ConnectOptions::default()
        },
    )
    .unwrap();
    a.make_dir("/many", 0o755, false).unwrap();
    let mut expected = Vec::new();
    for i in 0..300 {
        let name = format!("file-with-a-long-name-{i:04}");
        std::fs::write(fx.agent.root().join("many").join(&name), b"x").unwrap();
        expected.push(name);
    }
    let first = fx.agent.requests();
    let entries = a.list_dir("/many", 1, 1000).unwrap();
    assert_eq!(names(&entries), expected);
    // Each entry takes ~60 bytes, so a 4 KiB frame holds well under 300 of them.
    assert!(fx.agent.requests() - first > 3);
    let err = a.list_dir("/many", 1, 299).unwrap_err();
    assert!(
        matches!(err, ClientError::TooManyEntries { max: 299 }),
        "{err}"
    );
    assert_eq!(a.list_dir("/many", 1, 300).unwrap().len(), 300);
}

#[test]
fn exec_in_runs_in_a_directory_as_a_user_and_unwraps_sh_c() {
    let fx = Fixture::with_config(TestAgentConfig::default());
    let mut a = fx.connect();
    a.put_file("/work/notes.txt", 0o644, b"hello notes")
        .unwrap();

    let out = a
        .exec_in(&ExecIn::new(&["pwd"]).with_cwd(b"/work"))
        .unwrap();
    assert_eq!(out.stdout, b"/work\n");
    let out = a.exec_in(&ExecIn::new(&["pwd"])).unwrap();
    assert_eq!(out.stdout, b"/\n");
    let out = a
        .exec_in(&Exec::new(&["cat", "notes.txt"]).with_cwd(b"/work"))
        .unwrap();
    assert_eq!(out.stdout, b"hello notes");
    let out = a
        .exec_in(&Exec::new(&["cat", "../work/./notes.txt"]).with_cwd(b"/work"))
        .unwrap();
    assert_eq!(out.stdout, b"hello notes");
    let out = a.exec_in(&ExecIn::new(&["cat", "missing"])).unwrap();
    assert_eq!(out.exit_code, 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
    agent_error(
        a.exec_in(&ExecIn::new(&["pwd"]).with_cwd(b"/nope")),
        ErrorCode::NOT_FOUND,
    );
    agent_error(
        a.exec_in(&ExecIn::new(&["pwd"]).with_cwd(b"/work/notes.txt")),
        ErrorCode::NOT_A_DIRECTORY,
    );

    let out = a
        .exec_in(&ExecIn::new(&["whoami"]).with_user("user"))
        .unwrap();
    assert_eq!(out.stdout, b"user\n");
    assert_eq!(
        a.exec_in(&ExecIn::new(&["whoami"])).unwrap().stdout,
        b"root\n"
    );
    agent_error(
        a.exec_in(&ExecIn::new(&["whoami"]).with_user("mallory")),
        ErrorCode::INVALID_ARGUMENT,
    );

    // The E2B SDK's wrapping, through Exec and ExecIn.
    let out = a
        .exec(&Exec::new(&["/bin/bash", "-l", "-c", "echo hi"]))
        .unwrap();
    assert_eq!(out.stdout, b"hi\n");
    let out = a
        .exec_in(&ExecIn::new(&["sh", "-c", "cat notes.txt"]).with_cwd(b"/work"))
        .unwrap();
    assert_eq!(out.stdout, b"hello notes");
    let msg = agent_error(
        a.exec(&Exec::new(&["sh", "-c", "echo a; echo b"])),
        ErrorCode::INVALID_ARGUMENT,
    );
    assert!(msg.contains("one simple command"), "{msg}");
    agent_error(
        a.exec(&Exec::new(&["bash", "script.sh"])),
        ErrorCode::INVALID_ARGUMENT,
    );
    assert!(a.poisoned().is_none());
    assert_eq!(Kind::ExecIn.reply(), Some(Kind::ExecInResult));
}
