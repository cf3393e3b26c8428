//! [`VmSpec`] and its parts: what a caller asks a provider to create — a fresh boot from a kernel,
//! or a restore from a snapshot — validated with errors that name the offending field.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::VmError;
use crate::id::validate_id;
use crate::rate_limiter::RateLimiter;
use crate::snapshot::SnapshotRef;
use crate::stack::{validate_mem, validate_vcpus};

/// Longest kernel command line accepted, in bytes.
pub const MAX_BOOT_ARGS_LEN: usize = 4096;
/// Longest Unix socket path accepted, in bytes (`sun_path` holds 108 including the NUL).
pub const MAX_UDS_PATH_LEN: usize = 107;
/// Longest Linux network interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;
/// Most drives or network interfaces per VM.
pub const MAX_DEVICES: usize = 16;
/// Lowest guest vsock CID a VM may have (0-2 are reserved by the vsock spec).
pub const MIN_GUEST_CID: u32 = 3;

/// Everything needed to create a microVM, either by booting a kernel or by restoring a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// Guest kernel (ELF vmlinux or bzImage) for a fresh boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk for a fresh boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Root filesystem image, attached as the root block device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<PathBuf>,
    /// Attach the root filesystem read-only.
    #[serde(default)]
    pub rootfs_read_only: bool,
    /// Number of vCPUs.
    #[serde(default = "default_vcpus")]
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    #[serde(default = "default_mem")]
    pub mem_size_mib: u32,
    /// Block devices besides the root filesystem.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drives: Vec<DriveSpec>,
    /// Network interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_interfaces: Vec<NetworkInterface>,
    /// The vsock device (host side is a Unix socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockSpec>,
    /// Restore this snapshot instead of booting; the snapshot carries the kernel, devices and
    /// machine shape, so the boot fields above must be left empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<SnapshotRef>,
}

fn default_vcpus() -> u8 {
    1
}

fn default_mem() -> u32 {
    128
}

impl Default for VmSpec {
    fn default() -> Self {
        Self {
            kernel: None,
            initrd: None,
            boot_args: None,
            rootfs: None,
            rootfs_read_only: false,
            vcpu_count: default_vcpus(),
            mem_size_mib: default_mem(),
            drives: Vec::new(),
            network_interfaces: Vec::new(),
            vsock: None,
            restore_from: None,
        }
    }
}

impl VmSpec {
    /// A spec that restores `snapshot` with the machine shape of its stack (if it has one).
    pub fn restore(snapshot: SnapshotRef) -> Self {
        let (vcpu_count, mem_size_mib) = snapshot
            .stack
            .as_ref()
            .map(|s| (s.vcpu_count(), s.mem_size_mib()))
            .unwrap_or((default_vcpus(), default_mem()));
        Self {
            vcpu_count,
            mem_size_mib,
            restore_from: Some(snapshot),
            ..Self::default()
        }
    }

