//! Configuration parsing: a full valid file, every validation rule naming its field and line,
//! several errors at once, unknown keys, and the writer's round trip.

use std::path::Path;
use std::time::Duration;

use std::net::Ipv4Addr;

use steadfast_core::config::{
    parse, to_toml, ConfigErrors, HealthCheckKind, Mode, DEFAULT_CONTROL_SOCKET,
    DEFAULT_HEARTBEAT_INTERVAL_MS, DEFAULT_MISS_COUNT, DEFAULT_PORT,
};

const VALID: &str = r#"node_id = 1

[group]
name = "web"
auth_key_file = "key"
heartbeat_interval_ms = 20
miss_count = 3

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
ports = [80, 443]
mode = "unreplicated"
backend = "127.0.0.1:8080"

[[health_check]]
kind = "http"
target = "127.0.0.1:8080"
path = "/health"

[[health_check]]
kind = "exec"
command = ["/bin/true"]
rise = 1

[notify]
command = ["/usr/local/bin/hook", "web"]

[control]
socket = "n1.sock"

[metrics]
listen = "127.0.0.1:9550"
"#;

fn exists(_: &Path) -> bool {
    true
}

fn errors(text: &str) -> ConfigErrors {
    parse(text, "n1.toml", &exists, Path::new("/etc/sf")).expect_err("must be refused")
}

/// The (line, field) pairs of the errors.
fn where_(e: &ConfigErrors) -> Vec<(usize, String)> {
    e.errors()
        .iter()
        .map(|e| (e.line, e.field.clone()))
        .collect()
}

/// The line where `needle`, which may span several lines, starts.
fn line_of_block(text: &str, needle: &str) -> usize {
    let at = text.find(needle).expect("needle");
    text[..at].matches('\n').count() + 1
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle")
        + 1
}

#[test]
fn a_full_valid_file() {
    let cfg = parse(VALID, "n1.toml", &exists, Path::new("/etc/sf")).unwrap();
    assert_eq!(cfg.node_id, 1);
    assert_eq!(cfg.group.auth_key_file, Path::new("/etc/sf/key"));
    assert_eq!(cfg.group.heartbeat_interval, Duration::from_millis(20));
    assert_eq!(cfg.group.port, 7410);
    assert_eq!(cfg.voters(), vec![1, 2, 9]);
    assert_eq!(cfg.quorum(), 2);
    assert!(!cfg.is_witness());
    assert_eq!(cfg.local_member().unwrap().prefix_len(), 24);
    assert_eq!(cfg.services[0].mode, Mode::Unreplicated);
    assert_eq!(cfg.services[0].interface, "eth0");
    assert!(matches!(
        cfg.health_checks[0].kind,
        HealthCheckKind::Http {
            expect_status: 200,
            ..
        }
    ));
    assert_eq!(cfg.health_checks[1].rise, 1);
    assert_eq!(cfg.control.socket, Path::new("/etc/sf/n1.sock"));
    assert_eq!(
        cfg.metrics.map(|m| m.listen),
        Some("127.0.0.1:9550".parse().unwrap())
    );
}

#[test]
fn a_metrics_address_that_is_not_one_names_its_line() {
    let text = VALID.replace(
        "listen = \"127.0.0.1:9550\"",
        "listen = \"localhost:metrics\"",
    );
    let e = errors(&text);
    assert_eq!(
        where_(&e),
        vec![(
            line_of(&text, "localhost:metrics"),
            "metrics.listen".to_string()
        )],
        "{e}"
    );
    assert!(e.to_string().contains("127.0.0.1:9550"), "{e}");
}

