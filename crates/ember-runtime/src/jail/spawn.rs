//! Starting a VMM through the jailer: the slot handed to the VMM's uid, its recycled network
//! namespace and cgroup, its jail ([`Jails::config`]) sent to the provider's resident jailer,
//! and the process to watch — the VMM itself, which the resident jailer makes our child, tied
//! to us by a parent-death signal or (detached) in a session of its own.

use std::ffi::OsString;
use std::fs::File;
use std::time::Instant;

use super::{JailedStart, Jails, ResidentError};
use crate::process::{ParentDeath, ProcessError, VmmLaunch, VmmProcess};

impl VmmProcess {
    /// Starts the VMM through the jailer (see [`spawn`](Self::spawn)).
    pub(crate) fn spawn_jailed(
        jail: &Jails,
        launch: &VmmLaunch<'_>,
        (stdout, stderr): (File, File),
    ) -> Result<VmmProcess, ProcessError> {
        let VmmLaunch {
            binary,
            paths,
            netns,
            ..
        } = *launch;
        let spawn_err = |source| ProcessError::Spawn {
            binary: binary.to_path_buf(),
            source,
        };
        jail.prepare_slot(paths.slot, &paths.dir)
            .map_err(spawn_err)?;
        // Its own empty network namespace unless it joins a sandbox's (see `jail::recycle`).
        let own_netns = jail.claim(paths.slot, netns.is_none()).map_err(spawn_err)?;
        let netns = netns.or(own_netns.as_deref());
        let started = Self::start_jailer(jail, launch, netns, (stdout, stderr));
        if started.is_err() {
            // Nothing of the slot runs: its namespace and cgroup go back (or away).
            jail.release_slot(paths.slot);
        }
        started
    }

    fn start_jailer(
        jail: &Jails,
        launch: &VmmLaunch<'_>,
        netns: Option<&std::path::Path>,
        stdio: (File, File),
    ) -> Result<VmmProcess, ProcessError> {
        let VmmLaunch {
            binary,
            extra_args,
            paths,
            instance_id,
            parent_death,
            ..
        } = *launch;
        // The files exist (created for us, mode 0600); the jailer's child opens them by path.
        drop(stdio);
        let mut vmm_args: Vec<OsString> = vec![
            "--api-sock".into(),
            paths.api_sock.clone().into_os_string(),
            "--id".into(),
            instance_id.into(),
        ];
        vmm_args.extend(extra_args.iter().cloned());
        let tied = parent_death != ParentDeath::Detached;
        let config = jail
            .config(&JailedStart {
                slot: paths.slot,
                slot_dir: &paths.dir,
                vmm: binary,
                vmm_args: &vmm_args,
                tied,
                netns,
            })
            .map_err(|source| ProcessError::Spawn {
                binary: binary.to_path_buf(),
                source,
            })?;
        let stdio = ember_jailer::jail::Stdio {
            stdout: paths.console_log.clone(),
            stderr: paths.vmm_log.clone(),
        };
        let spawned_at = Instant::now();
        // Detached: a session of its own, so nothing sent to our process group reaches it.
        let pid = jail
            .start_resident(config, stdio, !tied)
            .map_err(|e| match e {
                ResidentError::Io(source) => ProcessError::Spawn {
                    binary: jail.jailer().to_path_buf(),
                    source,
                },
                ResidentError::Refused(error) => ProcessError::Jail {
                    exit: "refused by the resident jailer".into(),
                    message: error,
                },
            })?;
        jail.note_pid(paths.slot, pid);
        // Our child (the resident jailer clones it as its own sibling): ours to reap, so its
        // pid cannot be reused before we do.
        Self::watch(pid, paths, spawned_at)
    }
}
