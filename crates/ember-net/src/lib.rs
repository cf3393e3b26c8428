//! ember-net: a network per sandbox.
//!
//! Every clone of a template snapshot wakes up with the network the template booted with: the
//! same guest address and MAC. Instead of reconfiguring each guest, ember gives each sandbox its
//! own network namespace in which that fixed guest address is translated to the sandbox's unique
//! one — Firecracker's "network for clones" design, which E2B runs too.
//!
//! # Topology (one sandbox, allocation `embtap3` / `172.30.0.7`, gateway `172.30.0.1`)
//!
//! ```text
//!  host namespace                        | netns ember-embtap3                    | guest (VM)
//!  embtap3  172.30.0.1/32   <-- veth --> | eth0  172.30.0.7/32                    |
//!  route 172.30.0.7/32 dev embtap3       |   route 172.30.0.1 dev eth0 scope link |
//!                                        |   default via 172.30.0.1               |
//!                                        | tap0  172.16.0.1/30  <-- TAP (VMM) --> | 172.16.0.2
//!                                        |   neigh 172.16.0.2 lladdr 06:00:ac:10:00:02 permanent
//!                                        | ip_forward = 1, nft table `ip ember`   |
//! ```
//!
//! - The namespace is `ember-<host_if>`, registered under `/run/netns` like `ip netns add` does
//!   (a file bind-mounted from the namespace), so the jailer joins it by path
//!   ([`SandboxNet::netns_path`]). It is created without forking: a dedicated thread calls
//!   `unshare(CLONE_NEWNET)` and bind-mounts `/proc/thread-self/ns/net`.
//! - The veth's host end carries the allocation's gateway as a `/32` — the same address on every
//!   host veth, point to point (as Calico does) — and a host route to the sandbox's `/32`, so the
//!   host reaches each sandbox at its unique address and no two sandboxes share a link.
//! - Inside, the persistent TAP `tap0` (owned by the jailed VMM's uid/gid) holds the guest-side
//!   gateway; [`GuestAddressing`] is the same for every sandbox (`172.16.0.2`, fixed MAC).
//!
//! # nftables
//!
//! Inside each sandbox namespace, table `ip ember` (see `nft.rs` for the text form):
//! DNAT `iifname eth0 ip daddr <sandbox_ip>` → the guest (the host reaches the guest on every
//! port at the sandbox's address), SNAT `oifname eth0 ip saddr <guest>` → `<sandbox_ip>`, and a
//! forward chain (policy drop): `ct state established,related accept`, host → guest
//! (`iifname eth0 oifname tap0`) accept, guest → out (`iifname tap0 oifname eth0`) jumps to the
//! `egress` chain holding the sandbox's [`EgressPolicy`] (evaluation order in
//! [`ember_core::net_policy`]). Refused connections get a TCP reset or an ICMP
//! admin-prohibited, so a guest fails fast instead of timing out. [`HostNet::set_policy`]
//! replaces the egress chain in one nft transaction (flush + add): the next connection sees the
//! new policy, established flows continue. The rules live in the sandbox's own namespace, so
//! removing the namespace removes them: nothing to leak in the host's ruleset.
//!
//! Host-wide, once ([`HostNet::ensure`], idempotent; [`HostNet::remove`] deletes it): IPv4
//! forwarding, table `inet ember` — forward: `embtap*` → `embtap*` dropped (sandboxes never reach
//! each other), flows into `embtap*` only if established/related (only the host itself opens
//! connections to sandboxes, from its output path); input: from `embtap*` only
//! established/related (sandboxes cannot reach the host's own services) — and table
//! `ip ember_nat` masquerading the sandbox subnet leaving by any non-`embtap*` interface. The
//! wildcard is the configured prefix plus `*` ([`NetConfig::ifname_wildcard`]); nft's JSON input
//! takes it as a plain string (`"embtap*"`), as its text syntax does. These tables only add
//! drops: another firewall on the host (a `drop` policy elsewhere) still has its say.
//!
//! # How it talks to the kernel
//!
//! - Links, addresses, routes, neighbours: rtnetlink ([`rtnetlink`] pinned in the workspace),
//!   with a netlink socket opened on a thread inside the namespace (a socket stays in the
//!   namespace it was opened in). Creating a sandbox is one thread: it opens a host socket,
//!   unshares into the new namespace, opens a second socket there, and drives both from a
//!   single-threaded tokio runtime. The veth is made in one request with its peer placed
//!   directly in the host namespace (`IFLA_NET_NS_FD`).
//! - The TAP: rtnetlink cannot create one (the kernel refuses "tun/tap creation via rtnetlink"),
//!   so `tap.rs` does the `TUNSETIFF`/`TUNSETOWNER`/`TUNSETGROUP`/`TUNSETPERSIST` ioctls — the
//!   crate's only `unsafe` (the crate is `deny(unsafe_code)`, that module alone allowed), each
//!   call with its `SAFETY:` comment.
//! - nftables: JSON (`nft -j -f -`) built with serde_json; `nft` is spawned from a thread inside
//!   the namespace (a child inherits its spawning thread's namespace, so no `ip netns exec`), a
//!   second thread that runs alongside the netlink work (its rules name devices, they need not
//!   exist yet).
//!
//! # Cost
//!
//! Setting up one sandbox network takes a median 5.5-6.6 ms (release build, 100 in a row on a
//! loaded 2-CPU host; [`SetupTimes`] breaks it down): ~0.7 ms for the namespace, ~2 ms of
//! netlink, and the rest waiting for `nft` (a process start and a JSON ruleset, ~4 ms, which is
//! the critical path). Removing one takes ~35 ms, nearly all of it the kernel deleting the veth
//! (RCU grace periods; `ip link del` of a veth takes as long).
//!
//! # API
//!
//! - [`HostNet::ensure`]`(NetConfig)`: host-wide setup; the returned [`HostNet`] does the rest.
//! - [`SandboxNet::plan`]`(&NetworkAllocation, &GuestAddressing)`: pure, names and addresses.
//! - [`HostNet::create`]`(&SandboxNet, tap_owner, &EgressPolicy) -> SetupTimes`: makes it; if it
//!   fails halfway it removes what it made (never what was there before). [`HostNet::create_with`] takes a
//!   [`GuestLink`] (a TAP, or for tests without a VM a veth stand-in).
//! - [`HostNet::set_policy`], [`HostNet::destroy`] (idempotent).
//! - [`HostNet::sweep`]`(keep)`: crash recovery, removes every namespace and host veth of ours
//!   whose host interface is not in `keep`.
//! - [`HostNet::census`]: counts what exists (tests count leaks with it).
//! - [`HostNet::open`]: a handle without touching the host (census, sweep, remove);
//!   [`HostNet::remove`] deletes the host-wide tables.
//!
//! Every call does its namespace work on threads of its own (never moving the caller's thread)
//! and blocks; an async caller wraps it in `spawn_blocking`. Errors ([`NetError`]) name the
//! operation and the resource: `creating veth embtap3: File exists (os error 17)`.
#![deny(unsafe_code)]

