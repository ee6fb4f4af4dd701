//! The nf_tables objects Steadfast writes and reads back: tables, chains, sets, named counters
//! and rules. A rule is the kernel's own form, a list of expressions working on registers
//! ([`Expr`]); [`super::RuleBuilder`] writes them from nft's phrases, [`super::render`] reads
//! them back into nft's syntax.

pub use netlink_packet_netfilter::nftables::{MetaKey, Operator as CmpOp};

/// The register that holds a rule's verdict.
pub const VERDICT_REGISTER: u32 = 0;
/// The first 16-byte data register (NFT_REG_1), the one nft uses for every match.
pub const REG_1: u32 = 1;

/// `flags owner`: the kernel deletes the table when the netlink socket that made it closes.
pub const TABLE_OWNER: u32 = 0x2;
pub const TABLE_DORMANT: u32 = 0x1;
pub const TABLE_PERSIST: u32 = 0x4;

pub const SET_ANONYMOUS: u32 = 0x1;
pub const SET_CONSTANT: u32 = 0x2;
pub const SET_INTERVAL: u32 = 0x4;
pub const SET_MAP: u32 = 0x8;
pub const SET_TIMEOUT: u32 = 0x10;
/// `flags dynamic`: rules may add and update elements from the packet path.
pub const SET_EVAL: u32 = 0x20;
pub const SET_OBJECT: u32 = 0x40;

/// A set's data type when it maps to verdicts (NFT_DATA_VERDICT).
pub const DATA_VERDICT: u32 = 0xffff_ff00;

/// Lookup flag: match when the key is NOT in the set.
pub const LOOKUP_INVERTED: u32 = 0x1;

/// nft's key type numbers (they are nft's, the kernel only stores them): the ones Steadfast's
/// sets use and [`super::render`] names.
pub mod key_type {
    pub const IPV4_ADDR: u32 = 7;
    pub const IPV6_ADDR: u32 = 8;
    pub const ETHER_ADDR: u32 = 9;
    pub const INET_PROTOCOL: u32 = 12;
    pub const INET_SERVICE: u32 = 13;
    pub const MARK: u32 = 19;
    pub const IFINDEX: u32 = 20;
}

/// Named stateful object types (NFT_OBJECT_*).
pub const OBJECT_COUNTER: u32 = 1;
pub const OBJECT_QUOTA: u32 = 2;

/// An address family of nf_tables (NFPROTO_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Inet,
    Ip,
    Ip6,
    Arp,
    Bridge,
    Netdev,
    Other(u8),
}

impl Family {
    pub fn code(self) -> u8 {
        match self {
            Family::Inet => 1,
            Family::Ip => 2,
            Family::Arp => 3,
            Family::Netdev => 5,
            Family::Bridge => 7,
            Family::Ip6 => 10,
            Family::Other(code) => code,
        }
    }

    pub fn from_code(code: u8) -> Family {
        match code {
            1 => Family::Inet,
            2 => Family::Ip,
            3 => Family::Arp,
            5 => Family::Netdev,
            7 => Family::Bridge,
            10 => Family::Ip6,
            other => Family::Other(other),
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Family::Inet => f.write_str("inet"),
            Family::Ip => f.write_str("ip"),
            Family::Ip6 => f.write_str("ip6"),
            Family::Arp => f.write_str("arp"),
            Family::Bridge => f.write_str("bridge"),
            Family::Netdev => f.write_str("netdev"),
            Family::Other(code) => write!(f, "family{code}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub name: String,
    /// TABLE_* bits.
    pub flags: u32,
    /// The netlink port of the socket that owns the table (read back only).
    pub owner: Option<u32>,
    pub handle: Option<u64>,
}

impl Table {
    pub fn new(family: Family, name: &str) -> Table {
        Table {
            family,
            name: name.to_string(),
            flags: 0,
            owner: None,
            handle: None,
        }
    }

    /// A table the kernel deletes when the socket that creates it closes.
    pub fn owned(family: Family, name: &str) -> Table {
        Table {
            flags: TABLE_OWNER,
            ..Table::new(family, name)
        }
    }
}

/// Where a base chain hooks in. The kernel numbers hooks per family ([`Hook::number`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
    Ingress,
    Egress,
}

impl Hook {
    /// The kernel's hook number in `family`; `None` where the family has no such hook.
    pub fn number(self, family: Family) -> Option<u32> {
        match family {
            Family::Arp => match self {
                Hook::Input => Some(0),
                Hook::Output => Some(1),
                Hook::Forward => Some(2),
                _ => None,
            },
            Family::Netdev => match self {
                Hook::Ingress => Some(0),
                Hook::Egress => Some(1),
                _ => None,
            },
            _ => match self {
                Hook::Prerouting => Some(0),
                Hook::Input => Some(1),
                Hook::Forward => Some(2),
                Hook::Output => Some(3),
                Hook::Postrouting => Some(4),
                Hook::Ingress if family == Family::Inet => Some(5),
                _ => None,
            },
        }
    }

    pub fn from_number(family: Family, number: u32) -> Option<Hook> {
        [
            Hook::Prerouting,
            Hook::Input,
            Hook::Forward,
            Hook::Output,
            Hook::Postrouting,
            Hook::Ingress,
            Hook::Egress,
        ]
        .into_iter()
        .find(|hook| hook.number(family) == Some(number))
    }

    pub fn name(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }
}

/// What a base chain does with a packet no rule decided on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Accept,
    Drop,
}

/// The hook of a base chain: `type filter hook input priority 0; policy accept;`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseChain {
    /// `filter`, `nat` or `route`.
    pub kind: String,
    /// The kernel's hook number (see [`Hook::number`]): kept as read, a hook this module has
    /// no name for is still shown.
    pub hook: u32,
    pub priority: i32,
    /// The devices of a netdev chain.
    pub devices: Vec<String>,
    pub policy: Policy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub family: Family,
    pub table: String,
    pub name: String,
    /// `None` for a regular chain (reached by jumps only).
    pub base: Option<BaseChain>,
    pub handle: Option<u64>,
}

