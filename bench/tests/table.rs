//! The README's performance table is exactly what `aitokens-bench table`
//! makes of the committed run (`docs/bench.json`), so it cannot drift from
//! the figures, and its verdicts cannot be edited by hand.

use std::{path::PathBuf, process::Command};

/// The repository root (this crate is `bench/` in it).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_owned()
}

fn table(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_aitokens-bench"))
        .arg("table")
        .args(args)
        .output()
        .expect("run aitokens-bench table")
}

/// The lines between the begin marker of `json` and the next end marker.
fn generated_part<'a>(markdown: &'a str, json: &str) -> &'a str {
    let begin = format!("<!-- begin bench table: {json} -->\n");
    let start = markdown
        .find(&begin)
        .unwrap_or_else(|| panic!("no line {begin:?}"))
        + begin.len();
    let end = start
        + markdown[start..]
            .find("<!-- end bench table -->")
            .expect("end marker");
    &markdown[start..end]
}

/// What `aitokens-bench table` prints from the committed `docs/{json}`.
fn generated_from(json: &str) -> String {
    let path = root().join("docs").join(json);
    let out = table(&["--from".as_ref(), path.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn the_readme_table_is_generated_from_the_committed_run() {
    let generated = generated_from("bench.json");
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    assert_eq!(
        generated_part(&readme, "bench.json"),
        generated,
        "README.md's performance table is not what `aitokens bench table --from \
         docs/bench.json` prints; regenerate it with `--write README.md`"
    );
    // The committed run is a full default run: every target judged.
    for target in [
        "resolve/floor throughput",
        "resolve/floor p99",
        "server CPU per resolve",
        "ListTokens deep/first page p50",
        "server peak RSS, 100,000 tokens",
    ] {
        assert!(
            generated.contains(&format!("| {target} |")),
            "no verdict for {target}:\n{generated}"
        );
    }
}

#[test]
fn the_1m_table_in_docs_is_generated_from_its_committed_run() {
    let generated = generated_from("bench-1m.json");
    let page = std::fs::read_to_string(root().join("docs/performance.md")).expect("docs");
    assert_eq!(
        generated_part(&page, "bench-1m.json"),
        generated,
        "docs/performance.md's 1M table is not what `aitokens bench table --from \
         docs/bench-1m.json` prints; regenerate it with `--write docs/performance.md`"
    );
    assert!(generated.contains("| 1,000,000 tokens |"), "{generated}");
}

#[test]
fn write_replaces_only_the_table_between_the_markers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("README.md");
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let stale = readme.replacen(generated_part(&readme, "bench.json"), "stale\n", 1);
    std::fs::write(&file, &stale).expect("write");
    let json = root().join("docs/bench.json");
    let out = table(&[
        "--from".as_ref(),
        json.as_os_str(),
        "--write".as_ref(),
        file.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&file).expect("read"), readme);
}

#[test]
fn a_verdict_edited_by_hand_is_refused() {
    let json = root().join("docs/bench.json");
    let mut report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("docs/bench.json")).expect("json");
    let verdict = &mut report["verdicts"][0];
    let pass = verdict["pass"].as_bool().expect("pass");
    verdict["pass"] = (!pass).into();
    let dir = tempfile::tempdir().expect("tempdir");
    let edited = dir.path().join("edited.json");
    std::fs::write(&edited, report.to_string()).expect("write");
    let out = table(&["--from".as_ref(), edited.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted an edited verdict");
    assert!(
        stderr.contains("its verdicts do not follow from its figures"),
        "{stderr}"
    );
}
