//! Duplex and simplex through the real daemon in namespace labs: established keep-alive
//! connections and in-flight requests survive the primary's crash; the backup is the only way
//! in (I1). Needs root (network namespaces).

mod common;

use std::time::{Duration, Instant};

use common::{BackgroundLoad, Lab};
use steadfast_lab::load::{KeepAliveOptions, LoadOptions, LoadReport, Outcome, SlowUpload};
use steadfast_lab::webservers::{DOCROOT_LARGE, DOCROOT_SEED, DOCROOT_SIZES};
use steadfast_lab::{BackendKind, CrashKind, Mode};
use steadfast_os::nftables::{
    AddressField, Batch, Chain, CmpOp, Family, Hook, NftSocket, RuleBuilder, Table,
};

fn keep_alive_load(lab: &Lab, connections: usize, limit: Duration) -> LoadOptions {
    LoadOptions {
        target: lab.target(),
        duration: limit,
        probes: None,
        keep_alive: Some(KeepAliveOptions {
            connections,
            request_timeout: Duration::from_secs(5),
            sizes: match lab.backend {
                BackendKind::Builtin => vec![1024, 10 * 1024, 100 * 1024, 1024 * 1024],
                _ => DOCROOT_SIZES.to_vec(),
            },
            include_uuid: lab.backend == BackendKind::Builtin,
            fixed_seed: (lab.backend != BackendKind::Builtin).then_some(DOCROOT_SEED),
            // Commits need the builtin backend (static servers refuse POST); a slow upload is
            // a request half received at the crash; pipelined pairs run on every backend.
            commit_sizes: if lab.backend == BackendKind::Builtin {
                vec![100, 20_000]
            } else {
                Vec::new()
            },
            slow_upload: (lab.backend == BackendKind::Builtin).then_some(SlowUpload {
                len: 64 * 1024,
                pieces: 8,
                gap: Duration::from_millis(40),
            }),
            pipelined: true,
            chunked_bytes: lab.backend == BackendKind::Builtin,
            pause: Duration::from_millis(2),
            reconnect_delay: Duration::from_millis(10),
        }),
    }
}

/// Every commit the client saw acknowledged is in the lab's data tier exactly once, and no
/// commit is there twice.
fn assert_exactly_once(lab: &Lab, report: &LoadReport, what: &str) {
    let ids = report.committed_ids();
    let verdict =
        steadfast_lab::data_tier::check_exactly_once(&lab.info.state_dir.join("commits.log"), &ids)
            .expect("read the data tier");
    eprintln!(
        "{what}: {} commits acknowledged, {} missing, {} recorded twice",
        verdict.acknowledged,
        verdict.missing.len(),
        verdict.duplicated.len()
    );
    assert!(verdict.holds(), "{what}: exactly-once broken: {verdict:?}");
    if lab.backend == BackendKind::Builtin {
        assert!(!ids.is_empty(), "{what}: the load committed nothing");
    }
}

fn assert_clean(report: &LoadReport, what: &str) {
    let summary = report.summary();
    let failures: Vec<String> = report
        .connections
        .iter()
        .flat_map(|c| {
            c.requests.iter().filter_map(move |r| match &r.outcome {
                Outcome::Err(failure) => Some(format!(
                    "connection {} at {:?} after {:?}: {}",
                    c.index, r.start, r.latency, failure.detail
                )),
                Outcome::Ok { .. } => None,
            })
        })
        .take(10)
        .collect();
    for failure in &failures {
        eprintln!("{what}: {failure}");
    }
    assert!(
        report.requests() > 0,
        "{what}: the load made no request: {summary:?}"
    );
    assert_eq!(
        report.failures(),
        0,
        "{what}: client errors {:?}; summary {summary:?}",
        report.error_counts()
    );
}

#[test]
fn simplex_serves_keep_alive_connections_without_errors() {
    let lab = Lab::up_in_mode("sx", 1, false, BackendKind::Builtin, None, Mode::Simplex);
    let load = BackgroundLoad::start_with(&lab, keep_alive_load(&lab, 20, Duration::from_secs(20)));
    load.wait_for_successes(0, 200, Duration::from_secs(10), "simplex load");
    let report = load.stop();
    assert_clean(&report, "simplex");
    let status = lab.daemon_status("n1");
    let plane = &status["data_plane"];
    assert_eq!(plane["mode"], "simplex", "{status}");
    assert!(
        plane["replies"].as_u64().unwrap_or(0) >= report.requests() as u64,
        "every reply went through the proxy: {plane}"
    );
}

/// One host crash of the primary under keep-alive load: no client error, and the new
/// primary reports the connections it restored.
#[test]
fn duplex_keeps_established_connections_through_a_primary_host_crash() {
    let (lab, primary, backup) = protected_lab("dx");
    let backup = backup.as_str();
    let load = BackgroundLoad::start_with(&lab, keep_alive_load(&lab, 50, Duration::from_secs(30)));
    load.wait_for_successes(0, 200, Duration::from_secs(10), "before the crash");
    let crashed_at = Instant::now();
    steadfast_lab::crash(lab.name(), &primary, CrashKind::Host).expect("crash");
    assert!(
        common::wait_until(Duration::from_secs(3), || lab.holders_except(&primary)
            == vec![backup]),
        "{backup} should take over; holders {:?}",
        lab.holders()
    );
    eprintln!(
        "{backup} holds the address {:?} after the crash",
        crashed_at.elapsed()
    );
    takeover_done(&lab, backup, 0);
    load.wait_for_successes(
        load.successes(),
        200,
        Duration::from_secs(10),
        "after the takeover",
    );
    let report = load.stop();
    let status = lab.daemon_status(backup);
    eprintln!("{backup} after takeover: {}", status["data_plane"]);
    assert_clean(&report, "duplex host crash");
    let plane = &status["data_plane"];
    assert_eq!(plane["takeovers"], 1, "{plane}");
    assert!(
        plane["connections_restored"].as_u64().unwrap_or(0) >= 1,
        "{plane}"
    );
}

/// Sends `request` on a fresh connection from the client namespace and reads until the server
/// closes (or 3 s pass).
fn exchange(lab: &Lab, request: Vec<u8>) -> Vec<u8> {
    use std::io::{Read, Write};
    let target = lab.target();
    steadfast_lab::run_in_namespace(&lab.info.client_ns, move || {
        let mut stream =
            std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        stream.write_all(&request).expect("send");
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        reply
    })
    .expect("enter the client namespace")
}

#[test]
fn malformed_requests_get_400_and_do_not_disturb_other_connections() {
    let lab = Lab::up_in_mode("bx", 2, true, BackendKind::Builtin, None, Mode::Duplex);
    let load = BackgroundLoad::start_with(&lab, keep_alive_load(&lab, 10, Duration::from_secs(30)));
    load.wait_for_successes(
        0,
        50,
        Duration::from_secs(10),
        "before the malformed requests",
    );
    let smuggling = b"POST /commit HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec();
    let bad_chunk =
        b"POST /commit HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec();
    let garbage = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n".to_vec();
    for (what, request) in [
        ("smuggling", smuggling),
        ("bad chunk", bad_chunk),
        ("garbage", garbage),
    ] {
        let reply = exchange(&lab, request);
        let text = String::from_utf8_lossy(&reply);
        assert!(
            text.starts_with("HTTP/1.1 400"),
            "{what}: expected a 400, got {text:?}"
        );
    }
    // A good request after a good one on the same connection still works (keep-alive intact).
    let reply = exchange(
        &lab,
        b"GET /bytes/100?seed=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /uuid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            .to_vec(),
    );
    let text = String::from_utf8_lossy(&reply);
    assert_eq!(
        text.matches("HTTP/1.1 200").count(),
        2,
        "pipelined pair: {text:?}"
    );
    let report = load.stop();
    assert_clean(&report, "load beside malformed requests");
    let plane = &lab.daemon_status(&primary_of(&lab))["data_plane"];
    assert!(plane["bad_requests"].as_u64().unwrap_or(0) >= 3, "{plane}");
}

/// The longest time any keep-alive request of the run took (its client-visible stall).
fn longest_request(report: &LoadReport) -> Duration {
    report
        .connections
        .iter()
        .flat_map(|c| c.requests.iter().map(|r| r.latency))
        .max()
        .unwrap_or_default()
}

/// A duplex lab (2 nodes, a witness, builtin backend, 10 ms heartbeats) whose backup has
/// joined: the lab, its primary and its backup.
fn protected_lab(tag: &str) -> (Lab, String, String) {
    let lab = Lab::up_in_mode(tag, 2, true, BackendKind::Builtin, Some(10), Mode::Duplex);
    let primary = primary_of(&lab);
    let backup = other_member(&primary);
    wait_backup_joined(&lab, &primary, 0);
    (lab, primary, backup)
}

/// Waits (at most `within`) until the data plane counter `counter` of `node` exceeds `before`.
fn wait_plane_counter_above(
    lab: &Lab,
    node: &str,
    counter: &str,
    before: u64,
    within: Duration,
) -> bool {
    common::wait_until(within, || {
        lab.daemon_status(node)["data_plane"][counter]
            .as_u64()
            .unwrap_or(0)
            > before
    })
}

/// Waits until `primary` reports a backup protecting it.
fn wait_backup_joined(lab: &Lab, primary: &str, joined_before: u64) {
    assert!(
        wait_plane_counter_above(
            lab,
            primary,
            "backups_joined",
            joined_before,
            Duration::from_secs(10)
        ),
        "no backup joined {primary}: {}",
        lab.daemon_status(primary)
    );
}

/// Waits until `node` has finished more takeovers than `before` and returns its data plane's
/// status.
fn takeover_done(lab: &Lab, node: &str, before: u64) -> serde_json::Value {
    assert!(
        wait_plane_counter_above(lab, node, "takeovers", before, Duration::from_secs(5)),
        "{node} finished no takeover within 5 s: {}",
        lab.situation()
    );
    lab.daemon_status(node)["data_plane"].clone()
}

/// The node holding the VIP. Waits (up to 3 s) for exactly one: while a node steps down and
/// another is elected, both may carry the address for a moment (the stepping-down one's fence
/// keeps it silent).
fn primary_of(lab: &Lab) -> String {
    let one = common::wait_until(Duration::from_secs(3), || lab.holders().len() == 1);
    let holders = lab.holders();
    assert!(
        one && holders.len() == 1,
        "one holder expected: {holders:?}{}",
        lab.situation()
    );
    holders[0].clone()
}

/// Waits (at most 5 s) until the backup of `primary` itself holds every connection `primary`
/// has open, so that a crash of `primary` is one of a protected primary.
fn wait_backup_holds_every_connection(lab: &Lab, primary: &str) {
    let backup = other_member(primary);
    let held = common::wait_until(Duration::from_secs(5), || {
        let open = lab.daemon_status(primary)["data_plane"]["sessions_open"]
            .as_u64()
            .unwrap_or(u64::MAX);
        lab.daemon_status(&backup)["data_plane"]["protected_connections"]
            .as_u64()
            .unwrap_or(0)
            >= open
    });
    eprintln!("{backup} holds every connection of {primary}: {held}");
}

/// The node to crash in `round` of a crash loop: `expected`, unless a lease that lapsed under
/// load (10 ms heartbeats on a loaded 2-core host; allowed, and checked by the clients'
/// results) has moved the service to the protecting backup since the last round. Then it is
/// the node that serves, once its backup (the node it replaced) holds every connection again:
/// a crash loop's crashes are of protected primaries.
fn serving_primary(lab: &Lab, expected: &str, round: usize) -> String {
    let serving = primary_of(lab);
    if serving != expected {
        eprintln!("round {round}: {serving} took over from {expected} by a lease lapse");
        wait_backup_holds_every_connection(lab, &serving);
    }
    serving
}

/// The member of a two-node lab that is not `host`.
fn other_member(host: &str) -> String {
    if host == "n1" { "n2" } else { "n1" }.to_string()
}

/// One crash of a crash loop: the crashed primary, the node that took over, and how many
/// backups had joined that node before (so a heal can wait for the next one).
struct Failover {
    crashed: String,
    primary: String,
    joined_before: u64,
    takeovers_before: u64,
}

/// Crashes `primary` as `kind` says and waits until the other member alone holds the VIP.
fn fail_over(lab: &Lab, primary: &str, kind: CrashKind, round: usize) -> Failover {
    let other = other_member(primary);
    let before = lab.daemon_status(&other)["data_plane"].clone();
    let joined_before = before["backups_joined"].as_u64().unwrap_or(0);
    let takeovers_before = before["takeovers"].as_u64().unwrap_or(0);
    let crash = steadfast_lab::crash(lab.name(), primary, kind).expect("crash");
    assert_eq!(crash.host, primary);
    assert!(
        common::wait_until(Duration::from_secs(3), || lab.holders_except(primary)
            == vec![other.clone()]),
        "round {round} ({kind}): {other} should take over; holders {:?}",
        lab.holders()
    );
    Failover {
        crashed: primary.to_string(),
        primary: other,
        joined_before,
        takeovers_before,
    }
}

impl Failover {
    /// Waits until the new primary has finished taking over (connections rebuilt, resumed and
    /// counted) and returns its data plane's status.
    fn takeover_done(&self, lab: &Lab) -> serde_json::Value {
        takeover_done(lab, &self.primary, self.takeovers_before)
    }

