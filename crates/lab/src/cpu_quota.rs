//! A CPU quota per lab node: one cgroup per member holding its daemon and its backend, so that
//! the replicas of an active-mode lab on one small machine behave like separate, slower hosts
//! (each can use at most its quota, whatever the others do).
//!
//! cgroup v2 is used where its `cpu` controller is available (`cpu.max`). Where the machine
//! mounts a hybrid hierarchy whose `cpu` controller is bound to cgroup v1 (a controller lives in
//! one hierarchy only, so v2 cannot enable it), the v1 `cpu` hierarchy's CFS bandwidth
//! (`cpu.cfs_quota_us` / `cpu.cfs_period_us`) is used instead: the same kernel mechanism.
//!
//! Layout: `ROOT/steadfast-lab-LAB/nI`. Lab names are unique on a machine (their namespaces
//! are), so are these. Processes are placed in their cgroup between fork and exec (see
//! [`crate::system::spawn_in_namespace_in`]), so nothing they start runs outside it.

use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The directory name prefix of every lab's cgroup.
const PREFIX: &str = "steadfast-lab-";
/// The CFS period: 100 ms, the kernel's default, so a throttled node waits at most that long.
const PERIOD_US: u64 = 100_000;
/// The realtime budget of each member's cgroup (cgroup v1 only), per second of
/// `cpu.rt_period_us`: a v1 cgroup starts with none, so the daemon's SCHED_FIFO heartbeat
/// thread would be refused its priority and its heartbeats would lag behind the quota's
/// throttling (a false failover under load, seen in `bench active`). 50 ms a second is far
/// above what the heartbeat thread uses, and ten members stay inside the root's 950 ms.
const RT_BUDGET_US: u64 = 50_000;
/// How long `remove` waits for the last processes of a killed lab to leave its cgroups.
const REMOVE_WAIT: Duration = Duration::from_secs(3);

/// A CPU quota in thousandths of a core (`--cpu-quota 0.5` is 500).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuQuota {
    pub millicores: u32,
}

impl CpuQuota {
    /// The CFS quota per [`PERIOD_US`]. The kernel refuses less than 1 ms.
    fn quota_us(self) -> u64 {
        (u64::from(self.millicores) * PERIOD_US / 1000).max(1000)
    }
}

impl fmt::Display for CpuQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", f64::from(self.millicores) / 1000.0)
    }
}

impl FromStr for CpuQuota {
    type Err = CpuQuotaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || CpuQuotaError::Invalid { given: s.into() };
        let cores: f64 = s.trim().parse().map_err(|_| invalid())?;
        if !(0.01..=64.0).contains(&cores) {
            return Err(invalid());
        }
        Ok(CpuQuota {
            millicores: (cores * 1000.0).round() as u32,
        })
    }
}

/// Why a lab's CPU quota could not be set up or removed.
#[derive(Debug, thiserror::Error)]
pub enum CpuQuotaError {
    #[error("invalid CPU quota {given:?}: expected cores as a number from 0.01 to 64 (0.5 is half a core)")]
    Invalid { given: String },

    #[error("no cgroup hierarchy offers the cpu controller: {found}; a per-node CPU quota needs cgroup v2 with cpu in cgroup.controllers, or the cgroup v1 cpu hierarchy")]
    NoCpuController { found: String },

    #[error("{what} {path}: {source}")]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cgroup {path} still holds processes {pids:?} after {waited:?}: it was not removed")]
    Busy {
        path: PathBuf,
        pids: Vec<i32>,
        waited: Duration,
    },
}

fn io(what: &str, path: &Path, source: std::io::Error) -> CpuQuotaError {
    CpuQuotaError::Io {
        what: what.into(),
        path: path.into(),
        source,
    }
}

/// A mounted hierarchy that can limit CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v2 at this mount point, with `cpu` among its controllers.
    V2(PathBuf),
    /// The cgroup v1 hierarchy the `cpu` controller is mounted on.
    V1(PathBuf),
}

impl Hierarchy {
    fn root(&self) -> &Path {
        match self {
            Hierarchy::V2(root) | Hierarchy::V1(root) => root,
        }
    }

