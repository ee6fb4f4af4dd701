//! The dead-man switch (DESIGN invariant I5, "daemon death is node death"), with nftables.
//!
//! A persistent table drops every IPv4 packet and ARP frame to or from the service addresses
//! unless it carries [`LIVE_MARK`]. The mark is set, earlier in the same hooks, by a second
//! table created with the `owner` flag through an `nft -i` child whose standard input the daemon
//! holds: when the daemon dies for any reason its end of the pipe closes, `nft` exits, and the
//! kernel deletes the owner table with it. From then on the node's kernel neither answers ARP
//! for the address nor sends a byte (data, FIN or RST) from it, whatever address state the dead
//! daemon left behind.
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
//! nf_tables transaction (those serialize on a per-namespace mutex that an `nft` process of the
//! ingress guard may hold, and wait for RCU grace periods: measured 3-26 ms under load, longer
//! than a 10 ms heartbeat). It is one UDP datagram to each service address with a mark: a rule
//! of the fence updates the set from the packet path (lock-free) and drops the datagram. Rule
//! timeouts are constants, so the mark picks one of a ladder of timeouts ([`lease_steps`]).
//!
//! No crate speaks nf_tables' netlink protocol well enough to create owner tables, so the `nft`
//! program (Debian package `nftables`) is used for the tables; it is a start-up cost.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::OsError;

/// Packets of the service addresses carry this mark while the daemon lives.
pub const LIVE_MARK: u32 = 0x5f1d;
const FENCE_TABLE: &str = "steadfast_fence";
const LIVE_TABLE: &str = "steadfast_live";
const LEASE_SET: &str = "lease";
/// Marks of the datagrams that set the kernel lease: the base ends it, base + i + 1 sets it to
/// the i-th of [`lease_steps`].
const LEASE_MARK_BASE: u32 = 0x5f1e_0000;
/// The discard port: the datagrams never leave the node (the fence drops them), any port does.
const LEASE_PORT: u16 = 9;

/// The armed switch. Dropping it (or the process dying) lets the fence drop the addresses'
/// traffic.
pub struct Fence {
    child: Child,
    _stdin: ChildStdin,
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

/// The field that holds the service address in a packet of `family` going `direction`.
fn address_field(family: &str, direction: &str) -> &'static str {
    match (family, direction) {
        ("arp", "input") => "arp daddr ip",
        ("arp", _) => "arp saddr ip",
        (_, "input") => "ip daddr",
        _ => "ip saddr",
    }
}

fn matches(family: &str, direction: &str, ip: Ipv4Addr) -> String {
    format!("{} {ip}", address_field(family, direction))
}

/// One table on one line (`nft -i` reads a command per line; `;` separates statements): the
/// input and output chains, `verdict` after each address match.
fn table(
    family: &str,
    name: &str,
    flags: &str,
    priority: i32,
    vips: &[Ipv4Addr],
    verdict: &str,
) -> String {
    let mut t = format!("table {family} {name} {{ {flags} ");
    for direction in ["input", "output"] {
        t.push_str(&format!(
            "chain {direction} {{ type filter hook {direction} priority {priority}; policy accept; "
        ));
        for ip in vips {
            t.push_str(&format!("{} {verdict}; ", matches(family, direction, *ip)));
        }
        t.push_str("}; ");
    }
    t.push_str("}\n");
    t
}

/// The persistent fence of one family: a packet of a service address passes only with the
/// owner table's mark (the daemon lives) and, for IPv4, while the address is in the lease set
/// (the daemon keeps renewing its lease). Its `lease_keeper` chain, ahead of the owner table's,
/// turns the marked datagrams of [`Fence::hold_lease`] into set updates.
fn fence_table(family: &str, vips: &[Ipv4Addr]) -> String {
    let leased = family == "inet";
    let mut t = format!("table {family} {FENCE_TABLE} {{ ");
    if leased {
        t.push_str(&format!(
            "set {LEASE_SET} {{ type ipv4_addr; flags dynamic,timeout; }}; "
        ));
        let mut verdicts = vec![format!("{LEASE_MARK_BASE:#x} : jump lease_end")];
        t.push_str(&format!(
            "chain lease_end {{ delete @{LEASE_SET} {{ ip daddr }} drop; }}; "
        ));
        for (i, step) in lease_steps().iter().enumerate() {
            let mark = LEASE_MARK_BASE + 1 + i as u32;
            verdicts.push(format!("{mark:#x} : jump lease_{step}"));
            t.push_str(&format!(
                "chain lease_{step} {{ update @{LEASE_SET} {{ ip daddr timeout {step}ms }} drop; }}; "
            ));
        }
        t.push_str(&format!(
            "chain lease_keeper {{ type filter hook output priority -20; policy accept; meta mark vmap {{ {} }}; }}; ",
            verdicts.join(", ")
        ));
    }
    for direction in ["input", "output"] {
        t.push_str(&format!(
            "chain {direction} {{ type filter hook {direction} priority 0; policy accept; "
        ));
        for ip in vips {
            let address = matches(family, direction, *ip);
            t.push_str(&format!(
                "{address} meta mark != {LIVE_MARK:#x} counter drop; "
            ));
            if leased {
                let field = address_field(family, direction);
                t.push_str(&format!("{address} {field} != @{LEASE_SET} counter drop; "));
            }
        }
        t.push_str("}; ");
    }
    t.push_str("}\n");
    t
}

