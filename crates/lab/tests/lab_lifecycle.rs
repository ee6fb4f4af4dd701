//! The lab's own life cycle in real namespaces (run as root): build, probe, crash, heal,
//! partition and tear down, without daemons (those come with the node binary): the VIP is put on
//! a node by hand where a test needs it.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use steadfast_lab::generator::expected_bytes;
use steadfast_lab::state::STATE_ROOT;
use steadfast_lab::webservers::bytes_path;
use steadfast_lab::{
    crash, down, heal, http_get_in_namespace, info, partition, pids_in_namespace, status,
    unpartition, up, BackendKind, CrashKind, DaemonView, HealReport, HttpReply, LabError, Mode,
    UpOptions,
};

/// The real builtin backend, and a stand-in daemon that only takes the VIP on member 1 and
/// answers on its control socket (see its source): enough to drive the lab's process handling.
const STANDIN_EXE: &str = env!("CARGO_BIN_EXE_steadfast-lab-standin");

fn unique_name(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("t{tag}{}-{n}", std::process::id())
}

/// Tears the lab down however the test ends.
struct LabGuard(String);

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = down(&self.0) {
            eprintln!("tearing down lab {}: {e}", self.0);
        }
    }
}

fn options(name: &str, nodes: u8, backend: BackendKind) -> UpOptions {
    let mut opts = UpOptions::new(name, nodes, STANDIN_EXE);
    opts.backend = backend;
    opts.start_daemons = false;
    opts
}

fn get(namespace: &str, target: &str, path: &str) -> Result<HttpReply, LabError> {
    let target: SocketAddr = target.parse().unwrap();
    http_get_in_namespace(namespace, target, path, Duration::from_millis(700))
}

