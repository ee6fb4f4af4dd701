//! A transaction: the changes [`super::NftSocket::apply`] sends as one netlink batch, which the
//! kernel applies whole or not at all.

use netlink_packet_core::DefaultNla;
use netlink_packet_netfilter::nftables::ListAttribute;
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, Hook as WireHook, HookNumber, NfTablesMessage, RuleAttribute,
    RuleMessage, SetAttribute, SetDescription, SetElementAttribute, SetElementList,
    SetElementMessage, SetFlags, SetMessage, TableAttribute, TableFlags, TableMessage,
};

use super::expr;
use super::model::{
    key_type, Chain, Counter, Data, Family, Policy, Rule, Set, SetElement, SetRef, Table,
    DATA_VERDICT, OBJECT_COUNTER, SET_ANONYMOUS, SET_CONSTANT, SET_MAP,
};

// enum nft_object_attributes
pub(crate) const NFTA_OBJ_TABLE: u16 = 1;
pub(crate) const NFTA_OBJ_NAME: u16 = 2;
pub(crate) const NFTA_OBJ_TYPE: u16 = 3;
pub(crate) const NFTA_OBJ_DATA: u16 = 4;
pub(crate) const NFTA_OBJ_HANDLE: u16 = 6;
/// enum nft_devices_attributes: a device of a netdev chain's NFTA_HOOK_DEVS.
pub(crate) const NFTA_DEVICE_NAME: u16 = 1;

const NLM_F_CREATE: u16 = netlink_packet_core::NLM_F_CREATE;
const NLM_F_APPEND: u16 = netlink_packet_core::NLM_F_APPEND;

/// One change of a batch.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    AddTable(Table),
    DeleteTable {
        family: Family,
        name: String,
    },
    AddChain(Chain),
    FlushChain {
        family: Family,
        table: String,
        chain: String,
    },
    AddSet(Set),
    AddElements {
        family: Family,
        table: String,
        set: SetRef,
        elements: Vec<SetElement>,
    },
    AddCounter(Counter),
    AddRule {
        rule: Rule,
        number: usize,
    },
}

impl Op {
    /// What the change does, for an error the kernel reports about it.
    pub(crate) fn describe(&self) -> String {
        match self {
            Op::AddTable(t) => format!("adding table {} {}", t.family, t.name),
            Op::DeleteTable { family, name } => format!("deleting table {family} {name}"),
            Op::AddChain(c) => format!("adding chain {} {} {}", c.family, c.table, c.name),
            Op::FlushChain {
                family,
                table,
                chain,
            } => format!("flushing chain {family} {table} {chain}"),
            Op::AddSet(s) => format!("adding set {} to table {} {}", s.name, s.family, s.table),
            Op::AddElements {
                family,
                table,
                set,
                elements,
            } => format!(
                "adding {} elements to set {} of table {family} {table}",
                elements.len(),
                set.name
            ),
            Op::AddCounter(c) => format!(
                "adding counter {} to table {} {}",
                c.name, c.family, c.table
            ),
            Op::AddRule { rule, number } => format!(
                "adding rule {number} to chain {} {} {}",
                rule.family, rule.table, rule.chain
            ),
        }
    }

    pub(crate) fn family(&self) -> Family {
        match self {
            Op::AddTable(t) => t.family,
            Op::AddChain(c) => c.family,
            Op::AddSet(s) => s.family,
            Op::AddCounter(c) => c.family,
            Op::AddRule { rule, .. } => rule.family,
            Op::DeleteTable { family, .. }
            | Op::FlushChain { family, .. }
            | Op::AddElements { family, .. } => *family,
        }
    }

