//! The loopback interface: brought up when the agent is the guest's init.
//!
//! Owns the two `ioctl`s (SIOCGIFFLAGS, SIOCSIFFLAGS) that set `IFF_UP` on `lo`, which nothing
//! else does in a guest whose init is the agent (commands expect `localhost` to work). Other
//! interfaces are the kernel's (`ip=` on its command line) or the image's business.
#![allow(unsafe_code)] // SIOCGIFFLAGS/SIOCSIFFLAGS: no safe wrapper in nix or rustix.

use std::io;
use std::os::fd::AsRawFd;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// Sets `IFF_UP` on interface `name` (at most 15 bytes); true if it was down.
pub fn bring_up(name: &str) -> io::Result<bool> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq naming the interface; the kernel fills ifru_flags.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS set the union's ifru_flags member.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(false);
    }
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: as above; the kernel reads ifr_name and ifru_flags.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_that_is_up_stays_up_and_bad_names_are_refused() {
        // On a host, lo is up already: nothing changes.
        assert!(!bring_up("lo").unwrap());
        assert!(bring_up("a-name-far-too-long-for-ifnamsiz").is_err());
        assert!(bring_up("no-such-if0").is_err());
    }
}
