//! `aitokens bench` runs end to end (tiny and short: this checks that the
//! program works and measures every phase, not how fast anything is; the
//! figures come from running it, see docs/performance.md).

use std::{path::PathBuf, process::Command};

/// The `aitokens` binary of this build, beside `aitokens-bench`.
fn aitokens() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_aitokens-bench")).with_file_name("aitokens");
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (cargo build, or cargo test from the root)",
        path.display()
    );
    path
}

#[test]
fn bench_runs_every_phase_and_writes_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("bench.json");
    // `aitokens bench` runs this program from beside itself, and the server
    // it measures is that same `aitokens`.
    let output = Command::new(aitokens())
        .args([
            "bench",
            "--tokens",
            "300",
            "--concurrency",
            "8",
            "--connections",
            "2",
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
            "--creates",
            "40",
            "--catalog-tokens",
            "500",
            "--list-calls",
            "5",
            "--json",
        ])
        .arg(&json)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run aitokens bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("resolve / floor (unrounded): throughput"),
        "{stdout}"
    );
    assert!(
        stdout.contains("targets (judged from the unrounded figures):"),
        "{stdout}"
    );

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    for phase in [
        "/resolve",
        "/floor",
        "/create_sequential",
        "/create_concurrent",
        "/catalog/resolve",
    ] {
        let figures = report.pointer(phase).expect(phase);
        assert_eq!(figures["errors"], 0, "{phase}: {figures}");
        assert!(figures["requests"].as_u64().expect("count") > 0, "{phase}");
        for field in ["p50_us", "p99_us", "server_cpu_us_per_req"] {
            assert!(figures[field].as_f64().is_some(), "{phase}.{field}");
        }
        assert!(
            figures["server_peak_rss_kib"].as_u64().expect("rss") > 0,
            "{phase}"
        );
    }
    // Bounded in count: the create phases stop at --creates.
    assert!(report["create_sequential"]["requests"].as_u64() <= Some(40));
    assert_eq!(report["seed"]["tokens"], 300);
    assert_eq!(report["catalog"]["list_deep_page"]["depth"], 450);
    assert_eq!(report["catalog"]["list_first_page"]["calls"], 5);
    let throughput = report["ratios"]["throughput"].as_f64().expect("ratio");
    assert!(throughput > 0.0);

    // One verdict per target, each judged from the unrounded figure, in the
    // JSON and in the text.
    let verdicts = report["verdicts"].as_array().expect("verdicts");
    let targets: Vec<&str> = verdicts
        .iter()
        .map(|v| v["target"].as_str().expect("target"))
        .collect();
    assert_eq!(
        targets,
        [
            "resolve/floor throughput",
            "resolve/floor p99",
            "server CPU per resolve",
            "ListTokens deep/first page p50",
            "server peak RSS, 500 tokens",
        ]
    );
    let first = &verdicts[0];
    assert_eq!(first["value"].as_f64(), Some(throughput), "unrounded");
    assert_eq!(
        (first["comparison"].as_str(), first["bound"].as_f64()),
        (Some(">="), Some(0.8))
    );
    assert_eq!(first["pass"].as_bool(), Some(throughput >= 0.8));
    let word = if throughput >= 0.8 { "PASS" } else { "FAIL" };
    assert!(
        stdout.contains(&format!(
            "  {word}  resolve/floor throughput: {throughput} (target >= 0.8)"
        )),
        "{stdout}"
    );
    for v in verdicts {
        assert!(v["pass"].is_boolean() && v["value"].is_number(), "{v}");
    }

    // The README's table can be made from this JSON.
    let table = Command::new(env!("CARGO_BIN_EXE_aitokens-bench"))
        .args(["table", "--from"])
        .arg(&json)
        .output()
        .expect("run aitokens-bench table");
    let markdown = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.status.success(),
        "{markdown}{}",
        String::from_utf8_lossy(&table.stderr)
    );
    assert!(
        markdown.contains("| ResolveToken over 500 tokens |"),
        "{markdown}"
    );
    assert!(
        markdown.contains("| resolve/floor throughput |"),
        "{markdown}"
    );
}

#[test]
fn a_missing_server_binary_is_named() {
    let output = Command::new(env!("CARGO_BIN_EXE_aitokens-bench"))
        .args([
            "--server-exe",
            "/nonexistent/aitokens",
            "--tokens",
            "1",
            "--skip",
            "catalog",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run aitokens-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("starting /nonexistent/aitokens"),
        "{stderr}"
    );
}