    /// The crashed node woke up by itself (see [`thaw`]): waits until it protects the new
    /// primary and has adopted the connections the takeover carried over (tens of
    /// milliseconds after it joins), as an operator would before the next failure: until then
    /// a crash of the primary loses them.
    fn heal_thawed(&self, lab: &Lab) {
        wait_backup_joined(lab, &self.primary, self.joined_before);
        let adopted = common::wait_until(Duration::from_secs(5), || {
            !lab.daemon_status(&self.primary)["holds_connections"]
                .as_bool()
                .unwrap_or(true)
        });
        if !adopted {
            let status = lab.daemon_status(&self.primary);
            eprintln!(
                "{} still holds connections its backup has not adopted after 5 s ({} open, \
                 {} adopted, {} adoptions skipped)",
                self.primary,
                status["data_plane"]["sessions_open"],
                status["data_plane"]["adopted"],
                status["data_plane"]["adoptions_skipped"]
            );
        }
    }

    /// Heals (restarts) the crashed node, then waits as [`Failover::heal_thawed`] does.
    fn heal(&self, lab: &Lab) {
        steadfast_lab::heal(lab.name(), &self.crashed).expect("heal");
        self.heal_thawed(lab);
    }
}

/// Host, process and freeze crashes of whichever node is primary, healing between them: every
/// established connection carries on, every request gets exactly its reply.
fn crash_cycle(backend: BackendKind, kinds: &[CrashKind]) {
    // 10 ms heartbeats: with 200 connections, nginx restarts and the load on two shared cores,
    // a 30 ms lease has lapsed under a healthy primary right after a heal; the election then
    // prefers the primary, which holds connections the healed node has not adopted yet.
    let lab = Lab::up_in_mode("dc", 2, true, backend, Some(10), Mode::Duplex);
    let mut primary = primary_of(&lab);
    wait_backup_joined(&lab, &primary, 0);
    let load =
        BackgroundLoad::start_with(&lab, keep_alive_load(&lab, 200, Duration::from_secs(120)));
    let curl = CurlSession::start(&lab, 300, 30);
    load.wait_for_successes(0, 400, Duration::from_secs(10), "before the first crash");
    for (round, &kind) in kinds.iter().enumerate() {
        primary = serving_primary(&lab, &primary, round);
        let other = other_member(&primary);
        let backup_plane = lab.daemon_status(&other)["data_plane"].clone();
        eprintln!(
            "round {round}: before the crash {primary} protects {} connections, {other} holds {} \
             (frames refused {}, dropped {} {})",
            lab.daemon_status(&primary)["data_plane"]["protected_connections"],
            backup_plane["protected_connections"],
            backup_plane["frames_refused"],
            backup_plane["frames_dropped"],
            backup_plane["drop_reasons"],
        );
        let failover = fail_over(&lab, &primary, kind, round);
        eprintln!(
            "round {round}: crashed at {:?} into the load",
            load.started.elapsed()
        );
        let takeover = failover.takeover_done(&lab);
        load.wait_for_successes(
            load.successes(),
            200,
            Duration::from_secs(10),
            &format!("round {round}: after the takeover"),
        );
        eprintln!(
            "round {round}: {kind} crash of {primary}: {other} restored {} lost {} {} in {} µs \
             ({} clients did not answer its probes in time)",
            takeover["connections_restored"],
            takeover["connections_lost"],
            takeover["lost_reasons"],
            takeover["last_takeover_us"],
            takeover["probes_unanswered"]
        );
        failover.heal(&lab);
        eprintln!(
            "round {round}: healed at {:?} into the load",
            load.started.elapsed()
        );
        load.wait_for_successes(
            load.successes(),
            200,
            Duration::from_secs(10),
            &format!("round {round}: after the heal"),
        );
        let healed = lab.daemon_status(&other)["data_plane"].clone();
        eprintln!(
            "round {round}: {primary} healed; {other} adopted {} ({} mid-request, {} \
             mid-reply) waited {} {}, protected {}; every connection protected {} ms after the \
             join ({} joins got there)",
            healed["adopted"],
            healed["adopted_mid_request"],
            healed["adopted_mid_reply"],
            healed["adoptions_skipped"],
            healed["adoption_waits"],
            healed["protected_connections"],
            healed["join_protected_last_ms"],
            healed["joins_protected"]
        );
        primary = failover.primary;
    }
    let report = load.stop();
    eprintln!(
        "{backend}: {} requests, longest request {:?}, errors {:?}",
        report.requests(),
        longest_request(&report),
        report.error_counts()
    );
    let hooks = std::fs::read_to_string(lab.info.state_dir.join("hooks.log")).unwrap_or_default();
    eprintln!(
        "{backend}: {} lapses of a primary's lease (quorum lost) beside the crashes",
        hooks.lines().filter(|l| l.contains("quorum lost")).count()
    );
    // A lapse is allowed (the VM stalls), losing connections by it is not: a primary that
    // stepped down left every open connection to a node that could carry it on.
    for member in ["n1", "n2"] {
        let dropped = lab.daemon_log_lines(member, "could not carry on");
        assert!(
            dropped.is_empty(),
            "{backend}: {member} stepped down with connections nobody could carry on: \
             {dropped:#?}\nhooks.log:\n{hooks}"
        );
    }
    for member in ["n1", "n2"] {
        let status = lab.daemon_status(member);
        eprintln!(
            "{member} (this life): {} role changes, {} reply pieces waited for the lease",
            status["counters"]["role_changes"], status["data_plane"]["replies_fenced"]
        );
    }
    assert_clean(&report, &format!("{backend} crash cycle"));
    assert_exactly_once(&lab, &report, &format!("{backend} crash cycle"));
    curl.finish();
}

/// curl fetching `count` URLs over one keep-alive connection at `rate` per second, in the
/// client namespace: a client nobody wrote for Steadfast, through the crashes.
struct CurlSession {
    child: std::process::Child,
    count: usize,
}

impl CurlSession {
    fn start(lab: &Lab, count: usize, rate: u32) -> CurlSession {
        let url = format!(
            "http://{}{}&n=[1-{count}]",
            lab.target(),
            steadfast_lab::webservers::bytes_path(1024)
        );
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.info.client_ns, "curl"])
            .args(["--silent", "--show-error", "--fail"])
            .args(["--max-time", "60", "--rate"])
            .arg(format!("{rate}/s"))
            .args(["--output", "/dev/null", "--write-out"])
            .arg("%{http_code} %{size_download} %{num_connects}\\n")
            .arg(&url)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("curl (Debian package curl) runs");
        CurlSession { child, count }
    }

    /// Waits for curl: every URL answered 200 with 1024 bytes, over one connection.
    fn finish(self) {
        let out = self.child.wait_with_output().expect("curl finishes");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl failed ({}): {}\n{text}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), self.count, "curl: {text}");
        let connects: u64 = lines
            .iter()
            .map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                assert_eq!(fields[..2], ["200", "1024"], "curl: {line}");
                fields[2].parse::<u64>().expect("num_connects")
            })
            .sum();
        assert_eq!(
            connects, 1,
            "curl kept one connection through the crashes: {text}"
        );
        eprintln!("curl: {} replies over one connection", lines.len());
    }
}

#[test]
fn duplex_survives_host_process_and_freeze_crashes_builtin() {
    crash_cycle(
        BackendKind::Builtin,
        &[
            CrashKind::Host,
            CrashKind::Process,
            CrashKind::Freeze,
            CrashKind::Host,
        ],
    );
}

#[test]
#[ignore = "needs nginx: apt-get install nginx-light (.ci/run installs it)"]
fn duplex_survives_host_process_and_freeze_crashes_nginx() {
    crash_cycle(
        BackendKind::Nginx,
        &[CrashKind::Host, CrashKind::Process, CrashKind::Freeze],
    );
}

/// Runs `program` with `args` in `namespace`, which must succeed; its standard output.
fn run_in(namespace: &str, program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", namespace, program])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip netns exec {namespace} {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} in {namespace}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip_in(namespace: &str, args: &[&str]) {
    run_in(namespace, "ip", args);
}

/// I1 under attack: a client that is told (forged ARP) that the VIP lives at the primary's
/// MAC sends its frames straight there. The primary's guard bounces every one of them to the
/// backup, which logs it before the primary's TCP sees it: the bounce is counted, nothing is
/// dropped, and the proof that nothing bypassed the log is a crash — the connections opened
/// and used through the forged entry all survive the primary's death.
#[test]
fn frames_sent_straight_to_the_primary_never_reach_it_unlogged() {
    let lab = Lab::up_in_mode("fa", 2, true, BackendKind::Builtin, None, Mode::Duplex);
    let primary = primary_of(&lab);
    wait_backup_joined(&lab, &primary, 0);
    let primary_ns = format!("{}-{primary}", lab.name());
    let mac = common::mac_of(&primary_ns);
    client_neighbour_names(&lab, &mac, "permanent");
    let connections = 10;
    let load = BackgroundLoad::start_with(
        &lab,
        keep_alive_load(&lab, connections, Duration::from_secs(30)),
    );
    assert!(
        common::wait_until(Duration::from_secs(5), || {
            lab.daemon_status(&primary)["data_plane"]["guard_bounced"]
                .as_u64()
                .unwrap_or(0)
                > 0
        }),
        "frames sent straight to {primary} ({mac}) are bounced to the backup: {}",
        lab.daemon_status(&primary)["data_plane"]
    );
    load.wait_for_successes(
        load.successes(),
        200,
        Duration::from_secs(10),
        "through the forged entry",
    );
    let plane = lab.daemon_status(&primary)["data_plane"].clone();
    assert_eq!(
        plane["guard_dropped"], 0,
        "nothing needed dropping: {plane}"
    );
    // The entry still names the primary when it dies, as after a gratuitous ARP of the
    // primary's heard last (but not static): the takeover must claim the address before it
    // asks the clients how far they read, or their answers go to the dead MAC.
    // A download read slowly has a reply in flight at the crash, its client is probed. A
    // small receive buffer keeps the client's kernel from taking the whole reply at once.
    limit_client_receive_buffer(&lab, "4096 131072 1048576");
    let dir = download_dir(&lab, "download");
    let body = 16 * 1024 * 1024;
    let download = slow_download(
        &lab,
        &format!("/bytes/{body}?seed=7"),
        "4M",
        &dir.join("download"),
    );
    wait_file_grows(
        &dir.join("download"),
        256 * 1024,
        "the download before the crash",
    );
    // In flight means sent and not acknowledged: the reply bytes wait in the primary's send
    // queue (the client reads slower than the proxy writes, unless the primary falls behind
    // for a moment on a loaded host).
    assert!(
        common::wait_until(Duration::from_secs(5), || reply_queued_at(&lab, &primary)
            > 0),
        "{primary} holds no reply bytes for the downloading client"
    );
    client_neighbour_names(&lab, &mac, "stale");
    let backup = other_member(&primary);
    steadfast_lab::crash(lab.name(), &primary, CrashKind::Host).expect("crash");
    let after = takeover_done(&lab, &backup, 0);
    let downloaded = download.wait_with_output().expect("curl ends");
    assert!(
        downloaded.status.success(),
        "the download in flight at the crash finished: {}",
        String::from_utf8_lossy(&downloaded.stderr)
    );
    let got = std::fs::metadata(dir.join("download")).map_or(0, |m| m.len());
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(got, body as u64, "every byte of the download arrived");
    let report = load.stop();
    assert_clean(
        &report,
        "connections opened through a forged ARP entry, primary crashed",
    );
    assert!(
        after["connections_restored"].as_u64().unwrap_or(0) >= connections as u64,
        "every connection opened through the forged entry was in the backup's log: {after}"
    );
    assert!(
        after["probes_sent"].as_u64().unwrap_or(0) > 0,
        "the download's client was probed: {after}"
    );
    assert_eq!(
        after["probes_unanswered"], 0,
        "every client answered the takeover's probes: {after}"
    );
}

/// Bytes the kernel of `host` holds in the send queues of its connections from the VIP's port
/// (`ss`'s Send-Q, summed).
fn reply_queued_at(lab: &Lab, host: &str) -> u64 {
    let namespace = format!("{}-{host}", lab.name());
    let source = format!("{}:{}", lab.info.vip, lab.info.port);
    run_in(
        &namespace,
        "ss",
        &["-Htn", "state", "established", "src", source.as_str()],
    )
    .lines()
    .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
    .sum()
}

/// Points the client's ARP entry for the VIP at `mac`, in state `nud`.
/// Sets the client namespace's `net.ipv4.tcp_rmem` (min default max): a client that reads
/// slowly then leaves the reply queued at the server instead of taking it all at once.
fn limit_client_receive_buffer(lab: &Lab, rmem: &str) {
    run_in(
        &lab.info.client_ns,
        "sysctl",
        &["-qw", &format!("net.ipv4.tcp_rmem={rmem}")],
    );
}

fn client_neighbour_names(lab: &Lab, mac: &str, nud: &str) {
    let vip = lab.info.vip.to_string();
    let dev = steadfast_lab::topology::HOST_INTERFACE;
    ip_in(
        &lab.info.client_ns,
        &[
            "neigh", "replace", &vip, "lladdr", mac, "dev", dev, "nud", nud,
        ],
    );
}

/// The MAC the client's ARP entry for the VIP names, if it has one.
fn client_neighbour(lab: &Lab) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.info.client_ns,
            "ip",
            "-j",
            "neigh",
            "show",
        ])
        .arg(lab.info.vip.to_string())
        .output()
        .expect("ip neigh show");
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    entries.as_array()?.first()?["lladdr"]
        .as_str()
        .map(str::to_string)
}