impl Chain {
    pub fn regular(family: Family, table: &str, name: &str) -> Chain {
        Chain {
            family,
            table: table.to_string(),
            name: name.to_string(),
            base: None,
            handle: None,
        }
    }

    /// A `filter` chain on `hook`; `None` if the family has no such hook.
    pub fn filter(
        family: Family,
        table: &str,
        name: &str,
        hook: Hook,
        priority: i32,
        device: Option<&str>,
    ) -> Option<Chain> {
        Some(Chain {
            base: Some(BaseChain {
                kind: "filter".to_string(),
                hook: hook.number(family)?,
                priority,
                devices: device.map(str::to_string).into_iter().collect(),
                policy: Policy::Accept,
            }),
            ..Chain::regular(family, table, name)
        })
    }
}

/// A reference to a set from a rule. A set made in the same transaction is found by its id
/// (an anonymous set's name is a template the kernel fills in).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetRef {
    pub name: String,
    pub id: Option<u32>,
}

impl SetRef {
    pub fn named(name: &str) -> SetRef {
        SetRef {
            name: name.to_string(),
            id: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    pub family: Family,
    pub table: String,
    pub name: String,
    /// SET_* bits.
    pub flags: u32,
    /// nft's key type ([`key_type`]).
    pub key_type: u32,
    pub key_len: u32,
    /// A map's data type ([`DATA_VERDICT`] for a verdict map) and length.
    pub data_type: Option<u32>,
    pub data_len: Option<u32>,
    /// The number of elements the set is sized for (`size N`).
    pub size: Option<u32>,
    /// The elements' default timeout, milliseconds.
    pub timeout_ms: Option<u64>,
    /// The transaction id a set created in a batch is known by.
    pub id: Option<u32>,
    pub handle: Option<u64>,
    /// Read back with the set (a batch adds elements with [`super::Batch::add_elements`]).
    pub elements: Vec<SetElement>,
}

impl Set {
    pub fn is_anonymous(&self) -> bool {
        self.flags & SET_ANONYMOUS != 0 || self.name.starts_with("__")
    }

    pub fn is_map(&self) -> bool {
        self.flags & SET_MAP != 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetElement {
    /// The key as the kernel holds it (a mark in host order, addresses and ports in network
    /// order).
    pub key: Vec<u8>,
    /// What a map maps the key to.
    pub data: Option<Data>,
    /// The element's timeout and what is left of it, milliseconds (written: an existing
    /// element's timeout and expiry are updated, on kernels that do so, 6.10 on).
    pub timeout_ms: Option<u64>,
    pub expires_ms: Option<u64>,
}

impl SetElement {
    pub fn key(key: Vec<u8>) -> SetElement {
        SetElement {
            key,
            data: None,
            timeout_ms: None,
            expires_ms: None,
        }
    }
}

/// A named counter (`counter NAME { }`), which rules count into with `counter name NAME` and
/// which keeps its count while the rules change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counter {
    pub family: Family,
    pub table: String,
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
    pub handle: Option<u64>,
}

/// A named stateful object of a type this module does not read (quota, limit, ...): listed so
/// that the dump leaves nothing out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtherObject {
    pub family: Family,
    pub table: String,
    pub name: String,
    pub object_type: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub family: Family,
    pub table: String,
    pub chain: String,
    pub exprs: Vec<Expr>,
    pub handle: Option<u64>,
}

/// A verdict: what happens to the packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Drop,
    Accept,
    Continue,
    Break,
    Return,
    Jump(String),
    Goto(String),
    /// A code this module has no name for (NF_QUEUE, NF_STOLEN, ...).
    Other(u32),
}

/// The data of an immediate, a comparison or a map element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    Value(Vec<u8>),
    Verdict(Verdict),
}

