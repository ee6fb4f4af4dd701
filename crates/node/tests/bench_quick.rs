//! `steadfast-lab bench failover --quick` through the binary: the summary, the raw samples and the
//! plot are well formed. No timing thresholds: the figures depend on the machine.
//! Needs root (network namespaces).

use std::path::PathBuf;
use std::process::Command;

/// A fresh output directory, removed when the test ends (also on panic).
struct OutDir(PathBuf);

impl Drop for OutDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn number_or_null(value: &serde_json::Value, key: &str, row: &serde_json::Value) {
    assert!(
        value[key].is_number() || value[key].is_null(),
        "{key} must be a number or null in {row}"
    );
}

/// Runs `steadfast-lab bench BENCH --quick --json [EXTRA…]` into a fresh directory; returns it and
/// the summary printed on stdout.
fn run_quick(bench: &str, extra: &[&str]) -> (OutDir, serde_json::Value) {
    let out = OutDir(std::env::temp_dir().join(format!(
        "steadfast-bench-{bench}{}-{}",
        extra.concat(),
        std::process::id()
    )));
    let output = Command::new(env!("CARGO_BIN_EXE_steadfast-lab"))
        .args(["bench", bench, "--quick", "--json"])
        .args(extra)
        .arg("--out")
        .arg(&out.0)
        .output()
        .unwrap_or_else(|e| panic!("run steadfast-lab bench {bench}: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench {bench} failed: {stderr}");
    let summary = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "--json prints JSON ({e}):\n{}\n{stderr}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    (out, summary)
}

#[test]
fn quick_failover_bench_writes_a_summary_samples_and_a_plot() {
    let (out, summary) = run_quick("failover", &["--no-keepalived"]);
    let rows = summary["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "quick: Steadfast at 10 ms alone: {summary}");
    check_failover_report(&out, &summary);
}

#[test]
#[ignore = "needs keepalived: apt-get install keepalived (.ci/run installs it)"]
fn quick_failover_bench_measures_keepalived_beside_steadfast() {
    let (out, summary) = run_quick("failover", &["--keepalived"]);
    let rows = summary["rows"].as_array().expect("rows");
    assert_eq!(
        rows.len(),
        2,
        "quick: Steadfast at 10 ms, then keepalived fastest: {summary}"
    );
    assert_eq!(rows[1]["system"], "keepalived");
    check_failover_report(&out, &summary);
}

/// The summary, the raw samples and the plot of a quick failover bench, whatever its rows.
fn check_failover_report(out: &OutDir, summary: &serde_json::Value) {
    assert_eq!(summary["bench"], "failover");
    assert_eq!(summary["how"], "host");
    assert_eq!(summary["quick"], true);
    let rows = summary["rows"].as_array().expect("rows");
    assert_eq!(rows[0]["system"], "steadfast");
    assert_eq!(rows[0]["setting"], "heartbeat 10 ms");
    for row in rows {
        assert_eq!(row["crashes"], 3, "{row}");
        for key in [
            "median_gap_ms",
            "p90_gap_ms",
            "max_gap_ms",
            "median_first_good_reply_ms",
        ] {
            number_or_null(row, key, row);
        }
        assert!(row["median_gap_ms"].is_number(), "{row}");
        assert!(
            row["median_gap_ms"].as_f64() <= row["p90_gap_ms"].as_f64()
                && row["p90_gap_ms"].as_f64() <= row["max_gap_ms"].as_f64(),
            "median ≤ p90 ≤ max: {row}"
        );
        assert!(
            row["client_errors"].is_u64() && row["probes"].as_u64() > Some(0),
            "{row}"
        );
    }

    let raw: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.0.join("failover.json")).expect("failover.json"),
    )
    .expect("failover.json is JSON");
    let raw_rows = raw["rows"].as_array().expect("raw rows");
    assert_eq!(raw_rows.len(), rows.len());
    for row in raw_rows {
        let samples = row["samples"].as_array().expect("samples");
        assert_eq!(samples.len(), 3, "{row}");
        for sample in samples {
            assert!(
                sample["gap_ms"].as_f64().is_some_and(|g| g >= 0.0),
                "{sample}"
            );
            assert!(
                sample["crashed"]
                    .as_str()
                    .is_some_and(|h| h.starts_with('n')),
                "{sample}"
            );
            number_or_null(sample, "first_good_reply_ms", sample);
            // Every crash ends with another node serving: the campaign waits for it.
            let took_over = sample["took_over"].as_str().expect("took_over");
            assert_ne!(took_over, sample["crashed"].as_str().unwrap(), "{sample}");
        }
    }

    let svg = std::fs::read_to_string(out.0.join("failover-cdf.svg")).expect("failover-cdf.svg");
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    assert_eq!(
        svg.matches("<polyline").count(),
        rows.len(),
        "one CDF per row"
    );
}