/// Replies above one replication frame (4 MiB): one logged whole (6 MiB, under the default
/// 8 MiB whole-reply limit) and one streamed in pieces of 8 MiB and more. Both travel to the
/// backup as several frames; a single frame that large made the backup drop the replication
/// stream, and the primary served unprotected from then on.
#[test]
fn replies_longer_than_a_replication_frame_keep_the_backup() {
    let (lab, primary, backup) = protected_lab("lr");
    let whole = 6 * 1024 * 1024;
    let streamed = 20 * 1024 * 1024;
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.info.client_ns, "curl"])
        .args(["--silent", "--show-error", "--fail", "--max-time", "30"])
        .args(["--output", "/dev/null", "--output", "/dev/null"])
        .args(["--write-out", "%{size_download}\n"])
        .arg(format!("http://{}/bytes/{whole}?seed=1", lab.target()))
        .arg(format!("http://{}/bytes/{streamed}?seed=2", lab.target()))
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        vec![whole.to_string(), streamed.to_string()]
    );
    let at_primary = lab.daemon_status(&primary)["data_plane"].clone();
    assert_eq!(at_primary["backup_losses"], 0, "{at_primary}");
    assert_eq!(at_primary["replies_unprotected"], 0, "{at_primary}");
    let at_backup = lab.daemon_status(&backup)["data_plane"].clone();
    assert!(
        at_backup["log_bytes"].as_u64().unwrap_or(0) >= (whole + streamed) as u64,
        "the backup logged both replies: {at_backup}"
    );
}

/// `status` says where a request's time goes: on the primary, the backend's answer, the wait
/// for the backup to hold each reply piece, the write to the client and the whole request; on
/// the backup, the logger's passes and the replication stream's. Each request passes every
/// primary stage once, and no request is quicker than its backend's first byte.
#[test]
fn status_shows_where_each_request_spends_its_time() {
    let (lab, primary, backup) = protected_lab("st");
    let requests = 40;
    let urls: Vec<String> = (0..requests)
        .map(|i| format!("http://{}/bytes/1024?seed={i}", lab.target()))
        .collect();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.info.client_ns, "curl"])
        .args(["--silent", "--show-error", "--fail", "--max-time", "30"])
        .args(["--write-out", "%{http_code}\n", "--output", "/dev/null"])
        .args(&urls)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let at_primary = lab.daemon_status(&primary)["data_plane"].clone();
    let stages = &at_primary["stages"];
    let count = |stage: &str| stages[stage]["count"].as_u64().unwrap_or(0);
    for stage in ["backend", "backup_hold", "client_write", "request"] {
        assert!(count(stage) >= requests, "{stage}: {stages}");
    }
    for quantile in ["p50_us", "p90_us", "p99_us", "max_us"] {
        let of = |stage: &str| stages[stage][quantile].as_u64().unwrap_or(0);
        assert!(
            of("request") >= of("backend"),
            "{quantile}: a request takes at least its backend's answer: {stages}"
        );
    }
    let at_backup = lab.daemon_status(&backup)["data_plane"]["stages"].clone();
    for stage in ["logger_batch", "replication_batch", "ingress_wait"] {
        assert!(
            at_backup[stage]["count"].as_u64().unwrap_or(0) > 0,
            "{stage}: {at_backup}"
        );
    }
    // The kernel's receive stamp and the logger's clock agree: no wait of years or of less
    // than nothing (which would saturate to 0 for every frame).
    let waited = &at_backup["ingress_wait"];
    assert!(
        waited["max_us"].as_u64().unwrap_or(u64::MAX) < 10_000_000,
        "{waited}"
    );
    assert!(waited["mean_us"].as_u64().unwrap_or(0) > 0, "{waited}");
}

/// A primary served alone for a moment (it always does, until its backup joins) and began
/// announcing the VIP; once the backup joins and announces it, the primary must fall silent.
/// Otherwise the last gratuitous ARP heard decides where the clients send: CI saw a client
/// drawn to the primary that way, whose frames then went to a dead MAC at the crash. Long
/// bursts here (40 × 100 ms) make the overlap certain if the primary's is not called off.
#[test]
fn the_primary_falls_silent_once_its_backup_announces_the_address() {
    let lab = Lab::up_with("ga", 2, BackendKind::Builtin, |opts| {
        opts.mode = Mode::Duplex;
        opts.witness = true;
        opts.gratuitous_arp = Some((40, 100));
    });
    let primary = primary_of(&lab);
    wait_backup_joined(&lab, &primary, 0);
    let backup = other_member(&primary);
    let backup_mac = common::mac_of(&format!("{}-{backup}", lab.name()));
    // Lab up asked for the VIP, so the client has an entry a gratuitous ARP updates.
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    while started.elapsed() < Duration::from_millis(2000) {
        seen.push(client_neighbour(&lab));
        std::thread::sleep(Duration::from_millis(20));
    }
    // The backup's first announcement may reach the client a moment after the join.
    let settled = &seen[seen.len() / 4..];
    let elsewhere = settled
        .iter()
        .filter(|mac| mac.as_deref() != Some(backup_mac.as_str()))
        .count();
    assert_eq!(
        elsewhere, 0,
        "while the backup ({backup_mac}) announces the VIP, the client's entry names nothing \
         else: {:?}",
        settled
    );
}

/// A client drawn to the primary's MAC (a gratuitous ARP of an earlier role heard after the
/// backup's, a forged one) works, its frames bounced to the backup, but would be cut off by a
/// primary crash: the primary has the backup announce the address again, and the client's
/// entry names the backup within seconds.
#[test]
fn a_client_drawn_to_the_primary_is_drawn_back_to_the_backup() {
    let (lab, primary, backup) = protected_lab("db");
    let primary_mac = common::mac_of(&format!("{}-{primary}", lab.name()));
    let backup_mac = common::mac_of(&format!("{}-{backup}", lab.name()));
    let load = BackgroundLoad::start_with(&lab, keep_alive_load(&lab, 4, Duration::from_secs(20)));
    assert!(
        common::wait_until(Duration::from_secs(3), || {
            client_neighbour(&lab).as_deref() == Some(backup_mac.as_str())
        }),
        "the client first finds the VIP at the backup ({backup_mac}): {:?}",
        client_neighbour(&lab)
    );
    // The backup's own burst (5 × 20 ms) is over: only a new announcement can move the entry.
    std::thread::sleep(Duration::from_millis(1000));
    client_neighbour_names(&lab, &primary_mac, "reachable");
    assert!(
        common::wait_until(Duration::from_secs(5), || {
            client_neighbour(&lab).as_deref() == Some(backup_mac.as_str())
        }),
        "the client's entry for the VIP names the backup ({backup_mac}) again, not {:?}; \
         primary: {}",
        client_neighbour(&lab),
        lab.daemon_status(&primary)["data_plane"]
    );
    let report = load.stop();
    assert_clean(&report, "a client drawn to the primary and back");
}

/// A backup crash under keep-alive load: the primary stops waiting for it, serves unprotected
/// (counted), and takes it back when it heals. The client frames lost while the address moves
/// back are resent by the clients: no error.
#[test]
fn duplex_keeps_every_connection_through_a_backup_crash() {
    let (lab, primary, backup) = protected_lab("bc");
    let backup = backup.as_str();
    let load = BackgroundLoad::start_with(&lab, keep_alive_load(&lab, 50, Duration::from_secs(30)));
    load.wait_for_successes(0, 200, Duration::from_secs(10), "before the crash");
    steadfast_lab::crash(lab.name(), backup, CrashKind::Host).expect("crash");
    let serving_alone = || {
        let plane = &lab.daemon_status(&primary)["data_plane"];
        plane["backup_losses"] == 1 && plane["unprotected_ms"].as_u64().unwrap_or(0) > 0
    };
    assert!(
        common::wait_until(Duration::from_secs(5), serving_alone),
        "{primary} counts its backup lost and serves unprotected: {}",
        lab.daemon_status(&primary)["data_plane"]
    );
    load.wait_for_successes(
        load.successes(),
        200,
        Duration::from_secs(10),
        "served without the backup",
    );
    steadfast_lab::heal(lab.name(), backup).expect("heal");
    wait_backup_joined(&lab, &primary, 1);
    load.wait_for_successes(
        load.successes(),
        200,
        Duration::from_secs(10),
        "after the backup rejoined",
    );
    let report = load.stop();
    eprintln!(
        "backup crash: {} requests, longest request {:?}",
        report.requests(),
        longest_request(&report)
    );
    assert_clean(&report, "backup crash");
}

/// The acceptance figure: 20 host crashes of the primary at a 10 ms heartbeat under
/// keep-alive load (`steadfast-lab bench stall`). No request may fail; the stall figures are
/// printed, and only a gross regression (a second) fails the test: timing targets live in the
/// benchmark, these machines are noisy.
#[test]
fn twenty_primary_crashes_lose_no_request() {
    let _one_lab = common::exclusive();
    let options = steadfast_lab::bench::stall::StallOptions {
        crashes: 20,
        target: steadfast_lab::bench::stall::StallTarget::Primary,
        how: CrashKind::Host,
        heartbeat_ms: 10,
        connections: 20,
        backend: BackendKind::Builtin,
        workload: steadfast_lab::bench::stall::StallWorkload::Small,
        steadfast_exe: common::lab_exe(),
    };
    let report = steadfast_lab::bench::stall::run(&options, &mut |line| eprintln!("{line}"))
        .expect("the stall campaign runs");
    eprint!("{}", report.markdown());
    assert_eq!(report.failures, 0, "{:?}", report.failure_details);
    assert!(
        report.exactly_once.acknowledged > 0,
        "the load committed nothing"
    );
    assert!(
        report.exactly_once.holds(),
        "exactly-once broken: {:?}",
        report.exactly_once
    );
    for sample in &report.samples {
        assert_eq!(
            sample.lost, 0,
            "crash {}: connections lost: {sample:?}",
            sample.index
        );
    }
    let max = report.max_stall_ms().expect("20 samples");
    assert!(max < 1000.0, "a stall of {max:.0} ms: {:?}", report.samples);
}