/// Where a payload offset counts from (NFT_PAYLOAD_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadBase {
    Link,
    Network,
    Transport,
    Inner,
    Other(u32),
}

impl PayloadBase {
    pub fn code(self) -> u32 {
        match self {
            PayloadBase::Link => 0,
            PayloadBase::Network => 1,
            PayloadBase::Transport => 2,
            PayloadBase::Inner => 3,
            PayloadBase::Other(code) => code,
        }
    }

    pub fn from_code(code: u32) -> PayloadBase {
        match code {
            0 => PayloadBase::Link,
            1 => PayloadBase::Network,
            2 => PayloadBase::Transport,
            3 => PayloadBase::Inner,
            other => PayloadBase::Other(other),
        }
    }
}

/// A dynamic set operation from the packet path (NFT_DYNSET_OP_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DynsetOp {
    Add,
    Update,
    Delete,
}

impl DynsetOp {
    pub fn code(self) -> u32 {
        match self {
            DynsetOp::Add => 0,
            DynsetOp::Update => 1,
            DynsetOp::Delete => 2,
        }
    }

    pub fn from_code(code: u32) -> Option<DynsetOp> {
        match code {
            0 => Some(DynsetOp::Add),
            1 => Some(DynsetOp::Update),
            2 => Some(DynsetOp::Delete),
            _ => None,
        }
    }
}

/// One nf_tables expression, as the kernel runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// Loads packet metadata into `dreg`.
    Meta { key: MetaKey, dreg: u32 },
    /// Sets packet metadata from `sreg`.
    MetaSet { key: MetaKey, sreg: u32 },
    /// Loads `len` bytes at `offset` from `base` into `dreg`.
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// Writes `len` bytes from `sreg` at `offset` from `base` (no checksum update).
    PayloadSet {
        base: PayloadBase,
        offset: u32,
        len: u32,
        sreg: u32,
    },
    /// Compares `sreg` with `data`: the rule stops here unless it holds.
    Cmp { sreg: u32, op: CmpOp, data: Vec<u8> },
    /// Looks `sreg` up in a set: a match (or, inverted, a miss) goes on; with `dreg`, a map's
    /// data is loaded there (the verdict register for a verdict map).
    Lookup {
        set: SetRef,
        sreg: u32,
        dreg: Option<u32>,
        inverted: bool,
    },
    /// Loads `data` into `dreg` (a verdict into the verdict register).
    Immediate { dreg: u32, data: Data },
    /// An anonymous counter of the rule.
    Counter { packets: u64, bytes: u64 },
    /// Counts into (or uses) a named object: `counter name "x"`.
    Objref { object_type: u32, name: String },
    /// Adds, updates or deletes the key in `sreg_key` from the packet path.
    Dynset {
        op: DynsetOp,
        set: SetRef,
        sreg_key: u32,
        timeout_ms: Option<u64>,
    },
    /// Sends the packet out of the interface whose index is in `sreg_dev` (netdev family).
    Fwd { sreg_dev: u32 },
    /// An expression this module does not decode, with its raw attributes (type, value).
    Unknown {
        name: String,
        attributes: Vec<(u16, Vec<u8>)>,
    },
}

/// What [`super::NftSocket::read_ruleset`] reads: tables whole, in the kernel's order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub tables: Vec<TableContents>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableContents {
    pub table: Table,
    pub counters: Vec<Counter>,
    pub other_objects: Vec<OtherObject>,
    /// Named and anonymous sets, with their elements.
    pub sets: Vec<Set>,
    pub chains: Vec<ChainContents>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainContents {
    pub chain: Chain,
    pub rules: Vec<Rule>,
}

impl Ruleset {
    pub fn table(&self, family: Family, name: &str) -> Option<&TableContents> {
        self.tables
            .iter()
            .find(|t| t.table.family == family && t.table.name == name)
    }
}

impl TableContents {
    pub fn chain(&self, name: &str) -> Option<&ChainContents> {
        self.chains.iter().find(|c| c.chain.name == name)
    }

    pub fn set(&self, name: &str) -> Option<&Set> {
        self.sets.iter().find(|s| s.name == name)
    }

    pub fn counter(&self, name: &str) -> Option<&Counter> {
        self.counters.iter().find(|c| c.name == name)
    }
}
