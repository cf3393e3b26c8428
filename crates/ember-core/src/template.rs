//! Templates: a guest booted once, checked through its agent, paused and snapshotted, so that
//! every sandbox of the template is a copy-on-write restore of that snapshot.
//!
//! [`TemplateSpec`] is what a caller asks for (which guest, its machine shape, its agent port);
//! [`Template`] is the host's record of one (its stack, its snapshot, whether the build is under
//! way, done or failed). [`TemplateName`] is the key callers use.

use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::VmError;
use crate::id::{SnapshotId, validate_id};
use crate::image_source::ImageSource;
use crate::spec::{MAX_BOOT_ARGS_LEN, validate_path};
use crate::stack::{MAX_STACK_NAME_LEN, StackKey, validate_mem, validate_vcpus};

/// The probe guest's agent port (its agent listens on vsock port 52).
pub const PROBE_AGENT_PORT: u32 = 52;
/// Longest time a template's guest may take from boot to its agent's first answer, ms.
pub const MAX_BOOT_TIMEOUT_MS: u64 = 600_000;
/// Boot-to-agent timeout when the spec gives none, ms.
pub const DEFAULT_BOOT_TIMEOUT_MS: u64 = 30_000;

/// The name of a template: an identifier of at most [`MAX_STACK_NAME_LEN`] bytes (it is also
/// the name of the template's stack).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TemplateName(String);

