//! envd's `filesystem.Filesystem` service over ember's agent: `Stat`, `ListDir`, `MakeDir`,
//! `Remove`, `Move` (unary calls), answering envd's `EntryInfo`s (protojson: camelCase names,
//! `size` as a string, `type` as `FILE_TYPE_*`, `mode` as a Go `os.FileMode` with the directory
//! bit, RFC 3339 `modifiedTime`). Paths not starting with `/` are the user's home's. Directory
//! watchers are not implemented (`unimplemented`).

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use ember_agent_proto::{FileInfo, FileKind};
use serde_json::{Value, json};

use super::connect::{self, Code, RpcError};
use super::envd::{EnvdState, Target, absolute};
use super::time::rfc3339;
use crate::api::extract::blocking;
use crate::error::ApiError;

/// Go's `os.ModeDir` and `os.ModeSymlink` bits.
const GO_MODE_DIR: u64 = 1 << 31;
const GO_MODE_SYMLINK: u64 = 1 << 27;

/// Handles `filesystem.Filesystem/<name>`.
pub async fn call(st: &EnvdState, t: Target, name: &str, req: Request) -> Response {
    let body = match axum::body::to_bytes(req.into_body(), connect::MAX_ENVELOPE).await {
        Ok(b) => b,
        Err(e) => {
            return RpcError::new(Code::InvalidArgument, format!("the body: {e}")).into_response();
        }
    };
    let msg: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return RpcError::new(Code::InvalidArgument, format!("the request: {e}"))
                    .into_response();
            }
        }
    };
    match run(st, &t, name, &msg).await {
        Ok(v) => connect::unary(&v),
        Err(e) => e.into_response(),
    }
}

fn path_of(msg: &Value, field: &str, t: &Target) -> Result<String, RpcError> {
    let p = msg[field]
        .as_str()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| RpcError::new(Code::InvalidArgument, format!("{field} is required")))?;
    Ok(absolute(p, t.user.as_deref()))
}

fn rpc(e: ApiError) -> RpcError {
    RpcError::new(Code::from_status(e.status), e.message)
}

async fn run(st: &EnvdState, t: &Target, name: &str, msg: &Value) -> Result<Value, RpcError> {
    let engine = std::sync::Arc::clone(&st.app.engine);
    let id = t.id.to_string();
    match name {
        "Stat" => {
            let path = path_of(msg, "path", t)?;
            let p = path.clone();
            let info = blocking(move || engine.stat(&id, &p)).await.map_err(|e| {
                if e.status.as_u16() == 404 {
                    RpcError::new(Code::NotFound, format!("path '{path}' does not exist"))
                } else {
                    rpc(e)
                }
            })?;
            Ok(json!({"entry": entry(&path, &info)}))
        }
        "ListDir" => {
            let path = path_of(msg, "path", t)?;
            let depth = msg["depth"].as_u64().unwrap_or(1).max(1) as u32;
            let p = path.clone();
            let listed = blocking(move || engine.list_dir(&id, &p, depth))
                .await
                .map_err(|e| {
                    if e.status.as_u16() == 404 {
                        RpcError::new(Code::NotFound, format!("path '{path}' does not exist"))
                    } else {
                        rpc(e)
                    }
                })?;
            let base = path.trim_end_matches('/');
            let entries: Vec<Value> = listed
                .iter()
                .map(|e| {
                    let rel = String::from_utf8_lossy(&e.name);
                    entry(&format!("{base}/{rel}"), &e.info)
                })
                .collect();
            Ok(json!({"entries": entries}))
        }
        "MakeDir" => {
            let path = path_of(msg, "path", t)?;
            let (p, e2, id2) = (path.clone(), std::sync::Arc::clone(&engine), id.clone());
            let made = blocking(move || engine.make_dir(&id, &p))
                .await
                .map_err(rpc)?;
            if !made {
                return Err(RpcError::new(
                    Code::AlreadyExists,
                    format!("directory '{path}' already exists"),
                ));
            }
            let p = path.clone();
            let info = blocking(move || e2.stat(&id2, &p)).await.map_err(rpc)?;
            Ok(json!({"entry": entry(&path, &info)}))
        }
        "Remove" => {
            let path = path_of(msg, "path", t)?;
            match blocking(move || engine.remove(&id, &path)).await {
                // envd removes like `rm -rf`: a path already gone is not an error.
                Ok(()) => Ok(json!({})),
                Err(e) if e.status.as_u16() == 404 => Ok(json!({})),
                Err(e) => Err(rpc(e)),
            }
        }
        "Move" => {
            let from = path_of(msg, "source", t)?;
            let to = path_of(msg, "destination", t)?;
            let (f, dest, e2, id2) = (
                from.clone(),
                to.clone(),
                std::sync::Arc::clone(&engine),
                id.clone(),
            );
            blocking(move || engine.rename(&id, &f, &dest))
                .await
                .map_err(|e| {
                    if e.status.as_u16() == 404 {
                        RpcError::new(Code::NotFound, format!("path '{from}' does not exist"))
                    } else {
                        rpc(e)
                    }
                })?;
            let p = to.clone();
            let info = blocking(move || e2.stat(&id2, &p)).await.map_err(rpc)?;
            Ok(json!({"entry": entry(&to, &info)}))
        }
        "WatchDir" | "CreateWatcher" | "GetWatcherEvents" | "RemoveWatcher" => Err(RpcError::new(
            Code::Unimplemented,
            "watching directories is not supported by this envd",
        )),
        other => Err(RpcError::new(
            Code::Unimplemented,
            format!("filesystem.Filesystem/{other} is not a method of this envd"),
        )),
    }
}

