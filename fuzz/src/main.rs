//! `ember-fuzz`: coverage-guided fuzzing of what ember reads from untrusted sources — snapshot
//! state files, a guest's virtqueues, API clients' HTTP and JSON, agent protocol frames — on
//! stable Rust.
//!
//! # Why an engine of our own
//! `cargo fuzz` needs a nightly toolchain (`-Zsanitizer`); only stable is available. Two
//! stable options were tried:
//! - `cargo-afl` (crates `afl` + `cargo-afl`) works here, but a fresh CI machine first spends
//!   about 3 minutes installing it (its build compiles AFL++), runs one forked process per
//!   target with AFL's fork server, and reports through `fuzzer_stats` files; more moving parts
//!   and most of a 6-minute CI budget gone before the first execution.
//! - `honggfuzz` needs `libunwind-dev`/`binutils-dev` and its own build of the same kind.
//!
//! Both get their coverage on stable the same way: LLVM's SanitizerCoverage pass
//! (`-C passes=sancov-module`), which stable `rustc` accepts. So does this harness:
//! `scripts/fuzz.sh` builds this binary with `-sanitizer-coverage-inline-8bit-counters` (an
//! inline byte counter per edge) and `-sanitizer-coverage-trace-compares` (comparison operands
//! for input-to-state mutations), and [`engine::sancov`] implements the callbacks. Nothing to
//! install, one instrumented build for every target (about 3.5 CPU-minutes), in-process
//! executions (no fork, no shared-memory handshake: `agent_decode` ran about 5 times as many
//! executions per second as the same target under `cargo afl` here), and the findings and
//! numbers CI prints are ours to format.
//!
//! # Commands
//! - `ember-fuzz list`: the targets;
//! - `ember-fuzz run TARGET [--seconds N] [--corpus DIR] [--artifacts DIR] [--timeout-ms N]
//!   [--max-len N] [--max-alloc-mb N] [--seed N] [--quiet]`: fuzz for a bounded time; the
//!   last line on stdout is the summary (`target=... execs=... exec_per_sec=... corpus=...
//!   edges=... findings=...`); exit status 77 with `reproducer=PATH` on a finding;
//! - `ember-fuzz replay TARGET PATH...`: run files (or directories of files) once each;
//! - `ember-fuzz seeds [TARGET]`: (re)write the generated seeds into `fuzz/corpus/<target>/`.
//!
//! Without the instrumentation flags (a plain `cargo build`) the binary works as a blind
//! mutation fuzzer and says so; `cargo test` replays every seed corpus (`tests/corpus.rs`).
#![forbid(unsafe_code)]
// A command-line tool: stdout and stderr are its interface.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use ember_fuzz::engine::guard::{EXIT_FINDING, LimitedAlloc};
use ember_fuzz::{engine, targets};

#[global_allocator]
static ALLOC: LimitedAlloc = LimitedAlloc;

fn usage() -> ExitCode {
    eprintln!(
        "usage: ember-fuzz list | run TARGET [--seconds N] [--corpus DIR] [--artifacts DIR] \
         [--timeout-ms N] [--max-len N] [--max-alloc-mb N] [--seed N] [--quiet] | replay TARGET \
         PATH... | seeds [TARGET]"
    );
    ExitCode::from(2)
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `virtio_net` needs a TAP: a network namespace of our own (root only) with one in it.
fn prepare_net() {
    use ember_vmm::fuzzing::virtio::{NET_GUEST_ADDR, NET_GUEST_MAC, NET_HOST_ADDR, NET_TAP};
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        eprintln!(
            "virtio_net: cannot enter a new network namespace ({e}); without root the target \
             has no TAP and exercises nothing"
        );
        return;
    }
    let host = format!("{NET_HOST_ADDR}/24");
    let cmds: [&[&str]; 5] = [
        &["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
        &["ip", "tuntap", "add", "dev", NET_TAP, "mode", "tap"],
        &["ip", "addr", "add", &host, "dev", NET_TAP],
        &["ip", "link", "set", NET_TAP, "up"],
        &[
            "ip",
            "neigh",
            "add",
            NET_GUEST_ADDR,
            "lladdr",
            NET_GUEST_MAC,
            "dev",
            NET_TAP,
            "nud",
            "permanent",
        ],
    ];
    for cmd in cmds {
        let ok = std::process::Command::new(cmd[0])
            .args(&cmd[1..])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!(
                "virtio_net: `{}` failed; the target may exercise little",
                cmd.join(" ")
            );
        }
    }
}

