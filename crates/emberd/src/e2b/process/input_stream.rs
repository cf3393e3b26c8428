//! `StreamInput`, envd's client stream of input: the request body's envelopes are read as they
//! arrive (`{start{process}}` first, then `{data{input{stdin|pty}}}` written to the process in
//! order, `{keepalive{}}` skipped) until the client's end envelope or the body's end.

use std::sync::Arc;

use axum::extract::Request;
use http_body_util::BodyExt as _;
use serde_json::Value;

use super::request::{self, Selector};
use super::{Op, Processes};
use crate::e2b::connect::{self, Code, RpcError};

/// Reads the stream and writes its input; `Ok` once it ended cleanly.
pub async fn run(p: &Arc<Processes>, sandbox: &str, req: Request) -> Result<(), RpcError> {
    let mut body = req.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut target: Option<(Selector, u64)> = None;
    loop {
        // Every whole envelope buffered so far.
        while let Some((flags, msg)) = take_envelope(&mut buf)? {
            if flags & 0x02 != 0 {
                return Ok(());
            }
            handle_message(p, sandbox, &mut target, &msg).await?;
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => {
                return Err(RpcError::new(
                    Code::InvalidArgument,
                    format!("the body: {e}"),
                ));
            }
            None if buf.is_empty() => return Ok(()),
            None => {
                return Err(RpcError::new(
                    Code::InvalidArgument,
                    "the stream ended inside an envelope",
                ));
            }
        }
    }
}

/// The first whole envelope of `buf` (flags and message), removed from it.
fn take_envelope(buf: &mut Vec<u8>) -> Result<Option<(u8, Value)>, RpcError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > connect::MAX_ENVELOPE {
        return Err(RpcError::new(
            Code::ResourceExhausted,
            format!(
                "an envelope of {len} bytes is over {}",
                connect::MAX_ENVELOPE
            ),
        ));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    let whole: Vec<u8> = buf.drain(..5 + len).collect();
    let flags = whole[0];
    if flags & 0x02 != 0 {
        return Ok(Some((flags, Value::Null)));
    }
    let msgs = connect::envelopes(&whole)?;
    Ok(Some((
        flags,
        msgs.into_iter().next().unwrap_or(Value::Null),
    )))
}

async fn handle_message(
    p: &Arc<Processes>,
    sandbox: &str,
    target: &mut Option<(Selector, u64)>,
    msg: &Value,
) -> Result<(), RpcError> {
    if !msg["start"].is_null() {
        let sel = request::selector(&msg["start"]["process"])?;
        let handle = p.resolve(sandbox, &sel)?;
        *target = Some((sel, handle));
        return Ok(());
    }
    if !msg["data"].is_null() {
        let Some((sel, handle)) = target.as_ref() else {
            return Err(RpcError::new(
                Code::FailedPrecondition,
                "input before the stream's start event",
            ));
        };
        let data = request::input(&msg["data"]["input"])?;
        if !data.is_empty() {
            p.apply(sandbox, sel, *handle, Op::Input(data, false))
                .await?;
        }
    }
    // keepalive (or an empty message): nothing to do.
    Ok(())
}