#[test]
fn a_group_name_that_cannot_name_tables_names_its_line() {
    for (bad, says) in [
        ("web service", "' '"),
        ("", "1 to 64 characters"),
        ("wéb", "'é'"),
    ] {
        let text = VALID.replace(
            "name = \"web\"\nauth_key_file",
            &format!("name = {bad:?}\nauth_key_file"),
        );
        let e = errors(&text);
        assert_eq!(
            where_(&e),
            vec![(
                line_of(&text, "auth_key_file") - 1,
                "group.name".to_string()
            )],
            "{bad:?}: {e}"
        );
        assert!(e.to_string().contains(says), "{bad:?}: {e}");
    }
    let long = "g".repeat(65);
    let text = VALID.replace(
        "name = \"web\"\nauth_key_file",
        &format!("name = {long:?}\nauth_key_file"),
    );
    assert!(errors(&text).to_string().contains("1 to 64 characters"));
    let fine = VALID.replace(
        "name = \"web\"\nauth_key_file",
        "name = \"web-2.eu_west\"\nauth_key_file",
    );
    assert_eq!(
        parse(&fine, "n1.toml", &exists, Path::new("/etc/sf"))
            .expect("letters, digits, '-', '_' and '.'")
            .group
            .name,
        "web-2.eu_west"
    );
}

#[test]
fn the_writer_round_trips() {
    let cfg = parse(VALID, "n1.toml", &exists, Path::new("/etc/sf")).unwrap();
    let text = to_toml(&cfg);
    let again = parse(&text, "again.toml", &exists, Path::new("/elsewhere")).unwrap();
    assert_eq!(again, cfg);
}

#[test]
fn unknown_key_names_its_line() {
    let text = VALID.replace("miss_count = 3", "miss_count = 3\nmis_count = 4");
    let e = errors(&text);
    let line = line_of(&text, "mis_count = 4");
    assert_eq!(e.errors()[0].line, line, "{e}");
    assert!(e.to_string().contains("unknown field"), "{e}");
    assert!(
        e.to_string().starts_with(&format!("n1.toml:{line}:")),
        "{e}"
    );
    assert!(e.errors()[0].field.contains("group"), "{e}");
}

#[test]
fn wrong_type_names_the_field() {
    let text = VALID.replace(
        "heartbeat_interval_ms = 20",
        "heartbeat_interval_ms = \"fast\"",
    );
    let e = errors(&text);
    assert_eq!(
        where_(&e),
        vec![(
            line_of(&text, "\"fast\""),
            "group.heartbeat_interval_ms".to_string()
        )],
        "{e}"
    );
}

