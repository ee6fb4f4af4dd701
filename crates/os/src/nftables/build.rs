//! Rules from nft's phrases. Each method emits the expressions `nft` itself compiles the
//! phrase to (checked against `nft --debug=netlink`), dependencies included and emitted once
//! per rule as nft does: `ip daddr` in an inet table first checks `meta nfproto ipv4`, `ether
//! saddr` checks `meta iiftype ether`, `tcp dport` checks `meta l4proto tcp`. So a table this
//! module writes lists in `nft list ruleset` exactly as the nft text it replaces.

use std::net::Ipv4Addr;

use super::model::{
    CmpOp, Data, DynsetOp, Expr, Family, MetaKey, PayloadBase, Rule, SetRef, Verdict, REG_1,
    VERDICT_REGISTER,
};

const NFPROTO_IPV4: u8 = 2;
const ARPHRD_ETHER: u16 = 1;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;
const IFNAMSIZ: usize = 16;

/// An address field of a packet: IPv4, ARP's IPv4 or Ethernet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressField {
    Source,
    Destination,
}

/// Builds one rule. Matches come first, then statements, then the verdict, as in nft.
#[derive(Clone, Debug)]
pub struct RuleBuilder {
    family: Family,
    exprs: Vec<Expr>,
    ipv4_known: bool,
    ether_known: bool,
    tcp_known: bool,
}

impl RuleBuilder {
    pub fn new(family: Family) -> RuleBuilder {
        RuleBuilder {
            family,
            exprs: Vec::new(),
            // An ip table sees IPv4 only; an arp table has no IP header to guard.
            ipv4_known: matches!(family, Family::Ip | Family::Arp),
            ether_known: false,
            tcp_known: false,
        }
    }

    fn push(&mut self, expr: Expr) {
        self.exprs.push(expr);
    }

    fn load_meta(&mut self, key: MetaKey) {
        self.push(Expr::Meta { key, dreg: REG_1 });
    }

    fn compare(&mut self, op: CmpOp, data: Vec<u8>) {
        self.push(Expr::Cmp {
            sreg: REG_1,
            op,
            data,
        });
    }

    fn load_payload(&mut self, base: PayloadBase, offset: u32, len: u32) {
        self.push(Expr::Payload {
            base,
            offset,
            len,
            dreg: REG_1,
        });
    }

    fn load_value(&mut self, value: Vec<u8>) {
        self.push(Expr::Immediate {
            dreg: REG_1,
            data: Data::Value(value),
        });
    }

    /// The check that the packet is IPv4, where the family does not imply it.
    fn need_ipv4(&mut self) {
        if self.ipv4_known {
            return;
        }
        match self.family {
            Family::Inet => {
                self.load_meta(MetaKey::Nfproto);
                self.compare(CmpOp::Equal, vec![NFPROTO_IPV4]);
            }
            _ => {
                self.load_meta(MetaKey::EtherTypeProtocol);
                self.compare(CmpOp::Equal, ETH_P_IP.to_be_bytes().to_vec());
            }
        }
        self.ipv4_known = true;
    }

    fn need_ether(&mut self) {
        if !self.ether_known {
            self.load_meta(MetaKey::Iftype);
            self.compare(CmpOp::Equal, ARPHRD_ETHER.to_ne_bytes().to_vec());
            self.ether_known = true;
        }
    }

    fn need_tcp(&mut self) {
        if !self.tcp_known {
            self.load_meta(MetaKey::L4Proto);
            self.compare(CmpOp::Equal, vec![IPPROTO_TCP]);
            self.tcp_known = true;
        }
    }

    fn load_ip_address(&mut self, field: AddressField) {
        self.need_ipv4();
        let offset = match field {
            AddressField::Source => 12,
            AddressField::Destination => 16,
        };
        self.load_payload(PayloadBase::Network, offset, 4);
    }

    /// `ip saddr|daddr [!=] ADDRESS`
    pub fn ip_address(mut self, field: AddressField, op: CmpOp, address: Ipv4Addr) -> Self {
        self.load_ip_address(field);
        self.compare(op, address.octets().to_vec());
        self
    }

