//! The `[relay]` table (issue 19): interfaces declared public or private, probes, hold-down,
//! siblings; defaults, every rule naming its field and line, the writer's round trip.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use steadfast_core::config::{
    parse, to_toml, Config, ConfigErrors, InterfaceClass, DEFAULT_HOLD_DOWN_MS, DEFAULT_PORT,
    DEFAULT_PROBE_PERIOD_MS, RELAY_PORT_OFFSET,
};
use steadfast_core::interface_manager::LinkClass;

const BASE: &str = r#"node_id = 1

[group]
auth_key_file = "key"

[[group.member]]
id = 1
address = "10.77.0.11/24"

[[group.member]]
id = 2
address = "10.77.0.12/24"

[group.witness]
id = 9
address = "10.77.0.19/24"

[[service]]
name = "web"
vip = "10.77.0.100"
interface = "eth0"
ports = [80]
mode = "unreplicated"
backend = "127.0.0.1:8080"
"#;

// 15 ms rounds: a black hole is found within 2 × 15 + 10 = 40 ms, inside the default
// heartbeat's 45 ms (see `relay_detection_must_end_within_the_election_lease`).
const RELAY: &str = r#"
[relay]
probe_period_ms = 15

[[relay.interface]]
name = "eth0"
class = "public"
probe_targets = ["10.77.0.1"]

[[relay.interface]]
name = "priv0"
class = "private"
speed_mbps = 100
address = "10.78.0.11"

[[relay.sibling]]
id = 2
interface = "priv0"
address = "10.78.0.12"
"#;

fn exists(_: &Path) -> bool {
    true
}

fn ok(text: &str) -> Config {
    parse(text, "n1.toml", &exists, Path::new("/etc/sf"))
        .unwrap_or_else(|e| panic!("must parse:\n{e}"))
}

fn errors(text: &str) -> ConfigErrors {
    parse(text, "n1.toml", &exists, Path::new("/etc/sf")).expect_err("must be refused")
}

fn line_of(text: &str, needle: &str) -> usize {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in text"));
    text[..at].matches('\n').count() + 1
}

/// The text with `relay` appended, and the one error it gets: (line, field, message).
fn one_error(relay: &str) -> (String, usize, String, String) {
    let text = format!("{BASE}{relay}");
    let e = errors(&text);
    assert_eq!(e.errors().len(), 1, "one error expected:\n{e}");
    let first = &e.errors()[0];
    (
        text.clone(),
        first.line,
        first.field.clone(),
        first.message.clone(),
    )
}

#[test]
fn without_a_relay_table_relay_is_off() {
    assert_eq!(ok(BASE).relay, None);
}

#[test]
fn a_relay_table_is_read_with_its_defaults() {
    let cfg = ok(&format!("{BASE}{RELAY}"));
    let relay = cfg.relay.expect("relay");
    assert_eq!(relay.port, DEFAULT_PORT + RELAY_PORT_OFFSET);
    assert_eq!(relay.probe_period, Duration::from_millis(15));
    assert_eq!(
        relay.probe_timeout,
        Duration::from_millis(DEFAULT_PROBE_PERIOD_MS)
    );
    assert_eq!(relay.hold_down, Duration::from_millis(DEFAULT_HOLD_DOWN_MS));
    assert_eq!(relay.interfaces.len(), 2);
    assert_eq!(relay.interfaces[0].class, InterfaceClass::Public);
    assert_eq!(
        relay.interfaces[0].probe_targets,
        vec![Ipv4Addr::new(10, 77, 0, 1)]
    );
    assert_eq!(
        relay.interfaces[1].address,
        Some(Ipv4Addr::new(10, 78, 0, 11))
    );
    let links = relay.declared_links();
    assert_eq!(links[1].class, LinkClass::Private);
    assert_eq!(links[1].speed_mbps, 100);
    let requester = relay.requester_settings();
    requester.validate().expect("valid requester settings");
    assert_eq!(requester.siblings[0].node, 2);
    assert_eq!(requester.siblings[0].next_hop, Ipv4Addr::new(10, 78, 0, 11));
    relay.probe_settings().validate().expect("valid probes");
}

#[test]
fn the_writer_round_trips_the_relay_table() {
    let cfg = ok(&format!("{BASE}{RELAY}"));
    let text = to_toml(&cfg);
    assert_eq!(ok(&text), cfg, "{text}");
}