mod config;
mod error;
mod links;
mod nft;
mod ns;
// The one module allowed `unsafe` (the TUN ioctls); everything else is denied it.
#[allow(unsafe_code)]
mod tap;

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_core::EgressPolicy;

pub use config::{GuestAddressing, NETNS_DIR, NetConfig, SandboxNet};
pub use error::NetError;

/// What the guest side of a sandbox's namespace is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestLink {
    /// A persistent TAP for the VMM, owned by `(uid, gid)` (`None`: root only).
    Tap {
        /// Owner of the TAP: the jailed VMM's uid and gid.
        owner: Option<(u32, u32)>,
    },
    /// For tests without a VM: a veth named like the TAP whose peer `peer_if` is created in the
    /// namespace at `guest_netns`, with the guest's MAC, standing in for the VM. The peer is left
    /// down and unaddressed: the stand-in guest configures itself as a VM would.
    VethStandIn {
        /// The stand-in guest's namespace file.
        guest_netns: PathBuf,
        /// The peer's name there.
        peer_if: String,
    },
}

/// What [`HostNet::census`] found, counting only names of this [`NetConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    /// Sandbox namespaces under `/run/netns`.
    pub netns: usize,
    /// Host veths named `<tap_prefix><N>`.
    pub veths: usize,
    /// TAP devices inside the sandbox namespaces.
    pub taps_in_ember_netns: usize,
    /// Sandbox tables (`ip <sandbox_table>`) inside the sandbox namespaces.
    pub nft_tables: usize,
    /// The host-wide tables present (0 to 2).
    pub host_tables: usize,
}