/// `rwxr-xr-x`-style permissions of `mode`, after the kind letter.
fn permissions(kind: FileKind, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        FileKind::Directory => 'd',
        FileKind::Symlink => 'l',
        _ => '-',
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// envd's `EntryInfo` of `path`.
fn entry(path: &str, info: &FileInfo) -> Value {
    let name = path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(path);
    let (kind, go_bits) = match info.kind {
        FileKind::Directory => ("FILE_TYPE_DIRECTORY", GO_MODE_DIR),
        FileKind::Symlink => ("FILE_TYPE_SYMLINK", GO_MODE_SYMLINK),
        _ => ("FILE_TYPE_FILE", 0),
    };
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(info.mtime_ns);
    let mut v = json!({
        "name": name,
        "type": kind,
        "path": path,
        "size": info.size.to_string(),
        "mode": go_bits | u64::from(info.mode & 0o777),
        "permissions": permissions(info.kind, info.mode),
        "owner": info.owner,
        "group": info.group,
        "modifiedTime": rfc3339(mtime),
    });
    if info.kind == FileKind::Symlink {
        v["symlinkTarget"] = json!(String::from_utf8_lossy(&info.target));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_like_envds() {
        let info = FileInfo {
            kind: FileKind::Directory,
            mode: 0o755,
            size: 4096,
            mtime_ns: 0,
            owner: "user".into(),
            group: "user".into(),
            target: Vec::new(),
        };
        let e = entry("/home/user/d", &info);
        assert_eq!(e["name"], "d");
        assert_eq!(e["type"], "FILE_TYPE_DIRECTORY");
        assert_eq!(e["size"], "4096");
        assert_eq!(e["mode"], 2_147_484_141u64);
        assert_eq!(e["permissions"], "drwxr-xr-x");
        assert_eq!(e["modifiedTime"], "1970-01-01T00:00:00.000Z");
        let file = FileInfo {
            kind: FileKind::File,
            mode: 0o644,
            ..info
        };
        assert_eq!(entry("/a", &file)["permissions"], "-rw-r--r--");
        assert_eq!(entry("/a", &file)["mode"], 0o644);
    }
}