    /// The message and the netlink flags it goes with (besides REQUEST and ACK).
    pub(crate) fn encode(&self) -> (NfTablesMessage, u16) {
        match self {
            Op::AddTable(table) => (
                NfTablesMessage::NewTable(TableMessage {
                    attributes: vec![
                        TableAttribute::Name(table.name.clone()),
                        TableAttribute::Flags(TableFlags::from_bits_retain(table.flags)),
                    ],
                }),
                NLM_F_CREATE,
            ),
            Op::DeleteTable { name, .. } => (
                NfTablesMessage::DeleteTable(TableMessage {
                    attributes: vec![TableAttribute::Name(name.clone())],
                }),
                0,
            ),
            Op::AddChain(chain) => {
                let mut attributes = vec![
                    ChainAttribute::Table(chain.table.clone()),
                    ChainAttribute::Name(chain.name.clone()),
                ];
                if let Some(base) = &chain.base {
                    let mut hook = vec![
                        WireHook::Number(HookNumber::Other(base.hook)),
                        WireHook::Priority(base.priority as u32),
                    ];
                    match &base.devices[..] {
                        [] => {}
                        [device] => hook.push(WireHook::NetDeviceName(device.clone())),
                        devices => hook.push(WireHook::NetDevices(
                            devices
                                .iter()
                                .map(|d| DefaultNla::new(NFTA_DEVICE_NAME, nul_terminated(d)))
                                .collect(),
                        )),
                    }
                    attributes.push(ChainAttribute::Hook(hook));
                    attributes.push(ChainAttribute::Policy(match base.policy {
                        Policy::Drop => 0,
                        Policy::Accept => 1,
                    }));
                    attributes.push(ChainAttribute::Type(base.kind.clone()));
                }
                (
                    NfTablesMessage::NewChain(ChainMessage { attributes }),
                    NLM_F_CREATE,
                )
            }
            Op::FlushChain { table, chain, .. } => (
                NfTablesMessage::DeleteRule(RuleMessage {
                    attributes: vec![
                        RuleAttribute::Table(table.clone()),
                        RuleAttribute::Chain(chain.clone()),
                    ],
                }),
                0,
            ),
            Op::AddSet(set) => {
                let mut attributes = vec![
                    SetAttribute::Table(set.table.clone()),
                    SetAttribute::Name(set.name.clone()),
                    SetAttribute::Flags(SetFlags::from_bits_retain(set.flags)),
                    SetAttribute::KeyType(set.key_type),
                    SetAttribute::KeyLen(set.key_len),
                ];
                if let Some(data_type) = set.data_type {
                    attributes.push(SetAttribute::DataType(data_type));
                    attributes.push(SetAttribute::DataLen(set.data_len.unwrap_or(0)));
                }
                if let Some(id) = set.id {
                    attributes.push(SetAttribute::Id(id));
                }
                if let Some(size) = set.size {
                    attributes.push(SetAttribute::Description(vec![SetDescription::Size(size)]));
                }
                if let Some(timeout) = set.timeout_ms {
                    attributes.push(SetAttribute::Timeout(timeout));
                }
                attributes.push(SetAttribute::UserData(set_user_data(set.key_type)));
                (
                    NfTablesMessage::NewSet(SetMessage { attributes }),
                    NLM_F_CREATE,
                )
            }
            Op::AddElements {
                table,
                set,
                elements,
                ..
            } => {
                let mut attributes = vec![
                    SetElementList::Table(table.clone()),
                    SetElementList::Set(set.name.clone()),
                ];
                if let Some(id) = set.id {
                    attributes.push(SetElementList::SetId(id));
                }
                attributes.push(SetElementList::Elements(
                    elements.iter().map(encode_element).collect(),
                ));
                (
                    NfTablesMessage::NewSetElement(SetElementMessage { attributes }),
                    NLM_F_CREATE,
                )
            }
            Op::AddCounter(counter) => (
                NfTablesMessage::NewObject(vec![
                    DefaultNla::new(NFTA_OBJ_TABLE, nul_terminated(&counter.table)),
                    DefaultNla::new(NFTA_OBJ_NAME, nul_terminated(&counter.name)),
                    DefaultNla::new(NFTA_OBJ_TYPE, OBJECT_COUNTER.to_be_bytes().to_vec()),
                    // The kernel wants the data attribute; an empty one starts at zero.
                    DefaultNla::new(NFTA_OBJ_DATA | netlink_packet_core::NLA_F_NESTED, vec![]),
                ]),
                NLM_F_CREATE,
            ),
            Op::AddRule { rule, .. } => (
                NfTablesMessage::NewRule(RuleMessage {
                    attributes: vec![
                        RuleAttribute::Table(rule.table.clone()),
                        RuleAttribute::Chain(rule.chain.clone()),
                        RuleAttribute::Expressions(rule.exprs.iter().map(expr::encode).collect()),
                    ],
                }),
                NLM_F_CREATE | NLM_F_APPEND,
            ),
        }
    }
}

/// What nft keeps in a set's user data for its own listing: the byte order of the keys (a
/// mark is in host order). Without it `nft list ruleset` shows a mark map's keys byte-swapped;
/// the kernel ignores it.
fn set_user_data(key_type: u32) -> Vec<u8> {
    const NFTNL_UDATA_SET_KEYBYTEORDER: u8 = 0;
    const BYTEORDER_HOST_ENDIAN: u32 = 1;
    const BYTEORDER_BIG_ENDIAN: u32 = 2;
    let order = if key_type == key_type::MARK {
        BYTEORDER_HOST_ENDIAN
    } else {
        BYTEORDER_BIG_ENDIAN
    };
    let mut data = vec![NFTNL_UDATA_SET_KEYBYTEORDER, 4];
    data.extend_from_slice(&order.to_ne_bytes());
    data
}

