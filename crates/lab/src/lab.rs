//! Building a lab, reading its status, and tearing it down.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::configs::{voter_config, write_key, GroupPlan};
use crate::error::LabError;
use crate::options::{BackendKind, FrontProxy, Mode, UpOptions};
use crate::probe::{http_get_in_namespace, redis_ping_in_namespace};
use crate::state::STATE_ROOT;
use crate::state::{state_dir, CrashRecord, HostState, LabPaths, LabState, RecordedOptions};
use crate::system::{
    ip, kill_all_in, list_namespaces, log_tail, namespace_exists, namespace_id, process_is_in,
    spawn_in_namespace, spawn_in_namespace_in,
};
use crate::topology::{
    self, existing_namespaces, hosts_of, service_port, Host, LabName, HOST_INTERFACE, MAX_NODES,
    VIP,
};
use crate::webservers;

/// How long a node's backend may take to answer `/health` after it is started.
pub const BACKEND_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a member's front proxy may take to listen on the service address.
pub const FRONT_PROXY_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a restarted daemon may take to answer on its control socket.
pub const DAEMON_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a status exchange over a control socket.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between two readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Each probe's own bound.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Lines of each log quoted in a readiness error.
const LOG_LINES: usize = 20;

/// What `steadfast-lab lab up` prints: the contract's `KEY=VALUE` lines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LabInfo {
    pub lab: String,
    pub client_ns: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    /// The member namespaces, `NAME-n1` …
    pub nodes: Vec<String>,
    /// The member namespace that holds the VIP; `None` when no node (or more than one) does.
    pub primary: Option<String>,
    pub witness_ns: Option<String>,
    pub state_dir: PathBuf,
}

impl fmt::Display for LabInfo {
    /// Exactly the contract's keys; scripts parse these lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "LAB={}", self.lab)?;
        writeln!(f, "CLIENT_NS={}", self.client_ns)?;
        writeln!(f, "VIP={}", self.vip)?;
        writeln!(f, "PORT={}", self.port)?;
        writeln!(f, "NODES={}", self.nodes.join(","))?;
        writeln!(f, "PRIMARY={}", self.primary.as_deref().unwrap_or(""))
    }
}

/// Builds a lab, starts its backends and daemons, and returns once the VIP answers
/// `GET /health` (a redis lab: `PING`) from the client namespace (or, without daemons, once
/// every backend answers).
/// On any failure everything built so far is torn down, and the error quotes the logs.
pub fn up(opts: &UpOptions) -> Result<LabInfo, LabError> {
    let lab = LabName::parse(&opts.name)?;
    if !(1..=MAX_NODES).contains(&opts.nodes) {
        return Err(LabError::InvalidNodeCount {
            count: opts.nodes,
            max: MAX_NODES,
        });
    }
    crate::system::require_program("ip", "iproute2")?;
    if opts.mode == Mode::Duplex && opts.nodes < 2 {
        return Err(LabError::ModeNeedsNodes {
            mode: opts.mode,
            min: 2,
            nodes: opts.nodes,
        });
    }
    if let Some(reason) = crate::options::backend_refusal(opts.mode, opts.backend, opts.front_proxy)
    {
        return Err(LabError::InvalidRequest {
            lab: lab.to_string(),
            reason,
        });
    }
    let server = webservers::require_installed(opts.backend)?;
    let front_proxy = match opts.front_proxy {
        None => None,
        Some(kind) if opts.mode == Mode::Unreplicated => {
            Some((kind, webservers::require_front_proxy(kind)?))
        }
        Some(kind) => {
            return Err(LabError::InvalidRequest {
                lab: lab.to_string(),
                reason: format!(
                    "a {kind} front proxy runs in unreplicated labs only: in {} mode the \
                     daemon's own proxy holds the service address",
                    opts.mode
                ),
            })
        }
    };
    let needs_exe = opts.start_daemons || opts.backend == BackendKind::Builtin;
    if needs_exe && !opts.steadfast_exe.is_file() {
        return Err(LabError::MissingExecutable {
            path: opts.steadfast_exe.clone(),
        });
    }
    let paths = LabPaths::new(&lab);
    if paths.dir.exists() {
        return Err(LabError::AlreadyExists {
            name: lab.to_string(),
            what: format!("its state directory {} exists", paths.dir.display()),
        });
    }
    if let Some(ns) = existing_namespaces(&lab).first() {
        return Err(LabError::AlreadyExists {
            name: lab.to_string(),
            what: format!("namespace {ns} exists"),
        });
    }
    std::fs::create_dir_all(&paths.dir)
        .map_err(|e| LabError::io("creating the lab's state directory", &paths.dir, e))?;
    let mut teardown = TeardownOnFailure {
        lab: lab.clone(),
        armed: true,
    };
    let info = build(&lab, opts, &paths, server.as_deref(), front_proxy.as_ref())?;
    teardown.armed = false;
    Ok(info)
}