/// `wrk` (the Debian package) against the VIP through 5 primary crashes: no socket error of
/// any kind and no non-2xx reply.
#[test]
#[ignore = "needs wrk: apt-get install wrk (.ci/run installs it)"]
fn wrk_sees_no_error_through_five_primary_crashes() {
    let (lab, mut primary, _) = protected_lab("wk");
    let url = format!(
        "http://{}:{}/bytes/1024?seed=1",
        lab.info.vip, lab.info.port
    );
    let wrk = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.info.client_ns,
            "wrk",
            "-t2",
            "-c32",
            "-d14s",
        ])
        .args(["--timeout", "5s", &url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("wrk (Debian package wrk) runs");
    // wrk says nothing until it ends: the primary's reply count shows it is being served.
    let replies = |node: &str| {
        lab.daemon_status(node)["data_plane"]["replies"]
            .as_u64()
            .unwrap_or(0)
    };
    let wait_served = |node: &str, what: &str| {
        let before = replies(node);
        assert!(
            common::wait_until(Duration::from_secs(10), || replies(node) >= before + 500),
            "{what}: {node} served {} replies of the 500 awaited within 10 s",
            replies(node) - before
        );
    };
    wait_served(&primary, "before the first crash");
    for round in 0..5 {
        primary = serving_primary(&lab, &primary, round);
        let failover = fail_over(&lab, &primary, CrashKind::Host, round);
        failover.takeover_done(&lab);
        failover.heal(&lab);
        wait_served(&failover.primary, &format!("round {round}: after the heal"));
        primary = failover.primary;
    }
    let out = wrk.wait_with_output().expect("wrk finishes");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "wrk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("requests in"), "wrk ran: {text}");
    assert!(
        !text.contains("Socket errors"),
        "wrk saw socket errors: {text}"
    );
    assert!(!text.contains("Non-2xx"), "wrk saw non-2xx replies: {text}");
}

/// A 1 MB reply in flight at every crash (mid-reply): the new primary finishes each reply from
/// the log, byte-exact.
#[test]
fn duplex_finishes_one_megabyte_replies_in_flight_at_the_crash() {
    let (lab, mut primary, _) = protected_lab("mr");
    let mut options = keep_alive_load(&lab, 20, Duration::from_secs(30));
    if let Some(keep_alive) = options.keep_alive.as_mut() {
        keep_alive.sizes = vec![1024 * 1024];
        keep_alive.include_uuid = false;
    }
    let load = BackgroundLoad::start_with(&lab, options);
    for round in 0..3 {
        load.wait_for_successes(
            load.successes(),
            20,
            Duration::from_secs(10),
            &format!("round {round}: before the crash"),
        );
        primary = serving_primary(&lab, &primary, round);
        let failover = fail_over(&lab, &primary, CrashKind::Host, round);
        failover.takeover_done(&lab);
        failover.heal(&lab);
        primary = failover.primary;
    }
    load.wait_for_successes(
        load.successes(),
        20,
        Duration::from_secs(10),
        "after the last heal",
    );
    let report = load.stop();
    eprintln!(
        "mid-reply: {} requests of 1 MB, longest {:?}",
        report.requests(),
        longest_request(&report)
    );
    assert_clean(&report, "1 MB replies across crashes");
}

/// Connections the primary's kernel accepted while its daemon was frozen sit in its accept
/// queue, never reported to the backup; their requests are in the backup's log. The takeover
/// resumes them from the log alone (every request pending from the first), so they too get
/// exactly their replies.
#[test]
fn connections_in_the_frozen_primarys_accept_queue_are_restored() {
    let (lab, primary, backup) = protected_lab("aq");
    let backup = backup.as_str();
    // Opened with the first request: the freeze comes before any of them is accepted.
    steadfast_lab::crash(lab.name(), &primary, CrashKind::Freeze).expect("freeze");
    let load = BackgroundLoad::start_with(&lab, keep_alive_load(&lab, 40, Duration::from_secs(20)));
    assert!(
        common::wait_until(Duration::from_secs(3), || lab.holders_except(&primary)
            == vec![backup.to_string()]),
        "{backup} takes over"
    );
    let plane = takeover_done(&lab, backup, 0);
    // The scenario's own timing: the new primary serves long enough for the load to commit.
    std::thread::sleep(Duration::from_millis(1500));
    let report = load.stop();
    eprintln!(
        "accept queue: {} restored ({} unreported), {} lost {}; {} requests, longest {:?}",
        plane["connections_restored"],
        plane["connections_restored_unreported"],
        plane["connections_lost"],
        plane["lost_reasons"],
        report.requests(),
        longest_request(&report)
    );
    assert_clean(&report, "connections opened at the freeze");
    assert_exactly_once(&lab, &report, "connections opened at the freeze");
    assert_eq!(plane["connections_lost"], 0, "{plane}");
}

/// A client that opens a connection while the primary is dead sends a SYN the backup logs
/// and nobody answers. The takeover hands each such SYN to the new primary's kernel, which
/// answers at once: the client waits for the takeover, not for its own SYN retransmission a
/// second later (which the probes' 500 ms timeout would count as a failure), and the
/// connection is not counted lost, since no client ever had it open.
#[test]
fn connections_opened_during_a_takeover_are_answered_at_once() {
    let (lab, primary, _backup) = protected_lab("sy");
    let load = BackgroundLoad::start_with(
        &lab,
        LoadOptions::probes_only(lab.target(), Duration::from_secs(8)),
    );
    load.wait_for_successes(0, 50, Duration::from_secs(3), "probes before the crash");
    let failover = fail_over(&lab, &primary, CrashKind::Host, 0);
    let plane = failover.takeover_done(&lab);
    let since = load.successes();
    load.wait_for_successes(since, 100, Duration::from_secs(3), "probes after the crash");
    let report = load.stop();
    let longest = report
        .probes
        .iter()
        .map(|probe| probe.latency)
        .max()
        .unwrap_or_default();
    eprintln!(
        "takeover: {} half-open SYNs replayed ({} not), {} lost {}; {} probes, {} failed, \
         longest {longest:?}",
        plane["syns_replayed"],
        plane["syns_not_replayed"],
        plane["connections_lost"],
        plane["lost_reasons"],
        report.probes.len(),
        report.probe_failures()
    );
    assert!(
        plane["syns_replayed"].as_u64().unwrap_or(0) >= 1,
        "a probe every 10 ms through a detection of at least 30 ms sends SYNs nobody \
         answered: {plane}"
    );
    assert_eq!(plane["syns_not_replayed"], 0, "{plane}");
    assert_eq!(plane["connections_lost"], 0, "{plane}");
    assert_eq!(
        report.probe_failures(),
        0,
        "no new connection waits for its SYN's retransmission: {:?}",
        report.summary().outages
    );
}

/// Connections opened while the primary served alone are adopted by its healed backup
/// wherever they stand — a download in flight, a request whose reply the backend has not begun
/// — and survive the primary's death. One that cannot be adopted (its client half-closed it:
/// no takeover can carry that on) cannot go on: the takeover counts it lost (`not-adopted`) and
/// resets its client at once, instead of leaving it to hang until its own timeout.
#[test]
fn connections_opened_unprotected_are_adopted_or_reset_at_a_crash() {
    let (lab, primary, backup) = protected_lab("na");
    steadfast_lab::crash(lab.name(), &backup, CrashKind::Host).expect("crash the backup");
    assert!(
        common::wait_until(Duration::from_secs(5), || {
            lab.daemon_status(&primary)["data_plane"]["backup_losses"]
                .as_u64()
                .unwrap_or(0)
                >= 1
        }),
        "{primary} notices its backup is gone"
    );
    let len = 32 * 1024 * 1024;
    let receiving = own_download(
        &lab,
        format!("/bytes/{len}?seed={DOCROOT_SEED}"),
        len,
        2_000_000,
    );
    let waiting = own_request(&lab, "/slow?ms=6000&bytes=100", false);
    let half_closed = own_request(&lab, "/slow?ms=20000&bytes=100", true);
    // A client's first SYN may go to the dead backup's MAC, if it leaves before the primary
    // claims the address, and be sent again a second later: wait until all three are open.
    assert!(
        common::wait_until(Duration::from_secs(5), || {
            lab.daemon_status(&primary)["data_plane"]["connections_unprotected"]
                .as_u64()
                .unwrap_or(0)
                >= 3
        }),
        "the three clients connect to {primary} while it serves alone"
    );
    // The scenario's own timing: the download well under way, the two requests at the
    // backend, when the backup comes back.
    std::thread::sleep(Duration::from_millis(700));
    steadfast_lab::heal(lab.name(), &backup).expect("heal the backup");
    wait_backup_joined(&lab, &primary, 1);
    // What the backup itself holds: a hand-over counts once the backup has it, not when the
    // primary sends it, and only on the backup's current stream (a lease lapse during the join
    // starts a second one, which the primary fills anew).
    common::wait_until(Duration::from_secs(5), || {
        lab.daemon_status(&primary)["data_plane"]["unadopted_now"] == 1
            && lab.daemon_status(&backup)["data_plane"]["protected_connections"]
                .as_u64()
                .unwrap_or(0)
                >= 2
    });
    let plane = lab.daemon_status(&primary)["data_plane"].clone();
    eprintln!(
        "before the crash: adopted {} ({} mid-request, {} mid-reply), {} not; waits {}",
        plane["adopted"],
        plane["adopted_mid_request"],
        plane["adopted_mid_reply"],
        plane["unadopted_now"],
        plane["adoption_waits"]
    );
    assert_eq!(
        plane["unadopted_now"], 1,
        "only the half-closed one: {plane}"
    );
    let crashed_at = Instant::now();
    fail_over(&lab, &primary, CrashKind::Host, 0);
    let (outcome, at) = half_closed.join().expect("the half-closed client");
    let after = at.saturating_duration_since(crashed_at);
    eprintln!("half-closed client: {outcome:?} {after:?} after the crash");
    assert_eq!(
        outcome,
        Err(std::io::ErrorKind::ConnectionReset),
        "the half-closed client sees its connection reset"
    );
    assert!(
        after < Duration::from_secs(3),
        "reset {after:?} after the crash, not at once"
    );
    let (outcome, _) = waiting.join().expect("the waiting client");
    assert_eq!(outcome, Ok(100), "the waiting client gets its whole reply");
    let got = receiving.finish(len);
    eprintln!("receiving client: {got:?}");
    assert!(
        got.is_ok(),
        "the receiving client gets every byte right: {got:?}"
    );
    let plane = lab.daemon_status(&backup)["data_plane"].clone();
    eprintln!(
        "takeover: restored {} lost {} {}",
        plane["connections_restored"], plane["connections_lost"], plane["lost_reasons"]
    );
    assert_eq!(plane["lost_reasons"]["not-adopted"], 1, "{plane}");
    assert_eq!(plane["connections_lost"], 1, "{plane}");
}

/// Connections opened while a healed backup joins: some reach the primary straight, before the
/// backup stands in front of it, and are accepted only after it joined (from the accept queue,
/// or while the primary sets its guard, which takes tens of milliseconds while it accepts
/// thousands of connections). The backup never saw them open; it says so, and the primary hands
/// them over like connections opened before the join. A crash once every connection is
/// protected loses none of them: each still answers a request.
#[test]
fn connections_opened_through_a_join_survive_the_next_crash() {
    let (lab, primary, backup) = protected_lab("jw");
    // Whether connections fall in those moments depends on how long the join takes: the
    // backup is crashed and healed again (at most 4 times) until some did. The connections of
    // every join stay open to the end.
    let mut connections = Vec::new();
    for attempt in 1..=4 {
        connections.extend(open_connections_through_a_join(&lab, &primary, &backup));
        let unlogged = lab.daemon_status(&backup)["data_plane"]["opened_unlogged"]
            .as_u64()
            .unwrap_or(0);
        eprintln!(
            "join {attempt}: {} connections open; the backup never saw {unlogged} of those \
             opened through it open; {} adopted",
            connections.len(),
            lab.daemon_status(&primary)["data_plane"]["adopted"]
        );
        if unlogged > 0 {
            break;
        }
    }
    let failover = fail_over(&lab, &primary, CrashKind::Host, 0);
    let plane = failover.takeover_done(&lab);
    eprintln!(
        "takeover: restored {} lost {} {}",
        plane["connections_restored"], plane["connections_lost"], plane["lost_reasons"]
    );
    // The sockets belong to the client namespace already: no need to enter it again.
    let failed: Vec<String> = {
        use std::io::Write;
        connections
            .iter_mut()
            .enumerate()
            .filter_map(|(i, stream)| {
                let exchange = (|| {
                    stream
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .map_err(|e| e.to_string())?;
                    stream
                        .write_all(
                            b"GET /bytes/64?seed=5 HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n",
                        )
                        .map_err(|e| format!("send: {e}"))?;
                    let (status, body) = read_reply(stream, None)?;
                    if status != 200 || body.len() != 64 {
                        return Err(format!("status {status}, {} body bytes", body.len()));
                    }
                    Ok(())
                })();
                exchange.err().map(|e| format!("connection {i}: {e}"))
            })
            .collect()
    };
    assert!(
        failed.is_empty(),
        "{} connections failed after the crash, first: {:?}; takeover {plane}",
        failed.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(plane["connections_lost"], 0, "{plane}");
}

/// Crashes `backup`, then heals it while two clients in the client namespace open connections
/// (about 4,000 a second each), from the heal until a little after it joins; returns the last
/// 1,000 of each, once `primary` protects every open connection.
fn open_connections_through_a_join(
    lab: &Lab,
    primary: &str,
    backup: &str,
) -> Vec<std::net::TcpStream> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let status = lab.daemon_status(primary)["data_plane"].clone();
    let joined_before = status["backups_joined"].as_u64().unwrap_or(0);
    let losses_before = status["backup_losses"].as_u64().unwrap_or(0);
    let open_before = status["sessions_open"].as_u64().unwrap_or(0);
    steadfast_lab::crash(lab.name(), backup, CrashKind::Host).expect("crash the backup");
    assert!(
        wait_plane_counter_above(
            lab,
            primary,
            "backup_losses",
            losses_before,
            Duration::from_secs(5)
        ),
        "{primary} notices its backup is gone"
    );
    const KEPT: usize = 1_000;
    const LIMIT: Duration = Duration::from_secs(15);
    let opening = Arc::new(AtomicBool::new(true));
    let openers: Vec<_> = (0..2)
        .map(|_| {
            let (namespace, target) = (lab.info.client_ns.clone(), lab.target());
            let opening = opening.clone();
            std::thread::spawn(move || {
                steadfast_lab::run_in_namespace(&namespace, move || {
                    // Only the latest are kept: those opened around the join.
                    let mut open = std::collections::VecDeque::new();
                    let started = Instant::now();
                    while opening.load(Ordering::Relaxed) && started.elapsed() < LIMIT {
                        let stream =
                            std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3))
                                .map_err(|e| format!("connect: {e}"))?;
                        open.push_back(stream);
                        if open.len() > KEPT {
                            open.pop_front();
                        }
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Ok::<_, String>(open)
                })
                .expect("the client namespace")
            })
        })
        .collect();
    steadfast_lab::heal(lab.name(), backup).expect("heal the backup");
    wait_backup_joined(lab, primary, joined_before);
    std::thread::sleep(Duration::from_millis(100));
    opening.store(false, Ordering::Relaxed);
    let mut connections = Vec::new();
    for opener in openers {
        connections.extend(opener.join().expect("an opener").expect("every connect"));
    }
    // The connections closed meanwhile have ended, and every open one is protected.
    assert!(
        common::wait_until(Duration::from_secs(10), || {
            let status = lab.daemon_status(primary);
            !status["holds_connections"].as_bool().unwrap_or(true)
                && status["data_plane"]["sessions_open"].as_u64()
                    == Some(open_before + connections.len() as u64)
        }),
        "{primary} should hold {} open connections, all protected: {}",
        open_before + connections.len() as u64,
        lab.daemon_status(primary)["data_plane"]
    );
    connections
}

/// Which way a test cuts the replication stream, at the backup.
#[derive(Debug, Clone, Copy)]
enum ReplicationCut {
    Both,
    ToBackup,
    FromBackup,
}

/// The table in which the test cuts the replication stream.
const CUT_TABLE: &str = "sftest_cut";

