//! The client against scripted fake servers: keep-alive reuse, reconnect once, timeouts that do
//! not wait for a close, Firecracker-style 204s, typed errors.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use ember_fc_api::{InstanceState, MemoryBackend, MemoryBackendType};

/// Reads one request (head + Content-Length body) from `r`; `None` at EOF.
fn read_request(r: &mut BufReader<UnixStream>) -> Option<(String, String)> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut len = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some(v) = h.strip_prefix("Content-Length: ") {
            len = v.parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((
        line.trim_end().to_string(),
        String::from_utf8(body).unwrap(),
    ))
}

/// A server that answers each request with `reply(request_line, body)`, per connection;
/// records how many connections it accepted.
fn serve(
    reply: impl Fn(&str, &str) -> Option<Vec<u8>> + Send + Sync + 'static,
) -> (tempfile::TempDir, PathBuf, Arc<Mutex<usize>>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let conns = Arc::new(Mutex::new(0));
    let counter = conns.clone();
    let reply = Arc::new(reply);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            *counter.lock().unwrap() += 1;
            let reply = reply.clone();
            thread::spawn(move || {
                let mut w = stream.try_clone().unwrap();
                let mut r = BufReader::new(stream);
                while let Some((line, body)) = read_request(&mut r) {
                    match reply(&line, &body) {
                        Some(bytes) => {
                            if w.write_all(&bytes).is_err() {
                                break;
                            }
                        }
                        None => break, // close the connection without answering
                    }
                }
            });
        }
    });
    (dir, path, conns)
}

const NO_CONTENT: &[u8] =
    b"HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n";

fn client(path: &std::path::Path) -> FirecrackerClient {
    FirecrackerClient::new(
        path,
        ClientTimeouts {
            default: Duration::from_secs(5),
            ..ClientTimeouts::default()
        },
    )
}

#[test]
fn keep_alive_reuses_one_connection() {
    let (_d, path, conns) = serve(|line, _| {
        if line.starts_with("GET / ") {
            let body =
                r#"{"app_name":"Firecracker","id":"a","state":"Running","vmm_version":"1.17.0"}"#;
            Some(
                format!(
                    "HTTP/1.1 200 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
            )
        } else {
            Some(NO_CONTENT.to_vec())
        }
    });
    let mut c = client(&path);
    for _ in 0..50 {
        c.pause().unwrap();
        let info = c.describe_instance().unwrap();
        assert_eq!(info.state, InstanceState::Running);
    }
    assert_eq!(*conns.lock().unwrap(), 1);
    assert_eq!(c.connects(), 1);
}

#[test]
fn error_status_carries_fault_message() {
    let (_d, path, _) = serve(|_, body| {
        assert!(body.contains("snapshot_path"));
        let err = r#"{"fault_message":"Cannot load: bad magic"}"#;
        Some(
            format!(
                "HTTP/1.1 400 \r\nConnection: keep-alive\r\nContent-Length: {}\r\n\r\n{err}",
                err.len()
            )
            .into_bytes(),
        )
    });
    let mut c = client(&path);
    let err = c
        .load_snapshot(&SnapshotLoadParams {
            resume_vm: Some(true),
            ..SnapshotLoadParams::new(
                "/x".into(),
                MemoryBackend {
                    backend_type: MemoryBackendType::File,
                    backend_path: "/y".into(),
                },
            )
        })
        .unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert_eq!(err.fault_message(), Some("Cannot load: bad magic"));
    assert!(err.to_string().contains("PUT /snapshot/load"), "{err}");
    // The connection survives an error status.
    assert!(c.is_connected());
}

#[test]
fn dead_keep_alive_connection_is_reconnected_once() {
    // Every connection answers one request, then closes without answering the second.
    let (_d, path, conns) = {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let conns = Arc::new(Mutex::new(0));
        let counter = conns.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                *counter.lock().unwrap() += 1;
                let mut w = stream.try_clone().unwrap();
                let mut r = BufReader::new(stream);
                if read_request(&mut r).is_some() {
                    w.write_all(NO_CONTENT).unwrap();
                }
                // Dropping both ends closes the connection (as an idle timeout would).
            }
        });
        (dir, path, conns)
    };
    let mut c = client(&path);
    c.pause().unwrap();
    // Give the server time to close its end (the property under test is the client's
    // reaction to a close that already happened).
    thread::sleep(Duration::from_millis(50));
    c.resume().unwrap();
    c.resume().unwrap();
    assert_eq!(*conns.lock().unwrap(), 3);
}

