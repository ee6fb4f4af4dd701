//! The command line against a running lab: `status` (human and JSON), `check-config` on the
//! files the lab wrote, and SIGHUP reloading a changed configuration. Needs root.

mod common;

use std::time::Duration;

use common::{steadfast, Lab};
use steadfast_lab::BackendKind;

#[test]
fn status_check_config_and_reload() {
    let lab = Lab::up("cli", 2, true, BackendKind::Builtin, None);
    let dir = lab.info.state_dir.clone();
    let n1 = dir.join("n1.toml");
    let n1 = n1.to_str().unwrap();

    let (ok, out, err) = steadfast(&["check-config", n1]);
    assert!(ok, "the lab's own config must validate: {err}");
    assert!(out.contains(": ok"), "{out}");

    let (ok, out, err) = steadfast(&["status", "--config", n1, "--json"]);
    assert!(ok, "status --json: {err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("status is JSON");
    assert_eq!(status["role"], "primary");
    assert_eq!(status["node_id"], 1);
    assert_eq!(status["vip_held"], true);
    assert_eq!(status["peers"].as_array().map(Vec::len), Some(2));

    let socket = dir.join("n2.sock");
    let (ok, out, err) = steadfast(&["status", "--socket", socket.to_str().unwrap()]);
    assert!(ok, "status: {err}");
    assert!(out.contains("node 2") && out.contains("backup"), "{out}");

    // A reload with a new hook: the next role change runs it.
    let text = std::fs::read_to_string(dir.join("n2.toml")).unwrap();
    let marker = dir.join("reloaded-hook.log");
    let changed = text.replace(
        "[notify]\ncommand = ",
        &format!(
            "[notify]\ncommand = [\"/bin/sh\", \"-c\", \"echo $STEADFAST_ROLE >> {}\"]\n# was: ",
            marker.display()
        ),
    );
    assert_ne!(
        changed, text,
        "the lab config has a [notify] section to change"
    );
    std::fs::write(dir.join("n2.toml"), changed).unwrap();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    let n2_pid = state["hosts"]["n2"]["daemon_pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(n2_pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    // The crash below must come after the reload, or the old hook runs.
    let log = dir.join("n2.daemon.log");
    assert!(
        common::wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("reloaded"))
        }),
        "n2 logged its reload: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !logged.contains('\u{1b}'),
        "a log written to a file holds no terminal colour codes: {logged}"
    );
    assert_eq!(
        lab.daemon_status("n2")["role"],
        "backup",
        "SIGHUP must not change the role"
    );
    steadfast_lab::crash(lab.name(), "n1", steadfast_lab::CrashKind::Host).unwrap();
    assert!(
        common::wait_until(Duration::from_secs(3), || {
            std::fs::read_to_string(&marker).is_ok_and(|t| t.contains("primary"))
        }),
        "the reloaded hook ran when n2 took over"
    );
}

/// SIGHUP applies `preempt` at once (the primary gives the address back to the healed lower
/// id), and names a change that needs a restart instead of applying it. Needs root.
#[test]
fn a_reload_turns_preemption_on_and_names_what_needs_a_restart() {
    let lab = Lab::up("rl", 2, true, BackendKind::Builtin, None);
    let dir = lab.info.state_dir.clone();
    assert!(
        lab.wait_holder("n1", Duration::from_secs(5)),
        "{}",
        lab.situation()
    );
    steadfast_lab::crash(lab.name(), "n1", steadfast_lab::CrashKind::Process).unwrap();
    // The killed daemon's address stays on n1 (silenced by its dead-man switch) until the heal.
    assert!(
        common::wait_until(Duration::from_secs(5), || lab.holders_except("n1")
            == vec!["n2".to_string()]),
        "{}",
        lab.situation()
    );
    steadfast_lab::heal(lab.name(), "n1").unwrap();
    // Healed, n1 follows: no preemption by default.
    assert!(common::wait_until(Duration::from_secs(5), || {
        steadfast_lab::lab::query_control_socket(&dir.join("n1.sock"))
            .is_ok_and(|s| s["primary"] == 2)
    }));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lab.holders(), vec!["n2".to_string()]);

    let interval = lab.daemon_status("n2")["heartbeat_interval_ms"].clone();
    let config = dir.join("n2.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let changed = text.replacen("[group]\n", "[group]\npreempt = true\n", 1);
    assert_ne!(changed, text, "the lab config has a [group] section");
    let changed = match changed.find("heartbeat_interval_ms = ") {
        Some(at) => {
            let end = at + changed[at..].find('\n').unwrap();
            format!(
                "{}heartbeat_interval_ms = 77{}",
                &changed[..at],
                &changed[end..]
            )
        }
        None => changed.replacen("[group]\n", "[group]\nheartbeat_interval_ms = 77\n", 1),
    };
    std::fs::write(&config, changed).unwrap();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    let n2_pid = state["hosts"]["n2"]["daemon_pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(n2_pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    assert!(
        lab.wait_holder("n1", Duration::from_secs(5)),
        "preempt = true, reloaded, gives the address back to n1: {}",
        lab.situation()
    );
    let restart = lab.daemon_log_lines("n2", "take effect only after a restart");
    assert!(
        restart.iter().any(|l| l.contains("heartbeat_interval_ms")),
        "n2 names the setting that needs a restart: {restart:?}"
    );
    assert_eq!(lab.daemon_status("n2")["heartbeat_interval_ms"], interval);
}

