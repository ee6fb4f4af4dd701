//! The shape check: unknown keys, wrong types and missing keys are all reported in one run,
//! each at its own line, and alongside the value checks when the values can still be read.

use std::path::Path;

use steadfast_core::config::{parse, ConfigErrors};

/// Every key of the agreed schema, so a key the shape check forgot shows up as a failure here.
const EVERY_KEY: &str = r#"node_id = 1

[group]
name = "web"
auth_key_file = "key"
port = 7410
heartbeat_interval_ms = 50
miss_count = 4
preempt = false
two_node = false

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

[[health_check]]
kind = "http"
target = "127.0.0.1:8080"
path = "/health"
expect_status = 200
interval_ms = 200
timeout_ms = 500
rise = 2
fall = 2

[[health_check]]
kind = "exec"
command = ["/usr/bin/true"]

[arp]
gratuitous_count = 5
gratuitous_spacing_ms = 20
refresh_on_heal = true

[notify]
command = ["/usr/local/bin/on-role-change", "web"]
timeout_ms = 5000

[control]
socket = "/run/steadfast/steadfast.sock"
"#;

fn exists(_: &Path) -> bool {
    true
}

fn errors(text: &str) -> ConfigErrors {
    parse(text, "n1.toml", &exists, Path::new("/etc/sf")).expect_err("must be refused")
}

fn where_(e: &ConfigErrors) -> Vec<(usize, String)> {
    e.errors()
        .iter()
        .map(|e| (e.line, e.field.clone()))
        .collect()
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} is not in the file"))
        + 1
}

#[test]
fn every_key_of_the_schema_is_known() {
    let cfg = parse(EVERY_KEY, "n1.toml", &exists, Path::new("/etc/sf"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.health_checks.len(), 2);
}

#[test]
fn unknown_keys_in_several_tables_are_all_reported() {
    let text = EVERY_KEY
        .replace("preempt = false", "preempt = false\npre_empt = true")
        .replace(
            "interface = \"eth0\"",
            "interface = \"eth0\"\niface = \"eth1\"",
        )
        .replace("fall = 2", "fall = 2\nfalls = 3")
        .replace("[control]", "[logging]\nlevel = \"debug\"\n\n[control]");
    let e = errors(&text);
    assert_eq!(
        where_(&e),
        vec![
            (line_of(&text, "pre_empt"), "group.pre_empt".to_string()),
            (line_of(&text, "iface"), "service[0].iface".to_string()),
            (line_of(&text, "falls"), "health_check[0].falls".to_string()),
            (line_of(&text, "[logging]"), "logging".to_string()),
        ],
        "{e}"
    );
    assert!(
        e.errors()
            .iter()
            .all(|e| e.message.contains("unknown field")),
        "{e}"
    );
}

#[test]
fn an_unknown_key_does_not_hide_a_bad_value() {
    let text = EVERY_KEY
        .replace("miss_count = 4", "miss_count = 1\nmiss_limit = 4")
        .replace("vip = \"10.77.0.100\"", "vip = \"10.9.0.1\"");
    let e = errors(&text);
    assert_eq!(
        where_(&e),
        vec![
            (line_of(&text, "miss_count"), "group.miss_count".to_string()),
            (line_of(&text, "miss_limit"), "group.miss_limit".to_string()),
            (line_of(&text, "10.9.0.1"), "service[0].vip".to_string()),
        ],
        "{e}"
    );
}

#[test]
fn wrong_types_are_all_reported() {
    let text = EVERY_KEY
        .replace("port = 7410", "port = \"7410\"")
        .replace("preempt = false", "preempt = \"no\"")
        .replace("ports = [80]", "ports = [80, 70000, \"http\"]")
        .replace("rise = 2", "rise = -1")
        .replace(
            "command = [\"/usr/bin/true\"]",
            "command = \"/usr/bin/true\"",
        );
    let e = errors(&text);
    let got = where_(&e);
    for (needle, field) in [
        ("port = \"7410\"", "group.port"),
        ("preempt = \"no\"", "group.preempt"),
        ("70000", "service[0].ports[1]"),
        ("70000", "service[0].ports[2]"),
        ("rise = -1", "health_check[0].rise"),
        ("command = \"/usr/bin/true\"", "health_check[1].command"),
    ] {
        let want = (line_of(&text, needle), field.to_string());
        assert!(got.contains(&want), "expected {want:?} in:\n{e}");
    }
    let message = |field: &str| {
        e.errors()
            .iter()
            .find(|e| e.field == field)
            .map(|e| e.message.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        message("group.port"),
        "expected an integer from 0 to 65535, found a string"
    );
    assert_eq!(
        message("service[0].ports[1]"),
        "70000 is out of range: expected an integer from 0 to 65535"
    );
    assert_eq!(
        message("health_check[1].command"),
        "expected an array of strings, found a string"
    );
}

#[test]
fn missing_keys_in_several_tables_are_all_reported() {
    let text = EVERY_KEY
        .replacen("node_id = 1\n", "", 1)
        .replacen("address = \"10.77.0.12/24\"\n", "", 1)
        .replacen("mode = \"unreplicated\"\n", "", 1)
        .replacen(
            "command = [\"/usr/local/bin/on-role-change\", \"web\"]\n",
            "",
            1,
        );
    let e = errors(&text);
    let member_2 = text
        .find("[[group.member]]\nid = 2")
        .map(|at| text[..at].lines().count() + 1)
        .expect("second member");
    assert_eq!(
        where_(&e),
        vec![
            (1, "node_id".to_string()),
            (member_2, "group.member[1].address".to_string()),
            (line_of(&text, "[[service]]"), "service[0].mode".to_string()),
            (line_of(&text, "[notify]"), "notify.command".to_string()),
        ],
        "{e}"
    );
    assert!(
        e.errors()
            .iter()
            .all(|e| e.message.contains("missing field")),
        "{e}"
    );
}

#[test]
fn inline_tables_are_checked_like_sections() {
    let start = EVERY_KEY.find("[[group.member]]").unwrap();
    let end = EVERY_KEY.find("[group.witness]").unwrap();
    let inline = "member = [\n  { id = 1, address = \"10.77.0.11/24\" },\n  { id = 2, address = \"10.77.0.12/24\" },\n]\n\n";
    let text = format!("{}{}{}", &EVERY_KEY[..start], inline, &EVERY_KEY[end..]);
    let cfg = parse(&text, "n1.toml", &exists, Path::new("/")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.voters(), vec![1, 2, 9]);

    let bad = text.replace("{ id = 2, address", "{ id = 2, weight = 1, address");
    let e = errors(&bad);
    assert_eq!(
        where_(&e),
        vec![(
            line_of(&bad, "weight"),
            "group.member[1].weight".to_string()
        )],
        "{e}"
    );
}
