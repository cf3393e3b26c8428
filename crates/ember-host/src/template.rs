//! A stack's template: boot the guest, wait until its agent answers, pause, snapshot. The
//! snapshot is what every pooled VM of the stack is restored from.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ember_core::{
    SnapshotId, SnapshotRef, SnapshotRequest, StackKey, VmError, VmId, VmProvider, VmSpec,
    VsockSpec,
};
use ember_runtime::VmmProvider;
use serde::Serialize;

use crate::agent;

/// What to boot for a template.
#[derive(Debug, Clone)]
pub struct TemplateSpec {
    /// The stack the template serves (its vCPU count and memory are the VM's).
    pub stack: StackKey,
    /// The guest kernel (ELF).
    pub kernel: PathBuf,
    /// Kernel command line.
    pub boot_args: Option<String>,
    /// The agent's vsock port.
    pub agent_port: u32,
    /// How long the guest may take to boot and answer.
    pub boot_timeout: Duration,
}

/// How building the template went.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateReport {
    /// Boot (create + start) until the agent answered Health, µs.
    pub boot_to_agent_us: u64,
    /// Pause + snapshot, µs.
    pub snapshot_us: u64,
}

/// Why a template could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A provider call failed.
    #[error("{step} of the template VM failed")]
    Provider {
        /// Which step.
        step: &'static str,
        /// The error.
        #[source]
        source: VmError,
    },
    /// The agent never answered.
    #[error("the template's guest agent did not answer within {0:?}")]
    AgentTimeout(Duration, #[source] agent::AgentError),
}

/// Boots `spec`, waits for its agent, pauses and snapshots it as `snapshot_id`, and destroys the
/// template VM (the snapshot outlives it). The reference resumes on restore.
pub fn build(
    provider: &VmmProvider,
    spec: &TemplateSpec,
    snapshot_id: SnapshotId,
) -> Result<(SnapshotRef, TemplateReport), TemplateError> {
    let id = VmId::new(format!("template-{}", spec.stack.slug())).map_err(|source| {
        TemplateError::Provider {
            step: "naming",
            source,
        }
    })?;
    let vm_spec = boot_spec(spec);
    let step = |step: &'static str| move |source| TemplateError::Provider { step, source };
    let result = (|| {
        let t0 = Instant::now();
        provider
            .create_with_spec(&id, &vm_spec)
            .map_err(step("create"))?;
        provider.start(&id).map_err(step("start"))?;
        wait_for_agent(provider, &id, spec)?;
        let boot_to_agent = t0.elapsed();
        let t1 = Instant::now();
        provider.pause(&id).map_err(step("pause"))?;
        let snap = provider
            .snapshot(
                &id,
                &SnapshotRequest {
                    snapshot_id,
                    stack: Some(spec.stack.clone()),
                },
            )
            .map_err(step("snapshot"))?;
        let report = TemplateReport {
            boot_to_agent_us: boot_to_agent.as_micros() as u64,
            snapshot_us: t1.elapsed().as_micros() as u64,
        };
        Ok((snap, report))
    })();
    if let Err(e) = provider.destroy(&id) {
        tracing::warn!(vm = %id, error = %ember_core::error_chain(&e), "destroying the template VM");
    }
    let (mut snap, report) = result?;
    snap.resume = true;
    Ok((snap, report))
}

/// The spec that boots `spec`'s guest with its shape and a vsock device (the provider puts the
/// socket in the VM's own directory).
pub fn boot_spec(spec: &TemplateSpec) -> VmSpec {
    VmSpec {
        kernel: Some(spec.kernel.clone()),
        boot_args: spec.boot_args.clone(),
        vcpu_count: spec.stack.vcpu_count(),
        mem_size_mib: spec.stack.mem_size_mib(),
        vsock: Some(VsockSpec {
            guest_cid: 3,
            uds_path: PathBuf::from("v.sock"),
        }),
        ..VmSpec::default()
    }
}

fn wait_for_agent(
    provider: &VmmProvider,
    id: &VmId,
    spec: &TemplateSpec,
) -> Result<(), TemplateError> {
    let deadline = Instant::now() + spec.boot_timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = agent::connect(
            provider,
            id,
            spec.agent_port,
            left.min(Duration::from_secs(1)),
        )
        .and_then(|mut a| a.health().map(drop).map_err(agent::AgentError::Client));
        match attempt {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(TemplateError::AgentTimeout(spec.boot_timeout, e));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}
