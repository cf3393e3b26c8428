//! Waiting for another process's write lock: short, jittered polls until a per-call deadline.
//!
//! SQLite's own busy timeout backs off to 100 ms sleeps, so a writer that arrives while another
//! process writes steadily can sleep through every gap and starve for hundreds of milliseconds.
//! This handler polls every 0.2 to 0.7 ms instead, which lets two writers take turns, and still
//! gives up at the deadline (then the call fails with [`StoreError::Busy`](crate::StoreError)).
//!
//! SQLite calls the handler on the thread running the statement, so the deadline is a thread-local
//! set around each store call by [`Deadline::start`]; without one (a connection being dropped),
//! the handler does not wait at all.

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::Connection;

thread_local! {
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Makes `conn` use [`on_busy`] instead of SQLite's backoff.
pub(crate) fn install(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.busy_handler(Some(on_busy))
}

/// The deadline of the current store call on this thread; restored when dropped (also on panic).
pub(crate) struct Deadline {
    previous: Option<Instant>,
}

impl Deadline {
    /// Lets lock waits on this thread last until `timeout` from now.
    pub(crate) fn start(timeout: Duration) -> Deadline {
        let previous = DEADLINE.replace(Some(Instant::now() + timeout));
        Deadline { previous }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        DEADLINE.set(self.previous);
    }
}

/// SQLite's busy callback: `true` to retry, `false` to give up with `SQLITE_BUSY`.
fn on_busy(_attempt: i32) -> bool {
    let Some(deadline) = DEADLINE.get() else {
        return false;
    };
    let now = Instant::now();
    if now >= deadline {
        return false;
    }
    // Jitter from the clock's low bits keeps two pollers from waking in lockstep.
    let jitter = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 500_000);
    let pause = Duration::from_nanos(200_000 + u64::from(jitter));
    std::thread::sleep(pause.min(deadline - now));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::TransactionBehavior;

    #[test]
    fn a_second_writer_waits_until_the_deadline_then_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.db");
        let mut holder = Connection::open(&path).unwrap();
        holder.pragma_update(None, "journal_mode", "WAL").unwrap();
        let mut waiter = Connection::open(&path).unwrap();
        install(&mut waiter).unwrap();
        let _lock = holder
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();

        let started = Instant::now();
        let err = {
            let _d = Deadline::start(Duration::from_millis(60));
            waiter
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map(|_| ())
                .unwrap_err()
        };
        let waited = started.elapsed();
        assert_eq!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy)
        );
        assert!(waited >= Duration::from_millis(60), "{waited:?}");
        assert!(waited < Duration::from_millis(500), "{waited:?}");

        // Without a deadline the handler does not wait.
        let started = Instant::now();
        assert!(
            waiter
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .is_err()
        );
        assert!(started.elapsed() < Duration::from_millis(20));
        assert!(DEADLINE.get().is_none(), "the deadline was restored");
    }
}
