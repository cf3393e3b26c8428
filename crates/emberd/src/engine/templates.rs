//! Templates: boot a guest, wait for its agent, pause, snapshot — recorded as a [`Template`]
//! (state `building` while it boots, `ready` with its [`SnapshotInfo`] in the same transaction
//! when done). A failed build leaves nothing: the record and any snapshot files go, and the
//! error says why. Deleting a template is refused while a pool or a live sandbox uses it.
//!
//! A template whose guest is an `image` (a debootstrap package list, a directory or a tarball)
//! has its Linux image built first by ember-host's image builder, into the state dir's image
//! cache (content-addressed: the same source is built once), and records the `kernel` guest
//! the image boots as.

use std::time::SystemTime;

use ember_core::{
    GuestSpec, SnapshotId, StackKey, Template, TemplateBuild, TemplateName, TemplateSpec,
    TemplateState, VmProvider, error_chain,
};
use ember_host::image::{self, ImageError};
use ember_host::template::{self as host_template, TemplateBoot, TemplateError};
use ember_store::{Durability, StoreError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Engine;
use crate::error::ApiError;

/// `POST /v1/templates`: a template to build.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildTemplate {
    /// Its name (what sandboxes and pools name); letters, digits, `-`, `_`, `.`; ≤ 48 bytes.
    pub name: TemplateName,
    /// What to boot (default: the probe guest, 1 vCPU, 128 MiB).
    #[serde(default = "TemplateSpec::probe")]
    pub spec: TemplateSpec,
}

/// The stack version every template gets: templates are rebuilt under a new name, not
/// versioned in place.
const STACK_VERSION: &str = "v1";

impl Engine {
    /// Builds a template and records it ready; blocks until the snapshot is on disk.
    pub fn build_template(&self, req: BuildTemplate) -> Result<Template, ApiError> {
        req.spec.validate()?;
        if req.spec.network && self.nets.is_none() {
            return Err(ApiError::invalid(
                "spec.network: this emberd gives sandboxes no network (start it with \
                 --sandbox-network)",
            ));
        }
        if req.spec.agent_port != super::AGENT_PORT {
            return Err(ApiError::unsupported(format!(
                "spec.agent_port: only port {} is supported (the pool validates every guest \
                 on it), not {}",
                super::AGENT_PORT,
                req.spec.agent_port
            )));
        }
        let stack = StackKey::new(
            req.name.as_str(),
            STACK_VERSION,
            req.spec.vcpu_count,
            req.spec.mem_size_mib,
        )?;
        let record = Template {
            name: req.name.clone(),
            spec: req.spec.clone(),
            stack: stack.clone(),
            state: TemplateState::Building,
            snapshot: None,
            error: None,
            build: None,
            created_at: SystemTime::now(),
        };
        self.store
            .write("template building", Durability::Full, |tx| {
                tx.insert(&record).map(drop)
            })
            .map_err(|e| match e {
                StoreError::AlreadyExists { .. } => {
                    ApiError::conflict(format!("template {:?} already exists", req.name.as_str()))
                }
                other => other.into(),
            })?;
        let snapshot_id = SnapshotId::new(format!("tpl-{}-{}", req.name, crate::ids::suffix()))?;
        let outcome = self
            .resolve_image(&req.name, &req.spec)
            .and_then(|spec| {
                let boot = TemplateBoot::resolve(stack.clone(), &spec, &self.probe_kernel)?;
                host_template::build(&self.provider, &boot, snapshot_id.clone())
                    .map(|built| (spec, built))
                    .map_err(|e| build_error(&req.name, &e))
            })
            .and_then(|(spec, (snap, report))| {
                let info = self.provider.snapshot_info(&snap.snapshot_id)?;
                let ready = self.store.write("template ready", Durability::Full, |tx| {
                    tx.put(&info)?;
                    tx.update::<Template, StoreError>(req.name.as_str(), |t| {
                        t.spec = spec;
                        t.state = TemplateState::Ready;
                        t.snapshot = Some(info.snapshot_id.clone());
                        t.build = Some(TemplateBuild {
                            boot_to_agent_ms: report.boot_to_agent_us as f64 / 1e3,
                            snapshot_ms: report.snapshot_us as f64 / 1e3,
                        });
                        Ok(())
                    })
                });
                ready.map(|s| s.record).map_err(ApiError::from)
            });
        match outcome {
            Ok(t) => {
                tracing::info!(template = %t.name, snapshot = ?t.snapshot, "template ready");
                let snapshot = self.snapshot_ref(&t)?;
                self.cache_ready(
                    &t.name,
                    Some(super::ReadyTemplate {
                        template: t.clone(),
                        snapshot,
                    }),
                );
                Ok(t)
            }
            Err(e) => {
                self.discard_build(&req.name, &snapshot_id);
                Err(e)
            }
        }
    }

