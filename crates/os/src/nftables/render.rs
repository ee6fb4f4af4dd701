//! A [`Ruleset`] read from the kernel, in the syntax of `nft list ruleset`: what an operator
//! reads. Pure: the two things it cannot know from the ruleset itself (the name of an
//! interface index, the process owning a table) come from a [`Names`].
//!
//! A rule's expressions are read the way nft reads them: loads into registers, then the
//! statement that uses the register (`ip daddr 10.0.0.1`, `meta mark set 0x1`, `update @s {
//! ip daddr }`), and the protocol checks nft adds for a match (`meta nfproto ipv4` before `ip
//! daddr` in an inet table) left out where the match implies them. What it cannot read is
//! shown in a comment at the end of the rule, `# undecoded: ...`, with the expression's
//! position, name and raw attributes: never left out.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::model::{
    key_type, ChainContents, CmpOp, Data, DynsetOp, Expr, Family, Hook, MetaKey, PayloadBase,
    Policy, Rule, Ruleset, Set, TableContents, Verdict, DATA_VERDICT, OBJECT_COUNTER, OBJECT_QUOTA,
    SET_CONSTANT, SET_EVAL, SET_INTERVAL, SET_TIMEOUT, TABLE_DORMANT, TABLE_OWNER, TABLE_PERSIST,
    VERDICT_REGISTER,
};

const ARPHRD_ETHER: u16 = 1;

/// What the rendering asks of the system it runs on.
pub trait Names {
    /// The name of the interface with this index, in the namespace the ruleset is from.
    fn interface(&self, index: u32) -> Option<String>;
    /// The program that holds the netlink socket with this port (a table's owner).
    fn owner(&self, port: u32) -> Option<String>;
}

/// Knows no names: interfaces show as indexes, owners as netlink ports.
pub struct NoNames;

impl Names for NoNames {
    fn interface(&self, _index: u32) -> Option<String> {
        None
    }

    fn owner(&self, _port: u32) -> Option<String> {
        None
    }
}

/// The whole ruleset, tables in the kernel's order.
pub fn ruleset(ruleset: &Ruleset, names: &dyn Names) -> String {
    ruleset
        .tables
        .iter()
        .map(|t| table(t, names))
        .collect::<Vec<_>>()
        .join("")
}

fn flag_words(bits: u32, words: &[(u32, &str)]) -> Vec<String> {
    let mut out: Vec<String> = words
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, word)| word.to_string())
        .collect();
    let rest = bits & !words.iter().fold(0, |all, (bit, _)| all | bit);
    if rest != 0 {
        out.push(format!("0x{rest:x}"));
    }
    out
}

/// One table with everything in it.
pub fn table(contents: &TableContents, names: &dyn Names) -> String {
    let t = &contents.table;
    let mut out = format!("table {} {} {{", t.family, t.name);
    if t.flags & TABLE_OWNER != 0 {
        match t.owner {
            Some(port) => match names.owner(port) {
                Some(program) => write!(out, " # progname {program}").unwrap(),
                None => write!(out, " # owner: netlink port {port}").unwrap(),
            },
            None => out.push_str(" # owner unknown"),
        }
    }
    out.push('\n');
    let mut blocks: Vec<String> = Vec::new();
    let flags = flag_words(
        t.flags,
        &[
            (TABLE_DORMANT, "dormant"),
            (TABLE_OWNER, "owner"),
            (TABLE_PERSIST, "persist"),
        ],
    );
    if !flags.is_empty() {
        blocks.push(format!("\tflags {}\n", flags.join(",")));
    }
    for counter in &contents.counters {
        blocks.push(format!(
            "\tcounter {} {{\n\t\tpackets {} bytes {}\n\t}}\n",
            counter.name, counter.packets, counter.bytes
        ));
    }
    for object in &contents.other_objects {
        blocks.push(format!(
            "\t# undecoded: object {} of type {} (steadfast reads counters only)\n",
            object.name, object.object_type
        ));
    }
    for set in contents.sets.iter().filter(|s| !s.is_anonymous()) {
        blocks.push(named_set(set, names));
    }
    for chain in &contents.chains {
        blocks.push(chain_block(chain, &contents.sets, names));
    }
    out.push_str(&blocks.join("\n"));
    out.push_str("}\n");
    out
}

fn key_type_name(key_type: u32) -> String {
    match key_type {
        key_type::IPV4_ADDR => "ipv4_addr".into(),
        key_type::IPV6_ADDR => "ipv6_addr".into(),
        key_type::ETHER_ADDR => "ether_addr".into(),
        key_type::INET_PROTOCOL => "inet_proto".into(),
        key_type::INET_SERVICE => "inet_service".into(),
        key_type::MARK => "mark".into(),
        key_type::IFINDEX => "iface_index".into(),
        other => format!("# undecoded: key type {other}"),
    }
}

fn kind_of_key_type(key_type: u32) -> Kind {
    match key_type {
        key_type::IPV4_ADDR => Kind::Ipv4,
        key_type::IPV6_ADDR => Kind::Ipv6,
        key_type::ETHER_ADDR => Kind::Ether,
        key_type::INET_PROTOCOL => Kind::InetProto,
        key_type::INET_SERVICE => Kind::Port,
        key_type::MARK => Kind::Mark,
        key_type::IFINDEX => Kind::Ifindex,
        _ => Kind::Hex,
    }
}

