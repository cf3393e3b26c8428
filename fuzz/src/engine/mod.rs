//! The fuzzing loop: in-process, coverage-guided, one target per run.
//!
//! 1. Load the seeds (`fuzz/corpus/<target>/`, read-only) and the working corpus (a directory
//!    the run may write, kept between runs), run each, keep those that show new coverage.
//! 2. Until the time is up: pick an entry (recent and small ones more often), mutate a copy
//!    ([`mutate`]), run it; an input that shows a new (edge, hit-count class) pair joins the
//!    corpus and is written to the working corpus directory.
//! 3. A panic is a finding: the input is minimized (deletions, then byte simplification,
//!    keeping the same panic location), saved as `crash-<target>-<hash>` in the artifact
//!    directory, and the run exits with [`guard::EXIT_FINDING`]. Aborts, fatal signals, hangs
//!    and allocations past the limits are caught by [`guard`] (input saved, not minimized).
//!
//! Without instrumentation (a plain `cargo build`) there is no coverage: the loop still runs
//! (a blind mutation fuzzer from the seeds), and says so.

pub mod guard;
pub mod mutate;
pub mod sancov;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use self::mutate::{Rng, Sources};
use self::sancov::Virgin;

/// A fuzz target: never panics on any input unless it found a bug.
pub type TargetFn = fn(&[u8]);

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Target name (artifact names, messages).
    pub target: String,
    /// Read-only seed directories.
    pub seeds: Vec<PathBuf>,
    /// The working corpus directory (created; new entries are written here).
    pub corpus: Option<PathBuf>,
    /// Where findings go (created).
    pub artifacts: PathBuf,
    /// How long to fuzz.
    pub duration: Duration,
    /// Longest input.
    pub max_len: usize,
    /// Per-execution deadline.
    pub timeout: Duration,
    /// Dictionary tokens.
    pub dict: Vec<Vec<u8>>,
    /// PRNG seed.
    pub seed: u64,
    /// Status line period (`None`: only the summary).
    pub report_every: Option<Duration>,
    /// Largest single allocation and largest live total, bytes.
    pub max_alloc: usize,
    /// See `max_alloc`.
    pub max_live: usize,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Executions (seeds included).
    pub execs: u64,
    /// Wall time of the fuzzing loop.
    pub elapsed: Duration,
    /// Corpus entries at the end.
    pub corpus: usize,
    /// Edges covered.
    pub edges: usize,
    /// Edge counters in the binary (0: not instrumented).
    pub counters: usize,
    /// The reproducer of a finding, if any.
    pub finding: Option<PathBuf>,
}

struct Entry {
    data: Vec<u8>,
    /// Times picked.
    picked: u32,
}

/// The panic of the last execution (message and location), recorded by the hook.
static LAST_PANIC: Mutex<Option<(String, String)>> = Mutex::new(None);

fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let loc = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "(non-string panic payload)".into()
        };
        if let Ok(mut p) = LAST_PANIC.lock() {
            *p = Some((msg, loc));
        }
    }));
}

fn take_panic() -> Option<(String, String)> {
    LAST_PANIC.lock().ok().and_then(|mut p| p.take())
}

/// Runs `target` on `input` once: `Err((message, location))` if it panicked.
fn run_one(target: TargetFn, input: &[u8]) -> Result<(), (String, String)> {
    guard::begin(input);
    sancov::start_comparisons();
    let r = catch_unwind(AssertUnwindSafe(|| target(input)));
    sancov::stop_comparisons();
    guard::end();
    match r {
        Ok(()) => Ok(()),
        Err(_) => Err(take_panic().unwrap_or_else(|| ("panic".into(), String::new()))),
    }
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn read_dir_files(dir: &Path, out: &mut Vec<Vec<u8>>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        if p.is_file()
            && let Ok(d) = std::fs::read(&p)
        {
            out.push(d);
        }
    }
}

/// Shrinks a panicking input while it still panics at `location` (at most `budget`).
fn minimize(target: TargetFn, input: &[u8], location: &str, budget: Duration) -> Vec<u8> {
    let deadline = Instant::now() + budget;
    let still = |d: &[u8]| matches!(run_one(target, d), Err((_, l)) if l == location);
    let mut best = input.to_vec();
    // Deletions of shrinking chunks.
    let mut chunk = best.len().next_power_of_two() / 2;
    while chunk >= 1 && Instant::now() < deadline {
        let mut at = 0;
        while at < best.len() && Instant::now() < deadline {
            let end = (at + chunk).min(best.len());
            let mut cand = best[..at].to_vec();
            cand.extend_from_slice(&best[end..]);
            if still(&cand) {
                best = cand;
            } else {
                at += chunk;
            }
        }
        chunk /= 2;
    }
    // Simpler bytes: zero, then '0'.
    for i in 0..best.len() {
        if Instant::now() >= deadline {
            break;
        }
        for b in [0u8, b'0'] {
            if best[i] != b {
                let mut cand = best.clone();
                cand[i] = b;
                if still(&cand) {
                    best = cand;
                    break;
                }
            }
        }
    }
    best
}

/// Runs `inputs` once each (replay / regression): the first panic, with its input.
pub fn replay(target: TargetFn, inputs: &[(PathBuf, Vec<u8>)]) -> Result<usize, String> {
    install_panic_hook();
    for (path, data) in inputs {
        if let Err((msg, loc)) = run_one(target, data) {
            return Err(format!("{}: panicked at {loc}: {msg}", path.display()));
        }
    }
    Ok(inputs.len())
}

