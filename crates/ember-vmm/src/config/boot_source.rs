//! `PUT /boot-source`: the kernel image and its command line.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::arch::x86_64::layout::CMDLINE_MAX_SIZE;

/// Firecracker's default command line, used when `boot_args` is absent.
pub const DEFAULT_BOOT_ARGS: &str = "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce";

/// Kernel and command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSourceConfig {
    /// Host path of the kernel image (an ELF vmlinux).
    pub kernel_image_path: String,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Host path of an initrd (not supported yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

impl BootSourceConfig {
    /// Checks the paths and the command line.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kernel_image_path.is_empty() {
            return Err(ConfigError::new("kernel_image_path", "must not be empty"));
        }
        let p = Path::new(&self.kernel_image_path);
        if !p.is_file() {
            return Err(ConfigError::new(
                "kernel_image_path",
                format!("{} is not a readable file", self.kernel_image_path),
            ));
        }
        if let Some(args) = &self.boot_args {
            if args.len() > CMDLINE_MAX_SIZE {
                return Err(ConfigError::new(
                    "boot_args",
                    format!("longer than {CMDLINE_MAX_SIZE} bytes"),
                ));
            }
            if args
                .bytes()
                .any(|b| b == 0 || !(b.is_ascii_graphic() || b == b' '))
            {
                return Err(ConfigError::new("boot_args", "must be printable ASCII"));
            }
        }
        if self.initrd_path.is_some() {
            return Err(ConfigError::new(
                "initrd_path",
                "initrd images are not supported yet",
            ));
        }
        Ok(())
    }

    /// The command line to boot with.
    pub fn cmdline(&self) -> &str {
        self.boot_args.as_deref().unwrap_or(DEFAULT_BOOT_ARGS)
    }
}
