//! A network namespace for every VMM process, from its start: the seam between the runtime
//! (which starts VMMs) and whoever builds networks (emberd, with ember-net and the store's
//! allocator).
//!
//! A VMM opens its TAP by name in the network namespace it runs in, and a jailed VMM can never
//! change namespace, so the namespace must exist before the process starts — before anyone
//! knows which VM (or tenant) the spare will become. So networks belong to slots: the provider
//! asks the [`SlotNetworks`] for slot `n`'s namespace right before spawning its VMM, and tells
//! it when slot `n`'s process is gone. A sandbox's network is the network of the slot its VM
//! lives in; a clone restored there finds `tap0` (the name every template's snapshot uses).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Builds and removes the network namespace of each VMM slot.
pub trait SlotNetworks: Send + Sync + fmt::Debug {
    /// Makes slot `slot`'s network — recorded first, so a crash never leaves an unknown one —
    /// with its TAP owned by `tap_owner` (the jailed VMM's uid and gid; `None`: root), and
    /// returns the namespace's path (`/run/netns/...`) for the VMM to join.
    fn prepare(&self, slot: u64, tap_owner: Option<(u32, u32)>) -> Result<PathBuf, String>;

    /// Slot `slot`'s process is gone: remove its network (idempotent; called on the
    /// supervisor's thread, so hand slow work to another thread).
    fn release(&self, slot: u64);

    /// Slots whose networks exist now (for the provider's sweep of what nobody adopted).
    fn slots(&self) -> Vec<u64>;
}

/// A [`SlotNetworks`] in a provider's configuration (compared by identity).
#[derive(Clone)]
pub struct NetworkHook(pub Arc<dyn SlotNetworks>);

impl fmt::Debug for NetworkHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl PartialEq for NetworkHook {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
