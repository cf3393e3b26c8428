//! Creating a persistent TAP device: the one place ember-net needs `unsafe` (the TUN ioctls).
//! Creating a TUN/TAP device through rtnetlink is refused by the kernel ("tun/tap creation via
//! rtnetlink is not supported"), so this is the `ip tuntap add` sequence: open `/dev/net/tun`,
//! `TUNSETIFF`, `TUNSETOWNER`, `TUNSETGROUP`, `TUNSETPERSIST`, close.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

/// `struct ifreq` as the TUN ioctls read it: the name, then the flags (a `short`), padded to 40
/// bytes.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates the persistent TAP `name` in the calling thread's network namespace (the namespace
/// `/dev/net/tun` was opened in), owned by `owner` (uid, gid; `None`: root only). Its flags are
/// the ones ember-vmm attaches with: `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`.
pub(crate) fn create_persistent_tap(name: &str, owner: Option<(u32, u32)>) -> io::Result<()> {
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let fd = tun.as_raw_fd();
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: `fd` is an open /dev/net/tun descriptor owned by `tun`, alive for this call;
    // TUNSETIFF reads and writes a `struct ifreq`, and `req` is a properly laid out, writable
    // 40-byte `ifreq` (name then flags) that outlives the call.
    check(unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut req as *mut IfReqFlags) })?;
    if let Some((uid, gid)) = owner {
        // SAFETY: TUNSETOWNER takes its argument by value (an unsigned long uid); `fd` is valid.
        check(unsafe { libc::ioctl(fd, libc::TUNSETOWNER, libc::c_ulong::from(uid)) })?;
        // SAFETY: TUNSETGROUP takes its argument by value (an unsigned long gid); `fd` is valid.
        check(unsafe { libc::ioctl(fd, libc::TUNSETGROUP, libc::c_ulong::from(gid)) })?;
    }
    // SAFETY: TUNSETPERSIST takes its argument by value (1: keep the device after close); `fd`
    // is valid.
    check(unsafe { libc::ioctl(fd, libc::TUNSETPERSIST, 1 as libc::c_ulong) })?;
    Ok(())
}
