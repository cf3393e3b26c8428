//! The probe guest's file system and Exec built-ins end to end on real KVM: a probe booted by
//! the provider (ember-vmm), driven through the host's `AgentClient` over its vsock socket —
//! PutFile/GetFile (chunked, overwritten, written at offsets, refused), `exit`, `stderr` and
//! `cat`, and a file that survives into a VM restored from a snapshot; then directories (MakeDir,
//! Stat, ListDir, Rename, Remove), ExecIn with a working directory and a user, `sh -c` unwrapped,
//! and directories that survive a snapshot too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use std::time::Duration;

use common::*;
use ember_agent_proto::{
    AgentClient, ClientError, ErrorCode, Exec, ExecIn, FileKind, GetFile, ListedEntry, PutFile,
    Reply, Request, Reseed,
};
use ember_core::{SnapshotId, SnapshotRequest, VmProvider, VmQuery, VmSpec, VsockSpec};

const PORT: u32 = ember_probe_image::AGENT_PORT;

/// The probe's limits (guest/ember-probe/src/layout.rs).
const FILE_COUNT: usize = 8;
const NODE_COUNT: usize = 32;
const FILE_MAX_LEN: usize = 64 << 10;
const FILE_PATH_MAX: usize = 255;
/// The probe's Exec output scratch (`SCRATCH_LEN`).
const SCRATCH_LEN: usize = 8192;

/// `n` pseudo-random bytes (xorshift64*, fixed seed).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Asserts `r` failed with an agent Error of `code`; returns its message.
fn agent_error<T: std::fmt::Debug>(r: Result<T, ClientError>, code: ErrorCode) -> String {
    match r {
        Err(ClientError::Agent {
            code: got, message, ..
        }) if got == code => message,
        other => panic!("expected an agent error {code:?}, got {other:?}"),
    }
}

/// One PutFile request (one chunk at `offset`).
fn put_at(a: &mut AgentClient, path: &str, offset: u64, data: &[u8]) -> Result<(), ClientError> {
    let request = Request::PutFile(PutFile {
        path: path.as_bytes(),
        mode: 0o644,
        offset,
        data,
    });
    a.call(&request, |reply| match reply {
        Reply::PutFile => Ok(()),
        other => Err(format!("unexpected {other:?}")),
    })
}

/// One GetFile request: (mode, size, data).
fn get_at(
    a: &mut AgentClient,
    path: &str,
    offset: u64,
    max_len: u32,
) -> Result<(u32, u64, Vec<u8>), ClientError> {
    let request = Request::GetFile(GetFile {
        path: path.as_bytes(),
        offset,
        max_len,
    });
    a.call(&request, |reply| match reply {
        Reply::File(f) => Ok((f.mode, f.size, f.data.to_vec())),
        other => Err(format!("unexpected {other:?}")),
    })
}

fn exec(a: &mut AgentClient, argv: &[&str]) -> Result<ember_agent_proto::ExecOutput, ClientError> {
    a.exec(&Exec::new(argv))
}

