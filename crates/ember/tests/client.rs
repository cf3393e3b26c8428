//! The `ember` command as a client of a real `emberd` process on real KVM: every client command
//! (template, pool, run, exec, cp, ls, inspect, pause, resume, timeout, rm, info) run as a user
//! runs it — the binary with `--host unix://...` — checking its stdout, stderr and exit code;
//! and the errors a user meets (an unknown sandbox, no daemon, a bad `cp`). The daemon is killed
//! at the end, and no VMM process naming its runtime directory may be left. A second daemon with
//! sandbox networks (`--sandbox-network`) serves the network commands (`template build
//! --network`, `run --egress/--allow`, `network`, `expose`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use ember_test_support::NetCleanup;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one `ember` command may take (a template build boots a VM).
const COMMAND_LIMIT: Duration = Duration::from_secs(180);

/// A real `emberd` in its own directories; killed with every VMM it left when dropped.
struct Daemon {
    /// State, socket and log.
    dir: tempfile::TempDir,
    /// VM slots (tmpfs, short for socket paths).
    runtime: tempfile::TempDir,
    child: Option<Child>,
}

impl Daemon {
    fn started() -> Daemon {
        Daemon::started_with(&[])
    }

    /// Started with `extra` arguments too.
    fn started_with(extra: &[String]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("emberd-c")
            .tempdir()
            .unwrap();
        let runtime = tempfile::Builder::new()
            .prefix("ec")
            .tempdir_in("/dev/shm")
            .unwrap();
        let mut d = Daemon {
            dir,
            runtime,
            child: None,
        };
        let log = std::fs::File::create(d.log()).unwrap();
        let child = Command::new(ember_test_support::package_bin("emberd", "emberd"))
            .arg("--socket")
            .arg(d.socket())
            .arg("--state-dir")
            .arg(d.dir.path().join("state"))
            .arg("--runtime-dir")
            .arg(d.runtime.path())
            .arg("--vmm")
            .arg(ember_test_support::vmm_bin())
            .arg("--jailer")
            .arg(ember_test_support::package_bin(
                "ember-jailer",
                "ember-jailer",
            ))
            .args(["--spares", "2"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        d.child = Some(child);
        let t0 = Instant::now();
        while !healthz(&d.socket()) {
            if let Some(status) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("emberd exited ({status}) at start:\n{}", d.log_text());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "emberd did not serve within 60 s:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        d
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("ember.sock")
    }

    fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("emberd.log")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// `ember --host <this daemon> ARGS`.
    fn ember(&self, args: &[&str]) -> Out {
        let mut all = vec!["--host".to_string(), self.host()];
        all.extend(args.iter().map(|s| s.to_string()));
        ember(&all, None, &[])
    }

    /// The same, with bytes on the command's standard input.
    fn ember_stdin(&self, args: &[&str], stdin: &[u8]) -> Out {
        let mut all = vec!["--host".to_string(), self.host()];
        all.extend(args.iter().map(|s| s.to_string()));
        ember(&all, Some(stdin), &[])
    }

    /// VMM processes running VMs under its runtime directory.
    fn vmm_pids(&self) -> Vec<u32> {
        processes_naming(&self.runtime.path().to_string_lossy())
    }

    /// SIGTERMs it and waits for it to exit; returns whether it exited successfully.
    fn term(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        signal(c.id(), nix::sys::signal::Signal::SIGTERM);
        let t0 = Instant::now();
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s.success();
            }
            if t0.elapsed() > Duration::from_secs(30) {
                let _ = c.kill();
                let _ = c.wait();
                panic!("emberd did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Daemon {
    /// Kills the daemon and every VMM under its runtime directory, so a failed test leaks
    /// nothing (and shows the daemon's log).
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let pids = self.vmm_pids();
        for pid in &pids {
            signal(*pid, nix::sys::signal::Signal::SIGKILL);
        }
        // Jailed VMMs leave a shared mount and cgroups under the runtime directory's name.
        ember_test_support::wait_gone(&pids, Duration::from_secs(5));
        let _ = ember_runtime::jail::remove_leftovers(
            self.runtime.path(),
            std::path::Path::new("/sys/fs/cgroup"),
        );
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- emberd log (last lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Whether a daemon answers `/healthz` on `sock`.
fn healthz(sock: &Path) -> bool {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(sock) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.1 200")
}

/// Live (non-zombie) processes whose command line contains `needle`.
fn processes_naming(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(true);
            !zombie && String::from_utf8_lossy(&cmd).contains(needle)
        })
        .collect()
}

/// What one `ember` command did.
struct Out {
    args: String,
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

impl Out {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn describe(&self) -> String {
        format!(
            "ember {}: exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args,
            self.code,
            self.text(),
            self.stderr
        )
    }

    /// Asserts it succeeded.
    #[track_caller]
    fn ok(self) -> Out {
        assert_eq!(self.code, Some(0), "{}", self.describe());
        self
    }

    /// Asserts it failed with an exit code (not a crash) and said why on stderr, naming
    /// every one of `words`; nothing on stdout.
    #[track_caller]
    fn fails(self, words: &[&str]) -> Out {
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "expected a failure: {}",
            self.describe()
        );
        for w in words {
            assert!(
                self.stderr.contains(w),
                "stderr does not say {w:?}: {}",
                self.describe()
            );
        }
        assert!(self.stdout.is_empty(), "stdout: {}", self.describe());
        self
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.describe()))
    }

    /// The table row whose first column is `key` (split on whitespace).
    fn row(&self, key: &str) -> Option<Vec<String>> {
        self.text()
            .lines()
            .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
            .find(|cols| cols.first().is_some_and(|c| c == key))
    }

    /// The first column of every table row but the header.
    fn first_column(&self) -> Vec<String> {
        self.text()
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect()
    }
}

/// Runs the `ember` binary with `args` (and `stdin`, and extra environment), killing it if it
/// takes longer than [`COMMAND_LIMIT`].
fn ember(args: &[String], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ember"));
    cmd.env_remove("EMBER_HOST")
        .env_remove("EMBER_TOKEN_FILE")
        .envs(env.iter().copied())
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(bytes) = stdin {
        let mut w = child.stdin.take().unwrap();
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&bytes);
        });
    }
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > COMMAND_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ember {args:?} did not finish within {COMMAND_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Out {
        args: args.join(" "),
        code: status.code(),
        stdout: out_reader.join().unwrap(),
        stderr: String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned(),
    }
}

fn is_sandbox_id(s: &str) -> bool {
    s.len() == 19 && s.starts_with("sb-") && s[3..].chars().all(|c| c.is_ascii_hexdigit())
}

/// Bytes that are not UTF-8 and not one repeated pattern.
fn test_bytes(n: usize) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

#[test]
fn every_client_command_against_a_real_emberd() {
    let mut d = Daemon::started();
    let work = tempfile::tempdir().unwrap();

    // info: the daemon, KVM usable, its directories.
    let info = d.ember(&["info"]).ok();
    assert!(info.text().starts_with("emberd "), "{}", info.describe());
    assert!(info.text().contains("KVM usable"), "{}", info.describe());
    let info = d.ember(&["--json", "info"]).ok().json();
    assert_eq!(info["kvm"], true, "{info}");
    assert_eq!(
        info["runtime_dir"],
        d.runtime.path().to_string_lossy().as_ref(),
        "{info}"
    );
    assert_eq!(info["capacity"]["sandboxes_running"], 0, "{info}");

    // Templates: build (a table line and JSON), a second build of a name refused, ls.
    let empty = d.ember(&["template", "ls"]).ok();
    assert!(empty.text().starts_with("NAME"), "{}", empty.describe());
    assert!(empty.first_column().is_empty(), "{}", empty.describe());
    let built = d.ember(&["template", "build", "probe"]).ok();
    assert!(
        built.text().starts_with("template probe ready (snapshot "),
        "{}",
        built.describe()
    );
    d.ember(&["template", "build", "probe"])
        .fails(&["probe", "already exists"]);
    // An image emberd would build: a bad package name is named before anything starts.
    d.ember(&["template", "build", "img", "--packages", "bash,no such"])
        .fails(&["spec.guest.source.packages", "no such"]);
    d.ember(&[
        "template",
        "build",
        "img",
        "--build-image",
        "--kernel",
        "/k",
    ])
    .fails(&["--kernel"]);
    let other = d
        .ember(&["--json", "template", "build", "other", "--mem", "256"])
        .ok();
    let other = other.json();
    assert_eq!(other["name"], "other", "{other}");
    assert_eq!(other["spec"]["mem_size_mib"], 256, "{other}");
    assert_eq!(other["state"], "ready", "{other}");
    assert!(other["snapshot"].is_string(), "{other}");
    let ls = d.ember(&["template", "ls"]).ok();
    for name in ["probe", "other"] {
        let row = ls
            .row(name)
            .unwrap_or_else(|| panic!("no {name}: {}", ls.describe()));
        assert_eq!(row[1], "ready", "{}", ls.describe());
    }
    assert!(
        ls.text()
            .lines()
            .any(|l| l.starts_with("other ") && l.contains("1 vCPU / 256 MiB")),
        "{}",
        ls.describe()
    );
    let ls = d.ember(&["--json", "template", "ls"]).ok().json();
    let mut names: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["other", "probe"], "{ls}");

