//! The fuzz targets: name, entry point, longest input, dictionary and seed generator.
//!
//! The bodies of the `ember-vmm` targets are in `ember_vmm::fuzzing` (they drive crate-private
//! pieces); the agent protocol's are here (its public API is enough).

pub mod agent;

use ember_vmm::fuzzing::virtio::{self, Kind};
use ember_vmm::fuzzing::{http, snapshot};

use crate::engine::TargetFn;

/// One target.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Name (`fuzz/corpus/<name>/`, `scripts/fuzz.sh <name>`).
    pub name: &'static str,
    /// Entry point.
    pub run: TargetFn,
    /// Longest input the fuzzer makes.
    pub max_len: usize,
    /// Dictionary (AFL format), compiled in from `fuzz/dict/`.
    pub dict: &'static str,
    /// What it covers (for `list`).
    pub what: &'static str,
    /// Generated seeds (`ember-fuzz seeds` writes them to `fuzz/corpus/<name>/`).
    pub seeds: fn() -> Vec<Vec<u8>>,
}

fn virtio_block(d: &[u8]) {
    virtio::device(Kind::Block, d);
}
fn virtio_net(d: &[u8]) {
    virtio::device(Kind::Net, d);
}
fn virtio_vsock(d: &[u8]) {
    virtio::device(Kind::Vsock, d);
}
fn virtio_rng(d: &[u8]) {
    virtio::device(Kind::Rng, d);
}

const VIRTIO_DICT: &str = include_str!("../../dict/virtio.dict");

/// Every target, in the order `scripts/fuzz.sh` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "snapshot_state",
        run: snapshot::snapshot_state,
        max_len: 64 << 10,
        dict: include_str!("../../dict/snapshot_state.dict"),
        what: "snapshot state file: container, sections, config JSON, restore checks, device states",
        seeds: snapshot::seeds,
    },
    Target {
        name: "virtio_block",
        run: virtio_block,
        max_len: 4096,
        dict: VIRTIO_DICT,
        what: "virtio-blk queue processing against guest-controlled memory, via the MMIO transport",
        seeds: || virtio::seeds(Some(Kind::Block)),
    },
    Target {
        name: "virtio_net",
        run: virtio_net,
        max_len: 4096,
        dict: VIRTIO_DICT,
        what: "virtio-net TX/RX queues on a TAP (needs root: a network namespace of its own)",
        seeds: || virtio::seeds(Some(Kind::Net)),
    },
    Target {
        name: "virtio_vsock",
        run: virtio_vsock,
        max_len: 4096,
        dict: VIRTIO_DICT,
        what: "virtio-vsock queues and the Unix-socket muxer, with host peers",
        seeds: || virtio::seeds(Some(Kind::Vsock)),
    },
    Target {
        name: "virtio_rng",
        run: virtio_rng,
        max_len: 4096,
        dict: VIRTIO_DICT,
        what: "virtio-rng queue processing, rate limited or not",
        seeds: || virtio::seeds(Some(Kind::Rng)),
    },
    Target {
        name: "virtio_mmio",
        run: virtio::mmio,
        max_len: 4096,
        dict: VIRTIO_DICT,
        what: "the virtio-mmio transport: raw register protocol, restore from a saved transport state",
        seeds: || virtio::seeds(None),
    },
    Target {
        name: "api_http",
        run: http::api_http,
        max_len: 8192,
        dict: include_str!("../../dict/api_http.dict"),
        what: "the API's HTTP/1.1 request parsing (pipelined) and routing with JSON bodies",
        seeds: http_seeds,
    },
    Target {
        name: "agent_decode",
        run: agent::decode,
        max_len: 8192,
        dict: include_str!("../../dict/agent.dict"),
        what: "agent protocol frames: split, decode as request and reply, canonical re-encoding",
        seeds: agent::seeds_decode,
    },
    Target {
        name: "agent_session",
        run: agent::session,
        max_len: 16384,
        dict: include_str!("../../dict/agent.dict"),
        what: "agent protocol stream: frame reassembly (guest and host) and the guest Session",
        seeds: agent::seeds_session,
    },
];

/// The target called `name`.
pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

fn http_seeds() -> Vec<Vec<u8>> {
    let req = |method: &str, path: &str, body: &str| {
        let mut s =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
        if !body.is_empty() {
            s.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        s.push_str("\r\n");
        s.push_str(body);
        s.into_bytes()
    };
    let mut out = vec![
        req("GET", "/", ""),
        req("GET", "/version", ""),
        req("GET", "/machine-config", ""),
        req("GET", "/vm/config", ""),
        req("GET", "/ember/devices", ""),
        req(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":false}"#,
        ),
        req("PATCH", "/machine-config", r#"{"mem_size_mib":512}"#),
        req(
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path":"/tmp/vmlinux","boot_args":"console=ttyS0 reboot=k panic=1","initrd_path":null}"#,
        ),
        req(
            "PUT",
            "/drives/rootfs",
            r#"{"drive_id":"rootfs","path_on_host":"/tmp/rootfs.ext4","is_root_device":true,"is_read_only":false,"cache_type":"Unsafe","io_engine":"Sync","rate_limiter":{"bandwidth":{"size":1048576,"one_time_burst":0,"refill_time":100},"ops":{"size":100,"refill_time":1000}}}"#,
        ),
        req(
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:ac:10:00:02","rx_rate_limiter":{"ops":{"size":10,"refill_time":100}}}"#,
        ),
        req(
            "PUT",
            "/vsock",
            r#"{"guest_cid":3,"uds_path":"/tmp/v.sock"}"#,
        ),
        req(
            "PUT",
            "/entropy",
            r#"{"rate_limiter":{"bandwidth":{"size":1000,"refill_time":100}}}"#,
        ),
        req("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#),
        req("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#),
        req("PATCH", "/vm", r#"{"state":"Paused"}"#),
        req(
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_type":"Full","snapshot_path":"/tmp/s.state","mem_file_path":"/tmp/s.mem"}"#,
        ),
        req(
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path":"/tmp/s.state","mem_backend":{"backend_type":"File","backend_path":"/tmp/s.mem"},"resume_vm":true,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap1"}],"vsock_override":{"uds_path":"/tmp/v2.sock"}}"#,
        ),
    ];
    // Pipelined, and a client waiting for 100-continue.
    let mut p = req("GET", "/", "");
    p.extend(req(
        "PUT",
        "/vsock",
        r#"{"guest_cid":3,"uds_path":"/tmp/v.sock"}"#,
    ));
    p.extend(req("GET", "/version", ""));
    out.push(p);
    out.push(
        b"PUT /actions HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 32\r\nConnection: close\r\n\r\n{\"action_type\":\"InstanceStart\"}"
            .to_vec(),
    );
    out
}
