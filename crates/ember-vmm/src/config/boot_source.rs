//! What ember-vmm adds to the API's check of `PUT /boot-source` (`ember_fc_api::BootSource`):
//! the kernel is a file on this host, the command line fits the x86_64 boot protocol's buffer
//! and is printable ASCII, and no initrd is given (not supported yet).

use ember_fc_api::{BootSource, FieldError};

use crate::arch::x86_64::layout::CMDLINE_MAX_SIZE;

/// The API's check, then ember-vmm's: the kernel file, the command line, no initrd.
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
    if b.initrd_path.is_some() {
        return Err(FieldError::new(
            "initrd_path",
            "initrd images are not supported yet",
        ));
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
        let initrd = BootSource {
            initrd_path: Some("/i".into()),
            ..boot("/etc/hostname", None)
        };
        assert_eq!(
            validate_boot_source(&initrd).unwrap_err().field,
            "initrd_path"
        );
    }
}
