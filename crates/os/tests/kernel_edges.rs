//! Kernel edges against the real kernel: two network namespaces joined by a veth pair.
//! Needs root (CI runs as root).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use steadfast_os::addr::Netlink;
use steadfast_os::garp::{parse_arp, ArpPacket, GarpSender};
use steadfast_os::{netns, sched, OsError};

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Namespaces `a` and `b`, veth `veth_a` in `a` joined to `veth_b` in `b`, both up.
/// Dropping it deletes both namespaces (and with them the veth pair), also on panic.
struct Pair {
    a: String,
    b: String,
    veth_a: String,
    veth_b: String,
}

impl Pair {
    fn new() -> Pair {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let pair = Pair {
            a: format!("sfos-{pid}-{n}-a"),
            b: format!("sfos-{pid}-{n}-b"),
            // Interface names are at most 15 bytes: "sfa" + pid (≤ 7 digits) + counter.
            veth_a: format!("sfa{pid}x{n}"),
            veth_b: format!("sfb{pid}x{n}"),
        };
        assert!(pair.veth_a.len() <= 15 && pair.veth_b.len() <= 15);
        // The guard exists before the first namespace, so a failing step still cleans up.
        ip(&["netns", "add", &pair.a]);
        ip(&["netns", "add", &pair.b]);
        ip(&[
            "link",
            "add",
            &pair.veth_a,
            "netns",
            &pair.a,
            "type",
            "veth",
            "peer",
            "name",
            &pair.veth_b,
            "netns",
            &pair.b,
        ]);
        ip(&["-n", &pair.a, "link", "set", &pair.veth_a, "up"]);
        ip(&["-n", &pair.b, "link", "set", &pair.veth_b, "up"]);
        pair
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `body` on a fresh thread that entered namespace `ns`, inside a current_thread runtime
/// built after entering (so the netlink socket lives in `ns`).
fn in_namespace<T, F, Fut>(ns: &str, body: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let ns = ns.to_string();
    std::thread::spawn(move || {
        netns::enter(&ns).expect("entering the namespace");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building the runtime");
        runtime.block_on(body())
    })
    .join()
    .expect("namespace thread panicked")
}

fn addresses_of(ns: &str, dev: &str) -> String {
    ip(&["-n", ns, "-4", "addr", "show", "dev", dev])
}

#[test]
fn addresses_are_added_and_removed_idempotently() {
    let pair = Pair::new();
    let vip = Ipv4Addr::new(10, 203, 0, 7);
    let (ns, dev) = (pair.a.clone(), pair.veth_a.clone());
    in_namespace(&pair.a, move || async move {
        let netlink = Netlink::new().await.expect("netlink");
        let link = netlink.link_by_name(&dev).await.expect("link_by_name");
        assert!(link.up, "{dev} was set up");
        assert_ne!(link.mac, [0; 6], "a veth has a MAC address");
        assert!(link.index > 0);

        assert!(!netlink.has_address(link.index, vip).await.unwrap());
        netlink.add_address(link.index, vip, 24).await.expect("add");
        assert!(netlink.has_address(link.index, vip).await.unwrap());
        assert!(addresses_of(&ns, &dev).contains("10.203.0.7/24"));

        netlink
            .add_address(link.index, vip, 24)
            .await
            .expect("add again is fine");
        assert_eq!(addresses_of(&ns, &dev).matches("10.203.0.7/24").count(), 1);

        netlink
            .remove_address(link.index, vip, 24)
            .await
            .expect("remove");
        assert!(!netlink.has_address(link.index, vip).await.unwrap());
        assert!(!addresses_of(&ns, &dev).contains("10.203.0.7"));
        netlink
            .remove_address(link.index, vip, 24)
            .await
            .expect("remove again is fine");

        // A neighbour address on the same interface is left alone by has/remove of the VIP.
        let other = Ipv4Addr::new(10, 203, 0, 8);
        netlink.add_address(link.index, other, 24).await.unwrap();
        assert!(!netlink.has_address(link.index, vip).await.unwrap());
        netlink.remove_address(link.index, vip, 24).await.unwrap();
        assert!(netlink.has_address(link.index, other).await.unwrap());
    });
}

#[test]
fn add_remove_round_trip_time() {
    // Reported, not asserted: the daemon moves addresses on failover and wants this small.
    let pair = Pair::new();
    let dev = pair.veth_a.clone();
    let (add, remove, rounds) = in_namespace(&pair.a, move || async move {
        let netlink = Netlink::new().await.unwrap();
        let index = netlink.link_by_name(&dev).await.unwrap().index;
        let vip = Ipv4Addr::new(10, 204, 0, 1);
        let rounds = 50u32;
        let (mut add, mut remove) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..rounds {
            let start = Instant::now();
            netlink.add_address(index, vip, 32).await.unwrap();
            add += start.elapsed();
            let start = Instant::now();
            netlink.remove_address(index, vip, 32).await.unwrap();
            remove += start.elapsed();
        }
        (add, remove, rounds)
    });
    eprintln!(
        "netlink add_address: {:?} mean, remove_address: {:?} mean over {rounds} rounds",
        add / rounds,
        remove / rounds
    );
}

#[test]
fn missing_interfaces_are_named_in_errors() {
    let pair = Pair::new();
    in_namespace(&pair.a, || async {
        let netlink = Netlink::new().await.unwrap();
        let missing = 987_654u32;
        let err = netlink
            .add_address(missing, Ipv4Addr::new(10, 205, 0, 1), 24)
            .await
            .expect_err("no such interface");
        let text = err.to_string();
        assert!(text.contains("987654"), "{text}");
        assert!(text.contains("10.205.0.1/24"), "{text}");
        eprintln!("missing ifindex error: {text}");

        let err = netlink
            .link_by_name("sf-nonesuch")
            .await
            .expect_err("missing");
        assert!(matches!(err, OsError::NoSuchInterface(ref n) if n == "sf-nonesuch"));
        assert!(err.to_string().contains("sf-nonesuch"));
    });
}

#[test]
fn entering_a_missing_namespace_names_it() {
    let err = std::thread::spawn(|| netns::enter("sf-no-such-namespace-xyz"))
        .join()
        .unwrap()
        .expect_err("missing namespace");
    assert!(
        err.to_string().contains("sf-no-such-namespace-xyz"),
        "{err}"
    );
}

/// A packet socket in the calling thread's namespace receiving ARP frames on `ifindex`,
/// giving up on a read after 2 s.
fn arp_listener(ifindex: u32) -> OwnedFd {
    let protocol = 0x0806u16.to_be();
    // SAFETY: socket(2), checked; the descriptor is owned immediately.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
    assert!(
        raw >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: raw is fresh and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: zeroed sockaddr_ll is valid; the size passed matches.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol;
    addr.sll_ifindex = ifindex as i32;
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: timeval is valid for the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    assert_eq!(rc, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    fd
}

#[test]
fn gratuitous_arp_reaches_the_other_namespace() {
    let pair = Pair::new();
    let vip = Ipv4Addr::new(10, 206, 0, 42);
    let (ready_tx, ready_rx) = mpsc::channel::<()>();

    let ns_b = pair.b.clone();
    let veth_b = pair.veth_b.clone();
    let receiver = std::thread::spawn(move || -> Option<ArpPacket> {
        netns::enter(&ns_b).expect("entering b");
        let name = std::ffi::CString::new(veth_b).unwrap();
        // SAFETY: name is a valid C string; if_nametoindex looks it up in this thread's namespace.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex > 0, "veth in b");
        let fd = arp_listener(ifindex);
        ready_tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        // Bounded: other ARP frames (none expected) are skipped, at most 100 of them.
        for _ in 0..100 {
            if Instant::now() > deadline {
                break;
            }
            let mut buf = [0u8; 1600];
            // SAFETY: buf is valid for its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                break; // the 2 s receive timeout
            }
            if let Some(arp) = parse_arp(&buf[..n as usize]) {
                if arp.sender_ip == vip {
                    return Some(arp);
                }
            }
        }
        None
    });

    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("receiver ready");
    let dev = pair.veth_a.clone();
    let mac = in_namespace(&pair.a, move || async move {
        let link = Netlink::new()
            .await
            .unwrap()
            .link_by_name(&dev)
            .await
            .unwrap();
        let sender = GarpSender::open(link.index, link.mac).expect("open");
        // The daemon sends from clones on other tasks; a clone shares the socket.
        sender.clone().send(vip).expect("send");
        link.mac
    });

    let arp = receiver
        .join()
        .unwrap()
        .expect("gratuitous ARP captured in b within 2 s");
    assert_eq!(
        arp,
        ArpPacket {
            opcode: 1,
            sender_mac: mac,
            sender_ip: vip,
            target_mac: [0; 6],
            target_ip: vip,
        }
    );
}

#[test]
fn realtime_priority_is_not_inherited_by_children() {
    std::thread::spawn(|| {
        sched::set_realtime_priority(10).expect("SCHED_FIFO (needs root)");
        // SAFETY: plain query of the calling thread's policy.
        let policy = unsafe { libc::sched_getscheduler(0) };
        assert_eq!(policy, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK);
        // Field 41 of /proc/PID/stat is the child's scheduling policy (0 = SCHED_OTHER).
        let out = Command::new("cat").arg("/proc/self/stat").output().unwrap();
        let stat = String::from_utf8_lossy(&out.stdout).into_owned();
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        let policy_field = after_comm.split(' ').nth(41 - 3).unwrap();
        assert_eq!(policy_field, "0", "child policy in {stat}");
    })
    .join()
    .unwrap();

    let err = std::thread::spawn(|| sched::set_realtime_priority(1000))
        .join()
        .unwrap()
        .expect_err("priority out of range");
    assert!(err.to_string().contains("1000"), "{err}");
}
