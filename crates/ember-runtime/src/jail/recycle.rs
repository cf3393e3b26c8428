//! Recycling the two parts of a jail that cost most to make and unmake, from VMMs that have
//! exited to the next VMMs the provider starts: empty network namespaces and (cgroup v1)
//! cgroups. A pool's refill starts a jailed VMM for every one it hands out, so these costs
//! repeat at the refill rate; measured on this project's 2-CPU host (AMD EPYC, kernel 6.18,
//! cgroup v1), `ember-vmm --version` through the jailer, 60 in a row, host CPU per start
//! including the kernel's workers: 6.2-6.7 ms with a new namespace and cgroup each time,
//! 4.7-5.7 ms joining a kept namespace, 4.7 ms with both kept (unjailed: 1.3-1.8 ms).
//!
//! # Network namespaces
//! A VMM without a sandbox network gets an empty namespace of its own (loopback down, nothing
//! else), so it can reach no network. Making one (`unshare(CLONE_NEWNET)`: the loopback
//! device, sysctl tables, every pernet subsystem) and tearing it down later (a kernel worker)
//! is the most expensive part of a jail. Here the provider makes them itself, on a short-lived
//! thread, holds each by a file descriptor and hands the jailer `/proc/<our pid>/fd/<n>` to
//! join. When the VMM has exited, its namespace goes back to a free list for the next one.
//!
//! Why that keeps every VMM isolated: a namespace is only ever used by one live VMM; a VMM runs
//! as an unprivileged uid with no capabilities, so it cannot change anything in its namespace
//! (no interface, address, route, sysctl or nft rule — loopback stays down), and what an
//! unprivileged process can create there (sockets, abstract Unix addresses) ends with its
//! processes — all of them, since the VMM is the init of its pid namespace and it is gone (it
//! has been reaped) before its namespace is reused. Nothing is left on the host either: the
//! namespaces are held by descriptors of this process only, so they vanish with it.
//!
//! # Cgroups
//! On cgroup v1 each VMM's cgroup is three directories (cpu, memory, pids); making and
//! removing them is ~1 ms of CPU a VMM here. A cgroup whose VMM has been reaped (it holds no
//! task) is renamed `free<n>`, and the next start renames it to its slot's name; the jailer
//! then rewrites every limit, putting unset ones back to the kernel's defaults. v2 cannot
//! rename a cgroup, so there each VMM still gets a new one (one directory, not three).
//! Free cgroups are removed when the provider tears down, and any a crashed provider left are
//! removed when the next one starts.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Mutex;

use ember_jailer::cgroup::{self, Version};
use nix::sched::{CloneFlags, unshare};

/// How many of each a provider keeps free at most (beyond, they are removed as before).
const MAX_FREE: usize = 256;

/// The prefix of a free cgroup's name.
pub(super) const FREE_CGROUP_PREFIX: &str = "free";

/// A provider's free namespaces and cgroups, the namespaces its live VMMs use, and the slots
/// whose VMM has exited but may still be ending.
#[derive(Debug, Default)]
pub(super) struct Recycler {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    netns_free: Vec<OwnedFd>,
    netns_in_use: HashMap<u64, OwnedFd>,
    /// Released slots whose cgroup still held a task (a tied VMM is killed through its
    /// jailer's death and may outlive the jailer by a moment): swept on the next claim.
    pending: Vec<Pending>,
    cgroups_free: Vec<String>,
    next_cgroup: u64,
}

#[derive(Debug)]
struct Pending {
    id: String,
    netns: Option<OwnedFd>,
}

/// Where the provider's cgroups live.
pub(super) struct CgroupPlace<'a> {
    pub root: &'a std::path::Path,
    pub version: Version,
    pub parent: &'a str,
}

impl CgroupPlace<'_> {
    /// Whether cgroup `id` holds no task, not even an exited one not yet reaped (its pids
    /// count is 0; a missing cgroup holds none). `pids.current` rather than the task list:
    /// listing v1 `tasks` allocates a pid list that a kernel worker frees later.
    fn is_empty(&self, id: &str) -> bool {
        let dirs = cgroup::dirs(self.root, self.version, self.parent, id);
        // The pids tree on v1 (a VM without a CPU limit is not in the cpu one).
        dirs.last()
            .map(|d| match std::fs::read_to_string(d.join("pids.current")) {
                Ok(t) => t.trim() == "0",
                Err(e) => e.kind() == io::ErrorKind::NotFound && !d.exists(),
            })
            .unwrap_or(true)
    }
}

