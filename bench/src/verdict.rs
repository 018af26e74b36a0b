//! The targets a run is judged against, and its verdicts: computed from the
//! unrounded figures of the run, never written by hand.
//!
//! The targets are those of the benchmark's brief (issue 5), on the 2-core
//! development machine: resolve throughput at least 0.8 × the floor's, resolve
//! p99 at most 2 × the floor's, server CPU per resolve at most 25 µs, the
//! ListTokens page 99,950 deep within 2 × the first page (p50), and server
//! peak RSS at most 64 MiB with a 100,000-token catalog. "Flat from 10k to
//! 1M tokens" compares two runs, so no single run judges it.

use serde::{Deserialize, Serialize};

use crate::report::{Report, thousands};

/// Resolve throughput over the floor's: at least this.
pub const THROUGHPUT_RATIO_MIN: f64 = 0.8;
/// Resolve p99 over the floor's p99: at most this.
pub const P99_RATIO_MAX: f64 = 2.0;
/// Server CPU time per resolve, microseconds: at most this.
pub const RESOLVE_CPU_US_MAX: f64 = 25.0;
/// Server peak RSS over the catalog phase, MiB: at most this.
pub const CATALOG_PEAK_RSS_MIB_MAX: f64 = 64.0;
/// ListTokens p50 of the deep page over the first page's: at most this.
pub const DEEP_OVER_FIRST_P50_MAX: f64 = 2.0;

/// Which side of the bound passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparison {
    /// `value >= bound` passes.
    #[serde(rename = ">=")]
    AtLeast,
    /// `value <= bound` passes.
    #[serde(rename = "<=")]
    AtMost,
}

impl Comparison {
    /// The operator as people write it.
    pub fn symbol(self) -> &'static str {
        match self {
            Self::AtLeast => ">=",
            Self::AtMost => "<=",
        }
    }
}

/// One target and whether the run met it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// What is measured, e.g. "resolve/floor throughput".
    pub target: String,
    /// The measured figure, unrounded.
    pub value: f64,
    /// Which side of the bound passes.
    pub comparison: Comparison,
    /// The bound.
    pub bound: f64,
    /// Unit of `value` and `bound` ("" for a ratio).
    pub unit: String,
    /// Whether `value` is on the passing side of `bound` (a NaN never passes).
    pub pass: bool,
}

impl Verdict {
    /// Judges `value` against `bound`.
    pub fn new(target: &str, value: f64, comparison: Comparison, bound: f64, unit: &str) -> Self {
        let pass = match comparison {
            Comparison::AtLeast => value >= bound,
            Comparison::AtMost => value <= bound,
        };
        Self {
            target: target.to_owned(),
            value,
            comparison,
            bound,
            unit: unit.to_owned(),
            pass,
        }
    }

    /// "PASS" or "FAIL".
    pub fn word(&self) -> &'static str {
        if self.pass { "PASS" } else { "FAIL" }
    }
}

/// Every target the figures of `report` allow judging, in a fixed order.
pub fn verdicts(report: &Report) -> Vec<Verdict> {
    use Comparison::{AtLeast, AtMost};
    let mut out = Vec::new();
    if let Some(r) = &report.ratios {
        out.push(Verdict::new(
            "resolve/floor throughput",
            r.throughput,
            AtLeast,
            THROUGHPUT_RATIO_MIN,
            "",
        ));
        out.push(Verdict::new(
            "resolve/floor p99",
            r.p99,
            AtMost,
            P99_RATIO_MAX,
            "",
        ));
    }
    if let Some(resolve) = &report.resolve {
        out.push(Verdict::new(
            "server CPU per resolve",
            resolve.server_cpu_us_per_req,
            AtMost,
            RESOLVE_CPU_US_MAX,
            "µs",
        ));
    }
    if let Some(c) = &report.catalog {
        out.push(Verdict::new(
            "ListTokens deep/first page p50",
            c.deep_over_first_p50,
            AtMost,
            DEEP_OVER_FIRST_P50_MAX,
            "",
        ));
        out.push(Verdict::new(
            &format!("server peak RSS, {} tokens", thousands(c.tokens as f64)),
            c.server_peak_rss_kib as f64 / 1024.0,
            AtMost,
            CATALOG_PEAK_RSS_MIB_MAX,
            "MiB",
        ));
    }
    out
}

/// `value` with the fewest decimals (at least `min_decimals`) that still
/// show which side of `bound` it is on: 0.7977 against 0.8 is "0.798", but
/// 0.79996 is "0.79996", never a misleading "0.800".
pub fn shown(value: f64, bound: f64, min_decimals: usize) -> String {
    for decimals in min_decimals..=12 {
        let text = format!("{value:.decimals$}");
        let rounded: f64 = text.parse().unwrap_or(value);
        if (rounded == bound) == (value == bound) {
            return text;
        }
    }
    // Closer than 1e-12 to the bound but not on it: all the digits.
    format!("{value}")
}

#[cfg(test)]
mod tests;