#[test]
fn each_rule_names_field_and_line() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            r#"
[relay]
[[relay.interface]]
name = "eth0"
class = "publik"
[[relay.interface]]
name = "p"
class = "private"
address = "10.78.0.11"
"#,
            "publik",
            "relay.interface[0].class",
            "public or private",
        ),
        (
            r#"
[relay]
[[relay.interface]]
name = "eth0"
class = "public"
[[relay.interface]]
name = "p"
class = "private"
address = "10.78.0.11/24"
"#,
            "10.78.0.11/24",
            "relay.interface[1].address",
            "not a unicast IPv4 address",
        ),
        (
            r#"
[relay]
[[relay.interface]]
name = "eth0"
class = "public"
[[relay.interface]]
name = "eth0"
class = "private"
address = "10.78.0.11"
"#,
            "name = \"eth0\"\nclass = \"private\"",
            "relay.interface[1].name",
            "declared twice",
        ),
        (
            r#"
[relay]
[[relay.interface]]
name = "eth0"
class = "public"
[[relay.interface]]
name = "p"
class = "private"
address = "10.78.0.11"
[[relay.sibling]]
id = 1
interface = "p"
address = "10.78.0.12"
"#,
            "id = 1\ninterface",
            "relay.sibling[0].id",
            "this node itself",
        ),
        (
            r#"
[relay]
[[relay.interface]]
name = "eth0"
class = "public"
[[relay.interface]]
name = "p"
class = "private"
address = "10.78.0.11"
[[relay.sibling]]
id = 2
interface = "eth0"
address = "10.78.0.12"
"#,
            "interface = \"eth0\"\naddress = \"10.78.0.12\"",
            "relay.sibling[0].interface",
            "not declared a private interface",
        ),
        (
            r#"
[relay]
[[relay.interface]]
name = "eth0"
class = "public"
[[relay.interface]]
name = "p"
class = "private"
address = "10.78.0.11"
[[relay.sibling]]
id = 9
interface = "p"
address = "10.78.0.12"
"#,
            "id = 9\ninterface",
            "relay.sibling[0].id",
            "not a member",
        ),
        (
            r#"
[relay]
lease_ms = 100
refresh_ms = 100
[[relay.interface]]
name = "eth0"
class = "public"
[[relay.interface]]
name = "p"
class = "private"
address = "10.78.0.11"
"#,
            "refresh_ms",
            "relay.refresh_ms",
            "below lease_ms",
        ),
        (
            r#"
[relay]
probe_fall = 0
[[relay.interface]]
name = "eth0"
class = "public"
[[relay.interface]]
name = "p"
class = "private"
address = "10.78.0.11"
"#,
            "probe_fall",
            "relay.probe_fall",
            "at least 1",
        ),
        (
            r#"
[relay]
[[relay.interface]]
name = "eth0"
class = "public"
probe_targets = ["10.77.0.1", "gateway"]
[[relay.interface]]
name = "p"
class = "private"
address = "10.78.0.11"
"#,
            "probe_targets",
            "relay.interface[0].probe_targets[1]",
            "\"gateway\"",
        ),
        (
            r#"
[relay]
[[relay.interface]]
name = "eth0"
class = "public"
[[relay.interface]]
name = "p"
class = "private"
"#,
            "[[relay.interface]]\nname = \"p\"",
            "relay.interface[1].address",
            "needs this node's address",
        ),
    ];
    for (relay, at, field, message) in cases {
        let (text, line, got_field, got_message) = one_error(relay);
        assert_eq!(got_field, *field, "{relay}");
        assert_eq!(line, line_of(&text, at), "{field}: {got_message}");
        assert!(
            got_message.contains(message),
            "{field}: {got_message:?} lacks {message:?}"
        );
    }
}

#[test]
fn relay_needs_a_public_and_a_private_interface_holding_the_services() {
    let text =
        format!("{BASE}\n[relay]\n[[relay.interface]]\nname = \"eth1\"\nclass = \"public\"\n");
    let e = errors(&text);
    let messages: Vec<String> = e.errors().iter().map(ToString::to_string).collect();
    let relay_line = line_of(&text, "[relay]");
    assert_eq!(messages.len(), 2, "{e}");
    for needle in [
        "at least one private interface",
        "service[0] puts its address on \"eth0\"",
    ] {
        assert!(
            messages
                .iter()
                .any(|m| m.contains(needle) && m.starts_with(&format!("n1.toml:{relay_line}:"))),
            "no error {needle:?} at line {relay_line}:\n{e}"
        );
    }
}

#[test]
fn unknown_relay_keys_are_named() {
    let text = format!("{BASE}{RELAY}probe_periode_ms = 5\n");
    let e = errors(&text);
    assert!(
        e.errors()
            .iter()
            .any(|x| x.field.contains("probe_periode_ms")),
        "{e}"
    );
}

/// A public interface probed by ARP and a private one, every probe setting left out unless
/// `probes` sets it.
fn relay_with_probes(probes: &str) -> String {
    format!(
        r#"
[relay]
{probes}
[[relay.interface]]
name = "eth0"
class = "public"
probe_targets = ["10.77.0.1"]

[[relay.interface]]
name = "priv0"
class = "private"
address = "10.78.0.11"

[[relay.sibling]]
id = 2
interface = "priv0"
address = "10.78.0.12"
"#
    )
}

