//! `steadfast-lab demo` in real namespace labs: duplex keeps every established connection through
//! the primary's host crash, unreplicated loses them, and the labs are gone afterwards. Needs
//! root (network namespaces).

mod common;

use std::time::{Duration, Instant};

use steadfast_lab::demo::{run_demo, DemoOptions, DemoReport};
use steadfast_lab::load::Transfer;
use steadfast_lab::Mode;

/// The default demo (duplex, then unreplicated) with shorter phases: the crash still waits for
/// the transfers to be in flight, the heal for them to end, the end for the rejoin.
#[test]
fn the_default_demo_keeps_duplex_connections_and_shows_unreplicated_losing_them() {
    let _one_lab_at_a_time = common::exclusive();
    let mut opts = DemoOptions::new(common::lab_exe());
    opts.name = common::lab_name("demo");
    opts.name.truncate(14);
    opts.before_crash = Duration::from_millis(1500);
    opts.crashed_for = Duration::from_secs(1);
    opts.after_heal = Duration::from_secs(1);
    let labs = opts.lab_names();
    let began = Instant::now();
    let mut out = Vec::new();
    let result = run_demo(opts, &mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    eprintln!("{text}");
    let summary = result.unwrap_or_else(|e| panic!("the demo failed to run: {e:#}"));
    eprintln!("the demo took {:?}", began.elapsed());

    for lab in &labs {
        for host in ["client", "n1", "n2", "w", "sw"] {
            let namespace = format!("{lab}-{host}");
            assert!(
                !common::namespace_exists(&namespace),
                "{namespace} is left behind"
            );
        }
    }
    let modes: Vec<Mode> = summary.reports.iter().map(|r| r.mode).collect();
    assert_eq!(modes, [Mode::Duplex, Mode::Unreplicated]);
    assert_eq!(summary.failures(), Vec::<String>::new(), "{text}");
    assert!(!text.contains("DEMO FAILED"), "{text}");
    assert!(!text.contains("under construction"), "{text}");

    let duplex = &summary.reports[0];
    assert_duplex_kept_everything(duplex, &text);
    let unreplicated = &summary.reports[1];
    assert_unreplicated_lost_its_connections(unreplicated, &text);

    let table = text
        .split("Side by side")
        .nth(1)
        .unwrap_or_else(|| panic!("no side-by-side table in:\n{text}"));
    let broken = table
        .lines()
        .find(|line| line.contains("established connections broken"))
        .unwrap_or_else(|| panic!("no broken-connections row in:\n{table}"));
    let cells: Vec<&str> = broken.split_whitespace().rev().take(2).collect();
    assert_eq!(
        cells,
        [unreplicated.broken_connections().to_string().as_str(), "0"],
        "{broken}"
    );
    assert!(table.contains("The demo took"), "{table}");
}

fn assert_duplex_kept_everything(report: &DemoReport, text: &str) {
    let crash = report.crash.as_ref().expect("duplex: a crash was made");
    assert!(report.heal.is_some(), "duplex: a heal was made");
    assert!(report.load.requests() > 100, "{text}");
    assert_eq!(
        report.load.request_failures(),
        0,
        "duplex: keep-alive errors {:?}",
        report.load.request_error_counts()
    );
    assert_eq!(report.broken_connections(), 0, "{text}");
    assert!(report.recovered(), "duplex: the service answers at the end");
    assert_eq!(report.transfers.len(), 2);
    for transfer in &report.transfers {
        assert!(
            transfer.in_flight_at(crash.at),
            "duplex: the {} was in flight at the crash: {transfer:?}",
            transfer.title()
        );
        assert!(
            transfer.completed(),
            "duplex: the {} completed: {transfer:?}",
            transfer.title()
        );
        let moved = transfer.moved_at_crash.expect("bytes at the crash");
        assert!(
            moved > 0 && moved < transfer.transfer.body_bytes(),
            "duplex: the {} was part way at the crash ({moved} bytes)",
            transfer.title()
        );
    }
    assert!(matches!(
        report.transfers[0].transfer,
        Transfer::Download { .. }
    ));
    let takeover = report.takeover.as_ref().expect("duplex: the takeover seen");
    // The keep-alive connections and both transfers, at least.
    assert!(
        takeover.restored >= report.load.connections.len() as u64 + 2,
        "{takeover:?}"
    );
    let rejoin = report
        .rejoin
        .as_ref()
        .expect("duplex: the healed node rejoined");
    assert_eq!(rejoin.node, crash.host);
    assert_eq!(rejoin.primary, takeover.node);
    assert!(
        rejoin.adopted.unwrap_or(0) >= report.load.connections.len() as u64,
        "the keep-alive connections open on {} were adopted: {rejoin:?}",
        takeover.node
    );
    assert!(rejoin.images_held.is_some(), "{rejoin:?}");
    let commits = report.commits.as_ref().expect("duplex: commits checked");
    assert!(commits.acknowledged > 0 && commits.holds(), "{commits:?}");
}

fn assert_unreplicated_lost_its_connections(report: &DemoReport, text: &str) {
    let crash = report
        .crash
        .as_ref()
        .expect("unreplicated: a crash was made");
    assert!(
        report.recovered(),
        "unreplicated: the service answers at the end"
    );
    // Every keep-alive connection was open on the crashed primary, and lost with it: a request
    // sent on it failed after the crash (a reply already on its way may still have come).
    for connection in &report.load.connections {
        let lost = connection
            .requests
            .iter()
            .find(|r| !r.connected && !r.outcome.is_ok() && r.start + r.latency >= crash.at);
        assert!(
            lost.is_some(),
            "unreplicated: connection {} was not lost at the crash: {:?}\n{text}",
            connection.index,
            connection
                .requests
                .iter()
                .find(|r| r.start + r.latency >= crash.at)
        );
    }
    for transfer in &report.transfers {
        assert!(
            !transfer.completed(),
            "unreplicated: the {} cannot survive the crash: {transfer:?}",
            transfer.title()
        );
    }
    assert!(report.takeover.is_none(), "no connection is rebuilt");
    assert!(
        text.contains("Expected in unreplicated mode"),
        "the losses are explained:\n{text}"
    );
}

#[test]
fn the_demo_refuses_modes_and_sizes_it_cannot_show() {
    let (ok, _, err) = common::steadfast_lab(&["demo", "--mode", "simplex"]);
    assert!(!ok);
    assert!(
        err.contains("the demo shows duplex or unreplicated mode, not simplex"),
        "{err}"
    );
    let (ok, _, err) = common::steadfast_lab(&["demo", "--nodes", "3"]);
    assert!(!ok);
    assert!(
        err.contains("duplex pairs a primary with one backup"),
        "{err}"
    );
    let (ok, _, err) = common::steadfast_lab(&["demo", "--nodes", "1", "--mode", "unreplicated"]);
    assert!(!ok);
    assert!(err.contains("at least 2 nodes"), "{err}");
    let (ok, out, _) = common::steadfast_lab(&["demo", "--help"]);
    assert!(ok);
    assert!(out.contains("--mode"), "{out}");
}
