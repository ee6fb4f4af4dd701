//! [`Expr`] to and from netlink attributes. meta, payload, cmp, lookup and immediate go
//! through netlink-packet-netfilter's types; counter, objref, dynset and fwd it leaves as raw
//! attributes (`Expressions::Other`), so their attributes are written and read here, from the
//! numbers of the kernel's uapi `linux/netfilter/nf_tables.h`.

use netlink_packet_core::{DefaultNla, Emitable, NlaBuffer, Parseable, NLA_F_NESTED};
use netlink_packet_netfilter::nftables::{
    Cmp, DataAttribute, ExpressionAttribute, Expressions, Immediate, ListAttribute, Lookup, Meta,
    Payload, Register, Verdict as WireVerdict, VerdictAttribute,
};

use super::model::{Data, DynsetOp, Expr, PayloadBase, SetRef, Verdict, LOOKUP_INVERTED};

// enum nft_counter_attributes
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFTA_COUNTER_PAD: u16 = 3;
// enum nft_objref_attributes
const NFTA_OBJREF_IMM_TYPE: u16 = 1;
const NFTA_OBJREF_IMM_NAME: u16 = 2;
// enum nft_dynset_attributes
const NFTA_DYNSET_SET_NAME: u16 = 1;
const NFTA_DYNSET_SET_ID: u16 = 2;
const NFTA_DYNSET_OP: u16 = 3;
const NFTA_DYNSET_SREG_KEY: u16 = 4;
const NFTA_DYNSET_TIMEOUT: u16 = 6;
const NFTA_DYNSET_PAD: u16 = 8;
const NFTA_DYNSET_FLAGS: u16 = 9;
// enum nft_fwd_attributes
const NFTA_FWD_SREG_DEV: u16 = 1;
// enum nft_verdicts and the netfilter verdicts they share their numbers with
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;

fn string_value(text: &str) -> Vec<u8> {
    let mut value = text.as_bytes().to_vec();
    value.push(0);
    value
}

fn u32_attribute(kind: u16, value: u32) -> DefaultNla {
    DefaultNla::new(kind, value.to_be_bytes().to_vec())
}

fn u64_attribute(kind: u16, value: u64) -> DefaultNla {
    DefaultNla::new(kind, value.to_be_bytes().to_vec())
}

fn other(name: &str, attributes: Vec<DefaultNla>) -> Expressions {
    Expressions::Other {
        expression_type: name.to_string(),
        attributes,
    }
}

pub(crate) fn encode_verdict(verdict: &Verdict) -> Vec<VerdictAttribute> {
    let code = |code| vec![VerdictAttribute::Code(code)];
    match verdict {
        Verdict::Drop => code(WireVerdict::Other(NF_DROP)),
        Verdict::Accept => code(WireVerdict::Other(NF_ACCEPT)),
        Verdict::Continue => code(WireVerdict::Continue),
        Verdict::Break => code(WireVerdict::Break),
        Verdict::Return => code(WireVerdict::Return),
        Verdict::Jump(chain) => vec![
            VerdictAttribute::Code(WireVerdict::Jump),
            VerdictAttribute::Chain(chain.clone()),
        ],
        Verdict::Goto(chain) => vec![
            VerdictAttribute::Code(WireVerdict::Goto),
            VerdictAttribute::Chain(chain.clone()),
        ],
        Verdict::Other(other) => code(WireVerdict::Other(*other)),
    }
}

pub(crate) fn encode_data(data: &Data) -> DataAttribute {
    match data {
        Data::Value(bytes) => DataAttribute::Value(bytes.clone()),
        Data::Verdict(verdict) => DataAttribute::Verdict(encode_verdict(verdict)),
    }
}