    // A warm pool of 2: `pool set` waits until it is full.
    let set = d.ember(&["pool", "set", "probe", "--min", "2"]).ok();
    let row = set
        .row("probe")
        .unwrap_or_else(|| panic!("{}", set.describe()));
    assert_eq!(row[1..3], ["2/2", "2"], "{}", set.describe());
    let pools = d.ember(&["pool", "ls"]).ok();
    let row = pools
        .row("probe")
        .unwrap_or_else(|| panic!("{}", pools.describe()));
    assert_eq!(row[2], "2", "READY: {}", pools.describe());
    assert_eq!(row.last().unwrap(), "ok", "{}", pools.describe());
    let pools = d.ember(&["--json", "pool", "ls"]).ok().json();
    assert_eq!(pools[0]["spec"]["template"], "probe", "{pools}");
    assert_eq!(pools[0]["depth"], 2, "{pools}");
    d.ember(&["template", "rm", "probe"])
        .fails(&["probe", "in use"]);
    // A pool of paused VMs, not waited for.
    let paused_pool = d
        .ember(&[
            "pool",
            "set",
            "other",
            "--min",
            "1",
            "--max",
            "2",
            "--paused",
            "--no-wait",
        ])
        .ok();
    let row = paused_pool
        .row("other")
        .unwrap_or_else(|| panic!("{}", paused_pool.describe()));
    assert_eq!(row[1], "1/2", "{}", paused_pool.describe());
    assert_eq!(row[4], "paused", "{}", paused_pool.describe());
    let pools = d.ember(&["--json", "pool", "ls"]).ok().json();
    assert_eq!(pools.as_array().unwrap().len(), 2, "{pools}");
    let prm = d.ember(&["pool", "rm", "other"]).ok();
    assert_eq!(prm.text(), "pool of other deleted\n", "{}", prm.describe());

