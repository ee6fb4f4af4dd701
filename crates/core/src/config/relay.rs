//! The `[relay]` table: the node's interfaces declared public or private, the link monitors'
//! probes, the interface manager's hold-down, the transmission agent's siblings and leases
//! (issue 19, seed 004; docs/design.md, Link relay). Left out, the node relays nothing and asks
//! no sibling, as before the relay existed.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{millis_number, Member, Report};
use crate::interface_manager::{DeclaredLink, LinkClass};
use crate::link_monitor::ProbeSettings;
use crate::relay_agent::{RequesterSettings, Sibling};
use crate::NodeId;

/// The relay's UDP port is the group port plus this (+1 replication, +2 active link).
pub const RELAY_PORT_OFFSET: u16 = 3;
pub const DEFAULT_PROBE_PERIOD_MS: u64 = 10;
pub const DEFAULT_PROBE_TIMEOUT_MS: u64 = 10;
pub const DEFAULT_PROBE_RISE: u32 = 2;
pub const DEFAULT_PROBE_FALL: u32 = 2;
/// A link that came back must stay up this long before traffic returns to it.
pub const DEFAULT_HOLD_DOWN_MS: u64 = 500;
/// A sibling's relay ends this long after the last refresh it answered: three refreshes.
pub const DEFAULT_LEASE_MS: u64 = 300;
pub const DEFAULT_REFRESH_MS: u64 = 100;
pub const DEFAULT_RETRY_MS: u64 = 20;
pub const DEFAULT_ATTEMPTS_PER_SIBLING: u32 = 3;
const DEFAULT_SPEED_MBPS: u64 = 1000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Relay {
    pub port: u16,
    #[serde(rename = "probe_period_ms", serialize_with = "millis_number")]
    pub probe_period: Duration,
    #[serde(rename = "probe_timeout_ms", serialize_with = "millis_number")]
    pub probe_timeout: Duration,
    pub probe_rise: u32,
    pub probe_fall: u32,
    #[serde(rename = "hold_down_ms", serialize_with = "millis_number")]
    pub hold_down: Duration,
    #[serde(rename = "lease_ms", serialize_with = "millis_number")]
    pub lease: Duration,
    #[serde(rename = "refresh_ms", serialize_with = "millis_number")]
    pub refresh: Duration,
    #[serde(rename = "retry_ms", serialize_with = "millis_number")]
    pub retry: Duration,
    pub attempts_per_sibling: u32,
    #[serde(rename = "interface")]
    pub interfaces: Vec<RelayInterface>,
    #[serde(rename = "sibling", skip_serializing_if = "Vec::is_empty")]
    pub siblings: Vec<RelaySibling>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InterfaceClass {
    Public,
    Private,
}

/// One of the node's interfaces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RelayInterface {
    pub name: String,
    pub class: InterfaceClass,
    pub speed_mbps: u64,
    /// Private links: this node's address there, where a sibling routes the node's traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// Neighbours probed by ARP to find a black hole; empty: the carrier alone decides.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub probe_targets: Vec<Ipv4Addr>,
}

/// A sibling reachable over one of this node's private links.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RelaySibling {
    pub id: NodeId,
    /// This node's private interface that reaches it.
    pub interface: String,
    /// Its address on that private link.
    pub address: Ipv4Addr,
}

impl Relay {
    pub fn probe_settings(&self) -> ProbeSettings {
        ProbeSettings {
            period: self.probe_period,
            timeout: self.probe_timeout,
            rise: self.probe_rise,
            fall: self.probe_fall,
        }
    }

    /// The interfaces as the interface manager takes them, in file order.
    pub fn declared_links(&self) -> Vec<DeclaredLink> {
        self.interfaces
            .iter()
            .map(|i| DeclaredLink {
                name: i.name.clone(),
                class: match i.class {
                    InterfaceClass::Public => LinkClass::Public,
                    InterfaceClass::Private => LinkClass::Private,
                },
                speed_mbps: i.speed_mbps,
            })
            .collect()
    }

    pub fn interface(&self, name: &str) -> Option<&RelayInterface> {
        self.interfaces.iter().find(|i| i.name == name)
    }