/// `steadfast status … | head` ends quietly when the reader goes away, as Unix tools do,
/// instead of panicking on the closed pipe. The reading end is closed before the command can
/// print (it has still to start): its first write meets no reader.
#[test]
fn printing_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let mut child = std::process::Command::new(common::daemon_exe())
        .args(["status", "--ruleset"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run steadfast status");
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    assert!(
        output.status.success() || output.status.signal() == Some(libc::SIGPIPE),
        "ended by the closed pipe or done first: {:?} {stderr}",
        output.status
    );
}

/// The daemon a user installs is the daemon and its commands: the lab, the demo, the benchmarks
/// and the builtin backend are `steadfast-lab`'s, and none of their code is linked into it (a
/// linked function of the lab crate would leave its path in the panic locations and its symbol
/// names in the executable). Needs no root.
#[test]
fn the_installed_daemon_links_no_lab_code() {
    let daemon = std::fs::read(common::daemon_exe()).expect("read the steadfast executable");
    let lab = std::fs::read(common::lab_exe()).expect("read the steadfast-lab executable");
    let holds = |bytes: &[u8], needle: &str| {
        bytes
            .windows(needle.len())
            .any(|window| window == needle.as_bytes())
    };
    for needle in ["steadfast_lab", "crates/lab/src/"] {
        assert!(
            holds(&lab, needle),
            "the lab's executable holds {needle:?}: the search finds what it looks for"
        );
        assert!(
            !holds(&daemon, needle),
            "steadfast links lab code: {needle:?}"
        );
    }
    for command in ["lab", "demo", "bench", "backend"] {
        let (ok, _, err) = steadfast(&[command, "--help"]);
        assert!(!ok, "steadfast has no {command} command");
        assert!(err.contains("unrecognized subcommand"), "{err}");
        let (ok, out, err) = common::steadfast_lab(&[command, "--help"]);
        assert!(ok, "steadfast-lab {command} --help: {err}");
        assert!(out.contains("Usage: steadfast-lab"), "{out}");
    }
    for command in [
        "run",
        "witness",
        "check-config",
        "status",
        "move",
        "standby",
    ] {
        let (ok, out, err) = steadfast(&[command, "--help"]);
        assert!(ok, "steadfast {command} --help: {err}");
        assert!(
            out.contains(&format!("Usage: steadfast {command}")),
            "{out}"
        );
    }
}

/// The `toml` blocks of the README, in order.
fn readme_toml_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("read README.md");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```toml") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// A README line `# key = value  # why` shown commented out, as the setting itself.
fn uncommented(line: &str) -> String {
    match line.strip_prefix("# ") {
        Some(setting) if setting.split_whitespace().nth(1) == Some("=") => setting.to_string(),
        _ => line.to_string(),
    }
}

/// Every setting the README shows, its commented-out ones included, is accepted by
/// `check-config`: the quick start's file, and the same with the duplex section's service in
/// place of its own. Needs no root.
#[test]
fn every_setting_the_readme_shows_is_accepted() {
    let blocks = readme_toml_blocks();
    assert!(blocks.len() >= 2, "the README's toml blocks: {blocks:?}");
    let (group, services) = (&blocks[0], &blocks[1]);
    assert!(group.contains("[group]") && services.contains("mode = \"duplex\""));
    let dir = std::env::temp_dir().join(format!("steadfast-readme-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key");
    std::fs::write(&key, "a group key of more than sixteen bytes\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let unreplicated: String = group.lines().map(|l| uncommented(l) + "\n").collect();
    // The duplex section's service instead of the quick start's.
    let start = unreplicated.find("[[service]]").expect("a service");
    let end = unreplicated[start..]
        .find("[[health_check]]")
        .map(|i| start + i)
        .expect("a health check after the service");
    let duplex_service: String = services.lines().map(|l| uncommented(l) + "\n").collect();
    let duplex = format!(
        "{}{duplex_service}\n{}",
        &unreplicated[..start],
        &unreplicated[end..]
    );
    // The active mode section's service instead, and a TCP check of its redis-server.
    let active_block = blocks
        .iter()
        .find(|b| b.contains("mode = \"active\""))
        .expect("the README's active mode block");
    let active_service: String = active_block
        .lines()
        .map(|l| uncommented(l) + "\n")
        .collect();
    let active = format!(
        "{}{active_service}\n[[health_check]]\nkind = \"tcp\"\ntarget = \"127.0.0.1:6379\"\n",
        &unreplicated[..start],
    );
    for (name, text) in [
        ("unreplicated", unreplicated),
        ("duplex", duplex),
        ("active", active),
    ] {
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, &text).unwrap();
        let (ok, out, err) = steadfast(&["check-config", file.to_str().unwrap()]);
        assert!(ok && out.contains(": ok"), "{name}: {err}{out}\n{text}");
        if name == "active" {
            assert!(
                out.contains(
                    "mode active, delivery = \"best-effort\", read_policy = \"with-primary\""
                ),
                "{out}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
