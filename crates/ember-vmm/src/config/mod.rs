//! Validated configuration, one type per API resource, in Firecracker's JSON shapes (field
//! names as in Firecracker's swagger; unknown fields rejected).
//!
//! [`VmConfig`] is the whole machine: the body of `GET /vm/config` and the `--config-file`
//! format. Validation errors name the offending field; the controller turns them into
//! `fault_message`s.

pub mod actions;
pub mod boot_source;
pub mod devices;
pub mod machine;
pub mod snapshot;

use serde::{Deserialize, Serialize};

pub use self::boot_source::BootSourceConfig;
pub use self::devices::{DriveConfig, EntropyConfig, NetworkInterfaceConfig, VsockConfig};
pub use self::machine::{MachineConfig, MachineConfigPatch};

/// A configuration value is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The field (JSON path).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// A new error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Parses a JSON body into `T`, naming the field on error (`machine-config.vcpu_count: ...`).
pub fn from_json<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, ConfigError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ConfigError::new(what, "missing request body"));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() {
            what.to_string()
        } else {
            format!("{what}.{path}")
        };
        ConfigError::new(field, e.into_inner().to_string())
    })
}

/// Checks an identifier used in a URL path (`drive_id`, `iface_id`).
pub fn validate_id(field: &str, id: &str) -> Result<(), ConfigError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ConfigError::new(
            field,
            format!("invalid id {id:?}: use 1 to 64 characters from [A-Za-z0-9_-]"),
        ));
    }
    Ok(())
}

/// Sections of a Firecracker configuration ember-vmm does not implement: accepted only when
/// absent or null.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Unsupported(pub Option<serde_json::Value>);

/// The whole machine configuration (`GET /vm/config`, `--config-file`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Kernel and command line.
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSourceConfig>,
    /// vCPUs and memory.
    #[serde(rename = "machine-config", default)]
    pub machine_config: MachineConfig,
    /// Block devices.
    #[serde(default)]
    pub drives: Vec<DriveConfig>,
    /// Network interfaces.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterfaceConfig>,
    /// The vsock device.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
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
    pub entropy: Option<EntropyConfig>,
}

impl VmConfig {
    /// Parses and validates a configuration file's contents.
    pub fn from_file_contents(body: &[u8]) -> Result<VmConfig, ConfigError> {
        let cfg: VmConfig = from_json(body, "config")?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Validates every section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            ("balloon", &self.balloon),
            ("logger", &self.logger),
            ("metrics", &self.metrics),
            ("mmds-config", &self.mmds_config),
        ] {
            if v.is_some() {
                return Err(ConfigError::new(name, "not supported by ember-vmm"));
            }
        }
        if let Some(b) = &self.boot_source {
            b.validate()?;
        }
        self.machine_config.validate()?;
        let mut roots = 0;
        for (i, d) in self.drives.iter().enumerate() {
            d.validate(&format!("drives[{i}]"), None)?;
            roots += usize::from(d.is_root_device);
            if self.drives[..i].iter().any(|o| o.drive_id == d.drive_id) {
                return Err(ConfigError::new(
                    format!("drives[{i}].drive_id"),
                    "duplicate drive id",
                ));
            }
        }
        if roots > 1 {
            return Err(ConfigError::new(
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
                return Err(ConfigError::new(
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

    /// Adds or replaces a drive.
    pub fn upsert_drive(&mut self, d: DriveConfig) -> Result<(), ConfigError> {
        if d.is_root_device
            && self
                .drives
                .iter()
                .any(|o| o.is_root_device && o.drive_id != d.drive_id)
        {
            return Err(ConfigError::new(
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
    pub fn upsert_network(&mut self, n: NetworkInterfaceConfig) {
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
        let cfg = VmConfig::from_file_contents(json).unwrap();
        assert_eq!(cfg.machine_config.vcpu_count, 2);
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
