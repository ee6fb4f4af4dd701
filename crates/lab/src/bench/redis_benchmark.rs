//! Driving `redis-benchmark` and `redis-cli` (Debian package `redis-tools`) from a lab's
//! namespace, bounded in time, and reading redis-benchmark's `--csv` report.
//!
//! redis-benchmark is the load generator Redis users already trust, so the active bench uses it
//! rather than a home-made client for its figures.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::BenchError;

/// One line of redis-benchmark's `--csv` report. Times in milliseconds, as it prints them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CsvRow {
    pub test: String,
    pub rps: f64,
    pub avg_ms: f64,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// A finished redis-benchmark run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BenchmarkRun {
    pub rows: Vec<CsvRow>,
    /// Lines of its stderr that report an error reply (`Error from server`); redis-benchmark
    /// prints at most about one a second, so 0 means none and more means at least that many.
    pub error_lines: usize,
}

impl BenchmarkRun {
    /// The row of test `name` (redis-benchmark's upper-case test name, or the command line).
    pub fn row(&self, name: &str) -> Option<&CsvRow> {
        self.rows.iter().find(|r| r.test.eq_ignore_ascii_case(name))
    }
}

/// Reads redis-benchmark 7's `--csv` report: a header naming the columns, then one row per
/// test. A report without the columns the bench reads is refused.
pub fn parse_csv(text: &str) -> Result<Vec<CsvRow>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().ok_or("empty report")?;
    let columns: Vec<String> = split_csv(header);
    let at = |name: &str| {
        columns
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| format!("no column {name:?} in the header {header:?}"))
    };
    let (test, rps) = (at("test")?, at("rps")?);
    let (avg, min, p50) = (
        at("avg_latency_ms")?,
        at("min_latency_ms")?,
        at("p50_latency_ms")?,
    );
    let (p95, p99, max) = (
        at("p95_latency_ms")?,
        at("p99_latency_ms")?,
        at("max_latency_ms")?,
    );
    let mut rows = Vec::new();
    for line in lines {
        let fields = split_csv(line);
        let number = |i: usize| -> Result<f64, String> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| format!("column {} is not a number in {line:?}", columns[i]))
        };
        rows.push(CsvRow {
            test: fields
                .get(test)
                .cloned()
                .ok_or_else(|| format!("no test name in {line:?}"))?,
            rps: number(rps)?,
            avg_ms: number(avg)?,
            min_ms: number(min)?,
            p50_ms: number(p50)?,
            p95_ms: number(p95)?,
            p99_ms: number(p99)?,
            max_ms: number(max)?,
        });
    }
    if rows.is_empty() {
        return Err("a header and no result".into());
    }
    Ok(rows)
}

/// redis-benchmark quotes every field and never a comma inside one.
fn split_csv(line: &str) -> Vec<String> {
    line.split(',')
        .map(|f| f.trim().trim_matches('"').to_string())
        .collect()
}

/// Runs `redis-benchmark -h IP -p PORT -c CLIENTS -n REQUESTS --csv ARGS…` inside `namespace`;
/// killed, and an error, after `limit`.
pub fn run(
    namespace: &str,
    target: SocketAddr,
    clients: u32,
    requests: u32,
    args: &[&str],
    limit: Duration,
) -> Result<BenchmarkRun, BenchError> {
    let program = crate::system::require_program("redis-benchmark", "redis-tools")?;
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", namespace])
        .arg(&program)
        .args(["-h", &target.ip().to_string()])
        .args(["-p", &target.port().to_string()])
        .args(["-c", &clients.to_string(), "-n", &requests.to_string()])
        .arg("--csv")
        .args(args);
    let line = describe(&program, target, clients, requests, args);
    let (status, stdout, stderr) =
        output_within(command, None, limit).map_err(|reason| BenchError::Load {
            namespace: namespace.into(),
            reason: format!("{line}: {reason}"),
        })?;
    if !status.success() {
        return Err(BenchError::Load {
            namespace: namespace.into(),
            reason: format!(
                "{line} exited with {status}: {}{}",
                stdout.trim(),
                stderr.trim()
            ),
        });
    }
    let rows = parse_csv(&stdout).map_err(|reason| BenchError::Load {
        namespace: namespace.into(),
        reason: format!("{line}: {reason}\n{stdout}\n{stderr}"),
    })?;
    Ok(BenchmarkRun {
        rows,
        error_lines: stderr
            .lines()
            .filter(|l| l.contains("Error from server"))
            .count(),
    })
}

