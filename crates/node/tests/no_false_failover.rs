//! No false failover: at the default heartbeat settings, 60 s of full load (wrk saturating both
//! cores through the VIP) causes no role change. Needs root and wrk.

mod common;

use std::process::Command;
use std::time::Duration;

use common::Lab;
use steadfast_lab::BackendKind;

#[test]
#[ignore = "needs wrk: apt-get install wrk (.ci/run installs it)"]
fn sixty_seconds_of_saturating_load_cause_no_role_change() {
    let wrk = Command::new("wrk").arg("--version").output();
    assert!(
        wrk.is_ok(),
        "wrk is missing: install the Debian package wrk (.ci/run does)"
    );
    let lab = Lab::up("nff", 3, false, BackendKind::Builtin, None);
    let before: Vec<serde_json::Value> = ["n1", "n2", "n3"]
        .iter()
        .map(|h| lab.daemon_status(h))
        .collect();
    let url = format!("http://{}:{}/bytes/1024", lab.info.vip, lab.info.port);
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.info.client_ns,
            "wrk",
            "-t2",
            "-c64",
            "-d60s",
            "--timeout",
            "2s",
            &url,
        ])
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("wrk through the VIP:\n{text}");
    assert!(
        out.status.success(),
        "wrk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Requests/sec"), "wrk printed no rate: {text}");
    std::thread::sleep(Duration::from_millis(200));
    for (host, earlier) in ["n1", "n2", "n3"].iter().zip(&before) {
        let now = lab.daemon_status(host);
        assert_eq!(
            now["counters"]["role_changes"], earlier["counters"]["role_changes"],
            "{host} changed role under load: before {earlier}, after {now}"
        );
        assert_eq!(
            now["epoch"], earlier["epoch"],
            "{host}: epoch moved under load"
        );
    }
    assert_eq!(lab.holders(), vec!["n1"]);
}
