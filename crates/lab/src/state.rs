//! A lab's state directory, `/run/steadfast-lab/NAME/`, and its `state.json`: what `up` built
//! and started, and what has been crashed since, so that later commands (run by other
//! processes) can act on it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::LabError;
use crate::options::{BackendKind, CrashKind, FrontProxy, Mode};
use crate::topology::{Host, LabName};

/// Where every lab keeps its state directory.
pub const STATE_ROOT: &str = "/run/steadfast-lab";

pub fn state_dir(lab: &LabName) -> PathBuf {
    Path::new(STATE_ROOT).join(lab.as_str())
}

/// The paths inside a lab's state directory.
#[derive(Clone, Debug)]
pub struct LabPaths {
    pub dir: PathBuf,
}

impl LabPaths {
    pub fn new(lab: &LabName) -> Self {
        LabPaths {
            dir: state_dir(lab),
        }
    }
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    /// The group's authentication key (64 hex digits, no newline), shared by every voter.
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("key")
    }
    /// The builtin backend's data tier, shared by every node.
    pub fn data_tier(&self) -> PathBuf {
        self.dir.join("commits.log")
    }
    /// The nginx/apache2 docroot, shared by every node.
    pub fn docroot(&self) -> PathBuf {
        self.dir.join("www")
    }
    /// `n1.toml`, `w.toml`.
    pub fn config(&self, host: Host) -> PathBuf {
        self.dir.join(format!("{}.toml", host.short_name()))
    }
    /// The daemon's control socket, `n1.sock`.
    pub fn control_socket(&self, host: Host) -> PathBuf {
        self.dir.join(format!("{}.sock", host.short_name()))
    }
    pub fn daemon_log(&self, host: Host) -> PathBuf {
        self.dir.join(format!("{}.daemon.log", host.short_name()))
    }
    pub fn backend_log(&self, host: Host) -> PathBuf {
        self.dir.join(format!("{}.backend.log", host.short_name()))
    }
    /// The output of a member's front proxy (HAProxy's start-up messages and alerts; it logs
    /// no requests).
    pub fn proxy_log(&self, host: Host) -> PathBuf {
        self.dir.join(format!("{}.proxy.log", host.short_name()))
    }
    /// A node's web server files (config, pid file, temporary directories).
    pub fn web_dir(&self, host: Host) -> PathBuf {
        self.dir.join(format!("{}.web", host.short_name()))
    }
    /// A node's redis-server files: its configuration, and its working directory (nothing is
    /// saved there: the lab's redis-server persists nothing).
    pub fn redis_dir(&self, host: Host) -> PathBuf {
        self.dir.join(format!("{}.redis", host.short_name()))
    }
    /// The bridge filter that implements partitions.
    pub fn partition_rules(&self) -> PathBuf {
        self.dir.join("partitions.nft")
    }
}

/// The options `up` was given, kept for `heal` (which restarts processes the same way).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordedOptions {
    pub nodes: u8,
    pub witness: bool,
    pub mode: Mode,
    pub backend: BackendKind,
    pub heartbeat_ms: Option<u32>,
    pub steadfast_exe: PathBuf,
    pub start_daemons: bool,
    /// The proxy the lab runs in front of each member's backend, if any.
    #[serde(default)]
    pub front_proxy: Option<FrontProxy>,
    /// Each member's CPU limit, if any; its cgroups are at [`LabState::cgroup_dir`].
    #[serde(default)]
    pub cpu_quota: Option<crate::cpu_quota::CpuQuota>,
    /// Whether the members have a private network (link relay); a host crash cuts it too.
    #[serde(default)]
    pub relay: bool,
}

/// When and how a host was crashed.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CrashRecord {
    pub how: CrashKind,
    /// CLOCK_MONOTONIC at the crash, in nanoseconds (comparable across processes).
    pub at_monotonic_ns: u64,
    /// Wall-clock time at the crash, in nanoseconds since the Unix epoch.
    pub at_wall_unix_ns: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostState {
    pub host: Host,
    pub namespace: String,
    pub address: String,
    pub daemon_pid: Option<i32>,
    pub backend_pid: Option<i32>,
    /// A member's front proxy (HAProxy), when the lab runs one; `down` kills it with every
    /// other process of the namespace.
    #[serde(default)]
    pub proxy_pid: Option<i32>,
    pub crash: Option<CrashRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LabState {
    pub name: String,
    pub created_unix_ms: u64,
    pub options: RecordedOptions,
    /// By short name (`n1`, `w`, `client`).
    pub hosts: BTreeMap<String, HostState>,
    /// Pairs of short names between which the bridge drops every frame.
    #[serde(default)]
    pub partitions: Vec<(String, String)>,
    /// Ordered pairs (from, to): the bridge drops frames from the first to the second only.
    #[serde(default)]
    pub one_way_cuts: Vec<(String, String)>,
    /// The lab's cgroup directory when its members have a CPU quota: `heal` starts a member's
    /// processes in `DIR/nI` again.
    #[serde(default)]
    pub cgroup_dir: Option<PathBuf>,
}

impl LabState {
    pub fn load(lab: &LabName) -> Result<Self, LabError> {
        let path = LabPaths::new(lab).state_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LabError::NotFound {
                    name: lab.to_string(),
                    path,
                })
            }
            Err(e) => return Err(LabError::io("reading the lab state", path, e)),
        };
        serde_json::from_str(&text).map_err(|source| LabError::State { path, source })
    }

    /// Writes the state through a temporary file and a rename, so a reader never sees half.
    pub fn save(&self, lab: &LabName) -> Result<(), LabError> {
        let paths = LabPaths::new(lab);
        let path = paths.state_file();
        let temporary = paths.dir.join("state.json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|source| LabError::State {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&temporary, text + "\n")
            .map_err(|e| LabError::io("writing the lab state", &temporary, e))?;
        std::fs::rename(&temporary, &path)
            .map_err(|e| LabError::io("replacing the lab state", &path, e))
    }

    /// Hosts in order: members, witness, client.
    pub fn hosts_in_order(&self) -> Vec<&HostState> {
        let mut hosts: Vec<&HostState> = self.hosts.values().collect();
        hosts.sort_by_key(|h| h.host);
        hosts
    }

    pub fn host(&self, host: Host) -> Option<&HostState> {
        self.hosts.get(&host.short_name())
    }

    pub fn host_mut(&mut self, host: Host) -> Option<&mut HostState> {
        self.hosts.get_mut(&host.short_name())
    }

    pub fn members(&self) -> Vec<Host> {
        self.hosts_in_order()
            .into_iter()
            .map(|h| h.host)
            .filter(|h| h.is_member())
            .collect()
    }
}
