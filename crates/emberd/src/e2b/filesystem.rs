//! envd's `filesystem.Filesystem` service over ember's agent.
//!
//! Not implemented yet: the agent protocol's file operations beyond PutFile/GetFile (Stat,
//! ListDir, MakeDir, Remove, Rename) are being added; until then every method answers
//! `unimplemented` with that reason.

use axum::extract::Request;
use axum::response::{IntoResponse, Response};

use super::connect::{Code, RpcError};
use super::envd::{EnvdState, Target};

/// Handles `filesystem.Filesystem/<name>`.
pub async fn call(_st: &EnvdState, _t: Target, name: &str, _req: Request) -> Response {
    RpcError::new(
        Code::Unimplemented,
        format!("filesystem.Filesystem/{name} is not implemented by this envd yet"),
    )
    .into_response()
}