/// The expression as the list element a rule's NFTA_RULE_EXPRESSIONS holds.
pub(crate) fn encode(expr: &Expr) -> ListAttribute<ExpressionAttribute> {
    let register = |r: u32| Register::from(r);
    let expressions = match expr {
        Expr::Meta { key, dreg } => Expressions::Meta(vec![
            Meta::Key(*key),
            Meta::DestinationRegister(register(*dreg)),
        ]),
        Expr::MetaSet { key, sreg } => {
            Expressions::Meta(vec![Meta::Key(*key), Meta::SourceRegister(register(*sreg))])
        }
        Expr::Payload {
            base,
            offset,
            len,
            dreg,
        } => Expressions::Payload(vec![
            Payload::DestinationRegister(register(*dreg)),
            Payload::Base(base.code()),
            Payload::Offset(*offset),
            Payload::Len(*len),
        ]),
        Expr::PayloadSet {
            base,
            offset,
            len,
            sreg,
        } => Expressions::Payload(vec![
            Payload::SourceRegister(register(*sreg)),
            Payload::Base(base.code()),
            Payload::Offset(*offset),
            Payload::Len(*len),
            Payload::CsumType(netlink_packet_netfilter::nftables::ChecksumType::None),
            Payload::CsumOffset(0),
            Payload::CsumFlags(Default::default()),
        ]),
        Expr::Cmp { sreg, op, data } => Expressions::Cmp(vec![
            Cmp::SourceRegister(register(*sreg)),
            Cmp::Op(*op),
            Cmp::Data(DataAttribute::Value(data.clone())),
        ]),
        Expr::Lookup {
            set,
            sreg,
            dreg,
            inverted,
        } => {
            let mut attributes = vec![
                Lookup::SourceRegister(register(*sreg)),
                Lookup::Set(set.name.clone()),
            ];
            if let Some(id) = set.id {
                attributes.push(Lookup::SetId(id));
            }
            if let Some(dreg) = dreg {
                attributes.push(Lookup::DestinationRegister(register(*dreg)));
            }
            if *inverted {
                attributes.push(Lookup::Flags(LOOKUP_INVERTED));
            }
            Expressions::Lookup(attributes)
        }
        Expr::Immediate { dreg, data } => Expressions::Immediate(vec![
            Immediate::DestinationRegister(register(*dreg)),
            Immediate::Data(encode_data(data)),
        ]),
        Expr::Counter { packets, bytes } => {
            let mut attributes = Vec::new();
            if *packets != 0 || *bytes != 0 {
                attributes.push(u64_attribute(NFTA_COUNTER_BYTES, *bytes));
                attributes.push(u64_attribute(NFTA_COUNTER_PACKETS, *packets));
            }
            other("counter", attributes)
        }
        Expr::Objref { object_type, name } => other(
            "objref",
            vec![
                u32_attribute(NFTA_OBJREF_IMM_TYPE, *object_type),
                DefaultNla::new(NFTA_OBJREF_IMM_NAME, string_value(name)),
            ],
        ),
        Expr::Dynset {
            op,
            set,
            sreg_key,
            timeout_ms,
        } => {
            let mut attributes = vec![
                u32_attribute(NFTA_DYNSET_SREG_KEY, *sreg_key),
                u32_attribute(NFTA_DYNSET_OP, op.code()),
                DefaultNla::new(NFTA_DYNSET_SET_NAME, string_value(&set.name)),
            ];
            if let Some(timeout) = timeout_ms {
                attributes.push(u64_attribute(NFTA_DYNSET_TIMEOUT, *timeout));
            }
            if let Some(id) = set.id {
                attributes.push(u32_attribute(NFTA_DYNSET_SET_ID, id));
            }
            other("dynset", attributes)
        }
        Expr::Fwd { sreg_dev } => other("fwd", vec![u32_attribute(NFTA_FWD_SREG_DEV, *sreg_dev)]),
        Expr::Unknown { name, attributes } => other(
            name,
            attributes
                .iter()
                .map(|(kind, value)| DefaultNla::new(*kind, value.clone()))
                .collect(),
        ),
    };
    expressions.into()
}

pub(crate) fn decode_verdict(attributes: &[VerdictAttribute]) -> Option<Verdict> {
    let mut code = None;
    let mut chain = None;
    for attribute in attributes {
        match attribute {
            VerdictAttribute::Code(c) => code = Some(u32::from(*c)),
            VerdictAttribute::Chain(name) => chain = Some(name.clone()),
            _ => return None,
        }
    }
    Some(match (WireVerdict::from(code?), chain) {
        (WireVerdict::Jump, Some(chain)) => Verdict::Jump(chain),
        (WireVerdict::Goto, Some(chain)) => Verdict::Goto(chain),
        (_, Some(_)) => return None,
        (WireVerdict::Continue, None) => Verdict::Continue,
        (WireVerdict::Break, None) => Verdict::Break,
        (WireVerdict::Return, None) => Verdict::Return,
        (WireVerdict::Other(NF_DROP), None) => Verdict::Drop,
        (WireVerdict::Other(NF_ACCEPT), None) => Verdict::Accept,
        (code, None) => Verdict::Other(u32::from(code)),
    })
}

pub(crate) fn decode_data(data: &DataAttribute) -> Option<Data> {
    match data {
        DataAttribute::Value(bytes) => Some(Data::Value(bytes.clone())),
        DataAttribute::Verdict(attributes) => decode_verdict(attributes).map(Data::Verdict),
        _ => None,
    }
}

