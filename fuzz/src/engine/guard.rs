//! What catches the findings a `catch_unwind` cannot: a fatal signal (abort, segfault, stack
//! overflow), an execution that runs past its deadline (a hang) and an allocation past the
//! memory limit. Each writes the input of the running execution to the artifact directory
//! (`<kind>-<target>-current`) and exits with [`EXIT_FINDING`], using only system calls on
//! memory prepared beforehand (signal handlers and the allocator may not allocate).
#![allow(unsafe_code)] // FFI: signal handlers, raw system calls, the global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Exit status of a run that found something.
pub const EXIT_FINDING: i32 = 77;

/// The input of the running execution (pointer and length; null between executions).
static CURRENT: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static CURRENT_LEN: AtomicUsize = AtomicUsize::new(0);
/// Milliseconds since [`epoch`] at which the running execution started (0: none running).
static EXEC_START_MS: AtomicU64 = AtomicU64::new(0);
/// `<artifacts>/<kind>-<target>-current` paths, prepared at start.
static PATHS: OnceLock<Paths> = OnceLock::new();

struct Paths {
    crash: CString,
    timeout: CString,
    oom: CString,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Bytes allocated and not freed (all threads).
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Largest single allocation and largest live total allowed (0: no limit yet).
static MAX_ALLOC: AtomicUsize = AtomicUsize::new(0);
static MAX_LIVE: AtomicUsize = AtomicUsize::new(0);

/// The system allocator with the fuzzer's memory limits: a request past the single-allocation
/// limit, or one that takes the live total past its limit, is a finding (`oom-...`).
#[derive(Debug)]
pub struct LimitedAlloc;

// SAFETY: every method forwards to `System` with the caller's arguments; the bookkeeping is
// atomics only and never allocates.
unsafe impl GlobalAlloc for LimitedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            check(new_size - layout.size());
            let max = MAX_ALLOC.load(Ordering::Relaxed);
            if max != 0 && new_size > max {
                die(Kind::Oom, b"a single allocation past the limit (realloc)\n");
            }
        }
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

fn check(size: usize) {
    let max = MAX_ALLOC.load(Ordering::Relaxed);
    if max == 0 {
        return;
    }
    if size > max {
        die(Kind::Oom, b"a single allocation past the limit\n");
    }
    if LIVE.load(Ordering::Relaxed).saturating_add(size) > MAX_LIVE.load(Ordering::Relaxed) {
        die(Kind::Oom, b"live allocations past the limit\n");
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Crash,
    Timeout,
    Oom,
}

fn write_all(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a valid slice; write(2) reads at most its length.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// Saves the running execution's input and exits. Allocation-free and async-signal-safe.
fn die(kind: Kind, why: &[u8]) -> ! {
    write_all(2, b"\n==ember-fuzz== ");
    write_all(2, why);
    if let Some(paths) = PATHS.get() {
        let path = match kind {
            Kind::Crash => &paths.crash,
            Kind::Timeout => &paths.timeout,
            Kind::Oom => &paths.oom,
        };
        let ptr = CURRENT.load(Ordering::Acquire);
        let len = CURRENT_LEN.load(Ordering::Acquire);
        // SAFETY: a NUL-terminated path prepared at start; open(2) with a mode for O_CREAT.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                0o644 as libc::c_uint,
            )
        };
        if fd >= 0 && !ptr.is_null() {
            // SAFETY: `ptr`/`len` describe the input the fuzzing thread is executing; it does
            // not change or free it until the execution returns, which it has not (this is a
            // crash inside it, or the watchdog found it running past its deadline).
            let input = unsafe { std::slice::from_raw_parts(ptr, len) };
            write_all(fd, input);
        }
        if fd >= 0 {
            // SAFETY: closing the descriptor opened above.
            unsafe { libc::close(fd) };
        }
        write_all(2, b"==ember-fuzz== input saved to ");
        write_all(2, path.as_bytes());
        write_all(2, b"\n");
    }
    // SAFETY: _exit(2) is async-signal-safe and never returns.
    unsafe { libc::_exit(EXIT_FINDING) }
}

extern "C" fn on_signal(sig: libc::c_int) {
    let why: &[u8] = match sig {
        libc::SIGSEGV => b"fatal signal SIGSEGV (a stack overflow or a bad access)\n",
        libc::SIGBUS => b"fatal signal SIGBUS\n",
        libc::SIGABRT => b"fatal signal SIGABRT (abort: a panic while panicking, an allocation failure, a stack overflow)\n",
        libc::SIGILL => b"fatal signal SIGILL\n",
        libc::SIGFPE => b"fatal signal SIGFPE\n",
        _ => b"fatal signal\n",
    };
    if CURRENT.load(Ordering::Acquire).is_null() {
        write_all(2, b"\n==ember-fuzz== fatal signal outside an execution\n");
        // SAFETY: async-signal-safe exit.
        unsafe { libc::_exit(70) }
    }
    die(Kind::Crash, why);
}

/// Prepares the artifact paths, the signal handlers, the memory limits and the hang watchdog
/// (`timeout` per execution).
pub fn install(
    artifacts: &Path,
    target: &str,
    timeout: Duration,
    max_alloc: usize,
    max_live: usize,
) {
    let path = |kind: &str| {
        let p = artifacts.join(format!("{kind}-{target}-current"));
        CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
    };
    let _ = PATHS.set(Paths {
        crash: path("crash"),
        timeout: path("timeout"),
        oom: path("oom"),
    });
    let _ = epoch();
    for sig in [
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGABRT,
        libc::SIGILL,
        libc::SIGFPE,
    ] {
        // SAFETY: a zeroed sigaction with a valid handler; SA_ONSTACK runs it on the
        // alternate stack std sets up (so a stack overflow is reported too).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_ONSTACK;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    MAX_LIVE.store(max_live, Ordering::Relaxed);
    MAX_ALLOC.store(max_alloc, Ordering::Relaxed);
    let limit_ms = timeout.as_millis() as u64;
    let _ = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(50));
                let start = EXEC_START_MS.load(Ordering::Acquire);
                if start != 0 && now_ms().saturating_sub(start) > limit_ms {
                    die(
                        Kind::Timeout,
                        b"an execution ran past the timeout (a hang)\n",
                    );
                }
            }
        });
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// Marks `input` as the running execution's (until [`end`]).
pub fn begin(input: &[u8]) {
    CURRENT_LEN.store(input.len(), Ordering::Release);
    CURRENT.store(input.as_ptr().cast_mut(), Ordering::Release);
    EXEC_START_MS.store(now_ms(), Ordering::Release);
}

/// The execution returned.
pub fn end() {
    EXEC_START_MS.store(0, Ordering::Release);
    CURRENT.store(std::ptr::null_mut(), Ordering::Release);
}
