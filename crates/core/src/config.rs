//! The node configuration: one TOML file per voter, parsed and validated without I/O.
//!
//! The schema is the README's example with its comments. Every error names the file, the line and column, and
//! the field: `FILE:LINE:COL: FIELD: MESSAGE`. A syntax error, a wrong type, an unknown or a
//! missing key stops the reading at that place (the toml parser cannot go on), so such a file
//! gets one error; every other rule is checked on the whole file and all its violations are
//! reported together. The one check that needs the file system (does the key file exist?) goes
//! through a function the caller supplies, so this module stays pure.
//!
//! [`to_toml`] writes a [`Config`] back in the same schema (the lab writes its nodes' files
//! with it).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use toml::Spanned;

use crate::active_order::{DeliveryStrategy, ReadPolicy};
use crate::NodeId;

mod relay;
mod structure;

pub use relay::{
    InterfaceClass, Relay, RelayInterface, RelaySibling, DEFAULT_HOLD_DOWN_MS, DEFAULT_LEASE_MS,
    DEFAULT_PROBE_FALL, DEFAULT_PROBE_PERIOD_MS, DEFAULT_PROBE_RISE, DEFAULT_PROBE_TIMEOUT_MS,
    DEFAULT_REFRESH_MS, RELAY_PORT_OFFSET,
};

pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 50;
/// A peer silent for 3 × 50 ms = 150 ms is dead. Measured: no role change during 60 s of wrk
/// saturating both cores through the VIP (crates/node/tests/no_false_failover.rs).
pub const DEFAULT_MISS_COUNT: u32 = 3;
/// Upper bounds of the heartbeat settings: an hour between heartbeats, a thousand misses. Far
/// beyond any sensible setting, and they keep every lease (and the holder grace built from
/// it) within what a `Duration` computation can hold.
pub const MAX_HEARTBEAT_INTERVAL_MS: u64 = 3_600_000;
pub const MAX_MISS_COUNT: u32 = 1000;
pub const DEFAULT_PORT: u16 = 7410;
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/steadfast/steadfast.sock";
const DEFAULT_GROUP_NAME: &str = "steadfast";
/// A group's name names its nf_tables tables on each host (several groups share a host, one
/// daemon each): short, and of characters any tool shows and quotes plainly.
const MAX_GROUP_NAME_LEN: usize = 64;

/// Why `name` cannot name a group, if it cannot.
fn check_group_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_GROUP_NAME_LEN {
        return Err(format!(
            "{name:?} must have 1 to {MAX_GROUP_NAME_LEN} characters (it names the group's \
             nftables tables on each host)"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{name:?} has {bad:?}: a group name is made of letters, digits, '-', '_' and '.' \
             (it names the group's nftables tables on each host)"
        ));
    }
    Ok(())
}
const DEFAULT_INTERFACE: &str = "eth0";
/// How long a duplex primary waits on a silent replication stream by default: well above
/// TCP's retransmission timeouts on a LAN, well below what a client would take for a hang.
pub const DEFAULT_REPLICATION_STALL_MS: u64 = 1_000;
const REPLICATION_STALL_RANGE_MS: std::ops::RangeInclusive<u64> = 200..=600_000;

/// One node's configuration, validated.
///
/// `Serialize` writes the file's own shape (table and key names, `_ms` integers, addresses as
/// strings), so [`to_toml`] is a plain serialization and [`parse`] reads its output back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Config {
    pub node_id: NodeId,
    pub group: Group,
    #[serde(rename = "service", skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    #[serde(rename = "health_check", skip_serializing_if = "Vec::is_empty")]
    pub health_checks: Vec<HealthCheck>,
    pub arp: Arp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    pub control: Control,
    /// Where the Prometheus endpoint listens (`GET /metrics`); none when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// Link relay (issue 19); `None`: off, the node neither asks nor answers a sibling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<Relay>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Group {
    pub name: String,
    /// Absolute when the file's was relative: resolved against the configuration's folder.
    #[serde(serialize_with = "path_text")]
    pub auth_key_file: PathBuf,
    pub port: u16,
    #[serde(rename = "heartbeat_interval_ms", serialize_with = "millis_number")]
    pub heartbeat_interval: Duration,
    pub miss_count: u32,
    /// How long a member holding open connections no other node could carry on may be silent
    /// before a member without them stands against it (see `ElectionConfig::holder_grace`).
    #[serde(rename = "holder_grace_ms", serialize_with = "millis_number")]
    pub holder_grace: Duration,
    /// Duplex: how long the primary waits for its backup to acknowledge a replication frame
    /// (or the stream's TCP to deliver) before it declares the backup lost and serves without
    /// it, as after a backup crash. Bounds a client's stall when only the replication path
    /// breaks while the heartbeats still pass.
    #[serde(rename = "replication_stall_ms", serialize_with = "millis_number")]
    pub replication_stall: Duration,
    /// Duplex: whether the replication stream's frames are encrypted as well as authenticated
    /// (they always are authenticated). Off only for a link no one else can read.
    pub replication_encryption: bool,
    pub preempt: bool,
    pub two_node: bool,
    #[serde(rename = "member")]
    pub members: Vec<Member>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub witness: Option<Member>,
}

/// A voter: its id and its address on the service network with the prefix length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub address: Ipv4Addr,
    prefix_len: u8,
}

