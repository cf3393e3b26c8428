//! One request to an ember-vmm (or Firecracker) API socket, for places without curl — the
//! nested Linux rig's busybox L1 uses it to pause, snapshot and restore its L2 guest.
//!
//! ```text
//! api_call <socket> <METHOD> <path> [json body]
//! ```
//! Prints the status line and the body; exits 0 on a 2xx answer, 1 otherwise.
// A command-line tool: printing is its output.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 || args.len() > 5 {
        eprintln!("usage: api_call <socket> <METHOD> <path> [json body]");
        return ExitCode::from(2);
    }
    let (socket, method, path) = (&args[1], &args[2], &args[3]);
    let body = args.get(4).map(String::as_str).unwrap_or("");
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("api_call: connecting to {socket}: {e}");
            return ExitCode::from(1);
        }
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut response = Vec::new();
    if let Err(e) = stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.read_to_end(&mut response))
    {
        eprintln!("api_call: {method} {path}: {e}");
        return ExitCode::from(1);
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next().unwrap_or("");
    println!("{status_line} {body}");
    let ok = status_line
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code.starts_with('2'));
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
