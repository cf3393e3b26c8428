//! What ember-vmm adds to the API's check of `PUT /boot-source` (`ember_fc_api::BootSource`):
//! the kernel is a file on this host, the command line fits the x86_64 boot protocol's buffer
//! and is printable ASCII, and an initrd, if given, is a non-empty file. Whether the kernel is
//! an image ember-vmm boots and the initrd fits in memory is known only at boot (the loader
//! says which and why).

use ember_fc_api::{BootSource, FieldError};

use crate::arch::x86_64::layout::CMDLINE_MAX_SIZE;

/// The API's check, then ember-vmm's: the kernel file, the command line, the initrd file.
pub fn validate_boot_source(b: &BootSource) -> Result<(), FieldError> {
    b.validate()?;
    if !b.kernel_image_path.is_file() {
        return Err(FieldError::new(
            "kernel_image_path",
            format!("{} is not a readable file", b.kernel_image_path.display()),
        ));
    }
    if let Some(args) = &b.boot_args {
        if args.len() > CMDLINE_MAX_SIZE {
            return Err(FieldError::new(
                "boot_args",
                format!("longer than {CMDLINE_MAX_SIZE} bytes"),
            ));
        }
        if args
            .bytes()
            .any(|b| b == 0 || !(b.is_ascii_graphic() || b == b' '))
        {
            return Err(FieldError::new("boot_args", "must be printable ASCII"));
        }
    }
    if let Some(initrd) = &b.initrd_path {
        match std::fs::metadata(initrd) {
            Ok(m) if m.is_file() && m.len() > 0 => {}
            Ok(m) if m.is_file() => {
                return Err(FieldError::new(
                    "initrd_path",
                    format!("{} is empty", initrd.display()),
                ));
            }
            _ => {
                return Err(FieldError::new(
                    "initrd_path",
                    format!("{} is not a readable file", initrd.display()),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(kernel: &str, args: Option<&str>) -> BootSource {
        BootSource {
            kernel_image_path: kernel.into(),
            boot_args: args.map(str::to_string),
            initrd_path: None,
        }
    }

    #[test]
    fn kernel_and_cmdline() {
        validate_boot_source(&boot("/etc/hostname", Some("console=ttyS0"))).unwrap();
        for (b, field) in [
            (boot("", None), "kernel_image_path"),
            (boot("/nonexistent/vmlinux", None), "kernel_image_path"),
            (boot("/etc/hostname", Some("a\tb")), "boot_args"),
        ] {
            assert_eq!(validate_boot_source(&b).unwrap_err().field, field);
        }
        let long = "x".repeat(CMDLINE_MAX_SIZE + 1);
        assert_eq!(
            validate_boot_source(&boot("/etc/hostname", Some(&long)))
                .unwrap_err()
                .field,
            "boot_args"
        );
        let initrd = |p: &str| BootSource {
            initrd_path: Some(p.into()),
            ..boot("/etc/hostname", None)
        };
        validate_boot_source(&initrd("/etc/hostname")).unwrap();
        for bad in ["/nonexistent/initrd", "/etc", "/dev/null"] {
            assert_eq!(
                validate_boot_source(&initrd(bad)).unwrap_err().field,
                "initrd_path",
                "{bad}"
            );
        }
    }
}
