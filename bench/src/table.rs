//! `aitokens-bench table --from FILE`: the README's performance table, as
//! markdown, from the JSON of a run. Every figure in it comes from that JSON;
//! every verdict is recomputed from the figures (and must agree with the
//! verdicts the run wrote).

use std::{fmt::Write as _, path::Path};

use crate::{
    Error, Result,
    report::{LoadFigures, Report, thousands},
    verdict::{self, Verdict, shown},
};

/// The line before a table generated from the JSON file `name` (the file
/// name only, e.g. `bench.json`), in the markdown file that shows it.
pub fn begin_marker(name: &str) -> String {
    format!("<!-- begin bench table: {name} -->")
}

/// The line after it.
pub const END: &str = "<!-- end bench table -->";

/// Reads a run's JSON and checks its verdicts against its figures.
pub fn load(path: &Path) -> Result<Report> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Setup(format!("reading {}: {e}", path.display())))?;
    let report: Report = serde_json::from_str(&text)
        .map_err(|e| Error::Setup(format!("{}: not a bench report: {e}", path.display())))?;
    let judged = verdict::verdicts(&report);
    if report.verdicts != judged {
        return Err(Error::Setup(format!(
            "{}: its verdicts do not follow from its figures (recomputed: {judged:?})",
            path.display()
        )));
    }
    Ok(report)
}

/// Replaces the lines between the begin marker of `from` and the next
/// [`END`] in `file` with `table`.
pub fn write_into(file: &Path, from: &Path, table: &str) -> Result<()> {
    let name = from
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let begin = begin_marker(&name);
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::Setup(format!("reading {}: {e}", file.display())))?;
    let Some(start) = text
        .find(&format!("{begin}\n"))
        .map(|at| at + begin.len() + 1)
    else {
        return Err(Error::Setup(format!(
            "{} has no line {begin:?}",
            file.display()
        )));
    };
    let Some(end) = text[start..].find(END).map(|at| start + at) else {
        return Err(Error::Setup(format!(
            "{} has no line {END:?} after {begin:?}",
            file.display()
        )));
    };
    let updated = format!("{}{table}{}", &text[..start], &text[end..]);
    std::fs::write(file, updated)
        .map_err(|e| Error::Setup(format!("writing {}: {e}", file.display())))
}

/// The markdown: the run, the load table, the catalog line, the verdicts.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let (m, s) = (&report.machine, &report.setup);
    let _ = writeln!(
        out,
        "One run of `{}` on {} CPUs ({}), Linux {}, load average {:.2} at the start: \
         {} callers over {} HTTP/2 connections, {} s measured after {} s warm-up; \
         usage tracking {}, resolve cache {}.\n",
        report.command,
        m.cpus,
        m.cpu_model,
        m.kernel,
        m.load_average,
        s.concurrency,
        s.connections,
        s.duration_s,
        s.warmup_s,
        if s.usage_tracking { "on" } else { "off" },
        match s.cache_mib {
            0 => "off".to_owned(),
            mib => format!("{mib} MiB"),
        },
    );
    load_table(&mut out, report);
    if let Some(c) = &report.catalog {
        let _ = writeln!(
            out,
            "\n{}-token catalog: ready {} ms after start{}; RSS {} after start, {} with \
             every row cached, {} at peak; ListTokens page of {}: first page p50 {}, \
             {} deep p50 {}.",
            thousands(c.tokens as f64),
            thousands(c.startup_ms),
            c.cache_warm_ms
                .map(|ms| format!(", resolve cache warm after {} ms", thousands(ms)))
                .unwrap_or_default(),
            mib(c.rss_after_ready_kib),
            mib(c.rss_cache_warm_kib),
            mib(c.server_peak_rss_kib),
            crate::LIST_PAGE,
            latency(c.list_first_page.p50_us),
            thousands(c.list_deep_page.depth as f64),
            latency(c.list_deep_page.p50_us),
        );
    }
    let judged = verdict::verdicts(report);
    if !judged.is_empty() {
        out.push_str("\n| target | measured | bound | verdict |\n| --- | ---: | ---: | :---: |\n");
        for v in &judged {
            verdict_row(&mut out, v);
        }
    }
    out
}

fn load_table(out: &mut String, report: &Report) {
    let _ = writeln!(
        out,
        "| {} tokens | req/s | p50 | p99 | p99.9 | server CPU / req | peak RSS |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        thousands(report.setup.tokens as f64)
    );
    let row = |out: &mut String, name: &str, f: &LoadFigures| {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} |",
            thousands(f.requests_per_s),
            latency(f.p50_us),
            latency(f.p99_us),
            latency(f.p999_us),
            latency(f.server_cpu_us_per_req),
            mib(f.server_peak_rss_kib),
        );
    };
    if let Some(f) = &report.resolve {
        row(out, "ResolveToken", f);
    }
    if let Some(f) = &report.floor {
        row(out, "floor (Echo)", f);
    }
    if let Some(r) = &report.ratios {
        let _ = writeln!(
            out,
            "| **resolve / floor** | **{}** | | **{}** | | {:.2} | |",
            shown(r.throughput, verdict::THROUGHPUT_RATIO_MIN, 3),
            shown(r.p99, verdict::P99_RATIO_MAX, 3),
            r.server_cpu
        );
    }
    let callers = report.setup.concurrency;
    if let Some(f) = &report.create_sequential {
        row(out, "CreateToken, 1 caller", f);
    }
    if let Some(f) = &report.create_concurrent {
        row(out, &format!("CreateToken, {callers} callers"), f);
    }
    if let Some(c) = &report.catalog {
        let name = format!("ResolveToken over {} tokens", thousands(c.tokens as f64));
        row(out, &name, &c.resolve);
    }
}

fn verdict_row(out: &mut String, v: &Verdict) {
    let unit = if v.unit.is_empty() {
        String::new()
    } else {
        format!(" {}", v.unit)
    };
    let bound = format!(
        "{} {}{unit}",
        match v.comparison {
            verdict::Comparison::AtLeast => "≥",
            verdict::Comparison::AtMost => "≤",
        },
        v.bound
    );
    let word = if v.pass { "PASS" } else { "**FAIL**" };
    let _ = writeln!(
        out,
        "| {} | {}{unit} | {bound} | {word} |",
        v.target,
        shown(v.value, v.bound, if v.unit.is_empty() { 3 } else { 1 }),
    );
}

/// Microseconds (of latency or CPU time) as three significant digits, in
/// ms from 1 ms up.
fn latency(us: f64) -> String {
    let (value, unit) = if us >= 1_000.0 {
        (us / 1_000.0, "ms")
    } else {
        (us, "µs")
    };
    let decimals = match value {
        v if v >= 100.0 => 0,
        v if v >= 10.0 => 1,
        _ => 2,
    };
    format!("{value:.decimals$} {unit}")
}

/// KiB as whole MiB.
fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::latency;
    use crate::report::thousands;

    #[test]
    fn figures_read_as_people_write_them() {
        assert_eq!(thousands(41_215.4), "41,215");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_000_000.0), "1,000,000");
        assert_eq!(latency(1_351.0), "1.35 ms");
        assert_eq!(latency(26_040.0), "26.0 ms");
        assert_eq!(latency(515.2), "515 µs");
        assert_eq!(latency(86.04), "86.0 µs");
    }
}