impl TemplateName {
    /// Validates `name` and wraps it.
    pub fn new(name: impl Into<String>) -> Result<Self, VmError> {
        let name = name.into();
        validate_id("template", &name)?;
        if name.len() > MAX_STACK_NAME_LEN {
            return Err(VmError::invalid_spec(
                "template",
                format!("{name:?} is longer than {MAX_STACK_NAME_LEN} bytes"),
            ));
        }
        Ok(Self(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TemplateName {
    type Error = VmError;
    fn try_from(s: String) -> Result<Self, VmError> {
        Self::new(s)
    }
}

impl From<TemplateName> for String {
    fn from(n: TemplateName) -> String {
        n.0
    }
}

impl std::str::FromStr for TemplateName {
    type Err = VmError;
    fn from_str(s: &str) -> Result<Self, VmError> {
        Self::new(s)
    }
}

impl fmt::Display for TemplateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which guest a template boots.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum GuestSpec {
    /// ember's built-in probe guest (a tiny `no_std` guest with an agent; boots anywhere KVM
    /// does). `boot_args` are appended to the probe's own (tickless, quiet) command line.
    Probe {
        /// Extra kernel command-line arguments.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        boot_args: Option<String>,
    },
    /// A kernel (ELF vmlinux or bzImage) on the host, with an optional initrd and root disk.
    Kernel {
        /// The kernel image.
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        kernel: PathBuf,
        /// An initial ramdisk.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
        initrd: Option<PathBuf>,
        /// The kernel command line.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        boot_args: Option<String>,
        /// The root filesystem image.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
        rootfs: Option<PathBuf>,
        /// Attach the root filesystem read-only.
        #[serde(default)]
        rootfs_read_only: bool,
    },
    /// A Linux image the host builds first (Debian's cloud kernel, an overlay initramfs, a
    /// root filesystem from `source` with ember-agent; cached by content hash, as `ember image
    /// build` makes), then boots as a `kernel` guest; the template records the `kernel` guest
    /// it resolved to. Give it 256 MiB or more (half is the guest's writable overlay at most)
    /// and a boot timeout that fits a Linux boot.
    Image {
        /// Where its root tree comes from.
        source: ImageSource,
    },
}

/// What a caller asks a template to be.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// The guest to boot.
    pub guest: GuestSpec,
    /// vCPUs of every sandbox of the template.
    #[serde(default = "default_vcpus")]
    pub vcpu_count: u8,
    /// Guest memory of every sandbox of the template, MiB.
    #[serde(default = "default_mem")]
    pub mem_size_mib: u32,
    /// The vsock port the guest's agent listens on (the probe's by default).
    #[serde(default = "default_agent_port")]
    pub agent_port: u32,
    /// How long the guest may take from boot to its agent's first answer, ms.
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout_ms: u64,
    /// Give the guest a network interface (`eth0` on the sandbox's TAP `tap0`, MAC
    /// [`GUEST_MAC`], address [`GUEST_IP`]/30 via [`GUEST_GATEWAY`], the same in every clone);
    /// needs a daemon that gives sandboxes networks. The guest is told its address on its
    /// command line (`ember.ip=`, `ember.gw=`): the probe and the init of images from
    /// `ember image build` configure `eth0` from it; another kernel guest must do so itself.
    #[serde(default)]
    pub network: bool,
}

/// The address every networked template's guest has (each sandbox's network translates it).
pub const GUEST_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(172, 16, 0, 2);
/// The guest's gateway (the sandbox network's side of the TAP).
pub const GUEST_GATEWAY: std::net::Ipv4Addr = std::net::Ipv4Addr::new(172, 16, 0, 1);
/// The guest link's prefix length.
pub const GUEST_PREFIX_LEN: u8 = 30;
/// The guest's MAC: locally administered, the octets of [`GUEST_IP`].
pub const GUEST_MAC: [u8; 6] = [0x06, 0x00, 172, 16, 0, 2];
/// The TAP every sandbox network has, which templates' network interfaces name.
pub const GUEST_TAP: &str = "tap0";

fn default_vcpus() -> u8 {
    1
}
fn default_mem() -> u32 {
    128
}
fn default_agent_port() -> u32 {
    PROBE_AGENT_PORT
}
fn default_boot_timeout() -> u64 {
    DEFAULT_BOOT_TIMEOUT_MS
}

impl TemplateSpec {
    /// The probe guest with the default shape.
    pub fn probe() -> Self {
        Self {
            guest: GuestSpec::Probe { boot_args: None },
            vcpu_count: default_vcpus(),
            mem_size_mib: default_mem(),
            agent_port: default_agent_port(),
            boot_timeout_ms: default_boot_timeout(),
            network: false,
        }
    }

    /// Checks every field, naming the first one at fault (`spec.<field>`).
    pub fn validate(&self) -> Result<(), VmError> {
        validate_vcpus("spec.vcpu_count", self.vcpu_count)?;
        validate_mem("spec.mem_size_mib", self.mem_size_mib)?;
        if self.agent_port == 0 || self.agent_port == u32::MAX {
            return Err(VmError::invalid_spec(
                "spec.agent_port",
                format!(
                    "{} is not a vsock port (1 to {})",
                    self.agent_port,
                    u32::MAX - 1
                ),
            ));
        }
        if self.boot_timeout_ms == 0 || self.boot_timeout_ms > MAX_BOOT_TIMEOUT_MS {
            return Err(VmError::invalid_spec(
                "spec.boot_timeout_ms",
                format!(
                    "{} is out of range; 1 to {MAX_BOOT_TIMEOUT_MS} ms are allowed",
                    self.boot_timeout_ms
                ),
            ));
        }
        let args = match &self.guest {
            GuestSpec::Probe { boot_args } => boot_args,
            GuestSpec::Image { source } => {
                source.clone().normalize("spec.guest.source.")?;
                &None
            }
            GuestSpec::Kernel {
                kernel,
                initrd,
                boot_args,
                rootfs,
                ..
            } => {
                validate_path("spec.guest.kernel", kernel)?;
                if !kernel.is_absolute() {
                    return Err(VmError::invalid_spec(
                        "spec.guest.kernel",
                        format!("{} must be an absolute path", kernel.display()),
                    ));
                }
                for (field, p) in [("spec.guest.initrd", initrd), ("spec.guest.rootfs", rootfs)] {
                    if let Some(p) = p {
                        validate_path(field, p)?;
                        if !p.is_absolute() {
                            return Err(VmError::invalid_spec(
                                field,
                                format!("{} must be an absolute path", p.display()),
                            ));
                        }
                    }
                }
                boot_args
            }
        };
        if let Some(args) = args
            && (args.len() > MAX_BOOT_ARGS_LEN
                || args.bytes().any(|b| !(b.is_ascii_graphic() || b == b' ')))
        {
            return Err(VmError::invalid_spec(
                "spec.guest.boot_args",
                format!("must be at most {MAX_BOOT_ARGS_LEN} bytes of printable ASCII"),
            ));
        }
        Ok(())
    }
}

/// Where a template's build is.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateState {
    /// Booting, waiting for the agent, or snapshotting.
    Building,
    /// Its snapshot exists: sandboxes can be made from it.
    Ready,
    /// The build failed (`error` says why); delete it and build again.
    Failed,
}

impl TemplateState {
    /// The word used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            TemplateState::Building => "building",
            TemplateState::Ready => "ready",
            TemplateState::Failed => "failed",
        }
    }
}

