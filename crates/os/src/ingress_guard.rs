//! The duplex primary's ingress guard (DESIGN invariant I1): while a backup receives first,
//! frames to the VIP's service ports that did not come through the backup (source MAC) never
//! reach the primary's TCP unlogged, so a stray or forged ARP entry in a client can never bypass
//! the log. Such frames are bounced to the backup at the interface's ingress (netdev family,
//! both MACs rewritten so the switch learns nothing false): the backup logs and forwards them
//! like any other. Clients whose ARP entry still names the primary (the moments after a backup
//! joins, before its gratuitous ARP lands) lose nothing and wait for no retransmission. What
//! the bounce cannot take (it is removed, or the frame is not IPv4) the `ip` prerouting chain
//! drops. Also a "drop everything to the service ports" state for a takeover.
//!
//! nftables through the `nft` program, as for the fence: a start-up and role-change cost, never
//! on the per-packet path (that is the kernel's).

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

const TABLE: &str = "steadfast_guard";
const COUNTER: &str = "guard_dropped";
const BOUNCE_TABLE: &str = "steadfast_bounce";
const BOUNCE_COUNTER: &str = "guard_bounced";

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("nft ({what}): {detail}")]
    Nft { what: String, detail: String },
}

/// The guard's counters: client frames that did not come through the backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GuardCounts {
    /// Sent on to the backup to be logged first.
    pub bounced: u64,
    /// Dropped (not IPv4, or no backup to send them to).
    pub dropped: u64,
}

/// What the guard lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardState {
    /// Everything: the primary serves the VIP itself.
    Open,
    /// Only frames whose source MAC is the backup's.
    OnlyFrom([u8; 6]),
    /// Nothing to the service ports.
    DropAll,
}

/// The guard's nftables table; removed on drop.
pub struct IngressGuard {
    interface: String,
    own_mac: [u8; 6],
    vip: Ipv4Addr,
    ports: Vec<u16>,
    state: GuardState,
}

fn nft(script: &str, what: &str) -> Result<String, GuardError> {
    let fail = |detail: String| GuardError::Nft {
        what: what.to_string(),
        detail,
    };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run nft (Debian package nftables): {e}")))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl IngressGuard {
    /// Creates the guard's table (replacing one left by a previous life), open.
    pub fn install(
        interface: &str,
        own_mac: [u8; 6],
        vip: Ipv4Addr,
        ports: &[u16],
    ) -> Result<IngressGuard, GuardError> {
        if interface.is_empty()
            || interface.len() > 15
            || !interface
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
        {
            return Err(GuardError::Nft {
                what: "install".into(),
                detail: format!("{interface:?} is not an interface name"),
            });
        }
        // Priority -300: before conntrack (-200), so a dropped frame leaves no trace in TCP.
        let script = format!(
            "add table ip {TABLE}\ndelete table ip {TABLE}\n\
             table ip {TABLE} {{\n  counter {COUNTER} {{ }}\n  chain prerouting {{\n    \
             type filter hook prerouting priority -300; policy accept;\n  }}\n}}\n\
             add table netdev {BOUNCE_TABLE}\ndelete table netdev {BOUNCE_TABLE}\n\
             table netdev {BOUNCE_TABLE} {{\n  counter {BOUNCE_COUNTER} {{ }}\n  chain ingress {{\n    \
             type filter hook ingress device \"{interface}\" priority -500; policy accept;\n  }}\n}}\n"
        );
        nft(&script, "installing the ingress guard")?;
        Ok(IngressGuard {
            interface: interface.to_string(),
            own_mac,
            vip,
            ports: ports.to_vec(),
            state: GuardState::Open,
        })
    }

    pub fn state(&self) -> GuardState {
        self.state
    }

    /// Sets the guard to `state` (one nftables transaction).
    pub fn apply(&mut self, state: GuardState) -> Result<(), GuardError> {
        let ports = self
            .ports
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let matching = format!(
            "iifname \"{}\" ip daddr {} tcp dport {{ {ports} }}",
            self.interface, self.vip
        );
        let rule = match state {
            GuardState::Open => String::new(),
            GuardState::OnlyFrom(mac) => format!(
                "add rule netdev {BOUNCE_TABLE} ingress ether saddr != {backup} ether type ip \
                 ip daddr {vip} tcp dport {{ {ports} }} counter name {BOUNCE_COUNTER} \
                 ether saddr set {own} ether daddr set {backup} fwd to \"{interface}\"\n\
                 add rule ip {TABLE} prerouting {matching} ether saddr != {backup} counter name {COUNTER} drop\n",
                backup = mac_text(mac),
                own = mac_text(self.own_mac),
                vip = self.vip,
                interface = self.interface,
            ),
            GuardState::DropAll => {
                format!("add rule ip {TABLE} prerouting {matching} counter name {COUNTER} drop\n")
            }
        };
        // One transaction: the chain is never empty between the old rule and the new.
        let script = format!(
            "flush chain ip {TABLE} prerouting\nflush chain netdev {BOUNCE_TABLE} ingress\n{rule}"
        );
        nft(&script, &format!("setting the ingress guard to {state:?}"))?;
        self.state = state;
        Ok(())
    }

    /// Admit only frames forwarded by the backup with this MAC.
    pub fn allow_only_from(&mut self, backup_mac: [u8; 6]) -> Result<(), GuardError> {
        self.apply(GuardState::OnlyFrom(backup_mac))
    }

    /// Admit everything (no backup receives first).
    pub fn open(&mut self) -> Result<(), GuardError> {
        self.apply(GuardState::Open)
    }

    /// Drop every frame to the service ports (a takeover's gate).
    pub fn drop_all(&mut self) -> Result<(), GuardError> {
        self.apply(GuardState::DropAll)
    }

    /// Frames the guard has bounced to the backup (they came straight here) and dropped, since
    /// it was installed: both counters in one `nft` run.
    pub fn counts(&self) -> Result<GuardCounts, GuardError> {
        let what = "reading the guard's counters";
        let text = nft(
            &format!(
                "list counter ip {TABLE} {COUNTER}\nlist counter netdev {BOUNCE_TABLE} {BOUNCE_COUNTER}\n"
            ),
            what,
        )?;
        let packets = |counter: &str| {
            text.split(&format!("counter {counter} "))
                .nth(1)
                .and_then(|after| {
                    after
                        .split_whitespace()
                        .skip_while(|w| *w != "packets")
                        .nth(1)
                        .and_then(|n| n.parse().ok())
                })
                .ok_or_else(|| GuardError::Nft {
                    what: what.into(),
                    detail: format!("no packet count of {counter} in {text:?}"),
                })
        };
        Ok(GuardCounts {
            bounced: packets(BOUNCE_COUNTER)?,
            dropped: packets(COUNTER)?,
        })
    }

    /// Removes the tables.
    pub fn remove(self) -> Result<(), GuardError> {
        let result = nft(&remove_script(), "removing the guard");
        std::mem::forget(self);
        result.map(|_| ())
    }
}

impl Drop for IngressGuard {
    fn drop(&mut self) {
        let _ = nft(&remove_script(), "removing the guard");
    }
}

fn remove_script() -> String {
    format!("delete table ip {TABLE}\ndelete table netdev {BOUNCE_TABLE}\n")
}
