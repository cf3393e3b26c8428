//! A host TAP device opened by name through `/dev/net/tun`, as virtio-net's backend:
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a 12-byte virtio-net header (the virtio 1.x layout
//! with `num_buffers`), no offloads, non-blocking.
//!
//! The interface must already exist (created by the host: `ip tuntap add <name> mode tap`,
//! or by whoever hands the VM its network); attaching to a missing name would otherwise
//! create a fresh, unconnected TAP. One frame per `read`/`write`. The ioctls are the only
//! `unsafe` here.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::errno::Errno;

/// Bytes of the virtio-net header the TAP adds to (and expects on) every frame.
pub const VNET_HDR_LEN: usize = 12;

/// Errors opening a TAP.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// Empty, too long, or not a valid interface name.
    #[error("invalid TAP device name {0:?}")]
    InvalidName(String),
    /// No interface of that name in this network namespace.
    #[error("no network interface named {0:?} (create the TAP device first)")]
    NotFound(String),
    /// The interface exists but is not a TAP device.
    #[error("{0:?} is not a TAP device")]
    NotTap(String),
    /// Another process holds the TAP.
    #[error("TAP device {0:?} is busy (already attached to another process)")]
    Busy(String),
    /// Any other failure.
    #[error("TAP device {name:?}: {what}: {source}")]
    Io {
        /// Interface name.
        name: String,
        /// What was being done.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
}

/// `struct ifreq` with the name and the flags member (40 bytes on x86_64, fully
/// initialized so the kernel never reads uninitialized bytes).
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TAP queue.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens the existing TAP interface `name`.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', '\0']) {
            return Err(TapError::InvalidName(name.to_string()));
        }
        let io_err = |what: &'static str| {
            let name = name.to_string();
            move |source: io::Error| TapError::Io { name, what, source }
        };
        match nix::net::if_::if_nametoindex(name) {
            Ok(_) => {}
            Err(Errno::ENODEV) => return Err(TapError::NotFound(name.to_string())),
            Err(e) => return Err(io_err("looking up the interface")(e.into())),
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(io_err("opening /dev/net/tun"))?;
        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is a fully initialized,
        // correctly sized `repr(C)` equivalent that outlives the call, and `file` is an
        // open tun descriptor.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EINVAL) => TapError::NotTap(name.to_string()),
                Some(libc::EBUSY) => TapError::Busy(name.to_string()),
                _ => io_err("TUNSETIFF")(e),
            });
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which is valid for
        // the call.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if ret < 0 {
            return Err(io_err("TUNSETVNETHDRSZ")(io::Error::last_os_error()));
        }
        // SAFETY: TUNSETOFFLOAD takes its flags by value; no memory is passed.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) };
        if ret < 0 {
            return Err(io_err("TUNSETOFFLOAD")(io::Error::last_os_error()));
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame (virtio-net header first); `WouldBlock` when none is queued.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        nix::unistd::read(&self.file, buf).map_err(io::Error::from)
    }

    /// Writes one frame (virtio-net header first).
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        nix::unistd::write(&self.file, frame).map_err(io::Error::from)
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}
