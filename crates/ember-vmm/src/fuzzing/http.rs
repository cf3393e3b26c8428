//! `api_http`: bytes a client sends on the API socket — pipelined requests parsed as the server
//! parses them ([`crate::api::http::parse`]), each complete one routed ([`crate::api::route`]:
//! the path, the method and the JSON body into Firecracker's types with their checks).
//!
//! Invariants: a complete request uses between 1 and all of the buffered bytes and its body
//! is within the limit; every shorter prefix of it parses as incomplete (the server reads in
//! pieces) and the whole of it parses to the same request; a body the router accepted,
//! serialized again, is accepted again as the same action; every error renders a response.

use crate::api::http::{MAX_BODY, MAX_HEAD, Parsed, Request, Response, parse};
use crate::api::route;
use crate::controller::VmmAction;

/// At most this many pipelined requests per input.
const MAX_REQUESTS: usize = 32;

/// `api_http`.
pub fn api_http(data: &[u8]) {
    let mut buf = data;
    for _ in 0..MAX_REQUESTS {
        match parse(buf) {
            Ok(Parsed::Complete(req, used)) => {
                assert!(
                    used > 0 && used <= buf.len(),
                    "used {used} of {}",
                    buf.len()
                );
                assert!(
                    req.body.len() <= MAX_BODY,
                    "body of {} bytes",
                    req.body.len()
                );
                assert!(used <= MAX_HEAD + MAX_BODY, "request of {used} bytes");
                check_prefixes(&buf[..used], &req);
                check_route(&req);
                buf = &buf[used..];
            }
            Ok(Parsed::Incomplete { .. }) => return,
            Err(e) => {
                let _ = Response::bad_request(&e.0).to_bytes(false);
                return;
            }
        }
    }
}

/// A request's bytes, cut short, never parse as complete; whole, they parse the same.
fn check_prefixes(bytes: &[u8], req: &Request) {
    for cut in [bytes.len() - 1, bytes.len() / 2, 1] {
        if cut == 0 || cut >= bytes.len() {
            continue;
        }
        match parse(&bytes[..cut]) {
            Ok(Parsed::Incomplete { .. }) | Err(_) => {}
            Ok(Parsed::Complete(r, n)) => {
                panic!(
                    "a {cut}-byte prefix of a {}-byte request parsed as a {n}-byte {r:?}",
                    bytes.len()
                )
            }
        }
    }
    match parse(bytes) {
        Ok(Parsed::Complete(r, n)) => {
            assert_eq!(n, bytes.len());
            assert_eq!(&r, req);
        }
        other => panic!("a request re-parsed as {other:?}"),
    }
}

/// Routes `req`; an accepted body, re-serialized, routes to the same action.
fn check_route(req: &Request) {
    let action = match route(req) {
        Ok(a) => a,
        Err(e) => {
            let _ = Response::bad_request(&e.to_string()).to_bytes(true);
            return;
        }
    };
    let Some(body) = body_of(&action) else {
        return;
    };
    let again = Request {
        body,
        ..req.clone()
    };
    match route(&again) {
        Ok(a) => assert_eq!(
            format!("{a:?}"),
            format!("{action:?}"),
            "a re-serialized body routes to another action"
        ),
        Err(e) => panic!(
            "a re-serialized body is refused: {e}; body {:?}",
            String::from_utf8_lossy(&again.body)
        ),
    }
}

/// The JSON of an action's body, as a client would send it.
fn body_of(action: &VmmAction) -> Option<Vec<u8>> {
    let v = match action {
        VmmAction::PutMachineConfig(b) => serde_json::to_vec(b),
        VmmAction::PatchMachineConfig(b) => serde_json::to_vec(b),
        VmmAction::PutBootSource(b) => serde_json::to_vec(b),
        VmmAction::PutDrive(b) => serde_json::to_vec(b),
        VmmAction::PutNetworkInterface(b) => serde_json::to_vec(b),
        VmmAction::PutVsock(b) => serde_json::to_vec(b),
        VmmAction::PutEntropy(b) => serde_json::to_vec(b),
        VmmAction::CreateSnapshot(b) => serde_json::to_vec(b),
        VmmAction::LoadSnapshot(b) => serde_json::to_vec(b),
        _ => return None,
    };
    Some(v.expect("an accepted body serializes"))
}