    /// `ip saddr|daddr [!=] @SET`
    pub fn ip_address_in(mut self, field: AddressField, set: SetRef, inverted: bool) -> Self {
        self.load_ip_address(field);
        self.push(Expr::Lookup {
            set,
            sreg: REG_1,
            dreg: None,
            inverted,
        });
        self
    }

    /// `arp saddr|daddr ip ADDRESS` (arp family).
    pub fn arp_ip_address(mut self, field: AddressField, op: CmpOp, address: Ipv4Addr) -> Self {
        // The ARP header for IPv4 over Ethernet: 8 bytes, sender MAC, sender IP, target MAC,
        // target IP.
        let offset = match field {
            AddressField::Source => 14,
            AddressField::Destination => 24,
        };
        self.load_payload(PayloadBase::Network, offset, 4);
        self.compare(op, address.octets().to_vec());
        self
    }

    /// `meta mark [!=] MARK`
    pub fn mark(mut self, op: CmpOp, mark: u32) -> Self {
        self.load_meta(MetaKey::Mark);
        self.compare(op, mark.to_ne_bytes().to_vec());
        self
    }

    /// `meta mark set MARK`
    pub fn set_mark(mut self, mark: u32) -> Self {
        self.load_value(mark.to_ne_bytes().to_vec());
        self.push(Expr::MetaSet {
            key: MetaKey::Mark,
            sreg: REG_1,
        });
        self
    }

    /// `meta mark vmap @MAP` (the map an anonymous `{ MARK : VERDICT, ... }`).
    pub fn mark_vmap(mut self, map: SetRef) -> Self {
        self.load_meta(MetaKey::Mark);
        self.push(Expr::Lookup {
            set: map,
            sreg: REG_1,
            dreg: Some(VERDICT_REGISTER),
            inverted: false,
        });
        self
    }

    fn interface_name(&mut self, key: MetaKey, name: &str) {
        self.load_meta(key);
        // The kernel compares the whole IFNAMSIZ buffer: the name, NUL-padded.
        let mut padded = name.as_bytes().to_vec();
        padded.resize(IFNAMSIZ, 0);
        self.compare(CmpOp::Equal, padded);
    }

    /// `iifname "NAME"`
    pub fn iifname(mut self, name: &str) -> Self {
        self.interface_name(MetaKey::Iifname, name);
        self
    }

    /// `oifname "NAME"`
    pub fn oifname(mut self, name: &str) -> Self {
        self.interface_name(MetaKey::Oifname, name);
        self
    }

    fn ether_offset(field: AddressField) -> u32 {
        match field {
            AddressField::Destination => 0,
            AddressField::Source => 6,
        }
    }

    /// `ether saddr|daddr [!=] MAC`
    pub fn ether_address(mut self, field: AddressField, op: CmpOp, mac: [u8; 6]) -> Self {
        self.need_ether();
        self.load_payload(PayloadBase::Link, Self::ether_offset(field), 6);
        self.compare(op, mac.to_vec());
        self
    }

    /// `ether type ip`
    pub fn ether_type_ipv4(mut self) -> Self {
        self.need_ether();
        self.load_payload(PayloadBase::Link, 12, 2);
        self.compare(CmpOp::Equal, ETH_P_IP.to_be_bytes().to_vec());
        self.ipv4_known = true;
        self
    }

    /// `tcp dport PORT` or, with several ports, `tcp dport @SET` (the set holding them;
    /// [`super::Batch::add_anonymous_set`] makes nft's `{ P1, P2 }`).
    pub fn tcp_destination_port(mut self, ports: PortMatch) -> Self {
        self.need_tcp();
        self.load_payload(PayloadBase::Transport, 2, 2);
        match ports {
            PortMatch::One(port) => self.compare(CmpOp::Equal, port.to_be_bytes().to_vec()),
            PortMatch::InSet(set) => self.push(Expr::Lookup {
                set,
                sreg: REG_1,
                dreg: None,
                inverted: false,
            }),
        }
        self
    }

