//! The lab's command-line contract, driven through the binary exactly as scripts outside the
//! project drive it, in the replicated modes: `lab up --mode duplex|simplex` prints its
//! `KEY=VALUE` lines and returns once the VIP answers; `status --json`, `crash primary --how
//! host`, `heal` and `down` work. Needs root.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::steadfast_lab;

/// `lab down NAME` when the test ends, also on panic.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = steadfast_lab(&["lab", "down", &self.0]);
    }
}

fn holders(name: &str) -> Vec<String> {
    let (ok, out, err) = steadfast_lab(&["lab", "status", name, "--json"]);
    assert!(ok, "lab status: {err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
    status["vip_holders"]
        .as_array()
        .expect("vip_holders")
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect()
}

fn contract(mode: &str) {
    let name = format!("k{}{}", &mode[..1], std::process::id() % 100_000);
    let _down = Down(name.clone());
    let (ok, out, err) = steadfast_lab(&[
        "lab",
        "up",
        "--name",
        &name,
        "--nodes",
        "2",
        "--witness",
        "--mode",
        mode,
        "--backend",
        "builtin",
        "--heartbeat-ms",
        "20",
    ]);
    assert!(ok, "lab up --mode {mode}: {err}");
    let keys: BTreeMap<&str, &str> = out.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(keys.get("LAB"), Some(&name.as_str()), "{out}");
    assert_eq!(
        keys.get("CLIENT_NS"),
        Some(&format!("{name}-client").as_str())
    );
    assert_eq!(keys.get("PORT"), Some(&"80"));
    assert_eq!(
        keys.get("NODES"),
        Some(&format!("{name}-n1,{name}-n2").as_str())
    );
    let primary = keys["PRIMARY"].to_string();
    assert!(primary.starts_with(&format!("{name}-n")), "{out}");
    let vip: std::net::Ipv4Addr = keys["VIP"].parse().expect("VIP is an address");
    let target = SocketAddr::new(vip.into(), 80);
    let client = keys["CLIENT_NS"].to_string();
    let get =
        || steadfast_lab::http_get_in_namespace(&client, target, "/uuid", Duration::from_secs(2));
    assert_eq!(get().expect("the VIP answers").status, 200);
    assert_eq!(holders(&name), vec![primary.clone()]);

    let (ok, _, err) = steadfast_lab(&["lab", "crash", &name, "primary", "--how", "host"]);
    assert!(ok, "lab crash: {err}");
    let other = if primary.ends_with("n1") {
        format!("{name}-n2")
    } else {
        format!("{name}-n1")
    };
    assert!(
        common::wait_until(Duration::from_secs(5), || holders(&name)
            .into_iter()
            .filter(|h| *h != primary)
            .eq([other.clone()])),
        "{other} takes the address in {mode}"
    );
    assert!(
        common::wait_until(Duration::from_secs(5), || get()
            .is_ok_and(|r| r.status == 200)),
        "the VIP answers from {other}"
    );
    let (ok, _, err) = steadfast_lab(&["lab", "heal", &name, &primary]);
    assert!(ok, "lab heal (by namespace name): {err}");
    let (ok, out, err) = steadfast_lab(&["lab", "status", &name]);
    assert!(ok && out.contains(&other), "lab status: {out}{err}");
    let (ok, _, err) = steadfast_lab(&["lab", "down", &name]);
    assert!(ok, "lab down: {err}");
    let (ok, _, _) = steadfast_lab(&["lab", "status", &name]);
    assert!(!ok, "the lab is gone");
    assert!(
        !common::namespace_exists(&client),
        "lab down removed {client}"
    );
}

#[test]
fn lab_contract_in_duplex_mode() {
    contract("duplex");
}

#[test]
fn lab_contract_in_simplex_mode() {
    contract("simplex");
}

/// The pids a cgroup holds, with their command names.
fn cgroup_members(dir: &std::path::Path) -> Vec<(i32, String)> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (pid, comm.trim().to_string())
        })
        .collect()
}