/// Any attribute of the crate's types as (type, value), for an expression shown undecoded.
pub(crate) fn raw_attribute<T: Emitable>(attribute: &T) -> (u16, Vec<u8>) {
    let mut buffer = vec![0u8; attribute.buffer_len()];
    attribute.emit(&mut buffer);
    let nla = NlaBuffer::new(&buffer[..]);
    let value_len = (nla.length() as usize)
        .saturating_sub(4)
        .min(buffer.len() - 4);
    (nla.kind(), buffer[4..4 + value_len].to_vec())
}

fn unknown<T: Emitable>(name: &str, attributes: &[T]) -> Expr {
    Expr::Unknown {
        name: name.to_string(),
        attributes: attributes.iter().map(raw_attribute).collect(),
    }
}

fn u32_of(value: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(value.try_into().ok()?))
}

fn u64_of(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.try_into().ok()?))
}

fn string_of(value: &[u8]) -> Option<String> {
    let text = value.split(|b| *b == 0).next()?;
    String::from_utf8(text.to_vec()).ok()
}

/// Attributes that carry nothing (64-bit alignment padding).
fn is_padding(name: &str, kind: u16) -> bool {
    matches!(
        (name, kind),
        ("counter", NFTA_COUNTER_PAD) | ("dynset", NFTA_DYNSET_PAD)
    )
}

fn decode_other(name: &str, attributes: &[DefaultNla]) -> Option<Expr> {
    let raw: Vec<(u16, Vec<u8>)> = attributes
        .iter()
        .map(raw_attribute)
        .map(|(kind, value)| (kind & !NLA_F_NESTED, value))
        .filter(|(kind, _)| !is_padding(name, *kind))
        .collect();
    let find = |kind: u16| raw.iter().find(|(k, _)| *k == kind).map(|(_, v)| &v[..]);
    let only = |known: &[u16]| raw.iter().all(|(k, _)| known.contains(k));
    match name {
        "counter" if only(&[NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS]) => Some(Expr::Counter {
            packets: find(NFTA_COUNTER_PACKETS).map_or(Some(0), u64_of)?,
            bytes: find(NFTA_COUNTER_BYTES).map_or(Some(0), u64_of)?,
        }),
        "objref" if only(&[NFTA_OBJREF_IMM_TYPE, NFTA_OBJREF_IMM_NAME]) => Some(Expr::Objref {
            object_type: u32_of(find(NFTA_OBJREF_IMM_TYPE)?)?,
            name: string_of(find(NFTA_OBJREF_IMM_NAME)?)?,
        }),
        "dynset"
            if only(&[
                NFTA_DYNSET_SET_NAME,
                NFTA_DYNSET_SET_ID,
                NFTA_DYNSET_OP,
                NFTA_DYNSET_SREG_KEY,
                NFTA_DYNSET_TIMEOUT,
                NFTA_DYNSET_FLAGS,
            ]) =>
        {
            // Flags other than none (an inverted dynset, expressions on the element) are not
            // shown by this module: such a dynset stays undecoded.
            if find(NFTA_DYNSET_FLAGS).map_or(Some(0), u32_of)? != 0 {
                return None;
            }
            let op = DynsetOp::from_code(u32_of(find(NFTA_DYNSET_OP)?)?)?;
            let timeout = match find(NFTA_DYNSET_TIMEOUT) {
                Some(value) => Some(u64_of(value)?),
                None => None,
            };
            Some(Expr::Dynset {
                op,
                set: SetRef {
                    name: string_of(find(NFTA_DYNSET_SET_NAME)?)?,
                    id: match find(NFTA_DYNSET_SET_ID) {
                        Some(value) => Some(u32_of(value)?),
                        None => None,
                    },
                },
                sreg_key: u32_of(find(NFTA_DYNSET_SREG_KEY)?)?,
                // The kernel reports 0 where the rule gives none (a delete).
                timeout_ms: timeout.filter(|t| *t != 0),
            })
        }
        "fwd" if only(&[NFTA_FWD_SREG_DEV]) => Some(Expr::Fwd {
            sreg_dev: u32_of(find(NFTA_FWD_SREG_DEV)?)?,
        }),
        _ => None,
    }
}

