//! Crashing, healing and partitioning a lab's hosts.

use std::fmt;
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use serde::Serialize;

use crate::error::LabError;
use crate::lab::{
    start_backend, start_daemon, start_front_proxy, vip_holders_of, wait_backend_ready,
    wait_daemon_ready, wait_front_proxy_ready, wall_ns,
};
use crate::options::CrashKind;
use crate::state::{CrashRecord, LabPaths, LabState};
use crate::system::{
    ip, kill_all_in, monotonic_now, namespace_id, process_is_in, signal_all, signal_group,
    wait_gone,
};
use crate::topology::{
    interface_addresses, set_link, set_private_link, Host, LabName, HOST_INTERFACE, VIP,
};
use crate::webservers;

/// How long killed processes may take to disappear.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// The facts of a crash, printed as `KEY=VALUE` lines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CrashReport {
    pub lab: String,
    /// `n1`, `w`.
    pub host: String,
    pub namespace: String,
    pub how: CrashKind,
    /// CLOCK_MONOTONIC just before the first action of the crash.
    pub at_monotonic: Duration,
    pub at_wall: SystemTime,
}

impl fmt::Display for CrashReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "LAB={}", self.lab)?;
        writeln!(f, "NODE={}", self.namespace)?;
        writeln!(f, "HOW={}", self.how)?;
        writeln!(f, "CRASH_MONOTONIC_NS={}", self.at_monotonic.as_nanos())?;
        writeln!(f, "CRASH_WALL_UNIX_NS={}", wall_ns(self.at_wall))
    }
}

