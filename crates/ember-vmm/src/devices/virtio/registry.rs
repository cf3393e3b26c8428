//! The one place device kinds are listed: which virtio devices a VM configuration asks for
//! (in slot order), and how each kind is rebuilt from its snapshot section.
//!
//! To add a device kind: a `match` arm in [`restore_device`] and a loop or `if` in
//! [`devices_for_config`]. Devices that must exist before the VM starts (Firecracker binds the
//! vsock socket when `PUT /vsock` arrives, so a bad path fails that request) go into
//! [`PreparedDevices`].

use ember_fc_api::Vsock as VsockConfig;

use super::RestoreError;
use super::block::{Block, BlockParams};
use super::device::VirtioDevice;
use super::manager::{DeviceSnapshot, VirtioError};
use super::net::{Net, NetParams};
use super::rng::{RNG_ID, Rng};
use super::vsock::Vsock;
use super::{TYPE_BLOCK, TYPE_NET, TYPE_RNG, TYPE_VSOCK, device::ActivateError};
use crate::config::VmConfig;
use crate::rate_limiter::Clock;
use crate::snapshot::codec::Reader;

/// A device that could not be created, in its own words.
fn device_error(id: &str, e: impl std::fmt::Display) -> VirtioError {
    VirtioError::Device {
        id: id.to_string(),
        source: ActivateError::Device(e.to_string()),
    }
}

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

/// The devices `config` asks for, in slot order: drives (the root drive first, so it is the
/// guest's first disk), network interfaces (in configuration order), vsock, entropy.
pub fn devices_for_config(
    config: &VmConfig,
    prepared: &mut PreparedDevices,
) -> Result<Vec<Box<dyn VirtioDevice>>, VirtioError> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for d in super::block::slot_order(&config.drives) {
        let block = BlockParams::from_config(d)
            .and_then(Block::new)
            .map_err(|e| device_error(&d.drive_id, e))?;
        devices.push(Box::new(block));
    }
    for n in &config.network_interfaces {
        let net = NetParams::from_config(n)
            .and_then(Net::new)
            .map_err(|e| device_error(&n.iface_id, e))?;
        devices.push(Box::new(net));
    }
    if let Some(v) = &config.vsock {
        devices.push(Box::new(prepared.take_vsock(v)?));
    }
    if let Some(e) = &config.entropy {
        let rng = Rng::new(e.rate_limiter.as_ref(), Clock::Monotonic)
            .map_err(|e| device_error(RNG_ID, e))?;
        devices.push(Box::new(rng));
    }
    Ok(devices)
}

/// Decodes a device's own state with `f`, which must consume all of it.
fn decode_all<T, E: Into<RestoreError>>(
    snapshot: &DeviceSnapshot,
    f: impl FnOnce(&mut Reader<'_>) -> Result<T, E>,
) -> Result<T, VirtioError> {
    let mut r = Reader::new(&snapshot.device);
    f(&mut r)
        .map_err(Into::into)
        .and_then(|t| {
            r.finish("device state")
                .map(|()| t)
                .map_err(RestoreError::from)
        })
        .map_err(|e| VirtioError::Snapshot {
            id: snapshot.id.clone(),
            message: e.to_string(),
        })
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
        TYPE_BLOCK => {
            let cfg = config
                .drives
                .iter()
                .find(|d| d.drive_id == snapshot.id)
                .ok_or_else(|| bad("the snapshot's configuration has no such drive".into()))?;
            let params = BlockParams::from_config(cfg).map_err(|e| bad(e.to_string()))?;
            Ok(Box::new(decode_all(snapshot, |r| {
                Block::restore(params, r)
            })?))
        }
        TYPE_NET => {
            let cfg = config
                .network_interfaces
                .iter()
                .find(|n| n.iface_id == snapshot.id)
                .ok_or_else(|| {
                    bad("the snapshot's configuration has no such network interface".into())
                })?;
            let params = NetParams::from_config(cfg).map_err(|e| bad(e.to_string()))?;
            Ok(Box::new(decode_all(snapshot, |r| Net::restore(params, r))?))
        }
        TYPE_RNG => {
            if config.entropy.is_none() {
                return Err(bad(
                    "the snapshot's configuration has no entropy device".into()
                ));
            }
            Ok(Box::new(decode_all(snapshot, |r| {
                Rng::restore(r, Clock::Monotonic)
            })?))
        }
        other => Err(VirtioError::Device {
            id: snapshot.id.clone(),
            source: ActivateError::Device(format!(
                "device type {other} is not supported by this ember-vmm"
            )),
        }),
    }
}