fn files_in(paths: &[String]) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for p in paths {
        let p = Path::new(p);
        let mut list: Vec<PathBuf> = if p.is_dir() {
            std::fs::read_dir(p)
                .map(|rd| rd.flatten().map(|e| e.path()).collect())
                .unwrap_or_default()
        } else {
            vec![p.to_path_buf()]
        };
        list.sort();
        for f in list {
            if let Ok(d) = std::fs::read(&f) {
                out.push((f, d));
            }
        }
    }
    out
}

fn write_seeds(t: &targets::Target) -> std::io::Result<usize> {
    let dir = manifest_dir().join("corpus").join(t.name);
    std::fs::create_dir_all(&dir)?;
    for e in std::fs::read_dir(&dir)?.flatten() {
        if e.file_name().to_string_lossy().starts_with("seed-") {
            std::fs::remove_file(e.path())?;
        }
    }
    let seeds = (t.seeds)();
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), s)?;
    }
    Ok(seeds.len())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        return usage();
    };
    let code = match cmd.as_str() {
        "list" => {
            for t in targets::TARGETS {
                println!("{:16} {}", t.name, t.what);
            }
            ExitCode::SUCCESS
        }
        "seeds" => {
            let only = args.get(1);
            for t in targets::TARGETS {
                if only.is_some_and(|o| o != t.name) {
                    continue;
                }
                match write_seeds(t) {
                    Ok(n) => println!("{}: {n} seeds", t.name),
                    Err(e) => {
                        eprintln!("{}: {e}", t.name);
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        "replay" => {
            let Some(t) = args.get(1).and_then(|n| targets::find(n)) else {
                return usage();
            };
            if t.name == "virtio_net" {
                prepare_net();
            }
            let inputs = files_in(&args[2..]);
            match engine::replay(t.run, &inputs) {
                Ok(n) => {
                    println!("{}: {n} inputs, no panic", t.name);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: {e}", t.name);
                    ExitCode::from(EXIT_FINDING as u8)
                }
            }
        }
        "run" => run(&args[1..]),
        _ => usage(),
    };
    ember_vmm::fuzzing::remove_scratch_dir();
    code
}

fn run(args: &[String]) -> ExitCode {
    let Some(t) = args.first().and_then(|n| targets::find(n)) else {
        return usage();
    };
    let mut opts = engine::Options {
        target: t.name.into(),
        seeds: vec![manifest_dir().join("corpus").join(t.name)],
        corpus: None,
        artifacts: manifest_dir().join("../target/fuzz/artifacts"),
        duration: Duration::from_secs(60),
        max_len: t.max_len,
        timeout: Duration::from_secs(5),
        dict: engine::mutate::parse_dict(t.dict),
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        report_every: Some(Duration::from_secs(10)),
        max_alloc: 64 << 20,
        max_live: 2 << 30,
    };
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        if flag == "--quiet" {
            opts.report_every = None;
            continue;
        }
        let Some(value) = it.next() else {
            return usage();
        };
        let num = || value.parse::<u64>().ok();
        match (flag.as_str(), num()) {
            ("--seconds", Some(n)) => opts.duration = Duration::from_secs(n),
            ("--timeout-ms", Some(n)) => opts.timeout = Duration::from_millis(n),
            ("--max-len", Some(n)) => opts.max_len = n as usize,
            ("--max-alloc-mb", Some(n)) => opts.max_alloc = (n as usize) << 20,
            ("--seed", Some(n)) => opts.seed = n,
            ("--corpus", _) => opts.corpus = Some(PathBuf::from(value)),
            ("--artifacts", _) => opts.artifacts = PathBuf::from(value),
            _ => return usage(),
        }
    }
    if !engine::sancov::edges_available() {
        eprintln!(
            "{}: this build has no coverage instrumentation (use scripts/fuzz.sh): blind mutation only",
            t.name
        );
    }
    if t.name == "virtio_net" {
        prepare_net();
    }
    let s = engine::fuzz(t.run, &opts);
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    let mut line = format!(
        "target={} execs={} exec_per_sec={:.0} corpus={} edges={}/{} findings={} seconds={:.1}",
        t.name,
        s.execs,
        s.execs as f64 / secs,
        s.corpus,
        s.edges,
        s.counters,
        u8::from(s.finding.is_some()),
        secs
    );
    if let Some(p) = &s.finding {
        line.push_str(&format!(" reproducer={}", p.display()));
    }
    println!("{line}");
    if s.finding.is_some() {
        ExitCode::from(EXIT_FINDING as u8)
    } else {
        ExitCode::SUCCESS
    }
}