impl Recycler {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A network namespace for slot `slot`'s VMM to join (a free one, or a new one), as a path
    /// the jailer can open; held until [`release`](Self::release).
    pub(super) fn claim_netns(&self, slot: u64, place: &CgroupPlace<'_>) -> io::Result<PathBuf> {
        self.sweep(place);
        let reused = self.state().netns_free.pop();
        let fd = match reused {
            Some(fd) => fd,
            None => new_netns()?,
        };
        let path = PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            fd.as_raw_fd()
        ));
        // A slot's earlier namespace (a start that failed) is dropped here.
        self.state().netns_in_use.insert(slot, fd);
        Ok(path)
    }

    /// Names a free cgroup (if any) `id`, so the jailer reuses it. Best effort: without one, or
    /// if the rename fails, the jailer makes a new cgroup.
    pub(super) fn claim_cgroup(&self, place: &CgroupPlace<'_>, id: &str) {
        self.sweep(place);
        let Some(free) = self.state().cgroups_free.pop() else {
            return;
        };
        if let Err(e) = cgroup::rename(place.root, place.version, place.parent, &free, id) {
            tracing::debug!(cgroup = free, error = %e, "cannot reuse a free cgroup; removing it");
            let _ = cgroup::remove(place.root, place.version, place.parent, &free);
        }
    }

    /// Slot `slot`'s VMM has exited: once its cgroup `id` holds no task, its namespace goes
    /// back to the free list and its cgroup too (v1) or away (v2, or no room).
    pub(super) fn release(&self, slot: u64, place: &CgroupPlace<'_>, id: &str) {
        {
            let mut st = self.state();
            let netns = st.netns_in_use.remove(&slot);
            st.pending.push(Pending {
                id: id.to_string(),
                netns,
            });
        }
        self.sweep(place);
    }

    /// Moves the released slots whose cgroup is empty now to the free lists.
    fn sweep(&self, place: &CgroupPlace<'_>) {
        let pending = std::mem::take(&mut self.state().pending);
        if pending.is_empty() {
            return;
        }
        let mut still = Vec::new();
        for p in pending {
            if !place.is_empty(&p.id) {
                still.push(p);
                continue;
            }
            let keep = place.version == Version::V1
                && self.state().cgroups_free.len() < MAX_FREE
                && {
                    let name = {
                        let mut st = self.state();
                        st.next_cgroup += 1;
                        format!("{FREE_CGROUP_PREFIX}{}", st.next_cgroup)
                    };
                    match cgroup::rename(place.root, place.version, place.parent, &p.id, &name) {
                        Ok(()) => {
                            self.state().cgroups_free.push(name);
                            true
                        }
                        Err(e) => {
                            tracing::debug!(cgroup = p.id, error = %e, "cannot keep a VMM's cgroup");
                            false
                        }
                    }
                };
            if !keep && let Err(e) = cgroup::remove(place.root, place.version, place.parent, &p.id)
            {
                tracing::warn!(cgroup = p.id, error = %e, "cannot remove a VMM's cgroup");
            }
            let mut st = self.state();
            if let Some(fd) = p.netns
                && st.netns_free.len() < MAX_FREE
            {
                st.netns_free.push(fd);
            }
        }
        self.state().pending.extend(still);
    }

    /// Drops every namespace and removes every free cgroup (the provider is tearing down; the
    /// cgroups of released slots still ending keep their slot's name and go with the others).
    pub(super) fn clear(&self, place: &CgroupPlace<'_>) {
        let free = {
            let mut st = self.state();
            st.netns_free.clear();
            st.netns_in_use.clear();
            st.pending.clear();
            std::mem::take(&mut st.cgroups_free)
        };
        for name in free {
            let _ = cgroup::remove(place.root, place.version, place.parent, &name);
        }
    }

    /// How many namespaces and cgroups are free now, and slots pending (for tests).
    #[cfg(test)]
    fn counts(&self) -> (usize, usize, usize) {
        let st = self.state();
        (st.netns_free.len(), st.cgroups_free.len(), st.pending.len())
    }
}