    /// Checks every field; the error names the first offending one.
    ///
    /// A spec with neither `kernel` nor `restore_from` is valid here (it describes an empty
    /// machine, which the in-memory provider accepts); providers that run real guests reject it.
    pub fn validate(&self) -> Result<(), VmError> {
        validate_vcpus("vcpu_count", self.vcpu_count)?;
        validate_mem("mem_size_mib", self.mem_size_mib)?;
        if let Some(args) = &self.boot_args {
            if args.len() > MAX_BOOT_ARGS_LEN {
                return Err(VmError::invalid_spec(
                    "boot_args",
                    format!(
                        "is {} bytes; at most {MAX_BOOT_ARGS_LEN} are allowed",
                        args.len()
                    ),
                ));
            }
            if args.contains('\0') {
                return Err(VmError::invalid_spec(
                    "boot_args",
                    "must not contain NUL bytes",
                ));
            }
        }
        for (field, path) in [
            ("kernel", &self.kernel),
            ("initrd", &self.initrd),
            ("rootfs", &self.rootfs),
        ] {
            if let Some(p) = path {
                validate_path(field, p)?;
            }
        }
        if self.initrd.is_some() && self.kernel.is_none() && self.restore_from.is_none() {
            return Err(VmError::invalid_spec("initrd", "is set but no kernel is"));
        }
        if self.drives.len() > MAX_DEVICES {
            return Err(VmError::invalid_spec(
                "drives",
                format!(
                    "{} drives; at most {MAX_DEVICES} are allowed",
                    self.drives.len()
                ),
            ));
        }
        let mut drive_ids = HashSet::new();
        for (i, d) in self.drives.iter().enumerate() {
            d.validate(&format!("drives[{i}]"))?;
            if !drive_ids.insert(d.drive_id.as_str()) {
                return Err(VmError::invalid_spec(
                    format!("drives[{i}].drive_id"),
                    format!("{:?} is used by an earlier drive", d.drive_id),
                ));
            }
            if self.rootfs.is_some() && d.is_root_device {
                return Err(VmError::invalid_spec(
                    format!("drives[{i}].is_root_device"),
                    "rootfs is already the root device",
                ));
            }
        }
        if self.drives.iter().filter(|d| d.is_root_device).count() > 1 {
            return Err(VmError::invalid_spec(
                "drives",
                "more than one drive is the root device",
            ));
        }
        if self.network_interfaces.len() > MAX_DEVICES {
            return Err(VmError::invalid_spec(
                "network_interfaces",
                format!("at most {MAX_DEVICES} interfaces are allowed"),
            ));
        }
        let mut iface_ids = HashSet::new();
        let mut macs = HashSet::new();
        let mut taps = HashSet::new();
        for (i, n) in self.network_interfaces.iter().enumerate() {
            let field = format!("network_interfaces[{i}]");
            n.validate(&field)?;
            if !iface_ids.insert(n.iface_id.as_str()) {
                return Err(VmError::invalid_spec(
                    format!("{field}.iface_id"),
                    format!("{:?} is used by an earlier interface", n.iface_id),
                ));
            }
            if !taps.insert(n.host_dev_name.as_str()) {
                return Err(VmError::invalid_spec(
                    format!("{field}.host_dev_name"),
                    format!("{:?} is used by an earlier interface", n.host_dev_name),
                ));
            }
            if let Some(mac) = n.guest_mac
                && !macs.insert(mac)
            {
                return Err(VmError::invalid_spec(
                    format!("{field}.guest_mac"),
                    format!("{mac} is used by an earlier interface"),
                ));
            }
        }
        if let Some(v) = &self.vsock {
            v.validate("vsock")?;
        }
        if let Some(snap) = &self.restore_from {
            self.validate_restore(snap)?;
        }
        Ok(())
    }

    fn validate_restore(&self, snap: &SnapshotRef) -> Result<(), VmError> {
        snap.validate()?;
        let boot_fields = [
            ("kernel", self.kernel.is_some()),
            ("initrd", self.initrd.is_some()),
            ("boot_args", self.boot_args.is_some()),
            ("rootfs", self.rootfs.is_some()),
            ("drives", !self.drives.is_empty()),
            ("network_interfaces", !self.network_interfaces.is_empty()),
            ("vsock", self.vsock.is_some()),
        ];
        if let Some((field, _)) = boot_fields.iter().find(|(_, set)| *set) {
            return Err(VmError::invalid_spec(
                *field,
                "must be empty when restore_from is set: the snapshot carries the machine; use \
                 restore_from.network_overrides / vsock_override to change its network or vsock",
            ));
        }
        if let Some(stack) = &snap.stack
            && (stack.vcpu_count() != self.vcpu_count || stack.mem_size_mib() != self.mem_size_mib)
        {
            return Err(VmError::invalid_spec(
                "restore_from.stack",
                format!(
                    "the snapshot's stack is {} vCPU / {} MiB but the spec asks for {} vCPU / {} MiB",
                    stack.vcpu_count(),
                    stack.mem_size_mib(),
                    self.vcpu_count,
                    self.mem_size_mib
                ),
            ));
        }
        Ok(())
    }
}

/// Checks that a host path is usable in a spec: non-empty and free of NUL bytes.
pub fn validate_path(field: &str, path: &Path) -> Result<(), VmError> {
    let text = path.as_os_str().as_encoded_bytes();
    if text.is_empty() {
        return Err(VmError::invalid_spec(field, "path must not be empty"));
    }
    if text.contains(&0) {
        return Err(VmError::invalid_spec(
            field,
            "path must not contain NUL bytes",
        ));
    }
    Ok(())
}

/// Checks a Unix socket path: a valid path short enough for `sun_path`.
pub fn validate_uds_path(field: &str, path: &Path) -> Result<(), VmError> {
    validate_path(field, path)?;
    let len = path.as_os_str().len();
    if len > MAX_UDS_PATH_LEN {
        return Err(VmError::invalid_spec(
            field,
            format!("{len} bytes is too long for a Unix socket path (at most {MAX_UDS_PATH_LEN})"),
        ));
    }
    Ok(())
}

