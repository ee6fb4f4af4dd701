//! The kernel's dump messages into the model. A message missing what identifies it (a name, a
//! table) is an error naming what was read; anything else this module has no field for is
//! ignored only where it does not change what the object does (handles, use counts, user
//! data), and rules keep every expression (see [`super::expr::decode`]).

use netlink_packet_core::DefaultNla;
use netlink_packet_netfilter::nftables::{
    ChainAttribute, Hook as WireHook, RuleAttribute, SetAttribute, SetDescription,
    SetElementAttribute, SetElementList, TableAttribute,
};

use super::batch::{
    NFTA_DEVICE_NAME, NFTA_OBJ_DATA, NFTA_OBJ_HANDLE, NFTA_OBJ_NAME, NFTA_OBJ_TABLE, NFTA_OBJ_TYPE,
};
use super::expr;
use super::model::{
    BaseChain, Chain, Counter, Family, OtherObject, Policy, Rule, Set, SetElement, Table,
    OBJECT_COUNTER,
};

// enum nft_counter_attributes, inside an object's data
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;

fn missing(what: &str, field: &str) -> String {
    format!("a {what} without its {field}")
}

pub(crate) fn table(family: Family, attributes: &[TableAttribute]) -> Result<Table, String> {
    let mut table = Table::new(family, "");
    let mut named = false;
    for attribute in attributes {
        match attribute {
            TableAttribute::Name(name) => {
                table.name = name.clone();
                named = true;
            }
            TableAttribute::Flags(flags) => table.flags = flags.bits(),
            TableAttribute::Owner(port) => table.owner = Some(*port),
            TableAttribute::Handle(handle) => table.handle = Some(*handle),
            _ => {}
        }
    }
    if !named {
        return Err(missing("table", "name"));
    }
    Ok(table)
}