impl fmt::Display for TemplateState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long a template's build took.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateBuild {
    /// From the boot to the agent's first Health answer, ms.
    pub boot_to_agent_ms: f64,
    /// Pause and snapshot, ms.
    pub snapshot_ms: f64,
}

/// A template as its host records it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Its name.
    pub name: TemplateName,
    /// What it boots.
    pub spec: TemplateSpec,
    /// The stack its sandboxes and pool belong to (name, build version, shape).
    pub stack: StackKey,
    /// Where its build is.
    pub state: TemplateState,
    /// Its snapshot, once built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotId>,
    /// Why the build failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the build took, once built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<TemplateBuild>,
    /// When the build was asked for.
    #[serde(with = "crate::view::unix_millis")]
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub created_at: SystemTime,
}

impl Template {
    /// Checks the record: its spec, and that its stack matches its name and shape.
    pub fn validate(&self) -> Result<(), VmError> {
        self.spec.validate()?;
        if self.stack.name() != self.name.as_str()
            || self.stack.vcpu_count() != self.spec.vcpu_count
            || self.stack.mem_size_mib() != self.spec.mem_size_mib
        {
            return Err(VmError::invalid_spec(
                "template.stack",
                format!(
                    "stack {} does not match template {} ({} vCPU, {} MiB)",
                    self.stack, self.name, self.spec.vcpu_count, self.spec.mem_size_mib
                ),
            ));
        }
        if self.state == TemplateState::Ready && self.snapshot.is_none() {
            return Err(VmError::invalid_spec(
                "template.snapshot",
                "a ready template must name its snapshot",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_specs_are_checked() {
        assert!(TemplateName::new("probe").is_ok());
        assert!(TemplateName::new("a/b").is_err());
        assert!(TemplateName::new("x".repeat(49)).is_err());
        TemplateSpec::probe().validate().unwrap();
        let spec: TemplateSpec =
            serde_json::from_str(r#"{"guest":{"kind":"probe"},"mem_size_mib":256}"#).unwrap();
        assert_eq!(spec.mem_size_mib, 256);
        assert_eq!(spec.agent_port, PROBE_AGENT_PORT);
        let err = serde_json::from_str::<TemplateSpec>(r#"{"guest":{"kind":"vm"}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("vm"), "{err}");
        let mut bad = TemplateSpec::probe();
        bad.guest = GuestSpec::Kernel {
            kernel: "vmlinux".into(),
            initrd: None,
            boot_args: None,
            rootfs: None,
            rootfs_read_only: false,
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("spec.guest.kernel"), "{err}");
        let mut bad = TemplateSpec::probe();
        bad.agent_port = 0;
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("agent_port")
        );
    }

    #[test]
    fn a_template_matches_its_stack() {
        let t = Template {
            name: TemplateName::new("probe").unwrap(),
            spec: TemplateSpec::probe(),
            stack: StackKey::new("probe", "v1", 1, 128).unwrap(),
            state: TemplateState::Ready,
            snapshot: Some(SnapshotId::new("tpl-probe-v1").unwrap()),
            error: None,
            build: None,
            created_at: SystemTime::UNIX_EPOCH,
        };
        t.validate().unwrap();
        let mut bad = t.clone();
        bad.stack = StackKey::new("other", "v1", 1, 128).unwrap();
        assert!(bad.validate().is_err());
        let mut bad = t;
        bad.snapshot = None;
        assert!(bad.validate().unwrap_err().to_string().contains("snapshot"));
    }
}
