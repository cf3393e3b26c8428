//! A stack kept warm over real microVMs: its template snapshot, a [`WarmPool`] whose validator
//! is the guest agent, the provider's death notices wired to the pool, and the handoff of one
//! VM to a tenant up to its first agent round trip.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ember_agent_proto::{AgentClient, Exec};
use ember_core::{SnapshotId, SnapshotRef, StackKey, VmId, VmProvider};
use ember_pool::{BucketConfig, PoolError, PoolSettings, Tenant, WarmPool};
use ember_runtime::{ListenerId, VmExit, VmmProvider};

use crate::agent::{self, AgentError, AgentValidator};
use crate::template::{self, TemplateBoot, TemplateError, TemplateReport};
use crate::ui::Ui;

/// The pool type ember runs over real VMs.
pub type Pool = WarmPool<Arc<VmmProvider>>;

pub use ember_core::Pooled;

pub use crate::template::PROBE_TEMPLATE_ARGS;

/// What a warm stack needs.
#[derive(Debug, Clone)]
pub struct WarmOptions {
    /// The stack.
    pub stack: StackKey,
    /// The guest kernel for the template.
    pub kernel: PathBuf,
    /// The template's kernel command line.
    pub boot_args: Option<String>,
    /// How pooled VMs wait.
    pub pooled: Pooled,
    /// The agent's vsock port.
    pub agent_port: u32,
    /// Agent call timeout (validation and handover).
    pub agent_timeout: Duration,
    /// Pool depth (min = max).
    pub depth: usize,
    /// Restores that may run at once.
    pub refill_parallelism: usize,
}