    /// `ROOT/steadfast-lab-LAB`.
    pub fn lab_dir(&self, lab: &str) -> PathBuf {
        self.root().join(format!("{PREFIX}{lab}"))
    }
}

impl fmt::Display for Hierarchy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hierarchy::V2(root) => write!(f, "cgroup v2 at {} (cpu.max)", root.display()),
            Hierarchy::V1(root) => write!(
                f,
                "cgroup v1 cpu at {} (cpu.cfs_quota_us; cgroup v2 has no cpu controller here)",
                root.display()
            ),
        }
    }
}

/// Every cgroup hierarchy mounted, from `/proc/self/mounts`: (type, mount point, options).
fn cgroup_mounts() -> Result<Vec<(String, PathBuf, String)>, CpuQuotaError> {
    let path = Path::new("/proc/self/mounts");
    let text = std::fs::read_to_string(path).map_err(|e| io("reading", path, e))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [_, mount, kind @ ("cgroup" | "cgroup2"), options, ..] => {
                    Some((kind.to_string(), PathBuf::from(mount), options.to_string()))
                }
                _ => None,
            }
        })
        .collect())
}

/// The hierarchy the lab limits CPU with: cgroup v2 when its cpu controller is available,
/// otherwise the v1 cpu hierarchy; an error saying what was found when neither is.
pub fn detect() -> Result<Hierarchy, CpuQuotaError> {
    let mounts = cgroup_mounts()?;
    let mut found = Vec::new();
    for (kind, mount, _) in mounts.iter().filter(|(kind, ..)| kind == "cgroup2") {
        let controllers =
            std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
        if controllers.split_whitespace().any(|c| c == "cpu") {
            return Ok(Hierarchy::V2(mount.clone()));
        }
        found.push(format!(
            "{kind} at {} with controllers [{}]",
            mount.display(),
            controllers.trim()
        ));
    }
    for (kind, mount, options) in mounts.iter().filter(|(kind, ..)| kind == "cgroup") {
        if options.split(',').any(|o| o == "cpu") {
            return Ok(Hierarchy::V1(mount.clone()));
        }
        found.push(format!("{kind} at {} ({options})", mount.display()));
    }
    if found.is_empty() {
        found.push("no cgroup filesystem mounted".into());
    }
    Err(CpuQuotaError::NoCpuController {
        found: found.join("; "),
    })
}

fn write(path: &Path, value: &str) -> Result<(), CpuQuotaError> {
    std::fs::write(path, value).map_err(|e| io(&format!("writing {value:?} to"), path, e))
}

/// Lets the cgroups under `dir` use the cpu controller (cgroup v2 only; v1 has it everywhere).
fn enable_cpu_below(dir: &Path) -> Result<(), CpuQuotaError> {
    let control = dir.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&control).map_err(|e| io("reading", &control, e))?;
    if enabled.split_whitespace().any(|c| c == "cpu") {
        return Ok(());
    }
    write(&control, "+cpu")
}

