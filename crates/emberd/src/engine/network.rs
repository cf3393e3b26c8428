//! Sandbox networks (`emberd --sandbox-network`): every VMM slot gets its own network namespace
//! from ember-net before its VMM starts ([`SlotNets`], the runtime's
//! [`SlotNetworks`](ember_runtime::slot_net::SlotNetworks) hook), so a sandbox's network is the
//! one of the slot its VM lives in — a warm VM brings it along at handover.
//!
//! - **Recorded first**: a slot's network is the store's network allocation of owner
//!   `slot:<n>` (its host interface, its unique address), committed before anything is made on
//!   the host; removal deletes the host side first and the record last. Recovery releases the
//!   records of slots no VM was adopted into and sweeps any `ember-*` namespace or host link
//!   that has no record ([`SlotNets::sweep_unrecorded`]).
//! - **Slow removal off the hot path**: deleting a veth takes the kernel ~35 ms (RCU), so
//!   [`release`](SlotNets::release) hands it to a reclaimer thread.
//! - **Policy**: a new slot's network gets the daemon's default egress policy; a sandbox's own
//!   (create, or `PUT /v1/sandboxes/{id}/network`) replaces its chain in one nft transaction.
//! - **Exposed ports** (`POST /v1/sandboxes/{id}/ports`): a TCP listener on the host's loopback
//!   that forwards each connection to the sandbox's address and the guest port; the listener
//!   closes when the sandbox ends ([`PortProxies`]).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use ember_core::{EgressPolicy, SandboxId};
use ember_net::{GuestAddressing, HostNet, NetConfig, SandboxNet};
use ember_store::{Durability, NetworkConfig, Store};

/// Owner keys of slot networks in the store's allocation table start with this.
pub const OWNER_PREFIX: &str = "slot:";

fn owner(slot: u64) -> String {
    format!("{OWNER_PREFIX}{slot}")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Maps and a sender only: a panicked holder leaves them consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The daemon's network settings.
#[derive(Debug, Clone)]
pub struct NetworkSettings {
    /// The ranges sandbox addresses and host interfaces come from (the store's allocator).
    pub allocator: NetworkConfig,
    /// The policy a sandbox gets when its create names none.
    pub default_egress: EgressPolicy,
}

impl NetworkSettings {
    /// Settings for subnet `subnet` and interface prefix `prefix` (host veths `<prefix><n>`,
    /// namespaces `ember-<prefix><n>`, nft tables `ember_<prefix>` and `ember_nat_<prefix>`).
    pub fn new(
        subnet: ember_store::Ipv4Subnet,
        prefix: &str,
        default_egress: EgressPolicy,
    ) -> NetworkSettings {
        let digits = 15usize.saturating_sub(prefix.len()).min(5) as u32;
        let allocator = NetworkConfig {
            subnet,
            gateway: subnet.host_range().0,
            tap_prefix: prefix.to_string(),
            last_tap_index: (10u32.pow(digits) - 1).min(65535),
            ..NetworkConfig::default()
        };
        NetworkSettings {
            allocator,
            default_egress,
        }
    }

    /// ember-net's configuration for these settings.
    pub fn net_config(&self) -> NetConfig {
        let mut c = NetConfig::from_store(&self.allocator);
        c.host_table = format!("ember_{}", self.allocator.tap_prefix);
        c.nat_table = format!("ember_nat_{}", self.allocator.tap_prefix);
        c
    }
}

/// Every slot's network: the runtime's hook, and what the engine asks of a sandbox's network.
pub struct SlotNets {
    host: HostNet,
    store: Arc<Store>,
    settings: NetworkSettings,
    guest: GuestAddressing,
    /// Plans of the slots whose networks exist (a cache of the store's records).
    plans: Mutex<HashMap<u64, SandboxNet>>,
    reclaim: Mutex<mpsc::Sender<(u64, SandboxNet)>>,
}

impl std::fmt::Debug for SlotNets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotNets")
            .field("prefix", &self.settings.allocator.tap_prefix)
            .finish()
    }
}

