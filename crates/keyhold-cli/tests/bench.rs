//! `keyhold bench` runs end to end: it starts a proxy (and OpenBao, when the test servers are
//! there), drives every scenario briefly, and writes a JSON report whose figures add up. Speed
//! is not checked here (docs/benchmarks.md has the measured figures); that it measures is.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_keyhold");

#[test]
fn keyhold_bench_measures_every_scenario_and_writes_json() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("bench.json");
    let openbao = std::env::var("KEYHOLD_TEST_OPENBAO_BIN").is_ok_and(|b| !b.is_empty());
    let mut command = Command::new(BIN);
    command
        .args(["bench", "--seconds", "0.3", "--warmup", "0", "--concurrency", "2", "--runs", "3"])
        .arg("--json")
        .arg(&json_path)
        .current_dir(dir.path());
    if !openbao {
        command.arg("--no-openbao");
    }
    let output = command.output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("proxy start to ready"), "{stdout}");

    let report: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let results = report["results"].as_array().unwrap();
    let row = |target: &str, scenario: &str, leasing: Value| {
        results
            .iter()
            .find(|r| r["target"] == target && r["scenario"] == scenario && r["leasing"] == leasing)
            .unwrap_or_else(|| panic!("no {target} {scenario} {leasing} in {report}"))
    };
    for leasing in [Value::Bool(true), Value::Bool(false)] {
        for (scenario, keys) in [
            ("wrap", 1.0),
            ("unwrap", 1.0),
            ("batch-wrap-100", 100.0),
            ("batch-unwrap-1000", 1000.0),
            ("sdk-1k", 1.0),
        ] {
            let r = row("keyhold", scenario, leasing.clone());
            assert!(r["requests"].as_u64().unwrap() > 0, "{r}");
            assert_eq!(r["errors"], 0, "{r}");
            let (rps, kps) =
                (r["requests_per_sec"].as_f64().unwrap(), r["keys_per_sec"].as_f64().unwrap());
            assert!((kps - rps * keys).abs() < 1e-6 * kps.max(1.0), "{r}");
            let (p50, p99, p999) = (
                r["p50_ms"].as_f64().unwrap(),
                r["p99_ms"].as_f64().unwrap(),
                r["p999_ms"].as_f64().unwrap(),
            );
            assert!(0.0 < p50 && p50 <= p99 && p99 <= p999, "{r}");
            // The proxy's own latency histogram of the route, read around the window (the SDK
            // scenario calls two routes and reads none).
            let proxy: Vec<Option<f64>> = ["proxy_p50_ms_at_most", "proxy_p99_ms_at_most"]
                .iter()
                .map(|k| r[k].as_f64())
                .collect();
            if scenario == "sdk-1k" {
                assert_eq!(proxy, [None, None], "{r}");
            } else {
                let (p50, p99) = (proxy[0].unwrap(), proxy[1].unwrap());
                assert!(0.0 < p50 && p50 <= p99, "{r}");
            }
        }
    }
    // Each run paces its half-load at half of that run's own peak; the row shown is the run
    // with the median rate, so its pace is half of one run's unwrap rate.
    let half = row("keyhold", "unwrap-half-load", Value::Bool(true));
    let every_run = report["every_run"].as_array().unwrap();
    assert_eq!(every_run.len(), 3, "{report}");
    let peaks: Vec<f64> = every_run
        .iter()
        .map(|run| {
            run.as_array()
                .unwrap()
                .iter()
                .find(|r| r["scenario"] == "unwrap" && r["leasing"] == Value::Bool(true))
                .unwrap()["requests_per_sec"]
                .as_f64()
                .unwrap()
        })
        .collect();
    let paced = half["rate"].as_f64().unwrap();
    assert!(
        peaks.iter().any(|peak| (paced - peak / 2.0).abs() < 1e-6),
        "the paced run is at half of a run's measured peak: {half} {peaks:?}"
    );
    // The row shown for a scenario is its median run.
    let mut rates = peaks.clone();
    rates.sort_by(f64::total_cmp);
    assert_eq!(
        row("keyhold", "unwrap", Value::Bool(true))["requests_per_sec"].as_f64().unwrap(),
        rates[1]
    );
    assert!(report["proxy_start_to_ready_ms"].as_f64().unwrap() > 0.0);
    assert!(report["proxy_peak_rss_bytes"].as_u64().unwrap() > 1024 * 1024);
    if openbao {
        let bao = row("openbao", "unwrap", Value::Null);
        assert!(bao["requests"].as_u64().unwrap() > 0);
        assert!(bao["proxy_p99_ms_at_most"].is_null(), "{bao}");
        let ratio = &report["ratios"]["unwrap_leased_vs_openbao_decrypt"];
        assert!(ratio["median"].as_f64().unwrap() > 0.0, "{ratio}");
        assert_eq!(ratio["runs"].as_array().unwrap().len(), 3, "{ratio}");
    } else {
        assert!(report["ratios"].as_object().unwrap().is_empty());
    }

    // An unknown scenario is refused before anything starts.
    let output = Command::new(BIN).args(["bench", "--only", "nope"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown scenario"));
}

/// `--proxy-wrapper`: the proxy runs under the given command, and is stopped with SIGTERM (not
/// killed) at the end, so that a profiler writes its output. The wrapper here is a script that
/// notes the SIGTERM it passes on.
#[cfg(unix)]
#[test]
fn keyhold_bench_stops_a_wrapped_proxy_with_sigterm() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("stopped");
    let script = dir.path().join("wrapper.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\"$@\" &\nchild=$!\n\
             trap 'kill -TERM $child; wait $child; echo $? > {}; exit 0' TERM\nwait $child\n",
            marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = Command::new(BIN)
        .args(["bench", "--only", "wrap", "--no-openbao", "--seconds", "0.2", "--warmup", "0"])
        .args(["--concurrency", "2", "--proxy-wrapper"])
        .arg(&script)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // The proxy got SIGTERM and exited on its own, with status 0.
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "0");
}