fn nft_available() -> Result<(), OsError> {
    match Command::new("nft").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err(OsError::Command {
            command: "nft --version".into(),
            detail: "the nft program is missing: install the Debian package nftables".into(),
        }),
    }
}

fn table_exists(family: &str, name: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", family, name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Fence {
    /// Arms the switch for `vips` in the current network namespace: first the owner table
    /// (so the addresses keep working), then the persistent fence, replacing an older one.
    pub fn arm(vips: &[Ipv4Addr]) -> Result<Fence, OsError> {
        nft_available()?;
        let mut child = unsafe {
            Command::new("nft")
                .arg("-i")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // If the daemon dies, nft must go too (EOF does it; this is belt and braces).
                .pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                })
                .spawn()
        }
        .map_err(|e| OsError::io("starting nft -i for the owner table", e))?;
        let mut stdin = child.stdin.take().expect("stdin was piped");
        let live_verdict = format!("meta mark set {LIVE_MARK:#x}");
        let mut live = String::new();
        for family in ["inet", "arp"] {
            live.push_str(&table(
                family,
                LIVE_TABLE,
                "flags owner;",
                -10,
                vips,
                &live_verdict,
            ));
        }
        stdin
            .write_all(live.as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| OsError::io("writing the owner table to nft -i", e))?;
        let deadline = Instant::now() + Duration::from_secs(3);
        while !(table_exists("inet", LIVE_TABLE) && table_exists("arp", LIVE_TABLE)) {
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(OsError::Unexpected {
                    what: "nft -i did not create the owner table within 3 s".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut fence = String::new();
        for family in ["inet", "arp"] {
            // Replace any fence of a previous life (its addresses may differ, and a lease it
            // held must not outlive it).
            fence.push_str(&format!(
                "table {family} {FENCE_TABLE}\ndelete table {family} {FENCE_TABLE}\n"
            ));
            fence.push_str(&fence_table(family, vips));
        }
        apply(&fence)?;
        let lease_socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .map_err(|e| OsError::io("binding the kernel lease's UDP socket", e))?;
        // The table was just made: its lease set is empty. (No datagram is sent yet: a node
        // whose link is down at start has no route to the addresses, and must still start.)
        Ok(Fence {
            child,
            _stdin: stdin,
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
                            "the kernel lease's datagram to {vip} passed the fence (is the steadfast_fence table intact?)"
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

    /// Whether the owner table's keeper still runs.
    pub fn is_armed(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn apply(ruleset: &str) -> Result<(), OsError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| OsError::io("starting nft -f -", e))?;
    child
        .stdin
        .take()
        .expect("stdin was piped")
        .write_all(ruleset.as_bytes())
        .map_err(|e| OsError::io("writing the fence ruleset to nft", e))?;
    let out = child
        .wait_with_output()
        .map_err(|e| OsError::io("waiting for nft -f -", e))?;
    if !out.status.success() {
        return Err(OsError::Command {
            command: "nft -f - (the steadfast fence)".into(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Removes the persistent fence (for an operator taking a node out of service for good).
pub fn disarm() -> Result<(), OsError> {
    let mut ruleset = String::new();
    for family in ["inet", "arp"] {
        ruleset.push_str(&format!(
            "table {family} {FENCE_TABLE}\ndelete table {family} {FENCE_TABLE}\n"
        ));
    }
    apply(&ruleset)
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