/// Drops the replication stream's segments at `backup`, one way or both (the heartbeats, the
/// client frames and everything else pass).
fn cut_replication(lab: &Lab, backup: &str, cut: ReplicationCut) {
    use steadfast_os::nftables::Verdict;
    // The lab's group port is the default; the stream runs on the next one.
    let port = steadfast_core::config::DEFAULT_PORT + 1;
    let mut batch = Batch::new();
    batch.add_table(Table::new(Family::Inet, CUT_TABLE));
    let mut drop_in = |chain: &str, hook: Hook, rule: RuleBuilder| {
        batch
            .add_chain(
                Chain::filter(Family::Inet, CUT_TABLE, chain, hook, -10, None)
                    .expect("inet has input and output hooks"),
            )
            .add_rule(rule.verdict(Verdict::Drop).build(CUT_TABLE, chain));
    };
    if matches!(cut, ReplicationCut::Both | ReplicationCut::ToBackup) {
        let to_port = steadfast_os::nftables::PortMatch::One(port);
        drop_in(
            "in",
            Hook::Input,
            RuleBuilder::new(Family::Inet).tcp_destination_port(to_port),
        );
    }
    if matches!(cut, ReplicationCut::Both | ReplicationCut::FromBackup) {
        drop_in(
            "out",
            Hook::Output,
            RuleBuilder::new(Family::Inet).tcp_source_port(port),
        );
    }
    in_host(lab, backup, move || {
        NftSocket::open()?.apply(&batch, "the test's replication cut")
    })
    .unwrap_or_else(|e| panic!("cutting {backup}'s replication stream: {e}"));
}

fn mend_replication(lab: &Lab, backup: &str) {
    let mut batch = Batch::new();
    batch.delete_table(Family::Inet, CUT_TABLE);
    in_host(lab, backup, move || {
        NftSocket::open()?.apply(&batch, "removing the test's replication cut")
    })
    .unwrap_or_else(|e| panic!("mending {backup}'s replication stream: {e}"));
}

/// The replication stream alone is cut, both ways and one way at a time, for 2 s each while the
/// heartbeats pass, under 50 keep-alive clients: the primary waits for its backup at most
/// `replication_stall_ms`, then serves without it; no request takes longer than that bound plus
/// 100 ms, none fails, and once the path works again the backup joins and protects every
/// connection.
#[test]
fn a_cut_replication_stream_stalls_no_client_beyond_its_bound() {
    const STALL_MS: u32 = 300;
    let lab = Lab::up_with("rc", 2, BackendKind::Builtin, |opts| {
        opts.mode = Mode::Duplex;
        opts.witness = true;
        opts.heartbeat_ms = Some(10);
        opts.replication_stall_ms = Some(STALL_MS);
    });
    let primary = primary_of(&lab);
    let backup = other_member(&primary);
    wait_backup_joined(&lab, &primary, 0);
    let stall = Duration::from_millis(u64::from(STALL_MS));
    let load = BackgroundLoad::start_with(
        &lab,
        LoadOptions {
            target: lab.target(),
            duration: Duration::from_secs(60),
            probes: None,
            keep_alive: Some(KeepAliveOptions {
                connections: 50,
                request_timeout: Duration::from_secs(5),
                sizes: vec![1024, 10 * 1024],
                include_uuid: true,
                commit_sizes: vec![100],
                pause: Duration::from_millis(5),
                ..KeepAliveOptions::default()
            }),
        },
    );
    load.wait_for_successes(0, 200, Duration::from_secs(10), "before the cuts");
    for (round, cut) in [
        ReplicationCut::Both,
        ReplicationCut::ToBackup,
        ReplicationCut::FromBackup,
    ]
    .into_iter()
    .enumerate()
    {
        let before = lab.daemon_status(&primary)["data_plane"].clone();
        let stalls_before = before["replication_stalls"].as_u64().unwrap_or(0);
        let joined_before = before["backups_joined"].as_u64().unwrap_or(0);
        cut_replication(&lab, &backup, cut);
        assert!(
            wait_plane_counter_above(
                &lab,
                &primary,
                "replication_stalls",
                stalls_before,
                stall * 3
            ),
            "{cut:?}: {primary} should drop the stalled link within {:?}: {}",
            stall * 3,
            lab.daemon_status(&primary)["data_plane"]
        );
        std::thread::sleep(Duration::from_secs(2));
        let served = load.successes();
        load.wait_for_successes(served, 100, Duration::from_secs(5), "during the cut");
        mend_replication(&lab, &backup);
        wait_backup_joined(&lab, &primary, joined_before);
        assert!(
            common::wait_until(Duration::from_secs(5), || {
                !lab.daemon_status(&primary)["holds_connections"]
                    .as_bool()
                    .unwrap_or(true)
            }),
            "{cut:?}: the backup should adopt every connection after the cut: {}",
            lab.daemon_status(&primary)["data_plane"]
        );
        assert_eq!(
            primary_of(&lab),
            primary,
            "round {round}: the primary serves on through the cut"
        );
    }
    let report = load.stop();
    assert_clean(&report, "replication stream cut three ways");
    assert_exactly_once(&lab, &report, "replication stream cut three ways");
    let longest = longest_request(&report);
    eprintln!(
        "longest request {longest:?} (bound {stall:?}); {}",
        lab.daemon_status(&primary)["data_plane"]
    );
    assert!(
        longest <= stall + Duration::from_millis(100),
        "a request took {longest:?}, beyond the {stall:?} bound plus 100 ms"
    );
}

/// Sends `GET path` (asking to close after the reply) from the client namespace, half-closing
/// the connection after the request when `half_close`, and reads the reply: the body's length,
/// or the error the read ended with, and when it ended.
fn own_request(
    lab: &Lab,
    path: &str,
    half_close: bool,
) -> std::thread::JoinHandle<(Result<usize, std::io::ErrorKind>, Instant)> {
    let (namespace, target, path) = (lab.info.client_ns.clone(), lab.target(), path.to_string());
    std::thread::spawn(move || {
        steadfast_lab::run_in_namespace(&namespace, move || {
            use std::io::{Read, Write};
            let exchange = || {
                let mut stream =
                    std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
                stream.set_read_timeout(Some(Duration::from_secs(30)))?;
                write!(
                    stream,
                    "GET {path} HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n"
                )?;
                if half_close {
                    stream.shutdown(std::net::Shutdown::Write)?;
                }
                let mut reply = Vec::new();
                stream.read_to_end(&mut reply)?;
                let head_end = reply
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(reply.len(), |at| at + 4);
                Ok::<_, std::io::Error>(reply.len() - head_end)
            };
            let outcome = exchange().map_err(|e| e.kind());
            (outcome, Instant::now())
        })
        .expect("enter the client namespace")
    })
}

/// Resumes every stopped process of `host` (SIGCONT): a frozen machine that wakes up, not a
/// healed one (a heal restarts the daemon).
fn thaw(lab: &Lab, host: &str) {
    for pid in namespace_pids(lab, host) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &pid])
            .status();
    }
}

/// Every process in `host`'s namespace.
fn namespace_pids(lab: &Lab, host: &str) -> Vec<String> {
    let ns = format!("{}-{host}", lab.name());
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", &ns])
        .output()
        .expect("ip netns pids");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// A primary frozen long enough to lose its lease, that then wakes up (a VM paused for
/// migration, a stopped process resumed): the new primary carries its connections, and the old
/// one, which steps down, must not send anything to their clients — not the replies its
/// backend finishes meanwhile, nor a reset. With and without TCP timestamps at the clients
/// (without them PAWS does not drop the old primary's late segments).
fn thawed_primary_disturbs_nothing(timestamps: bool) {
    let (lab, primary, backup) = protected_lab(if timestamps { "th" } else { "tn" });
    if !timestamps {
        let status = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.info.client_ns])
            .args(["sysctl", "-qw", "net.ipv4.tcp_timestamps=0"])
            .status()
            .expect("sysctl");
        assert!(status.success(), "turning TCP timestamps off at the client");
    }
    let mut options = keep_alive_load(&lab, 60, Duration::from_secs(30));
    if let Some(keep_alive) = options.keep_alive.as_mut() {
        // Every reply a fresh one: a late duplicate from the old primary would show.
        keep_alive.sizes = vec![1024, 100 * 1024];
    }
    let load = BackgroundLoad::start_with(&lab, options);
    for round in 0..2 {
        load.wait_for_successes(
            load.successes(),
            200,
            Duration::from_secs(10),
            &format!("round {round}: before the freeze"),
        );
        let (frozen, serving) = if round == 0 {
            (primary.as_str(), backup.as_str())
        } else {
            (backup.as_str(), primary.as_str())
        };
        let failover = fail_over(&lab, frozen, CrashKind::Freeze, round);
        assert_eq!(failover.primary, serving);
        // The scenario's own timing: the new primary serves a while before the old one wakes.
        std::thread::sleep(Duration::from_millis(300));
        thaw(&lab, frozen);
        assert!(
            common::wait_until(Duration::from_secs(5), || lab.daemon_status(frozen)["role"]
                == "backup"),
            "round {round}: the thawed {frozen} steps down: {}",
            lab.situation()
        );
        // Long enough a window for a late reply or reset of the thawed node to reach a client.
        load.wait_for_successes(
            load.successes(),
            300,
            Duration::from_secs(10),
            &format!("round {round}: after the thaw"),
        );
        let status = lab.daemon_status(frozen);
        eprintln!(
            "round {round}: {frozen} thawed: role {}, sessions open {}, retired {}",
            status["role"],
            status["data_plane"]["sessions_open"],
            status["data_plane"]["sessions_retired"]
        );
        assert_eq!(
            lab.holders_except(frozen),
            vec![serving.to_string()],
            "{serving} keeps serving"
        );
        assert!(
            lab.holders().len() == 1,
            "the thawed node does not take the VIP back"
        );
        // The woken node now protects the primary: crash it for the next round only after it
        // has adopted what the takeover carried over.
        failover.heal_thawed(&lab);
    }
    let report = load.stop();
    eprintln!(
        "thawed primaries (timestamps {timestamps}): {} requests, longest {:?}",
        report.requests(),
        longest_request(&report)
    );
    assert_clean(&report, "a frozen primary that wakes up");
    assert_exactly_once(&lab, &report, "a frozen primary that wakes up");
}

/// Runs `work` on a thread inside `host`'s namespace (its netlink sockets live there).
fn in_host<T: Send>(lab: &Lab, host: &str, work: impl FnOnce() -> T + Send) -> T {
    let namespace = format!("{}-{host}", lab.name());
    steadfast_lab::run_in_namespace(&namespace, work)
        .unwrap_or_else(|e| panic!("entering {namespace}: {e}"))
}

/// The test's own table in a host: a named counter of the packets from the VIP that the
/// host's kernel lets out, counted after the fence.
const VIP_OUTPUT_TABLE: &str = "sftest";
const VIP_OUTPUT_COUNTER: &str = "vip_out";

/// Packets from the VIP that `host`'s kernel let out (counted after the fence, by a table the
/// test adds with [`count_vip_output`]).
fn vip_packets_sent(lab: &Lab, host: &str) -> u64 {
    in_host(lab, host, || {
        NftSocket::open()?.counter(Family::Inet, VIP_OUTPUT_TABLE, VIP_OUTPUT_COUNTER)
    })
    .unwrap_or_else(|e| panic!("reading {host}'s VIP output counter: {e}"))
    .packets
}

fn count_vip_output(lab: &Lab, host: &str) {
    let vip = lab.info.vip;
    let mut batch = Batch::new();
    batch
        .add_table(Table::new(Family::Inet, VIP_OUTPUT_TABLE))
        .add_counter(Family::Inet, VIP_OUTPUT_TABLE, VIP_OUTPUT_COUNTER)
        .add_chain(
            Chain::filter(
                Family::Inet,
                VIP_OUTPUT_TABLE,
                "out",
                Hook::Output,
                100,
                None,
            )
            .expect("inet has an output hook"),
        )
        .add_rule(
            RuleBuilder::new(Family::Inet)
                .ip_address(AddressField::Source, CmpOp::Equal, vip)
                .named_counter(VIP_OUTPUT_COUNTER)
                .build(VIP_OUTPUT_TABLE, "out"),
        );
    in_host(lab, host, move || {
        NftSocket::open()?.apply(&batch, "the test's VIP output counter")
    })
    .unwrap_or_else(|e| panic!("adding {host}'s VIP output counter: {e}"));
}