fn named_set(set: &Set, names: &dyn Names) -> String {
    let kind = kind_of_key_type(set.key_type);
    let keyword = if set.is_map() { "map" } else { "set" };
    let mut out = format!("\t{keyword} {} {{\n", set.name);
    let data = match set.data_type {
        Some(DATA_VERDICT) => " : verdict".to_string(),
        Some(other) => format!(" : {}", key_type_name(other)),
        None => String::new(),
    };
    writeln!(out, "\t\ttype {}{data}", key_type_name(set.key_type)).unwrap();
    if let Some(size) = set.size {
        writeln!(out, "\t\tsize {size}").unwrap();
    }
    let flags = flag_words(
        set.flags & (SET_CONSTANT | SET_EVAL | SET_INTERVAL | SET_TIMEOUT),
        &[
            (SET_CONSTANT, "constant"),
            (SET_EVAL, "dynamic"),
            (SET_INTERVAL, "interval"),
            (SET_TIMEOUT, "timeout"),
        ],
    );
    if !flags.is_empty() {
        writeln!(out, "\t\tflags {}", flags.join(",")).unwrap();
    }
    if let Some(timeout) = set.timeout_ms {
        writeln!(out, "\t\ttimeout {}", duration(timeout)).unwrap();
    }
    if !set.elements.is_empty() {
        let elements: Vec<String> = sorted_elements(set, kind)
            .into_iter()
            .map(|e| {
                let mut text = value(kind, &e.key, names);
                if let Some(data) = &e.data {
                    write!(text, " : {}", data_text(data, names)).unwrap();
                }
                if let Some(timeout) = e.timeout_ms {
                    write!(text, " timeout {}", duration(timeout)).unwrap();
                }
                if let Some(expires) = e.expires_ms {
                    write!(text, " expires {}", duration(expires)).unwrap();
                }
                text
            })
            .collect();
        writeln!(out, "\t\telements = {{ {} }}", elements.join(", ")).unwrap();
    }
    out.push_str("\t}\n");
    out
}

fn data_text(data: &Data, names: &dyn Names) -> String {
    match data {
        Data::Verdict(v) => verdict(v).unwrap_or_else(|| format!("# undecoded: verdict {v:?}")),
        Data::Value(bytes) => value(Kind::Hex, bytes, names),
    }
}

/// Elements in ascending key order, as nft lists them.
fn sorted_elements(set: &Set, kind: Kind) -> Vec<&super::model::SetElement> {
    let mut elements: Vec<_> = set.elements.iter().collect();
    elements.sort_by_key(|e| match (kind, <[u8; 4]>::try_from(&e.key[..])) {
        (Kind::Mark, Ok(bytes)) => u32::from_ne_bytes(bytes).to_be_bytes().to_vec(),
        _ => e.key.clone(),
    });
    elements
}

/// A time the way nft writes it: `1m`, `4ms`, `29s992ms`.
pub fn duration(milliseconds: u64) -> String {
    if milliseconds == 0 {
        return "0s".to_string();
    }
    let mut rest = milliseconds;
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        let count = rest / size;
        rest %= size;
        if count > 0 {
            write!(out, "{count}{unit}").unwrap();
        }
    }
    out
}

/// nft's symbolic priorities: a priority within 10 of a standard one is written from it.
fn priority(family: Family, hook: Option<Hook>, priority: i32) -> String {
    let standard: &[(&str, i32, Option<Hook>)] = match family {
        Family::Ip | Family::Ip6 | Family::Inet => &[
            ("raw", -300, None),
            ("mangle", -150, None),
            ("dstnat", -100, Some(Hook::Prerouting)),
            ("filter", 0, None),
            ("security", 50, None),
            ("srcnat", 100, Some(Hook::Postrouting)),
        ],
        Family::Arp | Family::Netdev => &[("filter", 0, None)],
        Family::Bridge => &[
            ("dstnat", -300, Some(Hook::Prerouting)),
            ("filter", -200, None),
            ("out", 100, Some(Hook::Output)),
            ("srcnat", 300, Some(Hook::Postrouting)),
        ],
        Family::Other(_) => &[],
    };
    for (name, value, only) in standard {
        if only.is_some_and(|h| Some(h) != hook) {
            continue;
        }
        let offset = priority - value;
        match offset {
            0 => return name.to_string(),
            1..=10 => return format!("{name} + {offset}"),
            -10..=-1 => return format!("{name} - {}", -offset),
            _ => {}
        }
    }
    priority.to_string()
}