pub(crate) fn chain(family: Family, attributes: &[ChainAttribute]) -> Result<Chain, String> {
    let (mut table, mut name, mut handle) = (None, None, None);
    let (mut hook, mut priority, mut device, mut policy, mut kind) =
        (None, None, None, Policy::Accept, None);
    let mut devices = Vec::new();
    for attribute in attributes {
        match attribute {
            ChainAttribute::Table(t) => table = Some(t.clone()),
            ChainAttribute::Name(n) => name = Some(n.clone()),
            ChainAttribute::Handle(h) => handle = Some(*h),
            ChainAttribute::Hook(parts) => {
                for part in parts {
                    match part {
                        WireHook::Number(number) => hook = Some(u32::from(*number)),
                        WireHook::Priority(p) => priority = Some(*p as i32),
                        WireHook::NetDeviceName(d) => device = Some(d.clone()),
                        // The kernel lists every device here, and a lone one as the device too.
                        WireHook::NetDevices(names) => {
                            for name in names {
                                let (kind, value) = expr::raw_attribute(name);
                                if kind == NFTA_DEVICE_NAME {
                                    devices.push(text(&value).unwrap_or_default());
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            ChainAttribute::Policy(0) => policy = Policy::Drop,
            ChainAttribute::Policy(_) => policy = Policy::Accept,
            ChainAttribute::Type(t) => kind = Some(t.clone()),
            _ => {}
        }
    }
    let name = name.ok_or_else(|| missing("chain", "name"))?;
    let table = table.ok_or_else(|| missing(&format!("chain {name}"), "table"))?;
    let base = match (hook, kind) {
        (Some(hook), Some(kind)) => Some(BaseChain {
            kind,
            hook,
            priority: priority.unwrap_or(0),
            devices: if devices.is_empty() {
                device.into_iter().collect()
            } else {
                devices
            },
            policy,
        }),
        _ => None,
    };
    Ok(Chain {
        family,
        table,
        name,
        base,
        handle,
    })
}

pub(crate) fn rule(family: Family, attributes: &[RuleAttribute]) -> Result<Rule, String> {
    let (mut table, mut chain, mut handle, mut exprs) = (None, None, None, Vec::new());
    for attribute in attributes {
        match attribute {
            RuleAttribute::Table(t) => table = Some(t.clone()),
            RuleAttribute::Chain(c) => chain = Some(c.clone()),
            RuleAttribute::Handle(h) => handle = Some(*h),
            RuleAttribute::Expressions(list) => exprs = list.iter().map(expr::decode).collect(),
            _ => {}
        }
    }
    Ok(Rule {
        family,
        table: table.ok_or_else(|| missing("rule", "table"))?,
        chain: chain.ok_or_else(|| missing("rule", "chain"))?,
        exprs,
        handle,
    })
}

pub(crate) fn set(family: Family, attributes: &[SetAttribute]) -> Result<Set, String> {
    let mut set = Set {
        family,
        table: String::new(),
        name: String::new(),
        flags: 0,
        key_type: 0,
        key_len: 0,
        data_type: None,
        data_len: None,
        size: None,
        timeout_ms: None,
        id: None,
        handle: None,
        elements: Vec::new(),
    };
    let (mut has_table, mut has_name) = (false, false);
    for attribute in attributes {
        match attribute {
            SetAttribute::Table(t) => {
                set.table = t.clone();
                has_table = true;
            }
            SetAttribute::Name(n) => {
                set.name = n.clone();
                has_name = true;
            }
            SetAttribute::Flags(f) => set.flags = f.bits(),
            SetAttribute::KeyType(t) => set.key_type = *t,
            SetAttribute::KeyLen(l) => set.key_len = *l,
            SetAttribute::DataType(t) => set.data_type = Some(*t),
            SetAttribute::DataLen(l) => set.data_len = Some(*l),
            SetAttribute::Description(parts) => {
                for part in parts {
                    if let SetDescription::Size(size) = part {
                        set.size = Some(*size);
                    }
                }
            }
            SetAttribute::Timeout(t) => set.timeout_ms = Some(*t),
            SetAttribute::Handle(h) => set.handle = Some(*h),
            _ => {}
        }
    }
    if !has_name {
        return Err(missing("set", "name"));
    }
    if !has_table {
        return Err(missing(&format!("set {}", set.name), "table"));
    }
    Ok(set)
}

/// The elements of a set-element message, with the set (table, name) they belong to.
pub(crate) fn elements(
    attributes: &[SetElementList],
) -> Result<(String, String, Vec<SetElement>), String> {
    let (mut table, mut set, mut elements) = (None, None, Vec::new());
    for attribute in attributes {
        match attribute {
            SetElementList::Table(t) => table = Some(t.clone()),
            SetElementList::Set(s) => set = Some(s.clone()),
            SetElementList::Elements(list) => {
                for item in list {
                    let netlink_packet_netfilter::nftables::ListAttribute::Element(parts) = item
                    else {
                        continue;
                    };
                    let mut element = SetElement::key(Vec::new());
                    for part in parts {
                        match part {
                            SetElementAttribute::Key(
                                netlink_packet_netfilter::nftables::DataAttribute::Value(key),
                            ) => element.key = key.clone(),
                            SetElementAttribute::Data(data) => {
                                element.data = Some(expr::decode_data(data).ok_or_else(|| {
                                    format!("an element's data this module cannot read: {data:?}")
                                })?)
                            }
                            SetElementAttribute::Timeout(t) => element.timeout_ms = Some(*t),
                            SetElementAttribute::Expiration(e) => element.expires_ms = Some(*e),
                            _ => {}
                        }
                    }
                    elements.push(element);
                }
            }
            _ => {}
        }
    }
    Ok((
        table.ok_or_else(|| missing("set element list", "table"))?,
        set.ok_or_else(|| missing("set element list", "set"))?,
        elements,
    ))
}

/// A named object: a counter, or another type listed by name and type.
pub(crate) enum Object {
    Counter(Counter),
    Other(OtherObject),
}

fn value(attributes: &[(u16, Vec<u8>)], kind: u16) -> Option<&[u8]> {
    attributes
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| &v[..])
}

fn text(bytes: &[u8]) -> Option<String> {
    String::from_utf8(bytes.split(|b| *b == 0).next()?.to_vec()).ok()
}

fn u64_be(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

pub(crate) fn object(family: Family, attributes: &[DefaultNla]) -> Result<Object, String> {
    let attributes: Vec<(u16, Vec<u8>)> = attributes.iter().map(expr::raw_attribute).collect();
    let name = value(&attributes, NFTA_OBJ_NAME)
        .and_then(text)
        .ok_or_else(|| missing("named object", "name"))?;
    let table = value(&attributes, NFTA_OBJ_TABLE)
        .and_then(text)
        .ok_or_else(|| missing(&format!("object {name}"), "table"))?;
    let object_type = value(&attributes, NFTA_OBJ_TYPE)
        .and_then(|v| Some(u32::from_be_bytes(v.try_into().ok()?)))
        .ok_or_else(|| missing(&format!("object {name}"), "type"))?;
    if object_type != OBJECT_COUNTER {
        return Ok(Object::Other(OtherObject {
            family,
            table,
            name,
            object_type,
        }));
    }
    let data = expr::parse_raw(value(&attributes, NFTA_OBJ_DATA).unwrap_or_default());
    let count = |kind| value(&data, kind).and_then(u64_be);
    Ok(Object::Counter(Counter {
        family,
        packets: count(NFTA_COUNTER_PACKETS)
            .ok_or_else(|| format!("counter {name} of table {family} {table} without packets"))?,
        bytes: count(NFTA_COUNTER_BYTES).unwrap_or(0),
        handle: value(&attributes, NFTA_OBJ_HANDLE).and_then(u64_be),
        table,
        name,
    }))
}