/// A primary whose daemon stops without dying (SIGSTOP: a hung process) keeps a live kernel
/// with queued replies, retransmission and loss-probe timers. Once its lease ends that kernel
/// must send nothing more from the VIP: the node that takes over rebuilds each connection from
/// what the client had acknowledged when it was probed, and a segment the old kernel sends
/// after that moves the client past the rebuilt socket (whose acknowledgements the kernel then
/// drops as acknowledging unsent data: the connection stalls for good). The slow downloads
/// keep data queued in the frozen kernel and must finish whole.
#[test]
fn a_frozen_primarys_kernel_falls_silent_when_its_lease_ends() {
    let (lab, primary, _) = protected_lab("fk");
    count_vip_output(&lab, &primary);
    limit_client_receive_buffer(&lab, "4096 65536 262144");
    let dir = download_dir(&lab, "fk");
    let size = 2 * 1024 * 1024;
    let downloads: Vec<_> = (0..4)
        .map(|i| {
            let file = dir.join(format!("d{i}"));
            (
                slow_download(&lab, &format!("/bytes/{size}"), "400K", &file),
                file,
            )
        })
        .collect();
    for (_, file) in &downloads {
        wait_file_grows(file, 256 * 1024, "a download before the freeze");
    }
    let failover = fail_over(&lab, &primary, CrashKind::Freeze, 0);
    let at_takeover = vip_packets_sent(&lab, &primary);
    // What is measured is silence: a fixed window in which the frozen kernel must send nothing.
    std::thread::sleep(Duration::from_millis(1500));
    let later = vip_packets_sent(&lab, &primary);
    eprintln!(
        "frozen primary: {at_takeover} packets from the VIP at the takeover, {later} 1.5 s later"
    );
    assert_eq!(
        later - at_takeover,
        0,
        "the frozen primary's kernel sent {} packets from the VIP after the takeover",
        later - at_takeover
    );
    for (child, file) in downloads {
        let out = child.wait_with_output().expect("curl");
        assert!(
            out.status.success(),
            "download {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let got = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        assert_eq!(got, size as u64, "{} is whole", file.display());
    }
    thaw(&lab, &failover.crashed);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_thawed_primary_disturbs_nothing() {
    thawed_primary_disturbs_nothing(true);
}

#[test]
fn a_thawed_primary_disturbs_nothing_without_timestamps() {
    thawed_primary_disturbs_nothing(false);
}

/// The daemon pids of `host` (its namespace's processes named steadfast).
fn daemon_pids(lab: &Lab, host: &str) -> Vec<String> {
    namespace_pids(lab, host)
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.contains("steadfast") && cmd.contains("\0run\0"))
        })
        .collect()
}

/// A planned switchover, as an operator does it for maintenance: stopping the primary's
/// daemon (SIGTERM, `systemctl stop`). It releases the address and tells its peers, the backup
/// stands at once and carries every established connection on — none is reset, no request
/// fails.
#[test]
fn stopping_the_primary_daemon_hands_its_connections_over() {
    let (lab, _, _) = protected_lab("st");
    let load = BackgroundLoad::start_with(&lab, keep_alive_load(&lab, 60, Duration::from_secs(30)));
    load.wait_for_successes(0, 120, Duration::from_secs(10), "before the stop");
    // Whoever is primary now (a moment's stall under the load can move the address, and the
    // backup carries every connection on: not what this test is about), once its backup
    // protects every connection.
    let primary = primary_of(&lab);
    let backup = other_member(&primary);
    assert!(
        common::wait_until(Duration::from_secs(5), || lab.daemon_status(&primary)
            ["holds_connections"]
            == false),
        "{backup} protects every connection of {primary}: {}",
        lab.situation()
    );
    let pids = daemon_pids(&lab, &primary);
    assert_eq!(pids.len(), 1, "one daemon runs on {primary}: {pids:?}");
    let stopped_at = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pids[0]])
        .status()
        .expect("kill");
    assert!(status.success());
    assert!(
        common::wait_until(Duration::from_secs(3), || lab.holders_except(&primary)
            == vec![backup.clone()]),
        "{backup} takes over from the stopped {primary}"
    );
    let took = stopped_at.elapsed();
    let log_path = lab.info.state_dir.join(format!("{primary}.daemon.log"));
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        common::wait_until(Duration::from_secs(3), || log().contains("planned stop")),
        "{primary} handed its sessions over before stopping: {}",
        lab.situation()
    );
    let log = log();
    let handed = log.lines().find(|line| line.contains("planned stop"));
    load.wait_for_successes(
        load.successes(),
        120,
        Duration::from_secs(10),
        "after the stop",
    );
    eprintln!("{}", handed.unwrap_or_default());
    let plane = lab.daemon_status(&backup)["data_plane"].clone();
    let report = load.stop();
    eprintln!(
        "switchover: {backup} held the address {took:?} after the stop; restored {} lost {} {}; \
         {} requests, longest {:?}",
        plane["connections_restored"],
        plane["connections_lost"],
        plane["lost_reasons"],
        report.requests(),
        longest_request(&report)
    );
    assert_clean(&report, "a planned switchover");
    assert_exactly_once(&lab, &report, "a planned switchover");
    assert_eq!(plane["connections_restored"], 60, "{plane}");
    assert_eq!(plane["connections_lost"], 0, "{plane}");
}

/// The node id of lab host `host` (`n2` is 2).
fn node_id(host: &str) -> String {
    host.trim_start_matches('n').to_string()
}

/// Runs `steadfast ARGS --socket` with `host`'s control socket; panics with its error.
fn control(lab: &Lab, host: &str, args: &[&str]) -> String {
    let socket = lab.info.state_dir.join(format!("{host}.sock"));
    let socket = socket.to_str().expect("a UTF-8 path");
    let args: Vec<&str> = args.iter().copied().chain(["--socket", socket]).collect();
    let (ok, out, err) = common::steadfast(&args);
    assert!(
        ok,
        "steadfast {args:?} on {host}: {err}{out}{}",
        lab.situation()
    );
    out
}

/// Waits until `primary`'s backup protects every open connection (the election then ranks
/// nobody first: `holds_connections` is false).
fn wait_fully_protected(lab: &Lab, primary: &str) {
    assert!(
        common::wait_until(Duration::from_secs(10), || lab.daemon_status(primary)
            ["holds_connections"]
            == false),
        "the backup of {primary} protects every connection: {}",
        lab.situation()
    );
}

/// `steadfast move --to` the backup under a verifying keep-alive load, there and back: the
/// primary hands every connection over and stays a backup, the target carries them on; no
/// request fails, no commit is lost or doubled, and the command reports the stall.
#[test]
fn moving_the_service_to_the_backup_and_back_loses_no_request() {
    let (lab, _, _) = protected_lab("mv");
    let load = BackgroundLoad::start_with(&lab, keep_alive_load(&lab, 60, Duration::from_secs(40)));
    load.wait_for_successes(0, 120, Duration::from_secs(10), "before the move");
    let mut primary = primary_of(&lab);
    for round in 0..2 {
        let backup = other_member(&primary);
        wait_fully_protected(&lab, &primary);
        let takeovers_before = lab.daemon_status(&backup)["data_plane"]["takeovers"]
            .as_u64()
            .unwrap_or(0);
        let joined_before = lab.daemon_status(&backup)["data_plane"]["backups_joined"]
            .as_u64()
            .unwrap_or(0);
        let out = control(&lab, &primary, &["move", "--to", &node_id(&backup)]);
        eprintln!("round {round}: {primary} -> {backup}: {}", out.trim());
        assert!(
            out.contains(&format!("moved to node {}", node_id(&backup))),
            "{out}"
        );
        let plane = takeover_done(&lab, &backup, takeovers_before);
        assert!(
            common::wait_until(Duration::from_secs(3), || lab.holders()
                == vec![backup.clone()]),
            "{backup} alone holds the address after the move: {}",
            lab.situation()
        );
        eprintln!(
            "round {round}: {backup} rebuilt in {} µs: restored {} lost {} {}",
            plane["last_takeover_us"],
            plane["connections_restored"],
            plane["connections_lost"],
            plane["lost_reasons"]
        );
        assert_eq!(plane["connections_lost"], 0, "{plane}");
        // The old primary stays in the group as the new primary's backup.
        let old = lab.daemon_status(&primary);
        assert_eq!(old["role"], "backup", "{old}");
        assert_eq!(
            old["primary"],
            node_id(&backup).parse::<u64>().unwrap(),
            "{old}"
        );
        wait_backup_joined(&lab, &backup, joined_before);
        load.wait_for_successes(
            load.successes(),
            120,
            Duration::from_secs(10),
            "after the move",
        );
        primary = backup;
    }
    let report = load.stop();
    eprintln!(
        "moves: {} requests, longest {:?}",
        report.requests(),
        longest_request(&report)
    );
    assert_clean(&report, "two planned moves");
    assert_exactly_once(&lab, &report, "two planned moves");
}

/// A move the group cannot carry out is refused with its reason, and changes nothing.
#[test]
fn a_move_that_cannot_succeed_is_refused() {
    let (lab, primary, backup) = protected_lab("mr");
    let socket = lab.info.state_dir.join(format!("{backup}.sock"));
    let socket = socket.to_str().unwrap();
    let (ok, _, err) = common::steadfast(&["move", "--to", &node_id(&primary), "--socket", socket]);
    assert!(!ok && err.contains("not the primary"), "{err}");
    let socket = lab.info.state_dir.join(format!("{primary}.sock"));
    let socket = socket.to_str().unwrap();
    for (to, says) in [
        (node_id(&primary), "already serves"),
        ("9".to_string(), "not a member"),
    ] {
        let (ok, _, err) = common::steadfast(&["move", "--to", &to, "--socket", socket]);
        assert!(!ok && err.contains(says), "move to {to}: {err}");
    }
    // The witness is a voter, not a member.
    let (ok, _, err) = common::steadfast(&["move", "--to", "100", "--socket", socket]);
    assert!(!ok && err.contains("refused"), "{err}");
    assert_eq!(lab.holders(), vec![primary.clone()]);
    // A member in standby cannot serve, once the primary has heard so (a move asked before
    // that would be accepted: the primary knows what the last heartbeat said).
    control(&lab, &backup, &["standby", "on"]);
    let backup_id: u64 = node_id(&backup).parse().unwrap();
    assert!(
        common::wait_until(Duration::from_secs(2), || {
            lab.daemon_status(&primary)["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["id"] == backup_id && p["healthy"] == false)
        }),
        "{primary} hears {backup} cannot serve: {}",
        lab.situation()
    );
    let (ok, _, err) = common::steadfast(&["move", "--to", &node_id(&backup), "--socket", socket]);
    assert!(!ok && err.contains("cannot serve"), "{err}");
    assert_eq!(lab.holders(), vec![primary]);
}

/// Standby at the primary under a verifying load: it hands its connections over as a move
/// does, and then serves nothing: the new primary does not take it as its backup (it serves
/// unprotected). Standby outlives a restart of the daemon; off, the node joins as backup.
#[test]
fn standby_hands_the_service_over_and_outlives_a_restart() {
    let (lab, _, _) = protected_lab("sb");
    let load = BackgroundLoad::start_with(&lab, keep_alive_load(&lab, 30, Duration::from_secs(40)));
    load.wait_for_successes(0, 60, Duration::from_secs(10), "before standby");
    let primary = primary_of(&lab);
    let backup = other_member(&primary);
    wait_fully_protected(&lab, &primary);
    let takeovers_before = lab.daemon_status(&backup)["data_plane"]["takeovers"]
        .as_u64()
        .unwrap_or(0);
    let out = control(&lab, &primary, &["standby", "on"]);
    eprintln!("{}", out.trim());
    let plane = takeover_done(&lab, &backup, takeovers_before);
    assert_eq!(plane["connections_lost"], 0, "{plane}");
    assert!(
        common::wait_until(Duration::from_secs(3), || lab.holders()
            == vec![backup.clone()]),
        "{backup} holds the address: {}",
        lab.situation()
    );
    let status = lab.daemon_status(&primary);
    assert_eq!(status["standby"], true, "{status}");
    assert_eq!(status["role"], "backup", "{status}");
    let (ok, text, _) = common::steadfast(&[
        "status",
        "--socket",
        lab.info
            .state_dir
            .join(format!("{primary}.sock"))
            .to_str()
            .unwrap(),
    ]);
    assert!(ok && text.contains("STANDBY"), "{text}");
    // Nobody protects the new primary's connections: the node in standby is not its backup.
    assert!(
        common::wait_until(Duration::from_secs(3), || lab.daemon_status(&backup)
            ["holds_connections"]
            == true),
        "{backup} serves unprotected: {}",
        lab.situation()
    );
    load.wait_for_successes(
        load.successes(),
        60,
        Duration::from_secs(10),
        "after standby",
    );
    let report = load.stop();
    assert_clean(&report, "standby at the primary");
    assert_exactly_once(&lab, &report, "standby at the primary");

    // A restart keeps standby.
    steadfast_lab::crash(lab.name(), &primary, CrashKind::Process).expect("crash");
    steadfast_lab::heal(lab.name(), &primary).expect("heal");
    assert!(
        common::wait_until(Duration::from_secs(5), || {
            steadfast_lab::lab::query_control_socket(
                &lab.info.state_dir.join(format!("{primary}.sock")),
            )
            .is_ok_and(|s| {
                s["standby"] == true && s["primary"] == node_id(&backup).parse::<u64>().unwrap()
            })
        }),
        "{primary} is still in standby after a restart: {}",
        lab.situation()
    );
    let joined_before = lab.daemon_status(&backup)["data_plane"]["backups_joined"]
        .as_u64()
        .unwrap_or(0);
    control(&lab, &primary, &["standby", "off"]);
    assert_eq!(lab.daemon_status(&primary)["standby"], false);
    wait_backup_joined(&lab, &backup, joined_before);
    assert_eq!(lab.holders(), vec![backup]);
}

/// An empty directory for the lab's downloads, named after the lab and `what`.
fn download_dir(lab: &Lab, what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{}-{what}", lab.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a download directory");
    dir
}

/// Waits (10 s at most) until `file` holds `bytes` bytes: a download is under way.
fn wait_file_grows(file: &std::path::Path, bytes: u64, what: &str) {
    let size = || std::fs::metadata(file).map_or(0, |m| m.len());
    assert!(
        common::wait_until(Duration::from_secs(10), || size() >= bytes),
        "{what}: {} holds {} bytes of the {bytes} awaited after 10 s",
        file.display(),
        size()
    );
}

