//! The dead-man switch (docs/design.md, I5: "daemon death is node death"), with nftables.
//!
//! A persistent table drops every IPv4 packet and ARP frame to or from the service addresses
//! unless it carries [`LIVE_MARK`]. The mark is set, earlier in the same hooks, by a second
//! table created with the `owner` flag on a netlink socket the [`Fence`] keeps open: when the
//! daemon dies for any reason the kernel closes the socket and deletes the owner table with it
//! (no child process, nothing to poll). From then on the node's kernel neither answers ARP for
//! the address nor sends a byte (data, FIN or RST) from it, whatever address state the dead
//! daemon left behind. That includes the FIN or RST of every connection the dying process
//! closes: the socket sits at the top of the descriptor table, where a dying process's
//! descriptors are released first ([`NftSocket::move_to_top_descriptor`]).
//!
//! The fence also holds the node's *kernel lease*: a set of the service addresses whose
//! elements time out by themselves, renewed by the daemon each time the election renews the
//! primary's lease (see [`Fence::hold_lease`]) and emptied when the lease ends. The fence drops
//! the addresses' IPv4 traffic while they are missing from it. A daemon that dies is covered by
//! the owner table; the lease covers one that stops without dying (SIGSTOP, a hung process):
//! its kernel stops sending for the addresses by the time any other node may be elected, where
//! it would otherwise go on sending queued replies, retransmissions and loss probes to clients
//! another node now serves. (ARP is not leased: a duplex primary never answers it.)
//!
//! The renewal runs on the election's realtime thread at every heartbeat, so it is not an
//! nf_tables transaction (those serialize on a per-namespace mutex that a transaction of the
//! ingress guard may hold; through the nft program one took 3-26 ms under load, longer than a
//! 10 ms heartbeat; crates/os/benches/nft_bench.rs measures both ways). It is one UDP datagram to each service address with a mark: a rule
//! of the fence updates the set from the packet path (lock-free) and drops the datagram. Rule
//! timeouts are constants, so the mark picks one of a ladder of timeouts ([`lease_steps`]).
//!
//! The tables are written over netlink ([`crate::nftables`]), both in one transaction: the
//! owner table and the fence appear together, so the addresses never pass an armed fence
//! unmarked nor go dark while it is armed.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::nftables::model::{key_type, SET_EVAL, SET_TIMEOUT};
use crate::nftables::{
    AddressField, Batch, Chain, CmpOp, DynsetOp, Family, Hook, NftSocket, RuleBuilder, Set, SetRef,
    Table, Verdict,
};
use crate::OsError;

/// How long arming waits for a previous life's owner tables to be released.
const OWNER_RELEASE_WAIT: Duration = Duration::from_secs(2);
/// Packets of the service addresses carry this mark while the daemon lives.
pub const LIVE_MARK: u32 = 0x5f1d;
const LEASE_SET: &str = "lease";

/// The names of one group's tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceTables {
    /// The persistent fence's table (inet and arp).
    pub fence: String,
    /// The owner table that marks the addresses' packets while the daemon lives (inet and
    /// arp).
    pub live: String,
}

impl FenceTables {
    pub fn for_group(group: &str) -> FenceTables {
        FenceTables {
            fence: crate::group_table("fence", group),
            live: crate::group_table("live", group),
        }
    }
}
/// Marks of the datagrams that set the kernel lease: the base ends it, base + i + 1 sets it to
/// the i-th of [`lease_steps`].
const LEASE_MARK_BASE: u32 = 0x5f1e_0000;
/// The discard port: the datagrams never leave the node (the fence drops them), any port does.
const LEASE_PORT: u16 = 9;

/// The armed switch. Dropping it (or the process dying) lets the fence drop the addresses'
/// traffic.
pub struct Fence {
    /// Owns the live tables: the kernel deletes them when this socket closes.
    owner: NftSocket,
    tables: FenceTables,
    vips: Vec<Ipv4Addr>,
    /// Sends the datagrams that set the kernel lease.
    lease_socket: std::net::UdpSocket,
    /// [`lease_steps`], computed once: the renewal runs on the election's thread.
    lease_steps: Vec<u32>,
    /// Whether the lease was last set (false: ended, or never set).
    leased: bool,
}

