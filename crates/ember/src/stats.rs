//! Latency summaries: percentiles over a set of durations, printable as a table row or JSON.

use std::time::Duration;

use serde::Serialize;

/// p50/p90/p99 (and friends) of a set of samples, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// What was measured.
    pub name: String,
    /// Samples.
    pub n: usize,
    /// Median, µs.
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Smallest, µs.
    pub min_us: f64,
    /// Largest, µs.
    pub max_us: f64,
    /// Mean, µs.
    pub mean_us: f64,
}

impl Summary {
    /// Summarizes `samples` (nearest-rank percentiles). `None` when there are none.
    pub fn of(name: impl Into<String>, samples: &[Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let idx = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            v[idx]
        };
        Some(Summary {
            name: name.into(),
            n: v.len(),
            p50_us: rank(0.50),
            p90_us: rank(0.90),
            p99_us: rank(0.99),
            min_us: v[0],
            max_us: v[v.len() - 1],
            mean_us: v.iter().sum::<f64>() / v.len() as f64,
        })
    }
}

/// Formats microseconds for people: `412 µs`, `1.84 ms`, `2.31 s`.
pub fn human_us(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let s = Summary::of("x", &samples).unwrap();
        assert_eq!((s.p50_us, s.p90_us, s.p99_us), (50.0, 90.0, 99.0));
        assert_eq!((s.min_us, s.max_us, s.mean_us), (1.0, 100.0, 50.5));
        assert!(Summary::of("none", &[]).is_none());
        let one = Summary::of("one", &[Duration::from_millis(2)]).unwrap();
        assert_eq!(one.p99_us, 2000.0);
    }

    #[test]
    fn human_units() {
        assert_eq!(human_us(412.4), "412 µs");
        assert_eq!(human_us(1840.0), "1.84 ms");
        assert_eq!(human_us(2_310_000.0), "2.31 s");
    }
}