pub(crate) fn nul_terminated(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

fn encode_element(element: &SetElement) -> ListAttribute<SetElementAttribute> {
    let mut attributes = vec![SetElementAttribute::Key(
        netlink_packet_netfilter::nftables::DataAttribute::Value(element.key.clone()),
    )];
    if let Some(data) = &element.data {
        attributes.push(SetElementAttribute::Data(expr::encode_data(data)));
    }
    if let Some(timeout) = element.timeout_ms {
        attributes.push(SetElementAttribute::Timeout(timeout));
    }
    if let Some(expires) = element.expires_ms {
        attributes.push(SetElementAttribute::Expiration(expires));
    }
    ListAttribute::Element(attributes)
}

/// The changes of one transaction, in order.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub(crate) ops: Vec<Op>,
    next_set_id: u32,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// `add table` (nothing happens if it exists, flags aside).
    pub fn add_table(&mut self, table: Table) -> &mut Self {
        self.ops.push(Op::AddTable(table));
        self
    }

    /// `delete table` (an error if it does not exist).
    pub fn delete_table(&mut self, family: Family, name: &str) -> &mut Self {
        self.ops.push(Op::DeleteTable {
            family,
            name: name.to_string(),
        });
        self
    }

    /// `table X; delete table X`: removes the table whether or not it exists, so that what
    /// follows in the batch starts from nothing.
    pub fn remove_table(&mut self, family: Family, name: &str) -> &mut Self {
        self.add_table(Table::new(family, name));
        self.delete_table(family, name)
    }

    pub fn add_chain(&mut self, chain: Chain) -> &mut Self {
        self.ops.push(Op::AddChain(chain));
        self
    }

    /// `flush chain`: removes the chain's rules.
    pub fn flush_chain(&mut self, family: Family, table: &str, chain: &str) -> &mut Self {
        self.ops.push(Op::FlushChain {
            family,
            table: table.to_string(),
            chain: chain.to_string(),
        });
        self
    }

    fn next_id(&mut self) -> u32 {
        self.next_set_id += 1;
        self.next_set_id
    }

    /// Adds a named set; the reference carries its transaction id, for rules of this batch.
    pub fn add_set(&mut self, mut set: Set) -> SetRef {
        let id = self.next_id();
        set.id = Some(id);
        let reference = SetRef {
            name: set.name.clone(),
            id: Some(id),
        };
        self.ops.push(Op::AddSet(set));
        reference
    }

    fn add_constant_set(&mut self, set: Set, elements: Vec<SetElement>) -> SetRef {
        let (family, table) = (set.family, set.table.clone());
        let reference = self.add_set(set);
        self.ops.push(Op::AddElements {
            family,
            table,
            set: reference.clone(),
            elements,
        });
        reference
    }

    /// nft's `{ K1, K2, ... }` in a rule: an anonymous constant set that goes with the rule
    /// using it.
    pub fn add_anonymous_set(
        &mut self,
        family: Family,
        table: &str,
        key_type: u32,
        keys: Vec<Vec<u8>>,
    ) -> SetRef {
        let key_len = keys.first().map_or(0, |k| k.len() as u32);
        let set = Set {
            family,
            table: table.to_string(),
            name: "__set%d".to_string(),
            flags: SET_ANONYMOUS | SET_CONSTANT,
            key_type,
            key_len,
            data_type: None,
            data_len: None,
            size: Some(keys.len() as u32),
            timeout_ms: None,
            id: None,
            handle: None,
            elements: Vec::new(),
        };
        let elements = keys.into_iter().map(SetElement::key).collect();
        self.add_constant_set(set, elements)
    }

    /// nft's `meta mark vmap { MARK : VERDICT, ... }`: an anonymous verdict map keyed by mark.
    pub fn add_mark_verdict_map(
        &mut self,
        family: Family,
        table: &str,
        entries: Vec<(u32, super::model::Verdict)>,
    ) -> SetRef {
        let set = Set {
            family,
            table: table.to_string(),
            name: "__map%d".to_string(),
            flags: SET_ANONYMOUS | SET_CONSTANT | SET_MAP,
            key_type: key_type::MARK,
            key_len: 4,
            data_type: Some(DATA_VERDICT),
            data_len: Some(0),
            size: Some(entries.len() as u32),
            timeout_ms: None,
            id: None,
            handle: None,
            elements: Vec::new(),
        };
        let elements = entries
            .into_iter()
            .map(|(mark, verdict)| SetElement {
                data: Some(Data::Verdict(verdict)),
                ..SetElement::key(mark.to_ne_bytes().to_vec())
            })
            .collect();
        self.add_constant_set(set, elements)
    }

    /// `add element`: into a set of this batch or one the kernel has.
    pub fn add_elements(
        &mut self,
        family: Family,
        table: &str,
        set: SetRef,
        elements: Vec<SetElement>,
    ) -> &mut Self {
        self.ops.push(Op::AddElements {
            family,
            table: table.to_string(),
            set,
            elements,
        });
        self
    }

    /// `counter NAME { }`
    pub fn add_counter(&mut self, family: Family, table: &str, name: &str) -> &mut Self {
        self.ops.push(Op::AddCounter(Counter {
            family,
            table: table.to_string(),
            name: name.to_string(),
            packets: 0,
            bytes: 0,
            handle: None,
        }));
        self
    }

    /// `add rule` (appended to its chain).
    pub fn add_rule(&mut self, rule: Rule) -> &mut Self {
        let number = 1 + self
            .ops
            .iter()
            .filter(|op| {
                matches!(op, Op::AddRule { rule: r, .. }
                    if r.family == rule.family && r.table == rule.table && r.chain == rule.chain)
            })
            .count();
        self.ops.push(Op::AddRule { rule, number });
        self
    }
}
