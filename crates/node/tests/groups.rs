//! Two groups on the same hosts, one daemon each per host (as `steadfast@web` and
//! `steadfast@mail` would run them): each fails over on its own, and the crash of one group's
//! daemon leaves the other group's address, primary and clients alone. Needs root (network
//! namespaces).

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{BackgroundLoad, Lab};
use steadfast_lab::load::{LoadOptions, LoadReport, Outage};
use steadfast_lab::{BackendKind, CrashKind, Mode};

/// The second group's name suffix, port and address offset from the lab's own group.
const SECOND: &str = "mail";
const SECOND_PORT: u16 = 7500;

/// The second group's daemons, one per voter of the lab, killed on drop (the lab's `down`
/// kills what runs in its namespaces too).
struct SecondGroup {
    lab_name: String,
    vip: Ipv4Addr,
    state_dir: PathBuf,
    daemons: Vec<(String, Child)>,
}

impl SecondGroup {
    /// Writes each voter's configuration of the second group from the lab's own (another
    /// name, group port, address, control socket, metrics port and hook log) and starts its
    /// daemons in the lab's namespaces.
    fn start(lab: &Lab) -> SecondGroup {
        let [a, b, c, d] = lab.info.vip.octets();
        let vip = Ipv4Addr::new(a, b, c, d + 1);
        let mut voters: Vec<String> = (1..=lab.info.nodes.len())
            .map(|i| format!("n{i}"))
            .collect();
        if lab.info.witness_ns.is_some() {
            voters.push("w".to_string());
        }
        let mut group = SecondGroup {
            lab_name: lab.name().to_string(),
            vip,
            state_dir: lab.info.state_dir.clone(),
            daemons: Vec::new(),
        };
        for host in voters {
            let own = std::fs::read_to_string(lab.info.state_dir.join(format!("{host}.toml")))
                .expect("the lab's configuration");
            let second = own
                .replace(
                    &format!("name = \"{}\"", lab.name()),
                    &format!("name = \"{}-{SECOND}\"\nport = {SECOND_PORT}", lab.name()),
                )
                .replace(
                    &format!("vip = \"{}\"", lab.info.vip),
                    &format!("vip = \"{vip}\""),
                )
                .replace(
                    &format!("socket = \"{host}.sock\""),
                    &format!("socket = \"{host}-{SECOND}.sock\""),
                )
                .replace(":9550\"", ":9551\"")
                .replace("hooks.log", &format!("hooks-{SECOND}.log"));
            assert_ne!(own, second, "{host}'s configuration changed nothing");
            let path = lab.info.state_dir.join(format!("{host}-{SECOND}.toml"));
            std::fs::write(&path, second).expect("writing the second group's configuration");
            let log = std::fs::File::create(
                lab.info
                    .state_dir
                    .join(format!("{host}-{SECOND}.daemon.log")),
            )
            .expect("the daemon's log");
            let child = Command::new("ip")
                .args(["netns", "exec", &format!("{}-{host}", lab.name())])
                .arg(common::daemon_exe())
                .args([if host == "w" { "witness" } else { "run" }, "--config"])
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("starting a daemon of the second group");
            group.daemons.push((host, child));
        }
        group
    }

    fn target(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.vip, port))
    }

    /// Hosts whose namespace carries the second group's address.
    fn holders(&self) -> Vec<String> {
        let mut holders = Vec::new();
        for (host, _) in &self.daemons {
            let out = Command::new("ip")
                .args([
                    "-n",
                    &format!("{}-{host}", self.lab_name),
                    "-4",
                    "addr",
                    "show",
                ])
                .output()
                .expect("ip addr");
            if String::from_utf8_lossy(&out.stdout).contains(&format!("inet {}/", self.vip)) {
                holders.push(host.clone());
            }
        }
        holders
    }

    fn status(&self, host: &str) -> serde_json::Value {
        let socket = self.state_dir.join(format!("{host}-{SECOND}.sock"));
        steadfast_lab::lab::query_control_socket(&socket)
            .unwrap_or_else(|e| panic!("status of {host} in the second group: {e}"))
    }

    /// Kills the second group's daemon on `host` (SIGKILL: a process crash).
    fn crash(&mut self, host: &str) {
        let (_, child) = self
            .daemons
            .iter_mut()
            .find(|(h, _)| h == host)
            .expect("a daemon of the second group there");
        // `ip netns exec` runs the daemon in its own place (exec): the child is the daemon.
        child.kill().expect("killing the daemon");
        let _ = child.wait();
    }
}