impl Member {
    pub fn new(id: NodeId, address: Ipv4Addr, prefix_len: u8) -> Member {
        Member {
            id,
            address,
            prefix_len: prefix_len.min(32),
        }
    }
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }
    /// Whether `ip` lies in this member's subnet.
    pub fn subnet_contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len))
        };
        u32::from(ip) & mask == u32::from(self.address) & mask
    }
    /// The member's subnet, like `10.77.0.0/24`.
    pub fn subnet(&self) -> String {
        let mask = if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len))
        };
        format!(
            "{}/{}",
            Ipv4Addr::from(u32::from(self.address) & mask),
            self.prefix_len
        )
    }
}

impl Serialize for Member {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut table = serializer.serialize_struct("Member", 2)?;
        table.serialize_field("id", &self.id)?;
        table.serialize_field("address", &format!("{}/{}", self.address, self.prefix_len))?;
        table.end()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Unreplicated,
    Simplex,
    Duplex,
    Active,
}

impl Mode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Unreplicated => "unreplicated",
            Mode::Simplex => "simplex",
            Mode::Duplex => "duplex",
            Mode::Active => "active",
        }
    }
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "unreplicated" => Mode::Unreplicated,
            "simplex" => Mode::Simplex,
            "duplex" => Mode::Duplex,
            "active" => Mode::Active,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: String,
    pub vip: Ipv4Addr,
    pub interface: String,
    pub ports: Vec<u16>,
    pub mode: Mode,
    pub backend: SocketAddr,
    /// What the ports speak. Simplex and duplex frame HTTP/1.1 requests and replies, so they
    /// carry only `http`.
    pub protocol: Protocol,
    /// Replies up to this many bytes are logged whole before their first byte is sent; longer
    /// ones (by their Content-Length, or once they outgrow it) are streamed: logged in pieces
    /// as they are read, each sent once logged (simplex, duplex; invariant I2).
    pub stream_replies_above: u64,
    /// Simplex and duplex: how long the proxy waits for a request head to complete once its
    /// first byte came (answered 408 after that; nginx's `client_header_timeout`, HAProxy's
    /// `timeout http-request`).
    #[serde(rename = "client_header_timeout_ms", serialize_with = "millis_number")]
    pub client_header_timeout: Duration,
    /// Simplex and duplex: how long a client connection may stay open with no request under
    /// way before the proxy closes it (nginx's `keepalive_timeout`, HAProxy's `timeout
    /// http-keep-alive`).
    #[serde(rename = "client_idle_timeout_ms", serialize_with = "millis_number")]
    pub client_idle_timeout: Duration,
    /// Simplex and duplex: client connections served at once; more wait in the kernel's
    /// accept queue (HAProxy's `maxconn`). `None`: as many as the open-file limit allows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Simplex and duplex: client connections served at once from one client address; more
    /// are closed at once. `None`: no limit (clients behind one NAT share an address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_source: Option<u32>,
    /// Duplex: connections whose handshake has not completed that the backup keeps from one
    /// client address; its further SYNs are not forwarded. `None`: 4,096.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_half_open_per_source: Option<u32>,
    /// Duplex: unanswered request bytes the backup holds for all connections together; at or
    /// above it new connections wait. `None`: 1 GiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_bytes_held: Option<u64>,
    /// Duplex: how long the backup keeps the image of a connection whose handshake has not
    /// completed. `None`: 64 s (the kernel's SYN-RECV lifetime, 63 s, and a little more).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub half_open_lifetime_ms: Option<u64>,
    /// Active mode: when a replica runs an update, on arrival (`best-effort`, the default) or
    /// once every replica holds it (`safe`). `Some` exactly in mode active, where a file that
    /// leaves it out gets the default; the other modes refuse it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryStrategy>,
    /// Active mode: which replicas serve reads, every member in turn (`with-primary`, RR-P,
    /// the default) or all but the primary (`without-primary`, RR-NP). `Some` exactly in mode
    /// active, like `delivery`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_policy: Option<ReadPolicy>,
}

/// Default of `service.stream_replies_above`: whole-reply logging for anything a web service
/// usually answers, pieces above.
pub const DEFAULT_STREAM_REPLIES_ABOVE: u64 = 8 * 1024 * 1024;

/// Defaults of `service.client_header_timeout_ms` and `service.client_idle_timeout_ms`:
/// nginx's `client_header_timeout` and `keepalive_timeout`, so that a client meets the limits
/// the most common server would have set anyway.
pub const DEFAULT_CLIENT_HEADER_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_CLIENT_IDLE_TIMEOUT_MS: u64 = 75_000;
/// From a tenth of a second (a client on a slow link still sends a head within it) to a day.
const CLIENT_TIMEOUT_RANGE_MS: std::ops::RangeInclusive<u64> = 100..=86_400_000;

/// The application protocol of a service's ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Tcp,
    /// The Redis protocol (RESP2, RESP3): what active mode frames, orders and spreads.
    Resp,
}