/// curl downloading `path` to a file at `rate` bytes per second, in the client namespace: a
/// reply certain to be in flight when the primary dies.
fn slow_download(lab: &Lab, path: &str, rate: &str, file: &std::path::Path) -> std::process::Child {
    std::process::Command::new("ip")
        .args(["netns", "exec", &lab.info.client_ns, "curl"])
        .args(["--silent", "--show-error", "--fail", "--max-time", "60"])
        .args(["--limit-rate", rate, "--output"])
        .arg(file)
        .arg(format!("http://{}{path}", lab.target()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("curl (Debian package curl) runs")
}

/// I2 above the whole-reply limit (here 256 KiB): replies streamed in parts and cut by a
/// primary crash are finished by a range request guarded by the reply's strong ETag, in the
/// client's own framing (Content-Length or chunked) — every client reads every byte once. A
/// cut reply the backend does not promise to repeat (no ETag) resets its connection and is
/// counted; it is never spliced.
fn cut_replies_are_finished_by_range(backend: BackendKind) {
    let lab = Lab::up_with("cr", 2, backend, |opts| {
        opts.mode = Mode::Duplex;
        opts.witness = true;
        opts.heartbeat_ms = Some(20);
        opts.stream_replies_above = Some(256 * 1024);
    });
    let mut primary = primary_of(&lab);
    wait_backup_joined(&lab, &primary, 0);
    let builtin = backend == BackendKind::Builtin;
    // The download is long enough that at the crash, 1 s in at 8 MB/s, its reply is not
    // logged whole yet: the proxy logs ahead of the client by what the sockets buffer (up to
    // about 10 MiB with autotuning), and a reply logged whole is resumed from the log, not by
    // a range request.
    let (large, download_len) = if builtin {
        (8 * 1024 * 1024, 32 * 1024 * 1024)
    } else {
        (DOCROOT_LARGE, DOCROOT_LARGE)
    };
    let load = BackgroundLoad::start_with(
        &lab,
        LoadOptions {
            target: lab.target(),
            duration: Duration::from_secs(60),
            probes: None,
            keep_alive: Some(KeepAliveOptions {
                connections: 4,
                request_timeout: Duration::from_secs(20),
                sizes: vec![large],
                include_uuid: false,
                fixed_seed: (!builtin).then_some(DOCROOT_SEED),
                chunked_bytes: builtin,
                ..KeepAliveOptions::default()
            }),
        },
    );
    let dir = download_dir(&lab, "downloads");
    let resumable_file = dir.join("resumable");
    let resumable_path = format!("/bytes/{download_len}?seed={DOCROOT_SEED}");
    let unresumable_file = dir.join("unresumable");
    let mut downloads = None;
    let mut resumed_per_round = Vec::new();
    // The node that took the last crash over, and its count of range resumes before it.
    let mut last_taker = None;
    std::thread::sleep(Duration::from_millis(500));
    for round in 0..3 {
        primary = serving_primary(&lab, &primary, round);
        let other = other_member(&primary);
        let resumed_before = lab.daemon_status(&other)["data_plane"]["replies_resumed"]
            .as_u64()
            .unwrap_or(0);
        if round == 2 {
            // Started before the last crash only: this test is about the range resume of a
            // cut reply (a download cut by two crashes is the adoption tests' matter).
            let resumable = slow_download(&lab, &resumable_path, "8M", &resumable_file);
            // No validator: the builtin backend's /slow carries no ETag.
            let unresumable = builtin
                .then(|| slow_download(&lab, "/slow?ms=0&bytes=60000000", "8M", &unresumable_file));
            downloads = Some((resumable, unresumable));
        }
        // The scenario's own timing: 1 s into the replies (and the 2 s download) the primary
        // dies, so that every one of them is cut.
        std::thread::sleep(Duration::from_millis(1000));
        let failover = fail_over(&lab, &primary, CrashKind::Host, round);
        failover.takeover_done(&lab);
        last_taker = Some((other.clone(), resumed_before));
        // The scenario's own timing: the new primary finishes the cut replies alone for a
        // while before the heal (they resume after the takeover, by range).
        std::thread::sleep(Duration::from_millis(500));
        let plane = lab.daemon_status(&other)["data_plane"].clone();
        resumed_per_round.push(
            plane["replies_resumed"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(resumed_before),
        );
        eprintln!(
            "round {round}: {other} restored {} lost {} {}; cut replies finished {}, failed {}",
            plane["connections_restored"],
            plane["connections_lost"],
            plane["lost_reasons"],
            plane["replies_resumed"],
            plane["resumes_failed"]
        );
        failover.heal(&lab);
        primary = failover.primary;
    }
    let report = load.stop();
    let (resumable, unresumable) = downloads.expect("downloads started");
    eprintln!(
        "{backend}: {} replies of {large} bytes, longest {:?}",
        report.requests(),
        longest_request(&report)
    );
    assert_clean(&report, "replies streamed in parts across crashes");

    let out = resumable.wait_with_output().expect("curl finishes");
    assert!(
        out.status.success(),
        "curl {resumable_path} across a crash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = std::fs::read(&resumable_file).expect("the download");
    assert_eq!(body.len() as u64, download_len, "curl {resumable_path}");
    assert!(
        body == steadfast_lab::generator::expected_bytes(download_len, DOCROOT_SEED),
        "curl {resumable_path}: the body differs from the generator's"
    );
    let status = |host: &str, key: &str| {
        lab.daemon_status(host)["data_plane"][key]
            .as_u64()
            .unwrap_or(0)
    };
    let failed = status("n1", "resumes_failed") + status("n2", "resumes_failed");
    eprintln!(
        "cut replies finished by range, per crash, 500 ms after its takeover: \
         {resumed_per_round:?}"
    );
    // The last crash cuts curl's download, certainly in flight (it takes about 4 s). Counted
    // once curl has all of it: the new primary sends the logged bytes curl lacks first, at
    // curl's 8 MB/s, and only then asks the server for the rest, which may be seconds after
    // the takeover when the log ran megabytes ahead of curl.
    let (taker, resumed_before) = last_taker.expect("three crashes");
    let resumed_by_last = status(&taker, "replies_resumed").saturating_sub(resumed_before);
    assert!(
        resumed_by_last >= 1,
        "the last crash cut curl's download: {resumed_by_last} replies finished by range \
         after it ({resumed_per_round:?} per crash within 500 ms)"
    );
    assert_eq!(failed, 0, "no cut reply failed to finish");
    if let Some(unresumable) = unresumable {
        let out = unresumable.wait_with_output().expect("curl finishes");
        let got = std::fs::metadata(&unresumable_file).map_or(0, |m| m.len());
        eprintln!(
            "unresumable download: {} after {got} bytes: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        assert!(!out.status.success(), "a cut reply without ETag must fail");
        assert_eq!(
            out.status.code(),
            Some(56),
            "curl sees the connection reset at the takeover (56), not a timeout (28) minutes \
             later"
        );
        assert!(got < 60_000_000, "and never look complete");
        let partial: u64 = ["n1", "n2"]
            .iter()
            .map(|h| {
                lab.daemon_status(h)["data_plane"]["lost_reasons"]["partial-reply"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum();
        assert!(
            partial >= 1,
            "the lost connection is counted as partial-reply"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn replies_cut_by_a_crash_are_finished_by_range_builtin() {
    cut_replies_are_finished_by_range(BackendKind::Builtin);
}

#[test]
#[ignore = "needs nginx: apt-get install nginx-light (.ci/run installs it)"]
fn replies_cut_by_a_crash_are_finished_by_range_nginx() {
    cut_replies_are_finished_by_range(BackendKind::Nginx);
}

/// Sends `signal` (`-STOP`, `-CONT`) to `host`'s daemon.
fn signal_daemon(lab: &Lab, host: &str, signal: &str) {
    let pids = daemon_pids(lab, host);
    assert_eq!(pids.len(), 1, "one daemon runs on {host}: {pids:?}");
    let status = std::process::Command::new("kill")
        .arg(signal)
        .arg(&pids[0])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} {} on {host}", pids[0]);
}

/// The issue's reproduction: the backup's host crashes and is healed; while the healed node
/// joins, the primary's daemon is paused for 40 or 100 ms, 0 to 300 ms after the heal. The
/// primary holds a connection the healed node cannot carry on (a client that half-closed its
/// side, which no backup can adopt; before adoptions in mid-exchange, every connection in the
/// middle of a request was one): the healed node must wait for the primary rather than stand
/// and win, which dropped 11-20 of 20 connections every time. No client may see an error.
#[test]
fn a_primary_paused_while_its_healed_backup_joins_keeps_its_connections() {
    let (lab, primary, backup) = protected_lab("pj");
    let mut options = keep_alive_load(&lab, 20, Duration::from_secs(120));
    if let Some(keep_alive) = options.keep_alive.as_mut() {
        keep_alive.pause = Duration::from_millis(800);
        keep_alive.sizes = vec![1024, 10 * 1024];
        keep_alive.slow_upload = None;
    }
    let load = BackgroundLoad::start_with(&lab, options);
    let half_closed = own_request(&lab, "/slow?ms=25000&bytes=100", true);
    load.wait_for_successes(0, 40, Duration::from_secs(5), "before the first round");
    for pause_ms in [40u64, 100] {
        for delay_ms in [0u64, 100, 200, 300] {
            let what = format!("pause {pause_ms} ms, {delay_ms} ms after the heal");
            let joined_before = lab.daemon_status(&primary)["data_plane"]["backups_joined"]
                .as_u64()
                .unwrap_or(0);
            steadfast_lab::crash(lab.name(), &backup, CrashKind::Host).expect("crash");
            assert!(
                common::wait_until(Duration::from_secs(3), || lab.daemon_status(&primary)
                    ["data_plane"]["unprotected_now"]
                    .as_bool()
                    == Some(true)),
                "{what}: {primary} should serve unprotected once {backup} is gone: {}",
                lab.situation()
            );
            steadfast_lab::heal(lab.name(), &backup).expect("heal");
            // The scenario's own timing: where in the join the pause falls.
            std::thread::sleep(Duration::from_millis(delay_ms));
            signal_daemon(&lab, &primary, "-STOP");
            std::thread::sleep(Duration::from_millis(pause_ms));
            signal_daemon(&lab, &primary, "-CONT");
            wait_backup_joined(&lab, &primary, joined_before);
            // A pause longer than the lease makes the primary step down (it cannot know it
            // still leads) and stand again at once with everything it holds: the address may
            // be absent for that moment, but no other node may take it.
            assert!(
                lab.wait_holder(&primary, Duration::from_secs(2)),
                "{what}: {primary} alone should hold the address: {}",
                lab.situation()
            );
            let status = lab.daemon_status(&primary);
            assert_eq!(
                status["holds_connections"],
                true,
                "{what}: the half-closed client's connection stays {primary}'s alone: {}",
                lab.situation()
            );
            eprintln!("{what}: {primary} kept serving");
        }
    }
    let report = load.stop();
    assert_clean(&report, "a primary paused while its backup joins");
    let (outcome, _) = half_closed.join().expect("client thread");
    assert_eq!(
        outcome,
        Ok(100),
        "the half-closed client gets its whole reply"
    );
    let status = lab.daemon_status(&primary);
    assert_eq!(status["role"], "primary", "{status}");
    assert_eq!(
        status["data_plane"]["sessions_dropped_at_step_down"], 0,
        "{status}"
    );
}

/// The other side of the wait: a primary whose host really crashes while it holds a
/// connection nobody protects (a client that half-closed its side, which a backup that joins
/// cannot adopt) is replaced once the backup's probes find its host dead — well before the
/// holder grace — and that client is reset, not left hanging.
#[test]
fn a_crashed_holder_is_replaced_once_its_host_is_found_dead() {
    let (lab, primary, backup) = protected_lab("cd");
    // The client connects while the primary serves alone; the healed backup cannot adopt it.
    steadfast_lab::crash(lab.name(), &backup, CrashKind::Host).expect("crash the backup");
    assert!(
        common::wait_until(Duration::from_secs(3), || lab.daemon_status(&primary)
            ["data_plane"]["unprotected_now"]
            .as_bool()
            == Some(true)),
        "{primary} should serve unprotected once {backup} is gone: {}",
        lab.situation()
    );
    let half_closed = own_request(&lab, "/slow?ms=20000&bytes=100", true);
    assert!(
        common::wait_until(Duration::from_secs(5), || lab.daemon_status(&primary)
            ["holds_connections"]
            .as_bool()
            == Some(true)),
        "{primary} holds the half-closed client's connection: {}",
        lab.situation()
    );
    steadfast_lab::heal(lab.name(), &backup).expect("heal the backup");
    wait_backup_joined(&lab, &primary, 1);
    assert_eq!(
        lab.daemon_status(&primary)["holds_connections"],
        true,
        "{backup} cannot adopt the half-closed connection: {}",
        lab.situation()
    );
    let status = lab.daemon_status(&backup);
    let grace = Duration::from_millis(status["holder_grace_ms"].as_u64().expect("holder grace"));
    steadfast_lab::crash(lab.name(), &primary, CrashKind::Host).expect("crash");
    let crashed_at = Instant::now();
    assert!(
        common::wait_until(Duration::from_secs(5), || lab.holders_except(&primary)
            == vec![backup.clone()]),
        "{backup} never took over: {}",
        lab.situation()
    );
    let took = crashed_at.elapsed();
    eprintln!(
        "{backup} took over {took:?} after {primary}'s host crashed (holder grace {grace:?})"
    );
    let status = lab.daemon_status(&backup);
    assert!(
        status["counters"]["peers_found_dead"].as_u64().unwrap_or(0) >= 1,
        "{backup} should have found {primary} dead: {status}"
    );
    assert!(
        took < grace,
        "{backup} took over only after {took:?}, the grace is {grace:?}: {status}"
    );
    let (outcome, _) = half_closed.join().expect("client thread");
    assert_eq!(
        outcome,
        Err(std::io::ErrorKind::ConnectionReset),
        "the half-closed client is reset at the takeover"
    );
    let plane = &status["data_plane"];
    assert_eq!(
        plane["lost_reasons"]["not-adopted"], 1,
        "the unadopted connection is counted: {plane}"
    );
}

/// A long exchange in flight through a crash, a heal and a second crash: a download (rate
/// limited, so it spans the whole scenario) or an upload.
enum Exchange {
    /// `curl` downloading `path` to `file` (nginx and apache2: a client nobody wrote for
    /// Steadfast).
    Curl {
        child: std::process::Child,
        file: std::path::PathBuf,
    },
    /// A client of this test, so the builtin variant needs nothing installed.
    Own(std::thread::JoinHandle<Result<String, String>>),
}

impl Exchange {
    /// Waits for the exchange; what it got, or why it failed.
    fn finish(self, expected_len: u64) -> Result<String, String> {
        match self {
            Exchange::Curl { child, file } => {
                let out = child.wait_with_output().map_err(|e| e.to_string())?;
                if !out.status.success() {
                    return Err(format!(
                        "curl {}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                let body = std::fs::read(&file).map_err(|e| e.to_string())?;
                let mut verifier =
                    steadfast_lab::generator::BodyVerifier::new(expected_len, DOCROOT_SEED);
                verifier
                    .update(&body)
                    .and_then(|()| verifier.finish())
                    .map_err(|e| format!("curl's body: {e}"))?;
                let _ = std::fs::remove_file(&file);
                Ok(format!("{} bytes, every one right", body.len()))
            }
            Exchange::Own(thread) => thread
                .join()
                .map_err(|_| "the client panicked".to_string())?,
        }
    }
}

/// Reads an HTTP/1.1 reply to a request that asked to close: status and body (de-chunked).
fn read_reply(
    stream: &mut std::net::TcpStream,
    pace: Option<(usize, Duration)>,
) -> Result<(u16, Vec<u8>), String> {
    use std::io::Read;
    let mut raw = Vec::new();
    let mut buf = vec![0u8; pace.map_or(64 * 1024, |(bytes, _)| bytes)];
    loop {
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("read after {} bytes: {e}", raw.len()))?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some((_, every)) = pace {
            std::thread::sleep(every);
        }
    }
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no reply head in {} bytes", raw.len()))?
        + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head}"))?;
    let mut body = raw.split_off(head_end);
    if head.contains("transfer-encoding: chunked") {
        let mut decoded = Vec::with_capacity(body.len());
        let mut rest = &body[..];
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("a chunk size line without its end")?;
            let size = usize::from_str_radix(
                std::str::from_utf8(&rest[..line_end]).map_err(|e| e.to_string())?,
                16,
            )
            .map_err(|e| format!("chunk size: {e}"))?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                if rest != b"\r\n" {
                    return Err("bytes after the last chunk".into());
                }
                break;
            }
            if rest.len() < size + 2 || &rest[size..size + 2] != b"\r\n" {
                return Err("a chunk cut short".into());
            }
            decoded.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = decoded;
    }
    Ok((status, body))
}

/// Downloads `path` (a generated body of `len` bytes, seed [`DOCROOT_SEED`]) from the client
/// namespace, reading about `rate` bytes per second, and checks every byte.
fn own_download(lab: &Lab, path: String, len: u64, rate: usize) -> Exchange {
    let (namespace, target) = (lab.info.client_ns.clone(), lab.target());
    Exchange::Own(std::thread::spawn(move || {
        steadfast_lab::run_in_namespace(&namespace, move || {
            use std::io::Write;
            let mut stream = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2))
                .map_err(|e| format!("connect: {e}"))?;
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .map_err(|e| e.to_string())?;
            write!(
                stream,
                "GET {path} HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n"
            )
            .map_err(|e| format!("send: {e}"))?;
            // Small reads at a steady pace: the client's window stays small, the reply sits
            // in the server's send queue.
            let every = Duration::from_millis(10);
            let (status, body) = read_reply(&mut stream, Some((rate / 100, every)))?;
            if status != 200 {
                return Err(format!("{path}: status {status}"));
            }
            let mut verifier = steadfast_lab::generator::BodyVerifier::new(len, DOCROOT_SEED);
            verifier
                .update(&body)
                .and_then(|()| verifier.finish())
                .map_err(|e| format!("{path}: {e}"))?;
            Ok(format!("{path}: {} bytes, every one right", body.len()))
        })
        .map_err(|e| e.to_string())?
    }))
}

/// Uploads `len` bytes to `POST /commit` (builtin backend) from the client namespace, writing
/// about `rate` bytes per second, and checks the reply names the body's SHA-256; returns the
/// commit's id (the data tier must hold it exactly once).
fn own_upload(lab: &Lab, len: usize, rate: usize, seed: u64) -> Exchange {
    let (namespace, target) = (lab.info.client_ns.clone(), lab.target());
    Exchange::Own(std::thread::spawn(move || {
        steadfast_lab::run_in_namespace(&namespace, move || {
            use sha2::Digest;
            use std::io::Write;
            let body = steadfast_lab::generator::expected_bytes(len as u64, seed);
            let digest: String = sha2::Sha256::digest(&body)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let mut stream = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2))
                .map_err(|e| format!("connect: {e}"))?;
            stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
            write!(
                stream,
                "POST /commit HTTP/1.1\r\nHost: vip\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
            )
            .map_err(|e| format!("send: {e}"))?;
            for piece in body.chunks(rate / 100) {
                stream.write_all(piece).map_err(|e| format!("upload: {e}"))?;
                std::thread::sleep(Duration::from_millis(10));
            }
            let (status, reply) = read_reply(&mut stream, None)?;
            let line = String::from_utf8_lossy(&reply).trim().to_string();
            let fields: Vec<&str> = line.split(' ').collect();
            if status != 200 || fields.len() != 3 || fields[2] != digest {
                return Err(format!("upload of {len} bytes: status {status}, reply {line:?}, body digest {digest}"));
            }
            Ok(fields[0].to_string())
        })
        .map_err(|e| e.to_string())?
    }))
}

/// The issue's scenario: long downloads (and uploads) in flight when the primary's host
/// crashes; the crashed node is healed and joins as backup, which must adopt every connection
/// the takeover carried over — all in the middle of a reply or a request — within a bounded
/// time after its join; 2 s after the heal the new primary's host crashes too. Every body must
/// arrive complete and right, every upload be committed exactly once, and no connection be lost
/// at the second takeover. Before, a connection was adopted only between two requests, and
/// every one of these was reset by the second crash (`not-adopted`).
fn exchanges_survive_a_crash_a_heal_and_a_second_crash(
    backend: BackendKind,
    downloads: usize,
    uploads: usize,
) {
    let lab = Lab::up_in_mode("ad", 2, true, backend, Some(10), Mode::Duplex);
    let primary = primary_of(&lab);
    wait_backup_joined(&lab, &primary, 0);
    let dir = download_dir(&lab, "adopt");
    let len = DOCROOT_LARGE;
    // About 13 s per download, 9 s per upload: in flight through both crashes.
    let rate = 2_500_000;
    let mut exchanges = Vec::new();
    for i in 0..downloads {
        let exchange = match backend {
            BackendKind::Builtin => {
                // Half of them chunked: the hand-over must say where a chunk stands.
                let chunked = if i % 2 == 1 { "&chunked=1" } else { "" };
                own_download(
                    &lab,
                    format!("/bytes/{len}?seed={DOCROOT_SEED}{chunked}"),
                    len,
                    rate,
                )
            }
            _ => {
                let file = dir.join(format!("d{i}"));
                let child = slow_download(
                    &lab,
                    &steadfast_lab::webservers::bytes_path(len),
                    "2500K",
                    &file,
                );
                Exchange::Curl { child, file }
            }
        };
        exchanges.push(("download", exchange));
    }
    let upload_len = 14 * 1024 * 1024;
    for i in 0..uploads {
        exchanges.push((
            "upload",
            own_upload(&lab, upload_len, 1_600_000, 100 + i as u64),
        ));
    }
    let open = || {
        lab.daemon_status(&primary)["data_plane"]["sessions_open"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(
        common::wait_until(Duration::from_secs(10), || open() >= exchanges.len() as u64),
        "{primary} has {} of the {} exchanges open after 10 s",
        open(),
        exchanges.len()
    );
    let first = fail_over(&lab, &primary, CrashKind::Host, 0);
    let plane = first.takeover_done(&lab);
    eprintln!(
        "first crash: {} restored {} lost {} {}, cut replies to finish by range",
        first.primary,
        plane["connections_restored"],
        plane["connections_lost"],
        plane["lost_reasons"]
    );
    let healed_at = Instant::now();
    steadfast_lab::heal(lab.name(), &first.crashed).expect("heal");
    wait_backup_joined(&lab, &first.primary, first.joined_before);
    let joined_after = healed_at.elapsed();
    let protected = common::wait_until(
        Duration::from_secs(2).saturating_sub(healed_at.elapsed()),
        || {
            lab.daemon_status(&first.primary)["data_plane"]["joins_protected"]
                .as_u64()
                .unwrap_or(0)
                >= 1
        },
    );
    let plane = lab.daemon_status(&first.primary)["data_plane"].clone();
    eprintln!(
        "healed {}: joined {joined_after:?} after the heal; every connection protected {} ms after \
         the join ({protected}); adopted {} ({} mid-request, {} mid-reply), {} not yet; waits {}",
        first.crashed,
        plane["join_protected_last_ms"],
        plane["adopted"],
        plane["adopted_mid_request"],
        plane["adopted_mid_reply"],
        plane["unadopted_now"],
        plane["adoption_waits"]
    );
    // The scenario's own timing: the second crash comes 2 s after the heal.
    std::thread::sleep(Duration::from_secs(2).saturating_sub(healed_at.elapsed()));
    // A lease that lapsed meanwhile (10 ms heartbeats on a loaded 2-core host) may have moved
    // the service to the protecting backup, which carries every connection on: the second
    // crash is of whichever node serves now. What the exchanges got says whether the move
    // lost anything.
    let serving = primary_of(&lab);
    if serving != first.primary {
        eprintln!(
            "{} stepped down after the heal (lease lapse): {serving} serves: {}",
            first.primary,
            lab.daemon_status(&serving)["data_plane"]
        );
        // Then the node it replaced is its backup anew and must take every connection over
        // again (a download's hand-over carries megabytes): the second crash is meant for a
        // protected primary, so it waits until that backup itself holds them all. A crash
        // inside that moment loses the connections not yet handed over (see the closing
        // note of 2026-12-06).
        wait_backup_holds_every_connection(&lab, &serving);
    }
    let second = fail_over(&lab, &serving, CrashKind::Host, 1);
    let takeover = second.takeover_done(&lab);
    eprintln!(
        "second crash, {:?} after the heal: {} restored {} lost {} {}",
        healed_at.elapsed(),
        second.primary,
        takeover["connections_restored"],
        takeover["connections_lost"],
        takeover["lost_reasons"]
    );
    let mut failures = Vec::new();
    let mut committed = Vec::new();
    for (what, exchange) in exchanges {
        match exchange.finish(len) {
            Ok(got) => {
                eprintln!("{what}: {got}");
                if what == "upload" {
                    committed.push(got);
                }
            }
            Err(why) => failures.push(format!("{what}: {why}")),
        }
    }
    assert!(failures.is_empty(), "{backend}: {failures:#?}");
    assert!(
        protected,
        "{backend}: the healed backup did not protect every connection within 2 s of the heal: {plane}"
    );
    assert_eq!(takeover["connections_lost"], 0, "{takeover}");
    if uploads > 0 {
        let verdict = steadfast_lab::data_tier::check_exactly_once(
            &lab.info.state_dir.join("commits.log"),
            &committed,
        )
        .expect("read the data tier");
        assert!(
            verdict.holds(),
            "uploads committed exactly once: {verdict:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn downloads_in_flight_survive_a_crash_a_heal_and_a_second_crash_builtin() {
    exchanges_survive_a_crash_a_heal_and_a_second_crash(BackendKind::Builtin, 8, 0);
}

#[test]
#[ignore = "needs nginx and curl: apt-get install nginx-light curl"]
fn downloads_in_flight_survive_a_crash_a_heal_and_a_second_crash_nginx() {
    exchanges_survive_a_crash_a_heal_and_a_second_crash(BackendKind::Nginx, 8, 0);
}

#[test]
#[ignore = "needs apache2 and curl: apt-get install apache2 curl"]
fn downloads_in_flight_survive_a_crash_a_heal_and_a_second_crash_apache2() {
    exchanges_survive_a_crash_a_heal_and_a_second_crash(BackendKind::Apache2, 8, 0);
}

#[test]
fn uploads_in_flight_survive_a_crash_a_heal_and_a_second_crash() {
    exchanges_survive_a_crash_a_heal_and_a_second_crash(BackendKind::Builtin, 2, 4);
}