    /// The requester's settings: the siblings in file order, each with this node's address on
    /// its link as the next hop.
    pub fn requester_settings(&self) -> RequesterSettings {
        RequesterSettings {
            siblings: self
                .siblings
                .iter()
                .map(|s| Sibling {
                    node: s.id,
                    link: s.interface.clone(),
                    next_hop: self
                        .interface(&s.interface)
                        .and_then(|i| i.address)
                        .unwrap_or(Ipv4Addr::UNSPECIFIED),
                })
                .collect(),
            lease: self.lease,
            refresh_every: self.refresh,
            retry_every: self.retry,
            attempts_per_sibling: self.attempts_per_sibling,
        }
    }
}

#[derive(Deserialize)]
#[serde(expecting = "a [relay] table")]
pub(super) struct RawRelay {
    port: Option<Spanned<u16>>,
    probe_period_ms: Option<Spanned<u64>>,
    probe_timeout_ms: Option<Spanned<u64>>,
    probe_rise: Option<Spanned<u32>>,
    probe_fall: Option<Spanned<u32>>,
    hold_down_ms: Option<Spanned<u64>>,
    lease_ms: Option<Spanned<u64>>,
    refresh_ms: Option<Spanned<u64>>,
    retry_ms: Option<Spanned<u64>>,
    attempts_per_sibling: Option<Spanned<u32>>,
    #[serde(default)]
    interface: Vec<Spanned<RawInterface>>,
    #[serde(default)]
    sibling: Vec<Spanned<RawSibling>>,
}

#[derive(Deserialize)]
#[serde(expecting = "a [[relay.interface]] table with name and class")]
struct RawInterface {
    name: Spanned<String>,
    class: Spanned<String>,
    speed_mbps: Option<Spanned<u64>>,
    address: Option<Spanned<String>>,
    probe_targets: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(expecting = "a [[relay.sibling]] table with id, interface and address")]
struct RawSibling {
    id: Spanned<NodeId>,
    interface: Spanned<String>,
    address: Spanned<String>,
}

/// Refuses a relay that cannot be in place before the election deposes the node (see
/// [`election_budget_ms`]). The link monitors find a carrier loss from the netlink event, at
/// once; a black hole on a probed public link after `probe_fall` missed rounds, the last of
/// them sent up to `probe_fall × probe_period` after the cut and missed `probe_timeout` later
/// (`link_monitor.rs`); the interface manager asks for a relay as soon as no public link is up
/// (its hold-down delays only a return). After detection the takeover needs at least the
/// request over the private link and the sibling's kernel changes, so detection alone must
/// end strictly within the budget. What is left is the sibling's time: a few milliseconds
/// measured (`benches/README.md`, takeover less detection), and a lost request costs
/// `retry_ms` more, which a tight budget may not cover.
fn check_takeover_within_election(
    raw: &RawRelay,
    span: &std::ops::Range<usize>,
    interfaces: &[RelayInterface],
    election: &ElectionTiming,
    report: &mut Report<'_>,
) {
    let budget = election_budget_ms(election);
    let interval = election.heartbeat_interval_ms;
    let miss = election.miss_count;
    let election_text = format!(
        "the election may depose a primary whose heartbeats stay away (miss_count − 2) × \
         heartbeat_interval_ms − max(heartbeat_interval_ms / 10, 1) = ({miss} − 2) × {interval} \
         − {} = {budget} ms after the cut (group.miss_count = {miss}, {}; \
         group.heartbeat_interval_ms = {interval}, {}): its heartbeats travel the public link \
         until the sibling relays them",
        (interval / 10).max(1),
        origin(election.miss_count_at.as_ref(), report),
        origin(election.heartbeat_interval_at.as_ref(), report),
    );
    let probed = interfaces
        .iter()
        .any(|i| i.class == InterfaceClass::Public && !i.probe_targets.is_empty());
    if !probed {
        // Carrier loss only: found at once, but the takeover still needs some time.
        if budget <= 0 {
            let at = election
                .miss_count_at
                .clone()
                .unwrap_or_else(|| span.clone());
            report.add(
                at,
                "group.miss_count",
                format!(
                    "relay cannot take over in time: {election_text}; even a carrier loss, \
                     found at once, leaves the sibling no time to relay. Raise group.miss_count \
                     to 3 or more"
                ),
            );
        }
        return;
    }
    let value =
        |v: &Option<Spanned<u64>>, default: u64| v.as_ref().map_or(default, |v| *v.get_ref());
    let period = value(&raw.probe_period_ms, DEFAULT_PROBE_PERIOD_MS);
    let timeout = value(&raw.probe_timeout_ms, DEFAULT_PROBE_TIMEOUT_MS);
    let fall = raw
        .probe_fall
        .as_ref()
        .map_or(DEFAULT_PROBE_FALL, |v| *v.get_ref());
    let detection = u64::from(fall)
        .saturating_mul(period)
        .saturating_add(timeout);
    if i128::from(detection) < i128::from(budget) {
        return;
    }
    let at = raw
        .probe_period_ms
        .as_ref()
        .or(raw.probe_timeout_ms.as_ref())
        .map(|v| v.span())
        .or_else(|| raw.probe_fall.as_ref().map(|v| v.span()))
        .unwrap_or_else(|| span.clone());
    report.add(
        at,
        "relay.probe_period_ms",
        format!(
            "relay cannot take over in time: a black hole on a probed public link is found up \
             to probe_fall × probe_period_ms + probe_timeout_ms = {fall} × {period} + {timeout} \
             = {detection} ms after it opens (relay.probe_fall = {fall}, {}; \
             relay.probe_period_ms = {period}, {}; relay.probe_timeout_ms = {timeout}, {}), \
             but {election_text}. Detection must end before {budget} ms, leaving the sibling \
             time to relay: probe faster or raise group.miss_count",
            origin(raw.probe_fall.as_ref().map(|v| v.span()).as_ref(), report),
            origin(
                raw.probe_period_ms.as_ref().map(|v| v.span()).as_ref(),
                report
            ),
            origin(
                raw.probe_timeout_ms.as_ref().map(|v| v.span()).as_ref(),
                report
            ),
        ),
    );
}