/// Well-known ports of protocols that are not HTTP: a duplex service on one of them without an
/// explicit `protocol = "http"` is almost certainly a mistake (duplex frames HTTP/1.1).
const NON_HTTP_PORTS: &[(u16, &str)] = &[
    (21, "FTP"),
    (22, "SSH"),
    (25, "SMTP"),
    (53, "DNS"),
    (110, "POP3"),
    (143, "IMAP"),
    (389, "LDAP"),
    (443, "HTTPS (TLS: the proxy cannot frame encrypted HTTP)"),
    (993, "IMAPS"),
    (1433, "SQL Server"),
    (3306, "MySQL"),
    (5432, "PostgreSQL"),
    (5672, "AMQP"),
    (6379, "Redis"),
    (9042, "Cassandra"),
    (11211, "memcached"),
    (27017, "MongoDB"),
];

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HealthCheckKind {
    Http {
        target: SocketAddr,
        path: String,
        expect_status: u16,
    },
    Tcp {
        target: SocketAddr,
    },
    Exec {
        command: Vec<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    #[serde(flatten)]
    pub kind: HealthCheckKind,
    #[serde(rename = "interval_ms", serialize_with = "millis_number")]
    pub interval: Duration,
    #[serde(rename = "timeout_ms", serialize_with = "millis_number")]
    pub timeout: Duration,
    /// Consecutive passes to become healthy.
    pub rise: u32,
    /// Consecutive failures to become unhealthy.
    pub fall: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Arp {
    pub gratuitous_count: u32,
    #[serde(rename = "gratuitous_spacing_ms", serialize_with = "millis_number")]
    pub gratuitous_spacing: Duration,
    /// Resend the burst when a lost peer is heard again.
    pub refresh_on_heal: bool,
}

impl Default for Arp {
    fn default() -> Self {
        Arp {
            gratuitous_count: 5,
            gratuitous_spacing: Duration::from_millis(20),
            refresh_on_heal: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Notify {
    /// argv; never empty.
    pub command: Vec<String>,
    /// The hook is killed after this.
    #[serde(rename = "timeout_ms", serialize_with = "millis_number")]
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Control {
    /// Absolute when the file's was relative: resolved against the configuration's folder.
    #[serde(serialize_with = "path_text")]
    pub socket: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Metrics {
    pub listen: SocketAddr,
}

/// Durations are whole milliseconds in the file; TOML integers stop at `i64::MAX`.
fn millis_number<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_i64(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Lossy for non-UTF-8 paths, which a TOML string cannot hold; `parse` never makes one.
fn path_text<S: Serializer>(p: &Path, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&p.to_string_lossy())
}

impl Config {
    /// Every voter with its address, this node included: members in file order, then the
    /// witness.
    pub fn peer_addresses(&self) -> Vec<(NodeId, Ipv4Addr)> {
        self.group
            .members
            .iter()
            .chain(self.group.witness.iter())
            .map(|m| (m.id, m.address))
            .collect()
    }
    /// The ids of every voter (members and witness), sorted.
    pub fn voters(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .peer_addresses()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        v.sort_unstable();
        v
    }
    /// This file is the witness's.
    pub fn is_witness(&self) -> bool {
        self.group
            .witness
            .as_ref()
            .is_some_and(|w| w.id == self.node_id)
    }
    /// This node's own member entry; `None` on the witness.
    pub fn local_member(&self) -> Option<&Member> {
        self.group.members.iter().find(|m| m.id == self.node_id)
    }
    /// Votes needed to elect a primary and to keep serving: a majority of the voters, or 1 in
    /// a two-member group without witness that accepted the risk with `two_node = true`.
    pub fn quorum(&self) -> usize {
        let voters = self.voters().len();
        if self.group.two_node && self.group.witness.is_none() && voters == 2 {
            1
        } else {
            voters / 2 + 1
        }
    }
}

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.field, self.message
        )
    }
}

/// Every problem found in one file, one per line when displayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ---- the file as written -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(expecting = "a configuration table")]
struct RawConfig {
    node_id: Spanned<NodeId>,
    group: Spanned<RawGroup>,
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
    #[serde(default)]
    health_check: Vec<Spanned<RawCheck>>,
    arp: Option<RawArp>,
    notify: Option<Spanned<RawNotify>>,
    control: Option<RawControl>,
    metrics: Option<RawMetrics>,
    relay: Option<Spanned<relay::RawRelay>>,
}

#[derive(Deserialize)]
#[serde(expecting = "a [group] table")]
struct RawGroup {
    name: Option<Spanned<String>>,
    auth_key_file: Spanned<String>,
    port: Option<Spanned<u16>>,
    heartbeat_interval_ms: Option<Spanned<u64>>,
    miss_count: Option<Spanned<u32>>,
    holder_grace_ms: Option<Spanned<u64>>,
    replication_stall_ms: Option<Spanned<u64>>,
    replication_encryption: Option<bool>,
    preempt: Option<bool>,
    two_node: Option<bool>,
    #[serde(default)]
    member: Vec<Spanned<RawMember>>,
    witness: Option<Spanned<RawMember>>,
}

#[derive(Deserialize)]
#[serde(expecting = "a member table with id and address")]
struct RawMember {
    id: Spanned<NodeId>,
    address: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a [[service]] table")]
struct RawService {
    name: String,
    vip: Spanned<String>,
    interface: Option<String>,
    ports: Spanned<Vec<u16>>,
    mode: Spanned<String>,
    backend: Spanned<String>,
    protocol: Option<Spanned<String>>,
    stream_replies_above: Option<u64>,
    client_header_timeout_ms: Option<Spanned<u64>>,
    client_idle_timeout_ms: Option<Spanned<u64>>,
    max_connections: Option<Spanned<u32>>,
    max_connections_per_source: Option<Spanned<u32>>,
    max_half_open_per_source: Option<Spanned<u32>>,
    max_request_bytes_held: Option<Spanned<u64>>,
    half_open_lifetime_ms: Option<Spanned<u64>>,
    delivery: Option<Spanned<String>>,
    read_policy: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(expecting = "a [[health_check]] table")]
struct RawCheck {
    kind: Spanned<String>,
    target: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    expect_status: Option<Spanned<u16>>,
    command: Option<Spanned<Vec<String>>>,
    interval_ms: Option<Spanned<u64>>,
    timeout_ms: Option<Spanned<u64>>,
    rise: Option<Spanned<u32>>,
    fall: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(expecting = "an [arp] table")]
struct RawArp {
    gratuitous_count: Option<u32>,
    gratuitous_spacing_ms: Option<u64>,
    refresh_on_heal: Option<bool>,
}

#[derive(Deserialize)]
#[serde(expecting = "a [notify] table")]
struct RawNotify {
    command: Spanned<Vec<String>>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(expecting = "a [control] table")]
struct RawControl {
    socket: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a [metrics] table with listen = \"address:port\"")]
struct RawMetrics {
    listen: Spanned<String>,
}

/// Collects errors with positions computed from byte spans.
struct Report<'a> {
    text: &'a str,
    file: &'a str,
    errors: Vec<ConfigError>,
}

impl Report<'_> {
    /// `offset` moved into the text and onto a character boundary, so slicing never panics.
    fn clamp(&self, offset: usize) -> usize {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        offset
    }

    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = self.clamp(offset);
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    fn add(&mut self, span: Range<usize>, field: impl Into<String>, message: impl Into<String>) {
        let (line, column) = self.position(span.start);
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        });
    }

    /// The field name (`service[0].ports`) of the innermost key or table whose text holds
    /// `offset`, for errors the toml parser reports with a position but no field name. A file
    /// that does not even parse gets the key written on that line instead.
    ///
    /// With `tables_only`, names the table holding `offset` (serde reports a missing field at
    /// the table that lacks it); the root table has the empty name.
    fn field_at(&self, offset: usize, tables_only: bool) -> String {
        match toml_edit::Document::parse(self.text) {
            Ok(doc) => {
                let mut best = None;
                let mut visit = Visit {
                    offset,
                    tables_only,
                    best: &mut best,
                };
                visit.table(doc.as_table(), "");
                best.map(|(_, name)| name).unwrap_or_default()
            }
            Err(_) => self.key_on_line(offset),
        }
    }

    fn key_on_line(&self, offset: usize) -> String {
        let offset = self.clamp(offset);
        let line_start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[offset..]
            .find('\n')
            .map_or(self.text.len(), |i| offset + i);
        let line = self.text[line_start..line_end].trim();
        if line.starts_with('[') {
            return line
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
        }
        match line.split_once('=') {
            Some((key, _)) => key.trim().to_string(),
            None => String::new(),
        }
    }
}