/// Creates `steadfast-lab-LAB/NODE` for each node, each limited to `quota`; returns the lab's
/// cgroup directory. A directory left by a lab that was killed before its `down` is removed
/// first (it can hold no process: its namespaces are gone with it, or `up` refuses earlier).
pub fn create(
    hierarchy: &Hierarchy,
    lab: &str,
    nodes: &[String],
    quota: CpuQuota,
) -> Result<PathBuf, CpuQuotaError> {
    let dir = hierarchy.lab_dir(lab);
    remove_dir(&dir)?;
    if let Hierarchy::V2(root) = hierarchy {
        enable_cpu_below(root)?;
    }
    std::fs::create_dir(&dir).map_err(|e| io("creating the lab's cgroup", &dir, e))?;
    if let Hierarchy::V2(_) = hierarchy {
        enable_cpu_below(&dir)?;
    }
    // Kernels built without RT group scheduling have no such file: realtime is then not
    // limited per cgroup at all, and needs nothing here.
    let rt_budget = |dir: &Path, us: u64| -> Result<(), CpuQuotaError> {
        let file = dir.join("cpu.rt_runtime_us");
        if file.exists() {
            write(&file, &us.to_string())?;
        }
        Ok(())
    };
    if let Hierarchy::V1(_) = hierarchy {
        rt_budget(&dir, RT_BUDGET_US * nodes.len() as u64)?;
    }
    for node in nodes {
        let node_dir = dir.join(node);
        std::fs::create_dir(&node_dir)
            .map_err(|e| io("creating the node's cgroup", &node_dir, e))?;
        match hierarchy {
            Hierarchy::V2(_) => write(
                &node_dir.join("cpu.max"),
                &format!("{} {PERIOD_US}", quota.quota_us()),
            )?,
            Hierarchy::V1(_) => {
                write(&node_dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                write(
                    &node_dir.join("cpu.cfs_quota_us"),
                    &quota.quota_us().to_string(),
                )?;
                rt_budget(&node_dir, RT_BUDGET_US)?;
            }
        }
    }
    Ok(dir)
}

/// The file a process writes `0` to, to enter node `node`'s cgroup of the lab at `lab_dir`.
pub fn procs_file(lab_dir: &Path, node: &str) -> PathBuf {
    lab_dir.join(node).join("cgroup.procs")
}

/// The pids a cgroup holds now.
pub fn pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// (CFS periods elapsed, periods in which the quota throttled the cgroup), from its
/// `cpu.stat` (the same keys in cgroup v1 and v2).
pub fn throttling(dir: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    let key = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    Some((key("nr_periods ")?, key("nr_throttled ")?))
}

/// Removes the lab's cgroups from every hierarchy that may hold them. Its processes must be
/// gone already (`down` kills them first); the last ones may still be exiting, so an occupied
/// cgroup is retried for a moment. A lab without cgroups is not an error.
pub fn remove(lab: &str) -> Result<bool, CpuQuotaError> {
    let mut removed = false;
    for (kind, mount, options) in cgroup_mounts()? {
        if kind == "cgroup" && !options.split(',').any(|o| o == "cpu") {
            continue;
        }
        let dir = mount.join(format!("{PREFIX}{lab}"));
        if dir.is_dir() {
            remove_dir(&dir)?;
            removed = true;
        }
    }
    Ok(removed)
}

/// The lab names that have a cgroup directory in any hierarchy (for `down --all`).
pub fn labs_with_cgroups() -> Vec<String> {
    let mut labs = Vec::new();
    for (_, mount, _) in cgroup_mounts().unwrap_or_default() {
        let Ok(entries) = std::fs::read_dir(&mount) else {
            continue;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            if let Some(lab) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(PREFIX))
            {
                labs.push(lab.to_string());
            }
        }
    }
    labs.sort();
    labs.dedup();
    labs
}

/// Removes a lab's cgroup directory: its node cgroups first (cgroupfs removes only empty
/// directories; their control files go with them).
fn remove_dir(dir: &Path) -> Result<(), CpuQuotaError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("listing the lab's cgroup", dir, e)),
    };
    for entry in entries.filter_map(|e| e.ok()) {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            rmdir_waiting(&entry.path())?;
        }
    }
    rmdir_waiting(dir)
}

fn rmdir_waiting(dir: &Path) -> Result<(), CpuQuotaError> {
    let start = Instant::now();
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if start.elapsed() >= REMOVE_WAIT {
                    return Err(CpuQuotaError::Busy {
                        path: dir.into(),
                        pids: pids(dir),
                        waited: REMOVE_WAIT,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(io("removing the cgroup", dir, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_parses_cores_and_refuses_nonsense() {
        assert_eq!(
            "0.5".parse::<CpuQuota>().unwrap(),
            CpuQuota { millicores: 500 }
        );
        assert_eq!("1".parse::<CpuQuota>().unwrap().quota_us(), 100_000);
        assert_eq!("0.25".parse::<CpuQuota>().unwrap().quota_us(), 25_000);
        assert_eq!("0.01".parse::<CpuQuota>().unwrap().quota_us(), 1000);
        assert_eq!("0.5".parse::<CpuQuota>().unwrap().to_string(), "0.5");
        for bad in ["0", "-1", "half", "", "100", "NaN"] {
            let e = bad.parse::<CpuQuota>().unwrap_err();
            assert!(e.to_string().contains("invalid CPU quota"), "{e}");
        }
    }
}