/// Tears a half-built lab down when `up` fails or panics.
struct TeardownOnFailure {
    lab: LabName,
    armed: bool,
}

impl Drop for TeardownOnFailure {
    fn drop(&mut self) {
        if self.armed {
            let _ = down(self.lab.as_str());
        }
    }
}

fn build(
    lab: &LabName,
    opts: &UpOptions,
    paths: &LabPaths,
    server: Option<&Path>,
    front_proxy: Option<&(FrontProxy, PathBuf)>,
) -> Result<LabInfo, LabError> {
    let hosts = hosts_of(opts.nodes, opts.witness);
    let mut state = LabState {
        name: lab.to_string(),
        created_unix_ms: (wall_ns(SystemTime::now()) / 1_000_000),
        options: RecordedOptions {
            nodes: opts.nodes,
            witness: opts.witness,
            mode: opts.mode,
            backend: opts.backend,
            heartbeat_ms: opts.heartbeat_ms,
            steadfast_exe: opts.steadfast_exe.clone(),
            start_daemons: opts.start_daemons,
            front_proxy: opts.front_proxy,
            cpu_quota: opts.cpu_quota,
            relay: opts.relay,
        },
        hosts: hosts
            .iter()
            .map(|&host| {
                let state = HostState {
                    host,
                    namespace: host.namespace(lab),
                    address: host.address().to_string(),
                    daemon_pid: None,
                    backend_pid: None,
                    proxy_pid: None,
                    crash: None,
                };
                (host.short_name(), state)
            })
            .collect::<BTreeMap<_, _>>(),
        partitions: Vec::new(),
        one_way_cuts: Vec::new(),
        cgroup_dir: None,
    };
    state.save(lab)?;
    let members: Vec<Host> = hosts.iter().copied().filter(|h| h.is_member()).collect();
    if let Some(quota) = opts.cpu_quota {
        let cpu_error = |source| LabError::CpuQuota {
            lab: lab.to_string(),
            source,
        };
        let hierarchy = crate::cpu_quota::detect().map_err(cpu_error)?;
        let names: Vec<String> = members.iter().map(|m| m.short_name()).collect();
        // Recorded before it exists, so a failure halfway still leaves `down` a trace to
        // follow (it also looks in every hierarchy by the lab's name).
        state.cgroup_dir = Some(hierarchy.lab_dir(lab.as_str()));
        state.save(lab)?;
        crate::cpu_quota::create(&hierarchy, lab.as_str(), &names, quota).map_err(cpu_error)?;
    }

    write_key(&paths.key_file())?;
    let data_tier = paths.data_tier();
    std::fs::File::create(&data_tier)
        .map_err(|e| LabError::io("creating the data tier", &data_tier, e))?;
    let plan = GroupPlan {
        lab,
        members: &members,
        witness: opts.witness,
        mode: opts.mode,
        backend: opts.backend,
        heartbeat_ms: opts.heartbeat_ms,
        replication_stall_ms: opts.replication_stall_ms,
        replication_encryption: opts.replication_encryption,
        stream_replies_above: opts.stream_replies_above,
        client_timeouts_ms: opts.client_timeouts_ms,
        max_connections: opts.max_connections,
        max_connections_per_source: opts.max_connections_per_source,
        half_open_lifetime_ms: opts.half_open_lifetime_ms,
        delivery: opts.delivery,
        read_policy: opts.read_policy,
        gratuitous_arp: opts.gratuitous_arp,
        relay: opts.relay,
    };
    for &voter in hosts.iter().filter(|h| h.node_id().is_some()) {
        let path = paths.config(voter);
        std::fs::write(&path, voter_config(&plan, voter))
            .map_err(|e| LabError::io("writing the node configuration", &path, e))?;
    }
    if matches!(opts.backend, BackendKind::Nginx | BackendKind::Apache2) {
        webservers::write_docroot(paths)?;
    }

    topology::create(lab, &hosts, opts.relay)?;

    for &node in &members {
        let pid = start_backend(lab, &state, paths, node, server)?;
        if let Some(h) = state.host_mut(node) {
            h.backend_pid = Some(pid);
        }
        state.save(lab)?;
    }
    for &node in &members {
        wait_backend_ready(lab, paths, node, opts.mode, opts.backend)?;
    }
    if let Some((_, program)) = front_proxy {
        for &node in &members {
            let pid = start_front_proxy(lab, &state, paths, node, program)?;
            if let Some(h) = state.host_mut(node) {
                h.proxy_pid = Some(pid);
            }
            state.save(lab)?;
            wait_front_proxy_ready(lab, paths, node, pid, opts.backend)?;
        }
    }

    let mut primary = None;
    if opts.start_daemons {
        // The witness first, so the members find their quorum as soon as they start.
        let voters = opts
            .witness
            .then_some(Host::Witness)
            .into_iter()
            .chain(members.iter().copied());
        for voter in voters {
            let pid = start_daemon(lab, &state, paths, voter)?;
            if let Some(h) = state.host_mut(voter) {
                h.daemon_pid = Some(pid);
            }
            state.save(lab)?;
        }
        primary = Some(wait_vip_ready(lab, &state, paths, opts.ready_timeout)?);
    } else if let [holder] = vip_holders_of(lab, &members)?.as_slice() {
        primary = Some(*holder);
    }
    Ok(LabInfo {
        lab: lab.to_string(),
        client_ns: Host::Client.namespace(lab),
        vip: VIP,
        port: service_port(opts.backend),
        nodes: members.iter().map(|m| m.namespace(lab)).collect(),
        primary: primary.map(|p| p.namespace(lab)),
        witness_ns: opts.witness.then(|| Host::Witness.namespace(lab)),
        state_dir: paths.dir.clone(),
    })
}