    /// `spec` with an `image` guest replaced by the `kernel` guest of its built image (built
    /// now, or found in the image cache); any other spec as it is.
    fn resolve_image(
        &self,
        name: &TemplateName,
        spec: &TemplateSpec,
    ) -> Result<TemplateSpec, ApiError> {
        let GuestSpec::Image { source } = &spec.guest else {
            return Ok(spec.clone());
        };
        let agent = image::agent::locate(self.images.agent.as_deref()).map_err(|e| {
            ApiError::unavailable(format!(
                "spec.guest: this emberd cannot build images: {} (start it with --agent-bin)",
                error_chain(&e)
            ))
        })?;
        let opts = image::BuildOptions {
            source: source.clone(),
            agent,
            cache_dir: self.images.cache_dir.clone(),
            kernel_cache: None,
        };
        tracing::info!(template = %name, source = %source.describe(), "building the template's image");
        let ui = ember_host::ui::Logged {
            subject: name.to_string(),
        };
        let built = image::build(&opts, &ui).map_err(|e| image_error(name, &e))?;
        tracing::info!(template = %name, image = %built.manifest.hash, cached = built.cached,
            secs = built.took.as_secs_f64(), "template's image ready");
        Ok(TemplateSpec {
            guest: image::template_spec(built.dir()).guest,
            ..spec.clone()
        })
    }

    /// Removes what a failed build left: its snapshot (files and row) and its record.
    fn discard_build(&self, name: &TemplateName, snapshot: &SnapshotId) {
        if let Err(e) = self.provider.delete_snapshot(snapshot)
            && !matches!(e, ember_core::VmError::NotFound { .. })
        {
            tracing::warn!(%snapshot, error = %error_chain(&e), "removing a failed build's snapshot");
        }
        let removed = self.store.write("template failed", Durability::Full, |tx| {
            tx.remove::<Template>(name.as_str())?;
            tx.remove::<ember_core::SnapshotInfo>(snapshot.as_str())
                .map(drop)
        });
        if let Err(e) = removed {
            tracing::error!(template = %name, error = %error_chain(&e), "removing a failed build's record");
        }
    }

    /// Every template, by name.
    pub fn templates(&self) -> Result<Vec<Template>, ApiError> {
        Ok(self
            .store
            .list::<Template>()?
            .into_iter()
            .map(|s| s.record)
            .collect())
    }

    /// One template.
    pub fn template(&self, name: &str) -> Result<Template, ApiError> {
        let name = TemplateName::new(name)?;
        self.store
            .get::<Template>(name.as_str())?
            .map(|s| s.record)
            .ok_or_else(|| ApiError::not_found(format!("template {:?} not found", name.as_str())))
    }

    /// A template that is ready to make sandboxes from, with its snapshot (from the cache;
    /// the store only says why one is not there).
    pub fn ready_template(
        &self,
        name: &TemplateName,
    ) -> Result<std::sync::Arc<super::ReadyTemplate>, ApiError> {
        if let Some(r) = self.cached_ready(name) {
            return Ok(r);
        }
        let t = self.template(name.as_str())?;
        Err(ApiError::conflict(format!(
            "template {:?} is {}, not ready",
            name.as_str(),
            t.state.as_str()
        )))
    }

    /// Deletes a template and its snapshot; refused while a pool or a live sandbox uses it.
    pub fn delete_template(&self, name: &str) -> Result<Template, ApiError> {
        let t = self.template(name)?;
        let removed = self.store.write("delete template", Durability::Full, |tx| {
            tx.remove::<Template>(t.name.as_str())?;
            if let Some(s) = &t.snapshot {
                tx.remove::<ember_core::SnapshotInfo>(s.as_str())?;
            }
            Ok::<_, StoreError>(())
        });
        removed.map_err(|e| match e {
            StoreError::InUse { users, .. } => ApiError::conflict(format!(
                "template {:?} is in use by {}",
                t.name.as_str(),
                users.join(", ")
            )),
            other => other.into(),
        })?;
        self.cache_ready(&t.name, None);
        if let Some(s) = &t.snapshot {
            // The record is gone; files left by a failure here are removed at the next start
            // (a snapshot directory no record claims).
            if let Err(e) = self.provider.delete_snapshot(s) {
                tracing::warn!(snapshot = %s, error = %error_chain(&e), "deleting a template's snapshot files");
            }
        }
        tracing::info!(template = %t.name, "template deleted");
        Ok(t)
    }
}

fn build_error(name: &TemplateName, e: &TemplateError) -> ApiError {
    let message = format!("building template {:?}: {}", name.as_str(), error_chain(e));
    match e {
        TemplateError::AgentTimeout(..) => ApiError::unavailable(message),
        TemplateError::Provider { source, .. } => match source {
            ember_core::VmError::InvalidSpec { .. } => ApiError::invalid(message),
            ember_core::VmError::NotFound { .. } => ApiError::not_found(message),
            _ => ApiError::internal(message),
        },
    }
}

/// An image build's failure as the API reports it: the caller's source at fault is a 400
/// naming the field; a host that cannot build images, a 503; anything else, a 500 — each
/// with the builder's log when there is one.
fn image_error(name: &TemplateName, e: &ImageError) -> ApiError {
    let message = format!(
        "template {:?}: building its image: {}",
        name.as_str(),
        error_chain(e)
    );
    match e {
        ImageError::BadOption(_)
        | ImageError::BadSource { .. }
        | ImageError::NoSuchPackage { .. } => {
            ApiError::invalid(format!("spec.guest.source: {message}"))
        }
        ImageError::NotRoot | ImageError::MissingTool { .. } | ImageError::Agent { .. } => {
            ApiError::unavailable(message)
        }
        _ => ApiError::internal(message),
    }
}
