//! The VMM's side of configuration: the whole machine it holds ([`VmConfig`], built from
//! ember-fc-api's per-resource types) and what ember-vmm checks beyond the API.
//!
//! The request bodies and their API-level checks live in `ember_fc_api`; each module here adds
//! what this VMM supports and what the host must offer, calling the API check first:
//! [`machine`] (memory range, no SMT, dirty tracking, huge pages or CPU templates),
//! [`boot_source`] (the kernel file, the command line's size and characters, the initrd file),
//! [`drive`] (no vhost-user, synchronous I/O, an existing backing file) and [`snapshot`]
//! (full snapshots and file-backed memory only). Interfaces, vsock and entropy need nothing
//! beyond the API's checks. [`from_json`] parses a body naming the field on error.
//!
//! [`VmConfig`] is the body of `GET /vm/config`, the `--config-file` format and the
//! configuration section of a snapshot. Validation errors are [`FieldError`]s; the controller
//! turns them into `fault_message`s.

pub mod boot_source;
pub mod drive;
pub mod machine;
pub mod snapshot;

use ember_fc_api::{BootSource, Drive, EntropyDevice, FieldError, MachineConfiguration};
use ember_fc_api::{NetworkInterface, Vsock};
use serde::{Deserialize, Serialize};

pub use self::boot_source::validate_boot_source;
pub use self::drive::validate_drive;
pub use self::machine::{default_machine, validate_machine};
pub use self::snapshot::{validate_snapshot_create, validate_snapshot_load};

/// Parses a JSON body into `T`, naming the field on error (`machine-config.vcpu_count: ...`).
pub fn from_json<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, FieldError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(FieldError::new(what, "missing request body"));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() {
            what.to_string()
        } else {
            format!("{what}.{path}")
        };
        FieldError::new(field, e.into_inner().to_string())
    })
}

/// The whole machine configuration (Firecracker's `FullVmConfiguration`: `GET /vm/config`,
/// `--config-file`). The sections ember-vmm does not implement are accepted only when absent
/// or null. Its machine configuration has Firecracker's defaults written out
/// ([`MachineConfiguration::with_defaults`]), so reports show them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Kernel and command line.
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSource>,
    /// vCPUs and memory.
    #[serde(rename = "machine-config", default = "default_machine")]
    pub machine_config: MachineConfiguration,
    /// Block devices.
    #[serde(default)]
    pub drives: Vec<Drive>,
    /// Network interfaces.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    /// The vsock device.
    #[serde(default)]
    pub vsock: Option<Vsock>,
    /// Not supported (must be absent or null).
    #[serde(default)]
    pub balloon: Option<serde_json::Value>,
    /// Not supported (must be absent or null).
    #[serde(default)]
    pub logger: Option<serde_json::Value>,
    /// Not supported (must be absent or null).
    #[serde(default)]
    pub metrics: Option<serde_json::Value>,
    /// Not supported (must be absent or null).
    #[serde(rename = "mmds-config", default)]
    pub mmds_config: Option<serde_json::Value>,
    /// The entropy device (virtio-rng).
    #[serde(default)]
    pub entropy: Option<EntropyDevice>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            boot_source: None,
            machine_config: default_machine(),
            drives: Vec::new(),
            network_interfaces: Vec::new(),
            vsock: None,
            balloon: None,
            logger: None,
            metrics: None,
            mmds_config: None,
            entropy: None,
        }
    }
}

