use super::{Comparison, Verdict, shown, verdicts};
use crate::report::{CatalogFigures, ListFigures, LoadFigures, Ratios, Report};

#[test]
fn the_boundary_passes_and_just_below_it_fails() {
    // The run the README once called "met (0.80)": 41,215 / 51,666.
    let ratio = 41_215.0 / 51_666.0;
    let v = Verdict::new("t", ratio, Comparison::AtLeast, 0.8, "");
    assert!(!v.pass, "{ratio} >= 0.8");
    assert_eq!(v.word(), "FAIL");
    assert!(!Verdict::new("t", 0.798, Comparison::AtLeast, 0.8, "").pass);
    assert!(Verdict::new("t", 0.8, Comparison::AtLeast, 0.8, "").pass);
    assert!(Verdict::new("t", 0.8000001, Comparison::AtLeast, 0.8, "").pass);

    assert!(Verdict::new("t", 2.0, Comparison::AtMost, 2.0, "").pass);
    assert!(!Verdict::new("t", 2.000_000_1, Comparison::AtMost, 2.0, "").pass);
    // "On the line" is not a verdict: 25.2 µs against 25 µs fails.
    assert!(!Verdict::new("t", 25.2, Comparison::AtMost, 25.0, "µs").pass);
    assert!(!Verdict::new("t", f64::NAN, Comparison::AtMost, 2.0, "").pass);
    assert!(!Verdict::new("t", f64::NAN, Comparison::AtLeast, 0.8, "").pass);
}

#[test]
fn every_printed_target_is_judged_from_the_unrounded_figures() {
    let resolve = LoadFigures {
        requests_per_s: 41_215.0,
        p99_us: 5_210.0,
        server_cpu_us_per_req: 25.0,
        ..LoadFigures::default()
    };
    let report = Report {
        ratios: Some(Ratios {
            throughput: 41_215.0 / 51_666.0,
            p99: 5_210.0 / 5_300.0,
            server_cpu: 1.34,
        }),
        resolve: Some(resolve),
        catalog: Some(CatalogFigures {
            tokens: 100_000,
            server_peak_rss_kib: 64 * 1024 + 1,
            deep_over_first_p50: 521.0 / 515.0,
            list_first_page: ListFigures::default(),
            list_deep_page: ListFigures::default(),
            ..CatalogFigures::default()
        }),
        ..Report::default()
    };
    let got: Vec<(String, bool)> = verdicts(&report)
        .into_iter()
        .map(|v| (v.target, v.pass))
        .collect();
    let want = [
        ("resolve/floor throughput", false),
        ("resolve/floor p99", true),
        ("server CPU per resolve", true),
        ("ListTokens deep/first page p50", true),
        ("server peak RSS, 100,000 tokens", false),
    ];
    assert_eq!(
        got,
        want.map(|(t, p)| (t.to_owned(), p)).to_vec(),
        "one KiB over 64 MiB fails; 25 µs exactly passes"
    );
    // A run that skipped every phase judges nothing.
    assert!(verdicts(&Report::default()).is_empty());
}

#[test]
fn shown_figures_never_round_onto_the_bound() {
    assert_eq!(shown(41_215.0 / 51_666.0, 0.8, 3), "0.798");
    assert_eq!(shown(0.799_96, 0.8, 3), "0.79996");
    assert_eq!(shown(0.800_04, 0.8, 3), "0.80004");
    assert_eq!(shown(0.8, 0.8, 3), "0.800");
    assert_eq!(shown(25.04, 25.0, 1), "25.04");
    assert_eq!(shown(25.2, 25.0, 1), "25.2");
    assert_eq!(shown(63.9, 64.0, 1), "63.9");
}