    // run: the id alone on stdout; --json the whole sandbox.
    let a = d
        .ember(&[
            "run",
            "probe",
            "--label",
            "team=red",
            "--label",
            "n=1",
            "--env",
            "GREETING=hi",
            "--timeout",
            "300s",
        ])
        .ok();
    let a_text = a.text();
    let a = a_text.trim_end();
    assert!(is_sandbox_id(a), "{a_text:?}");
    assert_eq!(a_text, format!("{a}\n"));
    let b_json = d
        .ember(&["--json", "run", "probe", "--label", "team=blue"])
        .ok()
        .json();
    let b = b_json["id"].as_str().unwrap().to_string();
    let b = b.as_str();
    assert!(is_sandbox_id(b), "{b_json}");
    assert_ne!(a, b);
    assert_eq!(b_json["template"], "probe", "{b_json}");
    assert_eq!(b_json["state"], "running", "{b_json}");
    assert_eq!(b_json["labels"]["team"], "blue", "{b_json}");
    d.ember(&["run", "probe", "--label", "nolabel"])
        .fails(&["--label", "nolabel", "KEY=VALUE"]);
    d.ember(&["run", "nosuch"]).fails(&["nosuch"]);

    // exec: output streamed as is, the command's exit code.
    let hi = d.ember(&["exec", a, "--", "echo", "hi"]).ok();
    assert_eq!(hi.text(), "hi\n", "{}", hi.describe());
    assert_eq!(hi.stderr, "", "{}", hi.describe());
    let three = d.ember(&["exec", a, "--", "exit", "3"]);
    assert_eq!(three.code, Some(3), "{}", three.describe());
    assert!(three.stdout.is_empty(), "{}", three.describe());
    let oops = d.ember(&["exec", a, "--", "stderr", "oops"]).ok();
    assert!(oops.stdout.is_empty(), "{}", oops.describe());
    assert!(oops.stderr.contains("oops"), "{}", oops.describe());
    d.ember(&["exec", a, "--", "no-such-program", "x"])
        .fails(&["no such command"]);
    let b_hi = d.ember(&["exec", b, "--", "echo", "from", "b"]).ok();
    assert_eq!(b_hi.text(), "from b\n", "{}", b_hi.describe());
    let env = d
        .ember(&["exec", a, "--env", "X=1", "--", "echo", "with", "env"])
        .ok();
    assert_eq!(env.text(), "with env\n", "{}", env.describe());
    d.ember(&["exec", a, "--env", "X", "--", "echo"])
        .fails(&["--env", "KEY=VALUE"]);
    // --stdin from a file and from this process's stdin (the probe's built-ins ignore it).
    let input = work.path().join("input.txt");
    std::fs::write(&input, "some input\n").unwrap();
    let fed = d
        .ember(&[
            "exec",
            a,
            "--stdin",
            input.to_str().unwrap(),
            "--",
            "echo",
            "fed",
        ])
        .ok();
    assert_eq!(fed.text(), "fed\n", "{}", fed.describe());
    let piped = d
        .ember_stdin(
            &["exec", a, "--stdin", "-", "--", "echo", "piped"],
            b"bytes\n",
        )
        .ok();
    assert_eq!(piped.text(), "piped\n", "{}", piped.describe());
    let missing_input = work.path().join("no-such-input");
    d.ember(&[
        "exec",
        a,
        "--stdin",
        missing_input.to_str().unwrap(),
        "--",
        "echo",
    ])
    .fails(&["no-such-input"]);
    // --json: the events, ending with the exit.
    let events = d
        .ember(&["--json", "exec", a, "--", "echo", "hi"])
        .ok()
        .json();
    let events = events.as_array().unwrap();
    assert_eq!(events[0]["type"], "stdout", "{events:?}");
    assert_eq!(events[0]["data"], "hi\n", "{events:?}");
    assert_eq!(events.last().unwrap()["type"], "exit", "{events:?}");
    assert_eq!(events.last().unwrap()["exit_code"], 0, "{events:?}");

