//! The `ember` command end to end on real KVM: `ember demo` and every `ember bench`, as a user
//! runs them (the binary, JSON output), each proving it left no VMM process and no file.
//! Sizes are small so the suite stays fast; the figures themselves are not asserted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

fn ember(args: &[&str]) -> Value {
    let workdir = tempfile::Builder::new()
        .prefix("e")
        .tempdir_in("/dev/shm")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .env("EMBER_VMM_BIN", ember_test_support::vmm_bin())
        .env(
            "EMBERD_BIN",
            ember_test_support::package_bin("emberd", "emberd"),
        )
        .env(
            "EMBER_JAILER_BIN",
            ember_test_support::package_bin("ember-jailer", "ember-jailer"),
        )
        .arg("--json")
        .arg("--workdir")
        .arg(workdir.path())
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ember {args:?} failed:\n{stderr}\n{stdout}"
    );
    let v: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("ember {args:?} printed no JSON ({e}):\n{stdout}"));
    assert_eq!(v["leftovers"]["processes"], Value::Array(vec![]), "{v}");
    assert_eq!(v["leftovers"]["files"], Value::Array(vec![]), "{v}");
    assert_eq!(
        std::fs::read_dir(workdir.path()).unwrap().count(),
        0,
        "the session directory is removed"
    );
    v
}

fn latency<'a>(v: &'a Value, name_part: &str) -> &'a Value {
    v["latencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"].as_str().unwrap().contains(name_part))
        .unwrap_or_else(|| panic!("no latency named like {name_part:?} in {v}"))
}