fn chain_block(contents: &ChainContents, sets: &[Set], names: &dyn Names) -> String {
    let chain = &contents.chain;
    let mut out = format!("\tchain {} {{\n", chain.name);
    if let Some(base) = &chain.base {
        let hook = Hook::from_number(chain.family, base.hook);
        let hook_name = hook.map_or_else(|| format!("{}", base.hook), |h| h.name().to_string());
        let device = match &base.devices[..] {
            [] => String::new(),
            [device] => format!(" device \"{device}\""),
            devices => format!(
                " devices = {{ {} }}",
                devices
                    .iter()
                    .map(|d| format!("\"{d}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let policy = match base.policy {
            Policy::Accept => "accept",
            Policy::Drop => "drop",
        };
        writeln!(
            out,
            "\t\ttype {} hook {hook_name}{device} priority {}; policy {policy};",
            base.kind,
            priority(chain.family, hook, base.priority)
        )
        .unwrap();
    }
    for r in &contents.rules {
        writeln!(out, "\t\t{}", rule(r, sets, names)).unwrap();
    }
    out.push_str("\t}\n");
    out
}

/// How a value is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ipv4,
    Ipv6,
    Ether,
    EtherType,
    Port,
    InetProto,
    ArpOperation,
    Mark,
    Ifname,
    Ifindex,
    Nfproto,
    Arphrd,
    Decimal,
    Hex,
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::from("0x");
    for b in bytes {
        write!(out, "{b:02x}").unwrap();
    }
    out
}

fn value(kind: Kind, bytes: &[u8], names: &dyn Names) -> String {
    let be16 = || <[u8; 2]>::try_from(bytes).ok().map(u16::from_be_bytes);
    let ne16 = || <[u8; 2]>::try_from(bytes).ok().map(u16::from_ne_bytes);
    let ne32 = || <[u8; 4]>::try_from(bytes).ok().map(u32::from_ne_bytes);
    let byte = || <[u8; 1]>::try_from(bytes).ok().map(|b| b[0]);
    let text = match kind {
        Kind::Ipv4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| Ipv4Addr::from(b).to_string()),
        Kind::Ipv6 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| Ipv6Addr::from(b).to_string()),
        Kind::Ether => <[u8; 6]>::try_from(bytes).ok().map(|b| {
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        }),
        Kind::EtherType => be16().map(|t| match t {
            0x0800 => "ip".to_string(),
            0x0806 => "arp".to_string(),
            0x86dd => "ip6".to_string(),
            0x8100 => "8021q".to_string(),
            other => format!("0x{other:04x}"),
        }),
        Kind::Port => be16().map(|p| p.to_string()),
        Kind::InetProto => byte().map(|p| match p {
            1 => "icmp".to_string(),
            6 => "tcp".to_string(),
            17 => "udp".to_string(),
            58 => "ipv6-icmp".to_string(),
            other => other.to_string(),
        }),
        Kind::ArpOperation => be16().map(|o| match o {
            1 => "request".to_string(),
            2 => "reply".to_string(),
            other => other.to_string(),
        }),
        Kind::Mark => ne32().map(|m| format!("0x{m:08x}")),
        Kind::Ifname => {
            let name = bytes.split(|b| *b == 0).next().unwrap_or_default();
            std::str::from_utf8(name).ok().map(|n| format!("\"{n}\""))
        }
        Kind::Ifindex => ne32().map(|i| match names.interface(i) {
            Some(name) => format!("\"{name}\""),
            None => i.to_string(),
        }),
        Kind::Nfproto => byte().map(|p| match p {
            2 => "ipv4".to_string(),
            10 => "ipv6".to_string(),
            other => other.to_string(),
        }),
        Kind::Arphrd => ne16().map(|t| match t {
            1 => "ether".to_string(),
            772 => "loopback".to_string(),
            other => other.to_string(),
        }),
        Kind::Decimal => (bytes.len() <= 8).then(|| {
            bytes
                .iter()
                .fold(0u64, |n, b| (n << 8) | u64::from(*b))
                .to_string()
        }),
        Kind::Hex => None,
    };
    text.unwrap_or_else(|| hex(bytes))
}

/// The header a field is read from: a protocol check that a later field's header implies is
/// left out, as nft does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Header {
    Link,
    Ip,
    Ip6,
    Arp,
    Transport,
}

/// What a register holds: where the value was loaded from, or the value itself.
#[derive(Clone, Debug)]
enum Loaded {
    Field {
        name: String,
        kind: Kind,
        header: Option<Header>,
    },
    Value(Vec<u8>),
}

fn meta_field(key: MetaKey) -> Option<(&'static str, Kind)> {
    Some(match key {
        MetaKey::Mark => ("meta mark", Kind::Mark),
        MetaKey::Iifname => ("iifname", Kind::Ifname),
        MetaKey::Oifname => ("oifname", Kind::Ifname),
        MetaKey::Iif => ("iif", Kind::Ifindex),
        MetaKey::Oif => ("oif", Kind::Ifindex),
        MetaKey::Nfproto => ("meta nfproto", Kind::Nfproto),
        MetaKey::L4Proto => ("meta l4proto", Kind::InetProto),
        MetaKey::Iftype => ("meta iiftype", Kind::Arphrd),
        MetaKey::Oiftype => ("meta oiftype", Kind::Arphrd),
        MetaKey::EtherTypeProtocol => ("meta protocol", Kind::EtherType),
        MetaKey::BriIifname => ("meta ibrname", Kind::Ifname),
        MetaKey::BriOifname => ("meta obrname", Kind::Ifname),
        _ => return None,
    })
}

/// What the rule has established about the packet so far: it names the headers' fields.
#[derive(Clone, Copy, Debug, Default)]
struct Known {
    network: Option<Header>,
    transport: Option<u8>,
}

