//! Pools: how many warm VMs of a template the host keeps ([`PoolSpec`], one per template),
//! applied to the daemon's one [`WarmPool`](ember_pool::WarmPool) as a bucket per template's
//! stack. The record is written first; the bucket follows it (and is re-registered from the
//! records at every start). Deleting a pool drains its bucket: its idle VMs are destroyed.

use std::time::Duration;

use ember_core::{PoolSpec, Pooled, TemplateName};
use ember_pool::BucketConfig;
use ember_store::Durability;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Engine;
use crate::error::ApiError;

/// `PUT /v1/pools/{template}`: the pool's depths.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPool {
    /// Refilled up to at least this many idle VMs.
    pub min_depth: u32,
    /// Never more than this many idle VMs (default: `min_depth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u32>,
    /// How idle VMs wait: `running` (default) or `paused`.
    #[serde(default)]
    pub pooled: Pooled,
    /// Idle VMs older than this are replaced (default: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u64>,
    /// Restores that may run at once for this pool (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill_parallelism: Option<u32>,
}

/// A pool and how it is doing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PoolStatus {
    /// What was asked.
    pub spec: PoolSpec,
    /// Idle VMs ready now.
    pub depth: usize,
    /// Restores under way.
    pub in_flight: usize,
    /// The depth the refiller aims at.
    pub target_depth: usize,
    /// Whether refills keep failing.
    pub failing: bool,
    /// The last refill error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The bucket settings a pool record asks for.
pub fn bucket_config(spec: &PoolSpec) -> BucketConfig {
    BucketConfig {
        min_depth: spec.min_depth as usize,
        max_depth: spec.max_depth as usize,
        max_age: spec
            .max_age_secs
            .map_or(BucketConfig::default().max_age, Duration::from_secs),
        refill_parallelism: spec.refill_parallelism as usize,
        pause_idle: spec.pooled == Pooled::Paused,
        ..BucketConfig::default()
    }
}

/// How long deleting a pool waits for its restores under way (a Linux guest's restore and
/// agent check take seconds; the probe's, milliseconds).
const SPAWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(60);

impl Engine {
    /// Sets (creates or changes) the pool of `template`.
    pub fn set_pool(&self, template: &str, req: SetPool) -> Result<PoolStatus, ApiError> {
        let name = TemplateName::new(template)?;
        if req.min_depth == 0 && req.max_depth.is_none() {
            return Err(ApiError::invalid(
                "min_depth: 0 without max_depth is a pool of nothing; give max_depth, or a \
                 min_depth of at least 1 (delete the pool to remove it)",
            ));
        }
        let ready = self.ready_template(&name)?;
        let t = &ready.template;
        let spec = PoolSpec {
            template: name.clone(),
            min_depth: req.min_depth,
            max_depth: req.max_depth.unwrap_or(req.min_depth),
            pooled: req.pooled,
            max_age_secs: req.max_age_secs,
            refill_parallelism: req.refill_parallelism.unwrap_or(4),
        };
        spec.validate()?;
        let config = bucket_config(&spec);
        config.validate()?;
        let snap = ready.snapshot.clone();
        self.store
            .write("set pool", Durability::Full, |tx| tx.put(&spec).map(drop))?;
        self.pool.register(t.stack.clone(), snap, config)?;
        tracing::info!(template = %name, min = spec.min_depth, max = spec.max_depth, "pool set");
        self.pool_status(name.as_str())
    }

    /// Every pool with its counts.
    pub fn pools(&self) -> Result<Vec<PoolStatus>, ApiError> {
        let specs = self.store.list::<PoolSpec>()?;
        specs
            .into_iter()
            .map(|s| self.status_of(s.record))
            .collect()
    }

    /// One pool with its counts.
    pub fn pool_status(&self, template: &str) -> Result<PoolStatus, ApiError> {
        let name = TemplateName::new(template)?;
        let spec = self
            .store
            .get::<PoolSpec>(name.as_str())?
            .ok_or_else(|| ApiError::not_found(format!("template {template:?} has no pool")))?;
        self.status_of(spec.record)
    }

    fn status_of(&self, spec: PoolSpec) -> Result<PoolStatus, ApiError> {
        let t = self.template(spec.template.as_str())?;
        let m = self.pool.metrics();
        let s = m.stacks.get(&t.stack.to_string());
        Ok(PoolStatus {
            depth: s.map_or(0, |s| s.depth),
            in_flight: s.map_or(0, |s| s.in_flight),
            target_depth: s.map_or(0, |s| s.target_depth),
            failing: s.is_some_and(|s| s.failing),
            last_error: s.and_then(|s| s.last_error.clone()),
            spec,
        })
    }

    /// Deletes `template`'s pool and destroys its idle VMs; returns once no restore for it is
    /// under way (at most `SPAWN_DRAIN`), so deleting the template next finds nothing still
    /// reading its snapshot.
    pub fn delete_pool(&self, template: &str) -> Result<PoolSpec, ApiError> {
        let name = TemplateName::new(template)?;
        let t = self.template(name.as_str())?;
        let removed = self.store.write("delete pool", Durability::Full, |tx| {
            tx.remove::<PoolSpec>(name.as_str())
        })?;
        let spec = removed
            .ok_or_else(|| ApiError::not_found(format!("template {template:?} has no pool")))?;
        match self.pool.unregister(&t.stack) {
            Ok(n) => tracing::info!(template = %name, drained = n, "pool deleted"),
            Err(ember_pool::PoolError::UnknownStack { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if !self.pool.wait_spawns(&t.stack, SPAWN_DRAIN) {
            tracing::warn!(template = %name, "a restore for the deleted pool is still under way");
        }
        Ok(spec)
    }

    /// The snapshot reference sandboxes of `t` are restored from.
    pub fn snapshot_ref(
        &self,
        t: &ember_core::Template,
    ) -> Result<ember_core::SnapshotRef, ApiError> {
        let id = t.snapshot.as_ref().ok_or_else(|| {
            ApiError::conflict(format!("template {:?} has no snapshot", t.name.as_str()))
        })?;
        let info = self
            .store
            .get::<ember_core::SnapshotInfo>(id.as_str())?
            .ok_or_else(|| {
                ApiError::internal(format!(
                    "template {:?}'s snapshot {id} has no record",
                    t.name.as_str()
                ))
            })?;
        let mut r = info.record.to_ref();
        r.resume = true;
        Ok(r)
    }
}
