//! Minimal HTTP/1.1 for the API socket: request parsing with `httparse` (Content-Length
//! bodies, keep-alive, `Expect: 100-continue`, pipelining) and response encoding. No chunked
//! bodies, no compression; limits keep a misbehaving client from growing our memory.

use ember_fc_api::ApiErrorBody;

/// Largest request head (request line + headers).
pub const MAX_HEAD: usize = 8 << 10;
/// Largest body (Firecracker's default payload limit).
pub const MAX_BODY: usize = 51_200;
const MAX_HEADERS: usize = 32;

/// Request methods the API uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
    /// Anything else (answered with 400).
    Other(String),
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::Get => f.write_str("GET"),
            Method::Put => f.write_str("PUT"),
            Method::Patch => f.write_str("PATCH"),
            Method::Other(m) => f.write_str(m),
        }
    }
}

/// A complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Path without the query string.
    pub path: String,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

/// Result of trying to parse the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Need more bytes; `send_continue` if the client waits for `100 Continue`.
    Incomplete {
        /// The head is complete, the body is not, and the client asked `Expect: 100-continue`.
        send_continue: bool,
    },
    /// A request and how many bytes it used.
    Complete(Request, usize),
}

/// A request that cannot be parsed (answered with 400, then the connection closes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(pub String);

/// Parses the request at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD {
                return Err(HttpError(format!(
                    "request head larger than {MAX_HEAD} bytes"
                )));
            }
            return Ok(Parsed::Incomplete {
                send_continue: false,
            });
        }
        Err(e) => return Err(HttpError(format!("malformed HTTP request: {e}"))),
    };
    if head_len > MAX_HEAD {
        // It arrived whole in one read; refused all the same, so a request never needs more
        // than MAX_HEAD + MAX_BODY bytes of buffer.
        return Err(HttpError(format!(
            "request head larger than {MAX_HEAD} bytes"
        )));
    }
    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_string()),
    };
    let raw_path = req.path.unwrap_or("/");
    let path = raw_path.split('?').next().unwrap_or("/").to_string();
    let http11 = req.version == Some(1);
    let mut keep_alive = http11;
    let mut content_length: Option<usize> = None;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| HttpError(format!("invalid Content-Length {value:?}")))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(HttpError("conflicting Content-Length headers".into()));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError(
                "Transfer-Encoding is not supported; send a Content-Length".into(),
            ));
        } else if h.name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                keep_alive = false;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("expect")
            && value.eq_ignore_ascii_case("100-continue")
        {
            expect_continue = true;
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > MAX_BODY {
        return Err(HttpError(format!(
            "request payload with size {body_len} is larger than the limit of {MAX_BODY} bytes"
        )));
    }
    let total = head_len + body_len;
    if buf.len() < total {
        return Ok(Parsed::Incomplete {
            send_continue: expect_continue && buf.len() == head_len,
        });
    }
    Ok(Parsed::Complete(
        Request {
            method,
            path,
            body: buf[head_len..total].to_vec(),
            keep_alive,
        },
        total,
    ))
}

/// A response.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// JSON body, if any.
    pub body: Option<String>,
}

impl Response {
    /// 204 No Content.
    pub fn no_content() -> Response {
        Response {
            status: 204,
            body: None,
        }
    }

    /// 200 with JSON.
    pub fn json(value: &serde_json::Value) -> Response {
        Response {
            status: 200,
            body: Some(value.to_string()),
        }
    }

    /// 400 with `{"fault_message": ...}` (`ember_fc_api::ApiErrorBody`).
    pub fn bad_request(message: &str) -> Response {
        let body = ApiErrorBody {
            fault_message: message.to_string(),
        };
        Response {
            status: 400,
            body: Some(serde_json::to_string(&body).unwrap_or_default()),
        }
    }

    /// 408 with `{"fault_message": ...}`: the request did not arrive in time.
    pub fn request_timeout() -> Response {
        let mut r = Response::bad_request("the request did not arrive in time");
        r.status = 408;
        r
    }

    /// Encodes the response.
    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            408 => "Request Timeout",
            _ => "Internal Server Error",
        };
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nServer: ember-vmm\r\n",
            self.status, reason
        );
        if !keep_alive {
            out.push_str("Connection: close\r\n");
        }
        match &self.body {
            Some(b) => {
                out.push_str("Content-Type: application/json\r\n");
                out.push_str(&format!("Content-Length: {}\r\n\r\n", b.len()));
                out.push_str(b);
            }
            None if self.status == 204 => out.push_str("\r\n"),
            None => out.push_str("Content-Length: 0\r\n\r\n"),
        }
        out.into_bytes()
    }
}

/// The interim response for `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (Request, usize) {
        match parse(buf).unwrap() {
            Parsed::Complete(r, n) => (r, n),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn simple_and_pipelined() {
        let buf =
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPUT /vm HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
        let (r, n) = complete(buf);
        assert_eq!(
            (r.method, r.path.as_str(), r.keep_alive),
            (Method::Get, "/", true)
        );
        let (r2, n2) = complete(&buf[n..]);
        assert_eq!(r2.body, b"{}");
        assert_eq!(n + n2, buf.len());
    }

    #[test]
    fn partial_heads_and_bodies() {
        let full = b"PUT /boot-source HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        for cut in 0..full.len() {
            assert!(
                matches!(parse(&full[..cut]), Ok(Parsed::Incomplete { .. })),
                "cut {cut}"
            );
        }
        let head = b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(
            parse(head).unwrap(),
            Parsed::Incomplete {
                send_continue: true
            }
        );
    }

    #[test]
    fn errors_and_connection_handling() {
        assert!(parse(b"GARBAGE\x01\r\n\r\n").is_err());
        assert!(parse(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse(b"PUT / HTTP/1.1\r\nContent-Length: abc\r\n\r\n").is_err());
        assert!(parse(b"PUT / HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n").is_err());
        let (r, _) = complete(b"GET /?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert_eq!((r.path.as_str(), r.keep_alive), ("/", false));
        let (r, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = complete(b"DELETE /vm HTTP/1.1\r\n\r\n");
        assert_eq!(r.method, Method::Other("DELETE".into()));
        let big = vec![b'a'; MAX_HEAD + 10];
        assert!(parse(&big).is_err());
        // A complete head over the limit is refused too.
        let mut long = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        long.extend_from_slice(b"\r\n\r\n");
        assert!(parse(&long).is_err());
    }

    #[test]
    fn responses() {
        let r = Response::bad_request("boom \"x\"");
        let s = String::from_utf8(r.to_bytes(true)).unwrap();
        assert!(s.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(s.ends_with(r#"{"fault_message":"boom \"x\""}"#));
        let s = String::from_utf8(Response::request_timeout().to_bytes(false)).unwrap();
        assert!(s.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{s}");
        let s = String::from_utf8(Response::no_content().to_bytes(false)).unwrap();
        assert!(s.contains("Connection: close") && s.ends_with("\r\n\r\n"));
    }
}
