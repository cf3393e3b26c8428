//! A guest printing without end against the real binary on real KVM: its console log, a
//! regular file (`--serial-out FILE`, or stdout redirected to one as ember's runtime does),
//! stays within `--console-limit-bytes`, says it was cut, ends with the guest's latest output,
//! and the VMM (seccomp on: the cut runs on a vCPU thread) keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// The probe prints a `count=` line on every tick it gets to (asked for 10,000 a second; some
/// 1,600 lines, ~30 KB, a second under nested KVM).
const FLOOD_ARGS: &str = "ember.hz=10000 ember.report=1";
const LIMIT: u64 = 16 << 10;
const NOTICE: &str = "[ember-vmm: the console log passed its 16384 byte limit";

/// The highest count line in `text`.
fn last_count_in(text: &str) -> u64 {
    text.lines()
        .filter_map(ember_probe_image::parse_count_line)
        .max()
        .unwrap_or(0)
}

/// Watches `log` until the guest's count has gone on past what two more files' worth of
/// lines hold since the first cut was seen (so it was cut again and again), checking its size
/// on every look; returns the last count.
fn watch_the_log(log: &Path) -> u64 {
    // Count lines are over 20 bytes, so a file holds fewer than this many.
    let lines_per_file = LIMIT / 20;
    let mut first = None;
    wait_for(
        DEFAULT_TIMEOUT,
        "the console log cut again and again",
        || {
            let text = String::from_utf8_lossy(&std::fs::read(log).unwrap()).into_owned();
            // One write may land past the limit before the cut: a byte, here.
            assert!(
                text.len() as u64 <= LIMIT + 1,
                "console log of {} bytes over its {LIMIT} byte limit",
                text.len()
            );
            // Caught mid-cut (empty, or a partial notice): look again.
            if !text.starts_with(NOTICE) {
                return None;
            }
            // The notice, the kept tail, then new output: the file ends with the latest count.
            let count = last_count_in(&text);
            let first = *first.get_or_insert(count);
            assert!(count >= first, "count went back from {first} to {count}");
            (count > first + 2 * lines_per_file).then_some(count)
        },
    )
}

#[test]
fn a_flooding_guest_keeps_its_console_log_file_within_the_limit() {
    let dir = tempdir();
    let log = dir.path().join("console.log");
    let limit = LIMIT.to_string();
    let mut vmm = spawn(
        dir.path(),
        "flood",
        &[
            "--serial-out",
            log.to_str().unwrap(),
            "--console-limit-bytes",
            &limit,
        ],
    );
    let mut c = vmm.client();
    boot_via_api(&mut c, 1, 64, FLOOD_ARGS);
    let end = watch_the_log(&log);
    assert!(end > 0);
    assert_eq!(c.get("/").status, 200, "the VMM stopped answering");
    assert!(
        vmm.try_status().is_none(),
        "the VMM died: {}",
        vmm.stderr_text()
    );
}

/// A VMM spawned by hand, killed and reaped when the test ends, passed or failed.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_stdout_redirected_to_a_file_is_limited_too_and_a_pipe_is_not() {
    let dir = tempdir();
    let log = dir.path().join("stdout.log");
    let sock = dir.path().join("stdout.sock");
    let mut child = Killed(
        Command::new(vmm_bin())
            .args(["--api-sock", sock.to_str().unwrap()])
            .args(["--console-limit-bytes", &LIMIT.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut c = ApiClient::connect(&sock, DEFAULT_TIMEOUT);
    boot_via_api(&mut c, 1, 64, FLOOD_ARGS);
    watch_the_log(&log);
    assert_eq!(c.get("/").status, 200, "the VMM stopped answering");
    assert!(child.0.try_wait().unwrap().is_none(), "the VMM died");
    drop(child);

    // A pipe (the test harness's capture) is the reader's business: nothing is cut.
    let vmm = spawn(
        dir.path(),
        "pipe",
        &["--console-limit-bytes", &LIMIT.to_string()],
    );
    let mut c = vmm.client();
    boot_via_api(&mut c, 1, 64, FLOOD_ARGS);
    wait_for(
        DEFAULT_TIMEOUT,
        "over 2x the limit through the pipe",
        || (vmm.stdout_text().len() as u64 > 2 * LIMIT).then_some(()),
    );
    assert!(!vmm.stdout_text().contains(NOTICE));
}