impl VmConfig {
    /// Parses and validates a configuration file's contents.
    pub fn from_file_contents(body: &[u8]) -> Result<VmConfig, FieldError> {
        let cfg: VmConfig = from_json(body, "config")?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Validates every section (the API's checks and ember-vmm's), and the whole: unique ids,
    /// at most one root drive.
    pub fn validate(&self) -> Result<(), FieldError> {
        self.validate_sections(true)
    }

    /// Every check of [`VmConfig::validate`] but the boot source's: a snapshot's
    /// configuration, whose kernel is not read again on restore.
    pub fn validate_for_restore(&self) -> Result<(), FieldError> {
        self.validate_sections(false)
    }

    fn validate_sections(&self, boot_source: bool) -> Result<(), FieldError> {
        for (name, v) in [
            ("balloon", &self.balloon),
            ("logger", &self.logger),
            ("metrics", &self.metrics),
            ("mmds-config", &self.mmds_config),
        ] {
            if v.is_some() {
                return Err(FieldError::new(name, "not supported by ember-vmm"));
            }
        }
        if boot_source && let Some(b) = &self.boot_source {
            validate_boot_source(b)?;
        }
        validate_machine(&self.machine_config)?;
        let mut roots = 0;
        for (i, d) in self.drives.iter().enumerate() {
            validate_drive(d, &format!("drives[{i}]"), None)?;
            roots += usize::from(d.is_root_device);
            if self.drives[..i].iter().any(|o| o.drive_id == d.drive_id) {
                return Err(FieldError::new(
                    format!("drives[{i}].drive_id"),
                    "duplicate drive id",
                ));
            }
        }
        if roots > 1 {
            return Err(FieldError::new(
                "drives",
                "only one drive can be the root device",
            ));
        }
        for (i, n) in self.network_interfaces.iter().enumerate() {
            n.validate(&format!("network-interfaces[{i}]"), None)?;
            if self.network_interfaces[..i]
                .iter()
                .any(|o| o.iface_id == n.iface_id)
            {
                return Err(FieldError::new(
                    format!("network-interfaces[{i}].iface_id"),
                    "duplicate interface id",
                ));
            }
        }
        if let Some(v) = &self.vsock {
            v.validate()?;
        }
        if let Some(e) = &self.entropy {
            e.validate("entropy")?;
        }
        Ok(())
    }

    /// Writes Firecracker's defaults out in the machine configuration (after a file or a
    /// snapshot supplied it), so reports show them.
    pub fn with_defaults(mut self) -> VmConfig {
        self.machine_config = self.machine_config.with_defaults();
        self
    }

    /// Adds or replaces a drive.
    pub fn upsert_drive(&mut self, d: Drive) -> Result<(), FieldError> {
        if d.is_root_device
            && self
                .drives
                .iter()
                .any(|o| o.is_root_device && o.drive_id != d.drive_id)
        {
            return Err(FieldError::new(
                "is_root_device",
                "another drive is already the root device",
            ));
        }
        match self.drives.iter_mut().find(|o| o.drive_id == d.drive_id) {
            Some(o) => *o = d,
            None => self.drives.push(d),
        }
        Ok(())
    }

    /// Adds or replaces a network interface.
    pub fn upsert_network(&mut self, n: NetworkInterface) {
        match self
            .network_interfaces
            .iter_mut()
            .find(|o| o.iface_id == n.iface_id)
        {
            Some(o) => *o = n,
            None => self.network_interfaces.push(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_config_round_trip_and_errors() {
        let json = br#"{
            "boot-source": {"kernel_image_path": "/etc/hostname", "boot_args": "console=ttyS0"},
            "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
            "drives": [], "network-interfaces": [], "vsock": null, "logger": null
        }"#;
        let cfg = VmConfig::from_file_contents(json).unwrap().with_defaults();
        assert_eq!(cfg.machine_config.vcpu_count, 2);
        let out = serde_json::to_value(&cfg).unwrap();
        assert_eq!(
            out["machine-config"],
            serde_json::json!({"vcpu_count": 2, "mem_size_mib": 256, "smt": false,
                               "track_dirty_pages": false, "huge_pages": "None"})
        );
        assert_eq!(out["vsock"], serde_json::Value::Null);
        assert_eq!(out["balloon"], serde_json::Value::Null);
        assert!(out.get("boot-source").is_some());
        let empty: VmConfig = from_json(b"{}", "config").unwrap();
        assert_eq!(empty, VmConfig::default());
        let back = serde_json::to_vec(&cfg).unwrap();
        let again: VmConfig = serde_json::from_slice(&back).unwrap();
        assert_eq!(again, cfg);

        let err = VmConfig::from_file_contents(
            br#"{"machine-config": {"vcpu_count": "2", "mem_size_mib": 1}}"#,
        )
        .unwrap_err();
        assert_eq!(err.field, "config.machine-config.vcpu_count", "{err}");
        let err = VmConfig::from_file_contents(br#"{"bogus": 1}"#).unwrap_err();
        assert!(err.message.contains("unknown field `bogus`"), "{err}");
        let err =
            VmConfig::from_file_contents(br#"{"metrics": {"metrics_path": "/x"}}"#).unwrap_err();
        assert_eq!(err.field, "metrics");
        assert!(VmConfig::from_file_contents(b"").is_err());
    }
}