/// `--audit-ratio`: two proxies (audit trail with a syslog sink, and none), alternating rounds;
/// the report's ratios are the rounds' own, the median is the middle one, and the sink got the
/// audited proxy's events.
#[test]
fn keyhold_bench_audit_ratio_alternates_two_proxies_and_feeds_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("ratio.json");
    let output = Command::new(BIN)
        .args(["bench", "--audit-ratio", "--seconds", "0.3", "--warmup", "0"])
        .args(["--concurrency", "2", "--runs", "3", "--json"])
        .arg(&json_path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("audit on/off: median"), "{stdout}");

    let report: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let results = report["results"].as_array().unwrap();
    // Round 1 on then off, round 2 off then on, round 3 on then off.
    let scenarios: Vec<&str> = results.iter().map(|r| r["scenario"].as_str().unwrap()).collect();
    assert_eq!(
        scenarios,
        [
            "wrap-audit-on",
            "wrap-audit-off",
            "wrap-audit-off",
            "wrap-audit-on",
            "wrap-audit-on",
            "wrap-audit-off"
        ]
    );
    for r in results {
        assert!(r["requests"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["errors"], 0, "{r}");
    }
    let rate = |i: usize| results[i]["requests_per_sec"].as_f64().unwrap();
    let mut expected = [rate(0) / rate(1), rate(3) / rate(2), rate(4) / rate(5)];
    expected.sort_by(f64::total_cmp);
    let ratios: Vec<f64> =
        report["ratios"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    for (got, want) in ratios.iter().zip(expected) {
        assert!((got - want).abs() < 1e-9, "{ratios:?} against {expected:?}");
    }
    assert_eq!(report["median_ratio"].as_f64().unwrap(), ratios[1]);
    assert!(report["sink_bytes"].as_u64().unwrap() > 0, "the sink got nothing: {report}");
}
