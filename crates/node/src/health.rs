//! Service health checks (HTTP GET with expected status, TCP connect, exec) with rise/fall
//! counts, as keepalived and HAProxy users expect. Each check runs in its own task; the node is
//! healthy when every check is.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What a check probes (the configuration's own type: one definition of a check).
pub use steadfast_core::config::HealthCheck as Check;
pub use steadfast_core::config::HealthCheckKind as Probe;

/// One check's verdict changed: (index of the check, healthy, why).
pub type Verdict = (usize, bool, String);

/// Runs one probe once; `Err` says why it failed.
pub async fn probe_once(probe: &Probe, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, run_probe(probe)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn run_probe(probe: &Probe) -> Result<(), String> {
    match probe {
        Probe::Tcp { target } => TcpStream::connect(target)
            .await
            .map(|_| ())
            .map_err(|e| format!("tcp connect {target}: {e}")),
        Probe::Http {
            target,
            path,
            expect_status,
        } => {
            let mut stream = TcpStream::connect(target)
                .await
                .map_err(|e| format!("http {target}{path}: connect: {e}"))?;
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| format!("http {target}{path}: send: {e}"))?;
            let mut head = Vec::with_capacity(512);
            let mut buf = [0u8; 512];
            loop {
                let n = stream
                    .read(&mut buf)
                    .await
                    .map_err(|e| format!("http {target}{path}: read: {e}"))?;
                if n == 0 {
                    return Err(format!("http {target}{path}: closed before a status line"));
                }
                head.extend_from_slice(&buf[..n]);
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut response = httparse::Response::new(&mut headers);
                match response.parse(&head) {
                    Ok(_) if response.code.is_some() => {
                        let code = response.code.unwrap_or(0);
                        return if code == *expect_status {
                            Ok(())
                        } else {
                            Err(format!(
                                "http {target}{path}: status {code}, expected {expect_status}"
                            ))
                        };
                    }
                    Ok(_) if head.len() < 8192 => continue,
                    Ok(_) => return Err(format!("http {target}{path}: status line too long")),
                    Err(e) => return Err(format!("http {target}{path}: bad response: {e}")),
                }
            }
        }
        Probe::Exec { command } => {
            let (program, args) = command
                .split_first()
                .ok_or_else(|| "exec check with an empty command".to_string())?;
            let status = tokio::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map_err(|e| format!("exec {program}: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("exec {program}: {status}"))
            }
        }
    }
}

/// Rise/fall counting for one check. Starts unhealthy: a node proves health before it serves.
#[derive(Clone, Debug, Default)]
pub struct RiseFall {
    healthy: bool,
    passes: u32,
    failures: u32,
}

impl RiseFall {
    /// Records one probe result; returns the new verdict if it changed.
    pub fn record(&mut self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        if passed {
            self.passes += 1;
            self.failures = 0;
            if !self.healthy && self.passes >= rise {
                self.healthy = true;
                return Some(true);
            }
        } else {
            self.failures += 1;
            self.passes = 0;
            if self.healthy && self.failures >= fall {
                self.healthy = false;
                return Some(false);
            }
        }
        None
    }
}

/// Starts one task per check, sending verdict changes to `tx`. The tasks end when `tx` closes.
pub fn spawn_checks(
    checks: &[Check],
    tx: mpsc::Sender<Verdict>,
) -> Vec<tokio::task::JoinHandle<()>> {
    checks
        .iter()
        .cloned()
        .enumerate()
        .map(|(index, check)| {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut state = RiseFall::default();
                let mut ticker = tokio::time::interval(check.interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    let result = probe_once(&check.kind, check.timeout).await;
                    let why = match &result {
                        Ok(()) => "passing".to_string(),
                        Err(e) => e.clone(),
                    };
                    if let Some(healthy) = state.record(result.is_ok(), check.rise, check.fall) {
                        if tx.send((index, healthy, why)).await.is_err() {
                            return;
                        }
                    }
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall_need_consecutive_results() {
        let mut s = RiseFall::default();
        assert_eq!(s.record(true, 2, 3), None);
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(s.record(true, 2, 3), None);
        assert_eq!(s.record(true, 2, 3), Some(true));
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(s.record(true, 2, 3), None);
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(s.record(false, 2, 3), Some(false));
    }

    #[tokio::test]
    async fn probes_against_real_sockets() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        });
        let t = Duration::from_secs(2);
        assert!(probe_once(&Probe::Tcp { target: addr }, t).await.is_ok());
        let http = |status| Probe::Http {
            target: addr,
            path: "/health".into(),
            expect_status: status,
        };
        assert!(probe_once(&http(503), t).await.is_ok());
        let err = probe_once(&http(200), t).await.unwrap_err();
        assert!(err.contains("status 503, expected 200"), "{err}");
        let exec = |c: &str| Probe::Exec {
            command: vec![c.to_string()],
        };
        assert!(probe_once(&exec("/bin/true"), t).await.is_ok());
        assert!(probe_once(&exec("/bin/false"), t).await.is_err());
        assert!(probe_once(&exec("/nonexistent/check"), t).await.is_err());
    }
}
