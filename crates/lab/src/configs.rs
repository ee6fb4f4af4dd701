//! The files the daemons read: the group key and one configuration per voter, in the agreed
//! schema (notes/config-schema.md). The health check of each member is an HTTP GET of
//! `/health` on its backend, or a TCP connect to its redis-server.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::LabError;
use crate::options::{BackendKind, Mode};
use crate::topology::{Host, LabName, HOST_INTERFACE, PREFIX_LEN, VIP};

/// The service's name in every lab.
pub const SERVICE_NAME: &str = "web";
/// Where each voter serves its Prometheus metrics, on its lab address.
pub const METRICS_PORT: u16 = 9550;

/// Writes 32 random bytes as 64 hex digits, readable by root only.
pub(crate) fn write_key(path: &Path) -> Result<(), LabError> {
    let mut key = [0u8; 32];
    getrandom::getrandom(&mut key).map_err(|e| {
        LabError::io(
            "drawing random bytes for the group key",
            path,
            std::io::Error::other(e.to_string()),
        )
    })?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| LabError::io("creating the group key", path, e))?;
    file.write_all(hex.as_bytes())
        .map_err(|e| LabError::io("writing the group key", path, e))
}

/// What every voter's configuration has in common.
pub(crate) struct GroupPlan<'a> {
    pub lab: &'a LabName,
    pub members: &'a [Host],
    pub witness: bool,
    pub mode: Mode,
    pub backend: BackendKind,
    pub heartbeat_ms: Option<u32>,
    pub replication_stall_ms: Option<u32>,
    pub replication_encryption: Option<bool>,
    pub stream_replies_above: Option<u64>,
    pub client_timeouts_ms: Option<(u32, u32)>,
    pub max_connections: Option<u32>,
    pub max_connections_per_source: Option<u32>,
    pub half_open_lifetime_ms: Option<u32>,
    pub delivery: Option<steadfast_core::active_order::DeliveryStrategy>,
    pub read_policy: Option<steadfast_core::active_order::ReadPolicy>,
    pub gratuitous_arp: Option<(u32, u32)>,
    pub relay: bool,
}