#[test]
fn each_rule_names_field_and_line() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "id = 2\naddress = \"10.77.0.12/24\"",
            "id = 1 # duplicate\naddress = \"10.77.0.12/24\"",
            "# duplicate",
            "group.member[1].id",
        ),
        ("node_id = 1", "node_id = 5", "node_id = 5", "node_id"),
        (
            "vip = \"10.77.0.100\"",
            "vip = \"10.9.0.1\"",
            "vip = \"10.9.0.1\"",
            "service[0].vip",
        ),
        (
            "ports = [80, 443]",
            "ports = []",
            "ports = []",
            "service[0].ports",
        ),
        (
            "ports = [80, 443]",
            "ports = [0]",
            "ports = [0]",
            "service[0].ports",
        ),
        (
            "heartbeat_interval_ms = 20",
            "heartbeat_interval_ms = 0",
            "heartbeat_interval_ms = 0",
            "group.heartbeat_interval_ms",
        ),
        (
            "miss_count = 3",
            "miss_count = 1",
            "miss_count = 1",
            "group.miss_count",
        ),
        (
            "miss_count = 3",
            "miss_count = 1001",
            "miss_count = 1001",
            "group.miss_count",
        ),
        (
            "heartbeat_interval_ms = 20",
            "heartbeat_interval_ms = 9223372036854775807",
            "heartbeat_interval_ms = 9223372036854775807",
            "group.heartbeat_interval_ms",
        ),
        (
            "miss_count = 3",
            "miss_count = 3\nholder_grace_ms = 59",
            "holder_grace_ms = 59",
            "group.holder_grace_ms",
        ),
        (
            "miss_count = 3",
            "miss_count = 3\nreplication_stall_ms = 199",
            "replication_stall_ms = 199",
            "group.replication_stall_ms",
        ),
        ("rise = 1", "rise = 0", "rise = 0", "health_check[1].rise"),
        (
            "command = [\"/bin/true\"]",
            "command = []",
            "command = []",
            "health_check[1].command",
        ),
        (
            "mode = \"unreplicated\"",
            "mode = \"unreplicated\"\nclient_idle_timeout_ms = 99",
            "client_idle_timeout_ms = 99",
            "service[0].client_idle_timeout_ms",
        ),
        (
            "mode = \"unreplicated\"",
            "mode = \"unreplicated\"\nclient_header_timeout_ms = 86400001",
            "client_header_timeout_ms = 86400001",
            "service[0].client_header_timeout_ms",
        ),
        (
            "mode = \"unreplicated\"",
            "mode = \"unreplicated\"\nmax_connections_per_source = 0",
            "max_connections_per_source = 0",
            "service[0].max_connections_per_source",
        ),
        (
            "mode = \"unreplicated\"",
            "mode = \"unreplicated\"\nmax_half_open_per_source = 0",
            "max_half_open_per_source = 0",
            "service[0].max_half_open_per_source",
        ),
        (
            "mode = \"unreplicated\"",
            "mode = \"unreplicated\"\nmax_request_bytes_held = 1099511627777",
            "max_request_bytes_held = 1099511627777",
            "service[0].max_request_bytes_held",
        ),
        (
            "mode = \"unreplicated\"",
            "mode = \"triplex\"",
            "mode = \"triplex\"",
            "service[0].mode",
        ),
        (
            "kind = \"exec\"",
            "kind = \"ping\"",
            "kind = \"ping\"",
            "health_check[1].kind",
        ),
        (
            "backend = \"127.0.0.1:8080\"",
            "backend = \"localhost\"",
            "backend = \"localhost\"",
            "service[0].backend",
        ),
        (
            "address = \"10.77.0.11/24\"",
            "address = \"10.77.0.11\"",
            "address = \"10.77.0.11\"",
            "group.member[0].address",
        ),
        (
            "address = \"10.77.0.11/24\"",
            "address = \"10.77.0.11/33\"",
            "/33",
            "group.member[0].address",
        ),
        (
            "id = 9",
            "id = 2 # witness duplicate",
            "# witness duplicate",
            "group.witness.id",
        ),
        (
            "vip = \"10.77.0.100\"",
            "vip = \"10.77.0\"",
            "vip = \"10.77.0\"",
            "service[0].vip",
        ),
        (
            "miss_count = 3",
            "miss_count = 3\nport = 0",
            "port = 0",
            "group.port",
        ),
        ("rise = 1", "fall = 0", "fall = 0", "health_check[1].fall"),
        (
            "rise = 1",
            "interval_ms = 0",
            "interval_ms = 0",
            "health_check[1].interval_ms",
        ),
        (
            "rise = 1",
            "timeout_ms = 0",
            "timeout_ms = 0",
            "health_check[1].timeout_ms",
        ),
        (
            "command = [\"/bin/true\"]",
            "command = [\"\"]",
            "command = [\"\"]",
            "health_check[1].command",
        ),
        (
            "path = \"/health\"",
            "path = \"/health\"\ncommand = [\"/bin/true\"]",
            "command = [\"/bin/true\"]\n\n[[health_check]]",
            "health_check[0].command",
        ),
        (
            "rise = 1",
            "target = \"127.0.0.1:1\"",
            "target = \"127.0.0.1:1\"",
            "health_check[1].target",
        ),
        (
            "target = \"127.0.0.1:8080\"\npath",
            "target = \"nowhere\"\npath",
            "target = \"nowhere\"",
            "health_check[0].target",
        ),
        (
            "target = \"127.0.0.1:8080\"\npath",
            "path",
            "[[health_check]]",
            "health_check[0].target",
        ),
        (
            "command = [\"/usr/local/bin/hook\", \"web\"]",
            "command = []",
            "command = []",
            "notify.command",
        ),
    ];
    for (from, to, at, field) in cases {
        let text = VALID.replacen(from, to, 1);
        assert_ne!(text, VALID, "case {field} did not change the file");
        let e = errors(&text);
        let line = line_of_block(&text, at);
        assert!(
            where_(&e).contains(&(line, field.to_string())),
            "{field}: expected an error at line {line}, got:\n{e}"
        );
    }
}