fn ipv4(s: &Spanned<String>, field: String, report: &mut Report<'_>) -> Option<Ipv4Addr> {
    match s.get_ref().parse::<Ipv4Addr>() {
        Ok(ip) if !ip.is_unspecified() && !ip.is_broadcast() && !ip.is_multicast() => Some(ip),
        _ => {
            report.add(
                s.span(),
                field,
                format!(
                    "{:?} is not a unicast IPv4 address (no prefix length here)",
                    s.get_ref()
                ),
            );
            None
        }
    }
}

/// The group's heartbeat settings as the file gave them (`None`: left to the default), for
/// the check that a relay is in place before the election deposes the node.
pub(super) struct ElectionTiming {
    pub heartbeat_interval_ms: u64,
    pub heartbeat_interval_at: Option<std::ops::Range<usize>>,
    pub miss_count: u32,
    pub miss_count_at: Option<std::ops::Range<usize>>,
}

/// Where a setting came from, for an error that names several: its line, or the default.
fn origin(at: Option<&std::ops::Range<usize>>, report: &Report<'_>) -> String {
    match at {
        Some(span) => format!("line {}", report.position(span.start).0),
        None => "default".to_string(),
    }
}

/// How long after its public link fails a relaying primary's heartbeats may stay away before
/// the election may depose it, in milliseconds (negative: no time at all).
///
/// The primary's heartbeats leave through the sibling once it relays (rule 1000 sends
/// everything, heartbeats included, over the private link; the sibling forwards them and
/// answers ARP for the node's address, so the acknowledgements come back the same way). Until
/// then they are lost: the heartbeats are the group's only channel and they travel over the
/// members' addresses, on the public link. Two things depose the primary (`election.rs`):
/// - a follower stands once one lease (`miss_count × interval`) has passed since the last
///   primary heartbeat it received. That one left up to one interval before the cut, and the
///   first heartbeat sent after the relay is in place leaves up to one interval after it: the
///   gap is below `takeover + 2 × interval`, which must stay under the lease.
/// - the primary's own lease ends a lease after it *sent* the last heartbeat a majority
///   acknowledged, less a margin (`interval / 10`, at least 1 ms): the same two intervals
///   (the heartbeat just before the cut may have arrived with its acknowledgement lost) and
///   the margin.
///
/// So detection plus takeover of transmission must finish within
/// `(miss_count − 2) × interval − max(interval / 10, 1 ms)`. (An unreplicated primary holding
/// connections gets no more: its follower waits for the holder grace only while the primary's
/// host answers its echo probes, and those are as cut off as the heartbeats.)
pub(super) fn election_budget_ms(election: &ElectionTiming) -> i64 {
    let interval = election.heartbeat_interval_ms as i64;
    let margin = (interval / 10).max(1);
    (i64::from(election.miss_count) - 2) * interval - margin
}

