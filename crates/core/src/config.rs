//! The node configuration: one TOML file per voter, parsed and validated without I/O.
//!
//! Every error names the file, the line and column, and the field: `FILE:LINE:COL: FIELD: MESSAGE`.
//! All errors of a file are reported together. The one check that needs the file system (does
//! the key file exist?) goes through a function the caller supplies, so this module stays pure.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::NodeId;

pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 50;
/// 3 × 50 ms: detection in 150 ms, and no false failover under full load (see the README).
pub const DEFAULT_MISS_COUNT: u32 = 3;
pub const DEFAULT_PORT: u16 = 7410;
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/steadfast/steadfast.sock";
const DEFAULT_GROUP_NAME: &str = "steadfast";
const DEFAULT_INTERFACE: &str = "eth0";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub node_id: NodeId,
    pub group: Group,
    pub services: Vec<Service>,
    pub health_checks: Vec<HealthCheck>,
    pub arp: Arp,
    pub notify: Option<Notify>,
    pub control: Control,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    /// Resolved against the configuration's folder.
    pub auth_key_file: PathBuf,
    pub port: u16,
    pub heartbeat_interval: Duration,
    pub miss_count: u32,
    pub preempt: bool,
    pub two_node: bool,
    pub members: Vec<Member>,
    pub witness: Option<Member>,
}

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
    fn subnet(&self) -> String {
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "unreplicated" => Mode::Unreplicated,
            "simplex" => Mode::Simplex,
            "duplex" => Mode::Duplex,
            "active" => Mode::Active,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub vip: Ipv4Addr,
    pub interface: String,
    pub ports: Vec<u16>,
    pub mode: Mode,
    pub backend: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arp {
    pub gratuitous_count: u32,
    pub gratuitous_spacing: Duration,
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notify {
    pub command: Vec<String>,
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Control {
    pub socket: PathBuf,
}

impl Config {
    /// Every voter with its address: members, then the witness.
    pub fn peer_addresses(&self) -> Vec<(NodeId, Ipv4Addr)> {
        self.group
            .members
            .iter()
            .chain(self.group.witness.iter())
            .map(|m| (m.id, m.address))
            .collect()
    }
    pub fn voters(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .peer_addresses()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        v.sort_unstable();
        v
    }
    pub fn is_witness(&self) -> bool {
        self.group
            .witness
            .as_ref()
            .is_some_and(|w| w.id == self.node_id)
    }
    pub fn local_member(&self) -> Option<&Member> {
        self.group.members.iter().find(|m| m.id == self.node_id)
    }
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
#[serde(deny_unknown_fields)]
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: Option<String>,
    auth_key_file: Spanned<String>,
    port: Option<Spanned<u16>>,
    heartbeat_interval_ms: Option<Spanned<u64>>,
    miss_count: Option<Spanned<u32>>,
    preempt: Option<bool>,
    two_node: Option<bool>,
    #[serde(default)]
    member: Vec<Spanned<RawMember>>,
    witness: Option<Spanned<RawMember>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    id: Spanned<NodeId>,
    address: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    vip: Spanned<String>,
    interface: Option<String>,
    ports: Spanned<Vec<u16>>,
    mode: Spanned<String>,
    backend: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    kind: Spanned<String>,
    target: Option<Spanned<String>>,
    path: Option<String>,
    expect_status: Option<u16>,
    command: Option<Spanned<Vec<String>>>,
    interval_ms: Option<Spanned<u64>>,
    timeout_ms: Option<Spanned<u64>>,
    rise: Option<Spanned<u32>>,
    fall: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArp {
    gratuitous_count: Option<u32>,
    gratuitous_spacing_ms: Option<u64>,
    refresh_on_heal: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    command: Spanned<Vec<String>>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    socket: Option<String>,
}

/// Collects errors with positions computed from byte spans.
struct Report<'a> {
    text: &'a str,
    file: &'a str,
    errors: Vec<ConfigError>,
}

impl Report<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
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

    /// The dotted name of the key written on the line holding `offset` (for errors the toml
    /// parser reports, which carry a position but no field name).
    fn field_at(&self, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let line_start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[offset..]
            .find('\n')
            .map_or(self.text.len(), |i| offset + i);
        let line = &self.text[line_start..line_end];
        let key = line.split('=').next().unwrap_or("").trim();
        let table = self.text[..line_start]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
        match (table, key.starts_with('[') || key.is_empty()) {
            (_, true) => key.trim_matches(|c| c == '[' || c == ']').to_string(),
            (Some(t), false) => format!("{t}.{key}"),
            (None, false) => key.to_string(),
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

fn millis(v: &Option<Spanned<u64>>, default: u64) -> Duration {
    Duration::from_millis(v.as_ref().map_or(default, |s| *s.get_ref()))
}

/// Parses and validates one configuration file.
///
/// `file` names it in errors; relative paths inside it are resolved against `config_dir`;
/// `path_exists` answers whether the key file is there.
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
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let field = report.field_at(span.start);
            let field = if field.is_empty() {
                "(file)".into()
            } else {
                field
            };
            report.add(span, field, e.message().trim().to_string());
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
        .filter(|s| *s.get_ref() == 0)
    {
        report.add(
            s.span(),
            "group.heartbeat_interval_ms",
            "must be at least 1",
        );
    }
    let miss_count = g
        .miss_count
        .as_ref()
        .map_or(DEFAULT_MISS_COUNT, |s| *s.get_ref());
    if let Some(s) = g.miss_count.as_ref().filter(|s| *s.get_ref() < 2) {
        report.add(s.span(), "group.miss_count", "must be at least 2");
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
        });
    }
    if services.is_empty() && !is_witness && seen.contains(&node_id) {
        report.add(0..0, "service", "a member needs at least one [[service]]");
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
                    format!("a {} check needs a target", c.kind.get_ref()),
                );
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        };
        let kind = match c.kind.get_ref().as_str() {
            "http" => HealthCheckKind::Http {
                target: target(report),
                path: c.path.clone().unwrap_or_else(|| "/".into()),
                expect_status: c.expect_status.unwrap_or(200),
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
    let control = Control {
        socket: raw.control.and_then(|c| c.socket).map_or_else(
            || PathBuf::from(DEFAULT_CONTROL_SOCKET),
            |s| resolve(config_dir, &s),
        ),
    };
    Config {
        node_id,
        group: Group {
            name: g.name.unwrap_or_else(|| DEFAULT_GROUP_NAME.to_string()),
            auth_key_file,
            port,
            heartbeat_interval: Duration::from_millis(heartbeat_ms),
            miss_count,
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
    }
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn quoted_list(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| quoted(s)).collect();
    format!("[{}]", inner.join(", "))
}

/// Writes a configuration that [`parse`] reads back to the same value (paths absolute).
pub fn to_toml(cfg: &Config) -> String {
    let mut t = String::new();
    let g = &cfg.group;
    let _ = writeln!(t, "node_id = {}\n\n[group]", cfg.node_id);
    let _ = writeln!(t, "name = {}", quoted(&g.name));
    let _ = writeln!(
        t,
        "auth_key_file = {}",
        quoted(&g.auth_key_file.to_string_lossy())
    );
    let _ = writeln!(t, "port = {}", g.port);
    let _ = writeln!(
        t,
        "heartbeat_interval_ms = {}",
        g.heartbeat_interval.as_millis()
    );
    let _ = writeln!(t, "miss_count = {}", g.miss_count);
    let _ = writeln!(t, "preempt = {}\ntwo_node = {}", g.preempt, g.two_node);
    for m in &g.members {
        let _ = writeln!(
            t,
            "\n[[group.member]]\nid = {}\naddress = \"{}/{}\"",
            m.id, m.address, m.prefix_len
        );
    }
    if let Some(w) = &g.witness {
        let _ = writeln!(
            t,
            "\n[group.witness]\nid = {}\naddress = \"{}/{}\"",
            w.id, w.address, w.prefix_len
        );
    }
    for s in &cfg.services {
        let ports: Vec<String> = s.ports.iter().map(u16::to_string).collect();
        let _ = writeln!(
            t,
            "\n[[service]]\nname = {}\nvip = \"{}\"\ninterface = {}\nports = [{}]\nmode = \"{}\"\nbackend = \"{}\"",
            quoted(&s.name),
            s.vip,
            quoted(&s.interface),
            ports.join(", "),
            s.mode.as_str(),
            s.backend
        );
    }
    for c in &cfg.health_checks {
        let _ = writeln!(t, "\n[[health_check]]");
        match &c.kind {
            HealthCheckKind::Http {
                target,
                path,
                expect_status,
            } => {
                let _ = writeln!(t, "kind = \"http\"\ntarget = \"{target}\"\npath = {}\nexpect_status = {expect_status}", quoted(path));
            }
            HealthCheckKind::Tcp { target } => {
                let _ = writeln!(t, "kind = \"tcp\"\ntarget = \"{target}\"");
            }
            HealthCheckKind::Exec { command } => {
                let _ = writeln!(t, "kind = \"exec\"\ncommand = {}", quoted_list(command));
            }
        }
        let _ = writeln!(
            t,
            "interval_ms = {}\ntimeout_ms = {}\nrise = {}\nfall = {}",
            c.interval.as_millis(),
            c.timeout.as_millis(),
            c.rise,
            c.fall
        );
    }
    let _ = writeln!(
        t,
        "\n[arp]\ngratuitous_count = {}\ngratuitous_spacing_ms = {}\nrefresh_on_heal = {}",
        cfg.arp.gratuitous_count,
        cfg.arp.gratuitous_spacing.as_millis(),
        cfg.arp.refresh_on_heal
    );
    if let Some(n) = &cfg.notify {
        let _ = writeln!(
            t,
            "\n[notify]\ncommand = {}\ntimeout_ms = {}",
            quoted_list(&n.command),
            n.timeout.as_millis()
        );
    }
    let _ = writeln!(
        t,
        "\n[control]\nsocket = {}",
        quoted(&cfg.control.socket.to_string_lossy())
    );
    t
}
