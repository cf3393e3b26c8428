//! A process stream's frames: a thread per subscriber writing its events to the connection.
#![forbid(unsafe_code)]

use std::sync::Arc;

use crossbeam_channel::Receiver;
use ember_agent_proto::io::encode_into_vec;
use ember_agent_proto::{ErrorCode, ProcessExit, ProcessOutput, Reply};

use super::{Event, Proc};
use crate::server::{After, Ctx, Writer};

/// After the reply: a thread that writes `rx`'s events as frames of this request's stream.
pub(super) fn stream_after(ctx: &Ctx<'_>, proc: &Arc<Proc>, rx: Receiver<Event>) -> After {
    let writer = Arc::clone(ctx.writer);
    let id = ctx.request_id;
    let limit = ctx.session.reply_limit();
    let handle = proc.handle;
    After::Then(Box::new(move || {
        let spawned = std::thread::Builder::new()
            .name(format!("stream-{handle}"))
            .stack_size(128 * 1024)
            .spawn(move || write_stream(&writer, id, handle, limit, &rx));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a stream thread");
        }
    }))
}

fn write_stream(writer: &Writer, id: u64, handle: u64, limit: usize, rx: &Receiver<Event>) {
    let mut frame = Vec::new();
    let room = limit.saturating_sub(ProcessOutput::OVERHEAD).max(1);
    let mut send = |reply: &Reply<'_>| -> bool {
        let encoded = encode_into_vec(&mut frame, |buf| reply.encode_limited(id, limit, buf));
        match encoded.map_err(|e| std::io::Error::other(e.to_string())) {
            Ok(()) => match writer.send(&frame) {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(error = %e, "process stream: the host went away");
                    writer.close();
                    false
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "process stream: cannot encode an event");
                false
            }
        }
    };
    loop {
        match rx.recv() {
            Ok(Event::Output(stream, data)) => {
                for piece in data.chunks(room) {
                    let event = Reply::ProcessOutput(ProcessOutput {
                        handle,
                        stream,
                        data: piece,
                    });
                    if !send(&event) {
                        return;
                    }
                }
            }
            Ok(Event::Exit {
                exit_code,
                timed_out,
            }) => {
                send(&Reply::ProcessExit(ProcessExit {
                    handle,
                    exit_code,
                    timed_out,
                }));
                return;
            }
            Err(_) => {
                // Dropped: the host fell behind (or the connection closed).
                let error = Reply::Error(ember_agent_proto::ErrorReply {
                    code: ErrorCode::BUSY,
                    message: "process stream dropped: the host did not read its output in time",
                });
                send(&error);
                return;
            }
        }
    }
}
