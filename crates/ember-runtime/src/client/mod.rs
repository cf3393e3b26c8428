//! A client for the Firecracker REST API over a Unix socket — the one API both of ember's VMM
//! flavors speak (ember-vmm implements Firecracker's routes and shapes).
//!
//! - One keep-alive connection per client (per VM), opened lazily and reused for every call.
//! - A connection kept open between calls (it served earlier requests, or was opened ahead of
//!   use) that turns out dead before any response byte arrives (the server closed it while
//!   idle, e.g. at its connection cap, before reading the request) is reconnected once and the
//!   request resent; any other failure drops the connection and is returned.
//! - Each call has its own timeout ([`ClientTimeouts`]); reads and writes are bounded by it.
//! - Responses are read by `Content-Length`, never by waiting for the server to close the
//!   connection ([`http`]).
//! - Errors are typed ([`ClientError`]): an error status carries the status code and
//!   Firecracker's `fault_message`.
//! - One method per API call, with Firecracker's exact JSON shapes: the request and response
//!   bodies are `ember_fc_api`'s, the same types ember-vmm parses.
//!
//! The client is `&mut self` throughout: one VM's calls are serialized by whoever owns the
//! client; different VMs have different clients and never wait for each other.

mod error;
pub mod http;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ember_fc_api::{
    ActionType, ApiErrorBody, BootSource, Drive, EntropyDevice, FirecrackerVersion,
    InstanceActionInfo, InstanceInfo, Logger, MachineConfiguration, MachineConfigurationUpdate,
    Metrics, NetworkInterface, PartialDrive, PartialNetworkInterface, SnapshotCreateParams,
    SnapshotLoadParams, Vm, VmState, Vsock,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use error::ClientError;
use http::{Connection, RawResponse, RoundTripError, Target, build_request};

/// HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `PUT`.
    Put,
    /// `PATCH`.
    Patch,
}

impl Method {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }
}

/// How long each kind of call may take before it fails with [`ClientError::Timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// Configuration, queries, pause/resume.
    pub default: Duration,
    /// `InstanceStart` (loads the kernel).
    pub instance_start: Duration,
    /// `PUT /snapshot/create` (writes all of guest memory).
    pub snapshot_create: Duration,
    /// `PUT /snapshot/load`.
    pub snapshot_load: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        Self {
            default: Duration::from_secs(5),
            instance_start: Duration::from_secs(30),
            snapshot_create: Duration::from_secs(120),
            snapshot_load: Duration::from_secs(30),
        }
    }
}

fn encode_body<B: Serialize + ?Sized>(
    path: &str,
    body: Option<&B>,
) -> Result<Option<Vec<u8>>, ClientError> {
    body.map(serde_json::to_vec)
        .transpose()
        .map_err(|source| ClientError::Json {
            what: "encoding the request",
            path: path.to_string(),
            source,
        })
}

/// The body of a 2xx response; any other status becomes [`ClientError::Api`] with the
/// server's `fault_message`.
fn check_status(method: Method, path: &str, resp: RawResponse) -> Result<Vec<u8>, ClientError> {
    if (200..300).contains(&resp.status) {
        return Ok(resp.body);
    }
    let fault_message = serde_json::from_slice::<ApiErrorBody>(&resp.body)
        .map(|b| b.fault_message)
        .unwrap_or_else(|_| String::from_utf8_lossy(&resp.body).trim().to_string());
    Err(ClientError::Api {
        method: method.as_str(),
        path: path.to_string(),
        status: resp.status,
        fault_message,
    })
}

/// A Firecracker API client bound to one API socket.
#[derive(Debug)]
pub struct FirecrackerClient {
    socket: PathBuf,
    conn: Option<Connection>,
    timeouts: ClientTimeouts,
    /// Connections opened so far (1 for a client whose keep-alive connection never broke).
    connects: u64,
    /// A request sent whose response has not been read yet ([`send_unacknowledged`]).
    ///
    /// [`send_unacknowledged`]: FirecrackerClient::send_unacknowledged
    unread: Option<Unread>,
}

/// A request whose response is still to be read.
#[derive(Debug, Clone, Copy)]
struct Unread {
    method: Method,
    path: &'static str,
    timeout: Duration,
}