/// The timeouts, in milliseconds, the kernel lease can be set to: every millisecond up to 50,
/// then 10 % apart up to a minute. A lease is set to the longest step that does not outlast it.
pub fn lease_steps() -> Vec<u32> {
    let mut steps: Vec<u32> = (1..=50).collect();
    let mut next = 50u32;
    while next < 60_000 {
        next = (next + next / 10).min(60_000);
        steps.push(next);
    }
    steps
}

/// The index in [`lease_steps`] of the longest step within `remaining`; none under 1 ms.
fn lease_step_for(steps: &[u32], remaining: Duration) -> Option<usize> {
    let millis = u32::try_from(remaining.as_millis()).unwrap_or(u32::MAX);
    steps.iter().rposition(|&step| step <= millis)
}

/// The chains the fence and the owner table hook, and the field that holds the service
/// address in a packet going that way.
const DIRECTIONS: [(&str, Hook, AddressField); 2] = [
    ("input", Hook::Input, AddressField::Destination),
    ("output", Hook::Output, AddressField::Source),
];

/// `ip daddr VIP`, or `arp daddr ip VIP` in the arp family (and the source for output).
fn address_match(family: Family, field: AddressField, vip: Ipv4Addr) -> RuleBuilder {
    let rule = RuleBuilder::new(family);
    if family == Family::Arp {
        rule.arp_ip_address(field, CmpOp::Equal, vip)
    } else {
        rule.ip_address(field, CmpOp::Equal, vip)
    }
}

fn filter_chain(family: Family, table: &str, name: &str, hook: Hook, priority: i32) -> Chain {
    Chain::filter(family, table, name, hook, priority, None)
        .expect("inet and arp both have input and output hooks")
}

/// The owner table of one family: `meta mark set LIVE_MARK` on the addresses' packets, at
/// priority -10, ahead of the fence.
fn live_table(batch: &mut Batch, family: Family, table: &str, vips: &[Ipv4Addr]) {
    batch.add_table(Table::owned(family, table));
    for (chain, hook, field) in DIRECTIONS {
        batch.add_chain(filter_chain(family, table, chain, hook, -10));
        for vip in vips {
            batch.add_rule(
                address_match(family, field, *vip)
                    .set_mark(LIVE_MARK)
                    .build(table, chain),
            );
        }
    }
}

/// The persistent fence of one family: a packet of a service address passes only with the
/// owner table's mark (the daemon lives) and, for IPv4, while the address is in the lease set
/// (the daemon keeps renewing its lease). Its `lease_keeper` chain, ahead of the owner table's,
/// turns the marked datagrams of [`Fence::hold_lease`] into set updates: only those to this
/// group's addresses, so that another group's fence on the same host leaves them to it.
fn fence_table(batch: &mut Batch, family: Family, table: &str, vips: &[Ipv4Addr]) {
    batch.add_table(Table::new(family, table));
    let lease = (family == Family::Inet).then(|| {
        let lease = batch.add_set(Set {
            family,
            table: table.to_string(),
            name: LEASE_SET.to_string(),
            flags: SET_TIMEOUT | SET_EVAL,
            key_type: key_type::IPV4_ADDR,
            key_len: 4,
            data_type: None,
            data_len: None,
            size: None,
            timeout_ms: None,
            id: None,
            handle: None,
            elements: Vec::new(),
        });
        let to_lease = |op, timeout_ms, chain: &str| {
            RuleBuilder::new(family)
                .ip_address_to_set(op, lease.clone(), AddressField::Destination, timeout_ms)
                .verdict(Verdict::Drop)
                .build(table, chain)
        };
        batch.add_chain(Chain::regular(family, table, "lease_end"));
        batch.add_rule(to_lease(DynsetOp::Delete, None, "lease_end"));
        let mut verdicts = vec![(LEASE_MARK_BASE, Verdict::Jump("lease_end".to_string()))];
        for (i, step) in lease_steps().iter().enumerate() {
            let chain = format!("lease_{step}");
            verdicts.push((LEASE_MARK_BASE + 1 + i as u32, Verdict::Jump(chain.clone())));
            batch.add_chain(Chain::regular(family, table, &chain));
            batch.add_rule(to_lease(DynsetOp::Update, Some(u64::from(*step)), &chain));
        }
        batch.add_chain(filter_chain(
            family,
            table,
            "lease_keeper",
            Hook::Output,
            -20,
        ));
        let keeper = batch.add_mark_verdict_map(family, table, verdicts);
        for vip in vips {
            batch.add_rule(
                address_match(family, AddressField::Destination, *vip)
                    .mark_vmap(keeper.clone())
                    .build(table, "lease_keeper"),
            );
        }
        lease
    });
    for (chain, hook, field) in DIRECTIONS {
        batch.add_chain(filter_chain(family, table, chain, hook, 0));
        for vip in vips {
            batch.add_rule(
                address_match(family, field, *vip)
                    .mark(CmpOp::NotEqual, LIVE_MARK)
                    .counter()
                    .verdict(Verdict::Drop)
                    .build(table, chain),
            );
            if let Some(lease) = &lease {
                batch.add_rule(
                    address_match(family, field, *vip)
                        .ip_address_in(field, lease.clone(), true)
                        .counter()
                        .verdict(Verdict::Drop)
                        .build(table, chain),
                );
            }
        }
    }
}