/// `lab up --cpu-quota`: each member's daemon and backend run in a cgroup of the member's own
/// holding the quota, a healed member's new processes go back into it, and `lab down` removes
/// the cgroups.
#[test]
fn lab_cpu_quota_holds_each_members_processes_and_goes_with_the_lab() {
    let name = format!("kq{}", std::process::id() % 100_000);
    let _down = Down(name.clone());
    let (ok, _, err) = steadfast_lab(&[
        "lab",
        "up",
        "--name",
        &name,
        "--nodes",
        "2",
        "--mode",
        "unreplicated",
        "--backend",
        "builtin",
        "--cpu-quota",
        "0.3",
    ]);
    assert!(ok, "lab up --cpu-quota 0.3: {err}");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("/run/steadfast-lab/{name}/state.json"))
            .expect("the lab's state file"),
    )
    .expect("state.json is JSON");
    let dir = std::path::PathBuf::from(state["cgroup_dir"].as_str().expect("cgroup_dir"));
    assert!(dir.ends_with(format!("steadfast-lab-{name}")), "{dir:?}");
    let quota_of = |node: &str| {
        let node = dir.join(node);
        match std::fs::read_to_string(node.join("cpu.max")) {
            Ok(max) => max.trim().to_string(),
            Err(_) => std::fs::read_to_string(node.join("cpu.cfs_quota_us"))
                .expect("cpu.max (v2) or cpu.cfs_quota_us (v1)")
                .trim()
                .to_string(),
        }
    };
    let check = |node: &str| {
        let quota = quota_of(node);
        assert!(
            quota == "30000" || quota == "30000 100000",
            "{node}: 0.3 core is 30 ms each 100 ms, got {quota:?}"
        );
        let members = cgroup_members(&dir.join(node));
        let daemons = members.iter().filter(|(_, c)| c == "steadfast-lab").count();
        // The builtin backend is `steadfast-lab backend`: a member runs two of them.
        assert_eq!(
            daemons, 2,
            "{node}: its daemon and its backend: {members:?}"
        );
    };
    check("n1");
    check("n2");
    // The daemon's heartbeat thread got its realtime priority inside the cgroup.
    let log = std::fs::read_to_string(format!("/run/steadfast-lab/{name}/n1.daemon.log"))
        .expect("n1's daemon log");
    assert!(
        !log.contains("cannot raise the scheduling priority"),
        "the quota cgroup refused the daemon its realtime priority:\n{log}"
    );

    let (ok, _, err) = steadfast_lab(&["lab", "crash", &name, "n2", "--how", "host"]);
    assert!(ok, "crash: {err}");
    assert!(
        cgroup_members(&dir.join("n2")).is_empty(),
        "a crashed host runs nothing"
    );
    let (ok, _, err) = steadfast_lab(&["lab", "heal", &name, "n2"]);
    assert!(ok, "heal: {err}");
    check("n2");

    let (ok, out, err) = steadfast_lab(&["lab", "down", &name]);
    assert!(ok, "lab down: {err}");
    assert!(out.contains("CPU quota cgroups"), "{out}");
    assert!(!dir.exists(), "lab down removed {dir:?}");
}

/// `lab up --delivery --read-policy`: an active lab's members get the service's choices (their
/// configuration and `status` say so), a misspelling is refused by name, and another mode
/// refuses them before building anything.
#[test]
#[ignore = "needs redis-server (the interop tier)"]
fn lab_up_sets_active_modes_delivery_and_read_policy() {
    let (ok, _, err) = steadfast_lab(&[
        "lab",
        "up",
        "--name",
        "kx",
        "--nodes",
        "2",
        "--mode",
        "duplex",
        "--backend",
        "builtin",
        "--delivery",
        "safe",
    ]);
    assert!(!ok, "a duplex lab with --delivery is refused");
    assert!(err.contains("mode duplex has no such group"), "{err}");
    assert!(
        !std::path::Path::new("/run/steadfast-lab/kx").exists(),
        "refused before building anything"
    );
    let (ok, _, err) = steadfast_lab(&[
        "lab",
        "up",
        "--name",
        "kx",
        "--nodes",
        "3",
        "--mode",
        "active",
        "--backend",
        "redis",
        "--delivery",
        "saf",
    ]);
    assert!(!ok && err.contains("unknown delivery \"saf\""), "{err}");

    let name = format!("kd{}", std::process::id() % 100_000);
    let _down = Down(name.clone());
    let (ok, _, err) = steadfast_lab(&[
        "lab",
        "up",
        "--name",
        &name,
        "--nodes",
        "3",
        "--mode",
        "active",
        "--backend",
        "redis",
        "--delivery",
        "safe",
        "--read-policy",
        "without-primary",
    ]);
    assert!(
        ok,
        "lab up --delivery safe --read-policy without-primary: {err}"
    );
    for node in ["n1", "n2", "n3"] {
        let config = std::fs::read_to_string(format!("/run/steadfast-lab/{name}/{node}.toml"))
            .expect("the member's configuration");
        assert!(
            config.contains("delivery = \"safe\"")
                && config.contains("read_policy = \"without-primary\""),
            "{node}: {config}"
        );
        let socket = format!("/run/steadfast-lab/{name}/{node}.sock");
        let status = steadfast_lab::lab::query_control_socket(std::path::Path::new(&socket))
            .expect("status");
        let active = &status["data_plane"]["active"];
        assert_eq!(active["delivery"], "safe", "{node}: {active}");
        assert_eq!(active["read_policy"], "without-primary", "{node}: {active}");
    }
}
