//! Driving `wrk` (the Debian package) from a lab's client namespace and reading its report.
//!
//! wrk is the load generator people already trust for HTTP throughput and latency, so the
//! overhead table uses it rather than a home-made client. Its text report is the only interface
//! it has; [`parse_report`] reads the lines this module asks for (`--latency` adds the
//! percentile block) and refuses a report that lacks any of them.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use super::BenchError;

/// One wrk run, as wrk reported it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WrkResult {
    pub requests: u64,
    pub seconds: f64,
    pub requests_per_second: f64,
    /// Bytes read per second, headers included (wrk's Transfer/sec, 1024-based units).
    pub bytes_per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// connect + read + write + timeout errors.
    pub socket_errors: u64,
    /// Replies whose status was not 2xx or 3xx.
    pub non_2xx: u64,
}

/// What to run: `threads` × `connections` against `url_path` for `duration`.
#[derive(Debug, Clone)]
pub struct WrkRun {
    pub target: SocketAddr,
    pub url_path: String,
    pub threads: u32,
    pub connections: u32,
    pub duration: Duration,
}

/// Runs wrk inside `namespace` and parses its report.
pub fn run(namespace: &str, run: &WrkRun) -> Result<WrkResult, BenchError> {
    let wrk = crate::system::require_program("wrk", "wrk")?;
    let url = format!("http://{}{}", run.target, run.url_path);
    // wrk takes whole seconds; the bench never asks for less than one.
    let seconds = run.duration.as_secs().max(1);
    let output = Command::new("ip")
        .args(["netns", "exec", namespace])
        .arg(&wrk)
        .args([
            format!("-t{}", run.threads.max(1)),
            format!("-c{}", run.connections.max(run.threads).max(1)),
            format!("-d{seconds}s"),
            "--timeout".into(),
            "5s".into(),
            "--latency".into(),
            url.clone(),
        ])
        .output()
        .map_err(|e| BenchError::Load {
            namespace: namespace.into(),
            reason: format!("starting wrk: {e}"),
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(BenchError::Load {
            namespace: namespace.into(),
            reason: format!(
                "wrk {url} exited with {}: {}{}",
                output.status,
                stdout.trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    parse_report(&stdout).map_err(|reason| BenchError::Load {
        namespace: namespace.into(),
        reason: format!("wrk {url}: {reason}\n{stdout}"),
    })
}

/// `62.00us`, `1.23ms`, `2.00s`, `1.50m` → microseconds.
fn parse_time_us(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    Some(value * scale)
}

/// `16.56MB`, `512.00B`, `1.02KB` → bytes (wrk's units are powers of 1024).
fn parse_bytes(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let power = match unit {
        "B" => 0,
        "KB" => 1,
        "MB" => 2,
        "GB" => 3,
        "TB" => 4,
        _ => return None,
    };
    Some(value * 1024f64.powi(power))
}

/// Reads wrk 4's `--latency` report. Every field the bench needs must be there.
pub fn parse_report(text: &str) -> Result<WrkResult, String> {
    let mut requests = None;
    let mut seconds = None;
    let mut rps = None;
    let mut bytes_per_second = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut socket_errors = 0;
    let mut non_2xx = 0;
    let mut in_distribution = false;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            match words.as_slice() {
                ["50%", value] => p50 = parse_time_us(value),
                ["99%", value] => p99 = parse_time_us(value),
                [percent, _] if percent.ends_with('%') => {}
                _ => in_distribution = false,
            }
            if in_distribution {
                continue;
            }
        }
        match words.as_slice() {
            [count, "requests", "in", time, ..] => {
                requests = count.parse().ok();
                seconds = parse_time_us(time.trim_end_matches(',')).map(|us| us / 1e6);
            }
            ["Requests/sec:", value] => rps = value.parse().ok(),
            ["Transfer/sec:", value] => bytes_per_second = parse_bytes(value),
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            ["Non-2xx", "or", "3xx", "responses:", value] => {
                non_2xx = value
                    .parse()
                    .map_err(|_| format!("unreadable non-2xx count {value:?}"))?;
            }
            _ => {}
        }
    }
    let missing = |what: &str| format!("the report has no {what}");
    Ok(WrkResult {
        requests: requests.ok_or_else(|| missing("`N requests in T` line"))?,
        seconds: seconds.ok_or_else(|| missing("run time"))?,
        requests_per_second: rps.ok_or_else(|| missing("Requests/sec"))?,
        bytes_per_second: bytes_per_second.ok_or_else(|| missing("Transfer/sec"))?,
        p50_us: p50.ok_or_else(|| missing("50% latency (was --latency given?)"))?,
        p99_us: p99.ok_or_else(|| missing("99% latency"))?,
        socket_errors,
        non_2xx,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAN: &str = "Running 2s test @ http://10.99.0.100:80/bytes/1024?seed=0
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    70.41us   25.13us   1.20ms   96.50%
    Req/Sec    13.90k   612.40    14.60k    85.00%
  Latency Distribution
     50%   66.00us
     75%   71.00us
     90%   80.00us
     99%  152.00us
  27661 requests in 2.00s, 33.12MB read
Requests/sec:  13830.12
Transfer/sec:     16.56MB
";

    #[test]
    fn reads_a_clean_report() {
        let r = parse_report(CLEAN).unwrap();
        assert_eq!(r.requests, 27661);
        assert_eq!(r.seconds, 2.0);
        assert_eq!(r.requests_per_second, 13830.12);
        assert!((r.bytes_per_second - 16.56 * 1024.0 * 1024.0).abs() < 1.0);
        assert_eq!(r.p50_us, 66.0);
        assert_eq!(r.p99_us, 152.0);
        assert_eq!((r.socket_errors, r.non_2xx), (0, 0));
    }

    #[test]
    fn reads_errors_and_other_units() {
        let text = CLEAN
            .replace("99%  152.00us", "99%    1.50ms")
            .replace("50%   66.00us", "50%    2.00s")
            .replace(
                "Requests/sec:",
                "  Socket errors: connect 1, read 2, write 0, timeout 4\n  Non-2xx or 3xx responses: 7\nRequests/sec:",
            )
            .replace("16.56MB", "512.00B");
        let r = parse_report(&text).unwrap();
        assert_eq!(r.p99_us, 1500.0);
        assert_eq!(r.p50_us, 2_000_000.0);
        assert_eq!(r.socket_errors, 7);
        assert_eq!(r.non_2xx, 7);
        assert_eq!(r.bytes_per_second, 512.0);
    }

    #[test]
    fn refuses_a_report_without_latency_or_rate() {
        let no_latency: String = CLEAN
            .lines()
            .filter(|l| !l.contains('%') || l.contains("Stdev"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(parse_report(&no_latency).unwrap_err().contains("50%"));
        let no_rate = CLEAN.replace("Requests/sec:  13830.12", "");
        assert!(parse_report(&no_rate).unwrap_err().contains("Requests/sec"));
        assert!(parse_report("").is_err());
        assert!(parse_report(&CLEAN.replace("66.00us", "66.00parsecs")).is_err());
    }
}