/// The transaction that arms the switch: both owner tables, and the fence replacing any fence
/// of a previous life (its addresses may differ, and a lease it held must not outlive it).
fn arming_batch(tables: &FenceTables, vips: &[Ipv4Addr]) -> Batch {
    let mut batch = Batch::new();
    for family in [Family::Inet, Family::Arp] {
        live_table(&mut batch, family, &tables.live, vips);
    }
    for family in [Family::Inet, Family::Arp] {
        batch.remove_table(family, &tables.fence);
        fence_table(&mut batch, family, &tables.fence, vips);
    }
    batch
}

/// The lease set of `group` by name, for a set-element transaction (the benchmark's).
pub fn lease_set(group: &str) -> (Family, String, SetRef) {
    (
        Family::Inet,
        FenceTables::for_group(group).fence,
        SetRef::named(LEASE_SET),
    )
}

impl Fence {
    /// Arms the switch of `group` for `vips` in the calling thread's network namespace: the
    /// owner table (created on the socket this value keeps) and the persistent fence, in one
    /// transaction.
    pub fn arm(group: &str, vips: &[Ipv4Addr]) -> Result<Fence, OsError> {
        let tables = FenceTables::for_group(group);
        let nftables = |what: &str| {
            let what = what.to_string();
            move |source| OsError::Nftables { what, source }
        };
        let mut owner =
            NftSocket::open().map_err(nftables("opening the fence's netlink socket"))?;
        // Released first when the process dies, before any connection's FIN or RST.
        owner
            .move_to_top_descriptor()
            .map_err(nftables("placing the fence's netlink socket"))?;
        // A previous life's owner tables outlive its death by tens of milliseconds (the kernel
        // releases them after the socket, not within its close), and the kernel refuses a
        // table of the same name owned by another socket with EPERM: a daemon restarted at
        // once (a heal, systemd's restart) waits for them to go. One that stays owned for
        // seconds belongs to a live process: another daemon in this namespace.
        let started = Instant::now();
        loop {
            match owner.apply(&arming_batch(&tables, vips), "arming the fence") {
                Ok(()) => break,
                Err(e)
                    if e.raw_os_error() == Some(libc::EPERM)
                        && started.elapsed() < OWNER_RELEASE_WAIT =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    return Err(OsError::Unexpected {
                        what: format!(
                            "arming the dead-man switch: the owner tables {} are still owned by \
                             another process after {OWNER_RELEASE_WAIT:?}: is another steadfast \
                             daemon of group {group:?} running in this network namespace? ({e})",
                            tables.live
                        ),
                    })
                }
                Err(e) => return Err(nftables("arming the dead-man switch")(e)),
            }
        }
        let lease_socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .map_err(|e| OsError::io("binding the kernel lease's UDP socket", e))?;
        // The table was just made: its lease set is empty. (No datagram is sent yet: a node
        // whose link is down at start has no route to the addresses, and must still start.)
        Ok(Fence {
            owner,
            tables,
            vips: vips.to_vec(),
            lease_socket,
            lease_steps: lease_steps(),
            leased: false,
        })
    }

    /// Sets the kernel lease: the addresses pass the fence for at most `remaining` from now,
    /// then stop by themselves unless renewed; `None` (or under a millisecond) ends it now.
    /// Returns once the kernel applied it (the datagram's send runs the fence's rule). The
    /// timeout is the longest of [`lease_steps`] within `remaining`, and the kernel counts it
    /// in whole clock ticks from the last tick, rounding down: the element never outlives
    /// `remaining` (it may end up to two ticks sooner).
    pub fn hold_lease(&mut self, remaining: Option<Duration>) -> Result<(), OsError> {
        let step = remaining.and_then(|r| lease_step_for(&self.lease_steps, r));
        if step.is_none() && !self.leased {
            return Ok(());
        }
        let mark = step.map_or(LEASE_MARK_BASE, |i| LEASE_MARK_BASE + 1 + i as u32);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.lease_socket);
        // SAFETY: a valid u32 of the size passed.
        if unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_MARK,
                &mark as *const u32 as *const libc::c_void,
                size_of::<u32>() as libc::socklen_t,
            )
        } != 0
        {
            return Err(OsError::last_os("setting SO_MARK for the kernel lease"));
        }
        for vip in &self.vips {
            match self.lease_socket.send_to(&[0], (*vip, LEASE_PORT)) {
                // The fence took it and dropped it: the kernel reports that as EPERM.
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
                Ok(_) => {
                    return Err(OsError::Unexpected {
                        what: format!(
                            "the kernel lease's datagram to {vip} passed the fence (is the {} table \
                             intact?)",
                            self.tables.fence
                        ),
                    })
                }
                Err(e) => {
                    return Err(OsError::io(
                        format!("sending the kernel lease's datagram to {vip} (it needs a route to the address)"),
                        e,
                    ))
                }
            }
        }
        self.leased = step.is_some();
        Ok(())
    }

    /// Whether both owner tables are still there, owned by this fence's socket.
    pub fn is_armed(&mut self) -> bool {
        let port = self.owner.port();
        [Family::Inet, Family::Arp].into_iter().all(|family| {
            matches!(self.owner.table(family, &self.tables.live), Ok(Some(table)) if table.owner == Some(port))
        })
    }
}