/// Resolves `n1` … `nN`, `w`, `client` or a namespace name `NAME-n1` to a host of this lab.
fn resolve_named(lab: &LabName, state: &LabState, node: &str) -> Result<Host, LabError> {
    let short = node
        .strip_prefix(lab.as_str())
        .and_then(|rest| rest.strip_prefix('-'))
        .unwrap_or(node);
    Host::parse_short(short)
        .filter(|h| state.host(*h).is_some())
        .ok_or_else(|| LabError::UnknownHost {
            lab: lab.to_string(),
            host: node.to_string(),
            known: state
                .hosts_in_order()
                .iter()
                .map(|h| h.host.short_name())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Like [`resolve_named`], and `primary` names the member that holds the VIP now.
fn resolve(lab: &LabName, state: &LabState, node: &str) -> Result<Host, LabError> {
    if node != "primary" {
        return resolve_named(lab, state, node);
    }
    let holders = vip_holders_of(lab, &state.members())?;
    match holders.as_slice() {
        [holder] => Ok(*holder),
        [] => Err(LabError::NoPrimary {
            lab: lab.to_string(),
            vip: VIP.to_string(),
        }),
        several => Err(LabError::SeveralPrimaries {
            lab: lab.to_string(),
            vip: VIP.to_string(),
            holders: several
                .iter()
                .map(|h| h.short_name())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Crashes a member or the witness the way `how` says, records it in state.json and returns the
/// moment it happened. `node` is `n1` …, `w`, a namespace name, or `primary`.
pub fn crash(name: &str, node: &str, how: CrashKind) -> Result<CrashReport, LabError> {
    let lab = LabName::parse(name)?;
    let mut state = LabState::load(&lab)?;
    let host = resolve(&lab, &state, node)?;
    let entry = state.host(host).cloned().expect("resolved hosts exist");
    let not_applicable = |reason: String| LabError::CrashNotApplicable {
        lab: lab.to_string(),
        host: host.short_name(),
        how,
        reason,
    };
    if host == Host::Client {
        return Err(not_applicable("the client is not a node".into()));
    }
    if let Some(previous) = entry.crash {
        return Err(LabError::AlreadyCrashed {
            lab: lab.to_string(),
            host: host.short_name(),
            how: previous.how,
        });
    }
    let ns = entry.namespace.clone();
    let id = namespace_id(&ns)
        .ok_or_else(|| not_applicable(format!("its namespace {ns} does not exist")))?;
    let running = |pid: Option<i32>, what: &str| -> Result<i32, LabError> {
        match pid {
            None if what == "daemon" && !state.options.start_daemons => {
                Err(not_applicable("the lab was started without daemons".into()))
            }
            None => Err(not_applicable(format!("it has no {what}"))),
            Some(pid) if !process_is_in(pid, id) => Err(not_applicable(format!(
                "its {what} (pid {pid}) is not running"
            ))),
            Some(pid) => Ok(pid),
        }
    };
    // Check before the clock is read, so the crash time is the time of the first action.
    let target = match how {
        CrashKind::Process | CrashKind::Freeze => Some(running(entry.daemon_pid, "daemon")?),
        CrashKind::Backend => Some(running(entry.backend_pid, "backend")?),
        CrashKind::Host | CrashKind::Link | CrashKind::LinkDown | CrashKind::LinkBlackhole => None,
    };
    let at_monotonic = monotonic_now();
    let at_wall = SystemTime::now();
    match (how, target) {
        (CrashKind::Host, _) => {
            // Freeze everything first: from here the host sends nothing, as a dead machine;
            // cutting the cable before the kill keeps the kernel's resets of the killed
            // processes' connections from reaching anyone, as with a real power loss.
            signal_all(id, Signal::SIGSTOP);
            set_link(&lab, host, false)?;
            // A dead machine is off every network: the private one too, or the resets of
            // the killed processes' connections would reach the clients through a sibling.
            if state.options.relay && host.is_member() {
                set_private_link(&lab, host, false)?;
            }
            kill_all_in(&ns, KILL_TIMEOUT)?;
        }
        (CrashKind::Link | CrashKind::LinkDown, _) => set_link(&lab, host, false)?,
        (CrashKind::LinkBlackhole, _) => set_blackhole(&lab, &state, host, true)?,
        (CrashKind::Process, Some(pid)) => {
            signal_group(pid, &ns, "daemon", Signal::SIGKILL)?;
            wait_gone(pid, id, KILL_TIMEOUT);
        }
        (CrashKind::Freeze, Some(pid)) => {
            signal_group(pid, &ns, "daemon", Signal::SIGSTOP)?;
        }
        (CrashKind::Backend, Some(pid)) => {
            signal_group(pid, &ns, "backend", Signal::SIGKILL)?;
            wait_gone(pid, id, KILL_TIMEOUT);
        }
        (_, None) => unreachable!("a target was found above for {how}"),
    }
    let record = CrashRecord {
        how,
        at_monotonic_ns: u64::try_from(at_monotonic.as_nanos()).unwrap_or(u64::MAX),
        at_wall_unix_ns: wall_ns(at_wall),
    };
    if let Some(h) = state.host_mut(host) {
        h.crash = Some(record);
    }
    state.save(&lab)?;
    Ok(CrashReport {
        lab: lab.to_string(),
        host: host.short_name(),
        namespace: ns,
        how,
        at_monotonic,
        at_wall,
    })
}

/// What `heal` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum HealReport {
    NotCrashed {
        lab: String,
        host: String,
        namespace: String,
    },
    Healed {
        lab: String,
        host: String,
        namespace: String,
        how: CrashKind,
        /// `backend`, `daemon`.
        restarted: Vec<String>,
    },
}

impl fmt::Display for HealReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealReport::NotCrashed {
                lab,
                host,
                namespace,
            } => writeln!(
                f,
                "lab {lab}: {host} ({namespace}) is not crashed; nothing to do"
            ),
            HealReport::Healed {
                lab,
                host,
                namespace,
                how,
                restarted,
            } => {
                let restarted = if restarted.is_empty() {
                    "nothing".to_string()
                } else {
                    restarted.join(" and ")
                };
                writeln!(
                    f,
                    "lab {lab}: healed {host} ({namespace}) after --how {how}; restarted {restarted}"
                )
            }
        }
    }
}

/// Undoes a crash: kills what is left of the host's daemon (a frozen one is killed, not
/// resumed), takes the VIP off the host so its kernel cannot answer for it, puts the cable back,
/// restarts the backend (and the lab's front proxy, if it runs one) if it is down and the
/// daemon, which rejoins as a backup. Returns once both answer. Healing a host that is not crashed does nothing.
pub fn heal(name: &str, node: &str) -> Result<HealReport, LabError> {
    let lab = LabName::parse(name)?;
    let mut state = LabState::load(&lab)?;
    let host = resolve_named(&lab, &state, node)?;
    let entry = state.host(host).cloned().expect("resolved hosts exist");
    let ns = entry.namespace.clone();
    let Some(crash) = entry.crash else {
        return Ok(HealReport::NotCrashed {
            lab: lab.to_string(),
            host: host.short_name(),
            namespace: ns,
        });
    };
    let id = namespace_id(&ns).ok_or_else(|| LabError::InvalidRequest {
        lab: lab.to_string(),
        reason: format!("cannot heal {host}: its namespace {ns} does not exist"),
    })?;
    let paths = LabPaths::new(&lab);
    if matches!(crash.how, CrashKind::LinkDown | CrashKind::LinkBlackhole) {
        // A link fault took nothing down but the link: its daemon and backend serve on.
        match crash.how {
            CrashKind::LinkDown => set_link(&lab, host, true)?,
            _ => set_blackhole(&lab, &state, host, false)?,
        }
        if let Some(h) = state.host_mut(host) {
            h.crash = None;
        }
        state.save(&lab)?;
        return Ok(HealReport::Healed {
            lab: lab.to_string(),
            host: host.short_name(),
            namespace: ns,
            how: crash.how,
            restarted: Vec::new(),
        });
    }
    // After a backend crash the daemon lived on (it saw its health check fail): healing brings
    // the backend back and leaves the daemon be, as an operator restarting a web server would.
    let daemon_alive = entry.daemon_pid.is_some_and(|pid| process_is_in(pid, id));
    let keep_daemon = crash.how == CrashKind::Backend && daemon_alive;
    if let Some(pid) = entry.daemon_pid.filter(|_| !keep_daemon) {
        // Waited for even when it is no longer in the namespace: its last threads may still
        // hold the ports the new daemon binds.
        signal_group(pid, &ns, "daemon", Signal::SIGKILL)?;
        wait_gone(pid, id, KILL_TIMEOUT);
    }
    if host.is_member() {
        for (address, prefix) in interface_addresses(&ns)? {
            if address == VIP {
                let with_prefix = format!("{address}/{prefix}");
                ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "del",
                    &with_prefix,
                    "dev",
                    HOST_INTERFACE,
                ])?;
            }
        }
    }
    set_link(&lab, host, true)?;
    if crash.how == CrashKind::Host && state.options.relay && host.is_member() {
        set_private_link(&lab, host, true)?;
    }
    // The host comes back as from a reboot: with an empty neighbour table. An entry left
    // from before the crash (incomplete, or naming an old MAC) held up a join by 0.6 s.
    ip(&["-n", &ns, "neigh", "flush", "all"])?;

    let mut restarted = Vec::new();
    let backend_alive = entry.backend_pid.is_some_and(|pid| process_is_in(pid, id));
    if host.is_member() && !backend_alive {
        let server = webservers::require_installed(state.options.backend)?;
        let pid = start_backend(&lab, &state, &paths, host, server.as_deref())?;
        if let Some(h) = state.host_mut(host) {
            h.backend_pid = Some(pid);
        }
        state.save(&lab)?;
        wait_backend_ready(
            &lab,
            &paths,
            host,
            state.options.mode,
            state.options.backend,
        )?;
        restarted.push("backend".to_string());
    }
    let proxy_alive = entry.proxy_pid.is_some_and(|pid| process_is_in(pid, id));
    if let Some(kind) = state
        .options
        .front_proxy
        .filter(|_| host.is_member() && !proxy_alive)
    {
        let program = webservers::require_front_proxy(kind)?;
        let pid = start_front_proxy(&lab, &state, &paths, host, &program)?;
        if let Some(h) = state.host_mut(host) {
            h.proxy_pid = Some(pid);
        }
        state.save(&lab)?;
        wait_front_proxy_ready(&lab, &paths, host, pid, state.options.backend)?;
        restarted.push("front proxy".to_string());
    }
    if state.options.start_daemons && !keep_daemon {
        let pid = start_daemon(&lab, &state, &paths, host)?;
        if let Some(h) = state.host_mut(host) {
            h.daemon_pid = Some(pid);
        }
        state.save(&lab)?;
        wait_daemon_ready(&lab, &paths, host)?;
        restarted.push("daemon".to_string());
    }
    if let Some(h) = state.host_mut(host) {
        h.crash = None;
    }
    state.save(&lab)?;
    Ok(HealReport::Healed {
        lab: lab.to_string(),
        host: host.short_name(),
        namespace: ns,
        how: crash.how,
        restarted,
    })
}

/// Makes the bridge drop every frame to and from `host`'s public cable while its carrier stays
/// up (`on`), or stops doing so: the lab's partitions plus `host` cut from every other host of
/// the public bridge, in one nftables transaction. (Changing a partition meanwhile applies the
/// recorded partitions alone, which ends the black hole: heal first.)
fn set_blackhole(lab: &LabName, state: &LabState, host: Host, on: bool) -> Result<(), LabError> {
    let mut pairs = state.partitions.clone();
    if on {
        for other in state.hosts_in_order() {
            if other.host != host {
                pairs.push((host.short_name(), other.host.short_name()));
            }
        }
    }
    apply_partitions(lab, &pairs, &state.one_way_cuts)
}

/// Makes the bridge drop every frame between hosts `a` and `b` (each may be a member, the
/// witness or the client), both ways; the rest of the lab still reaches both.
pub fn partition(name: &str, a: &str, b: &str) -> Result<(), LabError> {
    change_cut(name, a, b, Direction::Both, true)
}

/// Removes the partition between `a` and `b` (nothing happens if there is none).
pub fn unpartition(name: &str, a: &str, b: &str) -> Result<(), LabError> {
    change_cut(name, a, b, Direction::Both, false)
}

/// Makes the bridge drop every frame from host `from` to host `to`, and only those: `to` still
/// reaches `from` (a one-way partition, as a half-broken switch port or a one-sided firewall
/// rule makes).
pub fn cut_one_way(name: &str, from: &str, to: &str) -> Result<(), LabError> {
    change_cut(name, from, to, Direction::OneWay, true)
}

/// Removes the one-way cut from `from` to `to` (nothing happens if there is none).
pub fn mend_one_way(name: &str, from: &str, to: &str) -> Result<(), LabError> {
    change_cut(name, from, to, Direction::OneWay, false)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Both,
    OneWay,
}

/// Adds (`cut`) or removes the cut between `a` and `b` and applies every cut of the lab.
fn change_cut(
    name: &str,
    a: &str,
    b: &str,
    direction: Direction,
    cut: bool,
) -> Result<(), LabError> {
    let lab = LabName::parse(name)?;
    let mut state = LabState::load(&lab)?;
    let a = resolve_named(&lab, &state, a)?;
    let b = resolve_named(&lab, &state, b)?;
    if a == b {
        return Err(LabError::InvalidRequest {
            lab: lab.to_string(),
            reason: format!("cannot cut {a} from itself"),
        });
    }
    // A partition is kept once whichever way it was named; a one-way cut by its direction.
    let (first, second) = if direction == Direction::Both && b < a {
        (b, a)
    } else {
        (a, b)
    };
    let pair = (first.short_name(), second.short_name());
    let cuts = match direction {
        Direction::Both => &mut state.partitions,
        Direction::OneWay => &mut state.one_way_cuts,
    };
    match (cut, cuts.contains(&pair)) {
        (true, false) => cuts.push(pair),
        (false, true) => cuts.retain(|p| *p != pair),
        _ => return Ok(()),
    }
    apply_partitions(&lab, &state.partitions, &state.one_way_cuts)?;
    state.save(&lab)
}

/// The bridge table in the switch namespace that cuts the partitioned pairs.
const PARTITION_TABLE: &str = "steadfast_lab";

/// Replaces the bridge filter of the switch namespace with one dropping the given pairs (both
/// ways) and one-way cuts (from the first to the second), in one nftables transaction, and
/// records the kernel's view of it in the lab's directory.
fn apply_partitions(
    lab: &LabName,
    pairs: &[(String, String)],
    one_way: &[(String, String)],
) -> Result<(), LabError> {
    use steadfast_os::nftables::{
        render, Batch, Chain, Family, Hook, NftSocket, RuleBuilder, SystemNames, Table, Verdict,
    };
    let mut batch = Batch::new();
    batch.remove_table(Family::Bridge, PARTITION_TABLE);
    let directed: Vec<(&String, &String)> = pairs
        .iter()
        .flat_map(|(a, b)| [(a, b), (b, a)])
        .chain(one_way.iter().map(|(from, to)| (from, to)))
        .collect();
    if !directed.is_empty() {
        batch
            .add_table(Table::new(Family::Bridge, PARTITION_TABLE))
            .add_chain(
                Chain::filter(
                    Family::Bridge,
                    PARTITION_TABLE,
                    "forward",
                    Hook::Forward,
                    0,
                    None,
                )
                .expect("bridge has a forward hook"),
            );
        for (from, to) in directed {
            batch.add_rule(
                RuleBuilder::new(Family::Bridge)
                    .iifname(from)
                    .oifname(to)
                    .verdict(Verdict::Drop)
                    .build(PARTITION_TABLE, "forward"),
            );
        }
    }
    let namespace = lab.switch_namespace();
    let listing = crate::system::run_in_namespace(&namespace, move || {
        let mut socket = NftSocket::open()?;
        socket.apply(&batch, "setting the lab's partitions")?;
        let ruleset = socket
            .read_ruleset(&|family, name| family == Family::Bridge && name == PARTITION_TABLE)?;
        Ok(render::ruleset(&ruleset, &SystemNames))
    })?
    .map_err(|source| LabError::Nftables {
        lab: lab.to_string(),
        namespace: namespace.clone(),
        source,
    })?;
    let path = LabPaths::new(lab).partition_rules();
    std::fs::write(
        &path,
        format!("# Written by steadfast-lab lab: the partitions of this lab, as the kernel holds them.\n{listing}"),
    )
    .map_err(|e| LabError::io("writing", &path, e))
}
