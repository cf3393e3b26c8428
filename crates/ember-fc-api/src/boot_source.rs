//! `PUT /boot-source` ([`BootSource`]): the kernel image and its command line, and what an
//! absent command line means (Firecracker's default, [`DEFAULT_BOOT_ARGS`]).
//!
//! API-level check: the kernel path is not empty. Whether the file exists, the command line
//! fits the boot protocol, or initrds are supported is the VMM's to check.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::field::FieldError;

/// Firecracker's default command line, used when `boot_args` is absent.
pub const DEFAULT_BOOT_ARGS: &str = "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce";

/// `PUT /boot-source` — `BootSource`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// The guest kernel on the host.
    pub kernel_image_path: PathBuf,
    /// Kernel command line ([`DEFAULT_BOOT_ARGS`] when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Initial ramdisk on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
}

impl BootSource {
    /// API-level check: a kernel path is given.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.kernel_image_path.as_os_str().is_empty() {
            return Err(FieldError::new("kernel_image_path", "must not be empty"));
        }
        Ok(())
    }

    /// The command line to boot with.
    pub fn cmdline(&self) -> &str {
        self.boot_args.as_deref().unwrap_or(DEFAULT_BOOT_ARGS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_defaults_and_check() {
        let b: BootSource = serde_json::from_str(r#"{"kernel_image_path": "/k"}"#).unwrap();
        assert_eq!(b.cmdline(), DEFAULT_BOOT_ARGS);
        b.validate().unwrap();
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"kernel_image_path":"/k"}"#
        );
        let empty: BootSource = serde_json::from_str(r#"{"kernel_image_path": ""}"#).unwrap();
        assert_eq!(empty.validate().unwrap_err().field, "kernel_image_path");
        assert!(serde_json::from_str::<BootSource>(r#"{"boot_args": "x"}"#).is_err());
    }
}
