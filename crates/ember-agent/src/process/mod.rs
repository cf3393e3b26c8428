//! Processes: preparing, spawning, reaping and pumping one command's I/O.
//!
//! Owns everything between a request's argv and a running child whose exit is known: checks and
//! environment (`prepare`), fork/exec (`spawn`, the one `unsafe` module here), the reaper
//! (`reaper`) and the I/O loop (`pump`). What happens to the output is the caller's (`exec`,
//! `procs`).

pub mod prepare;
pub mod pump;
pub mod reaper;
pub mod spawn;
pub mod terminal;