/// Removes the free cgroups an earlier provider left under `place` (they hold no task).
pub(super) fn remove_stale_free_cgroups(place: &CgroupPlace<'_>) {
    for dir in cgroup::dirs(place.root, place.version, place.parent, "x") {
        let Some(parent) = dir.parent() else { continue };
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(FREE_CGROUP_PREFIX))
            {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
}

/// A new, empty network namespace, held by a descriptor: made on a thread of its own (a
/// thread's `unshare` changes only its own namespace, and that thread then ends).
fn new_netns() -> io::Result<OwnedFd> {
    std::thread::scope(|s| {
        s.spawn(|| -> io::Result<OwnedFd> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            Ok(File::open("/proc/thread-self/ns/net")?.into())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn netns_id(path: &std::path::Path) -> PathBuf {
        std::fs::read_link(path).unwrap()
    }

    /// A fake v1 tree under `root` with cgroup `p/<id>` counting `tasks`.
    fn v1_cgroup(root: &std::path::Path, id: &str, tasks: u32) {
        for c in ["cpu", "memory", "pids"] {
            std::fs::create_dir_all(root.join(c).join("p").join(id)).unwrap();
            std::fs::write(
                root.join(c).join("p").join(id).join("pids.current"),
                format!("{tasks}\n"),
            )
            .unwrap();
        }
    }

    #[test]
    fn namespaces_are_new_then_recycled_once_their_vmm_is_gone_and_never_ours() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let place = CgroupPlace {
            root: root.path(),
            version: Version::V1,
            parent: "p",
        };
        let r = Recycler::default();
        let ours = netns_id(std::path::Path::new("/proc/self/ns/net"));
        let a = r.claim_netns(1, &place).unwrap();
        let b = r.claim_netns(2, &place).unwrap();
        let (ida, idb) = (netns_id(&a), netns_id(&b));
        assert_ne!(ida, ours, "a jail's namespace is not the host's");
        assert_ne!(ida, idb, "two live VMMs never share a namespace");
        // This thread is still in the host's namespace.
        assert_eq!(
            netns_id(std::path::Path::new("/proc/thread-self/ns/net")),
            ours
        );
        // Slot 1's VMM is still ending (a task in its cgroup): nothing is reused yet.
        v1_cgroup(root.path(), "slot1", 1);
        r.release(1, &place, "slot1");
        assert_eq!(r.counts(), (0, 0, 1));
        let c = r.claim_netns(3, &place).unwrap();
        assert_ne!(
            netns_id(&c),
            ida,
            "a namespace still in use is not handed out"
        );
        // Gone: the next claim finds its namespace and cgroup free.
        v1_cgroup(root.path(), "slot1", 0);
        let d = r.claim_netns(4, &place).unwrap();
        assert_eq!(netns_id(&d), ida, "slot 1's namespace went to slot 4");
        assert_eq!(r.counts(), (0, 1, 0));
        r.clear(&place);
        assert_eq!(r.counts(), (0, 0, 0));
    }

    #[test]
    fn v1_cgroups_are_handed_to_the_next_slot_and_v2_ones_removed() {
        let root = tempfile::tempdir().unwrap();
        v1_cgroup(root.path(), "slot1", 0);
        let place = CgroupPlace {
            root: root.path(),
            version: Version::V1,
            parent: "p",
        };
        let r = Recycler::default();
        r.release(1, &place, "slot1");
        assert!(root.path().join("pids/p/free1").is_dir());
        r.claim_cgroup(&place, "slot9");
        for c in ["cpu", "memory", "pids"] {
            assert!(root.path().join(c).join("p/slot9").is_dir());
            assert!(!root.path().join(c).join("p/free1").exists());
        }
        r.release(9, &place, "slot9");
        for c in ["cpu", "memory", "pids"] {
            // cgroupfs removes its control files with the directory; a tmpfs does not.
            std::fs::remove_file(root.path().join(c).join("p/free2/pids.current")).unwrap();
        }
        remove_stale_free_cgroups(&place);
        assert!(!root.path().join("memory/p/free2").exists());

        let v2 = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(v2.path().join("p/slot1")).unwrap();
        std::fs::write(v2.path().join("p/slot1/pids.current"), "0\n").unwrap();
        let place = CgroupPlace {
            root: v2.path(),
            version: Version::V2,
            parent: "p",
        };
        let r = Recycler::default();
        r.release(1, &place, "slot1");
        // v2 cannot rename: not kept (its removal fails here only because a tmpfs keeps the
        // fake control file).
        assert!(!v2.path().join("p/free1").exists());
        assert!(v2.path().join("p/slot1").exists());
        assert_eq!(r.counts(), (0, 0, 0));
    }
}