/// `steadfast-lab bench overhead --quick`: one row per mode and size, the unreplicated row is the
/// baseline (ratio 1), the other rows' ratios are computed from the same run, CPU per request
/// is reported for each node's daemon and backend, and the plot and raw samples are written.
#[test]
#[ignore = "needs wrk: apt-get install wrk (.ci/run installs it)"]
fn quick_overhead_bench_computes_ratios_in_one_run() {
    let (out, summary) = run_quick("overhead", &[]);
    assert_eq!(summary["bench"], "overhead");
    assert_eq!(summary["quick"], true);
    let rows = summary["rows"].as_array().expect("rows");
    let modes = ["unreplicated", "simplex", "duplex"];
    assert_eq!(rows.len(), 2 * modes.len(), "2 sizes × 3 modes: {summary}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["backend"], "builtin", "{row}");
        assert_eq!(row["mode"], modes[i % 3], "{row}");
        assert_eq!(
            row["reply_bytes"],
            [1024, 51200][i / 3],
            "sizes in order: {row}"
        );
        for key in ["rps", "mb_s", "p50_us", "p99_us", "rps_ratio", "p50_ratio"] {
            assert!(
                row[key].as_f64().is_some_and(|v| v > 0.0 && v.is_finite()),
                "{key} must be a positive number: {row}"
            );
        }
        if row["mode"] == "unreplicated" {
            assert_eq!(row["rps_ratio"], 1.0, "the baseline: {row}");
            assert_eq!(row["p50_ratio"], 1.0, "the baseline: {row}");
        }
        for node in ["primary", "backup"] {
            for process in ["daemon", "backend"] {
                for time in ["user", "system"] {
                    assert!(
                        row["cpu_us_per_req"][node][process][time]
                            .as_f64()
                            .is_some_and(|v| v >= 0.0),
                        "cpu {node} {process} {time}: {row}"
                    );
                }
            }
        }
        assert_eq!(row["errors"], 0, "{row}");
    }
    // The serving backend did measurable work in every mode.
    for row in rows {
        let backend = &row["cpu_us_per_req"]["primary"]["backend"];
        assert!(
            backend["user"].as_f64().unwrap() + backend["system"].as_f64().unwrap() > 0.0,
            "{row}"
        );
    }
    let raw: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.0.join("overhead.json")).expect("overhead.json"),
    )
    .expect("overhead.json is JSON");
    assert_eq!(raw["samples"].as_array().map(Vec::len), Some(rows.len()));
    let svg =
        std::fs::read_to_string(out.0.join("overhead-builtin.svg")).expect("overhead-builtin.svg");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(
        svg.matches("<title>").count(),
        rows.len(),
        "one bar per row"
    );
}

/// `steadfast-lab bench availability --quick`: the paper's schedule for 30 s; the summary names the
/// fault events, availability and recovery figures beside the paper's, and the raw events and
/// the plot are written.
#[test]
fn quick_availability_bench_replays_the_papers_schedule() {
    let (out, summary) = run_quick("availability", &[]);
    assert_eq!(summary["bench"], "availability");
    assert_eq!(summary["how"], "backend");
    // 30 s of Table 1 at 1 s per minute: 14 changes (see the schedule's unit tests).
    assert_eq!(summary["fault_events"], 14, "{summary}");
    let probes = summary["probes"].as_u64().expect("probes");
    assert!(probes > 400, "a probe every 50 ms for 30 s: {summary}");
    for key in [
        "availability_pct",
        "availability_while_a_host_lived_pct",
        "no_live_host_pct",
    ] {
        assert!(
            summary[key]
                .as_f64()
                .is_some_and(|v| (0.0..=100.0).contains(&v)),
            "{key} is a percentage: {summary}"
        );
    }
    assert!(
        summary["service_moves"].as_u64().is_some_and(|m| m > 0),
        "{summary}"
    );
    assert_eq!(summary["paper"]["availability_pct"], 97.35);
    number_or_null(&summary["recovery_ms"], "mean", &summary);
    let raw: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.0.join("availability.json")).expect("availability.json"),
    )
    .expect("availability.json is JSON");
    assert_eq!(raw["report"]["events"].as_array().map(Vec::len), Some(14));
    let svg = std::fs::read_to_string(out.0.join("availability-cdf.svg")).expect("svg");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
}