impl Census {
    /// Whether no sandbox network exists (host-wide tables not counted).
    pub fn no_sandboxes(&self) -> bool {
        self.netns == 0 && self.veths == 0 && self.taps_in_ember_netns == 0 && self.nft_tables == 0
    }
}

/// What [`HostNet::sweep`] removed and kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Namespaces removed.
    pub netns_removed: Vec<String>,
    /// Host links removed.
    pub links_removed: Vec<String>,
    /// Host interfaces kept because they were in `keep` and exist.
    pub kept: Vec<String>,
}

/// How long [`HostNet::create`] took, and where.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetupTimes {
    /// From the call to the network being usable.
    pub total: Duration,
    /// Namespace creation (unshare and bind mount).
    pub netns: Duration,
    /// Netlink work (veth, TAP, addresses, routes).
    pub links: Duration,
    /// Waiting for nft (which runs alongside the netlink work) once that work was done.
    pub nft_wait: Duration,
}

/// The host's sandbox networking: made by [`HostNet::ensure`], cheap to clone.
#[derive(Debug, Clone)]
pub struct HostNet {
    config: Arc<NetConfig>,
    /// The namespace of the thread that called `ensure`: "the host" for every later call, from
    /// whatever thread.
    host_ns: Arc<File>,
}

impl HostNet {
    /// Host-wide setup, idempotent: `/run/netns` ready, IPv4 forwarding on, the `inet` filter and
    /// `ip` NAT tables (re)installed. The calling thread's namespace is "the host" from then on.
    pub fn ensure(config: NetConfig) -> Result<HostNet, NetError> {
        let host = Self::open(config)?;
        ns::prepare_netns_dir()?;
        let c = host.config.clone();
        host.in_host(move || {
            ns::enable_forwarding("host")?;
            nft::apply("installing the host tables", "host", nft::host_ruleset(&c))
        })?;
        tracing::info!(
            table = %host.config.host_table,
            nat = %host.config.nat_table,
            wildcard = %host.config.ifname_wildcard(),
            "host networking ready"
        );
        Ok(host)
    }