impl FirecrackerClient {
    /// A client for the API socket at `socket`; it connects on the first call.
    pub fn new(socket: impl Into<PathBuf>, timeouts: ClientTimeouts) -> Self {
        Self {
            socket: socket.into(),
            conn: None,
            timeouts,
            connects: 0,
            unread: None,
        }
    }

    /// The API socket this client talks to.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The timeouts in force.
    pub fn timeouts(&self) -> ClientTimeouts {
        self.timeouts
    }

    /// Whether a connection is open.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// How many connections this client has opened (a healthy keep-alive client: 1).
    pub fn connects(&self) -> u64 {
        self.connects
    }

    /// Opens the connection now (calls do it lazily otherwise).
    pub fn connect(&mut self) -> Result<(), ClientError> {
        if self.conn.is_none() {
            let mut conn = Connection::connect(&self.socket)?;
            conn.mark_kept();
            self.conn = Some(conn);
            self.connects += 1;
        }
        Ok(())
    }

    /// Drops the connection; the next call opens a new one.
    pub fn disconnect(&mut self) {
        self.conn = None;
        self.unread = None;
    }

    /// Whether a request sent with [`send_unacknowledged`](Self::send_unacknowledged) still
    /// has its response unread.
    pub fn has_unread(&self) -> bool {
        self.unread.is_some()
    }

    /// Sends a request without waiting for its response: the caller goes on at once, and the
    /// response is read — and an error status reported — by
    /// [`acknowledge`](Self::acknowledge) or before this client's next call. For a request
    /// whose effect the caller proves another way (a resume, proven by the guest answering).
    pub fn send_unacknowledged<B: Serialize + ?Sized>(
        &mut self,
        method: Method,
        path: &'static str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        self.acknowledge()?;
        let encoded = encode_body(path, body)?;
        let bytes = build_request(method.as_str(), path, encoded.as_deref());
        let target = Target {
            method: method.as_str(),
            path,
            timeout,
        };
        let deadline = Instant::now() + timeout;
        self.on_connection(|conn| conn.send(&bytes, target, deadline).map(|()| ((), true)))?;
        self.unread = Some(Unread {
            method,
            path,
            timeout,
        });
        Ok(())
    }

    /// Reads the response to the request sent with
    /// [`send_unacknowledged`](Self::send_unacknowledged), if any, and turns an error status
    /// into [`ClientError::Api`] naming that request.
    pub fn acknowledge(&mut self) -> Result<(), ClientError> {
        let Some(unread) = self.unread.take() else {
            return Ok(());
        };
        let target = Target {
            method: unread.method.as_str(),
            path: unread.path,
            timeout: unread.timeout,
        };
        let Some(mut conn) = self.conn.take() else {
            return Err(ClientError::Closed { received: 0 });
        };
        // Sent on this connection already: a dead connection now is not safe to retry.
        let resp = conn
            .receive(target, Instant::now() + unread.timeout, false)
            .map_err(|e| e.error)?;
        if !resp.close {
            self.conn = Some(conn);
        }
        check_status(unread.method, unread.path, resp).map(drop)
    }

    /// Sends one request and returns the raw response, whatever its status.
    pub fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<RawResponse, ClientError> {
        self.acknowledge()?;
        let deadline = Instant::now() + timeout;
        let bytes = build_request(method.as_str(), path, body);
        let target = Target {
            method: method.as_str(),
            path,
            timeout,
        };
        self.on_connection(|conn| {
            // Keep the connection unless the server said it closes it.
            conn.round_trip(&bytes, target, deadline).map(|resp| {
                let keep = !resp.close;
                (resp, keep)
            })
        })
    }

    /// Runs `f` on the open connection (opening one if needed) and keeps the connection if
    /// `f` says so. A connection `f` fails on is dropped (its state is unknown); a dead
    /// keep-alive connection is replaced and `f` retried once.
    fn on_connection<T>(
        &mut self,
        mut f: impl FnMut(&mut Connection) -> Result<(T, bool), RoundTripError>,
    ) -> Result<T, ClientError> {
        let mut retried = false;
        loop {
            let mut conn = match self.conn.take() {
                Some(c) => c,
                None => {
                    let c = Connection::connect(&self.socket)?;
                    self.connects += 1;
                    c
                }
            };
            match f(&mut conn) {
                Ok((out, keep)) => {
                    if keep {
                        conn.mark_kept();
                        self.conn = Some(conn);
                    }
                    return Ok(out);
                }
                Err(e) if e.stale && !retried => {
                    tracing::debug!(socket = %self.socket.display(), error = %e.error,
                        "keep-alive API connection was dead; reconnecting once");
                    retried = true;
                }
                Err(e) => return Err(e.error),
            }
        }
    }