/// Reads and checks the `[relay]` table at `span`. `members` are the group's members (a
/// sibling must be one, and not this node); `service_interfaces` the interfaces the services'
/// addresses go on (each must be declared public: relay keeps exactly those reachable);
/// `election` the heartbeat settings the relay must outrun.
#[allow(clippy::too_many_arguments)]
pub(super) fn build(
    raw: RawRelay,
    span: std::ops::Range<usize>,
    group_port: u16,
    node_id: NodeId,
    members: &[Member],
    service_interfaces: &[(usize, &str)],
    election: &ElectionTiming,
    report: &mut Report<'_>,
) -> Relay {
    let ms = |v: &Option<Spanned<u64>>, name: &str, default: u64, report: &mut Report<'_>| {
        if let Some(v) = v.as_ref().filter(|v| *v.get_ref() == 0) {
            report.add(v.span(), format!("relay.{name}"), "must be at least 1");
        }
        Duration::from_millis(v.as_ref().map_or(default, |v| *v.get_ref()))
    };
    let count = |v: &Option<Spanned<u32>>, name: &str, default: u32, report: &mut Report<'_>| {
        if let Some(v) = v.as_ref().filter(|v| *v.get_ref() == 0) {
            report.add(v.span(), format!("relay.{name}"), "must be at least 1");
        }
        v.as_ref().map_or(default, |v| *v.get_ref())
    };
    let probe_period = ms(
        &raw.probe_period_ms,
        "probe_period_ms",
        DEFAULT_PROBE_PERIOD_MS,
        report,
    );
    let probe_timeout = ms(
        &raw.probe_timeout_ms,
        "probe_timeout_ms",
        DEFAULT_PROBE_TIMEOUT_MS,
        report,
    );
    let probe_rise = count(&raw.probe_rise, "probe_rise", DEFAULT_PROBE_RISE, report);
    let probe_fall = count(&raw.probe_fall, "probe_fall", DEFAULT_PROBE_FALL, report);
    let hold_down = Duration::from_millis(
        raw.hold_down_ms
            .as_ref()
            .map_or(DEFAULT_HOLD_DOWN_MS, |v| *v.get_ref()),
    );
    let lease = ms(&raw.lease_ms, "lease_ms", DEFAULT_LEASE_MS, report);
    let refresh = ms(&raw.refresh_ms, "refresh_ms", DEFAULT_REFRESH_MS, report);
    let retry = ms(&raw.retry_ms, "retry_ms", DEFAULT_RETRY_MS, report);
    let attempts_per_sibling = count(
        &raw.attempts_per_sibling,
        "attempts_per_sibling",
        DEFAULT_ATTEMPTS_PER_SIBLING,
        report,
    );
    if let Some(l) = raw
        .lease_ms
        .as_ref()
        .filter(|l| *l.get_ref() >= u64::from(u32::MAX))
    {
        report.add(
            l.span(),
            "relay.lease_ms",
            format!("must be below {} (the wire carries 32 bits)", u32::MAX),
        );
    }
    if !refresh.is_zero() && refresh >= lease {
        let at = raw
            .refresh_ms
            .as_ref()
            .or(raw.lease_ms.as_ref())
            .map_or(span.clone(), |v| v.span());
        report.add(
            at,
            "relay.refresh_ms",
            format!(
                "must be below lease_ms ({} ms): a relay must be refreshed before it ends",
                lease.as_millis()
            ),
        );
    }
    let port = raw
        .port
        .as_ref()
        .map_or(group_port.wrapping_add(RELAY_PORT_OFFSET), |p| *p.get_ref());
    if let Some(p) = raw.port.as_ref().filter(|p| *p.get_ref() == 0) {
        report.add(p.span(), "relay.port", "must be from 1 to 65535");
    } else if raw.port.is_none() && group_port > u16::MAX - RELAY_PORT_OFFSET {
        report.add(
            span.clone(),
            "relay.port",
            format!(
                "the default, group.port + {RELAY_PORT_OFFSET}, is above 65535: set relay.port"
            ),
        );
    }

    let mut interfaces = Vec::new();
    let mut names = BTreeSet::new();
    for (i, raw_if) in raw.interface.iter().enumerate() {
        let r = raw_if.get_ref();
        let field = |name: &str| format!("relay.interface[{i}].{name}");
        let name = r.name.get_ref().clone();
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
            report.add(
                r.name.span(),
                field("name"),
                format!("{name:?} is not an interface name (1 to 15 characters, no '/' or space)"),
            );
        } else if !names.insert(name.clone()) {
            report.add(
                r.name.span(),
                field("name"),
                format!("interface {name:?} is declared twice"),
            );
        }
        let class = match r.class.get_ref().as_str() {
            "public" => InterfaceClass::Public,
            "private" => InterfaceClass::Private,
            other => {
                report.add(
                    r.class.span(),
                    field("class"),
                    format!("unknown class {other:?}: expected public or private"),
                );
                InterfaceClass::Public
            }
        };
        let speed_mbps = r
            .speed_mbps
            .as_ref()
            .map_or(DEFAULT_SPEED_MBPS, |s| *s.get_ref());
        if let Some(s) = r.speed_mbps.as_ref().filter(|s| *s.get_ref() == 0) {
            report.add(s.span(), field("speed_mbps"), "must be at least 1");
        }
        let address = r
            .address
            .as_ref()
            .and_then(|a| ipv4(a, field("address"), report));
        match (class, &r.address) {
            (InterfaceClass::Private, None) => report.add(
                raw_if.span(),
                field("address"),
                "a private interface needs this node's address on it: siblings route the \
                 node's traffic there",
            ),
            (InterfaceClass::Public, Some(a)) => report.add(
                a.span(),
                field("address"),
                "applies to private interfaces only (a public one's addresses are the group's)",
            ),
            _ => {}
        }
        let mut probe_targets = Vec::new();
        let targets = r.probe_targets.as_ref();
        for (j, target) in targets.map_or(&[][..], |t| t.get_ref()).iter().enumerate() {
            match target.parse::<Ipv4Addr>() {
                Ok(ip) if !ip.is_unspecified() && !ip.is_broadcast() && !ip.is_multicast() => {
                    probe_targets.push(ip)
                }
                _ => report.add(
                    targets.map_or(0..0, |t| t.span()),
                    format!("relay.interface[{i}].probe_targets[{j}]"),
                    format!("{target:?} is not a unicast IPv4 address"),
                ),
            }
        }
        interfaces.push(RelayInterface {
            name,
            class,
            speed_mbps,
            address,
            probe_targets,
        });
    }
    for (class, word) in [
        (InterfaceClass::Public, "public"),
        (InterfaceClass::Private, "private"),
    ] {
        if !interfaces.iter().any(|i| i.class == class) {
            report.add(
                span.clone(),
                "relay.interface",
                format!(
                    "relay needs at least one {word} interface ([[relay.interface]] with class \
                     = \"{word}\")"
                ),
            );
        }
    }
    for (i, interface) in service_interfaces {
        let public = interfaces
            .iter()
            .any(|d| d.name == *interface && d.class == InterfaceClass::Public);
        if !public {
            report.add(
                span.clone(),
                "relay.interface",
                format!(
                    "service[{i}] puts its address on {interface:?}, which is not declared a \
                     public interface here: relay keeps the public interfaces' addresses \
                     reachable"
                ),
            );
        }
    }

    let mut siblings: Vec<RelaySibling> = Vec::new();
    for (i, raw_s) in raw.sibling.iter().enumerate() {
        let s = raw_s.get_ref();
        let field = |name: &str| format!("relay.sibling[{i}].{name}");
        let id = *s.id.get_ref();
        if id == node_id {
            report.add(s.id.span(), field("id"), "is this node itself");
        } else if !members.iter().any(|m| m.id == id) {
            report.add(
                s.id.span(),
                field("id"),
                format!("{id} is not a member of the group (a witness serves nothing)"),
            );
        }
        let interface = s.interface.get_ref().clone();
        let private = interfaces
            .iter()
            .any(|d| d.name == interface && d.class == InterfaceClass::Private);
        if !private {
            report.add(
                s.interface.span(),
                field("interface"),
                format!("{interface:?} is not declared a private interface in [[relay.interface]]"),
            );
        }
        if siblings
            .iter()
            .any(|o| o.id == id && o.interface == interface)
        {
            report.add(
                s.id.span(),
                field("id"),
                format!("sibling {id} is listed twice on interface {interface:?}"),
            );
        }
        let address = ipv4(&s.address, field("address"), report).unwrap_or(Ipv4Addr::UNSPECIFIED);
        siblings.push(RelaySibling {
            id,
            interface,
            address,
        });
    }
    check_takeover_within_election(&raw, &span, &interfaces, election, report);
    Relay {
        port,
        probe_period,
        probe_timeout,
        probe_rise,
        probe_fall,
        hold_down,
        lease,
        refresh,
        retry,
        attempts_per_sibling,
        interfaces,
        siblings,
    }
}
