//! keepalived as the reference system: one VRRP instance per lab node, run inside the node's
//! namespace with `ip netns exec`, so it moves the same VIP on the same bridge that Steadfast
//! uses, in front of the same backends.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use super::BenchError;
use crate::system::{find_program, log_tail, pids_in_namespace};
use crate::topology::{HOST_INTERFACE, PREFIX_LEN, VIP};

/// The VRRP router id of the lab's VIP (any 1..=255; the lab bridge carries no other VRRP).
const VIRTUAL_ROUTER_ID: u8 = 77;
/// How long a started keepalived has to prove it did not exit on its configuration.
const START_CHECK: Duration = Duration::from_millis(150);
const LOG_LINES: usize = 30;

/// Which keepalived settings a row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepalivedSetting {
    /// VRRPv2, `advert_int 1`: what a keepalived.conf without timing lines gets.
    Defaults,
    /// VRRPv3 with `advert_int 0.01`, the shortest interval keepalived accepts (VRRPv3 counts
    /// in centiseconds).
    Fastest,
}

impl KeepalivedSetting {
    pub fn describe(self) -> &'static str {
        match self {
            KeepalivedSetting::Defaults => "defaults (VRRPv2, advert_int 1 s)",
            KeepalivedSetting::Fastest => "fastest (VRRPv3, advert_int 10 ms)",
        }
    }

    /// One advertisement interval.
    pub fn advert_interval(self) -> Duration {
        match self {
            KeepalivedSetting::Defaults => Duration::from_secs(1),
            KeepalivedSetting::Fastest => Duration::from_millis(10),
        }
    }

    /// A bound on a takeover or a preemption: three intervals plus skew (under one interval),
    /// plus room for a busy machine. keepalived's slow takeovers are what the bench measures
    /// (one took over 3 s at the fastest setting on a loaded CI run): the bound only ends a
    /// campaign that would never finish.
    pub fn settle_bound(self) -> Duration {
        self.advert_interval() * 4 + Duration::from_secs(10)
    }
}

/// The keepalived program, if installed.
pub fn installed() -> Option<PathBuf> {
    find_program("keepalived")
}

/// The VRRP priority of member `index` (1-based): n1 highest, each next one lower.
fn priority(index: u8) -> u8 {
    200u8
        .saturating_sub(index.saturating_sub(1).saturating_mul(20))
        .max(1)
}

/// The keepalived.conf of member `index` of lab `lab`.
pub fn config_text(lab: &str, index: u8, setting: KeepalivedSetting) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# Written by steadfast-lab bench failover for lab {lab}, node n{index}."
    );
    let _ = writeln!(text, "global_defs {{");
    let _ = writeln!(text, "    router_id {lab}-n{index}");
    if setting == KeepalivedSetting::Fastest {
        let _ = writeln!(text, "    vrrp_version 3");
    }
    let _ = writeln!(text, "}}");
    let _ = writeln!(text, "vrrp_instance steadfast_bench {{");
    // Every node starts as backup; the highest priority wins the first election.
    let _ = writeln!(text, "    state BACKUP");
    let _ = writeln!(text, "    interface {HOST_INTERFACE}");
    let _ = writeln!(text, "    virtual_router_id {VIRTUAL_ROUTER_ID}");
    let _ = writeln!(text, "    priority {}", priority(index));
    match setting {
        KeepalivedSetting::Defaults => {}
        KeepalivedSetting::Fastest => {
            let _ = writeln!(text, "    advert_int 0.01");
        }
    }
    let _ = writeln!(text, "    virtual_ipaddress {{");
    let _ = writeln!(text, "        {VIP}/{PREFIX_LEN} dev {HOST_INTERFACE}");
    let _ = writeln!(text, "    }}");
    let _ = writeln!(text, "}}");
    text
}

struct Instance {
    namespace: String,
    config: PathBuf,
    pid_file: PathBuf,
    vrrp_pid_file: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// keepalived on every member of a lab. Dropping it kills every keepalived process in those
/// namespaces, also when the benchmark fails.
pub struct KeepalivedGroup {
    program: PathBuf,
    instances: BTreeMap<String, Instance>,
}

impl KeepalivedGroup {
    /// Writes a configuration per member (`n1` …, in `members` order with namespaces) under
    /// `dir` and starts keepalived in each member's namespace.
    pub fn start(
        lab: &str,
        members: &[(String, String)],
        dir: &Path,
        setting: KeepalivedSetting,
    ) -> Result<KeepalivedGroup, BenchError> {
        let program = installed().ok_or(BenchError::KeepalivedMissing)?;
        std::fs::create_dir_all(dir)
            .map_err(|e| BenchError::io("creating the keepalived directory", dir, e))?;
        let mut group = KeepalivedGroup {
            program,
            instances: BTreeMap::new(),
        };
        for (position, (host, namespace)) in members.iter().enumerate() {
            let index = u8::try_from(position + 1).unwrap_or(u8::MAX);
            let config = dir.join(format!("keepalived-{host}.conf"));
            std::fs::write(&config, config_text(lab, index, setting))
                .map_err(|e| BenchError::io("writing the keepalived configuration", &config, e))?;
            group.instances.insert(
                host.clone(),
                Instance {
                    namespace: namespace.clone(),
                    config,
                    pid_file: dir.join(format!("keepalived-{host}.pid")),
                    vrrp_pid_file: dir.join(format!("keepalived-{host}-vrrp.pid")),
                    log: dir.join(format!("keepalived-{host}.log")),
                    child: None,
                },
            );
        }
        for host in members.iter().map(|(h, _)| h) {
            group.start_node(host)?;
        }
        Ok(group)
    }

