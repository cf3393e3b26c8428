//! Snapshots: ember's own versioned binary format for the VM state ([`format`] for the
//! container — magic, version, length, snapshot id, CRC32 — and [`state`] for its sections),
//! the codec primitives ([`codec`]), the memory file (written sparsely by `vstate::memory`,
//! mapped copy-on-write on restore), how both files are opened, paired and written
//! ([`files`]), and the checks a decoded state must pass before a restore touches the VM
//! ([`validate`]).
//!
//! Never JSON for vCPU state: decoding the whole state here takes microseconds. Device state
//! is a section per device family, encoded by the device's own module: the legacy devices in
//! [`state::SECTION_LEGACY_DEVICES`], each virtio device in a [`state::SECTION_VIRTIO_DEVICE`]
//! (written by `devices::virtio::manager`, the device's own bytes by the device), the VM
//! generation id's address and GSI in [`state::SECTION_VMGENID`] (`devices::vmgenid`).

pub mod codec;
pub mod files;
pub mod format;
pub mod state;
pub mod validate;

pub use self::format::{FORMAT_VERSION, MAGIC, OLDEST_READ_VERSION, SnapshotId};
pub use self::state::MicrovmState;

/// Errors reading a snapshot file.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file cannot be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Too short to hold a header.
    #[error("snapshot file is truncated: {len} bytes, smaller than the {header}-byte header")]
    TooShort {
        /// File length.
        len: usize,
        /// Header length.
        header: usize,
    },
    /// Not our magic.
    #[error("not an ember-vmm snapshot file (bad magic)")]
    BadMagic,
    /// A version this build cannot read.
    #[error(
        "unsupported snapshot format version {found} (this ember-vmm reads versions {oldest} \
         to {supported})"
    )]
    Version {
        /// Version in the file.
        found: u32,
        /// Oldest version supported.
        oldest: u32,
        /// Version supported.
        supported: u32,
    },
    /// Length does not match the header.
    #[error(
        "snapshot file is truncated or has trailing data: header says {expected} bytes, file has {found}"
    )]
    Length {
        /// Bytes expected.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// CRC mismatch.
    #[error(
        "snapshot checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the file is corrupt"
    )]
    Checksum {
        /// CRC in the file.
        stored: u32,
        /// CRC of the contents.
        computed: u32,
    },
    /// A section is malformed.
    #[error("snapshot section {section}: {source}")]
    Section {
        /// Section name.
        section: &'static str,
        /// Why.
        source: codec::DecodeError,
    },
    /// A required section is missing or duplicated, or an unknown one is present.
    #[error("snapshot structure: {0}")]
    Structure(String),
    /// The state decodes but does not describe a VM this ember-vmm can restore on this host:
    /// its sections disagree with each other or name what the host lacks.
    #[error("invalid {section} section: {detail}")]
    Invalid {
        /// The section ("config", "memory", "vcpu", "virtio device").
        section: &'static str,
        /// What is wrong, naming the field, region or device.
        detail: String,
    },
}