    /// `tcp sport PORT`
    pub fn tcp_source_port(mut self, port: u16) -> Self {
        self.need_tcp();
        self.load_payload(PayloadBase::Transport, 0, 2);
        self.compare(CmpOp::Equal, port.to_be_bytes().to_vec());
        self
    }

    /// `counter`
    pub fn counter(mut self) -> Self {
        self.push(Expr::Counter {
            packets: 0,
            bytes: 0,
        });
        self
    }

    /// `counter name NAME`
    pub fn named_counter(mut self, name: &str) -> Self {
        self.push(Expr::Objref {
            object_type: super::model::OBJECT_COUNTER,
            name: name.to_string(),
        });
        self
    }

    /// `ether saddr|daddr set MAC`
    pub fn set_ether_address(mut self, field: AddressField, mac: [u8; 6]) -> Self {
        self.load_value(mac.to_vec());
        self.push(Expr::PayloadSet {
            base: PayloadBase::Link,
            offset: Self::ether_offset(field),
            len: 6,
            sreg: REG_1,
        });
        self
    }

    /// `fwd to "DEVICE"`, the device by its index in the rule's namespace (nft resolves the
    /// name when it adds the rule, too).
    pub fn forward_to(mut self, interface_index: u32) -> Self {
        self.load_value(interface_index.to_ne_bytes().to_vec());
        self.push(Expr::Fwd { sreg_dev: REG_1 });
        self
    }

    /// `update|add|delete @SET { ip saddr|daddr [timeout Nms] }`
    pub fn ip_address_to_set(
        mut self,
        op: DynsetOp,
        set: SetRef,
        field: AddressField,
        timeout_ms: Option<u64>,
    ) -> Self {
        self.load_ip_address(field);
        self.push(Expr::Dynset {
            op,
            set,
            sreg_key: REG_1,
            timeout_ms,
        });
        self
    }

    /// The verdict (`drop`, `accept`, `jump CHAIN`, ...).
    pub fn verdict(mut self, verdict: Verdict) -> Self {
        self.push(Expr::Immediate {
            dreg: VERDICT_REGISTER,
            data: Data::Verdict(verdict),
        });
        self
    }

    /// The rule, for chain `chain` of `table`.
    pub fn build(self, table: &str, chain: &str) -> Rule {
        Rule {
            family: self.family,
            table: table.to_string(),
            chain: chain.to_string(),
            exprs: self.exprs,
            handle: None,
        }
    }
}

/// The ports a `tcp dport` matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortMatch {
    One(u16),
    InSet(SetRef),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_ip_match_in_an_inet_rule_does_not_repeat_the_ipv4_check() {
        let vip = Ipv4Addr::new(10, 9, 0, 100);
        let rule = RuleBuilder::new(Family::Inet)
            .ip_address(AddressField::Destination, CmpOp::Equal, vip)
            .ip_address_in(AddressField::Destination, SetRef::named("lease"), true)
            .counter()
            .verdict(Verdict::Drop)
            .build("t", "input");
        let nfproto_checks = rule
            .exprs
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Expr::Meta {
                        key: MetaKey::Nfproto,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(nfproto_checks, 1);
        assert_eq!(rule.exprs.len(), 8, "{:#?}", rule.exprs);
    }

    #[test]
    fn an_ip_table_needs_no_ipv4_check_and_interface_names_are_padded() {
        let rule = RuleBuilder::new(Family::Ip)
            .iifname("eth0")
            .ip_address(
                AddressField::Destination,
                CmpOp::Equal,
                Ipv4Addr::new(10, 0, 0, 1),
            )
            .build("t", "c");
        assert_eq!(
            rule.exprs[1],
            Expr::Cmp {
                sreg: REG_1,
                op: CmpOp::Equal,
                data: b"eth0\0\0\0\0\0\0\0\0\0\0\0\0".to_vec()
            }
        );
        assert!(matches!(
            rule.exprs[2],
            Expr::Payload {
                base: PayloadBase::Network,
                offset: 16,
                len: 4,
                ..
            }
        ));
    }
}