/// Checks a Linux network device name (a TAP device).
pub fn validate_ifname(field: &str, name: &str) -> Result<(), VmError> {
    if name.is_empty() || name.len() > MAX_IFNAME_LEN {
        return Err(VmError::invalid_spec(
            field,
            format!("{name:?} must be 1 to {MAX_IFNAME_LEN} bytes long"),
        ));
    }
    if name == "." || name == ".." {
        return Err(VmError::invalid_spec(
            field,
            format!("{name:?} is not a device name"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(VmError::invalid_spec(
            field,
            format!(
                "{name:?} contains {c:?}; only ASCII letters, digits, '_', '-' and '.' are allowed"
            ),
        ));
    }
    Ok(())
}

/// A block device backed by a host file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveSpec {
    /// Device id, unique within the VM.
    pub drive_id: String,
    /// Backing file on the host.
    pub path_on_host: PathBuf,
    /// Whether this is the guest's root device.
    #[serde(default)]
    pub is_root_device: bool,
    /// Attach read-only.
    #[serde(default)]
    pub is_read_only: bool,
    /// Optional I/O limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

impl DriveSpec {
    /// Checks the drive; `field` is its path for the error.
    pub fn validate(&self, field: &str) -> Result<(), VmError> {
        validate_id(&format!("{field}.drive_id"), &self.drive_id)?;
        validate_path(&format!("{field}.path_on_host"), &self.path_on_host)?;
        if let Some(rl) = &self.rate_limiter {
            rl.validate(&format!("{field}.rate_limiter"))?;
        }
        Ok(())
    }
}

/// A virtio-net interface backed by a host TAP device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// Interface id, unique within the VM.
    pub iface_id: String,
    /// Host TAP device name.
    pub host_dev_name: String,
    /// Guest MAC address; the VMM picks one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<MacAddr>,
    /// Limits on guest receive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Limits on guest transmit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

impl NetworkInterface {
    /// Checks the interface; `field` is its path for the error.
    pub fn validate(&self, field: &str) -> Result<(), VmError> {
        validate_id(&format!("{field}.iface_id"), &self.iface_id)?;
        validate_ifname(&format!("{field}.host_dev_name"), &self.host_dev_name)?;
        if let Some(rl) = &self.rx_rate_limiter {
            rl.validate(&format!("{field}.rx_rate_limiter"))?;
        }
        if let Some(rl) = &self.tx_rate_limiter {
            rl.validate(&format!("{field}.tx_rate_limiter"))?;
        }
        Ok(())
    }
}

/// The virtio-vsock device: guest CID and the host Unix socket it is reached through
/// (Firecracker's hybrid vsock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockSpec {
    /// The guest's context id (3 or more).
    pub guest_cid: u32,
    /// Host Unix socket; host-initiated connections go here, guest-initiated ones to
    /// `<uds_path>_<port>`.
    pub uds_path: PathBuf,
}

impl VsockSpec {
    /// Checks the device; `field` is its path for the error.
    pub fn validate(&self, field: &str) -> Result<(), VmError> {
        if self.guest_cid < MIN_GUEST_CID || self.guest_cid == u32::MAX {
            return Err(VmError::invalid_spec(
                format!("{field}.guest_cid"),
                format!(
                    "{} is reserved; use {MIN_GUEST_CID} to {}",
                    self.guest_cid,
                    u32::MAX - 1
                ),
            ));
        }
        validate_uds_path(&format!("{field}.uds_path"), &self.uds_path)
    }
}

/// A unicast Ethernet MAC address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    /// Builds a MAC from bytes; rejects multicast addresses (low bit of the first octet set),
    /// which no guest interface may own.
    pub fn from_bytes(bytes: [u8; 6]) -> Result<Self, VmError> {
        if bytes[0] & 1 != 0 {
            return Err(VmError::invalid_spec(
                "guest_mac",
                format!("{} is a multicast address", MacAddr(bytes)),
            ));
        }
        Ok(Self(bytes))
    }

    /// The six octets.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for MacAddr {
    type Err = VmError;
    fn from_str(s: &str) -> Result<Self, VmError> {
        let bad = || {
            VmError::invalid_spec(
                "guest_mac",
                format!("{s:?} is not a MAC address like 06:00:ac:10:00:02"),
            )
        };
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut bytes {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        MacAddr::from_bytes(bytes)
    }
}

impl TryFrom<String> for MacAddr {
    type Error = VmError;
    fn try_from(s: String) -> Result<Self, VmError> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SnapshotId;
    use crate::snapshot::{NetworkOverride, SnapshotRef};
    use crate::stack::StackKey;

    fn iface(id: &str, tap: &str) -> NetworkInterface {
        NetworkInterface {
            iface_id: id.into(),
            host_dev_name: tap.into(),
            guest_mac: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        }
    }

    fn err_of(spec: &VmSpec) -> String {
        spec.validate().unwrap_err().to_string()
    }

    #[test]
    fn default_spec_is_valid() {
        VmSpec::default().validate().unwrap();
    }

    #[test]
    fn boot_spec_errors_name_fields() {
        let spec = VmSpec {
            vcpu_count: 0,
            ..VmSpec::default()
        };
        assert!(err_of(&spec).contains("vcpu_count"));
        let spec = VmSpec {
            network_interfaces: vec![iface("eth0", "tap0"), iface("eth0", "tap1")],
            ..VmSpec::default()
        };
        assert!(err_of(&spec).contains("network_interfaces[1].iface_id"));
        let spec = VmSpec {
            network_interfaces: vec![iface("eth0", "a-name-far-too-long")],
            ..VmSpec::default()
        };
        assert!(err_of(&spec).contains("network_interfaces[0].host_dev_name"));
        let spec = VmSpec {
            vsock: Some(VsockSpec {
                guest_cid: 2,
                uds_path: "/tmp/v.sock".into(),
            }),
            ..VmSpec::default()
        };
        assert!(err_of(&spec).contains("vsock.guest_cid"));
        let spec = VmSpec {
            vsock: Some(VsockSpec {
                guest_cid: 3,
                uds_path: PathBuf::from("/".repeat(200)),
            }),
            ..VmSpec::default()
        };
        assert!(err_of(&spec).contains("vsock.uds_path"));
        let spec = VmSpec {
            rootfs: Some("/r.ext4".into()),
            drives: vec![DriveSpec {
                drive_id: "root".into(),
                path_on_host: "/x".into(),
                is_root_device: true,
                is_read_only: false,
                rate_limiter: None,
            }],
            ..VmSpec::default()
        };
        assert!(err_of(&spec).contains("drives[0].is_root_device"));
        let spec = VmSpec {
            boot_args: Some("a\0b".into()),
            ..VmSpec::default()
        };
        assert!(err_of(&spec).contains("boot_args"));
    }

    #[test]
    fn restore_spec_rejects_boot_fields_and_shape_mismatch() {
        let stack = StackKey::new("alpha", "1", 2, 256).unwrap();
        let snap = SnapshotRef::new(
            SnapshotId::new("s1").unwrap(),
            Some(stack),
            "/snap/state".into(),
            "/snap/mem".into(),
        );
        let mut spec = VmSpec::restore(snap.clone());
        assert_eq!((spec.vcpu_count, spec.mem_size_mib), (2, 256));
        spec.validate().unwrap();
        spec.kernel = Some("/vmlinux".into());
        assert!(err_of(&spec).contains("kernel"));
        let mut spec = VmSpec::restore(snap.clone());
        spec.mem_size_mib = 128;
        assert!(err_of(&spec).contains("restore_from.stack"));
        let mut snap = snap;
        snap.network_overrides.push(NetworkOverride {
            iface_id: "eth0".into(),
            host_dev_name: "bad/name".into(),
        });
        let spec = VmSpec::restore(snap);
        assert!(err_of(&spec).contains("network_overrides[0].host_dev_name"));
    }

    #[test]
    fn mac_parsing() {
        let mac: MacAddr = "06:00:AC:10:00:02".parse().unwrap();
        assert_eq!(mac.to_string(), "06:00:ac:10:00:02");
        for bad in [
            "06:00:ac:10:00",
            "06:00:ac:10:00:02:03",
            "zz:00:00:00:00:00",
            "6:0:0:0:0:0",
        ] {
            let err = bad.parse::<MacAddr>().unwrap_err().to_string();
            assert!(err.contains("guest_mac"), "{err}");
        }
        assert!("01:00:5e:00:00:01".parse::<MacAddr>().is_err(), "multicast");
        assert_eq!(
            serde_json::to_string(&mac).unwrap(),
            "\"06:00:ac:10:00:02\""
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<VmSpec>(r#"{"kernal":"/k"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("kernal"), "{err}");
    }
}