#[test]
fn demo_hands_vms_to_tenants_and_leaves_nothing() {
    // `ember()` also checks that nothing was left (report and work directory).
    let v = ember(&[
        "demo",
        "--sequential",
        "3",
        "--concurrent",
        "4",
        "--depth",
        "4",
    ]);
    assert!(v["template_build_ms"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["sample_output"], "hello from tenant-0", "{v}");
    assert_eq!(v["file_round_trip_bytes"], 4096, "{v}");
    for (phase, n) in [("sequential", 3), ("concurrent", 4)] {
        let rows = v[phase].as_array().unwrap();
        let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(rows.len(), 3, "{phase}: {v}");
        assert!(names[0].starts_with("create"), "{phase}: {names:?}");
        assert!(names[1].starts_with("first exec"), "{phase}: {names:?}");
        assert_eq!(names[2], "create -> first exec reply", "{phase}: {names:?}");
        for r in rows {
            assert_eq!(r["n"], n, "{phase}: {r}");
            let (min, p50, max) = (
                r["min_us"].as_f64().unwrap(),
                r["p50_us"].as_f64().unwrap(),
                r["max_us"].as_f64().unwrap(),
            );
            assert!(0.0 < min && min <= p50 && p50 <= max, "{phase}: {r}");
        }
    }
    // The demo waits for a full pool before every create (and before the burst of 4 with a
    // depth of 4), so every create gets a warm VM: one handover each, counted by the pool.
    let warm = v["warm_creates"].as_u64().unwrap();
    assert_eq!(warm, 7, "{v}");
    assert_eq!(v["pool"]["acquired"], warm, "{v}");
    assert!(v["pool"]["created"].as_u64().unwrap() >= warm, "{v}");
    assert_eq!(v["pool"]["validation_failures"], 0, "{v}");
}

#[test]
fn every_bench_runs_and_reports() {
    let small = [
        "--iterations",
        "4",
        "--concurrency",
        "4",
        "--vms",
        "4",
        "--rate",
        "50",
    ];
    let run = |kind: &str| {
        let mut args = vec!["bench", kind];
        args.extend_from_slice(&small);
        let v = ember(&args);
        assert_eq!(v["bench"], kind);
        let targets = v["targets"].as_array().unwrap();
        assert!(
            targets
                .iter()
                .any(|t| t["name"] == "left behind after the run" && t["met"] == true),
            "{v}"
        );
        v
    };
    let boot = run("boot");
    assert_eq!(latency(&boot, "agent answers Health")["n"], 4);

    let restore = run("restore");
    assert_eq!(latency(&restore, "restore into a ready spare")["n"], 4);
    assert_eq!(restore["figures"]["sustained_restores"], 32);
    assert!(
        restore["figures"]["sustained_restores_per_s"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    let acquire = run("acquire");
    assert_eq!(latency(&acquire, "burst: acquire ->")["n"], 4);
    assert_eq!(latency(&acquire, "paced 50/s: acquire ->")["n"], 4);
    // The same bursts by long-lived acquirer threads.
    let mut args = vec!["bench", "acquire", "--acquirers", "long-lived"];
    args.extend_from_slice(&small);
    let long_lived = ember(&args);
    assert_eq!(
        long_lived["figures"]["acquirers"], "long-lived",
        "{long_lived}"
    );
    assert_eq!(latency(&long_lived, "burst: acquire ->")["n"], 4);

    let density = run("density");
    assert_eq!(density["figures"]["idle_pooled_vms"], 4);
    let vmm_kib = density["figures"]["vmm_private"]["max_kib"]
        .as_u64()
        .unwrap();
    assert!(vmm_kib > 0, "memory was measured: {density}");

    // The API through a real emberd process, restarts included.
    let api = run("api");
    assert_eq!(
        api["figures"]["restart"]["kill9"]["sandboxes_adopted"], 4,
        "{api}"
    );
    assert!(api["host"]["cpu_model"].as_str().is_some(), "{api}");
    assert_eq!(
        latency(&api, "4 at once: create -> first exec reply")["n"],
        12
    );
    assert_eq!(
        latency(&api, "paced 50/s, 4 clients: create -> first exec reply")["n"],
        4
    );
    // Where the bursts' CPU went: emberd and the VMMs ran (scheduler statistics, not ticks).
    let window = &api["figures"]["burst_window"];
    for who in ["emberd_cpu_ms", "vmms_cpu_ms", "wall_ms"] {
        assert!(window[who].as_f64().unwrap() > 0.0, "{who}: {window}");
    }

    // Unjailed and jailed side by side.
    let jail = run("jail");
    assert_eq!(latency(&jail, "jailed: acquire ->")["n"], 4);
    assert_eq!(latency(&jail, "not jailed: acquire ->")["n"], 4);
    assert!(
        jail["figures"]["refill_jailed_over_unjailed"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    let vsock = run("vsock");
    assert_eq!(latency(&vsock, "exec echo")["name"], "exec echo round trip");
    assert!(vsock["figures"]["exec_echo_per_s"].as_f64().unwrap() > 0.0);

    // The unmodified e2b SDK (the venv of scripts/setup.sh) against E2B's API.
    let e2b = run("e2b");
    assert_eq!(latency(&e2b, "Sandbox.create()")["n"], 4, "{e2b}");
    assert_eq!(latency(&e2b, "create -> first commands.run")["n"], 4);
    assert_eq!(e2b["figures"]["clients"], 4);
}

/// `ember --workdir <dir> ARGS`, which must fail at once with one line naming `option`, having
/// made nothing under `dir`.
fn refused(dir: &Path, args: &[&str], option: &str) -> String {
    let (vmm, emberd) = (
        ember_test_support::vmm_bin(),
        ember_test_support::package_bin("emberd", "emberd"),
    );
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .env("EMBER_VMM_BIN", vmm)
        .env("EMBERD_BIN", emberd)
        .arg("--workdir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} accepted: {stderr}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "{args:?}: refused only after {:?}",
        t0.elapsed()
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: one line, nothing started: {stderr}"
    );
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(option),
        "{args:?}: names {option}: {stderr}"
    );
    assert!(out.stdout.is_empty(), "{args:?}");
    if dir.is_dir() {
        let made: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
        assert!(made.is_empty(), "{args:?} made {made:?}");
    }
    stderr
}

#[test]
fn bad_options_are_one_clear_error_before_anything_starts() {
    let workdir = tempfile::Builder::new()
        .prefix("e")
        .tempdir_in("/dev/shm")
        .unwrap();
    let w = workdir.path();
    let demo = &["demo"][..];
    for (command, option, value) in [
        (&["bench", "acquire"][..], "--concurrency", "0"),
        (&["bench", "acquire"][..], "--iterations", "0"),
        (&["bench", "boot"][..], "--iterations", "100000000"),
        (&["bench", "acquire"][..], "--rate", "0"),
        (&["bench", "acquire"][..], "--rate", "10000000"),
        (&["bench", "density"][..], "--vms", "0"),
        (&["bench", "density"][..], "--vms", "5000"),
        (&["bench", "api"][..], "--vms", "2000"),
        (&["bench", "api"][..], "--concurrency", "2000"),
        (&["bench", "vsock"][..], "--agent-port", "0"),
        (&["bench", "vsock"][..], "--agent-port", "4294967295"),
        (demo, "--agent-port", "0"),
        (demo, "--depth", "0"),
        (demo, "--depth", "100000"),
        (demo, "--sequential", "0"),
        (demo, "--sequential", "5000"),
        (demo, "--concurrent", "0"),
        (demo, "--concurrent", "5000"),
    ] {
        let mut args = command.to_vec();
        args.extend([option, value]);
        refused(w, &args, option);
    }

    // --vmm must exist: no session directory is made for it.
    for command in [demo, &["bench", "boot"][..], &["bench", "api"][..]] {
        let mut args = command.to_vec();
        args.extend(["--vmm", "/nonexistent"]);
        let e = refused(w, &args, "--vmm /nonexistent");
        assert!(e.contains("No such file"), "{e}");
    }

    // --workdir must be an existing directory: nothing is created.
    let missing = w.join("missing").join("dir");
    for command in [demo, &["bench", "acquire"][..]] {
        let e = refused(
            &missing,
            command,
            &format!("--workdir {}", missing.display()),
        );
        assert!(e.contains("existing directory"), "{e}");
        assert!(!w.join("missing").exists(), "{command:?} created the path");
    }
    let file = w.join("a-file");
    std::fs::write(&file, b"").unwrap();
    let e = refused(&file, demo, "--workdir");
    assert!(e.contains("not a directory"), "{e}");
}

#[test]
fn bad_network_arguments_name_the_flag_and_the_value() {
    // Refused while parsing: the daemon named (which does not exist) is never called.
    for (args, flag, value, says) in [
        (
            &["run", "t", "--egress", "maybe"][..],
            "--egress",
            "maybe",
            "neither allow nor deny",
        ),
        (
            &["network", "sb-1", "--egress", "maybe"][..],
            "--egress",
            "maybe",
            "neither allow nor deny",
        ),
        (
            &["run", "t", "--allow", "10.0.0.1/8"][..],
            "--allow",
            "10.0.0.1/8",
            "host bits",
        ),
        (
            &["run", "t", "--deny", "1.1.1.1:0"][..],
            "--deny",
            "1.1.1.1:0",
            "port 0",
        ),
        (
            &["network", "sb-1", "--allow", "1.1.1.1:443/icmp"][..],
            "--allow",
            "1.1.1.1:443/icmp",
            "not a protocol",
        ),
        (
            &["network", "sb-1", "--deny", "example.com:80"][..],
            "--deny",
            "example.com:80",
            "not an IPv4 address",
        ),
        (
            &["expose", "sb-1", "0"][..],
            "GUEST_PORT",
            "0",
            "not in 1..=65535",
        ),
        (
            &["expose", "sb-1", "http"][..],
            "GUEST_PORT",
            "http",
            "invalid digit",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ember"))
            .env_remove("EMBER_HOST")
            .args(["--host", "unix:///nonexistent/ember.sock"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: ")
                && first.contains(flag)
                && first.contains(&format!("'{value}'"))
                && first.contains(says),
            "{args:?}: names {flag}, {value:?}, says {says:?}: {stderr}"
        );
        assert!(!stderr.contains("cannot reach"), "{args:?}: {stderr}");
    }
}
