//! [`Record`]: what makes an ember-core value storable — its table, its key, its validation and
//! the other records it refers to — and [`Stored`], a record with what the store adds (revision,
//! time of the last write).
//!
//! The store keeps ember-core's own types ([`SnapshotInfo`], [`Template`], [`PoolSpec`],
//! [`Sandbox`], [`VmRecord`]) as JSON, one per row: there is no second vocabulary to keep in step
//! with the model. Pure values and rules; rows are the private `sql` module's job.

use std::time::SystemTime;

use ember_core::{PoolSpec, Sandbox, SnapshotInfo, Template, VmError, VmRecord};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{RecordKind, StoreError};

/// A reference from one record to another that must exist while the first is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The referring field (`template.snapshot`, `pool.template`).
    pub field: &'static str,
    /// The kind of record referred to.
    pub kind: RecordKind,
    /// Its key.
    pub key: String,
}

/// An ember-core value the store keeps.
pub trait Record: Serialize + DeserializeOwned + Clone + Send + 'static {
    /// Its kind (errors name it).
    const KIND: RecordKind;

    /// Its key (unique within its kind).
    fn key(&self) -> String;

    /// Checks the value before it is written and after it is read.
    fn check(&self) -> Result<(), StoreError>;

    /// The records it refers to; each must be stored when it is written.
    fn references(&self) -> Vec<Reference> {
        Vec::new()
    }
}

/// ember-core's validation errors name their field; keep it.
pub(crate) fn from_vm_error(e: VmError) -> StoreError {
    match e {
        VmError::InvalidSpec { field, reason } => StoreError::InvalidField { field, reason },
        other => StoreError::invalid("record", other.to_string()),
    }
}

impl Record for SnapshotInfo {
    const KIND: RecordKind = RecordKind::Snapshot;
    fn key(&self) -> String {
        self.snapshot_id.to_string()
    }
    fn check(&self) -> Result<(), StoreError> {
        self.validate().map_err(from_vm_error)
    }
}

impl Record for Template {
    const KIND: RecordKind = RecordKind::Template;
    fn key(&self) -> String {
        self.name.to_string()
    }
    fn check(&self) -> Result<(), StoreError> {
        self.validate().map_err(from_vm_error)
    }
    fn references(&self) -> Vec<Reference> {
        self.snapshot
            .iter()
            .map(|s| Reference {
                field: "template.snapshot",
                kind: RecordKind::Snapshot,
                key: s.to_string(),
            })
            .collect()
    }
}

impl Record for PoolSpec {
    const KIND: RecordKind = RecordKind::Pool;
    fn key(&self) -> String {
        self.template.to_string()
    }
    fn check(&self) -> Result<(), StoreError> {
        self.validate().map_err(from_vm_error)
    }
    fn references(&self) -> Vec<Reference> {
        vec![Reference {
            field: "pool.template",
            kind: RecordKind::Template,
            key: self.template.to_string(),
        }]
    }
}

impl Record for Sandbox {
    const KIND: RecordKind = RecordKind::Sandbox;
    fn key(&self) -> String {
        self.id.to_string()
    }
    fn check(&self) -> Result<(), StoreError> {
        self.validate().map_err(from_vm_error)
    }
    /// A live sandbox needs its template (an ended one only remembers the name), and one paused
    /// to disk its saved snapshot.
    fn references(&self) -> Vec<Reference> {
        let mut refs = Vec::new();
        if self.state.is_live() {
            refs.push(Reference {
                field: "sandbox.template",
                kind: RecordKind::Template,
                key: self.template.to_string(),
            });
        }
        if let Some(saved) = &self.saved {
            refs.push(Reference {
                field: "sandbox.saved",
                kind: RecordKind::Snapshot,
                key: saved.to_string(),
            });
        }
        refs
    }
}

impl Record for VmRecord {
    const KIND: RecordKind = RecordKind::Vm;
    fn key(&self) -> String {
        self.id.to_string()
    }
    fn check(&self) -> Result<(), StoreError> {
        self.validate().map_err(from_vm_error)
    }
}

/// A record as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored<R> {
    /// The value.
    pub record: R,
    /// 1 when inserted, plus one per write.
    pub revision: u64,
    /// When it was last written (millisecond precision).
    pub updated_at: SystemTime,
}