fn payload_field(
    family: Family,
    known: Known,
    base: PayloadBase,
    offset: u32,
    len: u32,
) -> (String, Kind, Option<Header>) {
    let named = |name: &str, kind, header| (name.to_string(), kind, Some(header));
    match base {
        PayloadBase::Link => match (offset, len) {
            (0, 6) => return named("ether daddr", Kind::Ether, Header::Link),
            (6, 6) => return named("ether saddr", Kind::Ether, Header::Link),
            (12, 2) => return named("ether type", Kind::EtherType, Header::Link),
            _ => {}
        },
        PayloadBase::Network if family == Family::Arp => match (offset, len) {
            (6, 2) => return named("arp operation", Kind::ArpOperation, Header::Arp),
            (8, 6) => return named("arp saddr ether", Kind::Ether, Header::Arp),
            (14, 4) => return named("arp saddr ip", Kind::Ipv4, Header::Arp),
            (18, 6) => return named("arp daddr ether", Kind::Ether, Header::Arp),
            (24, 4) => return named("arp daddr ip", Kind::Ipv4, Header::Arp),
            _ => {}
        },
        PayloadBase::Network => {
            let network = match family {
                Family::Ip => Some(Header::Ip),
                Family::Ip6 => Some(Header::Ip6),
                _ => known.network,
            };
            match (network, offset, len) {
                (Some(Header::Ip), 9, 1) => {
                    return named("ip protocol", Kind::InetProto, Header::Ip)
                }
                (Some(Header::Ip), 8, 1) => return named("ip ttl", Kind::Decimal, Header::Ip),
                (Some(Header::Ip), 12, 4) => return named("ip saddr", Kind::Ipv4, Header::Ip),
                (Some(Header::Ip), 16, 4) => return named("ip daddr", Kind::Ipv4, Header::Ip),
                (Some(Header::Ip6), 6, 1) => {
                    return named("ip6 nexthdr", Kind::InetProto, Header::Ip6)
                }
                (Some(Header::Ip6), 8, 16) => return named("ip6 saddr", Kind::Ipv6, Header::Ip6),
                (Some(Header::Ip6), 24, 16) => return named("ip6 daddr", Kind::Ipv6, Header::Ip6),
                _ => {}
            }
        }
        PayloadBase::Transport => {
            let protocol = match known.transport {
                Some(6) => "tcp",
                Some(17) => "udp",
                _ => "th",
            };
            match (offset, len) {
                (0, 2) => {
                    return named(&format!("{protocol} sport"), Kind::Port, Header::Transport)
                }
                (2, 2) => {
                    return named(&format!("{protocol} dport"), Kind::Port, Header::Transport)
                }
                _ => {}
            }
        }
        _ => {}
    }
    let base_name = match base {
        PayloadBase::Link => "ll",
        PayloadBase::Network => "nh",
        PayloadBase::Transport => "th",
        PayloadBase::Inner => "ih",
        PayloadBase::Other(_) => "?",
    };
    (
        format!("@{base_name},{},{}", offset * 8, len * 8),
        Kind::Hex,
        None,
    )
}

fn verdict(v: &Verdict) -> Option<String> {
    Some(match v {
        Verdict::Drop => "drop".into(),
        Verdict::Accept => "accept".into(),
        Verdict::Continue => "continue".into(),
        Verdict::Return => "return".into(),
        Verdict::Jump(chain) => format!("jump {chain}"),
        Verdict::Goto(chain) => format!("goto {chain}"),
        Verdict::Break | Verdict::Other(_) => return None,
    })
}

fn operator(op: CmpOp) -> Option<&'static str> {
    Some(match op {
        CmpOp::Equal => "",
        CmpOp::NotEqual => "!= ",
        CmpOp::LessThan => "< ",
        CmpOp::LessThanEqual => "<= ",
        CmpOp::GreaterThan => "> ",
        CmpOp::GreatherThanEqual => ">= ",
        _ => return None,
    })
}

/// A statement of the rule: its text, the header it reads or writes, and the header a protocol
/// check stands for (the check goes if the next statement with a header reads that one).
struct Statement {
    text: String,
    header: Option<Header>,
    implies: Option<Header>,
}

