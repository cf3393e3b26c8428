//! `ember demo` and `ember bench` interrupted on real KVM: the binary is started with sizes that
//! keep it running, signalled once its VMMs run, and must then kill every VMM process (and the
//! API benchmark's emberd), remove its directory, say so on stderr and exit with 128 + the
//! signal's number — leaving nothing in its work directory and no process naming it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

/// One run at a time: each one fills the host with VMs.
static SERIAL: Mutex<()> = Mutex::new(());

/// Live (non-zombie) processes with an argument under `dir` (`dir/...`; `ember` itself names
/// `dir` only as its `--workdir`).
fn processes_under(dir: &Path) -> Vec<u32> {
    let prefix = format!("{}/", dir.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(true);
            !zombie
                && cmd
                    .split(|b| *b == 0)
                    .any(|a| String::from_utf8_lossy(a).starts_with(&prefix))
        })
        .collect()
}

/// Kills whatever a failed test left (so one failure does not leak VMs into the next test).
struct Reaper<'a>(&'a Path, Option<Child>);

impl Drop for Reaper<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.1.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in processes_under(self.0) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// Whether this process ignores `signal` (its children inherit that, and `ember` keeps an
/// ignored signal ignored): bit n-1 of `SigIgn` in /proc/self/status is signal n.
fn ignored_here(signal: Signal) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
        .unwrap();
    mask & (1 << (signal as i32 - 1)) != 0
}

/// Runs `ember --workdir <tmp> ARGS`, waits until at least `vmms` processes run under the work
/// directory, sends `signal`, and checks the cleanup.
fn interrupted(args: &[&str], vmms: usize, signal: Signal) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    assert!(
        !ignored_here(signal),
        "this test process ignores {signal}, so the ember it starts would too (a non-interactive \
         shell starts its background jobs with SIGINT and SIGQUIT ignored): run the tests in the \
         foreground, or detach them with `setsid -f` instead of `&`"
    );
    let workdir = tempfile::Builder::new()
        .prefix("ei")
        .tempdir_in("/dev/shm")
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .env("EMBER_VMM_BIN", ember_test_support::vmm_bin())
        .env(
            "EMBERD_BIN",
            ember_test_support::package_bin("emberd", "emberd"),
        )
        .arg("--workdir")
        .arg(workdir.path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reaper = Reaper(workdir.path(), Some(child));
    let child = reaper.1.as_mut().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let t0 = Instant::now();
    loop {
        if processes_under(workdir.path()).len() >= vmms {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "ember {args:?} ended ({status}) before it was signalled:\n{}",
                reader.join().unwrap()
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "ember {args:?}: {vmms} VMMs did not start within 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Well into the run.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "ember {args:?} is still running when signalled"
    );
    let running = processes_under(workdir.path()).len();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
    let t1 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(60),
            "ember {args:?} did not exit within 60 s of {signal}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    reaper.1 = None;
    let stderr = reader.join().unwrap();
    assert_eq!(
        status.code(),
        Some(128 + signal as i32),
        "ember {args:?} after {signal}: {status}\n{stderr}"
    );
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("interrupted: cleaned up ")
            && last.ends_with(" VMM processes and the session directory"),
        "ember {args:?}: {stderr}"
    );
    let cleaned: usize = last
        .trim_start_matches("interrupted: cleaned up ")
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // Some of those running may have been ending already (a killed sandbox's VMM).
    assert!(
        cleaned > 0,
        "{cleaned} cleaned up, {running} were running: {stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(workdir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "ember {args:?} left {left:?}");
    // Killed VMMs leave /proc within moments of their parent's exit.
    let t2 = Instant::now();
    loop {
        let alive = processes_under(workdir.path());
        if alive.is_empty() {
            break;
        }
        assert!(
            t2.elapsed() < Duration::from_secs(5),
            "ember {args:?} left processes {alive:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigint_during_the_demo_kills_the_embedded_daemons_vmms_and_removes_its_directory() {
    // Detached VMMs (they would outlive the process): the cleanup must kill them.
    interrupted(
        &["demo", "--sequential", "1000", "--depth", "8"],
        8,
        Signal::SIGINT,
    );
}

#[test]
fn sigterm_during_a_session_bench_cleans_up_its_session() {
    interrupted(
        &[
            "bench",
            "acquire",
            "--iterations",
            "100000",
            "--concurrency",
            "8",
        ],
        8,
        Signal::SIGTERM,
    );
}

#[test]
fn sigint_during_the_api_bench_kills_its_emberd_and_vmms() {
    interrupted(
        &[
            "bench",
            "api",
            "--iterations",
            "10000",
            "--concurrency",
            "8",
            "--vms",
            "8",
        ],
        // emberd, and the VMMs of its pool.
        9,
        Signal::SIGINT,
    );
}