    // cp: a local file in and out (bytes that are not UTF-8), to stdout, from stdin.
    let data = test_bytes(10_000);
    let local = work.path().join("data.bin");
    std::fs::write(&local, &data).unwrap();
    let into = format!("{a}:/data.bin");
    let put = d.ember(&["cp", local.to_str().unwrap(), &into]).ok();
    assert!(put.stdout.is_empty(), "{}", put.describe());
    assert!(
        put.stderr
            .contains(&format!("10000 bytes -> {a}:/data.bin")),
        "{}",
        put.describe()
    );
    let back = work.path().join("back.bin");
    d.ember(&["cp", &into, back.to_str().unwrap()]).ok();
    assert!(std::fs::read(&back).unwrap() == data, "cp out differs");
    let to_stdout = d.ember(&["cp", &into, "-"]).ok();
    assert!(to_stdout.stdout == data, "cp to - differs");
    d.ember_stdin(&["cp", "-", &format!("{a}:/piped.txt")], b"from stdin\n")
        .ok();
    let cat = d.ember(&["exec", a, "--", "cat", "/piped.txt"]).ok();
    assert_eq!(cat.text(), "from stdin\n", "{}", cat.describe());
    // The probe keeps files of at most 64 KiB: a larger one is refused, saying so.
    let big = work.path().join("big.bin");
    std::fs::write(&big, test_bytes(70_000)).unwrap();
    d.ember(&["cp", big.to_str().unwrap(), &format!("{a}:/big.bin")])
        .fails(&["too large"]);
    let nowhere = work.path().join("nowhere.bin");
    d.ember(&[
        "cp",
        &format!("{a}:/no-such-file"),
        nowhere.to_str().unwrap(),
    ])
    .fails(&["no such file"]);
    assert!(!nowhere.exists(), "a failed cp made the local file");

