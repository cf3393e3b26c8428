//! The Connect protocol (v1, JSON codec) as E2B's envd speaks it: unary calls (`application/json`
//! in and out) and server-streaming calls (`application/connect+json`: envelopes of
//! `flags: u8 | length: u32 big-endian | JSON`, ending with an end-of-stream envelope, flag
//! `0x02`, carrying `{}` or `{"error": {code, message}}`), and Connect's error codes with the
//! HTTP statuses they travel with. A stream's envelopes can come all at once ([`stream`]) or as
//! they are produced ([`live_stream`], fed by a channel).

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

/// The streaming content type, exactly (the SDK refuses parameters).
pub const STREAM_CONTENT_TYPE: &str = "application/connect+json";

/// Flag of the envelope that ends a stream.
const END_STREAM: u8 = 0x02;

/// Largest request envelope accepted, bytes.
pub const MAX_ENVELOPE: usize = 1 << 20;

/// A Connect error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// `invalid_argument` (400).
    InvalidArgument,
    /// `not_found` (404).
    NotFound,
    /// `already_exists` (409).
    AlreadyExists,
    /// `permission_denied` (403).
    PermissionDenied,
    /// `unauthenticated` (401).
    Unauthenticated,
    /// `resource_exhausted` (429).
    ResourceExhausted,
    /// `failed_precondition` (400).
    FailedPrecondition,
    /// `unimplemented` (501).
    Unimplemented,
    /// `internal` (500).
    Internal,
    /// `unavailable` (503).
    Unavailable,
    /// `deadline_exceeded` (504).
    DeadlineExceeded,
}

impl Code {
    /// The name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Code::InvalidArgument => "invalid_argument",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::Unauthenticated => "unauthenticated",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DeadlineExceeded => "deadline_exceeded",
        }
    }

    /// The HTTP status a unary error travels with.
    pub fn status(self) -> StatusCode {
        match self {
            Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The code for an HTTP status of emberd's own API errors.
    pub fn from_status(status: StatusCode) -> Code {
        match status.as_u16() {
            400 | 422 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            409 => Code::AlreadyExists,
            413 | 429 => Code::ResourceExhausted,
            501 => Code::Unimplemented,
            502 | 503 => Code::Unavailable,
            504 => Code::DeadlineExceeded,
            _ => Code::Internal,
        }
    }
}

/// A failed call.
#[derive(Debug, Clone)]
pub struct RpcError {
    /// Its code.
    pub code: Code,
    /// What went wrong.
    pub message: String,
}

impl RpcError {
    /// An error with `code`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({"code": self.code.name(), "message": self.message})
    }
}

impl From<crate::error::ApiError> for RpcError {
    fn from(e: crate::error::ApiError) -> Self {
        RpcError::new(Code::from_status(e.status), e.message)
    }
}

impl IntoResponse for RpcError {
    /// A unary error (or one before a stream's first message).
    fn into_response(self) -> Response {
        (
            self.code.status(),
            [(CONTENT_TYPE, "application/json")],
            self.json().to_string(),
        )
            .into_response()
    }
}

/// A unary success.
pub fn unary(v: &impl Serialize) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => ([(CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => RpcError::new(Code::Internal, format!("encoding the reply: {e}")).into_response(),
    }
}

/// The messages of a streaming request body (the SDK sends one, or several for client
/// streams, with no end envelope).
pub fn envelopes(body: &[u8]) -> Result<Vec<serde_json::Value>, RpcError> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        if rest.len() < 5 {
            return Err(RpcError::new(
                Code::InvalidArgument,
                "a truncated envelope header",
            ));
        }
        let flags = rest[0];
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if len > MAX_ENVELOPE || rest.len() < 5 + len {
            return Err(RpcError::new(
                Code::InvalidArgument,
                format!("an envelope of {len} bytes is truncated or over {MAX_ENVELOPE}"),
            ));
        }
        let payload = &rest[5..5 + len];
        rest = &rest[5 + len..];
        if flags & 0x01 != 0 {
            return Err(RpcError::new(
                Code::Unimplemented,
                "compressed envelopes are not supported (identity only)",
            ));
        }
        if flags & END_STREAM != 0 {
            break;
        }
        out.push(serde_json::from_slice(payload).map_err(|e| {
            RpcError::new(Code::InvalidArgument, format!("a request message: {e}"))
        })?);
    }
    Ok(out)
}

fn envelope(flags: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(flags);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// A whole server stream: `messages` then the end envelope (with `error`, if any).
pub fn stream(messages: &[serde_json::Value], error: Option<&RpcError>) -> Response {
    let mut body = Vec::new();
    for m in messages {
        envelope(0, m.to_string().as_bytes(), &mut body);
    }
    let end = match error {
        Some(e) => json!({"error": e.json()}),
        None => json!({}),
    };
    envelope(END_STREAM, end.to_string().as_bytes(), &mut body);
    ([(CONTENT_TYPE, STREAM_CONTENT_TYPE)], Bytes::from(body)).into_response()
}

/// One message envelope of a server stream.
pub fn message(m: &serde_json::Value) -> Bytes {
    let mut out = Vec::new();
    envelope(0, m.to_string().as_bytes(), &mut out);
    Bytes::from(out)
}

/// The end envelope of a server stream (with `error`, if any).
pub fn end(error: Option<&RpcError>) -> Bytes {
    let end = match error {
        Some(e) => json!({"error": e.json()}),
        None => json!({}),
    };
    let mut out = Vec::new();
    envelope(END_STREAM, end.to_string().as_bytes(), &mut out);
    Bytes::from(out)
}

/// A server stream whose envelopes are sent on `rx` as they are made ([`message`]s, then one
/// [`end`]); the body ends when every sender is gone.
pub fn live_stream(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Response {
    (
        [(CONTENT_TYPE, STREAM_CONTENT_TYPE)],
        axum::body::Body::new(ChannelBody(rx)),
    )
        .into_response()
}

/// A response body read from a channel.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_refuse_garbage() {
        let mut body = Vec::new();
        envelope(0, br#"{"a":1}"#, &mut body);
        envelope(0, br#"{"b":2}"#, &mut body);
        envelope(END_STREAM, b"{}", &mut body);
        let msgs = envelopes(&body).unwrap();
        assert_eq!(msgs, vec![json!({"a": 1}), json!({"b": 2})]);
        assert!(envelopes(&[0, 0, 0]).is_err());
        assert!(envelopes(&[0, 0, 0, 0, 9, b'{']).is_err());
        assert!(envelopes(&[1, 0, 0, 0, 2, b'{', b'}']).is_err());
        let mut big = vec![0u8];
        big.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(envelopes(&big).is_err());
    }
}
