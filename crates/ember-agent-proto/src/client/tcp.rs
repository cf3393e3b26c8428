//! The host's call that turns an agent connection into a byte pipe to a TCP port in the guest
//! (TcpConnect).
//!
//! Owns [`TcpPipe`] and the two ways to get one: [`AgentClient::into_tcp`] on a negotiated
//! connection (which it consumes: after TcpConnected the stream carries no frames), and
//! [`tcp_connect`] on a fresh connection through a VM's hybrid vsock socket. A refusal stays a
//! [`ClientError::Agent`] (code `CONNECTION_REFUSED` when nothing listens); an agent that does
//! not know the request answers [`ClientError::Unsupported`].

use std::os::unix::net::UnixStream;
use std::path::Path;

use super::{AgentClient, ClientError, ConnectOptions};
use crate::message::{Reply, Request};

/// A connection to a TCP port in the guest, through the agent.
#[derive(Debug)]
pub struct TcpPipe {
    /// The stream: bytes written reach the guest's TCP connection, bytes read come from it.
    /// Reading end-of-file means the guest side closed (or half-closed) its connection. Its
    /// read and write timeouts are cleared.
    pub stream: UnixStream,
    /// Bytes from the guest's connection that arrived with the reply frame (read them before
    /// `stream`).
    pub leftover: Vec<u8>,
}

impl AgentClient {
    /// Sends TcpConnect for `port` on the guest's 127.0.0.1 and, once the agent has connected,
    /// hands the connection back as a raw byte pipe to it. The client is spent either way; a
    /// Reseed sent ahead is finished first (its failure is this call's).
    pub fn into_tcp(mut self, port: u16) -> Result<TcpPipe, ClientError> {
        self.call(&Request::TcpConnect { port }, |reply| match reply {
            Reply::TcpConnected => Ok(()),
            _ => Err("unreachable: kind checked".to_owned()),
        })?;
        let leftover = self.reader.take_buffered();
        let stream = self.stream;
        let cleared = stream
            .set_read_timeout(None)
            .and_then(|()| stream.set_write_timeout(None));
        if let Err(source) = cleared {
            return Err(ClientError::Io {
                request: crate::Kind::TcpConnect,
                stage: "clearing the stream's timeouts",
                source,
            });
        }
        Ok(TcpPipe { stream, leftover })
    }
}

/// Connects to the agent on guest port `agent_port` through the hybrid vsock socket at
/// `uds_path` (a fresh connection), then to TCP port `port` on the guest's 127.0.0.1 through
/// it ([`AgentClient::into_tcp`]).
pub fn tcp_connect(
    uds_path: impl AsRef<Path>,
    agent_port: u32,
    port: u16,
    options: &ConnectOptions,
) -> Result<TcpPipe, ClientError> {
    AgentClient::connect_with(uds_path, agent_port, options)?.into_tcp(port)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use super::*;
    use crate::io::FrameReader;
    use crate::kind::{ErrorCode, Kind};
    use crate::limits::MAX_FRAME_LEN;
    use crate::message::HelloOk;

    /// Answers Hello, then the next request with `answer`, then writes `after` on the
    /// connection and echoes what it reads.
    fn fake_agent(answer: Reply<'static>, after: &'static [u8]) -> AgentClient {
        let (host, mut agent) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut reader = FrameReader::new(MAX_FRAME_LEN);
            let mut out = vec![0u8; 4096];
            for i in 0..2 {
                let frame = reader.read_frame(&mut agent).unwrap();
                let (header, req) = Request::decode(frame).unwrap();
                let reply = if i == 0 {
                    Reply::Hello(HelloOk {
                        version: 1,
                        max_frame_len: 65536,
                        name: "fake",
                        software_version: "0",
                    })
                } else {
                    assert_eq!(req, Request::TcpConnect { port: 8000 });
                    answer
                };
                let n = reply.encode(header.request_id, &mut out).unwrap();
                let mut frame = out[..n].to_vec();
                if i == 1 {
                    // The guest's first bytes in the same write as the reply.
                    frame.extend_from_slice(after);
                }
                agent.write_all(&frame).unwrap();
            }
            let mut buf = [0u8; 64];
            while let Ok(n) = agent.read(&mut buf) {
                if n == 0 || agent.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        AgentClient::from_stream(host, &ConnectOptions::with_timeout(Duration::from_secs(5)))
            .unwrap()
    }

    #[test]
    fn the_stream_after_the_reply_is_the_pipe() {
        let mut pipe = fake_agent(Reply::TcpConnected, b"hello")
            .into_tcp(8000)
            .unwrap();
        assert_eq!(pipe.leftover, b"hello");
        pipe.stream.write_all(b"echo me").unwrap();
        let mut got = [0u8; 7];
        pipe.stream.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"echo me");
    }

    #[test]
    fn refusals_and_old_agents_are_errors() {
        let refused = Reply::Error(crate::ErrorReply {
            code: ErrorCode::CONNECTION_REFUSED,
            message: "tcp port 8000: connection refused",
        });
        match fake_agent(refused, b"").into_tcp(8000) {
            Err(ClientError::Agent { code, request, .. }) => {
                assert_eq!(code, ErrorCode::CONNECTION_REFUSED);
                assert_eq!(request, Kind::TcpConnect);
            }
            other => panic!("{other:?}"),
        }
        let old = Reply::Unsupported {
            kind: Kind::TcpConnect.as_u8(),
        };
        assert!(matches!(
            fake_agent(old, b"").into_tcp(8000),
            Err(ClientError::Unsupported {
                request: Kind::TcpConnect
            })
        ));
    }
}