    /// (Re)starts keepalived on `host`, first killing whatever keepalived is left there.
    pub fn start_node(&mut self, host: &str) -> Result<(), BenchError> {
        self.kill_node(host);
        let program = self.program.clone();
        let instance = self.instances.get_mut(host).ok_or_else(|| {
            BenchError::Options(format!("keepalived: no instance for host {host}"))
        })?;
        // Stale pid files make keepalived believe it already runs.
        let _ = std::fs::remove_file(&instance.pid_file);
        let _ = std::fs::remove_file(&instance.vrrp_pid_file);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&instance.log)
            .map_err(|e| BenchError::io("opening the keepalived log", &instance.log, e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| BenchError::io("opening the keepalived log", &instance.log, e))?;
        let failure = |instance: &Instance, reason: String| BenchError::Keepalived {
            namespace: instance.namespace.clone(),
            reason,
            log: instance.log.clone(),
            tail: log_tail(&instance.log, LOG_LINES),
        };
        let ip = find_program("ip").ok_or_else(|| {
            failure(
                instance,
                "`ip` (Debian package iproute2) is not installed".into(),
            )
        })?;
        let mut command = Command::new(ip);
        command
            .args(["netns", "exec", &instance.namespace])
            .arg(&program)
            // -n: stay in the foreground, so the child we hold is keepalived's parent process;
            // -P: VRRP only; -l -D: detailed log on the console (our log file); -G: no syslog.
            .args(["-n", "-P", "-l", "-D", "-G", "-f"])
            .arg(&instance.config)
            .arg("-p")
            .arg(&instance.pid_file)
            .arg("-r")
            .arg(&instance.vrrp_pid_file)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let mut child = command.spawn().map_err(|e| {
            failure(
                instance,
                format!("could not start {}: {e}", program.display()),
            )
        })?;
        let checked_until = Instant::now() + START_CHECK;
        while Instant::now() < checked_until {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(failure(instance, format!("exited at once ({status})")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        instance.child = Some(child);
        Ok(())
    }

    /// Kills every keepalived process in `host`'s namespace and reaps the one we started.
    pub fn kill_node(&mut self, host: &str) {
        let Some(instance) = self.instances.get_mut(host) else {
            return;
        };
        kill_keepalived_in(&instance.namespace);
        if let Some(mut child) = instance.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The hosts, for callers that need to walk them.
    pub fn hosts(&self) -> Vec<String> {
        self.instances.keys().cloned().collect()
    }
}

impl Drop for KeepalivedGroup {
    fn drop(&mut self) {
        for host in self.hosts() {
            self.kill_node(&host);
        }
    }
}

/// SIGKILLs the processes named keepalived (the parent and its VRRP child) that live in
/// `namespace`, a namespace of our own lab, and waits briefly for them to go.
fn kill_keepalived_in(namespace: &str) {
    let is_keepalived = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|comm| comm.trim() == "keepalived")
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids: Vec<i32> = pids_in_namespace(namespace)
            .into_iter()
            .filter(|&pid| is_keepalived(pid))
            .collect();
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_descend_from_n1() {
        assert!(priority(1) > priority(2));
        assert!(priority(2) > priority(3));
        assert!(priority(9) >= 1);
    }

    #[test]
    fn fastest_config_uses_vrrp3_and_10ms_adverts() {
        let text = config_text("lab", 2, KeepalivedSetting::Fastest);
        assert!(text.contains("vrrp_version 3"), "{text}");
        assert!(text.contains("advert_int 0.01"), "{text}");
        assert!(text.contains("priority 180"), "{text}");
        assert!(text.contains("10.77.0.100/24 dev eth0"), "{text}");
        assert!(text.contains("interface eth0"), "{text}");
    }

    #[test]
    fn default_config_has_no_timing_lines() {
        let text = config_text("lab", 1, KeepalivedSetting::Defaults);
        assert!(!text.contains("advert_int"), "{text}");
        assert!(!text.contains("vrrp_version"), "{text}");
        assert!(text.contains("priority 200"), "{text}");
    }
}