#[test]
fn a_missing_key_file_is_named() {
    let e = parse(VALID, "n1.toml", &|_: &Path| false, Path::new("/etc/sf")).unwrap_err();
    assert_eq!(
        where_(&e),
        vec![(
            line_of(VALID, "auth_key_file"),
            "group.auth_key_file".into()
        )]
    );
    assert!(e.to_string().contains("/etc/sf/key"), "{e}");
}

#[test]
fn two_members_need_a_witness_or_two_node() {
    let start = VALID.find("[group.witness]").unwrap();
    let end = VALID.find("[[service]]").unwrap();
    let text = format!("{}{}", &VALID[..start], &VALID[end..]);
    let e = errors(&text);
    assert!(e.errors().iter().any(|e| e.field == "group.witness"), "{e}");
    let accepted = text.replace("miss_count = 3", "miss_count = 3\ntwo_node = true");
    let cfg = parse(&accepted, "n1.toml", &exists, Path::new("/")).unwrap();
    assert_eq!(cfg.quorum(), 1);
}

#[test]
fn several_errors_are_reported_together() {
    let text = VALID
        .replace("vip = \"10.77.0.100\"", "vip = \"10.9.0.1\"")
        .replace("miss_count = 3", "miss_count = 1")
        .replace("rise = 1", "rise = 0");
    let e = errors(&text);
    assert_eq!(e.errors().len(), 3, "{e}");
    assert_eq!(e.to_string().lines().count(), 3);
}

#[test]
fn a_witness_file_needs_no_service() {
    let start = VALID.find("[[service]]").unwrap();
    let text = VALID[..start].replace("node_id = 1", "node_id = 9");
    let cfg = parse(&text, "w.toml", &exists, Path::new("/")).unwrap();
    assert!(cfg.is_witness());
    let member = VALID[..start].to_string();
    let e = errors(&member);
    assert!(e.errors().iter().any(|e| e.field == "service"), "{e}");
}

#[test]
fn syntax_errors_carry_a_position() {
    let e = errors("node_id = 1\n[group\n");
    assert_eq!(e.errors()[0].line, 2, "{e}");
}

#[test]
fn the_schema_example_error_reads_exactly() {
    let text = VALID.replace("vip = \"10.77.0.100\"", "vip = \"10.9.0.1\"");
    let e = errors(&text);
    let line = line_of(&text, "vip = ");
    assert_eq!(
        e.to_string(),
        format!(
            "n1.toml:{line}:7: service[0].vip: 10.9.0.1 is outside 10.77.0.0/24, the subnet of \
             node 1's address 10.77.0.11/24"
        )
    );
}