fn undecoded_text(index: usize, count: usize, expr: &Expr, why: &str) -> String {
    let (name, attributes) = match expr {
        Expr::Unknown { name, attributes } => (
            name.clone(),
            attributes
                .iter()
                .map(|(kind, value)| format!("{kind}={}", hex(value)))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        other => (format!("{other:?}"), String::new()),
    };
    let attributes = if attributes.is_empty() {
        String::new()
    } else {
        format!(" {{ {attributes} }}")
    };
    format!(
        "expression {} of {count}, {name}{attributes}: {why}",
        index + 1
    )
}

/// One rule on one line, without indentation. `sets` are its table's sets (an anonymous set is
/// written out where the rule uses it).
pub fn rule(rule: &Rule, sets: &[Set], names: &dyn Names) -> String {
    let mut registers: HashMap<u32, Loaded> = HashMap::new();
    let mut statements: Vec<Statement> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut known = Known::default();
    let count = rule.exprs.len();
    for (index, expr) in rule.exprs.iter().enumerate() {
        let mut undecoded = |why: &str| notes.push(undecoded_text(index, count, expr, why));
        match expr {
            Expr::Meta { key, dreg } => match meta_field(*key) {
                Some((name, kind)) => {
                    registers.insert(
                        *dreg,
                        Loaded::Field {
                            name: name.to_string(),
                            kind,
                            header: None,
                        },
                    );
                }
                None => {
                    registers.remove(dreg);
                    undecoded("a meta key steadfast does not name");
                }
            },
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                let (name, kind, header) = payload_field(rule.family, known, *base, *offset, *len);
                registers.insert(*dreg, Loaded::Field { name, kind, header });
            }
            Expr::Immediate {
                dreg: VERDICT_REGISTER,
                data: Data::Verdict(v),
            } => match verdict(v) {
                Some(text) => statements.push(Statement {
                    text,
                    header: None,
                    implies: None,
                }),
                None => undecoded("a verdict nft has no word for"),
            },
            Expr::Immediate { dreg, data } => match data {
                Data::Value(bytes) => {
                    registers.insert(*dreg, Loaded::Value(bytes.clone()));
                }
                Data::Verdict(_) => undecoded("a verdict loaded into a data register"),
            },
            Expr::Cmp { sreg, op, data } => {
                let Some(Loaded::Field { name, kind, header }) = registers.get(sreg) else {
                    undecoded("a comparison of a register no load filled");
                    continue;
                };
                let Some(op_text) = operator(*op) else {
                    undecoded("an operator steadfast does not name");
                    continue;
                };
                let mut implies = None;
                if *op == CmpOp::Equal {
                    match (name.as_str(), &data[..]) {
                        ("meta nfproto", [2]) | ("meta protocol", [0x08, 0x00]) => {
                            known.network = Some(Header::Ip);
                            implies = Some(Header::Ip);
                        }
                        ("meta nfproto", [10]) | ("meta protocol", [0x86, 0xdd]) => {
                            known.network = Some(Header::Ip6);
                            implies = Some(Header::Ip6);
                        }
                        ("ether type", [0x08, 0x00]) => {
                            known.network = Some(Header::Ip);
                            implies = Some(Header::Ip);
                        }
                        ("ether type", [0x86, 0xdd]) => {
                            known.network = Some(Header::Ip6);
                            implies = Some(Header::Ip6);
                        }
                        ("meta iiftype", bytes) if bytes == ARPHRD_ETHER.to_ne_bytes() => {
                            implies = Some(Header::Link);
                        }
                        ("meta l4proto", [protocol])
                        | ("ip protocol", [protocol])
                        | ("ip6 nexthdr", [protocol]) => {
                            known.transport = Some(*protocol);
                            implies = Some(Header::Transport);
                        }
                        _ => {}
                    }
                }
                statements.push(Statement {
                    text: format!("{name} {op_text}{}", value(*kind, data, names)),
                    header: *header,
                    implies,
                });
            }
            Expr::Lookup {
                set,
                sreg,
                dreg,
                inverted,
            } => {
                let Some(Loaded::Field { name, kind, header }) = registers.get(sreg) else {
                    undecoded("a lookup of a register no load filled");
                    continue;
                };
                let found = sets.iter().find(|s| s.name == set.name);
                let elements = |with_data: bool| -> Option<String> {
                    let found = found?;
                    let mut parts = Vec::new();
                    for element in sorted_elements(found, *kind) {
                        let key = value(*kind, &element.key, names);
                        match (&element.data, with_data) {
                            (Some(Data::Verdict(v)), true) => {
                                parts.push(format!("{key} : {}", verdict(v)?))
                            }
                            (None, false) => parts.push(key),
                            _ => return None,
                        }
                    }
                    Some(format!("{{ {} }}", parts.join(", ")))
                };
                let inline = found.is_some_and(|s| s.is_anonymous());
                let not = if *inverted { "!= " } else { "" };
                let text = match dreg {
                    None if inline => match elements(false) {
                        Some(list) => format!("{name} {not}{list}"),
                        None => {
                            undecoded("an anonymous set with elements steadfast cannot read");
                            continue;
                        }
                    },
                    None => format!("{name} {not}@{}", set.name),
                    Some(VERDICT_REGISTER) if !*inverted && inline => match elements(true) {
                        Some(list) => format!("{name} vmap {list}"),
                        None => {
                            undecoded("a verdict map with elements steadfast cannot read");
                            continue;
                        }
                    },
                    Some(VERDICT_REGISTER) if !*inverted => format!("{name} vmap @{}", set.name),
                    Some(_) => {
                        undecoded("a map lookup into a data register");
                        continue;
                    }
                };
                statements.push(Statement {
                    text,
                    header: *header,
                    implies: None,
                });
            }
            Expr::Dynset {
                op,
                set,
                sreg_key,
                timeout_ms,
            } => {
                let Some(Loaded::Field { name, header, .. }) = registers.get(sreg_key) else {
                    undecoded("a set update from a register no load filled");
                    continue;
                };
                let op = match op {
                    DynsetOp::Add => "add",
                    DynsetOp::Update => "update",
                    DynsetOp::Delete => "delete",
                };
                let timeout =
                    timeout_ms.map_or(String::new(), |t| format!(" timeout {}", duration(t)));
                statements.push(Statement {
                    text: format!("{op} @{} {{ {name}{timeout} }}", set.name),
                    header: *header,
                    implies: None,
                });
            }
            Expr::Counter { packets, bytes } => statements.push(Statement {
                text: format!("counter packets {packets} bytes {bytes}"),
                header: None,
                implies: None,
            }),
            Expr::Objref { object_type, name } => {
                let kind = match *object_type {
                    OBJECT_COUNTER => "counter",
                    OBJECT_QUOTA => "quota",
                    _ => {
                        undecoded("a reference to an object type steadfast does not name");
                        continue;
                    }
                };
                statements.push(Statement {
                    text: format!("{kind} name \"{name}\""),
                    header: None,
                    implies: None,
                });
            }
            Expr::MetaSet { key, sreg } => {
                let (Some((name, kind)), Some(Loaded::Value(bytes))) =
                    (meta_field(*key), registers.get(sreg))
                else {
                    undecoded("a meta set steadfast cannot read");
                    continue;
                };
                statements.push(Statement {
                    text: format!("{name} set {}", value(kind, bytes, names)),
                    header: None,
                    implies: None,
                });
            }
            Expr::PayloadSet {
                base,
                offset,
                len,
                sreg,
            } => {
                let Some(Loaded::Value(bytes)) = registers.get(sreg) else {
                    undecoded("a payload write of a register no immediate filled");
                    continue;
                };
                let (name, kind, header) = payload_field(rule.family, known, *base, *offset, *len);
                statements.push(Statement {
                    text: format!("{name} set {}", value(kind, bytes, names)),
                    header,
                    implies: None,
                });
            }
            Expr::Fwd { sreg_dev } => {
                let Some(Loaded::Value(bytes)) = registers.get(sreg_dev) else {
                    undecoded("a forward to a device from a register no immediate filled");
                    continue;
                };
                statements.push(Statement {
                    text: format!("fwd to {}", value(Kind::Ifindex, bytes, names)),
                    header: None,
                    implies: None,
                });
            }
            Expr::Unknown { .. } => undecoded("an expression steadfast does not decode"),
        }
    }
    let mut kept = Vec::new();
    for (i, statement) in statements.iter().enumerate() {
        if let Some(implied) = statement.implies {
            let next_header = statements[i + 1..].iter().find_map(|s| s.header);
            if next_header == Some(implied) {
                continue;
            }
        }
        kept.push(statement.text.as_str());
    }
    let mut line = kept.join(" ");
    if !notes.is_empty() {
        if !line.is_empty() {
            line.push(' ');
        }
        write!(line, "# undecoded: {}", notes.join("; ")).unwrap();
    }
    line
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::Parseable;
    use netlink_packet_netfilter::nftables::{ChainMessage, RuleMessage};

    use super::*;
    use crate::nftables::build::{AddressField, PortMatch, RuleBuilder};
    use crate::nftables::model::{
        BaseChain, Chain, Counter, SetElement, SetRef, Table, SET_ANONYMOUS, SET_MAP,
    };

    /// An interface and a table owner this test knows by name.
    struct TestNames;

    impl Names for TestNames {
        fn interface(&self, index: u32) -> Option<String> {
            (index == 3).then(|| "sfp0".to_string())
        }

        fn owner(&self, port: u32) -> Option<String> {
            (port == 4242).then(|| "steadfast (pid 4242)".to_string())
        }
    }

    /// One netlink attribute: length and type (native order), the value, padding to 4 bytes.
    fn nla(kind: u16, nested: bool, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&(kind | if nested { 0x8000 } else { 0 }).to_ne_bytes());
        out.extend_from_slice(value);
        out.resize((out.len() + 3) & !3, 0);
        out
    }

    fn string(kind: u16, text: &str) -> Vec<u8> {
        nla(kind, false, format!("{text}\0").as_bytes())
    }

    fn be32(kind: u16, value: u32) -> Vec<u8> {
        nla(kind, false, &value.to_be_bytes())
    }

    fn be64(kind: u16, value: u64) -> Vec<u8> {
        nla(kind, false, &value.to_be_bytes())
    }

    /// An expression list element: NFTA_EXPR_NAME and NFTA_EXPR_DATA.
    fn expression(name: &str, data: &[Vec<u8>]) -> Vec<u8> {
        let mut element = string(1, name);
        element.extend(nla(2, true, &data.concat()));
        nla(1, true, &element)
    }

    /// A rule message as the kernel dumps it (table, chain, handle, expressions), decoded and
    /// rendered.
    fn render_dumped(family: Family, expressions: &[Vec<u8>], sets: &[Set]) -> String {
        let mut message = string(1, "t");
        message.extend(string(2, "c"));
        message.extend(be64(3, 7));
        message.extend(nla(4, true, &expressions.concat()));
        let parsed = RuleMessage::parse(&message[..]).expect("a valid rule message");
        let decoded = crate::nftables::decode::rule(family, &parsed.attributes).expect("decodes");
        assert_eq!(decoded.handle, Some(7));
        rule(&decoded, sets, &TestNames)
    }

    fn ports_set(name: &str, ports: &[u16]) -> Set {
        Set {
            family: Family::Ip,
            table: "t".into(),
            name: name.into(),
            flags: SET_ANONYMOUS | SET_CONSTANT,
            key_type: key_type::INET_SERVICE,
            key_len: 2,
            data_type: None,
            data_len: None,
            size: Some(ports.len() as u32),
            timeout_ms: None,
            id: None,
            handle: None,
            elements: ports
                .iter()
                .map(|p| SetElement::key(p.to_be_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn a_dumped_rule_with_an_anonymous_set_reads_as_nft_writes_it() {
        // `tcp dport { 80, 443 } drop`, attribute by attribute as nft 1.0.6 sent it.
        let expressions = [
            expression("meta", &[be32(2, 16), be32(1, 1)]),
            expression(
                "cmp",
                &[be32(1, 1), be32(2, 0), nla(3, true, &nla(1, false, &[6]))],
            ),
            expression("payload", &[be32(1, 1), be32(2, 2), be32(3, 2), be32(4, 2)]),
            expression("lookup", &[be32(2, 1), string(1, "__set0"), be32(4, 7)]),
            expression(
                "immediate",
                &[be32(1, 0), nla(2, true, &nla(2, true, &be32(1, 0)))],
            ),
        ];
        let text = render_dumped(Family::Ip, &expressions, &[ports_set("__set0", &[443, 80])]);
        assert_eq!(text, "tcp dport { 80, 443 } drop");
    }

    #[test]
    fn counters_objrefs_dynsets_and_forwards_read_back_from_their_raw_attributes() {
        let ip_daddr = || {
            [
                expression("meta", &[be32(2, 15), be32(1, 1)]),
                expression(
                    "cmp",
                    &[be32(1, 1), be32(2, 0), nla(3, true, &nla(1, false, &[2]))],
                ),
                expression(
                    "payload",
                    &[be32(1, 1), be32(2, 1), be32(3, 16), be32(4, 4)],
                ),
            ]
        };
        // The kernel lists a dynset's timeout in milliseconds, 0 for a delete; and pads u64s.
        let mut update = ip_daddr().to_vec();
        update.push(expression(
            "dynset",
            &[
                string(1, "lease"),
                be32(3, 1),
                be32(4, 1),
                be64(6, 60_000),
                nla(8, false, &[]),
                be32(9, 0),
            ],
        ));
        update.push(expression(
            "counter",
            &[be64(1, 1500), be64(2, 3), nla(3, false, &[])],
        ));
        assert_eq!(
            render_dumped(Family::Inet, &update, &[]),
            "update @lease { ip daddr timeout 1m } counter packets 3 bytes 1500"
        );
        let mut delete = ip_daddr().to_vec();
        delete.push(expression(
            "dynset",
            &[string(1, "lease"), be32(3, 2), be32(4, 1), be64(6, 0)],
        ));
        assert_eq!(
            render_dumped(Family::Inet, &delete, &[]),
            "delete @lease { ip daddr }"
        );
        let forward = [
            expression("objref", &[be32(1, 1), string(2, "guard_bounced")]),
            expression(
                "immediate",
                &[
                    be32(1, 1),
                    nla(2, true, &nla(1, false, &3u32.to_ne_bytes())),
                ],
            ),
            expression("fwd", &[be32(1, 1)]),
        ];
        assert_eq!(
            render_dumped(Family::Netdev, &forward, &[]),
            "counter name \"guard_bounced\" fwd to \"sfp0\""
        );
    }

    #[test]
    fn what_cannot_be_decoded_is_shown_in_a_comment_with_its_position_and_attributes() {
        let expressions = [
            expression("meta", &[be32(2, 3), be32(1, 1)]),
            expression(
                "cmp",
                &[
                    be32(1, 1),
                    be32(2, 1),
                    nla(3, true, &nla(1, false, &0x5f1du32.to_ne_bytes())),
                ],
            ),
            expression("quota", &[be64(1, 1000), be32(2, 0)]),
            // A comparison of a register nothing loaded: its statement cannot be named.
            expression(
                "cmp",
                &[be32(1, 9), be32(2, 0), nla(3, true, &nla(1, false, &[1]))],
            ),
            expression(
                "immediate",
                &[be32(1, 0), nla(2, true, &nla(2, true, &be32(1, 1)))],
            ),
        ];
        let text = render_dumped(Family::Inet, &expressions, &[]);
        assert!(
            text.starts_with("meta mark != 0x00005f1d accept # undecoded: "),
            "{text}"
        );
        assert!(
            text.contains("expression 3 of 5, quota { 1=0x00000000000003e8 2=0x00000000 }"),
            "{text}"
        );
        assert!(text.contains("expression 4 of 5"), "{text}");
    }

    fn guard_tables() -> Ruleset {
        let mac = [2, 0, 0, 0, 0, 2];
        let vip = Ipv4Addr::new(10, 9, 0, 100);
        let prerouting = RuleBuilder::new(Family::Ip)
            .iifname("sfp0")
            .ip_address(AddressField::Destination, CmpOp::Equal, vip)
            .tcp_destination_port(PortMatch::InSet(SetRef::named("__set0")))
            .ether_address(AddressField::Source, CmpOp::NotEqual, mac)
            .named_counter("guard_dropped")
            .verdict(Verdict::Drop)
            .build("steadfast_guard", "prerouting");
        let bounce = RuleBuilder::new(Family::Netdev)
            .ether_address(AddressField::Source, CmpOp::NotEqual, mac)
            .ether_type_ipv4()
            .ip_address(AddressField::Destination, CmpOp::Equal, vip)
            .tcp_destination_port(PortMatch::One(8080))
            .named_counter("guard_bounced")
            .set_ether_address(AddressField::Source, [2, 0, 0, 0, 0, 1])
            .set_ether_address(AddressField::Destination, mac)
            .forward_to(3)
            .build("steadfast_bounce", "ingress");
        let base = |hook, priority, device: Option<&str>| BaseChain {
            kind: "filter".into(),
            hook,
            priority,
            devices: device.map(str::to_string).into_iter().collect(),
            policy: Policy::Accept,
        };
        let counter = |family, table: &str, name: &str, packets| Counter {
            family,
            table: table.into(),
            name: name.into(),
            packets,
            bytes: packets * 60,
            handle: None,
        };
        let mut ports = ports_set("__set0", &[80, 443]);
        ports.table = "steadfast_guard".into();
        Ruleset {
            tables: vec![
                TableContents {
                    table: Table {
                        owner: Some(4242),
                        ..Table::owned(Family::Ip, "steadfast_guard")
                    },
                    counters: vec![counter(Family::Ip, "steadfast_guard", "guard_dropped", 2)],
                    other_objects: vec![],
                    sets: vec![ports],
                    chains: vec![ChainContents {
                        chain: Chain {
                            base: Some(base(0, -300, None)),
                            ..Chain::regular(Family::Ip, "steadfast_guard", "prerouting")
                        },
                        rules: vec![prerouting],
                    }],
                },
                TableContents {
                    table: Table::new(Family::Netdev, "steadfast_bounce"),
                    counters: vec![counter(
                        Family::Netdev,
                        "steadfast_bounce",
                        "guard_bounced",
                        5,
                    )],
                    other_objects: vec![],
                    sets: vec![],
                    chains: vec![ChainContents {
                        chain: Chain {
                            base: Some(base(0, -500, Some("sfp0"))),
                            ..Chain::regular(Family::Netdev, "steadfast_bounce", "ingress")
                        },
                        rules: vec![bounce],
                    }],
                },
            ],
        }
    }

    #[test]
    fn the_guard_tables_render_as_nft_lists_them() {
        let expected = "\
table ip steadfast_guard { # progname steadfast (pid 4242)
\tflags owner

\tcounter guard_dropped {
\t\tpackets 2 bytes 120
\t}

\tchain prerouting {
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tiifname \"sfp0\" ip daddr 10.9.0.100 tcp dport { 80, 443 } ether saddr != 02:00:00:00:00:02 counter name \"guard_dropped\" drop
\t}
}
table netdev steadfast_bounce {
\tcounter guard_bounced {
\t\tpackets 5 bytes 300
\t}

\tchain ingress {
\t\ttype filter hook ingress device \"sfp0\" priority -500; policy accept;
\t\tether saddr != 02:00:00:00:00:02 ip daddr 10.9.0.100 tcp dport 8080 counter name \"guard_bounced\" ether saddr set 02:00:00:00:00:01 ether daddr set 02:00:00:00:00:02 fwd to \"sfp0\"
\t}
}
";
        assert_eq!(ruleset(&guard_tables(), &TestNames), expected);
    }

    #[test]
    fn sets_maps_and_priorities_read_as_nft_writes_them() {
        let mut lease = ports_set("lease", &[]);
        lease.family = Family::Inet;
        lease.flags = SET_TIMEOUT | SET_EVAL;
        lease.key_type = key_type::IPV4_ADDR;
        lease.key_len = 4;
        lease.size = Some(65535);
        lease.elements = vec![SetElement {
            timeout_ms: Some(30_000),
            expires_ms: Some(29_992),
            ..SetElement::key(vec![10, 9, 0, 100])
        }];
        let map = Set {
            name: "__map0".into(),
            flags: SET_ANONYMOUS | SET_CONSTANT | SET_MAP,
            key_type: key_type::MARK,
            key_len: 4,
            data_type: Some(DATA_VERDICT),
            elements: vec![
                SetElement {
                    data: Some(Data::Verdict(Verdict::Jump("lease_1".into()))),
                    ..SetElement::key(0x5f1e_0001u32.to_ne_bytes().to_vec())
                },
                SetElement {
                    data: Some(Data::Verdict(Verdict::Jump("lease_end".into()))),
                    ..SetElement::key(0x5f1e_0000u32.to_ne_bytes().to_vec())
                },
            ],
            ..lease.clone()
        };
        let keeper = RuleBuilder::new(Family::Inet)
            .mark_vmap(SetRef::named("__map0"))
            .build("f", "lease_keeper");
        let live = RuleBuilder::new(Family::Arp)
            .arp_ip_address(
                AddressField::Destination,
                CmpOp::Equal,
                Ipv4Addr::new(10, 9, 0, 100),
            )
            .set_mark(0x5f1d)
            .build("l", "input");
        let table = TableContents {
            table: Table::new(Family::Inet, "f"),
            counters: vec![],
            other_objects: vec![],
            sets: vec![lease, map],
            chains: vec![ChainContents {
                chain: Chain::filter(Family::Inet, "f", "lease_keeper", Hook::Output, -20, None)
                    .unwrap(),
                rules: vec![keeper],
            }],
        };
        assert_eq!(
            super::table(&table, &NoNames),
            "\
table inet f {
\tset lease {
\t\ttype ipv4_addr
\t\tsize 65535
\t\tflags dynamic,timeout
\t\telements = { 10.9.0.100 timeout 30s expires 29s992ms }
\t}

\tchain lease_keeper {
\t\ttype filter hook output priority -20; policy accept;
\t\tmeta mark vmap { 0x5f1e0000 : jump lease_end, 0x5f1e0001 : jump lease_1 }
\t}
}
"
        );
        assert_eq!(
            rule(&live, &[], &NoNames),
            "arp daddr ip 10.9.0.100 meta mark set 0x00005f1d"
        );
        assert_eq!(priority(Family::Arp, Some(Hook::Input), -10), "filter - 10");
        assert_eq!(priority(Family::Bridge, Some(Hook::Forward), 0), "0");
        assert_eq!(priority(Family::Ip, Some(Hook::Output), -100), "-100");
        assert_eq!(
            priority(Family::Ip, Some(Hook::Prerouting), -95),
            "dstnat + 5"
        );
        assert_eq!(duration(60_000), "1m");
        assert_eq!(duration(4), "4ms");
        assert_eq!(duration(90_061_001), "1d1h1m1s1ms");
    }

    #[test]
    fn a_netdev_chain_on_several_devices_lists_them_all() {
        let hook = [
            be32(1, 0),
            be32(2, -500i32 as u32),
            nla(4, true, &[string(1, "a"), string(1, "b")].concat()),
        ]
        .concat();
        let message = [
            string(1, "t"),
            string(3, "c"),
            nla(4, true, &hook),
            be32(5, 1),
            string(7, "filter"),
        ]
        .concat();
        let parsed = ChainMessage::parse(&message[..]).expect("a valid chain message");
        let chain =
            crate::nftables::decode::chain(Family::Netdev, &parsed.attributes).expect("decodes");
        let contents = ChainContents {
            chain,
            rules: vec![],
        };
        assert_eq!(
            chain_block(&contents, &[], &NoNames),
            "\tchain c {\n\t\ttype filter hook ingress devices = { \"a\", \"b\" } priority -500; policy accept;\n\t}\n"
        );
    }

    #[test]
    fn an_owner_table_without_a_known_process_names_its_port() {
        let mut tables = guard_tables();
        tables.tables[0].table.owner = Some(77);
        let text = ruleset(&tables, &TestNames);
        assert!(
            text.starts_with("table ip steadfast_guard { # owner: netlink port 77\n"),
            "{text}"
        );
    }
}