#[test]
fn a_fresh_connection_is_not_retried() {
    let (_d, path, conns) = serve(|_, _| None);
    let mut c = client(&path);
    let err = c.pause().unwrap_err();
    assert!(
        matches!(err, ClientError::Closed { received: 0 }),
        "{err:?}"
    );
    assert!(err.is_unreachable());
    assert_eq!(*conns.lock().unwrap(), 1);
}

#[test]
fn timeout_does_not_wait_for_close() {
    // The server reads the request and never answers nor closes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let hold = Arc::new(Mutex::new(Vec::new()));
    let keep = hold.clone();
    thread::spawn(move || {
        for s in listener.incoming().flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    let mut c = FirecrackerClient::new(
        &path,
        ClientTimeouts {
            default: Duration::from_millis(200),
            ..ClientTimeouts::default()
        },
    );
    let t0 = Instant::now();
    let err = c.pause().unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn response_split_into_single_bytes_and_100_continue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let listener = UnixListener::bind(&path).unwrap();
    thread::spawn(move || {
        let stream = listener.incoming().next().unwrap().unwrap();
        let mut w = stream.try_clone().unwrap();
        let mut r = BufReader::new(stream);
        while read_request(&mut r).is_some() {
            let body = r#"{"firecracker_version":"1.17.0"}"#;
            let text = format!(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 \r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            for b in text.bytes() {
                w.write_all(&[b]).unwrap();
                w.flush().unwrap();
            }
        }
    });
    let mut c = client(&path);
    assert_eq!(c.version().unwrap().firecracker_version, "1.17.0");
    assert_eq!(c.version().unwrap().firecracker_version, "1.17.0");
}

#[test]
fn missing_socket_is_a_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = client(&dir.path().join("nope.sock"));
    let err = c.describe_instance().unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.sock"));
}

#[test]
fn path_segments_are_encoded() {
    assert_eq!(encode_segment("rootfs"), "rootfs");
    assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
}

#[test]
fn an_unacknowledged_request_is_answered_before_the_next_call() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let (_d, path, conns) = serve(move |line, body| {
        log.lock().unwrap().push(format!("{line} {body}"));
        Some(NO_CONTENT.to_vec())
    });
    let mut c = client(&path);
    for _ in 0..20 {
        c.resume_unacknowledged().unwrap();
        assert!(c.has_unread());
        // The next call reads the pending answer first, then its own.
        c.pause().unwrap();
        assert!(!c.has_unread());
    }
    c.resume_unacknowledged().unwrap();
    c.acknowledge().unwrap();
    assert!(!c.has_unread());
    c.acknowledge().unwrap();
    assert_eq!(*conns.lock().unwrap(), 1);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 41);
    assert!(
        seen[0].starts_with("PATCH /vm ") && seen[0].contains("Resumed"),
        "{seen:?}"
    );
    assert!(seen[1].contains("Paused"), "{seen:?}");
}

#[test]
fn a_failed_unacknowledged_request_fails_the_next_call_naming_itself() {
    let (_d, path, _) = serve(|line, _| {
        if line.starts_with("PATCH /vm ") {
            let err = r#"{"fault_message":"the microVM is not paused"}"#;
            Some(
                format!(
                    "HTTP/1.1 400 \r\nConnection: keep-alive\r\nContent-Length: {}\r\n\r\n{err}",
                    err.len()
                )
                .into_bytes(),
            )
        } else {
            Some(NO_CONTENT.to_vec())
        }
    });
    let mut c = client(&path);
    c.resume_unacknowledged().unwrap();
    let err = c.instance_start().unwrap_err();
    assert_eq!(err.fault_message(), Some("the microVM is not paused"));
    assert!(err.to_string().contains("PATCH /vm"), "{err}");
    // Reported once: the connection is in step again and the next call is its own.
    c.instance_start().unwrap();
    assert!(c.is_connected());
}

#[test]
fn an_unacknowledged_request_to_a_server_that_hangs_up_is_an_error_later() {
    // Reads the request, then closes without answering.
    let (_d, path, _) = serve(|_, _| None);
    let mut c = client(&path);
    c.resume_unacknowledged().unwrap();
    let err = c.acknowledge().unwrap_err();
    assert!(matches!(err, ClientError::Closed { .. }), "{err}");
    assert!(!c.has_unread());
    assert!(!c.is_connected());
}
