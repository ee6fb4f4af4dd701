//! Configuration parsing: a full valid file, every validation rule naming its field and line,
//! several errors at once, unknown keys, and the writer's round trip.

use std::path::Path;
use std::time::Duration;

use steadfast_core::config::{parse, to_toml, ConfigErrors, HealthCheckKind, Mode};

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
        ("rise = 1", "rise = 0", "rise = 0", "health_check[1].rise"),
        (
            "command = [\"/bin/true\"]",
            "command = []",
            "command = []",
            "health_check[1].command",
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
    ];
    for (from, to, at, field) in cases {
        let text = VALID.replacen(from, to, 1);
        assert_ne!(text, VALID, "case {field} did not change the file");
        let e = errors(&text);
        let line = line_of(&text, at);
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
