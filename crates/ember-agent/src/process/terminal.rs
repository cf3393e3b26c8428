//! Pseudo-terminals for background processes started with a PTY.
//!
//! Owns opening a terminal pair (the agent keeps the master, the command gets the slave as
//! stdin, stdout and stderr and as its controlling terminal, set up by `spawn`) and setting its
//! size. Safe wrappers only (rustix). Reading and writing the master is the pump's and the
//! process table's.
#![forbid(unsafe_code)]

use std::os::fd::{AsFd, OwnedFd};

use ember_agent_proto::TermSize;
use rustix::pty::{OpenptFlags, grantpt, ioctl_tiocgptpeer, openpt, unlockpt};
use rustix::termios::{Winsize, tcsetwinsize};

/// A new terminal pair.
#[derive(Debug)]
pub struct Pty {
    /// The agent's end: the command's output is read here, its input written here.
    pub master: OwnedFd,
    /// The command's end.
    pub slave: OwnedFd,
}

/// Opens a terminal pair of `size`.
pub fn open(size: TermSize) -> std::io::Result<Pty> {
    let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
    let master = openpt(flags)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let slave = ioctl_tiocgptpeer(&master, flags)?;
    resize(&master, size)?;
    Ok(Pty { master, slave })
}

/// Sets the terminal's size (the command gets SIGWINCH).
pub fn resize(master: &impl AsFd, size: TermSize) -> std::io::Result<()> {
    tcsetwinsize(
        master.as_fd(),
        Winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_opens_with_its_size() {
        let pty = open(TermSize {
            rows: 33,
            cols: 101,
        })
        .unwrap();
        let size = rustix::termios::tcgetwinsize(&pty.slave).unwrap();
        assert_eq!((size.ws_row, size.ws_col), (33, 101));
        resize(&pty.master, TermSize { rows: 5, cols: 7 }).unwrap();
        let size = rustix::termios::tcgetwinsize(&pty.slave).unwrap();
        assert_eq!((size.ws_row, size.ws_col), (5, 7));
    }
}
