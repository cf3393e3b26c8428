//! Rendering results for people: an aligned latency table and plain tables. (JSON output is
//! serde on the report types.)

use crate::stats::{Summary, human_us};

/// A table with one row per summary: name, n, p50, p90, p99, max.
pub fn latency_table(rows: &[Summary]) -> String {
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    let mut out = format!(
        "{:<width$}  {:>6}  {:>10}  {:>10}  {:>10}  {:>10}\n",
        "what", "n", "p50", "p90", "p99", "max"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<width$}  {:>6}  {:>10}  {:>10}  {:>10}  {:>10}\n",
            r.name,
            r.n,
            human_us(r.p50_us),
            human_us(r.p90_us),
            human_us(r.p99_us),
            human_us(r.max_us),
        ));
    }
    out
}

/// An aligned table: a header row, then one row per entry (columns padded to their widest).
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let pad = widths[i].saturating_sub(c.chars().count());
                l.push_str(c);
                l.push_str(&" ".repeat(pad + 2));
            }
        }
        l.truncate(l.trim_end().len());
        l.push('\n');
        l
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn aligned_rows() {
        let s = Summary::of(
            "acquire",
            &[Duration::from_micros(900), Duration::from_millis(2)],
        )
        .unwrap();
        let t = latency_table(&[s]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("what"));
        assert!(
            lines[1].contains("900 µs") && lines[1].contains("2.00 ms"),
            "{t}"
        );
    }
}
