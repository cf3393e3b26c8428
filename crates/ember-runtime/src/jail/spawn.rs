//! Starting a VMM through the jailer: the slot handed to the VMM's uid, the jailer's command
//! ([`Jails::command`]), and the process to watch — the jailer itself when it stays as the
//! VMM's parent (tied), else the VMM named by the pid file the jailer wrote (detached; the VMM
//! is re-parented to this process, a child subreaper).

use std::ffi::OsString;
use std::fs::File;
use std::process::Stdio;
use std::time::Instant;

use super::{JailedStart, Jails};
use crate::process::{ParentDeath, ProcessError, VmmLaunch, VmmProcess};

impl VmmProcess {
    /// Starts the VMM through the jailer (see [`spawn`](Self::spawn)).
    pub(crate) fn spawn_jailed(
        jail: &Jails,
        launch: &VmmLaunch<'_>,
        (stdout, stderr): (File, File),
    ) -> Result<VmmProcess, ProcessError> {
        use std::os::unix::process::CommandExt;
        let VmmLaunch {
            binary,
            extra_args,
            paths,
            instance_id,
            parent_death,
            netns,
        } = *launch;
        let spawn_err = |source| ProcessError::Spawn {
            binary: binary.to_path_buf(),
            source,
        };
        jail.prepare_slot(paths.slot, &paths.dir)
            .map_err(spawn_err)?;
        let mut vmm_args: Vec<OsString> = vec![
            "--api-sock".into(),
            paths.api_sock.clone().into_os_string(),
            "--id".into(),
            instance_id.into(),
        ];
        vmm_args.extend(extra_args.iter().cloned());
        let pid_file = paths.dir.join("vmm.pid");
        let tied = parent_death != ParentDeath::Detached;
        let mut cmd = jail.command(&JailedStart {
            slot: paths.slot,
            slot_dir: &paths.dir,
            vmm: binary,
            vmm_args: &vmm_args,
            pid_file: &pid_file,
            tied,
            netns,
        });
        cmd.current_dir(&paths.dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        if !tied {
            cmd.process_group(0);
        }
        let spawned_at = Instant::now();
        let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            binary: jail.jailer().to_path_buf(),
            source,
        })?;
        if tied {
            // The jailer stays as the VMM's parent and ends as it ends: watch the jailer.
            let pid = child.id();
            drop(child);
            return Self::watch(pid, paths, spawned_at);
        }
        let status = child.wait().map_err(|source| ProcessError::Spawn {
            binary: jail.jailer().to_path_buf(),
            source,
        })?;
        let message = || crate::spares::log_tail(&paths.vmm_log, 600);
        if !status.success() {
            return Err(ProcessError::Jail {
                exit: status.to_string(),
                message: message(),
            });
        }
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .ok_or_else(|| ProcessError::Jail {
                exit: status.to_string(),
                message: format!("no pid in {}; {}", pid_file.display(), message()),
            })?;
        // Re-parented to this process (a child subreaper), so it is ours to reap and its pid
        // cannot be reused before we do.
        Self::watch(pid, paths, spawned_at)
    }
}