/// The best candidate so far: the length of its text (shorter is more specific) and its name.
type FieldCandidate = Option<(usize, String)>;

/// A walk over a parsed document looking for the most specific field around `offset`.
struct Visit<'a> {
    offset: usize,
    tables_only: bool,
    best: &'a mut FieldCandidate,
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

impl Visit<'_> {
    fn consider(&mut self, span: Option<Range<usize>>, name: &str) {
        let Some(span) = span else { return };
        // An empty span still names the place it starts at.
        let end = span.end.max(span.start + 1);
        if span.start <= self.offset && self.offset < end && !name.is_empty() {
            let len = end - span.start;
            if self
                .best
                .as_ref()
                .is_none_or(|(best_len, _)| len < *best_len)
            {
                *self.best = Some((len, name.to_string()));
            }
        }
    }

    fn table(&mut self, table: &toml_edit::Table, prefix: &str) {
        self.consider(table.span(), prefix);
        for (key, item) in table.iter() {
            let name = join(prefix, key);
            match item {
                toml_edit::Item::Value(value) => {
                    let key_span = table.get_key_value(key).and_then(|(k, _)| k.span());
                    self.value(value, key_span, &name);
                }
                toml_edit::Item::Table(sub) => self.table(sub, &name),
                toml_edit::Item::ArrayOfTables(array) => {
                    for (i, sub) in array.iter().enumerate() {
                        self.table(sub, &format!("{name}[{i}]"));
                    }
                }
                toml_edit::Item::None => {}
            }
        }
    }

    fn value(&mut self, value: &toml_edit::Value, key_span: Option<Range<usize>>, name: &str) {
        if !self.tables_only || value.is_inline_table() {
            let whole = match (key_span, value.span()) {
                (Some(k), Some(v)) => Some(k.start..v.end),
                (k, v) => k.or(v),
            };
            self.consider(whole, name);
        }
        match value {
            toml_edit::Value::InlineTable(table) => {
                for (key, inner) in table.iter() {
                    let key_span = table.get_key_value(key).and_then(|(k, _)| k.span());
                    self.value(inner, key_span, &join(name, key));
                }
            }
            toml_edit::Value::Array(array) => {
                for (i, element) in array.iter().enumerate() {
                    if element.is_inline_table() {
                        self.value(element, None, &format!("{name}[{i}]"));
                    }
                }
            }
            _ => {}
        }
    }
}

fn parse_address(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} needs a prefix length, like \"10.0.0.11/24\""))?;
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| format!("prefix length {prefix:?} is not a number from 0 to 32"))?;
    Ok((ip, prefix))
}

/// A setting of active mode alone, one of `names`: in mode active, what the file says or the
/// default; in any other mode `None`, and refused when the file sets it (`what` says what it
/// chooses, so the user sees why it has no meaning there).
fn active_choice<T: Default>(
    report: &mut Report<'_>,
    value: Option<&Spanned<String>>,
    field: &str,
    mode: Mode,
    what: &str,
    parse: fn(&str) -> Option<T>,
    names: &[&str],
) -> Option<T> {
    let expected = names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(" or ");
    if mode != Mode::Active {
        if let Some(v) = value {
            report.add(
                v.span(),
                field,
                format!(
                    "chooses {what}; mode {} has none: leave it out, or use mode active",
                    mode.as_str()
                ),
            );
        }
        return None;
    }
    let Some(v) = value else {
        return Some(T::default());
    };
    Some(parse(v.get_ref()).unwrap_or_else(|| {
        report.add(
            v.span(),
            field,
            format!("unknown value {:?}: expected {expected}", v.get_ref()),
        );
        T::default()
    }))
}