impl SlotNets {
    /// Sets up the host side (forwarding, the host tables) and starts the reclaimer thread.
    pub fn start(store: Arc<Store>, settings: NetworkSettings) -> Result<Arc<SlotNets>, String> {
        let host = HostNet::ensure(settings.net_config()).map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel::<(u64, SandboxNet)>();
        let nets = Arc::new(SlotNets {
            host,
            store,
            settings,
            guest: GuestAddressing::default(),
            plans: Mutex::new(HashMap::new()),
            reclaim: Mutex::new(tx),
        });
        let weak = Arc::downgrade(&nets);
        std::thread::Builder::new()
            .name("ember-net-reclaim".into())
            .spawn(move || {
                while let Ok((slot, plan)) = rx.recv() {
                    let Some(nets) = weak.upgrade() else { return };
                    nets.remove_now(slot, &plan);
                }
            })
            .map_err(|e| format!("starting the network reclaimer: {e}"))?;
        Ok(nets)
    }

    /// The guest side every template's network uses (address, gateway, MAC).
    pub fn guest(&self) -> &GuestAddressing {
        &self.guest
    }

    /// The policy a sandbox gets when its create names none.
    pub fn default_egress(&self) -> &EgressPolicy {
        &self.settings.default_egress
    }

    fn plan_of(&self, slot: u64) -> Option<SandboxNet> {
        if let Some(p) = lock(&self.plans).get(&slot) {
            return Some(p.clone());
        }
        let alloc = self
            .store
            .read("network of a slot", |tx| tx.network_of(&owner(slot)))
            .ok()
            .flatten()?;
        let plan = SandboxNet::plan_with(&self.settings.net_config(), &alloc, &self.guest);
        lock(&self.plans).insert(slot, plan.clone());
        Some(plan)
    }

    /// The host-side address of slot `slot`'s sandbox.
    pub fn address_of(&self, slot: u64) -> Option<Ipv4Addr> {
        self.plan_of(slot).map(|p| p.sandbox_ip)
    }

    /// Replaces slot `slot`'s egress policy.
    pub fn set_policy(&self, slot: u64, policy: &EgressPolicy) -> Result<(), String> {
        let plan = self
            .plan_of(slot)
            .ok_or_else(|| format!("slot {slot} has no network"))?;
        self.host
            .set_policy(&plan, policy)
            .map_err(|e| e.to_string())
    }

    /// Deletes slot `slot`'s network on the host, then its record.
    fn remove_now(&self, slot: u64, plan: &SandboxNet) {
        if let Err(e) = self.host.destroy(plan) {
            tracing::error!(slot, error = %e, "removing a slot's network");
            return;
        }
        if let Err(e) = self
            .store
            .write("network released", Durability::Process, |tx| {
                tx.release_network(&owner(slot))
            })
        {
            tracing::error!(slot, error = %e, "forgetting a slot's network");
        }
    }

    /// Removes every `ember-*` namespace and host link that has no record (a crash between
    /// making one and... nothing else: records come first, but an operator may have copied a
    /// store). Call once at start, after recovery.
    pub fn sweep_unrecorded(&self) {
        let keep: std::collections::HashSet<String> = self
            .store
            .read("slot networks", |tx| {
                let owners = tx.network_owners(OWNER_PREFIX)?;
                let mut ifs = std::collections::HashSet::new();
                for o in owners {
                    if let Some(a) = tx.network_of(&o)? {
                        ifs.insert(a.tap);
                    }
                }
                Ok::<_, ember_store::StoreError>(ifs)
            })
            .unwrap_or_default();
        match self.host.sweep(&keep) {
            Ok(r) => tracing::info!(report = ?r, "swept unrecorded sandbox networks"),
            Err(e) => tracing::error!(error = %e, "sweeping unrecorded sandbox networks"),
        }
    }

    /// What exists on the host now (for tests and metrics).
    pub fn census(&self) -> Result<ember_net::Census, String> {
        self.host.census().map_err(|e| e.to_string())
    }
}