/// The `KEY=VALUE` facts of an existing lab, with the current VIP holder as `PRIMARY`.
pub fn info(name: &str) -> Result<LabInfo, LabError> {
    let lab = LabName::parse(name)?;
    let state = LabState::load(&lab)?;
    let members = state.members();
    let holders = vip_holders_of(&lab, &members)?;
    Ok(LabInfo {
        lab: lab.to_string(),
        client_ns: Host::Client.namespace(&lab),
        vip: VIP,
        port: service_port(state.options.backend),
        nodes: members.iter().map(|m| m.namespace(&lab)).collect(),
        primary: match holders.as_slice() {
            [holder] => Some(holder.namespace(&lab)),
            _ => None,
        },
        witness_ns: state.options.witness.then(|| Host::Witness.namespace(&lab)),
        state_dir: state_dir(&lab),
    })
}

pub(crate) fn wall_ns(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Starts a member's backend; returns its pid.
pub(crate) fn start_backend(
    lab: &LabName,
    state: &LabState,
    paths: &LabPaths,
    node: Host,
    server: Option<&Path>,
) -> Result<i32, LabError> {
    let argv = webservers::backend_command(
        state.options.backend,
        paths,
        node,
        &state.options.steadfast_exe,
        server,
        crate::topology::backend_listen_behind(
            state.options.mode,
            state.options.backend,
            state.options.front_proxy,
        ),
    )?;
    spawn_in_namespace_in(
        &node.namespace(lab),
        &argv,
        &paths.backend_log(node),
        node_cgroup(state, node).as_deref(),
    )
}

/// The `cgroup.procs` of a member's CPU quota cgroup, when the lab has quotas.
fn node_cgroup(state: &LabState, host: Host) -> Option<PathBuf> {
    let dir = state.cgroup_dir.as_ref()?;
    host.is_member()
        .then(|| crate::cpu_quota::procs_file(dir, &host.short_name()))
}

/// Starts a member's front proxy (the lab's state says which) on the service address, in
/// front of the member's backend; returns its pid.
pub(crate) fn start_front_proxy(
    lab: &LabName,
    state: &LabState,
    paths: &LabPaths,
    node: Host,
    program: &Path,
) -> Result<i32, LabError> {
    let Some(kind) = state.options.front_proxy else {
        return Err(LabError::InvalidRequest {
            lab: lab.to_string(),
            reason: format!("{node} has no front proxy to start"),
        });
    };
    let argv = webservers::front_proxy_command(
        kind,
        paths,
        node,
        program,
        SocketAddrV4::new(VIP, service_port(state.options.backend)),
        crate::topology::backend_target(state.options.mode, state.options.backend),
    )?;
    spawn_in_namespace(&node.namespace(lab), &argv, &paths.proxy_log(node))
}

/// Waits until a member's front proxy listens on the service address in its namespace (the VIP
/// may not be there yet, so it cannot be asked over HTTP: its namespace's TCP table is read).
pub(crate) fn wait_front_proxy_ready(
    lab: &LabName,
    paths: &LabPaths,
    node: Host,
    pid: i32,
    backend: BackendKind,
) -> Result<(), LabError> {
    let ns = node.namespace(lab);
    let service = SocketAddrV4::new(VIP, service_port(backend));
    let started = Instant::now();
    let mut last = "not listening yet".to_string();
    while started.elapsed() < FRONT_PROXY_READY_TIMEOUT {
        match namespace_id(&ns) {
            Some(id) if process_is_in(pid, id) => {}
            _ => {
                last = format!("it exited (pid {pid})");
                break;
            }
        }
        // The table of the process's network namespace, that is the node's.
        let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
        if tcp_table_listens_on(&table, service) {
            return Ok(());
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    Err(LabError::NotReady {
        lab: lab.to_string(),
        what: format!("the front proxy of {node} (listening on {service} in {ns})"),
        waited: started.elapsed(),
        details: format!("\nlast look: {last}\n{}", quote_log(&paths.proxy_log(node))),
    })
}

/// Whether a `/proc/net/tcp` table has a listening socket on exactly `addr`.
fn tcp_table_listens_on(table: &str, addr: SocketAddrV4) -> bool {
    const LISTEN: &str = "0A";
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
            return false;
        };
        let Some((ip_hex, port_hex)) = local.split_once(':') else {
            return false;
        };
        // The address is printed as the 32-bit word in memory (network order), read natively.
        let ip = u32::from_str_radix(ip_hex, 16).map(|w| Ipv4Addr::from(w.to_ne_bytes()));
        let port = u16::from_str_radix(port_hex, 16);
        *state == LISTEN && ip == Ok(*addr.ip()) && port == Ok(addr.port())
    })
}