/// Removes the persistent fence of `group` (for an operator taking a node out of the group
/// for good).
pub fn disarm(group: &str) -> Result<(), OsError> {
    let fence = FenceTables::for_group(group).fence;
    let mut batch = Batch::new();
    for family in [Family::Inet, Family::Arp] {
        batch.remove_table(family, &fence);
    }
    NftSocket::open()
        .and_then(|mut socket| socket.apply(&batch, "disarming the fence"))
        .map_err(|source| OsError::Nftables {
            what: "removing the persistent fence".to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_steps_climb_from_a_millisecond_to_a_minute() {
        let steps = lease_steps();
        assert_eq!(steps[0], 1);
        assert_eq!(*steps.last().unwrap(), 60_000);
        assert!(steps.windows(2).all(|w| w[0] < w[1]));
        assert!(steps.windows(2).all(|w| w[1] - w[0] <= 1.max(w[0] / 10)));
        // Every step has a mark of its own below the next 64 Ki block.
        assert!(steps.len() < 0xffff);
    }

    #[test]
    fn a_lease_takes_the_longest_step_within_it() {
        let steps = lease_steps();
        let pick = |ms: u64| lease_step_for(&steps, Duration::from_millis(ms)).map(|i| steps[i]);
        assert_eq!(pick(0), None);
        assert_eq!(pick(1), Some(1));
        assert_eq!(pick(29), Some(29));
        assert_eq!(pick(145), Some(136));
        assert!(pick(3_600_000) == Some(60_000));
        assert_eq!(
            lease_step_for(&steps, Duration::from_micros(28_900)).map(|i| steps[i]),
            Some(28)
        );
        for ms in 1..70_000u64 {
            let step = pick(ms).unwrap();
            assert!(u64::from(step) <= ms, "{ms} ms took {step}");
        }
    }
}