    // ls with filters.
    let ls = d.ember(&["ls"]).ok();
    assert!(ls.text().starts_with("ID"), "{}", ls.describe());
    let mut ids = ls.first_column();
    ids.sort();
    let mut both = vec![a.to_string(), b.to_string()];
    both.sort();
    assert_eq!(ids, both, "{}", ls.describe());
    let row = ls.row(a).unwrap();
    assert_eq!(row[1..3], ["probe", "running"], "{}", ls.describe());
    assert!(
        row.last().unwrap().contains("team=red"),
        "{}",
        ls.describe()
    );
    let red = d.ember(&["ls", "--label", "team=red"]).ok();
    assert_eq!(red.first_column(), [a], "{}", red.describe());
    let blue = d
        .ember(&["--json", "ls", "--label", "team=blue"])
        .ok()
        .json();
    assert_eq!(blue.as_array().unwrap().len(), 1, "{blue}");
    assert_eq!(blue[0]["id"], b, "{blue}");
    let none = d.ember(&["ls", "--label", "team=green"]).ok();
    assert!(none.first_column().is_empty(), "{}", none.describe());
    let one = d.ember(&["ls", "--limit", "1"]).ok();
    assert_eq!(one.first_column().len(), 1, "{}", one.describe());
    let by_template = d.ember(&["ls", "--template", "other"]).ok();
    assert!(
        by_template.first_column().is_empty(),
        "{}",
        by_template.describe()
    );

    // inspect: the whole record, JSON even without --json.
    let rec = d.ember(&["inspect", a]).ok().json();
    assert_eq!(rec["id"], a, "{rec}");
    assert_eq!(rec["template"], "probe", "{rec}");
    assert_eq!(rec["state"], "running", "{rec}");
    assert_eq!(rec["labels"]["team"], "red", "{rec}");
    assert_eq!(rec["labels"]["n"], "1", "{rec}");
    assert_eq!(rec["env"]["GREETING"], "hi", "{rec}");
    assert_eq!(rec["timeout_secs"], 300, "{rec}");