/// `BASE` with `lines` added to its `[group]` table.
fn base_with_group(lines: &str) -> String {
    BASE.replace("[group]\n", &format!("[group]\n{lines}\n"))
}

#[test]
fn relay_detection_must_end_within_the_election_lease() {
    // The defaults: a black hole found within 2 × 10 + 10 = 30 ms, the election's room
    // (3 − 2) × 50 − 5 = 45 ms.
    ok(&format!("{BASE}{}", relay_with_probes("")));
    // 20 ms rounds: 2 × 20 + 10 = 50 ms, past the 45 ms.
    let text = format!("{BASE}{}", relay_with_probes("probe_period_ms = 20"));
    let e = errors(&text);
    assert_eq!(e.errors().len(), 1, "{e}");
    let error = &e.errors()[0];
    assert_eq!(error.field, "relay.probe_period_ms");
    assert_eq!(error.line, line_of(&text, "probe_period_ms = 20"));
    for needle in [
        "2 × 20 + 10 = 50 ms",
        "relay.probe_fall = 2, default",
        &format!(
            "relay.probe_period_ms = 20, line {}",
            line_of(&text, "probe_period_ms = 20")
        ),
        "relay.probe_timeout_ms = 10, default",
        "(3 − 2) × 50 − 5 = 45 ms",
        "group.miss_count = 3, default",
        "group.heartbeat_interval_ms = 50, default",
    ] {
        assert!(error.message.contains(needle), "{needle:?} missing: {e}");
    }
    // Exactly at the budget is refused too: the sibling needs some time after detection.
    let text = format!(
        "{}{}",
        base_with_group("heartbeat_interval_ms = 10\nmiss_count = 6"),
        relay_with_probes("probe_timeout_ms = 19")
    );
    // 2 × 10 + 19 = 39 ms against (6 − 2) × 10 − 1 = 39 ms.
    let e = errors(&text);
    assert_eq!(e.errors().len(), 1, "{e}");
    assert!(
        e.errors()[0].message.contains("= 39 ms after it opens")
            && e.errors()[0].message.contains("group.miss_count = 6, line")
            && e.errors()[0]
                .message
                .contains("group.heartbeat_interval_ms = 10, line"),
        "{e}"
    );
    assert_eq!(e.errors()[0].line, line_of(&text, "probe_timeout_ms = 19"));
    // One millisecond less is accepted.
    ok(&format!(
        "{}{}",
        base_with_group("heartbeat_interval_ms = 10\nmiss_count = 6"),
        relay_with_probes("probe_timeout_ms = 18")
    ));
    // A slower black-hole detector needs a longer election lease: miss_count 4 gives 95 ms.
    ok(&format!(
        "{}{}",
        base_with_group("miss_count = 4"),
        relay_with_probes("probe_period_ms = 40\nprobe_fall = 2")
    ));
    let text = format!(
        "{}{}",
        base_with_group("miss_count = 4"),
        relay_with_probes("probe_period_ms = 40\nprobe_fall = 3")
    );
    let e = errors(&text);
    assert_eq!(e.errors().len(), 1, "{e}");
    assert!(
        e.errors()[0].message.contains("3 × 40 + 10 = 130 ms")
            && e.errors()[0].message.contains("(4 − 2) × 50 − 5 = 95 ms"),
        "{e}"
    );
}

#[test]
fn a_relay_judged_by_carrier_alone_needs_three_missed_heartbeats() {
    // No probe targets: a carrier loss is found at once, and the sibling has the whole
    // (miss_count − 2) intervals. With miss_count 2 it has none.
    let carrier_only = RELAY.replace("probe_targets = [\"10.77.0.1\"]\n", "");
    ok(&format!("{BASE}{carrier_only}"));
    let text = format!("{}{carrier_only}", base_with_group("miss_count = 2"));
    let e = errors(&text);
    assert_eq!(e.errors().len(), 1, "{e}");
    let error = &e.errors()[0];
    assert_eq!(error.field, "group.miss_count");
    assert_eq!(error.line, line_of(&text, "miss_count = 2"));
    assert!(
        error.message.contains("(2 − 2) × 50 − 5 = -5 ms")
            && error.message.contains("group.miss_count = 2, line")
            && error.message.contains("Raise group.miss_count to 3"),
        "{e}"
    );
}

#[test]
fn the_example_config_passes_with_and_without_a_default_relay_table() {
    let example = include_str!("../../../packaging/examples/web.toml");
    let cfg = ok(example);
    assert_eq!(cfg.relay, None);
    // The same file with a relay at every default (10 ms probe rounds) and its 50 ms × 3
    // heartbeat: the detection (30 ms) fits the election's 45 ms.
    let with_relay = format!("{example}{}", relay_with_probes(""));
    let cfg = ok(&with_relay);
    assert_eq!(
        cfg.relay.expect("relay").probe_period,
        Duration::from_millis(DEFAULT_PROBE_PERIOD_MS)
    );
}