fn decode_typed(expressions: &Expressions) -> Option<Expr> {
    let register = |r: &Register| u32::from(*r);
    match expressions {
        Expressions::Meta(attributes) => {
            let (mut key, mut dreg, mut sreg) = (None, None, None);
            for attribute in attributes {
                match attribute {
                    Meta::Key(k) => key = Some(*k),
                    Meta::DestinationRegister(r) => dreg = Some(register(r)),
                    Meta::SourceRegister(r) => sreg = Some(register(r)),
                    _ => return None,
                }
            }
            match (key?, dreg, sreg) {
                (key, Some(dreg), None) => Some(Expr::Meta { key, dreg }),
                (key, None, Some(sreg)) => Some(Expr::MetaSet { key, sreg }),
                _ => None,
            }
        }
        Expressions::Payload(attributes) => {
            let (mut base, mut offset, mut len, mut dreg, mut sreg) =
                (None, None, None, None, None);
            let mut checksum = false;
            for attribute in attributes {
                match attribute {
                    Payload::Base(b) => base = Some(PayloadBase::from_code(*b)),
                    Payload::Offset(o) => offset = Some(*o),
                    Payload::Len(l) => len = Some(*l),
                    Payload::DestinationRegister(r) => dreg = Some(register(r)),
                    Payload::SourceRegister(r) => sreg = Some(register(r)),
                    Payload::CsumType(t) => {
                        checksum |= *t != netlink_packet_netfilter::nftables::ChecksumType::None
                    }
                    Payload::CsumOffset(_) => {}
                    Payload::CsumFlags(f) => checksum |= !f.is_empty(),
                    _ => return None,
                }
            }
            let (base, offset, len) = (base?, offset?, len?);
            match (dreg, sreg, checksum) {
                (Some(dreg), None, false) => Some(Expr::Payload {
                    base,
                    offset,
                    len,
                    dreg,
                }),
                // A write that updates a checksum is not one this module writes or shows.
                (None, Some(sreg), false) => Some(Expr::PayloadSet {
                    base,
                    offset,
                    len,
                    sreg,
                }),
                _ => None,
            }
        }
        Expressions::Cmp(attributes) => {
            let (mut sreg, mut op, mut data) = (None, None, None);
            for attribute in attributes {
                match attribute {
                    Cmp::SourceRegister(r) => sreg = Some(register(r)),
                    Cmp::Op(o) => op = Some(*o),
                    Cmp::Data(DataAttribute::Value(bytes)) => data = Some(bytes.clone()),
                    _ => return None,
                }
            }
            Some(Expr::Cmp {
                sreg: sreg?,
                op: op?,
                data: data?,
            })
        }
        Expressions::Lookup(attributes) => {
            let (mut name, mut id, mut sreg, mut dreg, mut flags) = (None, None, None, None, 0);
            for attribute in attributes {
                match attribute {
                    Lookup::Set(n) => name = Some(n.clone()),
                    Lookup::SetId(i) => id = Some(*i),
                    Lookup::SourceRegister(r) => sreg = Some(register(r)),
                    Lookup::DestinationRegister(r) => dreg = Some(register(r)),
                    Lookup::Flags(f) => flags = *f,
                    _ => return None,
                }
            }
            if flags & !LOOKUP_INVERTED != 0 {
                return None;
            }
            Some(Expr::Lookup {
                set: SetRef { name: name?, id },
                sreg: sreg?,
                dreg,
                inverted: flags & LOOKUP_INVERTED != 0,
            })
        }
        Expressions::Immediate(attributes) => {
            let (mut dreg, mut data) = (None, None);
            for attribute in attributes {
                match attribute {
                    Immediate::DestinationRegister(r) => dreg = Some(register(r)),
                    Immediate::Data(d) => data = Some(decode_data(d)?),
                    _ => return None,
                }
            }
            Some(Expr::Immediate {
                dreg: dreg?,
                data: data?,
            })
        }
        Expressions::Other {
            expression_type,
            attributes,
        } => decode_other(expression_type, attributes),
        _ => None,
    }
}

fn undecoded(name: &str, expressions: &Expressions) -> Expr {
    match expressions {
        Expressions::Bitwise(a) => unknown(name, a),
        Expressions::Cmp(a) => unknown(name, a),
        Expressions::Immediate(a) => unknown(name, a),
        Expressions::Lookup(a) => unknown(name, a),
        Expressions::Meta(a) => unknown(name, a),
        Expressions::Payload(a) => unknown(name, a),
        Expressions::Unknown(a) => unknown(name, a),
        Expressions::Other { attributes, .. } => unknown(name, attributes),
        _ => Expr::Unknown {
            name: name.to_string(),
            attributes: Vec::new(),
        },
    }
}