/// Fuzzes `target` as `opts` says.
pub fn fuzz(target: TargetFn, opts: &Options) -> Summary {
    let _ = std::fs::create_dir_all(&opts.artifacts);
    if let Some(c) = &opts.corpus {
        let _ = std::fs::create_dir_all(c);
    }
    guard::install(
        &opts.artifacts,
        &opts.target,
        opts.timeout,
        opts.max_alloc,
        opts.max_live,
    );
    install_panic_hook();
    let mut rng = Rng::new(opts.seed);
    let mut virgin = Virgin::default();
    let counters = sancov::total_counters();
    let mut summary = Summary {
        counters,
        ..Summary::default()
    };
    let mut corpus: Vec<Entry> = Vec::new();
    let started = Instant::now();

    let found = |data: &[u8], msg: &str, loc: &str, summary: &mut Summary| {
        eprintln!(
            "==ember-fuzz== {}: panic at {loc}: {msg}\n==ember-fuzz== minimizing ({} bytes)",
            opts.target,
            data.len()
        );
        let min = minimize(target, data, loc, Duration::from_secs(10));
        let path = opts
            .artifacts
            .join(format!("crash-{}-{:016x}", opts.target, fnv(&min)));
        let _ = std::fs::write(&path, &min);
        eprintln!(
            "==ember-fuzz== reproducer ({} bytes): {}",
            min.len(),
            path.display()
        );
        summary.finding = Some(path);
    };

    // Seeds and the working corpus.
    let mut initial = Vec::new();
    for s in &opts.seeds {
        read_dir_files(s, &mut initial);
    }
    if let Some(c) = &opts.corpus {
        read_dir_files(c, &mut initial);
    }
    initial.push(Vec::new());
    sancov::reset_counters();
    for data in initial {
        let mut data = data;
        data.truncate(opts.max_len);
        summary.execs += 1;
        if let Err((msg, loc)) = run_one(target, &data) {
            virgin.collect(false);
            found(&data, &msg, &loc, &mut summary);
            break;
        }
        let new = virgin.collect(true);
        if new > 0 || corpus.is_empty() {
            corpus.push(Entry { data, picked: 0 });
        }
    }

    let fuzz_start = Instant::now();
    let mut last_report = Instant::now();
    let mut child = Vec::with_capacity(opts.max_len);
    let mut cmps: Vec<(u64, u64, u8)> = Vec::new();
    while summary.finding.is_none() && fuzz_start.elapsed() < opts.duration {
        // A batch per clock check.
        for _ in 0..64 {
            // Favour recent (usually deeper) entries and rarely picked ones.
            let n = corpus.len();
            let i = if rng.one_in(2) {
                n - 1 - rng.below(n.min(16))
            } else {
                rng.below(n)
            };
            let i = if corpus[i].picked > 64 && rng.one_in(2) {
                rng.below(n)
            } else {
                i
            };
            corpus[i].picked = corpus[i].picked.saturating_add(1);
            // Refresh the comparison operands of the parent now and then.
            if rng.one_in(32) {
                let _ = run_one(target, &corpus[i].data);
                virgin.collect(true);
                cmps = sancov::comparisons();
                summary.execs += 1;
            }
            child.clear();
            child.extend_from_slice(&corpus[i].data);
            let other = &corpus[rng.below(n)].data;
            let src = Sources {
                dict: &opts.dict,
                other: Some(other),
                cmps: &cmps,
            };
            mutate::mutate(&mut child, opts.max_len, &mut rng, &src);
            summary.execs += 1;
            match run_one(target, &child) {
                Ok(()) => {
                    if virgin.collect(true) > 0 {
                        if let Some(c) = &opts.corpus {
                            let _ = std::fs::write(c.join(format!("{:016x}", fnv(&child))), &child);
                        }
                        corpus.push(Entry {
                            data: child.clone(),
                            picked: 0,
                        });
                    }
                }
                Err((msg, loc)) => {
                    virgin.collect(false);
                    let data = child.clone();
                    found(&data, &msg, &loc, &mut summary);
                    break;
                }
            }
        }
        if let Some(every) = opts.report_every
            && last_report.elapsed() >= every
        {
            last_report = Instant::now();
            let secs = fuzz_start.elapsed().as_secs_f64().max(1e-9);
            eprintln!(
                "#{} {}: {:.0} exec/s, corpus {}, edges {}/{}",
                summary.execs,
                opts.target,
                summary.execs as f64 / secs,
                corpus.len(),
                virgin.edges(),
                counters
            );
        }
    }
    summary.elapsed = started.elapsed();
    summary.corpus = corpus.len();
    summary.edges = virgin.edges();
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planted(data: &[u8]) {
        if data.len() >= 3 && &data[..3] == b"FUZ" {
            panic!("planted bug");
        }
    }

    /// The loop finds a planted panic (blind here: tests are not instrumented, the
    /// dictionary gets it there), minimizes it and saves the reproducer.
    #[test]
    fn finds_minimizes_and_saves_a_planted_panic() {
        let dir = std::env::temp_dir().join(format!("ember-fuzz-test-{}", std::process::id()));
        let opts = Options {
            target: "planted".into(),
            seeds: vec![],
            corpus: None,
            artifacts: dir.clone(),
            duration: Duration::from_secs(20),
            max_len: 64,
            timeout: Duration::from_secs(5),
            dict: vec![b"FUZ".to_vec()],
            seed: 42,
            report_every: None,
            max_alloc: 0,
            max_live: 0,
        };
        let s = fuzz(planted, &opts);
        let path = s.finding.expect("the planted panic is found");
        assert_eq!(std::fs::read(&path).unwrap(), b"FUZ");
        assert!(path.starts_with(&dir));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