/// `steadfast-lab bench hostile`, a short and smaller flood: both modes reported with the flood as
/// sent, new connections before and during it, established requests, recovery and memory; the
/// command succeeds only when each mode meets the hostile-input bounds.
#[test]
fn quick_hostile_bench_floods_both_modes_and_meets_the_bounds() {
    let (out, summary) = run_quick("hostile", &["--syn-rate", "20000", "--seconds", "3"]);
    assert_eq!(summary["bench"], "hostile");
    assert_eq!(summary["target_syns_per_second"], 20000);
    let rows = summary["rows"].as_array().expect("rows");
    let modes: Vec<&str> = rows.iter().filter_map(|r| r["mode"].as_str()).collect();
    assert_eq!(modes, ["unreplicated", "duplex"], "{summary}");
    for row in rows {
        assert!(
            row["syns_sent"]
                .as_u64()
                .is_some_and(|n| n >= 20_000 * 3 * 8 / 10),
            "the flood ran at its rate: {row}"
        );
        let during = &row["during"];
        assert!(
            during["probes"].as_u64().is_some_and(|n| n >= 200),
            "a new connection every 10 ms during 3 s: {row}"
        );
        number_or_null(during, "connect_p99_ms", row);
        assert!(
            row["keep_alive_requests"].as_u64().is_some_and(|n| n > 0),
            "{row}"
        );
        assert_eq!(row["keep_alive_failed"], 0, "{row}");
        let members = row["members"].as_array().expect("members");
        assert_eq!(members.len(), 2, "{row}");
        assert!(
            members
                .iter()
                .all(|m| m["peak_resident_bytes"].as_u64().is_some_and(|b| b > 0)),
            "each member's memory was read: {row}"
        );
    }
    let duplex = &rows[1];
    assert!(
        duplex["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["role"] == "backup" && m["request_bytes_budget"].as_u64() > Some(0)),
        "the backup's budget is reported: {duplex}"
    );
    let raw: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.0.join("hostile.json")).expect("hostile.json"),
    )
    .expect("hostile.json is JSON");
    assert_eq!(raw["rows"].as_array().map(Vec::len), Some(2));
}

/// `steadfast-lab bench active --quick`: a single redis-server, then active groups of 2, 3 and 4
/// replicas, and 3 replicas with safe delivery and with RR-NP, under per-member CPU quotas;
/// ratios to the single server and to the default group of 3 from the same run, reads spread
/// over every replica (every replica but the primary under RR-NP), no error reply.
#[test]
#[ignore = "needs redis-server and redis-tools (the interop tier; .ci/run installs them)"]
fn quick_active_bench_spreads_reads_and_computes_ratios_in_one_run() {
    let (out, summary) = run_quick("active", &[]);
    assert_eq!(summary["quick"], true);
    assert!(summary["cpu_quota_cores"].as_f64().is_some(), "{summary}");
    let rows = summary["rows"].as_array().expect("rows");
    assert_eq!(
        rows.len(),
        6,
        "single, 2, 3 and 4 replicas, 3 safe, 3 RR-NP: {summary}"
    );
    assert_eq!(rows[0]["setup"], "single", "{summary}");
    assert_eq!(rows[4]["setup"]["active-safe"], 3, "{summary}");
    assert_eq!(rows[5]["setup"]["active-reads-off-primary"], 3, "{summary}");
    for (i, (row, replicas)) in rows.iter().zip([1usize, 2, 3, 4, 3, 3]).enumerate() {
        for key in [
            "ping_us",
            "set_us",
            "get_us",
            "update_rps",
            "read_rps",
            "read_ratio",
        ] {
            assert!(
                row[key].as_f64().is_some_and(|v| v > 0.0 && v.is_finite()),
                "{key} must be a positive number: {row}"
            );
        }
        assert_eq!(row["error_lines"], 0, "{row}");
        let reads: Vec<u64> = row["reads_per_member"]
            .as_array()
            .expect("reads_per_member")
            .iter()
            .map(|n| n.as_u64().expect("a count"))
            .collect();
        assert_eq!(reads.len(), replicas, "{row}");
        let idle = reads.iter().filter(|&&n| n == 0).count();
        if i == 5 {
            // RR-NP: the primary's redis-server runs none of the reads, the others all.
            assert_eq!(idle, 1, "{row}");
        } else {
            // Round robin: every replica ran some of the reads.
            assert_eq!(idle, 0, "{row}");
        }
        assert_eq!(
            row["throttled_share"].as_array().map(Vec::len),
            Some(replicas),
            "a quota cgroup per member: {row}"
        );
    }
    assert_eq!(rows[0]["read_ratio"], 1.0, "the baseline: {}", rows[0]);
    let comparisons = summary["comparisons"].as_array().expect("comparisons");
    assert_eq!(comparisons.len(), 2, "{summary}");
    for c in comparisons {
        assert_eq!(c["base"]["active"], 3, "{c}");
        for key in ["set_avg_ratio", "update_rps_ratio", "read_rps_ratio"] {
            assert!(
                c[key].as_f64().is_some_and(|v| v > 0.0 && v.is_finite()),
                "{key} must be a positive number: {c}"
            );
        }
    }
    let raw: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.0.join("active.json")).expect("active.json"),
    )
    .expect("active.json is JSON");
    assert_eq!(raw["samples"].as_array().map(Vec::len), Some(6));
}
