//! The one place device kinds are listed: which virtio devices a VM configuration asks for
//! (in slot order), and how each kind is rebuilt from its snapshot section.
//!
//! To add a device kind: a `match` arm in [`restore_device`] and a loop or `if` in
//! [`devices_for_config`]. Devices that must exist before the VM starts (Firecracker binds the
//! vsock socket when `PUT /vsock` arrives, so a bad path fails that request) go into
//! [`PreparedDevices`].

use super::device::VirtioDevice;
use super::manager::{DeviceSnapshot, VirtioError};
use super::vsock::Vsock;
use super::{TYPE_VSOCK, device::ActivateError};
use crate::config::{VmConfig, VsockConfig};

/// Devices created by API requests before the VM starts.
#[derive(Debug, Default)]
pub struct PreparedDevices {
    vsock: Option<Vsock>,
}

impl PreparedDevices {
    /// Creates the vsock device now (binds its Unix socket), replacing a previous one.
    pub fn prepare_vsock(&mut self, config: &VsockConfig) -> Result<(), VirtioError> {
        if let Some(old) = self.vsock.take() {
            // Same path again: the old listener must go before the new bind.
            drop(old);
        }
        self.vsock = Some(Vsock::new(config)?);
        Ok(())
    }

    fn take_vsock(&mut self, config: &VsockConfig) -> Result<Vsock, VirtioError> {
        match self.vsock.take() {
            Some(v) if v.matches(config) => Ok(v),
            other => {
                drop(other);
                Vsock::new(config)
            }
        }
    }
}

/// The devices `config` asks for, in slot order: drives, network interfaces, vsock.
pub fn devices_for_config(
    config: &VmConfig,
    prepared: &mut PreparedDevices,
) -> Result<Vec<Box<dyn VirtioDevice>>, VirtioError> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    // Block devices (one per `config.drives` entry) and network devices (one per
    // `config.network_interfaces` entry) go here, in configuration order.
    if let Some(v) = &config.vsock {
        devices.push(Box::new(prepared.take_vsock(v)?));
    }
    Ok(devices)
}

/// Rebuilds a device from its snapshot section; `config` is the snapshot's configuration with
/// the load request's overrides applied (`vsock_override`, `network_overrides`).
pub fn restore_device(
    snapshot: &DeviceSnapshot,
    config: &VmConfig,
) -> Result<Box<dyn VirtioDevice>, VirtioError> {
    let bad = |message: String| VirtioError::Snapshot {
        id: snapshot.id.clone(),
        message,
    };
    match snapshot.device_type {
        TYPE_VSOCK => {
            let cfg = config
                .vsock
                .as_ref()
                .ok_or_else(|| bad("the snapshot's configuration has no vsock section".into()))?;
            Ok(Box::new(Vsock::restore(cfg, &snapshot.device)?))
        }
        other => Err(VirtioError::Device {
            id: snapshot.id.clone(),
            source: ActivateError::Device(format!(
                "device type {other} is not supported by this ember-vmm"
            )),
        }),
    }
}