#[test]
fn probe_files_and_exec_builtins_end_to_end() {
    let dir = short_tempdir();
    let p = provider(dir.path(), flavor(Kind::EmberVmm).unwrap(), 1);
    let src = vm("files-src");
    let mut spec = probe_spec("ember.report=0");
    spec.vsock = Some(VsockSpec {
        guest_cid: 3,
        uds_path: "/unused".into(),
    });
    p.create_with_spec(&src, &spec).unwrap();
    p.start(&src).unwrap();
    let path = p.vsock_path(&src).unwrap();
    let mut a = wait_for(DEFAULT_TIMEOUT, "the probe's agent", || {
        AgentClient::connect(&path, PORT, Duration::from_secs(2)).ok()
    });

    // A 40 KiB file goes in several PutFile chunks and comes back in several GetFile replies.
    let blob = noise(40 * 1024, 0x5eed);
    a.put_file("/data/blob", 0o600, &blob).unwrap();
    let back = a.get_file("/data/blob", 1 << 20).unwrap();
    assert_eq!(back.mode, 0o600);
    assert!(back.data == blob, "the 40 KiB file came back different");

    // Overwriting at offset 0 truncates; the mode is the one given at creation.
    a.put_file("/data/blob", 0o644, b"short").unwrap();
    let back = a.get_file("/data/blob", 1 << 20).unwrap();
    assert_eq!(back.data, b"short");
    assert_eq!(back.mode, 0o600);
    a.put_file("/data/blob", 0o600, &blob).unwrap();
    assert!(a.get_file("/data/blob", 1 << 20).unwrap().data == blob);

    // Writes at an offset overwrite in place (the tail stays) or extend at the end.
    a.put_file("/hello", 0o644, b"hello world").unwrap();
    put_at(&mut a, "/hello", 6, b"WORLD").unwrap();
    put_at(&mut a, "/hello", 11, b"!").unwrap();
    put_at(&mut a, "/hello", 2, b"LL").unwrap();
    assert_eq!(a.get_file("/hello", 1024).unwrap().data, b"heLLo WORLD!");
    let msg = agent_error(
        put_at(&mut a, "/hello", 13, b"x"),
        ErrorCode::INVALID_ARGUMENT,
    );
    eprintln!("offset past the end: {msg}");
    agent_error(put_at(&mut a, "/nothing", 1, b"x"), ErrorCode::NOT_FOUND);
    assert_eq!(a.get_file("/hello", 1024).unwrap().data, b"heLLo WORLD!");

    // GetFile at an offset, with and without max_len, and past the end.
    assert_eq!(
        get_at(&mut a, "/hello", 6, 3).unwrap(),
        (0o644, 12, b"WOR".to_vec())
    );
    assert_eq!(
        get_at(&mut a, "/hello", 6, 0).unwrap(),
        (0o644, 12, b"WORLD!".to_vec())
    );
    assert_eq!(
        get_at(&mut a, "/hello", 99, 0).unwrap(),
        (0o644, 12, Vec::new())
    );
    // max_len 0 on a large file: as much as one reply frame holds, and no more.
    let (_, size, chunk) = get_at(&mut a, "/data/blob", 100, 0).unwrap();
    assert_eq!(size, blob.len() as u64);
    assert!(chunk.len() > 8192 && chunk.len() < blob.len() - 100);
    assert!(chunk[..] == blob[100..100 + chunk.len()]);

    // Missing files.
    let msg = agent_error(a.get_file("/missing", 1024), ErrorCode::NOT_FOUND);
    assert!(msg.contains("no such file"), "{msg}");
    // Paths are normalised; a trailing slash asks for a directory.
    assert_eq!(
        a.get_file("//./data/../hello", 1024).unwrap().data,
        b"heLLo WORLD!"
    );
    agent_error(a.get_file("/hello/", 1024), ErrorCode::NOT_A_DIRECTORY);

    // Limits: path length, file size (a refused chunk changes nothing), table size.
    let long = format!("/{}", "p".repeat(FILE_PATH_MAX));
    agent_error(a.put_file(&long, 0o644, b"x"), ErrorCode::TOO_LARGE);
    let at_limit = format!("/{}", "p".repeat(FILE_PATH_MAX - 1));
    a.put_file(&at_limit, 0o644, b"long path").unwrap();
    assert_eq!(a.get_file(&at_limit, 1024).unwrap().data, b"long path");
    let big = noise(FILE_MAX_LEN + 1, 7);
    agent_error(a.put_file("/big", 0o644, &big), ErrorCode::TOO_LARGE);
    // The chunks before the one that would pass the limit were written.
    let kept = a.get_file("/big", 1 << 20).unwrap();
    assert!(!kept.data.is_empty() && kept.data.len() <= FILE_MAX_LEN);
    assert!(kept.data[..] == big[..kept.data.len()]);
    // Exactly the limit fits; one byte more, at any offset, does not and changes nothing.
    a.put_file("/big", 0o644, &big[..FILE_MAX_LEN]).unwrap();
    for (offset, data) in [(FILE_MAX_LEN, &b"x"[..]), (FILE_MAX_LEN - 1, b"xy")] {
        agent_error(
            put_at(&mut a, "/big", offset as u64, data),
            ErrorCode::TOO_LARGE,
        );
    }
    assert!(a.get_file("/big", 1 << 20).unwrap().data[..] == big[..FILE_MAX_LEN]);
    // Four files so far (/data/blob, /hello, the long path, /big).
    for i in 4..FILE_COUNT {
        a.put_file(format!("/f{i}"), 0o644, format!("file {i}").as_bytes())
            .unwrap();
    }
    let msg = agent_error(
        a.put_file("/one-too-many", 0o644, b"x"),
        ErrorCode::TOO_LARGE,
    );
    assert!(msg.contains("table full"), "{msg}");
    agent_error(a.get_file("/one-too-many", 1024), ErrorCode::NOT_FOUND);
    // A full table still rewrites its files.
    a.put_file("/f7", 0o644, b"seven").unwrap();
    assert_eq!(a.get_file("/f7", 1024).unwrap().data, b"seven");

    // Exec built-ins.
    let out = exec(&mut a, &["exit", "3"]).unwrap();
    assert_eq!(out.exit_code, 3);
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    assert_eq!(exec(&mut a, &["exit", "0"]).unwrap().exit_code, 0);
    assert_eq!(exec(&mut a, &["exit", "255"]).unwrap().exit_code, 255);
    for bad in [
        &["exit"][..],
        &["exit", "256"],
        &["exit", "-1"],
        &["exit", "1", "2"],
    ] {
        agent_error(exec(&mut a, bad), ErrorCode::INVALID_ARGUMENT);
    }
    let out = exec(&mut a, &["stderr", "a", "b"]).unwrap();
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stderr, b"a b\n");
    assert!(out.stdout.is_empty());
    assert!(!out.stdout_truncated && !out.stderr_truncated);
    let out = exec(&mut a, &["cat", "/hello"]).unwrap();
    assert_eq!(out.stdout, b"heLLo WORLD!");
    assert!(out.stderr.is_empty() && !out.stdout_truncated);
    assert_eq!(out.exit_code, 0);
    let out = exec(&mut a, &["cat", "/data/blob"]).unwrap();
    assert!(out.stdout_truncated);
    assert_eq!(out.stdout.len(), SCRATCH_LEN);
    assert!(out.stdout[..] == blob[..SCRATCH_LEN]);
    let msg = agent_error(exec(&mut a, &["cat", "/missing"]), ErrorCode::NOT_FOUND);
    assert!(msg.contains("no such file"), "{msg}");
    agent_error(exec(&mut a, &["cat"]), ErrorCode::INVALID_ARGUMENT);
    // Errors kept the connection.
    a.ping().unwrap();
    drop(a);

    // The files are in the snapshot: a restored copy reads them.
    p.pause(&src).unwrap();
    let snap = p
        .snapshot(
            &src,
            &SnapshotRequest {
                snapshot_id: SnapshotId::new("files").unwrap(),
                stack: None,
            },
        )
        .unwrap();
    p.destroy(&src).unwrap();
    let copy = vm("files-copy");
    p.create_with_spec(&copy, &VmSpec::restore(snap.clone()))
        .unwrap();
    let path = p.vsock_path(&copy).unwrap();
    let mut a = wait_for(DEFAULT_TIMEOUT, "the restored probe's agent", || {
        AgentClient::connect(&path, PORT, Duration::from_secs(2)).ok()
    });
    let back = a.get_file("/data/blob", 1 << 20).unwrap();
    assert_eq!(back.mode, 0o600);
    assert!(back.data == blob, "the restored copy's file differs");
    assert_eq!(exec(&mut a, &["cat", "/f7"]).unwrap().stdout, b"seven");
    a.put_file("/hello", 0o644, b"changed in the copy").unwrap();
    assert_eq!(
        a.get_file("/hello", 1024).unwrap().data,
        b"changed in the copy"
    );
    drop(a);

    for v in p.list().unwrap() {
        p.destroy(&v.id).unwrap();
    }
    p.delete_snapshot(&snap.snapshot_id).unwrap();
    shutdown_and_check(&p);
}