fn millis(v: &Option<Spanned<u64>>, default: u64) -> Duration {
    Duration::from_millis(v.as_ref().map_or(default, |s| *s.get_ref()))
}

/// Parses and validates one configuration file.
///
/// `file` names it in errors; relative paths inside it are resolved against `config_dir` (pass
/// an absolute folder, e.g. through `std::path::absolute`, to get absolute paths: this module
/// does not read the current directory); `path_exists` answers whether the key file is there.
pub fn parse(
    text: &str,
    file: &str,
    path_exists: &dyn Fn(&Path) -> bool,
    config_dir: &Path,
) -> Result<Config, ConfigErrors> {
    let mut report = Report {
        text,
        file,
        errors: Vec::new(),
    };
    // The shape check reports every unknown key, wrong type and missing key at once. serde
    // then only extracts values: it ignores unknown keys (already reported), so a file whose
    // only shape problems are unknown keys still gets its values validated too.
    let shape_problems = structure::check(text).unwrap_or_default();
    let shape_is_wrong = !shape_problems.is_empty();
    for problem in shape_problems {
        report.add(problem.span, problem.field, problem.message);
    }
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(_) if shape_is_wrong => {
            report.errors.sort_by_key(|e| (e.line, e.column));
            return Err(ConfigErrors(report.errors));
        }
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim();
            let missing = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next());
            // A field missing from the root table comes with an empty span at offset 0, which
            // would otherwise name whatever table starts the file.
            let mut field = if missing.is_some() && span.is_empty() {
                String::new()
            } else {
                report.field_at(span.start, missing.is_some())
            };
            if let Some(missing) = missing {
                field = join(&field, missing);
            }
            if field.is_empty() {
                field = "(file)".into();
            }
            report.add(span, field, message.to_string());
            return Err(ConfigErrors(report.errors));
        }
    };
    let config = build(raw, &mut report, path_exists, config_dir);
    if report.errors.is_empty() {
        Ok(config)
    } else {
        report.errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(report.errors))
    }
}