fn describe(program: &Path, target: SocketAddr, clients: u32, requests: u32, a: &[&str]) -> String {
    format!(
        "{} -h {} -p {} -c {clients} -n {requests} --csv {}",
        program.display(),
        target.ip(),
        target.port(),
        a.join(" ")
    )
}

/// Runs `redis-cli -h IP -p PORT` inside `namespace` with `input` as its commands (one a line;
/// one connection) and returns its output, one reply a line; killed, and an error, after
/// `limit`.
pub fn cli(
    namespace: &str,
    target: SocketAddr,
    input: &str,
    limit: Duration,
) -> Result<String, BenchError> {
    let program = crate::system::require_program("redis-cli", "redis-tools")?;
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", namespace])
        .arg(&program)
        .args(["-h", &target.ip().to_string()])
        .args(["-p", &target.port().to_string()]);
    let line = format!(
        "{} -h {} -p {}",
        program.display(),
        target.ip(),
        target.port()
    );
    let (status, stdout, stderr) =
        output_within(command, Some(input.as_bytes()), limit).map_err(|reason| {
            BenchError::Load {
                namespace: namespace.into(),
                reason: format!("{line}: {reason}"),
            }
        })?;
    if !status.success() {
        return Err(BenchError::Load {
            namespace: namespace.into(),
            reason: format!("{line} exited with {status}: {}", stderr.trim()),
        });
    }
    Ok(stdout)
}

/// Runs `command` to its end with `input` on its stdin, or kills it after `limit`.
fn output_within(
    mut command: Command,
    input: Option<&[u8]>,
    limit: Duration,
) -> Result<(std::process::ExitStatus, String, String), String> {
    command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|e| format!("starting: {e}"))?;
    let input = input.map(<[u8]>::to_vec);
    let stdin = child.stdin.take();
    // Fed and drained on threads: a child blocked on a full pipe would never end.
    let feeder = std::thread::spawn(move || {
        if let (Some(mut stdin), Some(input)) = (stdin, input) {
            let _ = stdin.write_all(&input);
        }
    });
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = feeder.join();
                let tail = err.join().unwrap_or_default();
                return Err(format!(
                    "still running after {limit:?}, killed; stderr: {}",
                    tail.trim()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting: {e}")),
        }
    };
    let _ = feeder.join();
    Ok((
        status,
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_redis_benchmark_7_csv() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                    \"PING_MBULK\",\"23809.52\",\"0.042\",\"0.000\",\"0.015\",\"0.023\",\"0.167\",\"9.255\"\n\
                    \"SORT_RO l LIMIT 0 10\",\"240.41\",\"165.367\",\"4.368\",\"165.759\",\"189.439\",\"237.823\",\"304.895\"\n";
        let rows = parse_csv(text).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].test, "PING_MBULK");
        assert_eq!(rows[0].rps, 23809.52);
        assert_eq!(rows[1].p99_ms, 237.823);
        let run = BenchmarkRun {
            rows,
            error_lines: 0,
        };
        assert!(run.row("sort_ro l limit 0 10").is_some());
        assert!(parse_csv("").is_err());
        assert!(parse_csv("\"test\",\"rps\"\n\"X\",\"1\"\n")
            .unwrap_err()
            .contains("avg_latency_ms"));
    }
}