fn names(entries: &[ListedEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8(e.name.clone()).unwrap())
        .collect()
}

/// Boots a probe and connects to its agent.
fn boot_probe(
    p: &ember_runtime::VmmProvider,
    id: &ember_core::VmId,
) -> (std::path::PathBuf, AgentClient) {
    let mut spec = probe_spec("ember.report=0");
    spec.vsock = Some(VsockSpec {
        guest_cid: 3,
        uds_path: "/unused".into(),
    });
    p.create_with_spec(id, &spec).unwrap();
    p.start(id).unwrap();
    let path = p.vsock_path(id).unwrap();
    let a = wait_for(DEFAULT_TIMEOUT, "the probe's agent", || {
        AgentClient::connect(&path, PORT, Duration::from_secs(2)).ok()
    });
    (path, a)
}

#[test]
fn probe_directories_exec_in_and_sh_end_to_end() {
    let dir = short_tempdir();
    let p = provider(dir.path(), flavor(Kind::EmberVmm).unwrap(), 1);
    let src = vm("dirs-src");
    let (_, mut a) = boot_probe(&p, &src);

    // Before any Reseed the probe has no clock: mtime 0. After one, mtimes follow it.
    let root = a.stat("/").unwrap();
    assert_eq!(
        (root.kind, root.mode, root.mtime_ns),
        (FileKind::Directory, 0o755, 0)
    );
    a.put_file("/early", 0o644, b"e").unwrap();
    assert_eq!(a.stat("/early").unwrap().mtime_ns, 0);
    a.remove("/early", false).unwrap();
    let wall = 1_700_000_000_000_000_000u64;
    a.reseed(&Reseed {
        generation: 1,
        wall_clock_ns: wall,
        entropy: &[7; 32],
    })
    .unwrap();

    // mkdir -p, then a file written into a nested path (PutFile creates missing parents).
    assert!(a.make_dir("/home/user/project", 0o750, true).unwrap());
    assert!(!a.make_dir("/home/user", 0o755, false).unwrap());
    agent_error(a.make_dir("/x/y", 0o755, false), ErrorCode::NOT_FOUND);
    a.put_file("/home/user/project/src/main.rs", 0o600, b"fn main() {}\n")
        .unwrap();
    a.put_file("/home/user/notes.txt", 0o644, b"notes").unwrap();
    agent_error(
        a.make_dir("/home/user/notes.txt", 0o755, false),
        ErrorCode::ALREADY_EXISTS,
    );
    agent_error(
        a.put_file("/home/user/notes.txt/x", 0o644, b"x"),
        ErrorCode::NOT_A_DIRECTORY,
    );
    agent_error(a.put_file("/home", 0o644, b"x"), ErrorCode::IS_A_DIRECTORY);
    agent_error(a.get_file("/home", 1024), ErrorCode::IS_A_DIRECTORY);

    // Stat: a file, a directory (created explicitly and as a parent), a missing path.
    let file = a.stat("/home/user/project/src/main.rs").unwrap();
    assert_eq!(
        (file.kind, file.mode, file.size),
        (FileKind::File, 0o600, 13)
    );
    assert_eq!((file.owner.as_str(), file.group.as_str()), ("root", "root"));
    assert!(file.mtime_ns >= wall && file.target.is_empty());
    let project = a.stat("/home/user/project").unwrap();
    assert_eq!((project.kind, project.mode), (FileKind::Directory, 0o750));
    let src_dir = a.stat("/home/user/project/src/").unwrap();
    assert_eq!((src_dir.kind, src_dir.mode), (FileKind::Directory, 0o755));
    agent_error(a.stat("/home/nobody"), ErrorCode::NOT_FOUND);
    agent_error(a.stat("/home/user/notes.txt/"), ErrorCode::NOT_A_DIRECTORY);

    // ListDir, depth 1 and 2, depth-first in name order, names relative to the directory.
    let one = a.list_dir("/home/user", 1, 100).unwrap();
    assert_eq!(names(&one), ["notes.txt", "project"]);
    assert_eq!(one[0].info.size, 5);
    assert!(one[1].info.is_dir());
    let two = a.list_dir("/home/user", 2, 100).unwrap();
    assert_eq!(names(&two), ["notes.txt", "project", "project/src"]);
    let all = a.list_dir("/", u32::MAX, 100).unwrap();
    assert_eq!(
        names(&all),
        [
            "home",
            "home/user",
            "home/user/notes.txt",
            "home/user/project",
            "home/user/project/src",
            "home/user/project/src/main.rs"
        ]
    );
    agent_error(
        a.list_dir("/home/user/notes.txt", 1, 100),
        ErrorCode::NOT_A_DIRECTORY,
    );
    agent_error(a.list_dir("/nowhere", 1, 100), ErrorCode::NOT_FOUND);
    let err = a.list_dir("/", 3, 2).unwrap_err();
    assert!(
        matches!(err, ClientError::TooManyEntries { max: 2 }),
        "{err}"
    );

    // ExecIn: a working directory, a relative `cat`, the user; refusals.
    let out = a
        .exec_in(&ExecIn::new(&["cat", "src/main.rs"]).with_cwd(b"/home/user/project"))
        .unwrap();
    assert_eq!(out.stdout, b"fn main() {}\n");
    let out = a
        .exec_in(&ExecIn::new(&["cat", "../notes.txt"]).with_cwd(b"/home/user/project"))
        .unwrap();
    assert_eq!(out.stdout, b"notes");
    let out = a
        .exec_in(&ExecIn::new(&["pwd"]).with_cwd(b"/home/user/project/"))
        .unwrap();
    assert_eq!(out.stdout, b"/home/user/project\n");
    let out = a
        .exec_in(&ExecIn::new(&["whoami"]).with_user("user"))
        .unwrap();
    assert_eq!(out.stdout, b"user\n");
    assert_eq!(a.exec(&Exec::new(&["pwd"])).unwrap().stdout, b"/\n");
    agent_error(
        a.exec_in(&ExecIn::new(&["pwd"]).with_cwd(b"/home/nobody")),
        ErrorCode::NOT_FOUND,
    );
    agent_error(
        a.exec_in(&ExecIn::new(&["pwd"]).with_cwd(b"/home/user/notes.txt")),
        ErrorCode::NOT_A_DIRECTORY,
    );
    agent_error(
        a.exec_in(&ExecIn::new(&["pwd"]).with_user("admin")),
        ErrorCode::INVALID_ARGUMENT,
    );
    agent_error(
        a.exec_in(&ExecIn::new(&["cat", "main.rs"]).with_cwd(b"/home/user/project")),
        ErrorCode::NOT_FOUND,
    );
    agent_error(
        a.exec_in(&ExecIn::new(&["cat", "src"]).with_cwd(b"/home/user/project")),
        ErrorCode::IS_A_DIRECTORY,
    );

    // `sh -c` around one built-in, as E2B's SDK sends every command.
    let out = a
        .exec(&Exec::new(&["/bin/bash", "-l", "-c", "echo hi"]))
        .unwrap();
    assert_eq!((out.exit_code, out.stdout.as_slice()), (0, &b"hi\n"[..]));
    a.put_file("/a", 0o644, b"contents of a").unwrap();
    let out = a.exec(&Exec::new(&["sh", "-c", "cat /a"])).unwrap();
    assert_eq!(out.stdout, b"contents of a");
    let out = a
        .exec_in(
            &ExecIn::new(&["bash", "-l", "-c", "cat notes.txt"])
                .with_cwd(b"/home/user")
                .with_user("user"),
        )
        .unwrap();
    assert_eq!(out.stdout, b"notes");
    let out = a.exec(&Exec::new(&["sh", "-c", "  "])).unwrap();
    assert_eq!((out.exit_code, out.stdout.len()), (0, 0));
    let msg = agent_error(
        a.exec(&Exec::new(&["sh", "-c", "echo a; echo b"])),
        ErrorCode::INVALID_ARGUMENT,
    );
    assert!(msg.contains("one simple command"), "{msg}");
    agent_error(
        a.exec(&Exec::new(&["bash", "script.sh"])),
        ErrorCode::INVALID_ARGUMENT,
    );
    agent_error(
        a.exec(&Exec::new(&["sh", "-c", "ls /"])),
        ErrorCode::NOT_FOUND,
    );

    // Rename: a file, then a directory with everything below it; refusals.
    a.rename("/home/user/notes.txt", "/home/user/project/NOTES")
        .unwrap();
    agent_error(a.stat("/home/user/notes.txt"), ErrorCode::NOT_FOUND);
    assert_eq!(
        a.get_file("/home/user/project/NOTES", 1024).unwrap().data,
        b"notes"
    );
    a.rename("/home/user/project", "/work").unwrap();
    assert_eq!(
        names(&a.list_dir("/work", 2, 100).unwrap()),
        ["NOTES", "src", "src/main.rs"]
    );
    assert_eq!(
        a.get_file("/work/src/main.rs", 1024).unwrap().data,
        b"fn main() {}\n"
    );
    agent_error(a.stat("/home/user/project"), ErrorCode::NOT_FOUND);
    agent_error(
        a.rename("/work", "/work/src/inner"),
        ErrorCode::INVALID_ARGUMENT,
    );
    agent_error(a.rename("/a", "/work"), ErrorCode::IS_A_DIRECTORY);
    agent_error(a.rename("/work", "/a"), ErrorCode::NOT_A_DIRECTORY);
    agent_error(a.rename("/home", "/work"), ErrorCode::NOT_EMPTY);
    agent_error(a.rename("/a", "/no/such/dir/a"), ErrorCode::NOT_FOUND);
    // A file replaces a file.
    a.put_file("/b", 0o600, b"b").unwrap();
    a.rename("/b", "/a").unwrap();
    assert_eq!(
        a.get_file("/a", 1024).unwrap(),
        ember_agent_proto::FileContents {
            mode: 0o600,
            data: b"b".to_vec()
        }
    );

    // Remove: not-empty refused, then recursive; a file; the root refused.
    agent_error(a.remove("/work", false), ErrorCode::NOT_EMPTY);
    a.remove("/work/src/main.rs", false).unwrap();
    a.remove("/work/src", false).unwrap();
    a.remove("/work", true).unwrap();
    agent_error(a.stat("/work/NOTES"), ErrorCode::NOT_FOUND);
    agent_error(a.remove("/work", true), ErrorCode::NOT_FOUND);
    agent_error(a.remove("/", true), ErrorCode::INVALID_ARGUMENT);
    a.remove("/a", false).unwrap();
    assert_eq!(
        names(&a.list_dir("/", 5, 100).unwrap()),
        ["home", "home/user"]
    );

    // The table holds 32 entries (files and directories); removing frees them.
    for i in 2..NODE_COUNT {
        assert!(a.make_dir(format!("/d{i:02}"), 0o755, false).unwrap());
    }
    let msg = agent_error(a.make_dir("/one-more", 0o755, false), ErrorCode::TOO_LARGE);
    assert!(msg.contains("table full"), "{msg}");
    agent_error(a.put_file("/f", 0o644, b"x"), ErrorCode::TOO_LARGE);
    for i in 2..NODE_COUNT {
        a.remove(format!("/d{i:02}"), false).unwrap();
    }
    // A rename whose new paths would pass 255 bytes changes nothing.
    a.put_file("/home/user/f", 0o644, b"x").unwrap();
    let long = format!("/{}", "l".repeat(250));
    agent_error(a.rename("/home", &long), ErrorCode::TOO_LARGE);
    assert!(a.stat("/home/user/f").unwrap().is_file());
    assert!(a.poisoned().is_none());
    drop(a);

    // Directories are in the snapshot: a restored copy lists them.
    p.pause(&src).unwrap();
    let snap = p
        .snapshot(
            &src,
            &SnapshotRequest {
                snapshot_id: SnapshotId::new("dirs").unwrap(),
                stack: None,
            },
        )
        .unwrap();
    p.destroy(&src).unwrap();
    let copy = vm("dirs-copy");
    p.create_with_spec(&copy, &VmSpec::restore(snap.clone()))
        .unwrap();
    let path = p.vsock_path(&copy).unwrap();
    let mut a = wait_for(DEFAULT_TIMEOUT, "the restored probe's agent", || {
        AgentClient::connect(&path, PORT, Duration::from_secs(2)).ok()
    });
    assert_eq!(
        names(&a.list_dir("/", 5, 100).unwrap()),
        ["home", "home/user", "home/user/f"]
    );
    assert!(a.stat("/home/user").unwrap().is_dir());
    let out = a
        .exec_in(&ExecIn::new(&["sh", "-c", "cat f"]).with_cwd(b"/home/user"))
        .unwrap();
    assert_eq!(out.stdout, b"x");
    a.remove("/home", true).unwrap();
    assert!(a.list_dir("/", 5, 100).unwrap().is_empty());
    drop(a);

    for v in p.list().unwrap() {
        p.destroy(&v.id).unwrap();
    }
    p.delete_snapshot(&snap.snapshot_id).unwrap();
    shutdown_and_check(&p);
}