/// The configuration of one voter (a member or the witness). Paths are relative to the state
/// directory, where the file lives, so the lab can be inspected and rerun by hand.
pub(crate) fn voter_config(plan: &GroupPlan<'_>, voter: Host) -> String {
    let node_id = voter.node_id().expect("only voters get a configuration");
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# Written by `steadfast-lab lab up` for lab {}: host {voter}.",
        plan.lab
    );
    let _ = writeln!(text, "node_id = {node_id}\n");
    let _ = writeln!(text, "[group]");
    let _ = writeln!(text, "name = \"{}\"", plan.lab);
    let _ = writeln!(text, "auth_key_file = \"key\"");
    if let Some(ms) = plan.heartbeat_ms {
        let _ = writeln!(text, "heartbeat_interval_ms = {ms}");
    }
    if let Some(ms) = plan.replication_stall_ms {
        let _ = writeln!(text, "replication_stall_ms = {ms}");
    }
    if let Some(encrypted) = plan.replication_encryption {
        let _ = writeln!(text, "replication_encryption = {encrypted}");
    }
    // Two members without a witness would be refused by validation; a lab built that way asks
    // for it, so it gets the explicit split-brain opt-in (the daemon warns at start).
    if plan.members.len() == 2 && !plan.witness {
        let _ = writeln!(text, "two_node = true");
    }
    for member in plan.members {
        let _ = writeln!(text, "\n[[group.member]]");
        let _ = writeln!(text, "id = {}", member.node_id().unwrap_or_default());
        let _ = writeln!(text, "address = \"{}/{PREFIX_LEN}\"", member.address());
    }
    if plan.witness {
        let _ = writeln!(text, "\n[group.witness]");
        let _ = writeln!(text, "id = {}", Host::Witness.node_id().unwrap_or_default());
        let _ = writeln!(
            text,
            "address = \"{}/{PREFIX_LEN}\"",
            Host::Witness.address()
        );
    }
    if voter.is_member() {
        let backend = crate::topology::backend_target(plan.mode, plan.backend).to_string();
        let port = crate::topology::service_port(plan.backend);
        let _ = writeln!(text, "\n[[service]]");
        let _ = writeln!(text, "name = \"{SERVICE_NAME}\"");
        let _ = writeln!(text, "vip = \"{VIP}\"");
        let _ = writeln!(text, "interface = \"{HOST_INTERFACE}\"");
        let _ = writeln!(text, "ports = [{port}]");
        let _ = writeln!(text, "mode = \"{}\"", plan.mode);
        if plan.mode == Mode::Active {
            let _ = writeln!(text, "protocol = \"resp\"");
        } else if !plan.backend.speaks_http() {
            let _ = writeln!(text, "protocol = \"tcp\"");
        }
        let _ = writeln!(text, "backend = \"{backend}\"");
        if let Some(bytes) = plan.stream_replies_above {
            let _ = writeln!(text, "stream_replies_above = {bytes}");
        }
        if let Some((header_ms, idle_ms)) = plan.client_timeouts_ms {
            let _ = writeln!(text, "client_header_timeout_ms = {header_ms}");
            let _ = writeln!(text, "client_idle_timeout_ms = {idle_ms}");
        }
        if let Some(count) = plan.max_connections {
            let _ = writeln!(text, "max_connections = {count}");
        }
        if let Some(count) = plan.max_connections_per_source {
            let _ = writeln!(text, "max_connections_per_source = {count}");
        }
        if let Some(ms) = plan.half_open_lifetime_ms {
            let _ = writeln!(text, "half_open_lifetime_ms = {ms}");
        }
        if let Some(delivery) = plan.delivery {
            let _ = writeln!(text, "delivery = \"{}\"", delivery.name());
        }
        if let Some(policy) = plan.read_policy {
            let _ = writeln!(text, "read_policy = \"{}\"", policy.name());
        }
        let _ = writeln!(text, "\n[[health_check]]");
        if plan.backend.speaks_http() {
            let _ = writeln!(text, "kind = \"http\"");
            let _ = writeln!(text, "target = \"{backend}\"");
            let _ = writeln!(text, "path = \"/health\"");
            let _ = writeln!(text, "expect_status = 200");
        } else {
            // redis-server answers no HTTP: a connect that succeeds is the check.
            let _ = writeln!(text, "kind = \"tcp\"");
            let _ = writeln!(text, "target = \"{backend}\"");
        }
        // Fast checks, so a dead backend is noticed within about 100 ms.
        let _ = writeln!(text, "interval_ms = 50");
        let _ = writeln!(text, "timeout_ms = 200");
        let _ = writeln!(text, "rise = 2");
        let _ = writeln!(text, "fall = 2");
    }
    if let Some((count, spacing_ms)) = plan.gratuitous_arp {
        let _ = writeln!(text, "\n[arp]");
        let _ = writeln!(text, "gratuitous_count = {count}");
        let _ = writeln!(text, "gratuitous_spacing_ms = {spacing_ms}");
    }
    // Every role change (and alarm, the event in brackets) is appended to hooks.log in the
    // state directory, as a notify hook (the tests read it; users see what keepalived's notify
    // scripts give them).
    let _ = writeln!(text, "\n[notify]");
    let _ = writeln!(
        text,
        "command = [\"/bin/sh\", \"-c\", \"echo \\\"$STEADFAST_NODE_ID $STEADFAST_ROLE $STEADFAST_EPOCH $STEADFAST_REASON [$STEADFAST_EVENT]\\\" >> {}/{}/hooks.log\"]",
        crate::state::STATE_ROOT,
        plan.lab
    );
    let _ = writeln!(text, "\n[control]");
    let _ = writeln!(text, "socket = \"{}.sock\"", voter.short_name());
    // Each voter serves Prometheus metrics on its own lab address, as a monitored host would.
    let _ = writeln!(text, "\n[metrics]");
    let _ = writeln!(text, "listen = \"{}:{METRICS_PORT}\"", voter.address());
    if let (true, Host::Node(index)) = (plan.relay, voter) {
        relay_table(&mut text, plan, index);
    }
    text
}