    /// Sends a request with an optional JSON body; an error status becomes
    /// [`ClientError::Api`]. Returns the response body.
    fn call<B: Serialize + ?Sized>(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<Vec<u8>, ClientError> {
        let encoded = encode_body(path, body)?;
        let resp = self.request(method, path, encoded.as_deref(), timeout)?;
        check_status(method, path, resp)
    }

    fn get_json<R: DeserializeOwned>(&mut self, path: &str) -> Result<R, ClientError> {
        let body = self.call::<()>(Method::Get, path, None, self.timeouts.default)?;
        serde_json::from_slice(&body).map_err(|source| ClientError::Json {
            what: "decoding the response",
            path: path.to_string(),
            source,
        })
    }

    /// `GET /`: instance information (state `Not started` / `Running` / `Paused`).
    pub fn describe_instance(&mut self) -> Result<InstanceInfo, ClientError> {
        self.get_json("/")
    }

    /// `GET /version`.
    pub fn version(&mut self) -> Result<FirecrackerVersion, ClientError> {
        self.get_json("/version")
    }

    /// `GET /machine-config`.
    pub fn machine_config(&mut self) -> Result<MachineConfiguration, ClientError> {
        self.get_json("/machine-config")
    }

    /// `GET /vm/config`: the full configuration (`FullVmConfiguration`), as JSON.
    pub fn vm_config(&mut self) -> Result<serde_json::Value, ClientError> {
        self.get_json("/vm/config")
    }

    /// `GET /ember/timings`: ember-vmm's per-phase timings of its last boot, restore and
    /// snapshot (an ember extension; a real Firecracker answers 400).
    pub fn ember_timings(&mut self) -> Result<serde_json::Value, ClientError> {
        self.get_json("/ember/timings")
    }

    /// `PUT /machine-config` (pre-boot).
    pub fn put_machine_config(&mut self, config: &MachineConfiguration) -> Result<(), ClientError> {
        let t = self.timeouts.default;
        self.call(Method::Put, "/machine-config", Some(config), t)
            .map(drop)
    }

    /// `PATCH /machine-config` (pre-boot).
    pub fn patch_machine_config(
        &mut self,
        update: &MachineConfigurationUpdate,
    ) -> Result<(), ClientError> {
        let t = self.timeouts.default;
        self.call(Method::Patch, "/machine-config", Some(update), t)
            .map(drop)
    }

    /// `PUT /logger`.
    pub fn put_logger(&mut self, logger: &Logger) -> Result<(), ClientError> {
        let t = self.timeouts.default;
        self.call(Method::Put, "/logger", Some(logger), t).map(drop)
    }

    /// `PUT /metrics`.
    pub fn put_metrics(&mut self, metrics: &Metrics) -> Result<(), ClientError> {
        let t = self.timeouts.default;
        self.call(Method::Put, "/metrics", Some(metrics), t)
            .map(drop)
    }

    /// `PUT /entropy` (pre-boot).
    pub fn put_entropy(&mut self, entropy: &EntropyDevice) -> Result<(), ClientError> {
        let t = self.timeouts.default;
        self.call(Method::Put, "/entropy", Some(entropy), t)
            .map(drop)
    }

    /// `PATCH /drives/{drive_id}` (post-boot).
    pub fn patch_drive(&mut self, drive: &PartialDrive) -> Result<(), ClientError> {
        let t = self.timeouts.default;
        let path = format!("/drives/{}", encode_segment(&drive.drive_id));
        self.call(Method::Patch, &path, Some(drive), t).map(drop)
    }

    /// `PATCH /network-interfaces/{iface_id}` (post-boot: rate limiters).
    pub fn patch_network_interface(
        &mut self,
        iface: &PartialNetworkInterface,
    ) -> Result<(), ClientError> {
        let t = self.timeouts.default;
        let path = format!("/network-interfaces/{}", encode_segment(&iface.iface_id));
        self.call(Method::Patch, &path, Some(iface), t).map(drop)
    }

    /// `PUT /boot-source` (pre-boot).
    pub fn put_boot_source(&mut self, boot: &BootSource) -> Result<(), ClientError> {
        let t = self.timeouts.default;
        self.call(Method::Put, "/boot-source", Some(boot), t)
            .map(drop)
    }

    /// `PUT /drives/{drive_id}` (pre-boot).
    pub fn put_drive(&mut self, drive: &Drive) -> Result<(), ClientError> {
        let t = self.timeouts.default;
        let path = format!("/drives/{}", encode_segment(&drive.drive_id));
        self.call(Method::Put, &path, Some(drive), t).map(drop)
    }

    /// `PUT /network-interfaces/{iface_id}` (pre-boot).
    pub fn put_network_interface(&mut self, iface: &NetworkInterface) -> Result<(), ClientError> {
        let t = self.timeouts.default;
        let path = format!("/network-interfaces/{}", encode_segment(&iface.iface_id));
        self.call(Method::Put, &path, Some(iface), t).map(drop)
    }

    /// `PUT /vsock` (pre-boot).
    pub fn put_vsock(&mut self, vsock: &Vsock) -> Result<(), ClientError> {
        let t = self.timeouts.default;
        self.call(Method::Put, "/vsock", Some(vsock), t).map(drop)
    }

    /// `PUT /actions`.
    pub fn action(&mut self, action_type: ActionType) -> Result<(), ClientError> {
        let t = match action_type {
            ActionType::InstanceStart => self.timeouts.instance_start,
            _ => self.timeouts.default,
        };
        self.call(
            Method::Put,
            "/actions",
            Some(&InstanceActionInfo { action_type }),
            t,
        )
        .map(drop)
    }

    /// `PUT /actions {"action_type": "InstanceStart"}`: boots the configured microVM.
    pub fn instance_start(&mut self) -> Result<(), ClientError> {
        self.action(ActionType::InstanceStart)
    }

    /// `PUT /actions {"action_type": "SendCtrlAltDel"}`.
    pub fn send_ctrl_alt_del(&mut self) -> Result<(), ClientError> {
        self.action(ActionType::SendCtrlAltDel)
    }

    /// `PATCH /vm {"state": ...}`.
    pub fn patch_vm(&mut self, state: VmState) -> Result<(), ClientError> {
        let t = self.timeouts.default;
        self.call(Method::Patch, "/vm", Some(&Vm { state }), t)
            .map(drop)
    }

    /// `PATCH /vm {"state": "Paused"}`.
    pub fn pause(&mut self) -> Result<(), ClientError> {
        self.patch_vm(VmState::Paused)
    }

    /// `PATCH /vm {"state": "Resumed"}`.
    pub fn resume(&mut self) -> Result<(), ClientError> {
        self.patch_vm(VmState::Resumed)
    }

    /// `PATCH /vm {"state": "Resumed"}` without waiting for the answer (see
    /// [`send_unacknowledged`](Self::send_unacknowledged)).
    pub fn resume_unacknowledged(&mut self) -> Result<(), ClientError> {
        let t = self.timeouts.default;
        let body = Vm {
            state: VmState::Resumed,
        };
        self.send_unacknowledged(Method::Patch, "/vm", Some(&body), t)
    }

    /// `PUT /snapshot/create` (the VM must be paused).
    pub fn create_snapshot(&mut self, params: &SnapshotCreateParams) -> Result<(), ClientError> {
        let t = self.timeouts.snapshot_create;
        self.call(Method::Put, "/snapshot/create", Some(params), t)
            .map(drop)
    }

    /// `PUT /snapshot/load` (only on a fresh process).
    pub fn load_snapshot(&mut self, params: &SnapshotLoadParams) -> Result<(), ClientError> {
        let t = self.timeouts.snapshot_load;
        self.call(Method::Put, "/snapshot/load", Some(params), t)
            .map(drop)
    }
}

/// Percent-encodes a URL path segment (ids are validated upstream; this keeps a stray
/// character from changing the route).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