    /// A handle without touching the host (for [`HostNet::census`], [`HostNet::sweep`] or
    /// [`HostNet::remove`] where `ensure` was never called).
    pub fn open(config: NetConfig) -> Result<HostNet, NetError> {
        config.validate()?;
        Ok(HostNet {
            config: Arc::new(config),
            host_ns: Arc::new(ns::open_current()?),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// Deletes the host-wide tables (a missing one is not an error). Sandbox networks are left
    /// alone; forwarding stays on (other software may rely on it).
    pub fn remove(&self) -> Result<(), NetError> {
        let c = self.config.clone();
        self.in_host(move || nft::apply("removing the host tables", "host", nft::host_remove(&c)))
    }

    /// Runs `f` on a fresh thread in the host namespace.
    fn in_host<T: Send>(
        &self,
        f: impl FnOnce() -> Result<T, NetError> + Send,
    ) -> Result<T, NetError> {
        let host_ns = self.host_ns.clone();
        ns::on_thread(move || {
            ns::enter(host_ns.as_fd(), "host")?;
            f()
        })
    }

    /// [`HostNet::create_with`] a TAP owned by `tap_owner`.
    pub fn create(
        &self,
        net: &SandboxNet,
        tap_owner: Option<(u32, u32)>,
        policy: &EgressPolicy,
    ) -> Result<SetupTimes, NetError> {
        self.create_with(net, &GuestLink::Tap { owner: tap_owner }, policy)
    }

    /// Makes the sandbox network `net` with `policy`. Fails if its namespace or host interface
    /// already exists; if it fails halfway it removes what it made.
    pub fn create_with(
        &self,
        net: &SandboxNet,
        link: &GuestLink,
        policy: &EgressPolicy,
    ) -> Result<SetupTimes, NetError> {
        net.validate(&self.config)?;
        policy.validate()?;
        let start = Instant::now();
        let mut made_netns = false;
        let mut made_veth = false;
        let result = self.create_inner(net, link, policy, start, &mut made_netns, &mut made_veth);
        match result {
            Ok(times) => {
                tracing::debug!(host_if = %net.host_if, ip = %net.sandbox_ip, ?times, "sandbox network created");
                Ok(times)
            }
            Err(e) => {
                tracing::warn!(host_if = %net.host_if, error = %e, "sandbox network failed; removing what was made");
                if made_veth {
                    let name = net.host_if.clone();
                    let _ = self.in_host(move || {
                        let rt = ns::runtime()?;
                        rt.block_on(async {
                            let h = ns::netlink("host")?;
                            links::delete(&h, &name).await
                        })
                    });
                }
                if made_netns {
                    let _ = ns::remove(&net.netns_path());
                }
                Err(e)
            }
        }
    }

    fn create_inner(
        &self,
        net: &SandboxNet,
        link: &GuestLink,
        policy: &EgressPolicy,
        start: Instant,
        made_netns: &mut bool,
        made_veth: &mut bool,
    ) -> Result<SetupTimes, NetError> {
        let config = self.config.clone();
        let host_ns = self.host_ns.clone();
        let path = net.netns_path();
        ns::on_thread(|| {
            ns::enter(host_ns.as_fd(), "host")?;
            let rt = ns::runtime()?;
            let _guard = rt.enter();
            // The host socket first, while this thread is still in the host namespace.
            let host = ns::netlink("host")?;
            let t0 = Instant::now();
            ns::create_here(&path)?;
            *made_netns = true;
            let t_netns = t0.elapsed();
            let inner = ns::netlink(&net.netns)?;
            // nft runs on a second thread in the namespace while this one does the netlink
            // work: its rules name devices, they do not need them to exist yet. Starting a
            // process blocks its caller until the exec, so it gets a thread of its own.
            let ruleset = nft::sandbox_ruleset(&config, net, policy);
            std::thread::scope(|s| {
                let nft_thread = s.spawn(|| {
                    ns::enter_named(&path)?;
                    nft::apply("installing the sandbox's rules", &net.netns, ruleset)
                });
                let t1 = Instant::now();
                let linked = self.link_up(&rt, &host, &inner, net, link, made_veth);
                let t_links = t1.elapsed();
                let t2 = Instant::now();
                // Joined even if the links failed: nft is never left running.
                let ruled = match nft_thread.join() {
                    Ok(r) => r,
                    Err(panic) => std::panic::resume_unwind(panic),
                };
                linked?;
                ruled?;
                Ok(SetupTimes {
                    total: start.elapsed(),
                    netns: t_netns,
                    links: t_links,
                    nft_wait: t2.elapsed(),
                })
            })
        })
    }

    /// Everything but the namespace and the rules: the TAP (or stand-in), forwarding, the veth,
    /// addresses, routes, the guest's neighbour entry. Runs on the thread inside the namespace;
    /// `host` and `inner` are netlink sockets in the host and in the sandbox namespace.
    fn link_up(
        &self,
        rt: &tokio::runtime::Runtime,
        host: &rtnetlink::Handle,
        inner: &rtnetlink::Handle,
        net: &SandboxNet,
        link: &GuestLink,
        made_veth: &mut bool,
    ) -> Result<(), NetError> {
        let g = &net.guest;
        let mac = g.guest_mac.octets();
        let guest_ns = match link {
            GuestLink::Tap { owner } => {
                tap::create_persistent_tap(&g.tap_name, *owner).map_err(|e| {
                    NetError::io(
                        "creating TAP",
                        format!("{} in {}", g.tap_name, net.netns),
                        e,
                    )
                })?;
                None
            }
            GuestLink::VethStandIn { guest_netns, .. } => Some(
                File::open(guest_netns)
                    .map_err(|e| NetError::io("opening", guest_netns.display().to_string(), e))?,
            ),
        };
        ns::enable_forwarding(&net.netns)?;
        rt.block_on(async {
            links::add_veth(
                inner,
                &g.netns_if,
                &net.host_if,
                self.host_ns.as_raw_fd(),
                None,
                &net.host_if,
            )
            .await?;
            *made_veth = true;
            if let (GuestLink::VethStandIn { peer_if, .. }, Some(gns)) = (link, &guest_ns) {
                links::add_veth(
                    inner,
                    &g.tap_name,
                    peer_if,
                    gns.as_raw_fd(),
                    Some(mac),
                    &g.tap_name,
                )
                .await?;
            }
            // Four independent sequences, pipelined on the two sockets.
            let (lo, eth0, tap, host_side) = futures_util::join!(
                links::set_up(inner, links::LOOPBACK_INDEX, "lo"),
                async {
                    let i = links::local_index(&g.netns_if)?;
                    links::add_address(inner, i, &g.netns_if, net.sandbox_ip, 32).await?;
                    links::add_route(inner, i, &g.netns_if, net.host_gateway, 32, None).await?;
                    links::add_route(
                        inner,
                        i,
                        &g.netns_if,
                        std::net::Ipv4Addr::UNSPECIFIED,
                        0,
                        Some(net.host_gateway),
                    )
                    .await
                },
                async {
                    let i = links::local_index(&g.tap_name)?;
                    links::add_address(inner, i, &g.tap_name, g.gateway, g.prefix_len).await?;
                    links::set_up(inner, i, &g.tap_name).await?;
                    links::add_neighbour(inner, i, &g.tap_name, g.guest_ip, mac).await
                },
                async {
                    let i = links::require_index(host, &net.host_if).await?;
                    links::set_up(host, i, &net.host_if).await?;
                    links::add_address(host, i, &net.host_if, net.host_gateway, 32).await?;
                    links::add_route(host, i, &net.host_if, net.sandbox_ip, 32, None).await
                }
            );
            lo.and(eth0).and(tap).and(host_side)
        })
    }

    /// Replaces the sandbox's egress policy in one nft transaction: the next connection sees it,
    /// established flows continue.
    pub fn set_policy(&self, net: &SandboxNet, policy: &EgressPolicy) -> Result<(), NetError> {
        net.validate(&self.config)?;
        policy.validate()?;
        let commands = nft::policy_update(&self.config, net, policy);
        let path = net.netns_path();
        ns::on_thread(move || {
            ns::enter_named(&path)?;
            nft::apply("replacing the egress policy", &net.netns, commands)
        })?;
        tracing::debug!(host_if = %net.host_if, "egress policy replaced");
        Ok(())
    }

    /// Removes the sandbox network: the host veth (its peer goes with it) and the namespace
    /// (its TAP and rules go with it once nothing holds it). A missing piece is not an error.
    pub fn destroy(&self, net: &SandboxNet) -> Result<(), NetError> {
        let name = net.host_if.clone();
        self.in_host(move || {
            let rt = ns::runtime()?;
            rt.block_on(async {
                let h = ns::netlink("host")?;
                links::delete(&h, &name).await
            })
        })?;
        ns::remove(&net.netns_path())?;
        tracing::debug!(host_if = %net.host_if, "sandbox network destroyed");
        Ok(())
    }

    /// Crash recovery: removes every namespace and host veth of this configuration whose host
    /// interface is not in `keep` ("remove whatever has no record").
    pub fn sweep(&self, keep: &HashSet<String>) -> Result<SweepReport, NetError> {
        let mut report = SweepReport::default();
        let config = self.config.clone();
        let links = self.host_links()?;
        for name in links {
            if keep.contains(&name) {
                report.kept.push(name);
                continue;
            }
            let n = name.clone();
            let existed = self.in_host(move || {
                let rt = ns::runtime()?;
                rt.block_on(async {
                    let h = ns::netlink("host")?;
                    links::delete(&h, &n).await
                })
            })?;
            if existed {
                report.links_removed.push(name);
            }
        }
        for netns in ns::list_names()? {
            let Some(host_if) = config.host_if_of_netns(&netns) else {
                continue;
            };
            if keep.contains(host_if) {
                if !report.kept.iter().any(|k| k == host_if) {
                    report.kept.push(host_if.to_string());
                }
                continue;
            }
            ns::remove(&PathBuf::from(NETNS_DIR).join(&netns))?;
            report.netns_removed.push(netns);
        }
        tracing::info!(
            removed_netns = report.netns_removed.len(),
            removed_links = report.links_removed.len(),
            kept = report.kept.len(),
            "swept sandbox networks"
        );
        Ok(report)
    }

    /// Host veths of this configuration (`<tap_prefix><N>`).
    fn host_links(&self) -> Result<Vec<String>, NetError> {
        let config = self.config.clone();
        self.in_host(move || {
            let rt = ns::runtime()?;
            rt.block_on(async {
                let h = ns::netlink("host")?;
                Ok(links::list(&h, "host")
                    .await?
                    .into_iter()
                    .filter(|(name, kind)| {
                        config.is_host_if(name) && kind.as_deref() == Some("veth")
                    })
                    .map(|(name, _)| name)
                    .collect())
            })
        })
    }

    /// Counts what exists of this configuration: namespaces, host veths, TAPs and tables inside
    /// the namespaces, host tables.
    pub fn census(&self) -> Result<Census, NetError> {
        let config = self.config.clone();
        let mut census = Census {
            veths: self.host_links()?.len(),
            ..Census::default()
        };
        census.host_tables = self
            .in_host(|| nft::list_tables("host"))?
            .iter()
            .filter(|(family, name)| {
                (family == "inet" && *name == config.host_table)
                    || (family == "ip" && *name == config.nat_table)
            })
            .count();
        for netns in ns::list_names()? {
            if config.host_if_of_netns(&netns).is_none() {
                continue;
            }
            census.netns += 1;
            let path = PathBuf::from(NETNS_DIR).join(&netns);
            let c = config.clone();
            let (taps, tables) = ns::on_thread(move || {
                ns::enter_named(&path)?;
                let rt = ns::runtime()?;
                let taps = rt.block_on(async {
                    let h = ns::netlink(&netns)?;
                    Ok::<_, NetError>(
                        links::list(&h, &netns)
                            .await?
                            .iter()
                            .filter(|(_, kind)| kind.as_deref() == Some("tun"))
                            .count(),
                    )
                })?;
                let tables = nft::list_tables(&netns)?
                    .iter()
                    .filter(|(family, name)| family == "ip" && *name == c.sandbox_table)
                    .count();
                Ok((taps, tables))
            })?;
            census.taps_in_ember_netns += taps;
            census.nft_tables += tables;
        }
        Ok(census)
    }
}
