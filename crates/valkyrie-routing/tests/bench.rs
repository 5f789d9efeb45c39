//! `valkyrie-routing bench engine` runs on a small route set and prints its
//! figures as one JSON object on the last line.

use std::process::{Command, Output};

use serde_json::Value;

/// Runs `valkyrie-routing bench engine` with `args` and returns its output.
fn bench_engine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_valkyrie-routing"))
        .args(["bench", "engine"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn bench_engine_prints_json() {
    let output = bench_engine(&[
        "--routes",
        "1000",
        "--threads",
        "2",
        "--seconds",
        "0.02",
        "--skew",
        "1",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().expect("some output");
    let report: Value = serde_json::from_str(last).unwrap();

    // Hosts get five routes each, so the count rounds up a little.
    let routes = report["routes"].as_u64().unwrap();
    assert!((1000..1010).contains(&routes), "{report}");
    assert_eq!(report["threads"], 2);
    assert_eq!(report["skew"], 1.0);
    assert_eq!(report["requests"], "mix");
    for field in [
        "lookups_per_sec",
        "p50_ns",
        "p99_ns",
        "p999_ns",
        "bytes_per_route",
        "updates_per_sec",
        "build_ms",
        "memory_latency_ns",
    ] {
        let value = report[field].as_f64();
        assert!(value.is_some_and(|value| value > 0.0), "{field}: {report}");
    }
    assert!(report["p50_ns"].as_u64() <= report["p99_ns"].as_u64());
    assert!(report["p99_ns"].as_u64() <= report["p999_ns"].as_u64());
    for name in ["matchit", "hashbrown", "valkyrie_paths", "valkyrie_keys"] {
        let baseline = &report["baselines"][name];
        for field in ["lookups_per_sec", "p99_ns", "bytes_per_route"] {
            let value = baseline[field].as_f64();
            assert!(
                value.is_some_and(|value| value > 0.0),
                "{name}.{field}: {report}"
            );
        }
    }

    // The FIT collision rate comes with the lookups that use a FIT, and
    // only with them.
    for figures in [
        &report,
        &report["baselines"]["valkyrie_paths"],
        &report["baselines"]["valkyrie_keys"],
    ] {
        let rate = figures["fit_collisions_per_lookup"].as_f64();
        assert!(rate.is_some_and(|rate| rate >= 0.0), "{report}");
    }
    for name in ["matchit", "hashbrown"] {
        let baseline = &report["baselines"][name];
        assert!(
            baseline.get("fit_collisions_per_lookup").is_none(),
            "{report}"
        );
    }
}

#[test]
fn bench_engine_rejects_tiny_route_sets() {
    let output = bench_engine(&["--routes", "10"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("--routes 10 is too small: use at least 100"));
}

#[test]
fn bench_engine_rejects_invalid_values() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["--threads", "0"],
            "--threads 0 is invalid: use at least 1",
        ),
        (&["--seconds", "0"], "--seconds 0 is invalid"),
        (&["--seconds", "-1"], "--seconds -1 is invalid"),
        (&["--skew", "-1"], "--skew -1 is out of range"),
    ];
    for (args, expected) in cases {
        let output = bench_engine(&[&["--routes", "1000"], args].concat());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn bench_engine_rejects_large_skew() {
    let output = bench_engine(&["--routes", "1000", "--skew", "9"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--skew 9 is out of range"));
}

#[test]
fn bench_engine_routes_one_kind() {
    let output = bench_engine(&[
        "--routes",
        "1000",
        "--seconds",
        "0.02",
        "--requests",
        "unknown-host",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["requests"], "unknown-host");
    assert!(
        report["lookups_per_sec"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}

#[test]
fn bench_engine_rejects_unknown_kind() {
    let output = bench_engine(&["--routes", "1000", "--requests", "keys"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("invalid value 'keys'"), "{stderr}");
    assert!(
        stderr.contains("possible values: mix, prefix, exact-path, wildcard, key, unknown-host"),
        "{stderr}"
    );
    assert!(stderr.contains("similar value exists: 'key'"), "{stderr}");
}