/// One readiness probe of the service at `target` from inside `namespace`: `GET /health`
/// answered 200, or for redis `PING` answered `+PONG`. `Err` says what came instead.
fn probe_service(namespace: &str, target: SocketAddr, backend: BackendKind) -> Result<(), String> {
    if backend.speaks_http() {
        match http_get_in_namespace(namespace, target, "/health", PROBE_TIMEOUT) {
            Ok(reply) if reply.status == 200 => Ok(()),
            Ok(reply) => Err(format!("status {}", reply.status)),
            Err(e) => Err(e.to_string()),
        }
    } else {
        redis_ping_in_namespace(namespace, target, PROBE_TIMEOUT).map_err(|e| e.to_string())
    }
}

/// What [`probe_service`] asks, for messages.
fn probe_name(target: SocketAddr, backend: BackendKind) -> String {
    if backend.speaks_http() {
        format!("http://{target}/health")
    } else {
        format!("PING to {target}")
    }
}

/// Waits until a member's backend answers `GET /health` with 200 (redis: `PING` with
/// `+PONG`) inside its namespace.
pub(crate) fn wait_backend_ready(
    lab: &LabName,
    paths: &LabPaths,
    node: Host,
    mode: Mode,
    backend: BackendKind,
) -> Result<(), LabError> {
    let ns = node.namespace(lab);
    let target = SocketAddr::V4(crate::topology::backend_target(mode, backend));
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < BACKEND_READY_TIMEOUT {
        match probe_service(&ns, target, backend) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    Err(LabError::NotReady {
        lab: lab.to_string(),
        what: format!(
            "the backend of {node} ({} in {ns})",
            probe_name(target, backend)
        ),
        waited: started.elapsed(),
        details: format!(
            "\nlast probe: {last}\n{}",
            quote_log(&paths.backend_log(node))
        ),
    })
}

/// Starts a voter's daemon (`run` for members, `witness` for the witness); returns its pid.
pub(crate) fn start_daemon(
    lab: &LabName,
    state: &LabState,
    paths: &LabPaths,
    voter: Host,
) -> Result<i32, LabError> {
    let verb = if voter.is_member() { "run" } else { "witness" };
    let argv = vec![
        state.options.steadfast_exe.clone().into_os_string(),
        verb.into(),
        "--config".into(),
        paths.config(voter).into_os_string(),
    ];
    spawn_in_namespace_in(
        &voter.namespace(lab),
        &argv,
        &paths.daemon_log(voter),
        node_cgroup(state, voter).as_deref(),
    )
}

/// Waits until a restarted daemon answers on its control socket.
pub(crate) fn wait_daemon_ready(
    lab: &LabName,
    paths: &LabPaths,
    voter: Host,
) -> Result<(), LabError> {
    let socket = paths.control_socket(voter);
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < DAEMON_READY_TIMEOUT {
        match query_control_socket(&socket) {
            Ok(_) => return Ok(()),
            Err(e) => last = e,
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    Err(LabError::NotReady {
        lab: lab.to_string(),
        what: format!(
            "the daemon of {voter} (control socket {})",
            socket.display()
        ),
        waited: started.elapsed(),
        details: format!(
            "\nlast try: {last}\n{}",
            quote_log(&paths.daemon_log(voter))
        ),
    })
}

fn wait_vip_ready(
    lab: &LabName,
    state: &LabState,
    paths: &LabPaths,
    timeout: Duration,
) -> Result<Host, LabError> {
    let client = Host::Client.namespace(lab);
    let backend = state.options.backend;
    let target = SocketAddr::V4(SocketAddrV4::new(VIP, service_port(backend)));
    let members = state.members();
    let started = Instant::now();
    loop {
        if let Some(dead) = dead_daemon(lab, state) {
            return Err(LabError::NotReady {
                lab: lab.to_string(),
                what: format!("the VIP {target} from {client}"),
                waited: started.elapsed(),
                details: format!(
                    ": the daemon of {dead} exited\n{}",
                    quote_log(&paths.daemon_log(dead))
                ),
            });
        }
        if let Some(dead) = dead_front_proxy(lab, state) {
            return Err(LabError::NotReady {
                lab: lab.to_string(),
                what: format!("the VIP {target} from {client}"),
                waited: started.elapsed(),
                details: format!(
                    ": the front proxy of {dead} exited\n{}",
                    quote_log(&paths.proxy_log(dead))
                ),
            });
        }
        let holders = vip_holders_of(lab, &members)?;
        let last = if let [holder] = holders.as_slice() {
            match probe_service(&client, target, backend) {
                Ok(()) => match unprotected_primary(paths, *holder, state) {
                    None => return Ok(*holder),
                    Some(why) => format!("{holder} holds the VIP and answers; {why}"),
                },
                Err(e) => format!("{holder} holds the VIP; {e}"),
            }
        } else {
            format!("VIP holders: {}", names(&holders))
        };
        if started.elapsed() >= timeout {
            let mut details = format!("\nlast probe: {last}");
            for voter in state.hosts_in_order().iter().map(|h| h.host) {
                if voter.node_id().is_some() {
                    details.push('\n');
                    details.push_str(&quote_log(&paths.daemon_log(voter)));
                }
            }
            return Err(LabError::NotReady {
                lab: lab.to_string(),
                what: format!("the VIP {target} from {client}"),
                waited: started.elapsed(),
                details,
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// In duplex, why the VIP holder is not yet a primary that a backup protects (None: it is,
/// or the lab is not duplex). A duplex lab is ready only then: a test or a demo that starts
/// its load earlier would see its connections opened unprotected, and a primary chosen in the
/// first moments can still change (a node elected while its peer started may stall and lose
/// its first lease).
fn unprotected_primary(paths: &LabPaths, holder: Host, state: &LabState) -> Option<String> {
    if state.options.mode != Mode::Duplex {
        return None;
    }
    let status = match query_control_socket(&paths.control_socket(holder)) {
        Ok(status) => status,
        Err(e) => return Some(format!("its status: {e}")),
    };
    let role = status["role"].as_str().unwrap_or("unknown");
    let joined = status["data_plane"]["backups_joined"].as_u64().unwrap_or(0);
    let protected_now = status["data_plane"]["unprotected_now"].as_bool() == Some(false);
    if role == "primary" && joined > 0 && protected_now {
        None
    } else {
        Some(format!(
            "its daemon is {role}, {joined} backups joined, {}",
            if protected_now {
                "protected"
            } else {
                "serving without a backup"
            }
        ))
    }
}

/// The first voter whose recorded daemon is no longer running.
fn dead_daemon(lab: &LabName, state: &LabState) -> Option<Host> {
    state.hosts_in_order().into_iter().find_map(|h| {
        let pid = h.daemon_pid?;
        let id = namespace_id(&h.host.namespace(lab))?;
        (!process_is_in(pid, id)).then_some(h.host)
    })
}

/// The first member whose recorded front proxy is no longer running.
fn dead_front_proxy(lab: &LabName, state: &LabState) -> Option<Host> {
    state.hosts_in_order().into_iter().find_map(|h| {
        let pid = h.proxy_pid?;
        let id = namespace_id(&h.host.namespace(lab))?;
        (!process_is_in(pid, id)).then_some(h.host)
    })
}

fn quote_log(path: &Path) -> String {
    format!(
        "--- {} (last {LOG_LINES} lines) ---\n{}",
        path.display(),
        log_tail(path, LOG_LINES)
    )
}

fn names(hosts: &[Host]) -> String {
    if hosts.is_empty() {
        return "none".into();
    }
    hosts
        .iter()
        .map(|h| h.short_name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The members whose `eth0` carries the VIP.
pub(crate) fn vip_holders_of(lab: &LabName, members: &[Host]) -> Result<Vec<Host>, LabError> {
    let mut holders = Vec::new();
    for &member in members {
        let ns = member.namespace(lab);
        if !namespace_exists(&ns) {
            continue;
        }
        // A duplex primary with a live backup holds the VIP on lo (the backup answers ARP);
        // one listing of both devices, or a move between them could look like no holder.
        let holds = crate::topology::addresses_by_device(&ns, None)?
            .iter()
            .any(|(device, a, _)| *a == VIP && (device == "lo" || device == HOST_INTERFACE));
        if holds {
            holders.push(member);
        }
    }
    Ok(holders)
}

/// The namespaces of the members that hold the VIP now (more than one is a split brain).
pub fn vip_holders(name: &str) -> Result<Vec<String>, LabError> {
    let lab = LabName::parse(name)?;
    let state = LabState::load(&lab)?;
    Ok(vip_holders_of(&lab, &state.members())?
        .into_iter()
        .map(|h| h.namespace(&lab))
        .collect())
}

/// Asks a daemon for its status over its control socket: the JSON document it returns, or why
/// it could not be had.
pub fn query_control_socket(socket: &Path) -> Result<serde_json::Value, String> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(CONTROL_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(CONTROL_TIMEOUT)))
        .map_err(|e| format!("setting timeouts on {}: {e}", socket.display()))?;
    stream
        .write_all(b"status\n")
        .map_err(|e| format!("writing to {}: {e}", socket.display()))?;
    let mut text = String::new();
    stream
        .take(1024 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| format!("reading from {}: {e}", socket.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        format!(
            "the reply on {} is not JSON ({e}): {text:?}",
            socket.display()
        )
    })
}

/// A voter's daemon as `status` sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DaemonView {
    /// The lab was built without daemons.
    NotStarted,
    /// The daemon's own status document (notes/daemon-interface.md), passed through.
    Answered {
        status: serde_json::Value,
    },
    Unreachable {
        error: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HostStatus {
    /// `n1`, `w`, `client`.
    pub host: String,
    pub namespace: String,
    pub address: String,
    pub namespace_exists: bool,
    /// Whether the host's cable (the bridge end of its veth pair) is up.
    pub link_up: Option<bool>,
    pub crash: Option<CrashRecord>,
    /// Members only.
    pub backend_running: Option<bool>,
    pub holds_vip: bool,
    /// Voters only.
    pub daemon: Option<DaemonView>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LabStatus {
    pub lab: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    /// Namespaces of the members that hold the VIP.
    pub vip_holders: Vec<String>,
    pub partitions: Vec<(String, String)>,
    pub one_way_cuts: Vec<(String, String)>,
    pub hosts: Vec<HostStatus>,
}

/// Every host of the lab: namespace, cable, crash, backend, VIP, and its daemon's own status.
pub fn status(name: &str) -> Result<LabStatus, LabError> {
    let lab = LabName::parse(name)?;
    let state = LabState::load(&lab)?;
    let paths = LabPaths::new(&lab);
    let links: BTreeMap<String, bool> = if namespace_exists(&lab.switch_namespace()) {
        topology::link_states(&lab)?.into_iter().collect()
    } else {
        BTreeMap::new()
    };
    let holders = vip_holders_of(&lab, &state.members())?;
    let mut hosts = Vec::new();
    for h in state.hosts_in_order() {
        let host = h.host;
        let ns_id = namespace_id(&h.namespace);
        let alive = |pid: Option<i32>| match (pid, ns_id) {
            (Some(pid), Some(id)) => process_is_in(pid, id),
            _ => false,
        };
        let daemon = host.node_id().map(|_| {
            if !state.options.start_daemons {
                DaemonView::NotStarted
            } else {
                match query_control_socket(&paths.control_socket(host)) {
                    Ok(status) => DaemonView::Answered { status },
                    Err(error) => DaemonView::Unreachable { error },
                }
            }
        });
        hosts.push(HostStatus {
            host: host.short_name(),
            namespace: h.namespace.clone(),
            address: h.address.clone(),
            namespace_exists: ns_id.is_some(),
            link_up: links.get(&host.short_name()).copied(),
            crash: h.crash,
            backend_running: host.is_member().then(|| alive(h.backend_pid)),
            holds_vip: holders.contains(&host),
            daemon,
        });
    }
    Ok(LabStatus {
        lab: lab.to_string(),
        vip: VIP,
        port: service_port(state.options.backend),
        vip_holders: holders.iter().map(|h| h.namespace(&lab)).collect(),
        partitions: state.partitions.clone(),
        one_way_cuts: state.one_way_cuts.clone(),
        hosts,
    })
}

impl fmt::Display for LabStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let holders = if self.vip_holders.is_empty() {
            "nobody".to_string()
        } else {
            self.vip_holders.join(", ")
        };
        writeln!(
            f,
            "lab {}: VIP {}:{} held by {holders}",
            self.lab, self.vip, self.port
        )?;
        for (a, b) in &self.partitions {
            writeln!(f, "partition: {a} <-/-> {b}")?;
        }
        for (from, to) in &self.one_way_cuts {
            writeln!(f, "one-way cut: {from} -/-> {to}")?;
        }
        writeln!(
            f,
            "{:<7} {:<28} {:<11} {:<5} {:<8} {:<8} {:<4} DAEMON",
            "HOST", "NAMESPACE", "ADDRESS", "LINK", "CRASH", "BACKEND", "VIP"
        )?;
        for h in &self.hosts {
            let link = match (h.namespace_exists, h.link_up) {
                (false, _) => "gone",
                (true, Some(true)) => "up",
                (true, Some(false)) => "down",
                (true, None) => "?",
            };
            let crash = h.crash.map(|c| c.how.to_string()).unwrap_or("-".into());
            let backend = match h.backend_running {
                Some(true) => "running",
                Some(false) => "dead",
                None => "-",
            };
            let vip = if h.holds_vip { "yes" } else { "-" };
            let daemon = match &h.daemon {
                None => "-".to_string(),
                Some(DaemonView::NotStarted) => "not started".to_string(),
                Some(DaemonView::Unreachable { error }) => format!("unreachable: {error}"),
                Some(DaemonView::Answered { status }) => summarize_daemon(status),
            };
            writeln!(
                f,
                "{:<7} {:<28} {:<11} {:<5} {:<8} {:<8} {:<4} {daemon}",
                h.host, h.namespace, h.address, link, crash, backend, vip
            )?;
        }
        Ok(())
    }
}

fn summarize_daemon(status: &serde_json::Value) -> String {
    let field = |key: &str| {
        status
            .get(key)
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_else(|| "?".into())
    };
    format!(
        "{} epoch {} healthy {} quorum {} primary {}",
        field("role"),
        field("epoch"),
        field("healthy"),
        field("has_quorum"),
        field("primary")
    )
}

/// What `down` removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DownReport {
    pub lab: String,
    pub namespaces_removed: Vec<String>,
    pub processes_killed: usize,
    pub state_dir_removed: bool,
    /// The members' CPU quota cgroups existed and were removed.
    pub cgroups_removed: bool,
}

impl fmt::Display for DownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespaces_removed.is_empty() && !self.state_dir_removed && !self.cgroups_removed {
            return writeln!(f, "lab {}: nothing to remove", self.lab);
        }
        writeln!(
            f,
            "lab {}: killed {} processes, removed {} namespaces{}{}",
            self.lab,
            self.processes_killed,
            self.namespaces_removed.len(),
            if self.state_dir_removed {
                " and the state directory"
            } else {
                ""
            },
            if self.cgroups_removed {
                " (and the CPU quota cgroups)"
            } else {
                ""
            }
        )
    }
}

/// Kills every process of the lab's namespaces, deletes the namespaces (and with them the
/// bridge, the links and the partition rules) and the state directory. A lab that does not
/// exist is not an error: `down` can always be run again.
pub fn down(name: &str) -> Result<DownReport, LabError> {
    let lab = LabName::parse(name)?;
    let namespaces = existing_namespaces(&lab);
    let mut processes_killed = 0;
    // Kill first: a namespace with a process left in it lives on after `ip netns del`.
    for ns in &namespaces {
        processes_killed += kill_all_in(ns, Duration::from_secs(5))?;
    }
    for ns in &namespaces {
        if let Err(e) = ip(&["netns", "del", ns]) {
            // Another `down` may have removed it meanwhile.
            if namespace_exists(ns) {
                return Err(e);
            }
        }
    }
    // After the kill: a cgroup is removed only once its processes are gone.
    let cgroups_removed =
        crate::cpu_quota::remove(lab.as_str()).map_err(|source| LabError::CpuQuota {
            lab: lab.to_string(),
            source,
        })?;
    let dir = state_dir(&lab);
    let state_dir_removed = match std::fs::remove_dir_all(&dir) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(LabError::io("removing the state directory", &dir, e)),
    };
    Ok(DownReport {
        lab: lab.to_string(),
        namespaces_removed: namespaces,
        processes_killed,
        state_dir_removed,
        cgroups_removed,
    })
}

/// Tears down every lab: those with a state directory under /run/steadfast-lab, and those
/// whose namespaces (`-sw`, `-client`, `-nI`, `-w`) match a state directory. Namespaces with
/// no state directory are left alone: they may not be the lab's.
pub fn down_all() -> Result<Vec<DownReport>, LabError> {
    let mut labs: Vec<String> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(STATE_ROOT) {
        for entry in entries.filter_map(|e| e.ok()) {
            if entry.path().is_dir() {
                if let Ok(name) = entry.file_name().into_string() {
                    labs.push(name);
                }
            }
        }
    }
    for ns in list_namespaces() {
        if let Some(owner) = LabName::owner_of_namespace(&ns) {
            if Path::new(STATE_ROOT).join(&owner).is_dir() {
                labs.push(owner);
            }
        }
    }
    // A lab killed before its `down` may have left only its cgroups.
    labs.extend(crate::cpu_quota::labs_with_cgroups());
    labs.sort();
    labs.dedup();
    labs.into_iter()
        .filter(|name| LabName::parse(name).is_ok())
        .map(|name| down(&name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_found_in_the_kernel_tcp_table() {
        // 10.77.0.100:80 listening, 127.0.0.1:80 listening, and an established connection
        // from the VIP's port 80 (not a listener).
        let vip = u32::from_ne_bytes([10, 77, 0, 100]);
        let lo = u32::from_ne_bytes([127, 0, 0, 1]);
        let table = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             \x20  0: {lo:08X}:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n\
             \x20  1: {vip:08X}:0050 0200{client:04X}:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n",
            client = 0x4D0Au16,
        );
        let service = SocketAddrV4::new(VIP, crate::topology::SERVICE_PORT);
        assert!(tcp_table_listens_on(
            &table,
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 80)
        ));
        assert!(!tcp_table_listens_on(&table, service));
        let listening = format!(
            "{table}   2: {vip:08X}:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1\n"
        );
        assert!(tcp_table_listens_on(&listening, service));
        assert!(!tcp_table_listens_on(
            &listening,
            SocketAddrV4::new(VIP, 81)
        ));
        assert!(!tcp_table_listens_on("", service));
    }
}