fn served_by(namespace: &str, target: &str) -> String {
    let reply = get(namespace, target, "/health")
        .unwrap_or_else(|e| panic!("GET /health on {target} from {namespace}: {e}"));
    assert_eq!(reply.status, 200, "GET /health on {target}");
    reply.node.expect("every reply names its node")
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn namespace_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

#[test]
fn refusals_happen_before_anything_is_built() {
    let name = unique_name("r");
    let mut opts = options(&name, 1, BackendKind::Builtin);
    opts.mode = Mode::Duplex;
    let e = up(&opts).unwrap_err();
    assert!(
        e.to_string().contains("mode duplex needs at least 2 nodes"),
        "{e}"
    );
    assert!(matches!(up(&opts), Err(LabError::ModeNeedsNodes { .. })));
    assert!(!namespace_exists(&format!("{name}-sw")));
    assert_eq!("active".parse::<Mode>(), Ok(Mode::Active));
    let mut active_web = options(&name, 1, BackendKind::Builtin);
    active_web.mode = Mode::Active;
    assert!(
        up(&active_web)
            .unwrap_err()
            .to_string()
            .contains("active mode replicates Redis only"),
        "active mode with a web backend is refused before anything is built"
    );
    assert!(!namespace_exists(&format!("{name}-sw")));

    for bad in ["Upper", "has_underscore", "a23456789012345678901", ""] {
        let opts = options(bad, 1, BackendKind::Builtin);
        assert!(
            matches!(up(&opts), Err(LabError::InvalidName { .. })),
            "{bad:?}"
        );
    }
    for nodes in [0, 10] {
        let opts = options(&name, nodes, BackendKind::Builtin);
        assert!(matches!(up(&opts), Err(LabError::InvalidNodeCount { .. })));
    }
    let mut opts = options(&name, 1, BackendKind::Builtin);
    opts.steadfast_exe = "/nonexistent/steadfast".into();
    assert!(matches!(up(&opts), Err(LabError::MissingExecutable { .. })));

    assert!(!Path::new(STATE_ROOT).join(&name).exists());
    assert!(!namespace_exists(&format!("{name}-sw")));
    assert!(matches!(status(&name), Err(LabError::NotFound { .. })));
    // Tearing down a lab that does not exist is fine.
    let report = down(&name).unwrap();
    assert!(report.namespaces_removed.is_empty() && !report.state_dir_removed);
}

#[test]
fn builtin_two_nodes_and_witness_crash_heal_partition_down() {
    let name = unique_name("b");
    let guard = LabGuard(name.clone());
    let mut opts = options(&name, 2, BackendKind::Builtin);
    opts.witness = true;
    let lab = up(&opts).unwrap();
    let client = format!("{name}-client");
    let (n1, n2) = (format!("{name}-n1"), format!("{name}-n2"));
    assert_eq!(
        lab.to_string(),
        format!(
            "LAB={name}\nCLIENT_NS={client}\nVIP=10.77.0.100\nPORT=80\nNODES={n1},{n2}\nPRIMARY=\n"
        )
    );
    for suffix in ["sw", "client", "n1", "n2", "w"] {
        assert!(namespace_exists(&format!("{name}-{suffix}")), "{suffix}");
    }
    let dir = Path::new(STATE_ROOT).join(&name);
    let key = std::fs::read_to_string(dir.join("key")).unwrap();
    assert_eq!(key.len(), 64);
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
    let mode = std::fs::metadata(dir.join("key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    for file in ["n1.toml", "n2.toml", "w.toml", "commits.log", "state.json"] {
        assert!(dir.join(file).is_file(), "{file}");
    }
    let again = up(&opts).unwrap_err();
    assert!(matches!(again, LabError::AlreadyExists { .. }), "{again}");

    // Each backend answers on its node's own address from the client.
    assert_eq!(served_by(&client, "10.77.0.11:80"), "n1");
    assert_eq!(served_by(&client, "10.77.0.12:80"), "n2");
    // The witness and the client are on the bridge too.
    let witness = format!("{name}-w");
    assert!(get(&witness, "10.77.0.11:80", "/health").is_ok());

    // The VIP, placed by hand as a daemon would, reaches n1's backend.
    ip(&["-n", &n1, "addr", "add", "10.77.0.100/24", "dev", "eth0"]);
    assert_eq!(served_by(&client, "10.77.0.100:80"), "n1");
    assert_eq!(info(&name).unwrap().primary.as_deref(), Some(n1.as_str()));
    let st = status(&name).unwrap();
    assert_eq!(st.vip_holders, vec![n1.clone()]);
    let host = |st: &steadfast_lab::LabStatus, short: &str| {
        st.hosts.iter().find(|h| h.host == short).cloned().unwrap()
    };
    let h1 = host(&st, "n1");
    assert_eq!(
        (h1.link_up, h1.backend_running, h1.holds_vip),
        (Some(true), Some(true), true)
    );
    assert_eq!(h1.daemon, Some(DaemonView::NotStarted));
    assert_eq!(host(&st, "w").backend_running, None);
    assert_eq!(host(&st, "client").daemon, None);
    assert!(st.to_string().contains(&n1));
    let json = serde_json::to_value(&st).unwrap();
    assert_eq!(json["hosts"][0]["daemon"]["state"], "not_started");

    // Without daemons there is no daemon to kill or freeze.
    for how in [CrashKind::Process, CrashKind::Freeze] {
        let e = crash(&name, "n1", how).unwrap_err();
        assert!(matches!(e, LabError::CrashNotApplicable { .. }), "{e}");
    }
    assert!(matches!(
        crash(&name, "client", CrashKind::Host),
        Err(LabError::CrashNotApplicable { .. })
    ));
    assert!(matches!(
        crash(&name, "n7", CrashKind::Host),
        Err(LabError::UnknownHost { .. })
    ));

    // Host crash of the primary: every process gone, the cable cut.
    assert!(!pids_in_namespace(&n1).is_empty());
    let report = crash(&name, "primary", CrashKind::Host).unwrap();
    assert_eq!(report.namespace, n1);
    assert!(report
        .to_string()
        .contains(&format!("NODE={n1}\nHOW=host\n")));
    assert!(pids_in_namespace(&n1).is_empty());
    let h1 = host(&status(&name).unwrap(), "n1");
    assert_eq!(h1.link_up, Some(false));
    assert_eq!(h1.backend_running, Some(false));
    assert_eq!(h1.crash.map(|c| c.how), Some(CrashKind::Host));
    assert!(get(&client, "10.77.0.11:80", "/health").is_err());
    assert!(get(&client, "10.77.0.100:80", "/health").is_err());
    assert_eq!(served_by(&client, "10.77.0.12:80"), "n2");
    assert!(matches!(
        crash(&name, "n1", CrashKind::Link),
        Err(LabError::AlreadyCrashed { .. })
    ));

    // Heal: cable back, backend restarted, the VIP taken off the healed node.
    match heal(&name, &n1).unwrap() {
        HealReport::Healed { how, restarted, .. } => {
            assert_eq!(how, CrashKind::Host);
            assert_eq!(restarted, vec!["backend".to_string()]);
        }
        other => panic!("{other:?}"),
    }
    let h1 = host(&status(&name).unwrap(), "n1");
    assert_eq!(
        (h1.link_up, h1.backend_running, h1.holds_vip, h1.crash),
        (Some(true), Some(true), false, None)
    );
    assert_eq!(served_by(&client, "10.77.0.11:80"), "n1");
    assert!(matches!(
        heal(&name, "n1").unwrap(),
        HealReport::NotCrashed { .. }
    ));

    // Backend crash: n2's kernel and cable stay, its server does not.
    crash(&name, &n2, CrashKind::Backend).unwrap();
    assert!(get(&client, "10.77.0.12:80", "/health").is_err());
    let h2 = host(&status(&name).unwrap(), "n2");
    assert_eq!((h2.backend_running, h2.link_up), (Some(false), Some(true)));
    heal(&name, "n2").unwrap();
    assert_eq!(served_by(&client, "10.77.0.12:80"), "n2");

    // Link crash: the backend lives on behind a cut cable.
    crash(&name, "n2", CrashKind::Link).unwrap();
    assert!(get(&client, "10.77.0.12:80", "/health").is_err());
    assert!(host(&status(&name).unwrap(), "n2").backend_running == Some(true));
    match heal(&name, "n2").unwrap() {
        HealReport::Healed { restarted, .. } => assert!(restarted.is_empty()),
        other => panic!("{other:?}"),
    }
    assert_eq!(served_by(&client, "10.77.0.12:80"), "n2");

    // Partition: the client loses n1 only, both ways, until unpartitioned.
    partition(&name, "client", "n1").unwrap();
    assert!(get(&client, "10.77.0.11:80", "/health").is_err());
    assert_eq!(served_by(&client, "10.77.0.12:80"), "n2");
    assert!(get(&witness, "10.77.0.11:80", "/health").is_ok());
    assert_eq!(status(&name).unwrap().partitions.len(), 1);
    unpartition(&name, "n1", "client").unwrap();
    assert_eq!(served_by(&client, "10.77.0.11:80"), "n1");
    assert!(status(&name).unwrap().partitions.is_empty());

    let report = down(&name).unwrap();
    assert_eq!(report.namespaces_removed.len(), 5);
    assert!(report.state_dir_removed);
    for suffix in ["sw", "client", "n1", "n2", "w"] {
        assert!(!namespace_exists(&format!("{name}-{suffix}")), "{suffix}");
    }
    assert!(!dir.exists());
    drop(guard);
    let report = down(&name).unwrap();
    assert!(report.namespaces_removed.is_empty() && !report.state_dir_removed);
}

fn static_server_serves_docroot(backend: BackendKind) {
    let name = unique_name(&backend.to_string()[..1]);
    let _guard = LabGuard(name.clone());
    let lab = up(&options(&name, 1, backend)).unwrap();
    let client = &lab.client_ns;
    assert_eq!(served_by(client, "10.77.0.11:80"), "n1");
    for size in [1024u64, 10 * 1024, 50 * 1024, 1024 * 1024] {
        let reply = get(client, "10.77.0.11:80", &bytes_path(size)).unwrap();
        assert_eq!(reply.status, 200, "{backend} size {size}");
        assert_eq!(reply.node.as_deref(), Some("n1"));
        assert!(
            reply.body == expected_bytes(size, 0),
            "{backend} size {size}"
        );
    }
    let missing = get(client, "10.77.0.11:80", "/nothing-here").unwrap();
    assert_eq!(missing.status, 404);
    assert_eq!(missing.node.as_deref(), Some("n1"));

    crash(&name, "n1", CrashKind::Backend).unwrap();
    assert!(get(client, "10.77.0.11:80", "/health").is_err());
    assert!(pids_in_namespace(&format!("{name}-n1")).is_empty());
    heal(&name, "n1").unwrap();
    assert_eq!(served_by(client, "10.77.0.11:80"), "n1");
    down(&name).unwrap();
    assert!(!namespace_exists(&format!("{name}-n1")));
}

#[test]
#[ignore = "needs nginx: apt-get install nginx-light (.ci/run installs it)"]
fn nginx_serves_the_docroot_and_restarts() {
    static_server_serves_docroot(BackendKind::Nginx);
}

#[test]
#[ignore = "needs apache2: apt-get install apache2 (.ci/run installs it)"]
fn apache2_serves_the_docroot_and_restarts() {
    static_server_serves_docroot(BackendKind::Apache2);
}

fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

fn daemon_pid(name: &str, short: &str) -> i32 {
    let text =
        std::fs::read_to_string(Path::new(STATE_ROOT).join(name).join("state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    state["hosts"][short]["daemon_pid"].as_i64().unwrap() as i32
}

fn daemon_role(name: &str, short: &str) -> Option<String> {
    let st = status(name).unwrap();
    let h = st.hosts.into_iter().find(|h| h.host == short).unwrap();
    match h.daemon {
        Some(DaemonView::Answered { status }) => status["role"].as_str().map(str::to_string),
        _ => None,
    }
}

#[test]
fn daemons_are_started_crashed_and_restarted() {
    let name = unique_name("d");
    let _guard = LabGuard(name.clone());
    let mut opts = UpOptions::new(&name, 2, STANDIN_EXE);
    opts.witness = true;
    opts.heartbeat_ms = Some(10);
    opts.ready_timeout = Duration::from_secs(10);
    let lab = up(&opts).unwrap();
    let n1 = format!("{name}-n1");
    assert_eq!(lab.primary.as_deref(), Some(n1.as_str()));
    assert_eq!(served_by(&lab.client_ns, "10.77.0.100:80"), "n1");
    assert_eq!(daemon_role(&name, "n1").as_deref(), Some("primary"));
    assert_eq!(daemon_role(&name, "n2").as_deref(), Some("backup"));
    assert_eq!(daemon_role(&name, "w").as_deref(), Some("witness"));
    let config =
        std::fs::read_to_string(Path::new(STATE_ROOT).join(&name).join("n2.toml")).unwrap();
    assert!(config.contains("heartbeat_interval_ms = 10"), "{config}");

    // Freeze: the daemon stops answering; heal kills it rather than resuming it.
    let frozen = daemon_pid(&name, "n2");
    crash(&name, "n2", CrashKind::Freeze).unwrap();
    assert_eq!(process_state(frozen), Some('T'));
    let st = status(&name).unwrap();
    let h2 = st.hosts.iter().find(|h| h.host == "n2").unwrap();
    assert!(
        matches!(h2.daemon, Some(DaemonView::Unreachable { .. })),
        "{:?}",
        h2.daemon
    );
    match heal(&name, "n2").unwrap() {
        HealReport::Healed { restarted, .. } => assert_eq!(restarted, vec!["daemon".to_string()]),
        other => panic!("{other:?}"),
    }
    assert!(!matches!(process_state(frozen), Some('T' | 'S' | 'R')));
    assert_ne!(daemon_pid(&name, "n2"), frozen);
    assert_eq!(daemon_role(&name, "n2").as_deref(), Some("backup"));

    // Process crash of the primary: its daemon only; the backend stays.
    let killed = daemon_pid(&name, "n1");
    let report = crash(&name, "primary", CrashKind::Process).unwrap();
    assert_eq!(report.namespace, n1);
    assert!(process_state(killed).is_none() || process_state(killed) == Some('Z'));
    assert_eq!(served_by(&lab.client_ns, "10.77.0.11:80"), "n1");
    heal(&name, "n1").unwrap();
    assert_eq!(daemon_role(&name, "n1").as_deref(), Some("primary"));

    // Host crash of the witness: no backend to restart, the daemon comes back.
    crash(&name, "w", CrashKind::Host).unwrap();
    assert!(pids_in_namespace(&format!("{name}-w")).is_empty());
    assert!(matches!(
        crash(&name, "w", CrashKind::Backend),
        Err(LabError::AlreadyCrashed { .. })
    ));
    match heal(&name, "w").unwrap() {
        HealReport::Healed { restarted, .. } => assert_eq!(restarted, vec!["daemon".to_string()]),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        crash(&name, "w", CrashKind::Backend),
        Err(LabError::CrashNotApplicable { .. })
    ));

    // Host crash of a member: both come back.
    crash(&name, "n2", CrashKind::Host).unwrap();
    match heal(&name, "n2").unwrap() {
        HealReport::Healed { restarted, .. } => {
            assert_eq!(restarted, vec!["backend".to_string(), "daemon".to_string()])
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(served_by(&lab.client_ns, "10.77.0.12:80"), "n2");
    let report = down(&name).unwrap();
    assert_eq!(report.namespaces_removed.len(), 5);
}