#[test]
fn defaults_fill_every_optional_key() {
    let text = r#"node_id = 3
[group]
auth_key_file = "/k"
[[group.member]]
id = 3
address = "192.168.1.3/16"
[[service]]
name = "s"
vip = "192.168.200.1"
ports = [80]
mode = "duplex"
backend = "127.0.0.1:80"
[[health_check]]
kind = "http"
target = "127.0.0.1:80"
[[health_check]]
kind = "tcp"
target = "[::1]:22"
[notify]
command = ["/bin/hook"]
"#;
    let cfg = parse(text, "d.toml", &exists, Path::new("/etc")).unwrap();
    assert_eq!(cfg.group.name, "steadfast");
    assert_eq!(cfg.group.auth_key_file, Path::new("/k"));
    assert_eq!(cfg.group.port, DEFAULT_PORT);
    assert_eq!(
        cfg.group.heartbeat_interval,
        Duration::from_millis(DEFAULT_HEARTBEAT_INTERVAL_MS)
    );
    assert_eq!(cfg.group.miss_count, DEFAULT_MISS_COUNT);
    assert_eq!(DEFAULT_MISS_COUNT, 3);
    // Ten leases of 3 × 50 ms.
    assert_eq!(cfg.group.holder_grace, Duration::from_millis(1500));
    assert_eq!(cfg.group.replication_stall, Duration::from_millis(1000));
    assert!(!cfg.group.preempt && !cfg.group.two_node);
    assert_eq!(cfg.services[0].interface, "eth0");
    assert_eq!(cfg.services[0].mode, Mode::Duplex);
    assert_eq!(
        cfg.services[0].client_header_timeout,
        Duration::from_secs(60)
    );
    assert_eq!(cfg.services[0].client_idle_timeout, Duration::from_secs(75));
    assert_eq!(
        cfg.health_checks[0].kind,
        HealthCheckKind::Http {
            target: "127.0.0.1:80".parse().unwrap(),
            path: "/".into(),
            expect_status: 200
        }
    );
    assert_eq!(
        cfg.health_checks[1].kind,
        HealthCheckKind::Tcp {
            target: "[::1]:22".parse().unwrap()
        }
    );
    for c in &cfg.health_checks {
        assert_eq!(c.interval, Duration::from_millis(200));
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert_eq!((c.rise, c.fall), (2, 2));
    }
    assert_eq!(cfg.arp.gratuitous_count, 5);
    assert_eq!(cfg.arp.gratuitous_spacing, Duration::from_millis(20));
    assert!(cfg.arp.refresh_on_heal);
    assert_eq!(
        cfg.notify.as_ref().unwrap().timeout,
        Duration::from_millis(5000)
    );
    assert_eq!(cfg.control.socket, Path::new(DEFAULT_CONTROL_SOCKET));
    assert_eq!(cfg.quorum(), 1);
    assert_eq!(cfg.voters(), vec![3]);
}

#[test]
fn every_mode_is_accepted_by_the_parser() {
    for (name, mode) in [
        ("unreplicated", Mode::Unreplicated),
        ("simplex", Mode::Simplex),
        ("duplex", Mode::Duplex),
        ("active", Mode::Active),
    ] {
        let text = VALID
            .replace("\"unreplicated\"", &format!("\"{name}\""))
            .replace("ports = [80, 443]", "ports = [80]");
        let cfg = parse(&text, "n1.toml", &exists, Path::new("/")).unwrap();
        assert_eq!(cfg.services[0].mode, mode);
        assert_eq!(mode.as_str(), name);
    }
}

