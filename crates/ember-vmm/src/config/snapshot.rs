//! What ember-vmm adds to the API's checks of `PUT /snapshot/create` and `PUT /snapshot/load`
//! (`ember_fc_api::SnapshotCreateParams`, `SnapshotLoadParams`): full snapshots only, and on
//! load a `File` memory backend, no dirty page tracking, no `clock_realtime`, and `huge_pages`
//! (if given) `Snapshot` or `None`. Whether the files are there and fit is checked when they
//! are read.

use std::path::Path;

use ember_fc_api::{
    FieldError, MemoryBackendType, SnapshotCreateParams, SnapshotLoadParams, SnapshotType,
};

/// ember-vmm's check (no `Diff`), then the API's.
pub fn validate_snapshot_create(p: &SnapshotCreateParams) -> Result<(), FieldError> {
    if p.snapshot_type == Some(SnapshotType::Diff) {
        return Err(FieldError::new(
            "snapshot_type",
            "Diff snapshots are not supported",
        ));
    }
    p.validate()
}

/// The API's check, then ember-vmm's; returns the memory file's path.
pub fn validate_snapshot_load(p: &SnapshotLoadParams) -> Result<&Path, FieldError> {
    let mem = p.validate()?;
    if p.mem_backend
        .as_ref()
        .is_some_and(|b| b.backend_type == MemoryBackendType::Uffd)
    {
        return Err(FieldError::new(
            "mem_backend.backend_type",
            "Uffd is not supported",
        ));
    }
    if p.enable_diff_snapshots == Some(true) || p.track_dirty_pages == Some(true) {
        return Err(FieldError::new(
            "track_dirty_pages",
            "dirty page tracking is not supported",
        ));
    }
    if p.clock_realtime == Some(true) {
        return Err(FieldError::new("clock_realtime", "not supported"));
    }
    if let Some(h) = &p.huge_pages
        && h != "Snapshot"
        && h != "None"
    {
        return Err(FieldError::new(
            "huge_pages",
            "only \"Snapshot\" or \"None\" are supported",
        ));
    }
    Ok(mem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_json;

    #[test]
    fn load_params() {
        let p: SnapshotLoadParams = from_json(
            br#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}, "resume_vm": true}"#,
            "snapshot/load",
        )
        .unwrap();
        assert_eq!(validate_snapshot_load(&p).unwrap(), Path::new("/m"));
        let p: SnapshotLoadParams = from_json(br#"{"snapshot_path": "/s"}"#, "l").unwrap();
        assert_eq!(validate_snapshot_load(&p).unwrap_err().field, "mem_backend");
        let err = from_json::<SnapshotLoadParams>(br#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Foo", "backend_path": "/m"}}"#, "snapshot/load").unwrap_err();
        assert_eq!(err.field, "snapshot/load.mem_backend.backend_type");
        let uffd: SnapshotLoadParams = from_json(
            br#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"}}"#,
            "l",
        )
        .unwrap();
        assert_eq!(
            validate_snapshot_load(&uffd).unwrap_err().field,
            "mem_backend.backend_type"
        );
        for (body, field) in [
            (
                &br#"{"snapshot_path": "/s", "mem_file_path": "/m", "track_dirty_pages": true}"#[..],
                "track_dirty_pages",
            ),
            (
                br#"{"snapshot_path": "/s", "mem_file_path": "/m", "clock_realtime": true}"#,
                "clock_realtime",
            ),
            (
                br#"{"snapshot_path": "/s", "mem_file_path": "/m", "huge_pages": "2M"}"#,
                "huge_pages",
            ),
        ] {
            let p: SnapshotLoadParams = from_json(body, "l").unwrap();
            assert_eq!(validate_snapshot_load(&p).unwrap_err().field, field);
        }
        let c: SnapshotCreateParams = from_json(
            br#"{"snapshot_path": "/s", "mem_file_path": "/m", "snapshot_type": "Diff"}"#,
            "c",
        )
        .unwrap();
        assert_eq!(
            validate_snapshot_create(&c).unwrap_err().field,
            "snapshot_type"
        );
    }
}
