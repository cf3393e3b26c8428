//! `PUT /logger` ([`Logger`]) and `PUT /metrics` ([`Metrics`]): where a VMM writes its log and
//! metrics. Sent by the client to a real Firecracker; ember-vmm does not serve them (it logs
//! through `tracing`). Nothing to check beyond their shape.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `PUT /logger` — `Logger`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// `Error`, `Warning`, `Info`, `Debug`, `Trace` or `Off` (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Named pipe or file for the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// Print the level in each line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Print the source location in each line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only log this module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// `PUT /metrics` — `Metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Named pipe or file the metrics are flushed to.
    pub metrics_path: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_fields_stay_out() {
        let l = Logger {
            level: Some("Info".into()),
            ..Default::default()
        };
        assert_eq!(serde_json::to_string(&l).unwrap(), r#"{"level":"Info"}"#);
        let m = Metrics {
            metrics_path: "/m.fifo".into(),
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"metrics_path":"/m.fifo"}"#
        );
    }
}