/// Simplex and duplex frame HTTP/1.1: a raw TCP protocol, a well-known non-HTTP port, or the
/// backend on the proxy's own address are refused, each naming the field and the reason.
#[test]
fn proxied_modes_refuse_what_they_cannot_frame() {
    let duplex = VALID.replace("\"unreplicated\"", "\"duplex\"");
    let errors = parse(&duplex, "n1.toml", &exists, Path::new("/")).unwrap_err();
    let text = errors.to_string();
    assert!(
        text.contains("n1.toml:24:9: service[0].ports: port 443 is the HTTPS"),
        "{text}"
    );
    let redis = duplex.replace("ports = [80, 443]", "ports = [6379]");
    let text = parse(&redis, "n1.toml", &exists, Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("port 6379 is the Redis port, not HTTP"),
        "{text}"
    );
    // An explicit protocol = "http" says the operator knows better.
    let explicit = redis.replace(
        "mode = \"duplex\"",
        "mode = \"duplex\"\nprotocol = \"http\"",
    );
    assert!(parse(&explicit, "n1.toml", &exists, Path::new("/")).is_ok());
    let tcp = redis.replace("mode = \"duplex\"", "mode = \"duplex\"\nprotocol = \"tcp\"");
    let text = parse(&tcp, "n1.toml", &exists, Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("service[0].protocol: mode duplex carries HTTP/1.1 only"),
        "{text}"
    );
    let bad = redis.replace(
        "mode = \"duplex\"",
        "mode = \"duplex\"\nprotocol = \"smtp\"",
    );
    let text = parse(&bad, "n1.toml", &exists, Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(text.contains("unknown protocol \"smtp\""), "{text}");
    let self_backend = duplex.replace("ports = [80, 443]", "ports = [80]").replace(
        "backend = \"127.0.0.1:8080\"",
        "backend = \"10.77.0.100:80\"",
    );
    let text = parse(&self_backend, "n1.toml", &exists, Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(text.contains("is the service address itself"), "{text}");
    // Unreplicated carries anything.
    let plain = VALID.replace("ports = [80, 443]", "ports = [6379]");
    assert!(parse(&plain, "n1.toml", &exists, Path::new("/")).is_ok());
}

#[test]
fn unknown_keys_are_named_with_their_table_and_line() {
    let cases = [
        ("node_id = 1", "node_id = 1\nnode = 1", "node = 1", "node"),
        (
            "id = 2\n",
            "id = 2\nweight = 3\n",
            "weight = 3",
            "group.member[1].weight",
        ),
        (
            "address = \"10.77.0.19/24\"",
            "address = \"10.77.0.19/24\"\nvote = true",
            "vote = true",
            "group.witness.vote",
        ),
        (
            "mode = \"unreplicated\"",
            "mode = \"unreplicated\"\nvips = []",
            "vips = []",
            "service[0].vips",
        ),
        (
            "rise = 1",
            "rise = 1\nretries = 3",
            "retries = 3",
            "health_check[1].retries",
        ),
        ("[notify]", "[notify]\nenv = []", "env = []", "notify.env"),
        (
            "socket = \"n1.sock\"",
            "socket = \"n1.sock\"\nmode = 1",
            "mode = 1",
            "control.mode",
        ),
        (
            "[notify]",
            "[arp]\ncount = 5\n\n[notify]",
            "count = 5",
            "arp.count",
        ),
        ("[notify]", "[logging]\n\n[notify]", "[logging]", "logging"),
    ];
    for (from, to, at, field) in cases {
        let text = VALID.replacen(from, to, 1);
        assert_ne!(text, VALID, "case {field} did not change the file");
        let e = errors(&text);
        assert_eq!(
            where_(&e),
            vec![(line_of(&text, at), field.to_string())],
            "{e}"
        );
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}

#[test]
fn missing_required_keys_are_named() {
    let cases = [
        ("node_id = 1\n", "", 1, "node_id"),
        (
            "auth_key_file = \"key\"\n",
            "",
            line_of(VALID, "[group]"),
            "group.auth_key_file",
        ),
        (
            "backend = \"127.0.0.1:8080\"\n",
            "",
            line_of(VALID, "[[service]]"),
            "service[0].backend",
        ),
        (
            "address = \"10.77.0.12/24\"\n",
            "",
            line_of_block(VALID, "[[group.member]]\nid = 2"),
            "group.member[1].address",
        ),
        (
            "kind = \"exec\"\n",
            "",
            line_of_block(VALID, "[[health_check]]\nkind = \"exec\""),
            "health_check[1].kind",
        ),
    ];
    for (from, to, line, field) in cases {
        let text = VALID.replacen(from, to, 1);
        assert_ne!(text, VALID, "case {field} did not change the file");
        let e = errors(&text);
        assert_eq!(where_(&e), vec![(line, field.to_string())], "{e}");
        assert!(e.to_string().contains("missing field"), "{e}");
    }
}

#[test]
fn a_group_without_members_is_refused() {
    let start = VALID.find("[[group.member]]").unwrap();
    let end = VALID.find("[group.witness]").unwrap();
    let text =
        format!("{}{}", &VALID[..start], &VALID[end..]).replace("node_id = 1", "node_id = 9");
    let e = errors(&text);
    assert!(
        where_(&e).contains(&(line_of(&text, "[group]"), "group.member".into())),
        "{e}"
    );
}

#[test]
fn errors_come_sorted_by_position_one_per_line() {
    let text = VALID
        .replace("mode = \"unreplicated\"", "mode = \"fast\"")
        .replace("node_id = 1", "node_id = 4")
        .replace("rise = 1", "rise = 0\nfall = 0");
    let e = errors(&text);
    let lines: Vec<usize> = e.errors().iter().map(|e| e.line).collect();
    let mut sorted = lines.clone();
    sorted.sort_unstable();
    assert_eq!(lines, sorted);
    assert_eq!(e.errors().len(), 4, "{e}");
    for (shown, error) in e.to_string().lines().zip(e.errors()) {
        assert_eq!(
            shown,
            format!(
                "n1.toml:{}:{}: {}: {}",
                error.line, error.column, error.field, error.message
            )
        );
    }
}

#[test]
fn a_witness_file_skips_the_vip_subnet_check() {
    let text = VALID
        .replace("node_id = 1", "node_id = 9")
        .replace("vip = \"10.77.0.100\"", "vip = \"192.0.2.1\"");
    let cfg = parse(&text, "w.toml", &exists, Path::new("/")).unwrap();
    assert!(cfg.is_witness());
    assert!(cfg.local_member().is_none());
}

#[test]
fn helpers_give_voters_quorum_and_addresses() {
    let cfg = parse(VALID, "n1.toml", &exists, Path::new("/etc/sf")).unwrap();
    assert_eq!(
        cfg.peer_addresses(),
        vec![
            (1, Ipv4Addr::new(10, 77, 0, 11)),
            (2, Ipv4Addr::new(10, 77, 0, 12)),
            (9, Ipv4Addr::new(10, 77, 0, 19)),
        ]
    );
    assert_eq!(cfg.local_member().unwrap().id, 1);
    assert_eq!(cfg.local_member().unwrap().subnet(), "10.77.0.0/24");

    // Voters come sorted whatever the file's order; quorum is a strict majority.
    let shuffled = VALID
        .replace("id = 9", "id = 0")
        .replace("id = 1\n", "id = 7\n")
        .replace("node_id = 1", "node_id = 7");
    let cfg = parse(&shuffled, "n7.toml", &exists, Path::new("/")).unwrap();
    assert_eq!(cfg.voters(), vec![0, 2, 7]);
    assert_eq!(cfg.quorum(), 2);

    let four = VALID.replace(
        "[group.witness]",
        "[[group.member]]\nid = 3\naddress = \"10.77.0.13/24\"\n\n[group.witness]",
    );
    let cfg = parse(&four, "n1.toml", &exists, Path::new("/")).unwrap();
    assert_eq!(cfg.voters(), vec![1, 2, 3, 9]);
    assert_eq!(cfg.quorum(), 3);

    // two_node changes nothing when a witness exists.
    let with_witness = VALID.replace("miss_count = 3", "miss_count = 3\ntwo_node = true");
    let cfg = parse(&with_witness, "n1.toml", &exists, Path::new("/")).unwrap();
    assert_eq!(cfg.quorum(), 2);
}

#[test]
fn non_ascii_text_gives_character_columns() {
    let text = VALID.replace("name = \"web\"\nauth", "name = \"wéb\" ; x = 1\nauth");
    let e = errors(&text);
    let line = line_of(&text, "wéb");
    assert_eq!(e.errors()[0].line, line, "{e}");
    assert_eq!(e.errors()[0].column, 14, "{e}");
}

/// Found by the config fuzz target: this file made toml_edit 0.23 panic ("all items have
/// spans") inside the structure check, so `steadfast check-config` or a starting daemon
/// crashed on it instead of naming the error. toml_edit 0.25 reports it.
#[test]
fn a_file_that_crashed_the_toml_parser_is_an_error() {
    let e = errors("=={\n.");
    assert!(!e.errors().is_empty(), "refused");
    assert!(e.to_string().contains("n1.toml:1:"), "located: {e}");
}

/// Active mode replicates Redis: its protocol is RESP, by default, and another one is refused
/// naming the field.
#[test]
fn active_mode_speaks_resp_and_refuses_other_protocols() {
    let active = VALID
        .replace("mode = \"unreplicated\"", "mode = \"active\"")
        .replace("ports = [80, 443]", "ports = [6379]");
    let cfg = parse(&active, "n1.toml", &exists, Path::new("/")).unwrap();
    assert_eq!(
        cfg.services[0].protocol,
        steadfast_core::config::Protocol::Resp
    );
    let explicit = active.replace(
        "mode = \"active\"",
        "mode = \"active\"\nprotocol = \"resp\"",
    );
    assert!(parse(&explicit, "n1.toml", &exists, Path::new("/")).is_ok());
    for other in ["http", "tcp"] {
        let text = active.replace(
            "mode = \"active\"",
            &format!("mode = \"active\"\nprotocol = \"{other}\""),
        );
        let errors = parse(&text, "n1.toml", &exists, Path::new("/")).unwrap_err();
        assert!(
            errors
                .to_string()
                .contains("service[0].protocol: mode active replicates Redis servers only"),
            "{other}: {errors}"
        );
    }
    let duplex = active.replace(
        "mode = \"active\"",
        "mode = \"duplex\"\nprotocol = \"resp\"",
    );
    let errors = parse(&duplex, "n1.toml", &exists, Path::new("/")).unwrap_err();
    assert!(
        errors.to_string().contains("a Redis one mode active"),
        "{errors}"
    );
}

/// Active mode's delivery strategy and read policy: the defaults when left out, each name
/// read, a misspelling refused naming the field, its place and the names it takes, and either
/// setting refused in a mode that has no replicas, saying why.
#[test]
fn active_mode_chooses_its_delivery_and_read_policy() {
    use steadfast_core::active_order::{DeliveryStrategy, ReadPolicy};
    let active = VALID
        .replace("mode = \"unreplicated\"", "mode = \"active\"")
        .replace("ports = [80, 443]", "ports = [6379]");
    let cfg = parse(&active, "n1.toml", &exists, Path::new("/")).unwrap();
    assert_eq!(cfg.services[0].delivery, Some(DeliveryStrategy::BestEffort));
    assert_eq!(cfg.services[0].read_policy, Some(ReadPolicy::WithPrimary));
    let unreplicated = parse(VALID, "n1.toml", &exists, Path::new("/")).unwrap();
    assert_eq!(unreplicated.services[0].delivery, None);
    assert_eq!(unreplicated.services[0].read_policy, None);

    for delivery in DeliveryStrategy::ALL {
        for policy in ReadPolicy::ALL {
            let text = active.replace(
                "mode = \"active\"",
                &format!(
                    "mode = \"active\"\ndelivery = \"{}\"\nread_policy = \"{}\"",
                    delivery.name(),
                    policy.name()
                ),
            );
            let cfg = parse(&text, "n1.toml", &exists, Path::new("/")).unwrap();
            assert_eq!(cfg.services[0].delivery, Some(delivery), "{text}");
            assert_eq!(cfg.services[0].read_policy, Some(policy), "{text}");
            // The writer keeps the choice.
            let again = parse(&to_toml(&cfg), "n1.toml", &exists, Path::new("/")).unwrap();
            assert_eq!(again, cfg);
        }
    }

    let misspelled = active.replace(
        "mode = \"active\"",
        "mode = \"active\"\ndelivery = \"save\"\nread_policy = \"RR-NP\"",
    );
    let e = errors(&misspelled).to_string();
    assert!(
        e.contains(
            "n1.toml:26:12: service[0].delivery: unknown value \"save\": expected \
             \"best-effort\" or \"safe\""
        ),
        "{e}"
    );
    assert!(
        e.contains(
            "n1.toml:27:15: service[0].read_policy: unknown value \"RR-NP\": expected \
             \"with-primary\" or \"without-primary\""
        ),
        "{e}"
    );

    for mode in ["unreplicated", "duplex"] {
        let text = VALID.replace(
            "mode = \"unreplicated\"",
            &format!("mode = \"{mode}\"\ndelivery = \"safe\"\nread_policy = \"with-primary\""),
        );
        let e = errors(&text).to_string();
        assert!(
            e.contains(&format!(
                "service[0].delivery: chooses how active mode's replicas run updates; mode \
                 {mode} has none: leave it out, or use mode active"
            )),
            "{mode}: {e}"
        );
        assert!(
            e.contains(&format!(
                "service[0].read_policy: chooses which of active mode's replicas serve reads; \
                 mode {mode} has none"
            )),
            "{mode}: {e}"
        );
    }
}
