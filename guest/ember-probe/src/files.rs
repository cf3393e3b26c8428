//! The probe's file store (ring 3): [`FILE_COUNT`] RAM files in a fixed region (layout.rs),
//! for PutFile, GetFile and the `cat` built-in.
//!
//! - A path is any byte string the protocol accepts (1..=[`FILE_PATH_MAX`] bytes here, no
//!   directories): two paths name the same file only if they are byte-equal.
//! - Each slot has a header in the table page (path, mode, size) and [`FILE_MAX_LEN`] bytes of
//!   data. Files are never removed; a full table refuses new paths.
//! - Nothing is zeroed at boot: guest memory starts zeroed and an all-zero header (path length
//!   0, which the protocol forbids for a real path) is a free slot. A request reads the header
//!   page and touches only the data pages it reads or writes, so an idle VM never touches the
//!   region and a restored one shares it with its siblings until it writes a file.

use ember_agent_proto::ErrorCode;

use crate::layout::{FILE_COUNT, FILE_DATA, FILE_MAX_LEN, FILE_PATH_MAX, FILE_TABLE_LEN, FILES};

/// One slot's header. Every bit pattern is valid; all zeros is a free slot.
#[repr(C)]
struct Entry {
    /// Bytes of `path` in use; 0: the slot is free.
    path_len: u32,
    /// Permission bits, as given when the file was created.
    mode: u32,
    /// Bytes of data in use.
    size: u32,
    path: [u8; FILE_PATH_MAX],
}

const _: () = assert!(core::mem::size_of::<[Entry; FILE_COUNT]>() <= FILE_TABLE_LEN);
const _: () = assert!(FILES.is_multiple_of(core::mem::align_of::<Entry>()));
const _: () = assert!(FILE_MAX_LEN <= u32::MAX as usize);
// The error messages below name these values.
const _: () = assert!(FILE_COUNT == 8 && FILE_MAX_LEN == 65536 && FILE_PATH_MAX == 255);

/// A refused file operation: the protocol's error code and a message.
pub type FileError = (ErrorCode, &'static str);

const NO_SUCH_FILE: FileError = (ErrorCode::NOT_FOUND, "no such file");

/// A file as [`Files::get`] finds it.
pub struct File<'a> {
    /// Permission bits.
    pub mode: u32,
    /// The whole contents.
    pub data: &'a [u8],
}

/// The file table, borrowed for one request.
pub struct Files {
    entries: &'static mut [Entry; FILE_COUNT],
    data: &'static mut [[u8; FILE_MAX_LEN]; FILE_COUNT],
}

/// The file table. Call once per request (each call hands out the same memory).
pub fn table() -> Files {
    // SAFETY: the file region (layout.rs) is reserved for this table, mapped and user-accessible,
    // and used only by the agent, one request at a time; any bytes are valid `Entry`s and data.
    // Making the references touches no page.
    unsafe {
        Files {
            entries: &mut *(FILES as *mut [Entry; FILE_COUNT]),
            data: &mut *(FILE_DATA as *mut [[u8; FILE_MAX_LEN]; FILE_COUNT]),
        }
    }
}

impl Entry {
    fn path(&self) -> Option<&[u8]> {
        match self.path_len as usize {
            0 => None,
            n => self.path.get(..n),
        }
    }
}

impl Files {
    fn find(&self, path: &[u8]) -> Option<usize> {
        self.entries.iter().position(|e| e.path() == Some(path))
    }

    /// The file at `path`.
    pub fn get(&self, path: &[u8]) -> Result<File<'_>, FileError> {
        let i = self.find(path).ok_or(NO_SUCH_FILE)?;
        let e = &self.entries[i];
        let size = (e.size as usize).min(FILE_MAX_LEN);
        Ok(File {
            mode: e.mode,
            data: &self.data[i][..size],
        })
    }

    /// PutFile: at `offset` 0 creates the file (with `mode`) or truncates it (keeping its
    /// mode), then writes `data`; at other offsets the file must exist and `offset` must not
    /// pass its end, and `data` overwrites or extends it there. Refused requests change nothing.
    pub fn put(
        &mut self,
        path: &[u8],
        mode: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), FileError> {
        if path.len() > FILE_PATH_MAX {
            return Err((
                ErrorCode::TOO_LARGE,
                "path longer than the probe's limit (255 bytes)",
            ));
        }
        let too_big = (
            ErrorCode::TOO_LARGE,
            "file larger than the probe's limit (65536 bytes)",
        );
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = offset
            .checked_add(data.len())
            .filter(|&e| e <= FILE_MAX_LEN);
        let (i, end) = if offset == 0 {
            let end = end.ok_or(too_big)?;
            let i = match self.find(path) {
                Some(i) => i,
                None => {
                    let i = self
                        .entries
                        .iter()
                        .position(|e| e.path_len == 0)
                        .ok_or((ErrorCode::TOO_LARGE, "probe file table full (8 files)"))?;
                    let e = &mut self.entries[i];
                    e.path[..path.len()].copy_from_slice(path);
                    e.mode = mode;
                    e.path_len = path.len() as u32;
                    i
                }
            };
            (i, end)
        } else {
            let i = self.find(path).ok_or(NO_SUCH_FILE)?;
            if offset > self.entries[i].size as usize {
                return Err((
                    ErrorCode::INVALID_ARGUMENT,
                    "offset past the end of the file",
                ));
            }
            let end = end.ok_or(too_big)?;
            (i, end.max(self.entries[i].size as usize))
        };
        self.data[i][offset..offset + data.len()].copy_from_slice(data);
        self.entries[i].size = end as u32;
        Ok(())
    }
}
