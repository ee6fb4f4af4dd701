//! Sends the packets a takeover makes itself through one raw socket: its probes (see
//! [`AckProbe`]) to the clients they ask (the backup's, for what each client acknowledged
//! before the rebuild, and the new primary's, to the clients of the connections it lost), and
//! the client packets it gives its own kernel (held frames, replayed SYNs).

use std::net::Ipv4Addr;

use steadfast_core::image::{AckProbe, FourTuple};

/// Sends each IPv4 packet to its destination: how many left, or `None` when no raw socket
/// could be opened (`whom` names the packets in the warning).
pub fn send_raw_packets(
    packets: impl IntoIterator<Item = (Vec<u8>, Ipv4Addr)>,
    whom: &str,
) -> Option<u64> {
    let sender = match steadfast_os::raw_ip::RawIpSender::open() {
        Ok(sender) => sender,
        Err(e) => {
            tracing::warn!("takeover: cannot send {whom}: {e}");
            return None;
        }
    };
    let mut sent = 0;
    for (packet, destination) in packets {
        match sender.send(&packet, destination) {
            Ok(()) => sent += 1,
            Err(e) => tracing::debug!("takeover: sending one of {whom} to {destination}: {e}"),
        }
    }
    Some(sent)
}

/// Sends each probe to its connection's client; false when no raw socket could be opened.
pub fn send_probes(probes: &[(FourTuple, AckProbe)], whom: &str) -> bool {
    send_raw_packets(
        probes
            .iter()
            .map(|(tuple, probe)| (probe.encode(), *tuple.client.ip())),
        &format!("probes to {whom}"),
    )
    .is_some()
}