/// One element of a rule's expression list as read from the kernel. What this module cannot
/// decode comes back as [`Expr::Unknown`] with its raw attributes, never dropped.
pub(crate) fn decode(element: &ListAttribute<ExpressionAttribute>) -> Expr {
    let ListAttribute::Element(attributes) = element else {
        return Expr::Unknown {
            name: "(not an expression)".to_string(),
            attributes: vec![raw_attribute(element)],
        };
    };
    let mut name = String::from("(unnamed)");
    let mut data = None;
    for attribute in attributes {
        match attribute {
            ExpressionAttribute::Name(n) => name = n.clone(),
            ExpressionAttribute::Data(d) => data = Some(d),
            _ => {}
        }
    }
    let Some(data) = data else {
        // An expression without data (a bare `counter` the kernel lists with attributes, or
        // one such as `notrack` that has none).
        return match name.as_str() {
            "counter" => Expr::Counter {
                packets: 0,
                bytes: 0,
            },
            _ => Expr::Unknown {
                name,
                attributes: Vec::new(),
            },
        };
    };
    decode_typed(data).unwrap_or_else(|| undecoded(&name, data))
}

/// The expression list's raw bytes back as (type, value) pairs: the data of an element the
/// decoder could not read at all.
pub(crate) fn parse_raw(bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
    netlink_packet_core::NlasIterator::new(bytes)
        .filter_map(|nla| nla.ok())
        .filter_map(|nla| DefaultNla::parse(&nla).ok())
        .map(|nla| raw_attribute(&nla))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nftables::model::{CmpOp, MetaKey};

    fn round_trip(expr: Expr) {
        let element = encode(&expr);
        let mut buffer = vec![0u8; element.buffer_len()];
        element.emit(&mut buffer);
        let parsed: ListAttribute<ExpressionAttribute> =
            ListAttribute::parse(&NlaBuffer::new(&buffer[..])).expect("parses");
        assert_eq!(decode(&parsed), expr);
    }

    #[test]
    fn every_expression_this_module_writes_reads_back_the_same() {
        let set = SetRef {
            name: "lease".into(),
            id: Some(3),
        };
        for expr in [
            Expr::Meta {
                key: MetaKey::Mark,
                dreg: 1,
            },
            Expr::MetaSet {
                key: MetaKey::Mark,
                sreg: 1,
            },
            Expr::Payload {
                base: PayloadBase::Network,
                offset: 16,
                len: 4,
                dreg: 1,
            },
            Expr::PayloadSet {
                base: PayloadBase::Link,
                offset: 6,
                len: 6,
                sreg: 1,
            },
            Expr::Cmp {
                sreg: 1,
                op: CmpOp::NotEqual,
                data: vec![1, 2, 3, 4],
            },
            Expr::Lookup {
                set: set.clone(),
                sreg: 1,
                dreg: Some(0),
                inverted: false,
            },
            Expr::Lookup {
                set: set.clone(),
                sreg: 1,
                dreg: None,
                inverted: true,
            },
            Expr::Immediate {
                dreg: 0,
                data: Data::Verdict(Verdict::Jump("lease_1".into())),
            },
            Expr::Immediate {
                dreg: 0,
                data: Data::Verdict(Verdict::Drop),
            },
            Expr::Immediate {
                dreg: 1,
                data: Data::Value(vec![2, 0, 0, 0, 0, 1]),
            },
            Expr::Counter {
                packets: 7,
                bytes: 420,
            },
            Expr::Objref {
                object_type: 1,
                name: "guard_dropped".into(),
            },
            Expr::Dynset {
                op: DynsetOp::Update,
                set: set.clone(),
                sreg_key: 1,
                timeout_ms: Some(136),
            },
            Expr::Dynset {
                op: DynsetOp::Delete,
                set,
                sreg_key: 1,
                timeout_ms: None,
            },
            Expr::Fwd { sreg_dev: 1 },
            Expr::Unknown {
                name: "quota".into(),
                attributes: vec![(1, 1000u64.to_be_bytes().to_vec()), (2, vec![0, 0, 0, 0])],
            },
        ] {
            round_trip(expr);
        }
    }

    #[test]
    fn a_dynset_with_expressions_on_its_elements_stays_undecoded() {
        let element: ListAttribute<ExpressionAttribute> = other(
            "dynset",
            vec![
                u32_attribute(NFTA_DYNSET_SREG_KEY, 1),
                u32_attribute(NFTA_DYNSET_OP, 1),
                DefaultNla::new(NFTA_DYNSET_SET_NAME, string_value("s")),
                DefaultNla::new(7 | NLA_F_NESTED, vec![]),
            ],
        )
        .into();
        assert!(matches!(decode(&element), Expr::Unknown { ref name, .. } if name == "dynset"));
    }
}