    // pause: exec refused until resume.
    let paused = d.ember(&["pause", a]).ok();
    assert_eq!(
        paused.text(),
        format!("{a} paused\n"),
        "{}",
        paused.describe()
    );
    assert_eq!(d.ember(&["inspect", a]).ok().json()["state"], "paused");
    let paused_ls = d.ember(&["ls", "--state", "paused"]).ok();
    assert_eq!(paused_ls.first_column(), [a], "{}", paused_ls.describe());
    d.ember(&["exec", a, "--", "echo", "hi"])
        .fails(&[a, "paused"]);
    // Pausing a paused sandbox changes nothing (the API is idempotent there).
    let twice = d.ember(&["pause", a]).ok();
    assert_eq!(
        twice.text(),
        format!("{a} paused\n"),
        "{}",
        twice.describe()
    );
    let resumed = d.ember(&["resume", a]).ok();
    assert_eq!(
        resumed.text(),
        format!("{a} running\n"),
        "{}",
        resumed.describe()
    );
    let again = d.ember(&["exec", a, "--", "echo", "again"]).ok();
    assert_eq!(again.text(), "again\n", "{}", again.describe());
    let back_again = d.ember(&["cp", &into, "-"]).ok();
    assert!(back_again.stdout == data, "the file survived the pause");

    // timeout: a new limit from now.
    let t = d.ember(&["timeout", a, "10m"]).ok();
    assert!(
        t.text().starts_with(&format!("{a} is killed in ")),
        "{}",
        t.describe()
    );
    let rec = d.ember(&["inspect", a]).ok().json();
    assert_eq!(rec["timeout_secs"], 600, "{rec}");
    let deadline = rec["deadline"].as_u64().unwrap();
    let created = rec["created_at"].as_u64().unwrap();
    assert!(deadline >= created + 590_000, "{rec}");
    d.ember(&["timeout", a, "10x"]).fails(&["10x"]);

    // rm: ended, gone from ls, still in ls --all and inspect.
    let rm = d.ember(&["rm", b]).ok();
    assert_eq!(rm.text(), format!("{b} ended\n"), "{}", rm.describe());
    let ls = d.ember(&["ls"]).ok();
    assert_eq!(ls.first_column(), [a], "{}", ls.describe());
    let all = d.ember(&["ls", "--all"]).ok();
    assert_eq!(all.row(b).unwrap()[2], "ended", "{}", all.describe());
    assert_eq!(all.row(a).unwrap()[2], "running", "{}", all.describe());
    let ended = d.ember(&["ls", "--state", "ended"]).ok();
    assert_eq!(ended.first_column(), [b], "{}", ended.describe());
    let rec = d.ember(&["inspect", b]).ok().json();
    assert_eq!(rec["state"], "ended", "{rec}");
    assert!(rec["end"].is_object(), "{rec}");
    d.ember(&["exec", b, "--", "echo", "hi"])
        .fails(&[b, "ended"]);

    // An unknown sandbox: every command names it.
    let unknown = "sb-0000000000000000";
    d.ember(&["inspect", unknown])
        .fails(&[unknown, "not found"]);
    d.ember(&["exec", unknown, "--", "echo", "hi"])
        .fails(&[unknown, "not found"]);
    d.ember(&["rm", unknown]).fails(&[unknown, "not found"]);
    d.ember(&["pause", unknown]).fails(&[unknown, "not found"]);
    d.ember(&["timeout", unknown, "1m"])
        .fails(&[unknown, "not found"]);
    d.ember(&["cp", &format!("{unknown}:/f"), "-"])
        .fails(&[unknown, "not found"]);

    // $EMBER_HOST instead of --host.
    let via_env = ember(&["ls".to_string()], None, &[("EMBER_HOST", &d.host())]).ok();
    assert_eq!(via_env.first_column(), [a], "{}", via_env.describe());

    // Cleanup through the CLI: sandboxes, pool, templates.
    d.ember(&["rm", a]).ok();
    let info = d.ember(&["--json", "info"]).ok().json();
    assert_eq!(info["capacity"]["sandboxes_running"], 0, "{info}");
    assert_eq!(info["capacity"]["sandboxes_paused"], 0, "{info}");
    let prm = d.ember(&["pool", "rm", "probe"]).ok();
    assert_eq!(prm.text(), "pool of probe deleted\n", "{}", prm.describe());
    let pools = d.ember(&["pool", "ls"]).ok();
    assert!(pools.row("probe").is_none(), "{}", pools.describe());
    d.ember(&["pool", "rm", "probe"]).fails(&["probe"]);
    for name in ["probe", "other"] {
        let trm = d.ember(&["template", "rm", name]).ok();
        assert_eq!(
            trm.text(),
            format!("template {name} deleted\n"),
            "{}",
            trm.describe()
        );
    }
    let ls = d.ember(&["template", "ls"]).ok();
    assert!(ls.first_column().is_empty(), "{}", ls.describe());
    d.ember(&["template", "rm", "probe"]).fails(&["probe"]);