/// Why a warm stack could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    /// The template failed.
    #[error("building the template")]
    Template(#[from] TemplateError),
    /// The pool refused to start or register.
    #[error("setting up the warm pool")]
    Pool(#[from] PoolError),
    /// The pool did not fill.
    #[error("the pool did not fill to {depth} within {waited:?} ({why})")]
    Fill {
        /// Target depth.
        depth: usize,
        /// How long it waited.
        waited: Duration,
        /// Last refill error, if any.
        why: String,
    },
}

/// A running warm stack.
pub struct WarmStack {
    /// The pool.
    pub pool: Arc<Pool>,
    /// The stack.
    pub stack: StackKey,
    /// The template snapshot.
    pub template: SnapshotRef,
    /// How building the template went.
    pub template_report: TemplateReport,
    provider: Arc<VmmProvider>,
    validator: Arc<AgentValidator>,
    listener: ListenerId,
    agent_port: u32,
    agent_timeout: Duration,
}

impl WarmStack {
    /// Builds the template, starts the pool, and waits (reporting progress) until it is full.
    pub fn start(
        provider: &Arc<VmmProvider>,
        opts: &WarmOptions,
        ui: &dyn Ui,
    ) -> Result<WarmStack, WarmError> {
        ui.stage("building the template snapshot", None);
        let snapshot_id =
            SnapshotId::new(format!("tpl-{}", opts.stack.slug())).map_err(|source| {
                TemplateError::Provider {
                    step: "naming",
                    source,
                }
            })?;
        let (template, template_report) = template::build(
            provider,
            &TemplateBoot::kernel(
                opts.stack.clone(),
                opts.kernel.clone(),
                opts.boot_args.clone(),
                opts.agent_port,
                Duration::from_secs(30),
            ),
            snapshot_id,
        )?;
        ui.finish(&format!(
            "template booted to agent in {:.1} ms, snapshotted in {:.1} ms",
            template_report.boot_to_agent_us as f64 / 1e3,
            template_report.snapshot_us as f64 / 1e3
        ));

        let validator = Arc::new(AgentValidator::new(
            Arc::clone(provider),
            opts.agent_port,
            opts.agent_timeout,
        ));
        let pool = match WarmPool::start(
            Arc::clone(provider),
            Arc::clone(&validator) as Arc<dyn ember_pool::EntryValidator>,
            PoolSettings::default(),
        ) {
            Ok(pool) => Arc::new(pool),
            Err(e) => {
                delete_template(provider, &template.snapshot_id);
                return Err(e.into());
            }
        };
        let weak: Weak<Pool> = Arc::downgrade(&pool);
        let listener = provider.add_exit_listener(Arc::new(move |exit: &VmExit| {
            if let Some(pool) = weak.upgrade() {
                pool.notify_died(&exit.id);
            }
        }));
        let stack = WarmStack {
            pool,
            stack: opts.stack.clone(),
            template,
            template_report,
            provider: Arc::clone(provider),
            validator,
            listener,
            agent_port: opts.agent_port,
            agent_timeout: opts.agent_timeout,
        };
        let ready = stack
            .pool
            .register(
                opts.stack.clone(),
                stack.template.clone(),
                BucketConfig {
                    min_depth: opts.depth,
                    max_depth: opts.depth,
                    refill_parallelism: opts.refill_parallelism,
                    pause_idle: opts.pooled == Pooled::Paused,
                    ..BucketConfig::default()
                },
            )
            .map_err(WarmError::from)
            .and_then(|()| stack.wait_full(ui, Duration::from_secs(60)));
        match ready {
            Ok(()) => Ok(stack),
            Err(e) => {
                // Nothing of a half-started stack stays: pooled VMs, listener, template.
                stack.shutdown();
                Err(e)
            }
        }
    }

    /// Waits until the bucket is at its depth again.
    pub fn wait_full(&self, ui: &dyn Ui, timeout: Duration) -> Result<(), WarmError> {
        let depth = self.target_depth();
        ui.stage(
            &format!("filling the warm pool ({depth} VMs)"),
            Some(depth as u64),
        );
        let t0 = Instant::now();
        loop {
            let now = self.pool.depth(&self.stack).unwrap_or(0);
            ui.progress(now as u64);
            if now >= depth {
                break;
            }
            if t0.elapsed() > timeout {
                let why = self
                    .pool
                    .metrics()
                    .stacks
                    .get(&self.stack.to_string())
                    .and_then(|s| s.last_error.clone())
                    .unwrap_or_else(|| "no refill error recorded".into());
                return Err(WarmError::Fill {
                    depth,
                    waited: t0.elapsed(),
                    why,
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        ui.finish(&format!(
            "{depth} warm VMs ready in {:.0} ms",
            t0.elapsed().as_secs_f64() * 1e3
        ));
        Ok(())
    }

    fn target_depth(&self) -> usize {
        self.pool
            .metrics()
            .stacks
            .get(&self.stack.to_string())
            .map_or(1, |s| s.target_depth)
    }

    /// Hands a warm VM to `tenant` and runs its first agent command (`echo <words>`). The
    /// tenant keeps its agent connection (in the returned [`Handoff`]) until
    /// [`release`](Self::release).
    pub fn handoff(&self, tenant: &str, words: &[&str]) -> Result<Handoff, HandoffError> {
        let t0 = Instant::now();
        let tenant = Tenant::new(tenant)?;
        let vm = self
            .pool
            .acquire_timeout(&self.stack, &tenant, Duration::from_secs(30))?;
        let acquired = t0.elapsed();
        // The connection that reseeded the VM at handover, or a new one.
        let kept = self.validator.take_connection(&vm.vm_id);
        tracing::debug!(vm = %vm.vm_id, reused = kept.is_some(), "tenant agent connection");
        let connection = match kept {
            Some(c) => Ok(c),
            None => agent::connect(
                &self.provider,
                &vm.vm_id,
                self.agent_port,
                self.agent_timeout,
            ),
        };
        let mut client = match connection {
            Ok(c) => c,
            Err(e) => {
                self.destroy(&vm.vm_id);
                return Err(e.into());
            }
        };
        let connected = t0.elapsed();
        let mut argv = vec!["echo"];
        argv.extend_from_slice(words);
        let out = match client.exec(&Exec::new(&argv)) {
            Ok(out) => out,
            Err(e) => {
                drop(client);
                self.destroy(&vm.vm_id);
                return Err(HandoffError::Agent(AgentError::Client(e)));
            }
        };
        let done = t0.elapsed();
        Ok(Handoff {
            vm_id: vm.vm_id,
            agent: client,
            timing: HandoffTiming {
                acquire: acquired,
                connect: connected - acquired,
                first_call: done - connected,
                total: done,
            },
            output: String::from_utf8_lossy(&out.stdout).trim_end().to_string(),
        })
    }

    /// Ends a tenant's use of its VM: closes its agent connection and destroys the VM (a
    /// failure to destroy is logged). Returns the handoff's timings.
    pub fn release(&self, handoff: Handoff) -> HandoffTiming {
        let Handoff {
            vm_id,
            agent,
            timing,
            ..
        } = handoff;
        drop(agent);
        self.destroy(&vm_id);
        timing
    }

    fn destroy(&self, vm: &VmId) {
        self.validator.forget(vm);
        if let Err(e) = self.provider.destroy(vm) {
            tracing::warn!(%vm, error = %ember_core::error_chain(&e), "destroying a tenant VM");
        }
    }

    /// Shuts the pool down, forgets the listener and deletes the template snapshot.
    pub fn shutdown(self) {
        self.pool.shutdown();
        self.provider.remove_exit_listener(self.listener);
        delete_template(&self.provider, &self.template.snapshot_id);
    }
}

fn delete_template(provider: &VmmProvider, id: &SnapshotId) {
    if let Err(e) = provider.delete_snapshot(id) {
        tracing::warn!(error = %ember_core::error_chain(&e), "deleting the template snapshot");
    }
}

/// A VM handed to its tenant, with the tenant's open agent connection and how long it took.
#[derive(Debug)]
pub struct Handoff {
    /// The tenant's VM.
    pub vm_id: VmId,
    /// The tenant's agent connection, open until [`WarmStack::release`]: a tenant works
    /// over it, and closing it is part of ending the tenancy, not of the handoff.
    pub agent: AgentClient,
    /// How long each step took.
    pub timing: HandoffTiming,
    /// What the first command printed.
    pub output: String,
}

/// How long one handoff took, step by step.
#[derive(Debug, Clone, Copy)]
pub struct HandoffTiming {
    /// The pool's acquire (validate, rename, resume if pooled paused, Reseed sent ahead).
    pub acquire: Duration,
    /// Getting the tenant its agent connection (the one kept from the handover's Reseed, or a
    /// new vsock handshake + Hello).
    pub connect: Duration,
    /// The first agent command.
    pub first_call: Duration,
    /// From the acquire call to the first command's reply.
    pub total: Duration,
}

/// Why a handoff failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// The pool could not hand a VM over.
    #[error("acquiring a warm VM")]
    Pool(#[from] PoolError),
    /// The tenant's agent call failed.
    #[error("the tenant's first agent call")]
    Agent(#[from] AgentError),
}
