//! Links, addresses, routes and neighbours through rtnetlink (async, driven by a
//! single-threaded runtime on the thread that owns the namespace).

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::error::{NetError, netlink_io};

/// The loopback device's index in every namespace.
pub(crate) const LOOPBACK_INDEX: u32 = 1;

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    netlink_io(e.clone()).raw_os_error() == Some(errno)
}

/// The index of the link `name`, or `None` if there is none.
pub(crate) async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(Some(m)) => Ok(Some(m.header.index)),
        Ok(None) => Ok(None),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(NetError::io("looking up link", name, netlink_io(e))),
    }
}

/// The index of the link `name`, which must exist.
pub(crate) async fn require_index(h: &Handle, name: &str) -> Result<u32, NetError> {
    index_of(h, name).await?.ok_or_else(|| {
        NetError::io(
            "looking up link",
            name,
            std::io::Error::from_raw_os_error(libc::ENODEV),
        )
    })
}

/// The index of link `name` in the calling thread's namespace, by `if_nametoindex` (a plain
/// ioctl, cheaper than a netlink round trip).
pub(crate) fn local_index(name: &str) -> Result<u32, NetError> {
    nix::net::if_::if_nametoindex(name)
        .map_err(|e| NetError::io("looking up link", name, crate::error::errno_io(e)))
}

/// Brings link `index` (named `name` for errors) up.
pub(crate) async fn set_up(h: &Handle, index: u32, name: &str) -> Result<(), NetError> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| NetError::io("bringing up link", name, netlink_io(e)))
}

/// Creates the veth `name` (here, up) whose peer `peer` is created directly in the namespace
/// `peer_ns` (an open namespace file), with MAC `peer_mac` if given: one netlink request, like
/// `ip link add NAME up type veth peer name PEER netns NS`. The peer is left down: asking for it
/// up in the same request fails with `ENOTCONN` (the kernel opens the peer before the two ends
/// are joined, and `veth_open` refuses a device without a peer).
pub(crate) async fn add_veth(
    h: &Handle,
    name: &str,
    peer: &str,
    peer_ns: RawFd,
    peer_mac: Option<[u8; 6]>,
    resource: &str,
) -> Result<(), NetError> {
    let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer.to_string())
        .setns_by_fd(peer_ns);
    if let Some(mac) = peer_mac {
        peer_msg = peer_msg.address(mac.to_vec());
    }
    let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(name.to_string())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())))
        .up()
        .build();
    h.link()
        .add(msg)
        .execute()
        .await
        .map_err(|e| NetError::io("creating veth", resource, netlink_io(e)))
}

/// Deletes link `name`; a missing link is not an error. Returns whether it existed.
pub(crate) async fn delete(h: &Handle, name: &str) -> Result<bool, NetError> {
    let Some(index) = index_of(h, name).await? else {
        return Ok(false);
    };
    match h.link().del(index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(false),
        Err(e) => Err(NetError::io("deleting link", name, netlink_io(e))),
    }
}

/// Adds `ip/prefix_len` to link `index`.
pub(crate) async fn add_address(
    h: &Handle,
    index: u32,
    name: &str,
    ip: Ipv4Addr,
    prefix_len: u8,
) -> Result<(), NetError> {
    h.address()
        .add(index, IpAddr::V4(ip), prefix_len)
        .execute()
        .await
        .map_err(|e| {
            NetError::io(
                "adding address to",
                format!("{name} ({ip}/{prefix_len})"),
                netlink_io(e),
            )
        })
}

/// Adds a route to `dest/prefix_len` out of link `index`, through `via` or on-link (scope link).
pub(crate) async fn add_route(
    h: &Handle,
    index: u32,
    name: &str,
    dest: Ipv4Addr,
    prefix_len: u8,
    via: Option<Ipv4Addr>,
) -> Result<(), NetError> {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dest, prefix_len)
        .output_interface(index);
    b = match via {
        Some(gw) => b.gateway(gw),
        None => b.scope(RouteScope::Link),
    };
    h.route().add(b.build()).execute().await.map_err(|e| {
        NetError::io(
            "adding route",
            format!("{dest}/{prefix_len} dev {name}"),
            netlink_io(e),
        )
    })
}

/// Adds a permanent neighbour entry `ip` -> `mac` on link `index`.
pub(crate) async fn add_neighbour(
    h: &Handle,
    index: u32,
    name: &str,
    ip: Ipv4Addr,
    mac: [u8; 6],
) -> Result<(), NetError> {
    h.neighbours()
        .add(index, IpAddr::V4(ip))
        .link_layer_address(&mac)
        .state(NeighbourState::Permanent)
        .execute()
        .await
        .map_err(|e| NetError::io("adding neighbour", format!("{ip} on {name}"), netlink_io(e)))
}

/// Every link: `(name, kind)` (kind as the kernel names it: `veth`, `tun`, ...).
pub(crate) async fn list(
    h: &Handle,
    namespace: &str,
) -> Result<Vec<(String, Option<String>)>, NetError> {
    let mut out = Vec::new();
    let mut links = h.link().get().execute();
    while let Some(m) = links
        .try_next()
        .await
        .map_err(|e| NetError::io("listing links in", namespace, netlink_io(e)))?
    {
        out.push(describe(&m));
    }
    Ok(out)
}

fn describe(m: &LinkMessage) -> (String, Option<String>) {
    let mut name = String::new();
    let mut kind = None;
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    (name, kind)
}
