//! A stack's template: boot the guest, wait until its agent answers, pause, snapshot. The
//! snapshot is what every pooled VM of the stack is restored from. [`TemplateBoot`] is the boot
//! resolved from ember-core's [`TemplateSpec`] (what a caller asks a template to be).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ember_core::{
    GuestSpec, SnapshotId, SnapshotRef, SnapshotRequest, StackKey, TemplateSpec, VmError, VmId,
    VmProvider, VmSpec, VsockSpec,
};
use ember_runtime::VmmProvider;
use serde::Serialize;

use crate::agent;

/// The probe guest's command line for templates: no timer (tickless) and no console reports,
/// so a VM idling in the pool or with its tenant, paused or running, costs its host no CPU
/// (`ember bench density` measures it).
pub const PROBE_TEMPLATE_ARGS: &str = "ember.hz=0 ember.report=0";

/// A template's boot, resolved from what was asked (ember-core's
/// [`TemplateSpec`](ember_core::TemplateSpec)) into what the provider runs.
#[derive(Debug, Clone)]
pub struct TemplateBoot {
    /// The stack the template serves (its vCPU count and memory are the VM's).
    pub stack: StackKey,
    /// What boots: kernel, command line, disks and a vsock device, in the stack's shape.
    pub boot: VmSpec,
    /// The agent's vsock port.
    pub agent_port: u32,
    /// How long the guest may take to boot and answer.
    pub boot_timeout: Duration,
}

impl TemplateBoot {
    /// An ELF kernel with no disks (the probe guest) in `stack`'s shape.
    pub fn kernel(
        stack: StackKey,
        kernel: PathBuf,
        boot_args: Option<String>,
        agent_port: u32,
        boot_timeout: Duration,
    ) -> Self {
        let boot = VmSpec {
            kernel: Some(kernel),
            boot_args,
            ..Self::shape(&stack)
        };
        Self {
            stack,
            boot,
            agent_port,
            boot_timeout,
        }
    }

    /// Resolves `spec` for `stack`: the probe guest boots `probe_kernel` with
    /// [`PROBE_TEMPLATE_ARGS`] and the caller's arguments after them; a kernel guest boots its
    /// kernel, initrd and root filesystem as given.
    ///
    /// With `spec.network`, the VM gets `eth0` on the sandbox network's TAP (see
    /// [`ember_core::template::GUEST_IP`]); the guest is told its address on its command line
    /// (`ember.ip=A/N ember.gw=G`: the probe reads it, and so does the init of images from
    /// `ember image build`).
    ///
    /// An `image` guest cannot boot as it is: build the image first
    /// ([`crate::image::build`]) and resolve the `kernel` guest it gives
    /// ([`crate::image::template_spec`]).
    pub fn resolve(
        stack: StackKey,
        spec: &TemplateSpec,
        probe_kernel: &Path,
    ) -> Result<Self, VmError> {
        let mut boot = Self::resolve_guest(stack, spec, probe_kernel)?;
        if spec.network {
            use ember_core::template::{
                GUEST_GATEWAY, GUEST_IP, GUEST_MAC, GUEST_PREFIX_LEN, GUEST_TAP,
            };
            boot.boot.network_interfaces = vec![ember_core::spec::NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: GUEST_TAP.into(),
                // Invariant: GUEST_MAC's first octet is unicast.
                guest_mac: ember_core::MacAddr::from_bytes(GUEST_MAC).ok(),
                rx_rate_limiter: None,
                tx_rate_limiter: None,
            }];
            let args = boot.boot.boot_args.take().unwrap_or_default();
            boot.boot.boot_args = Some(format!(
                "{args} ember.ip={GUEST_IP}/{GUEST_PREFIX_LEN} ember.gw={GUEST_GATEWAY}"
            ));
        }
        Ok(boot)
    }

    fn resolve_guest(
        stack: StackKey,
        spec: &TemplateSpec,
        probe_kernel: &Path,
    ) -> Result<Self, VmError> {
        let boot_timeout = Duration::from_millis(spec.boot_timeout_ms);
        Ok(match &spec.guest {
            GuestSpec::Image { .. } => {
                return Err(VmError::invalid_spec(
                    "spec.guest",
                    "an image guest boots once its image is built (its kernel guest)",
                ));
            }
            GuestSpec::Probe { boot_args } => {
                let args = match boot_args {
                    Some(extra) => format!("{PROBE_TEMPLATE_ARGS} {extra}"),
                    None => PROBE_TEMPLATE_ARGS.to_string(),
                };
                Self::kernel(
                    stack,
                    probe_kernel.to_path_buf(),
                    Some(args),
                    spec.agent_port,
                    boot_timeout,
                )
            }
            GuestSpec::Kernel {
                kernel,
                initrd,
                boot_args,
                rootfs,
                rootfs_read_only,
            } => {
                let boot = VmSpec {
                    kernel: Some(kernel.clone()),
                    initrd: initrd.clone(),
                    boot_args: boot_args.clone(),
                    rootfs: rootfs.clone(),
                    rootfs_read_only: *rootfs_read_only,
                    ..Self::shape(&stack)
                };
                Self {
                    stack,
                    boot,
                    agent_port: spec.agent_port,
                    boot_timeout,
                }
            }
        })
    }

    /// The stack's shape and a vsock device (the provider puts the socket in the VM's own
    /// directory).
    fn shape(stack: &StackKey) -> VmSpec {
        VmSpec {
            vcpu_count: stack.vcpu_count(),
            mem_size_mib: stack.mem_size_mib(),
            vsock: Some(VsockSpec {
                guest_cid: 3,
                uds_path: PathBuf::from("v.sock"),
            }),
            ..VmSpec::default()
        }
    }
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
    spec: &TemplateBoot,
    snapshot_id: SnapshotId,
) -> Result<(SnapshotRef, TemplateReport), TemplateError> {
    let id = VmId::new(format!("template-{}", spec.stack.slug())).map_err(|source| {
        TemplateError::Provider {
            step: "naming",
            source,
        }
    })?;
    let vm_spec = &spec.boot;
    let step = |step: &'static str| move |source| TemplateError::Provider { step, source };
    let result = (|| {
        let t0 = Instant::now();
        provider
            .create_with_spec(&id, vm_spec)
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

fn wait_for_agent(
    provider: &VmmProvider,
    id: &VmId,
    spec: &TemplateBoot,
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