fn resolve(dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

fn build(
    raw: RawConfig,
    report: &mut Report<'_>,
    path_exists: &dyn Fn(&Path) -> bool,
    config_dir: &Path,
) -> Config {
    let group_span = raw.group.span();
    let g = raw.group.into_inner();
    let node_id = *raw.node_id.get_ref();

    let member = |m: &Spanned<RawMember>, field: String, report: &mut Report<'_>| {
        let m = m.get_ref();
        match parse_address(m.address.get_ref()) {
            Ok((ip, prefix)) => Member::new(*m.id.get_ref(), ip, prefix),
            Err(msg) => {
                report.add(m.address.span(), format!("{field}.address"), msg);
                Member::new(*m.id.get_ref(), Ipv4Addr::UNSPECIFIED, 32)
            }
        }
    };
    let members: Vec<Member> = g
        .member
        .iter()
        .enumerate()
        .map(|(i, m)| member(m, format!("group.member[{i}]"), report))
        .collect();
    let witness = g
        .witness
        .as_ref()
        .map(|w| member(w, "group.witness".into(), report));
    if members.is_empty() {
        report.add(
            group_span.clone(),
            "group.member",
            "at least one [[group.member]] is required",
        );
    }
    let mut seen = BTreeSet::new();
    let id_spans = g
        .member
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("group.member[{i}].id"), &m.get_ref().id))
        .chain(
            g.witness
                .iter()
                .map(|w| ("group.witness.id".to_string(), &w.get_ref().id)),
        );
    for (field, id) in id_spans {
        if !seen.insert(*id.get_ref()) {
            report.add(id.span(), field, format!("duplicate id {}", id.get_ref()));
        }
    }
    if !seen.contains(&node_id) {
        report.add(
            raw.node_id.span(),
            "node_id",
            format!("{node_id} is neither a member nor the witness of the group"),
        );
    }
    let two_node = g.two_node.unwrap_or(false);
    if members.len() == 2 && witness.is_none() && !two_node {
        report.add(
            group_span.clone(),
            "group.witness",
            "a group of two members needs a witness, or `two_node = true` to accept the \
             split-brain risk",
        );
    }
    let heartbeat_ms = g
        .heartbeat_interval_ms
        .as_ref()
        .map_or(DEFAULT_HEARTBEAT_INTERVAL_MS, |s| *s.get_ref());
    if let Some(s) = g
        .heartbeat_interval_ms
        .as_ref()
        .filter(|s| !(1..=MAX_HEARTBEAT_INTERVAL_MS).contains(s.get_ref()))
    {
        report.add(
            s.span(),
            "group.heartbeat_interval_ms",
            format!("must be from 1 to {MAX_HEARTBEAT_INTERVAL_MS}"),
        );
    }
    let miss_count = g
        .miss_count
        .as_ref()
        .map_or(DEFAULT_MISS_COUNT, |s| *s.get_ref());
    if let Some(s) = g
        .miss_count
        .as_ref()
        .filter(|s| !(2..=MAX_MISS_COUNT).contains(s.get_ref()))
    {
        report.add(
            s.span(),
            "group.miss_count",
            format!("must be from 2 to {MAX_MISS_COUNT}"),
        );
    }
    let lease_ms = heartbeat_ms.saturating_mul(u64::from(miss_count));
    let holder_grace_ms = g.holder_grace_ms.as_ref().map_or_else(
        || {
            // Clamped: out-of-range settings are reported above and must not overflow here.
            crate::election::ElectionConfig::default_holder_grace(
                Duration::from_millis(heartbeat_ms.min(MAX_HEARTBEAT_INTERVAL_MS)),
                miss_count.min(MAX_MISS_COUNT),
            )
            .as_millis() as u64
        },
        |s| *s.get_ref(),
    );
    if let Some(s) = g
        .holder_grace_ms
        .as_ref()
        .filter(|s| *s.get_ref() < lease_ms)
    {
        report.add(
            s.span(),
            "group.holder_grace_ms",
            format!(
                "must be at least one lease, heartbeat_interval_ms × miss_count = {lease_ms} ms"
            ),
        );
    }
    let replication_stall_ms = g
        .replication_stall_ms
        .as_ref()
        .map_or(DEFAULT_REPLICATION_STALL_MS, |s| *s.get_ref());
    if let Some(s) = g
        .replication_stall_ms
        .as_ref()
        .filter(|s| !REPLICATION_STALL_RANGE_MS.contains(s.get_ref()))
    {
        report.add(
            s.span(),
            "group.replication_stall_ms",
            format!(
                "must be from {} to {} (TCP's shortest retransmission timeout is 200 ms: a \
                 shorter bound would drop the backup for one lost segment)",
                REPLICATION_STALL_RANGE_MS.start(),
                REPLICATION_STALL_RANGE_MS.end()
            ),
        );
    }
    let port = g.port.as_ref().map_or(DEFAULT_PORT, |s| *s.get_ref());
    if let Some(s) = g.port.as_ref().filter(|s| *s.get_ref() == 0) {
        report.add(s.span(), "group.port", "must be from 1 to 65535");
    }
    let auth_key_file = resolve(config_dir, g.auth_key_file.get_ref());
    if !path_exists(&auth_key_file) {
        report.add(
            g.auth_key_file.span(),
            "group.auth_key_file",
            format!("the key file {} does not exist", auth_key_file.display()),
        );
    }

    let is_witness = witness.as_ref().is_some_and(|w| w.id == node_id);
    let local = members.iter().find(|m| m.id == node_id).cloned();
    let mut services = Vec::new();
    for (i, s) in raw.service.iter().enumerate() {
        let s = s.get_ref();
        let field = |name: &str| format!("service[{i}].{name}");
        let vip = match s.vip.get_ref().parse::<Ipv4Addr>() {
            Ok(vip) => {
                if let Some(local) = local.as_ref().filter(|l| !l.subnet_contains(vip)) {
                    report.add(
                        s.vip.span(),
                        field("vip"),
                        format!(
                            "{vip} is outside {}, the subnet of node {}'s address {}/{}",
                            local.subnet(),
                            local.id,
                            local.address,
                            local.prefix_len
                        ),
                    );
                }
                vip
            }
            Err(_) => {
                report.add(
                    s.vip.span(),
                    field("vip"),
                    format!("{:?} is not an IPv4 address", s.vip.get_ref()),
                );
                Ipv4Addr::UNSPECIFIED
            }
        };
        if s.ports.get_ref().is_empty() || s.ports.get_ref().contains(&0) {
            report.add(
                s.ports.span(),
                field("ports"),
                "needs at least one port, each from 1 to 65535",
            );
        }
        let mode = Mode::parse(s.mode.get_ref()).unwrap_or_else(|| {
            report.add(
                s.mode.span(),
                field("mode"),
                format!(
                    "unknown mode {:?}: expected unreplicated, simplex, duplex or active",
                    s.mode.get_ref()
                ),
            );
            Mode::Unreplicated
        });
        let backend = s
            .backend
            .get_ref()
            .parse::<SocketAddr>()
            .unwrap_or_else(|_| {
                report.add(
                    s.backend.span(),
                    field("backend"),
                    format!(
                        "{:?} is not a socket address like \"127.0.0.1:8080\"",
                        s.backend.get_ref()
                    ),
                );
                SocketAddr::from(([127, 0, 0, 1], 0))
            });
        let protocol = match s
            .protocol
            .as_ref()
            .map(|p| (p.get_ref().as_str(), p.span()))
        {
            // Active mode speaks RESP alone: left out, that is its protocol.
            None if mode == Mode::Active => Protocol::Resp,
            None | Some(("http", _)) => Protocol::Http,
            Some(("tcp", _)) => Protocol::Tcp,
            Some(("resp", _)) => Protocol::Resp,
            Some((other, span)) => {
                report.add(
                    span,
                    field("protocol"),
                    format!("unknown protocol {other:?}: expected http, tcp or resp"),
                );
                Protocol::Http
            }
        };
        if mode == Mode::Active && protocol != Protocol::Resp {
            report.add(
                s.protocol
                    .as_ref()
                    .map_or_else(|| s.mode.span(), |p| p.span()),
                field("protocol"),
                "mode active replicates Redis servers only (it frames, orders and spreads their \
                 requests): its protocol is \"resp\" (the default in this mode), and its \
                 backend the local redis-server",
            );
        }
        if matches!(mode, Mode::Simplex | Mode::Duplex) {
            let span = s
                .protocol
                .as_ref()
                .map_or_else(|| s.mode.span(), |p| p.span());
            if protocol != Protocol::Http {
                report.add(
                    span,
                    field("protocol"),
                    format!(
                        "mode {} carries HTTP/1.1 only (it frames requests and replies); a raw \
                         TCP service needs mode unreplicated, a Redis one mode active or \
                         unreplicated",
                        mode.as_str()
                    ),
                );
            } else if s.protocol.is_none() {
                for port in s.ports.get_ref() {
                    if let Some((_, name)) = NON_HTTP_PORTS.iter().find(|(p, _)| p == port) {
                        report.add(
                            s.ports.span(),
                            field("ports"),
                            format!(
                                "port {port} is the {name} port, not HTTP: mode {} frames \
                                 HTTP/1.1 only; if this port really serves plain HTTP, say \
                                 protocol = \"http\"",
                                mode.as_str()
                            ),
                        );
                    }
                }
            }
            if backend.ip() == std::net::IpAddr::V4(vip)
                && s.ports.get_ref().contains(&backend.port())
            {
                report.add(
                    s.backend.span(),
                    field("backend"),
                    format!(
                        "{backend} is the service address itself: in mode {} the proxy listens \
                         there; the backend keeps port {} on a local address (e.g. \
                         127.0.0.1:{}), so the URLs it writes name the service's port",
                        mode.as_str(),
                        backend.port(),
                        backend.port()
                    ),
                );
            }
        }
        let mut client_timeout = |value: &Option<Spanned<u64>>, name: &str, default: u64| {
            if let Some(v) = value
                .as_ref()
                .filter(|v| !CLIENT_TIMEOUT_RANGE_MS.contains(v.get_ref()))
            {
                report.add(
                    v.span(),
                    field(name),
                    format!(
                        "must be from {} to {} milliseconds",
                        CLIENT_TIMEOUT_RANGE_MS.start(),
                        CLIENT_TIMEOUT_RANGE_MS.end()
                    ),
                );
            }
            Duration::from_millis(value.as_ref().map_or(default, |v| *v.get_ref()))
        };
        let client_header_timeout = client_timeout(
            &s.client_header_timeout_ms,
            "client_header_timeout_ms",
            DEFAULT_CLIENT_HEADER_TIMEOUT_MS,
        );
        let client_idle_timeout = client_timeout(
            &s.client_idle_timeout_ms,
            "client_idle_timeout_ms",
            DEFAULT_CLIENT_IDLE_TIMEOUT_MS,
        );
        for (value, name) in [
            (&s.max_connections, "max_connections"),
            (&s.max_connections_per_source, "max_connections_per_source"),
            (&s.max_half_open_per_source, "max_half_open_per_source"),
        ] {
            if let Some(v) = value.as_ref().filter(|v| *v.get_ref() == 0) {
                report.add(
                    v.span(),
                    field(name),
                    "must be at least 1 (leave it out for no limit of its own)",
                );
            }
        }
        if let Some(v) = s
            .half_open_lifetime_ms
            .as_ref()
            .filter(|v| *v.get_ref() < 1000)
        {
            report.add(
                v.span(),
                field("half_open_lifetime_ms"),
                "must be at least 1000 (a handshake takes a round trip, a retransmitted SYN-ACK a \
                 second)",
            );
        }
        let delivery = active_choice(
            report,
            s.delivery.as_ref(),
            &field("delivery"),
            mode,
            "how active mode's replicas run updates",
            DeliveryStrategy::parse,
            &DeliveryStrategy::ALL.map(DeliveryStrategy::name),
        );
        let read_policy = active_choice(
            report,
            s.read_policy.as_ref(),
            &field("read_policy"),
            mode,
            "which of active mode's replicas serve reads",
            ReadPolicy::parse,
            &ReadPolicy::ALL.map(ReadPolicy::name),
        );
        services.push(Service {
            name: s.name.clone(),
            vip,
            interface: s
                .interface
                .clone()
                .unwrap_or_else(|| DEFAULT_INTERFACE.to_string()),
            ports: s.ports.get_ref().clone(),
            mode,
            backend,
            protocol,
            stream_replies_above: s
                .stream_replies_above
                .unwrap_or(DEFAULT_STREAM_REPLIES_ABOVE),
            client_header_timeout,
            client_idle_timeout,
            max_connections: s.max_connections.as_ref().map(|v| *v.get_ref()),
            max_connections_per_source: s.max_connections_per_source.as_ref().map(|v| *v.get_ref()),
            max_half_open_per_source: s.max_half_open_per_source.as_ref().map(|v| *v.get_ref()),
            max_request_bytes_held: s.max_request_bytes_held.as_ref().map(|v| *v.get_ref()),
            half_open_lifetime_ms: s.half_open_lifetime_ms.as_ref().map(|v| *v.get_ref()),
            delivery,
            read_policy,
        });
    }
    if services.is_empty() && !is_witness && seen.contains(&node_id) {
        report.add(
            raw.node_id.span(),
            "service",
            format!("node {node_id} is a member, so its file needs at least one [[service]]"),
        );
    }

    let mut health_checks = Vec::new();
    for (i, c) in raw.health_check.iter().enumerate() {
        let span = c.span();
        let c = c.get_ref();
        let field = |name: &str| format!("health_check[{i}].{name}");
        let target = |report: &mut Report<'_>| match &c.target {
            Some(t) => t.get_ref().parse::<SocketAddr>().unwrap_or_else(|_| {
                report.add(
                    t.span(),
                    field("target"),
                    format!("{:?} is not a socket address", t.get_ref()),
                );
                SocketAddr::from(([127, 0, 0, 1], 0))
            }),
            None => {
                report.add(
                    span.clone(),
                    field("target"),
                    format!("{} checks need a target", c.kind.get_ref()),
                );
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        };
        let kind = match c.kind.get_ref().as_str() {
            "http" => HealthCheckKind::Http {
                target: target(report),
                path: c
                    .path
                    .as_ref()
                    .map_or_else(|| "/".into(), |p| p.get_ref().clone()),
                expect_status: c.expect_status.as_ref().map_or(200, |s| *s.get_ref()),
            },
            "tcp" => HealthCheckKind::Tcp {
                target: target(report),
            },
            "exec" => {
                let command = c
                    .command
                    .as_ref()
                    .map(|s| s.get_ref().clone())
                    .unwrap_or_default();
                if command.is_empty() || command[0].is_empty() {
                    let at = c.command.as_ref().map_or(span.clone(), |s| s.span());
                    report.add(
                        at,
                        field("command"),
                        "an exec check needs a non-empty command",
                    );
                }
                HealthCheckKind::Exec { command }
            }
            other => {
                report.add(
                    c.kind.span(),
                    field("kind"),
                    format!("unknown check kind {other:?}: expected http, tcp or exec"),
                );
                continue;
            }
        };
        // A key of another kind is a mistake the user should hear about (an exec check with a
        // `target` probes nothing there), not something to ignore.
        let kind_name = c.kind.get_ref().as_str();
        let foreign = [
            (
                "target",
                c.target.as_ref().map(Spanned::span),
                "http and tcp",
            ),
            ("path", c.path.as_ref().map(Spanned::span), "http"),
            (
                "expect_status",
                c.expect_status.as_ref().map(Spanned::span),
                "http",
            ),
            ("command", c.command.as_ref().map(Spanned::span), "exec"),
        ];
        for (name, at, kinds) in foreign {
            if let Some(at) = at.filter(|_| !kinds.split(" and ").any(|k| k == kind_name)) {
                report.add(
                    at,
                    field(name),
                    format!("applies to {kinds} checks only, not to a {kind_name} check"),
                );
            }
        }
        for (name, v) in [("rise", &c.rise), ("fall", &c.fall)] {
            if let Some(s) = v.as_ref().filter(|s| *s.get_ref() == 0) {
                report.add(s.span(), field(name), "must be at least 1");
            }
        }
        for (name, v) in [
            ("interval_ms", &c.interval_ms),
            ("timeout_ms", &c.timeout_ms),
        ] {
            if let Some(s) = v.as_ref().filter(|s| *s.get_ref() == 0) {
                report.add(s.span(), field(name), "must be at least 1");
            }
        }
        health_checks.push(HealthCheck {
            kind,
            interval: millis(&c.interval_ms, 200),
            timeout: millis(&c.timeout_ms, 500),
            rise: c.rise.as_ref().map_or(2, |s| *s.get_ref()),
            fall: c.fall.as_ref().map_or(2, |s| *s.get_ref()),
        });
    }

    let arp = raw.arp.map_or_else(Arp::default, |a| {
        let d = Arp::default();
        Arp {
            gratuitous_count: a.gratuitous_count.unwrap_or(d.gratuitous_count),
            gratuitous_spacing: a
                .gratuitous_spacing_ms
                .map_or(d.gratuitous_spacing, Duration::from_millis),
            refresh_on_heal: a.refresh_on_heal.unwrap_or(d.refresh_on_heal),
        }
    });
    let notify = raw.notify.map(|n| {
        let n = n.into_inner();
        if n.command.get_ref().is_empty() || n.command.get_ref()[0].is_empty() {
            report.add(n.command.span(), "notify.command", "needs a program to run");
        }
        Notify {
            command: n.command.into_inner(),
            timeout: Duration::from_millis(n.timeout_ms.unwrap_or(5000)),
        }
    });
    let relay = raw.relay.map(|r| {
        let span = r.span();
        let service_interfaces: Vec<(usize, &str)> = services
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.interface.as_str()))
            .collect();
        relay::build(
            r.into_inner(),
            span,
            port,
            node_id,
            &members,
            &service_interfaces,
            &relay::ElectionTiming {
                heartbeat_interval_ms: heartbeat_ms.clamp(1, MAX_HEARTBEAT_INTERVAL_MS),
                heartbeat_interval_at: g.heartbeat_interval_ms.as_ref().map(|s| s.span()),
                miss_count: miss_count.clamp(2, MAX_MISS_COUNT),
                miss_count_at: g.miss_count.as_ref().map(|s| s.span()),
            },
            report,
        )
    });
    let control = Control {
        socket: raw.control.and_then(|c| c.socket).map_or_else(
            || PathBuf::from(DEFAULT_CONTROL_SOCKET),
            |s| resolve(config_dir, &s),
        ),
    };
    let metrics = raw.metrics.map(|m| Metrics {
        listen: m
            .listen
            .get_ref()
            .parse::<SocketAddr>()
            .unwrap_or_else(|_| {
                report.add(
                    m.listen.span(),
                    "metrics.listen",
                    format!(
                        "{:?} is not a socket address like \"127.0.0.1:9550\"",
                        m.listen.get_ref()
                    ),
                );
                SocketAddr::from(([127, 0, 0, 1], 0))
            }),
    });
    let group_name = match g.name {
        Some(name) => {
            if let Err(why) = check_group_name(name.get_ref()) {
                report.add(name.span(), "group.name", why);
            }
            name.into_inner()
        }
        None => DEFAULT_GROUP_NAME.to_string(),
    };
    Config {
        node_id,
        group: Group {
            name: group_name,
            auth_key_file,
            port,
            heartbeat_interval: Duration::from_millis(heartbeat_ms),
            miss_count,
            holder_grace: Duration::from_millis(holder_grace_ms),
            replication_stall: Duration::from_millis(replication_stall_ms),
            replication_encryption: g.replication_encryption.unwrap_or(true),
            preempt: g.preempt.unwrap_or(false),
            two_node,
            members,
            witness,
        },
        services,
        health_checks,
        arp,
        notify,
        control,
        metrics,
        relay,
    }
}

/// Writes a configuration that [`parse`] reads back to the same value (paths absolute).
pub fn to_toml(cfg: &Config) -> String {
    toml::to_string(cfg)
        .expect("every Config field has a TOML form: strings, integers in i64, booleans, tables")
}