    // The daemon stops cleanly and leaves no VMM process behind.
    assert!(d.term(), "emberd exited with an error:\n{}", d.log_text());
    let t0 = Instant::now();
    while !d.vmm_pids().is_empty() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(d.vmm_pids().is_empty(), "left: {:?}", d.vmm_pids());
}

#[test]
fn errors_without_a_daemon_are_clear() {
    // No daemon at the address: one line saying so, naming it.
    let out = ember(
        &[
            "--host".into(),
            "unix:///nonexistent.sock".into(),
            "ls".into(),
        ],
        None,
        &[],
    );
    out.fails(&["cannot reach emberd", "/nonexistent.sock"]);
    // Not an address at all.
    ember(
        &["--host".into(), "ftp://x".into(), "info".into()],
        None,
        &[],
    )
    .fails(&["ftp://x", "unix://"]);
    // cp needs one sandbox side: a usage error before any connection (there is no daemon).
    ember(
        &[
            "--host".into(),
            "unix:///nonexistent.sock".into(),
            "cp".into(),
            "a".into(),
            "b".into(),
        ],
        None,
        &[],
    )
    .fails(&["SANDBOX:/path"]);
    ember(
        &[
            "--host".into(),
            "unix:///nonexistent.sock".into(),
            "cp".into(),
            "sb-1:/a".into(),
            "sb-2:/b".into(),
        ],
        None,
        &[],
    )
    .fails(&["SANDBOX:/path"]);
    // Argument errors from the parser: exit 2 with usage.
    let out = ember(&["exec".into(), "sb-1".into()], None, &[]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(out.stderr.contains("Usage"), "{}", out.describe());
    let out = ember(
        &[
            "run".into(),
            "probe".into(),
            "--timeout".into(),
            "5x".into(),
        ],
        None,
        &[],
    );
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(out.stderr.contains("5x"), "{}", out.describe());
}

/// Sends a line to `addr` and reads as many bytes back (the probe guest echoes on TCP port 7).
fn echo(addr: std::net::SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"ping through ember expose\n")?;
    let mut buf = vec![0; 26];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

#[test]
fn network_commands_against_a_networked_emberd() {
    // A subnet and prefix of this test process's own (emberd's tests/network.rs uses
    // 10.20-219.x and "en"): daemons of parallel runs do not meet.
    let pid = std::process::id();
    let prefix = format!("ec{}", pid % 100_000);
    let _cleanup = NetCleanup(prefix.clone());
    let subnet = format!("10.{}.0.0/16", 220 + pid % 30);
    let d = Daemon::started_with(&[
        "--sandbox-network".into(),
        "--net-subnet".into(),
        subnet,
        "--net-prefix".into(),
        prefix.clone(),
    ]);

    // A networked probe template.
    let t = d
        .ember(&["--json", "template", "build", "netprobe", "--network"])
        .ok()
        .json();
    assert_eq!(t["spec"]["network"], true, "{t}");
    assert_eq!(t["state"], "ready", "{t}");

    // Created with a policy: deny but one address's port 80.
    let run = d
        .ember(&[
            "run",
            "netprobe",
            "--egress",
            "deny",
            "--allow",
            "192.0.2.1:80",
        ])
        .ok();
    let id = run.text().trim().to_string();
    assert!(is_sandbox_id(&id), "{}", run.describe());
    let id = id.as_str();
    let sb = d.ember(&["--json", "network", id]).ok().json();
    assert_eq!(sb["id"], id, "{sb}");
    assert_eq!(
        sb["network"]["egress"],
        serde_json::json!({
            "default": "deny",
            "allow": [{"cidr": "192.0.2.1/32", "ports": 80}],
            "allow_dns": false
        }),
        "{sb}"
    );
    let address: std::net::Ipv4Addr = sb["network"]["address"].as_str().unwrap().parse().unwrap();
    // The table: address, the policy in one line, no ports yet.
    let shown = d.ember(&["network", id]).ok();
    assert_eq!(
        shown.row("address"),
        Some(vec!["address".into(), address.to_string()]),
        "{}",
        shown.describe()
    );
    assert!(
        shown
            .text()
            .lines()
            .any(|l| l == "egress   default deny; allow 192.0.2.1:80"),
        "{}",
        shown.describe()
    );
    assert_eq!(
        shown.row("ports"),
        Some(vec!["ports".into(), "-".into()]),
        "{}",
        shown.describe()
    );

    // Replaced: allow everything, with DNS; then another rule set, as JSON.
    let changed = d.ember(&["network", id, "--egress", "allow"]).ok();
    assert!(
        changed
            .text()
            .lines()
            .any(|l| l == "egress   default allow"),
        "{}",
        changed.describe()
    );
    let sb = d.ember(&["--json", "network", id]).ok().json();
    assert_eq!(
        sb["network"]["egress"],
        serde_json::json!({"default": "allow", "allow_dns": false}),
        "{sb}"
    );
    let sb = d
        .ember(&[
            "--json",
            "network",
            id,
            "--deny",
            "10.0.0.0/8",
            "--allow",
            "10.1.2.3:8000-8080/tcp",
            "--dns",
        ])
        .ok()
        .json();
    assert_eq!(
        sb["network"]["egress"],
        serde_json::json!({
            "default": "allow",
            "allow": [{"cidr": "10.1.2.3/32", "protocol": "tcp", "ports": "8000-8080"}],
            "deny": [{"cidr": "10.0.0.0/8"}],
            "allow_dns": true
        }),
        "{sb}"
    );
    d.ember(&["network", id, "--egress", "allow"]).ok();

    // Exposed: the printed address echoes.
    let exposed = d.ember(&["expose", id, "7"]).ok();
    let host: std::net::SocketAddr = exposed
        .text()
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {}", exposed.describe()));
    assert!(host.ip().is_loopback(), "{}", exposed.describe());
    assert_eq!(echo(host).unwrap(), b"ping through ember expose\n");
    let shown = d.ember(&["network", id]).ok();
    assert_eq!(
        shown.row("ports"),
        Some(vec![
            "ports".into(),
            "7".into(),
            "->".into(),
            host.to_string()
        ]),
        "{}",
        shown.describe()
    );
    // inspect: the network is part of the record.
    let rec = d.ember(&["inspect", id]).ok().json();
    assert_eq!(rec["network"]["address"], address.to_string(), "{rec}");
    assert_eq!(rec["network"]["egress"]["default"], "allow", "{rec}");
    assert_eq!(rec["network"]["ports"][0]["guest_port"], 7, "{rec}");
    assert_eq!(
        rec["network"]["ports"][0]["host"],
        host.to_string(),
        "{rec}"
    );
    // --json expose prints the sandbox.
    let sb = d.ember(&["--json", "expose", id, "7"]).ok().json();
    assert_eq!(sb["id"], id, "{sb}");

    // The daemon's errors name what is wrong.
    let unknown = "sb-00000000deadbeef";
    d.ember(&["network", unknown]).fails(&[unknown]);
    d.ember(&["expose", unknown, "7"]).fails(&[unknown]);

    // rm: the exposed address stops answering.
    d.ember(&["rm", id]).ok();
    let t0 = Instant::now();
    while echo(host).is_ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{host} still answers after rm"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d.ember(&["template", "rm", "netprobe"]).ok();
    drop(d);
}
