//! Notify hooks: a configured program run on every role change, as keepalived users expect,
//! and on an alarm of the data plane (an active replica found diverged). `STEADFAST_EVENT`
//! says which: `role-change` or `replica-diverged`.
//!
//! A hook never blocks failover: it is spawned and forgotten by the election loop; a separate
//! task waits for it, kills it after its timeout and counts failures.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;

#[derive(Default, Debug)]
pub struct HookCounters {
    pub run: AtomicU64,
    pub failed: AtomicU64,
}

#[derive(Clone, Debug)]
pub struct Hook {
    pub command: Vec<String>,
    pub timeout: Duration,
}

/// What the hook learns through its environment.
pub struct RoleChange<'a> {
    /// `role-change`, or the alarm that ran the hook (`replica-diverged`).
    pub event: &'a str,
    pub node_id: u16,
    pub group: &'a str,
    pub role: &'a str,
    pub epoch: u64,
    pub reason: String,
}

/// Starts the hook and returns at once; the handle ends when the hook has ended (or was
/// killed after its timeout).
pub fn spawn(
    hook: &Hook,
    change: RoleChange<'_>,
    counters: Arc<HookCounters>,
) -> Option<tokio::task::JoinHandle<()>> {
    let (program, args) = hook.command.split_first()?;
    counters.run.fetch_add(1, Ordering::Relaxed);
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("STEADFAST_EVENT", change.event)
        .env("STEADFAST_ROLE", change.role)
        .env("STEADFAST_EPOCH", change.epoch.to_string())
        .env("STEADFAST_REASON", &change.reason)
        .env("STEADFAST_NODE_ID", change.node_id.to_string())
        .env("STEADFAST_GROUP", change.group)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let program = program.clone();
    let timeout = hook.timeout;
    match cmd.spawn() {
        Err(e) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("notify hook {program}: cannot start: {e}");
            None
        }
        Ok(mut child) => Some(tokio::spawn(async move {
            match tokio::time::timeout(timeout, child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("notify hook {program} exited with {status}");
                }
                Ok(Err(e)) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("notify hook {program}: wait failed: {e}");
                }
                Err(_) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("notify hook {program} ran over {timeout:?}: killed");
                    let _ = child.kill().await;
                }
            }
        })),
    }
}
