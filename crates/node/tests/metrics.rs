//! The Prometheus endpoint in a lab (needs root: namespaces): every voter serves `/metrics` on
//! its lab address, scraped from the client's namespace as a Prometheus server elsewhere on
//! the network would; a duplex failover shows in the new primary's samples.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{BackgroundLoad, Lab};
use steadfast::metrics::sample_value;
use steadfast_lab::configs::METRICS_PORT;
use steadfast_lab::topology::Host;
use steadfast_lab::{BackendKind, CrashKind, Mode};

/// The text `host` (`n1`, `w`) serves on `/metrics`.
fn scrape(lab: &Lab, host: &str) -> String {
    let address = Host::parse_short(host)
        .unwrap_or_else(|| panic!("{host} is not a lab host"))
        .address();
    let target = SocketAddr::from((address, METRICS_PORT));
    let reply = steadfast_lab::http_get_in_namespace(
        &lab.info.client_ns,
        target,
        "/metrics",
        Duration::from_secs(2),
    )
    .unwrap_or_else(|e| panic!("scraping {host}: {e}"));
    assert_eq!(
        reply.status,
        200,
        "{host}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    String::from_utf8(reply.body).expect("the metrics text is UTF-8")
}

fn sample(text: &str, name: &str) -> f64 {
    sample_value(text, name).unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

#[test]
#[ignore = "needs root (network namespaces); run with --include-ignored"]
fn a_takeover_is_counted_in_the_new_primarys_metrics() {
    let lab = Lab::up_with("mx", 2, BackendKind::Builtin, |opts| {
        opts.mode = Mode::Duplex;
        opts.witness = true;
    });
    assert!(
        common::wait_until(Duration::from_secs(5), || lab.holders().len() == 1),
        "one holder expected{}",
        lab.situation()
    );
    let primary = lab.holders()[0].clone();
    let backup = if primary == "n1" { "n2" } else { "n1" };
    // The backup has joined once the primary counts it.
    assert!(
        common::wait_until(Duration::from_secs(10), || {
            sample_value(
                &scrape(&lab, &primary),
                "steadfast_data_plane_backups_joined_total",
            ) >= Some(1.0)
        }),
        "no backup joined {primary}:\n{}",
        scrape(&lab, &primary)
    );
    let before = scrape(&lab, backup);
    assert_eq!(sample(&before, "steadfast_role{role=\"backup\"}"), 1.0);
    assert_eq!(sample(&before, "steadfast_role{role=\"primary\"}"), 0.0);
    assert_eq!(sample(&before, "steadfast_data_plane_takeovers_total"), 0.0);
    let witness = scrape(&lab, "w");
    assert_eq!(sample(&witness, "steadfast_role{role=\"witness\"}"), 1.0);

    let load = BackgroundLoad::start(
        &lab,
        Duration::from_millis(10),
        Duration::from_secs(2),
        Duration::from_secs(20),
    );
    std::thread::sleep(Duration::from_millis(500));
    steadfast_lab::crash(lab.name(), &primary, CrashKind::Host).expect("crash");
    assert!(
        common::wait_until(Duration::from_secs(5), || {
            sample_value(
                &scrape(&lab, backup),
                "steadfast_data_plane_takeovers_total",
            ) == Some(1.0)
        }),
        "{backup} took over without counting it:\n{}",
        scrape(&lab, backup)
    );
    let after = scrape(&lab, backup);
    assert_eq!(
        sample(&after, "steadfast_role{role=\"primary\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(sample(&after, "steadfast_vip_held"), 1.0, "{after}");
    assert!(
        sample(&after, "steadfast_epoch") > sample(&before, "steadfast_epoch"),
        "{after}"
    );
    let restored = sample(&after, "steadfast_data_plane_connections_restored_total");
    // Handshakes under way at the crash are counted lost (their clients send the SYN again).
    let lost = sample(&after, "steadfast_data_plane_connections_lost_total");
    let status = lab.daemon_status(backup);
    assert_eq!(
        (restored, lost),
        (
            status["data_plane"]["connections_restored"]
                .as_f64()
                .unwrap_or(-1.0),
            status["data_plane"]["connections_lost"]
                .as_f64()
                .unwrap_or(-1.0)
        ),
        "the samples are the status document's"
    );
    let took = sample(&after, "steadfast_data_plane_last_takeover_seconds");
    assert!(
        took > 0.0 && took < 1.0,
        "takeover duration {took} s:\n{after}"
    );
    eprintln!("takeover in {took} s, {restored} connections restored, {lost} lost");
    let report = load.stop();
    assert_eq!(report.failures(), 0, "{:?}", report.summary());
}

#[test]
#[ignore = "needs root (network namespaces); run with --include-ignored"]
fn the_endpoint_answers_only_metrics_and_survives_garbage() {
    let lab = Lab::up("my", 1, false, BackendKind::Builtin, None);
    let target = SocketAddr::from((Host::Node(1).address(), METRICS_PORT));
    let missing = steadfast_lab::http_get_in_namespace(
        &lab.info.client_ns,
        target,
        "/nothing",
        Duration::from_secs(2),
    )
    .expect("an answer");
    assert_eq!(missing.status, 404);
    // Bytes that are no HTTP request get a 400 and the connection closes; the endpoint
    // answers the next scrape.
    let garbage = steadfast_lab::run_in_namespace(&lab.info.client_ns, || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(6)))?;
        stream.write_all(b"\x16\x03\x01\x00\xa5 not http\r\n\r\n")?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply)?;
        Ok::<_, std::io::Error>(reply)
    })
    .expect("enter the client namespace")
    .expect("an answer to garbage");
    assert!(
        garbage.starts_with(b"HTTP/1.1 400 "),
        "{}",
        String::from_utf8_lossy(&garbage)
    );
    let text = scrape(&lab, "n1");
    assert_eq!(sample(&text, "steadfast_healthy"), 1.0, "{text}");
}