impl ember_runtime::slot_net::SlotNetworks for SlotNets {
    fn prepare(&self, slot: u64, tap_owner: Option<(u32, u32)>) -> Result<PathBuf, String> {
        let key = owner(slot);
        let (alloc, stale) = self
            .store
            .write("network allocated", Durability::Process, |tx| {
                match tx.network_of(&key)? {
                    Some(old) => Ok((old, true)),
                    None => tx.allocate_network(&key).map(|a| (a, false)),
                }
            })
            .map_err(|e: ember_store::StoreError| e.to_string())?;
        let plan = SandboxNet::plan_with(&self.settings.net_config(), &alloc, &self.guest);
        if stale {
            // An earlier daemon's slot of the same number: its network goes first.
            let _ = self.host.destroy(&plan);
        }
        let times = self
            .host
            .create(&plan, tap_owner, &self.settings.default_egress)
            .map_err(|e| e.to_string())?;
        tracing::debug!(slot, ?times, "slot network made");
        let path = plan.netns_path();
        lock(&self.plans).insert(slot, plan);
        Ok(path)
    }

    fn release(&self, slot: u64) {
        let plan = lock(&self.plans).remove(&slot).or_else(|| {
            let alloc = self
                .store
                .read("network of a slot", |tx| tx.network_of(&owner(slot)))
                .ok()
                .flatten()?;
            Some(SandboxNet::plan_with(
                &self.settings.net_config(),
                &alloc,
                &self.guest,
            ))
        });
        if let Some(plan) = plan
            && lock(&self.reclaim).send((slot, plan.clone())).is_err()
        {
            self.remove_now(slot, &plan);
        }
    }

    fn slots(&self) -> Vec<u64> {
        self.store
            .read("slot networks", |tx| tx.network_owners(OWNER_PREFIX))
            .unwrap_or_default()
            .iter()
            .filter_map(|o| o.strip_prefix(OWNER_PREFIX)?.parse().ok())
            .collect()
    }
}

/// The host listeners of exposed guest ports, per sandbox.
#[derive(Default)]
pub struct PortProxies {
    by_sandbox: Mutex<HashMap<SandboxId, Vec<tokio::task::JoinHandle<()>>>>,
}

impl PortProxies {
    /// Listens on `listen` (port 0: any free one) and forwards each connection to `target`;
    /// returns the address it listens on. Runs on the daemon's tokio runtime.
    pub fn expose(
        &self,
        sandbox: &SandboxId,
        listen: SocketAddr,
        target: SocketAddr,
    ) -> std::io::Result<SocketAddr> {
        let std_listener = std::net::TcpListener::bind(listen)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| std::io::Error::other(format!("no async runtime: {e}")))?;
        let task = handle.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                return;
            };
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    match tokio::net::TcpStream::connect(target).await {
                        Ok(mut outbound) => {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                        Err(e) => tracing::debug!(%target, error = %e, "exposed port: no answer"),
                    }
                });
            }
        });
        lock(&self.by_sandbox)
            .entry(sandbox.clone())
            .or_default()
            .push(task);
        Ok(addr)
    }

    /// Closes every listener of `sandbox` (connections in flight end with it).
    pub fn close(&self, sandbox: &SandboxId) {
        if let Some(tasks) = lock(&self.by_sandbox).remove(sandbox) {
            for t in tasks {
                t.abort();
            }
        }
    }
}

/// `POST /v1/sandboxes/{id}/ports`: a guest port to expose on the host.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExposePort {
    /// The guest's TCP port (1-65535).
    pub guest_port: u16,
}