/// A member's `[relay]` table: `eth0` public, probed by ARP towards the client (the segment's
/// only other fixed host, as a gateway would be), `eth1` private, every other member a
/// sibling there.
fn relay_table(text: &mut String, plan: &GroupPlan<'_>, index: u8) {
    use crate::topology::{private_address, CLIENT_ADDRESS, PRIVATE_INTERFACE};
    let _ = writeln!(text, "\n[relay]");
    let _ = writeln!(text, "\n[[relay.interface]]");
    let _ = writeln!(text, "name = \"{HOST_INTERFACE}\"");
    let _ = writeln!(text, "class = \"public\"");
    let _ = writeln!(text, "probe_targets = [\"{CLIENT_ADDRESS}\"]");
    let _ = writeln!(text, "\n[[relay.interface]]");
    let _ = writeln!(text, "name = \"{PRIVATE_INTERFACE}\"");
    let _ = writeln!(text, "class = \"private\"");
    let _ = writeln!(text, "address = \"{}\"", private_address(index));
    for sibling in plan.members {
        let Host::Node(other) = *sibling else {
            continue;
        };
        if other == index {
            continue;
        }
        let _ = writeln!(text, "\n[[relay.sibling]]");
        let _ = writeln!(text, "id = {other}");
        let _ = writeln!(text, "interface = \"{PRIVATE_INTERFACE}\"");
        let _ = writeln!(text, "address = \"{}\"", private_address(other));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan<'a>(lab: &'a LabName, members: &'a [Host], witness: bool) -> GroupPlan<'a> {
        GroupPlan {
            lab,
            members,
            witness,
            mode: Mode::Unreplicated,
            backend: BackendKind::Builtin,
            heartbeat_ms: Some(10),
            replication_stall_ms: None,
            replication_encryption: None,
            stream_replies_above: None,
            client_timeouts_ms: None,
            max_connections: None,
            max_connections_per_source: None,
            half_open_lifetime_ms: None,
            delivery: None,
            read_policy: None,
            gratuitous_arp: None,
            relay: false,
        }
    }

    #[test]
    fn member_config_is_valid_toml_with_the_plan() {
        let lab = LabName::parse("t").unwrap();
        let members = [Host::Node(1), Host::Node(2)];
        let text = voter_config(&plan(&lab, &members, true), Host::Node(2));
        let doc: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(doc["node_id"].as_integer(), Some(2));
        assert_eq!(doc["group"]["heartbeat_interval_ms"].as_integer(), Some(10));
        assert_eq!(doc["group"]["member"].as_array().unwrap().len(), 2);
        assert_eq!(doc["group"]["witness"]["id"].as_integer(), Some(100));
        assert_eq!(
            doc["group"]["witness"]["address"].as_str(),
            Some("10.77.0.9/24")
        );
        assert!(doc["group"].get("two_node").is_none());
        assert_eq!(doc["service"][0]["vip"].as_str(), Some("10.77.0.100"));
        assert_eq!(doc["service"][0]["backend"].as_str(), Some("127.0.0.1:80"));
        assert_eq!(doc["health_check"][0]["path"].as_str(), Some("/health"));
        assert_eq!(doc["control"]["socket"].as_str(), Some("n2.sock"));
    }

    #[test]
    fn witness_config_has_no_service_and_two_nodes_alone_opt_in() {
        let lab = LabName::parse("t").unwrap();
        let members = [Host::Node(1), Host::Node(2)];
        let witness: toml::Table =
            toml::from_str(&voter_config(&plan(&lab, &members, true), Host::Witness)).unwrap();
        assert_eq!(witness["node_id"].as_integer(), Some(100));
        assert!(witness.get("service").is_none());
        assert!(witness.get("health_check").is_none());
        let alone: toml::Table =
            toml::from_str(&voter_config(&plan(&lab, &members, false), Host::Node(1))).unwrap();
        assert_eq!(alone["group"]["two_node"].as_bool(), Some(true));
    }

    #[test]
    fn a_redis_member_serves_port_6379_with_a_tcp_check() {
        let lab = LabName::parse("t").unwrap();
        let members = [Host::Node(1), Host::Node(2)];
        let mut redis = plan(&lab, &members, false);
        redis.backend = BackendKind::Redis;
        let text = voter_config(&redis, Host::Node(1));
        let doc: toml::Table = toml::from_str(&text).unwrap();
        let service = &doc["service"][0];
        assert_eq!(service["ports"].as_array().unwrap().len(), 1);
        assert_eq!(service["ports"][0].as_integer(), Some(6379));
        assert_eq!(service["backend"].as_str(), Some("127.0.0.1:6379"));
        assert_eq!(service["protocol"].as_str(), Some("tcp"));
        let check = &doc["health_check"][0];
        assert_eq!(check["kind"].as_str(), Some("tcp"));
        assert_eq!(check["target"].as_str(), Some("127.0.0.1:6379"));
        assert!(check.get("path").is_none(), "{text}");
        assert!(check.get("expect_status").is_none(), "{text}");
        // And the daemon's own parser takes it as such.
        let config = steadfast_core::config::parse(
            &text,
            "n1.toml",
            &|_| true,
            std::path::Path::new("/run/steadfast-lab/t"),
        )
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.services[0].ports, [6379]);
        assert_eq!(
            config.services[0].protocol,
            steadfast_core::config::Protocol::Tcp
        );
        assert!(matches!(
            config.health_checks[0].kind,
            steadfast_core::config::HealthCheckKind::Tcp { target }
                if target == "127.0.0.1:6379".parse().unwrap()
        ));
        // The web backends keep port 80 and their HTTP check.
        let web: toml::Table =
            toml::from_str(&voter_config(&plan(&lab, &members, false), Host::Node(1))).unwrap();
        assert_eq!(web["service"][0]["ports"][0].as_integer(), Some(80));
        assert!(web["service"][0].get("protocol").is_none());
        assert_eq!(web["health_check"][0]["kind"].as_str(), Some("http"));
    }

    /// An active lab's delivery and read policy reach the service's table, and the daemon's
    /// parser reads them back as chosen.
    #[test]
    fn an_active_member_carries_its_delivery_and_read_policy() {
        use steadfast_core::active_order::{DeliveryStrategy, ReadPolicy};
        let lab = LabName::parse("t").unwrap();
        let members = [Host::Node(1), Host::Node(2)];
        let mut active = plan(&lab, &members, false);
        active.mode = Mode::Active;
        active.backend = BackendKind::Redis;
        active.delivery = Some(DeliveryStrategy::Safe);
        active.read_policy = Some(ReadPolicy::WithoutPrimary);
        let text = voter_config(&active, Host::Node(1));
        let config = steadfast_core::config::parse(
            &text,
            "n1.toml",
            &|_| true,
            std::path::Path::new("/run/steadfast-lab/t"),
        )
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.services[0].delivery, Some(DeliveryStrategy::Safe));
        assert_eq!(
            config.services[0].read_policy,
            Some(ReadPolicy::WithoutPrimary)
        );
    }
}