impl Drop for SecondGroup {
    fn drop(&mut self) {
        for (_, child) in &mut self.daemons {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn probes(target: SocketAddr) -> LoadOptions {
    LoadOptions::probes_only(target, Duration::from_secs(30))
}

fn outages(report: &LoadReport) -> Vec<Outage> {
    report.summary().outages
}

/// The one node holding an address, once exactly one does (within 5 s).
fn single(holders: impl Fn() -> Vec<String>, what: &str) -> String {
    assert!(
        common::wait_until(Duration::from_secs(5), || holders().len() == 1),
        "{what}: one holder expected, {:?}",
        holders()
    );
    holders().remove(0)
}

fn two_groups_fail_over_independently(mode: Mode) {
    let lab = Lab::up_in_mode("grp", 2, true, BackendKind::Builtin, Some(10), mode);
    let mut second = SecondGroup::start(&lab);
    let first_primary = single(|| lab.holders(), "the lab's group");
    let second_primary = single(|| second.holders(), "the second group");
    eprintln!("primaries: first group {first_primary}, second group {second_primary}");
    assert_eq!(
        second.status(&second_primary)["role"],
        "primary",
        "{}",
        second.status(&second_primary)
    );

    if mode == Mode::Duplex {
        // Each group's backup protects its own primary: two loggers, two guards, two
        // replication links side by side on the same hosts.
        let joined = |status: &serde_json::Value| {
            status["data_plane"]["backups_joined"].as_u64().unwrap_or(0) >= 1
        };
        assert!(
            common::wait_until(Duration::from_secs(10), || joined(
                &lab.daemon_status(&first_primary)
            ) && joined(
                &second.status(&second_primary)
            )),
            "a backup should join each group: {} / {}",
            lab.daemon_status(&first_primary)["data_plane"],
            second.status(&second_primary)["data_plane"]
        );
    }
    let first_load = BackgroundLoad::start_with(&lab, probes(lab.target()));
    let second_load = BackgroundLoad::start_with(&lab, probes(second.target(lab.info.port)));
    first_load.wait_for_successes(0, 30, Duration::from_secs(5), "the first group's probes");
    second_load.wait_for_successes(0, 30, Duration::from_secs(5), "the second group's probes");

    // The second group's primary daemon dies: only the second group moves.
    let second_crash = second_load.started.elapsed();
    second.crash(&second_primary);
    let other = if second_primary == "n1" { "n2" } else { "n1" };
    assert!(
        common::wait_until(Duration::from_secs(3), || second
            .holders()
            .into_iter()
            .filter(|h| h != &second_primary)
            .collect::<Vec<_>>()
            == vec![other.to_string()]),
        "the second group's address should move to {other}: {:?}",
        second.holders()
    );
    let since = second_load.successes();
    second_load.wait_for_successes(
        since,
        30,
        Duration::from_secs(5),
        "the second group after its failover",
    );
    assert_eq!(
        lab.holders(),
        vec![first_primary.clone()],
        "the first group's address stays where it was"
    );
    assert_eq!(lab.daemon_status(&first_primary)["role"], "primary");
    if mode == Mode::Duplex {
        assert!(
            common::wait_until(Duration::from_secs(3), || second.status(other)
                ["data_plane"]["takeovers"]
                == 1),
            "the second group's backup took its connections over: {}",
            second.status(other)["data_plane"]
        );
        assert_eq!(
            lab.daemon_status(other)["data_plane"]["takeovers"],
            0,
            "the first group's backup took nothing over"
        );
    }

    // Now the first group's primary daemon dies: only the first group moves.
    // The crashed daemon's kernel keeps the address configured, and silent (its fence).
    let second_now = other.to_string();
    let second_live_holders = |second: &SecondGroup| {
        second
            .holders()
            .into_iter()
            .filter(|h| h != &second_primary)
            .collect::<Vec<_>>()
    };
    let first_crash = first_load.started.elapsed();
    let second_at_first_crash = second_load.started.elapsed();
    steadfast_lab::crash(lab.name(), &first_primary, CrashKind::Process).expect("crash");
    let first_other = if first_primary == "n1" { "n2" } else { "n1" };
    assert!(
        common::wait_until(Duration::from_secs(3), || lab
            .holders_except(&first_primary)
            == vec![first_other.to_string()]),
        "the first group's address should move to {first_other}: {:?}",
        lab.holders()
    );
    let since = first_load.successes();
    first_load.wait_for_successes(
        since,
        30,
        Duration::from_secs(5),
        "the first group after its failover",
    );
    assert_eq!(
        second_live_holders(&second),
        vec![second_now.clone()],
        "the second group's address stays where it was"
    );
    assert_eq!(second.status(&second_now)["role"], "primary");

    let first_report = first_load.stop();
    let second_report = second_load.stop();
    let (first_outages, second_outages) = (outages(&first_report), outages(&second_report));
    eprintln!(
        "{mode:?}: first group {} probes, outages {first_outages:?}; second group {} probes, \
         outages {second_outages:?}",
        first_report.probes.len(),
        second_report.probes.len()
    );
    // Each group's clients saw at most one outage, during their own group's failover: none
    // before it, and none of the second group's once the first group's failover began.
    for outage in &first_outages {
        assert!(
            outage.to >= first_crash,
            "the first group's clients failed before its own failover: {outage:?}, crash at \
             {first_crash:?}"
        );
    }
    for outage in &second_outages {
        assert!(
            outage.to >= second_crash && outage.from < second_at_first_crash,
            "the second group's clients failed outside their own failover (crash at \
             {second_crash:?}, the first group's at {second_at_first_crash:?}): {outage:?}"
        );
    }
    assert!(
        first_outages.len() <= 1 && second_outages.len() <= 1,
        "one failover each: {first_outages:?} {second_outages:?}"
    );
    for outage in first_outages.iter().chain(&second_outages) {
        assert!(
            outage.duration < Duration::from_secs(1),
            "a failover of a 10 ms heartbeat group took {outage:?}"
        );
    }
}

#[test]
fn two_unreplicated_groups_on_the_same_hosts_fail_over_independently() {
    two_groups_fail_over_independently(Mode::Unreplicated);
}

#[test]
fn two_duplex_groups_on_the_same_hosts_fail_over_independently() {
    two_groups_fail_over_independently(Mode::Duplex);
}