impl super::Engine {
    /// The network of the VM `vm` just got, with `egress` applied (the daemon's default when
    /// `None`); `None` when the daemon gives sandboxes no network.
    pub(crate) fn attach_network(
        &self,
        vm: &ember_core::VmId,
        egress: Option<&EgressPolicy>,
    ) -> Result<Option<ember_core::SandboxNetwork>, crate::error::ApiError> {
        let Some(nets) = &self.nets else {
            return Ok(None);
        };
        let slot = self.provider.paths(vm)?.slot.slot;
        let address = nets.address_of(slot).ok_or_else(|| {
            crate::error::ApiError::internal(format!("VM {vm}'s slot {slot} has no network"))
        })?;
        let egress = egress
            .cloned()
            .unwrap_or_else(|| nets.default_egress().clone());
        if egress != *nets.default_egress() {
            nets.set_policy(slot, &egress).map_err(|e| {
                crate::error::ApiError::internal(format!("applying the egress policy: {e}"))
            })?;
        }
        Ok(Some(ember_core::SandboxNetwork {
            address,
            egress,
            ports: Vec::new(),
        }))
    }

    /// The live sandbox `id`'s slot and network manager, or why it has none.
    fn sandbox_slot(
        &self,
        id: &str,
    ) -> Result<(SandboxId, u64, &Arc<SlotNets>), crate::error::ApiError> {
        let Some(nets) = &self.nets else {
            return Err(crate::error::ApiError::invalid(
                "this emberd gives sandboxes no network (start it with --sandbox-network)",
            ));
        };
        let (sid, _live) = self.live_sandbox(id)?;
        let vm = ember_core::VmId::new(sid.as_str()).map_err(crate::error::ApiError::from)?;
        let slot = self.provider.paths(&vm)?.slot.slot;
        Ok((sid, slot, nets))
    }

    /// `PUT /v1/sandboxes/{id}/network`: replaces a live sandbox's egress policy (its next
    /// connections see it; established ones continue).
    pub fn set_egress(
        &self,
        id: &str,
        egress: EgressPolicy,
    ) -> Result<ember_core::Sandbox, crate::error::ApiError> {
        egress.validate().map_err(crate::error::ApiError::from)?;
        let (sid, slot, nets) = self.sandbox_slot(id)?;
        nets.set_policy(slot, &egress).map_err(|e| {
            crate::error::ApiError::internal(format!("applying the egress policy: {e}"))
        })?;
        let updated = self
            .store
            .write("sandbox egress changed", Durability::Process, |tx| {
                tx.update::<ember_core::Sandbox, ember_store::StoreError>(sid.as_str(), |s| {
                    if let Some(n) = &mut s.network {
                        n.egress = egress.clone();
                    }
                    Ok(())
                })
            })?;
        Ok(updated.record)
    }

    /// `POST /v1/sandboxes/{id}/ports`: exposes guest port `guest_port` on the host's
    /// loopback (a port of its own); closed when the sandbox ends.
    pub fn expose_port(
        &self,
        id: &str,
        req: ExposePort,
    ) -> Result<ember_core::Sandbox, crate::error::ApiError> {
        if req.guest_port == 0 {
            return Err(crate::error::ApiError::invalid("guest_port: 1 to 65535"));
        }
        let (sid, slot, nets) = self.sandbox_slot(id)?;
        let address = nets.address_of(slot).ok_or_else(|| {
            crate::error::ApiError::internal(format!("slot {slot} has no network"))
        })?;
        let host = self
            .ports
            .expose(
                &sid,
                SocketAddr::from(([127, 0, 0, 1], 0)),
                SocketAddr::from((address, req.guest_port)),
            )
            .map_err(|e| {
                crate::error::ApiError::internal(format!("listening for the port: {e}"))
            })?;
        let updated = self
            .store
            .write("sandbox port exposed", Durability::Process, |tx| {
                tx.update::<ember_core::Sandbox, ember_store::StoreError>(sid.as_str(), |s| {
                    if let Some(n) = &mut s.network {
                        n.ports.push(ember_core::ExposedPort {
                            guest_port: req.guest_port,
                            host,
                        });
                    }
                    Ok(())
                })
            });
        match updated {
            Ok(u) => Ok(u.record),
            Err(e) => {
                self.ports.close(&sid);
                Err(e.into())
            }
        }
    }
}
