//! Kernel edges against the real kernel: two network namespaces joined by a veth pair.
//! Needs root (CI runs as root).

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use steadfast_os::addr::Netlink;
use steadfast_os::garp::{ArpCapture, ArpPacket, GarpSender, ARP_REQUEST};
use steadfast_os::netns::{self, NetnsGuard};
use steadfast_os::nftables::{render, Family};
use steadfast_os::packet_port::{IngressFilter, PacketPort};
use steadfast_os::{sched, sysctl, OsError};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name no other test, run or process on the machine uses.
fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("sfos-{}-{n}-{tag}", std::process::id())
}

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
/// The guards delete both namespaces (and with them the veth pair) on drop, also on panic
/// and also when a later setup step fails.
struct Pair {
    a: NetnsGuard,
    b: NetnsGuard,
    veth_a: String,
    veth_b: String,
}

impl Pair {
    /// Gives end a and end b of the veth pair one address each (`10.x.y.z/nn`).
    fn address(&self, a: &str, b: &str) {
        ip(&["-n", self.a.name(), "addr", "add", a, "dev", &self.veth_a]);
        ip(&["-n", self.b.name(), "addr", "add", b, "dev", &self.veth_b]);
    }

    fn new() -> Pair {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let a = NetnsGuard::create(&format!("sfos-{pid}-{n}-a")).expect("namespace a");
        let b = NetnsGuard::create(&format!("sfos-{pid}-{n}-b")).expect("namespace b");
        // Interface names are at most 15 bytes: "sfa" + pid (≤ 7 digits) + "x" + counter.
        let veth_a = format!("sfa{pid}x{n}");
        let veth_b = format!("sfb{pid}x{n}");
        assert!(
            veth_a.len() <= 15 && veth_b.len() <= 15,
            "{veth_a} {veth_b}"
        );
        ip(&[
            "link",
            "add",
            &veth_a,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            &veth_b,
            "netns",
            b.name(),
        ]);
        ip(&["-n", a.name(), "link", "set", &veth_a, "up"]);
        ip(&["-n", b.name(), "link", "set", &veth_b, "up"]);
        Pair {
            a,
            b,
            veth_a,
            veth_b,
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
    netns::spawn_in(ns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building the runtime");
        runtime.block_on(body())
    })
    .join()
    .expect("namespace thread panicked")
    .expect("entering the namespace")
}

fn addresses_of(ns: &str, dev: &str) -> String {
    ip(&["-n", ns, "-4", "addr", "show", "dev", dev])
}

#[test]
fn addresses_are_added_and_removed_idempotently() {
    let pair = Pair::new();
    let vip = Ipv4Addr::new(10, 203, 0, 7);
    let (ns, dev) = (pair.a.name().to_string(), pair.veth_a.clone());
    in_namespace(pair.a.name(), move || async move {
        let netlink = Netlink::new().await.expect("netlink");
        let link = netlink.link_by_name(&dev).await.expect("link_by_name");
        assert!(link.up, "{dev} was set up");
        assert_ne!(link.mac, [0; 6], "a veth has a MAC address");
        let shown = ip(&["-n", &ns, "link", "show", "dev", &dev]);
        let mac_text = link
            .mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        assert!(shown.contains(&mac_text), "{mac_text} in {shown}");
        assert!(shown.starts_with(&format!("{}: ", link.index)), "{shown}");

        assert!(!netlink.has_address(link.index, vip).await.unwrap());
        assert_eq!(netlink.addresses(link.index).await.unwrap(), vec![]);
        netlink.add_address(link.index, vip, 24).await.expect("add");
        assert!(netlink.has_address(link.index, vip).await.unwrap());
        assert_eq!(
            netlink.addresses(link.index).await.unwrap(),
            vec![(vip, 24)]
        );
        assert!(addresses_of(&ns, &dev).contains("inet 10.203.0.7/24"));

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
        assert!(addresses_of(&ns, &dev).contains("inet 10.203.0.8/24"));
    });
}

#[test]
fn removal_takes_every_copy_whatever_its_prefix() {
    let pair = Pair::new();
    let vip = Ipv4Addr::new(10, 207, 0, 5);
    let (ns, dev) = (pair.a.name().to_string(), pair.veth_a.clone());
    in_namespace(pair.a.name(), move || async move {
        let netlink = Netlink::new().await.unwrap();
        let index = netlink.link_by_name(&dev).await.unwrap().index;
        // A copy added by hand, as an operator might, beside the daemon's own.
        ip(&["-n", &ns, "addr", "add", "10.207.0.5/16", "dev", &dev]);
        netlink.add_address(index, vip, 32).await.unwrap();
        let mut listed = netlink.addresses(index).await.unwrap();
        listed.sort();
        assert_eq!(listed, vec![(vip, 16), (vip, 32)]);

        netlink.remove_address(index, vip, 32).await.unwrap();
        assert_eq!(netlink.addresses(index).await.unwrap(), vec![]);
        assert!(!addresses_of(&ns, &dev).contains("10.207.0.5"));
    });
}

#[test]
fn every_add_and_remove_takes_effect_before_it_returns() {
    // The daemon moves addresses on failover and acts on the state it was told it made: 200
    // round trips, each checked through the kernel's own listing, not through our cache.
    // (What they cost against `ip addr` is a measurement: `cargo bench -p steadfast-os --bench
    // addr_bench`.)
    let pair = Pair::new();
    let dev = pair.veth_a.clone();
    in_namespace(pair.a.name(), move || async move {
        let netlink = Netlink::new().await.unwrap();
        let index = netlink.link_by_name(&dev).await.unwrap().index;
        let vip = Ipv4Addr::new(10, 204, 0, 1);
        for round in 0..200 {
            netlink.add_address(index, vip, 32).await.unwrap();
            assert_eq!(
                netlink.addresses(index).await.unwrap(),
                vec![(vip, 32)],
                "round {round}: after add"
            );
            netlink.remove_address(index, vip, 32).await.unwrap();
            assert_eq!(
                netlink.addresses(index).await.unwrap(),
                vec![],
                "round {round}: after remove"
            );
        }
    });
}

#[test]
fn missing_interfaces_are_named_in_errors() {
    let pair = Pair::new();
    in_namespace(pair.a.name(), || async {
        let netlink = Netlink::new().await.unwrap();
        let missing = 987_654u32;
        let err = netlink
            .add_address(missing, Ipv4Addr::new(10, 205, 0, 1), 24)
            .await
            .expect_err("no such interface");
        let text = err.to_string();
        assert!(text.contains("interface index 987654"), "{text}");
        assert!(text.contains("10.205.0.1/24"), "{text}");
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV), "{text}");
        eprintln!("missing ifindex error: {text}");

        // Giving an address up on an interface that is gone: it is not held, so done.
        netlink
            .remove_address(missing, Ipv4Addr::new(10, 205, 0, 1), 24)
            .await
            .expect("nothing to remove");
        assert!(!netlink
            .has_address(missing, Ipv4Addr::new(10, 205, 0, 1))
            .await
            .unwrap());

        let err = netlink
            .link_by_name("sf-nonesuch")
            .await
            .expect_err("missing");
        assert!(matches!(err, OsError::NoSuchInterface(ref n) if n == "sf-nonesuch"));
        assert!(err.to_string().contains("sf-nonesuch"));
    });
}

#[test]
fn netlink_outside_a_tokio_runtime_is_an_error_not_a_panic() {
    let err = futures::executor::block_on(Netlink::new()).expect_err("no runtime");
    assert!(matches!(err, OsError::NoRuntime { .. }), "{err}");
    assert!(err.to_string().contains("netlink"), "{err}");
}

#[test]
fn gratuitous_arp_reaches_the_other_namespace_and_updates_its_neighbour_entry() {
    let pair = Pair::new();
    let vip = Ipv4Addr::new(10, 206, 0, 42);
    let (ns_b, veth_b) = (pair.b.name().to_string(), pair.veth_b.clone());
    // B knows the address at a stale, wrong MAC: the announcement must correct it.
    ip(&["-n", &ns_b, "addr", "add", "10.206.0.2/24", "dev", &veth_b]);
    ip(&[
        "-n",
        &ns_b,
        "neigh",
        "add",
        "10.206.0.42",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        &veth_b,
        "nud",
        "stale",
    ]);

    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let receiver = netns::spawn_in(&ns_b, move || -> Vec<ArpPacket> {
        let name = std::ffi::CString::new(veth_b).unwrap();
        // SAFETY: name is a valid C string; if_nametoindex looks it up in this thread's namespace.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex > 0, "veth in b");
        let capture = ArpCapture::open(ifindex).expect("capture");
        ready_tx.send(()).unwrap();
        let mut seen = Vec::new();
        // Bounded: at most 20 frames or 2 s.
        let deadline = Instant::now() + Duration::from_secs(2);
        while seen.len() < 20 {
            let left = deadline.saturating_duration_since(Instant::now());
            match capture.recv(left).expect("recv") {
                Some(arp) if arp.sender_ip == vip => {
                    seen.push(arp);
                    break;
                }
                Some(arp) => seen.push(arp),
                None => break,
            }
        }
        seen
    });

    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("receiver ready");
    let dev = pair.veth_a.clone();
    let mac = in_namespace(pair.a.name(), move || async move {
        let link = Netlink::new()
            .await
            .unwrap()
            .link_by_name(&dev)
            .await
            .unwrap();
        let sender = GarpSender::open(link.index, link.mac).expect("open");
        assert_eq!((sender.ifindex(), sender.mac()), (link.index, link.mac));
        // The daemon sends from clones on other tasks; a clone shares the socket.
        sender.clone().send(vip).expect("send");
        link.mac
    });

    let seen = receiver.join().unwrap().expect("entering b");
    let arp = seen
        .iter()
        .find(|a| a.sender_ip == vip)
        .unwrap_or_else(|| panic!("gratuitous ARP captured in b within 2 s; saw {seen:?}"));
    assert_eq!(
        *arp,
        ArpPacket {
            eth_destination: [0xff; 6],
            eth_source: mac,
            opcode: ARP_REQUEST,
            sender_mac: mac,
            sender_ip: vip,
            target_mac: [0; 6],
            target_ip: vip,
        }
    );
    assert!(arp.is_gratuitous());

    // The kernel of B took it as an announcement too (frames are processed in order, but
    // give the softirq a moment; bounded).
    let mac_text = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let mut neigh = String::new();
    for _ in 0..50 {
        neigh = ip(&["-n", &ns_b, "neigh", "show", "10.206.0.42"]);
        if neigh.contains(&mac_text) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(neigh.contains(&mac_text), "B's entry now {neigh:?}");
}

#[test]
fn capture_gives_up_after_its_timeout() {
    let pair = Pair::new();
    let dev = pair.veth_b.clone();
    let outcome = netns::spawn_in(pair.b.name(), move || {
        let name = std::ffi::CString::new(dev).unwrap();
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ArpCapture::open(ifindex)
            .expect("capture")
            .recv(Duration::from_millis(50))
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(outcome.expect("no error"), None);
}

#[test]
fn packet_sockets_on_a_missing_interface_name_it() {
    let err = GarpSender::open(987_655, [2, 0, 0, 0, 0, 1]).expect_err("no such index");
    assert!(err.to_string().contains("interface index 987655"), "{err}");
    let err = ArpCapture::open(987_656).expect_err("no such index");
    assert!(err.to_string().contains("interface index 987656"), "{err}");
}

#[test]
fn namespaces_are_created_listed_and_deleted_by_their_guard() {
    let name = unique("g");
    assert!(!netns::exists(&name));
    {
        let guard = NetnsGuard::create(&name).expect("create");
        assert_eq!(guard.name(), name);
        assert!(netns::exists(&name));
        assert!(netns::list().unwrap().contains(&name));
        assert!(ip(&["netns", "list"]).contains(&name));

        let err = netns::create(&name).expect_err("already exists");
        assert!(err.to_string().contains(&name), "{err}");
        assert!(
            matches!(err, OsError::Command { .. }),
            "a second create must not succeed and adopt it: {err}"
        );
    }
    assert!(!netns::exists(&name), "the guard deleted it");
    assert!(!netns::list().unwrap().contains(&name));
    netns::delete(&name).expect("deleting an absent namespace is fine");
}

#[test]
fn a_guard_deletes_its_namespace_when_a_test_panics() {
    let name = unique("p");
    let inside = name.clone();
    let result = std::thread::spawn(move || {
        let _guard = NetnsGuard::create(&inside).unwrap();
        assert!(netns::exists(&inside));
        panic!("deliberate panic while holding the guard");
    })
    .join();
    assert!(result.is_err());
    assert!(!netns::exists(&name));
}

#[test]
fn bad_namespace_names_are_refused_before_any_system_call() {
    for bad in ["", ".", "..", "a/b", "../../etc"] {
        assert!(!netns::exists(bad));
        for err in [
            netns::create(bad).unwrap_err(),
            netns::delete(bad).unwrap_err(),
            netns::enter(bad).unwrap_err(),
        ] {
            assert!(matches!(err, OsError::InvalidName { .. }), "{bad:?}: {err}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}

#[test]
fn entering_a_missing_namespace_names_it() {
    let err = netns::spawn_in("sf-no-such-namespace-xyz", || ())
        .join()
        .unwrap()
        .expect_err("missing namespace");
    assert!(
        err.to_string().contains("sf-no-such-namespace-xyz"),
        "{err}"
    );
}

#[test]
fn sysctl_writes_land_in_the_entered_namespace_only() {
    let ns = NetnsGuard::create(&unique("s")).unwrap();
    let key = "net/ipv4/conf/all/arp_ignore";
    let host_before = sysctl::read(key).expect("host value");
    let wanted = if host_before == "1" { "2" } else { "1" };
    let inside = netns::spawn_in(ns.name(), move || {
        sysctl::write(key, wanted).expect("write in the namespace");
        sysctl::read(key).expect("read in the namespace")
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(inside, wanted);
    let seen_by_ip = ip(&[
        "netns",
        "exec",
        ns.name(),
        "cat",
        "/proc/sys/net/ipv4/conf/all/arp_ignore",
    ]);
    assert_eq!(seen_by_ip.trim(), wanted);
    assert_eq!(sysctl::read(key).unwrap(), host_before, "host untouched");

    let err = sysctl::write("net/ipv4/conf/sf-nonesuch0/arp_ignore", "1").unwrap_err();
    assert!(
        err.to_string()
            .contains("net/ipv4/conf/sf-nonesuch0/arp_ignore"),
        "{err}"
    );
    assert!(matches!(
        sysctl::write("../etc/hostname", "x"),
        Err(OsError::InvalidName { .. })
    ));
}

#[test]
fn realtime_priority_is_per_thread_and_not_inherited() {
    std::thread::spawn(|| {
        sched::set_realtime_priority(10).expect("SCHED_FIFO (needs root)");
        // SAFETY: plain query of the calling thread's policy.
        let policy = unsafe { libc::sched_getscheduler(0) };
        assert_eq!(policy, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK);

        // A thread started from the realtime thread runs at the normal policy.
        let child_thread_policy = std::thread::spawn(|| unsafe { libc::sched_getscheduler(0) })
            .join()
            .unwrap();
        assert_eq!(child_thread_policy, libc::SCHED_OTHER);

        // So does a process. Field 41 of /proc/PID/stat is its policy (0 = SCHED_OTHER).
        let out = Command::new("cat").arg("/proc/self/stat").output().unwrap();
        let stat = String::from_utf8_lossy(&out.stdout).into_owned();
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        let policy_field = after_comm.split(' ').nth(41 - 3).unwrap();
        assert_eq!(policy_field, "0", "child policy in {stat}");
    })
    .join()
    .unwrap();

    // The test's own thread was never touched.
    // SAFETY: plain query of the calling thread's policy.
    assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);

    let err = std::thread::spawn(|| sched::set_realtime_priority(1000))
        .join()
        .unwrap()
        .expect_err("priority out of range");
    assert!(err.to_string().contains("1000"), "{err}");
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
}

/// Whether a TCP connection from namespace `from` to `to` opens within 300 ms.
fn connects(from: &str, to: std::net::SocketAddr) -> bool {
    netns::spawn_in(from, move || {
        std::net::TcpStream::connect_timeout(&to, Duration::from_millis(300)).is_ok()
    })
    .join()
    .expect("connecting thread")
    .expect("entering the namespace")
}

#[test]
fn the_fence_lets_an_address_through_only_while_its_kernel_lease_lasts() {
    let pair = Pair::new();
    let vip = Ipv4Addr::new(10, 213, 0, 100);
    pair.address("10.213.0.100/24", "10.213.0.2/24");
    let to = std::net::SocketAddr::from((vip, 8080));
    let b = pair.b.name().to_string();
    // Everything on namespace a happens on one thread inside it: the fence's netlink socket
    // and the listener belong to a.
    let timings = netns::spawn_in(pair.a.name(), move || {
        let _listener = std::net::TcpListener::bind(to).expect("listening on the address");
        assert!(connects(&b, to), "before the fence is armed");
        let mut fence = steadfast_os::fence::Fence::arm("edge", &[vip]).expect("arming");
        assert!(
            !connects(&b, to),
            "armed, no lease: the address must be dark"
        );

        fence
            .hold_lease(Some(Duration::from_millis(900)))
            .expect("granting");
        let granted = Instant::now();
        assert!(connects(&b, to), "within the lease");
        std::thread::sleep(Duration::from_millis(1000).saturating_sub(granted.elapsed()));
        assert!(!connects(&b, to), "the lease ran out without renewal");

        fence
            .hold_lease(Some(Duration::from_secs(30)))
            .expect("granting again");
        assert!(connects(&b, to), "lease granted again");
        fence.hold_lease(None).expect("ending");
        assert!(!connects(&b, to), "the lease was ended");
        // Under a millisecond left is no lease at all.
        fence
            .hold_lease(Some(Duration::from_micros(500)))
            .expect("too short");
        assert!(!connects(&b, to), "a lease under a millisecond");

        // What a renewal costs (the election's realtime thread pays it every heartbeat).
        let started = Instant::now();
        for _ in 0..200 {
            fence
                .hold_lease(Some(Duration::from_millis(30)))
                .expect("renewing");
        }
        let per_renewal = started.elapsed() / 200;
        fence.hold_lease(None).expect("ending");
        drop(fence);
        per_renewal
    })
    .join()
    .expect("namespace thread")
    .expect("entering the namespace");
    eprintln!("kernel lease renewal: {timings:?} each");
    // Not a speed target (a few microseconds, see the nft bench) but the design's premise: a
    // renewal takes no lock, so it never holds up the heartbeats. One that waited for the
    // nf_tables commit lock, as a transaction does, took 3-26 ms under load.
    assert!(
        timings < Duration::from_millis(2),
        "a kernel lease renewal took {timings:?} on average: it must not wait for a lock"
    );
}

/// Two groups on one host, one daemon each: their fences arm side by side (each its own
/// tables, where one group's owner tables once made the other's arming fail with EPERM), each
/// kernel lease opens only its own address, and one daemon's death darkens only its own.
#[test]
fn two_groups_fence_their_own_addresses_side_by_side() {
    let pair = Pair::new();
    let (vip_a, vip_b) = (
        Ipv4Addr::new(10, 213, 0, 100),
        Ipv4Addr::new(10, 213, 0, 101),
    );
    pair.address("10.213.0.100/24", "10.213.0.2/24");
    ip(&[
        "-n",
        pair.a.name(),
        "addr",
        "add",
        "10.213.0.101/24",
        "dev",
        &pair.veth_a,
    ]);
    let (to_a, to_b) = (
        std::net::SocketAddr::from((vip_a, 8080)),
        std::net::SocketAddr::from((vip_b, 8080)),
    );
    let b = pair.b.name().to_string();
    netns::spawn_in(pair.a.name(), move || {
        let _listeners = [to_a, to_b].map(|to| std::net::TcpListener::bind(to).expect("listening"));
        let mut web = steadfast_os::fence::Fence::arm("web", &[vip_a]).expect("arming web");
        let mut mail =
            steadfast_os::fence::Fence::arm("mail", &[vip_b]).expect("arming mail beside web");
        assert!(web.is_armed() && mail.is_armed());
        assert!(!connects(&b, to_a) && !connects(&b, to_b), "no lease yet");

        web.hold_lease(Some(Duration::from_secs(30)))
            .expect("web's lease");
        assert!(connects(&b, to_a), "web's address within web's lease");
        assert!(!connects(&b, to_b), "web's lease opens nothing of mail's");
        mail.hold_lease(Some(Duration::from_secs(30)))
            .expect("mail's lease");
        assert!(connects(&b, to_a) && connects(&b, to_b), "both leased");

        web.hold_lease(None).expect("ending web's lease");
        assert!(!connects(&b, to_a), "web's lease ended");
        assert!(connects(&b, to_b), "mail's lease goes on");
        web.hold_lease(Some(Duration::from_secs(30)))
            .expect("web's lease again");

        // Web's daemon dies: its owner tables go, and with them only its address.
        drop(web);
        let dropped_at = Instant::now();
        while connects(&b, to_a) {
            assert!(
                dropped_at.elapsed() < Duration::from_secs(2),
                "web's address stayed open 2 s after its daemon died"
            );
        }
        assert!(connects(&b, to_b), "mail's address outlives web's daemon");
        assert!(mail.is_armed());
        drop(mail);
        steadfast_os::fence::disarm("web").expect("disarming web");
        steadfast_os::fence::disarm("mail").expect("disarming mail");
    })
    .join()
    .expect("namespace thread")
    .expect("entering the namespace");
}

/// Steadfast's tables in namespace `ns`, read from the kernel over netlink.
fn ruleset_in(ns: &str) -> steadfast_os::nftables::Ruleset {
    netns::spawn_in(ns, || {
        steadfast_os::nftables::NftSocket::open()?
            .read_ruleset(&steadfast_os::nftables::is_steadfast_table)
    })
    .join()
    .expect("namespace thread")
    .expect("entering the namespace")
    .expect("reading the ruleset")
}

fn rendered(ruleset: &steadfast_os::nftables::Ruleset) -> String {
    steadfast_os::nftables::render::ruleset(ruleset, &steadfast_os::nftables::render::NoNames)
}

/// The rules of a chain, one line each, as nft writes them.
fn chain_text(
    ruleset: &steadfast_os::nftables::Ruleset,
    family: Family,
    table: &str,
    chain: &str,
) -> Vec<String> {
    let contents = ruleset
        .table(family, table)
        .unwrap_or_else(|| panic!("no table {family} {table} in\n{}", rendered(ruleset)));
    let chain = contents
        .chain(chain)
        .unwrap_or_else(|| panic!("no chain {chain} in table {family} {table}"));
    chain
        .rules
        .iter()
        .map(|r| render::rule(r, &contents.sets, &render::NoNames))
        .collect()
}

#[test]
fn the_armed_fence_reads_back_as_the_ruleset_the_nft_text_made() {
    let ns = NetnsGuard::create(&unique("fence")).expect("namespace");
    let vip = Ipv4Addr::new(10, 213, 0, 100);
    let mut fence = netns::spawn_in(ns.name(), move || {
        steadfast_os::fence::Fence::arm("edge", &[vip]).expect("arming")
    })
    .join()
    .expect("namespace thread")
    .expect("entering the namespace");
    assert!(fence.is_armed(), "the fence's socket owns both live tables");

    let armed = ruleset_in(ns.name());
    let text = rendered(&armed);
    for family in [Family::Inet, Family::Arp] {
        let live = armed
            .table(family, "steadfast_live_edge")
            .unwrap_or_else(|| panic!("no {family} owner table in\n{text}"));
        assert_eq!(live.table.flags, steadfast_os::nftables::model::TABLE_OWNER);
        assert!(
            live.table.owner.is_some(),
            "{family} owner table without an owner"
        );
    }
    let live_inet = "\
table inet steadfast_live_edge { # owner unknown
\tflags owner

\tchain input {
\t\ttype filter hook input priority filter - 10; policy accept;
\t\tip daddr 10.213.0.100 meta mark set 0x00005f1d
\t}

\tchain output {
\t\ttype filter hook output priority filter - 10; policy accept;
\t\tip saddr 10.213.0.100 meta mark set 0x00005f1d
\t}
}
";
    let live_inet_seen = text
        .split("table ")
        .find(|t| t.starts_with("inet steadfast_live_edge"))
        .map(|t| {
            format!(
                "table {}",
                t.replace(
                    &format!(
                        "# owner: netlink port {}",
                        armed
                            .table(Family::Inet, "steadfast_live_edge")
                            .unwrap()
                            .table
                            .owner
                            .unwrap()
                    ),
                    "# owner unknown"
                )
            )
        });
    assert_eq!(live_inet_seen.as_deref(), Some(live_inet), "{text}");
    assert_eq!(
        chain_text(&armed, Family::Arp, "steadfast_live_edge", "output"),
        ["arp saddr ip 10.213.0.100 meta mark set 0x00005f1d"]
    );
    assert_eq!(
        chain_text(&armed, Family::Inet, "steadfast_fence_edge", "input"),
        [
            "ip daddr 10.213.0.100 meta mark != 0x00005f1d counter packets 0 bytes 0 drop",
            "ip daddr 10.213.0.100 ip daddr != @lease counter packets 0 bytes 0 drop",
        ]
    );
    assert_eq!(
        chain_text(&armed, Family::Inet, "steadfast_fence_edge", "output"),
        [
            "ip saddr 10.213.0.100 meta mark != 0x00005f1d counter packets 0 bytes 0 drop",
            "ip saddr 10.213.0.100 ip saddr != @lease counter packets 0 bytes 0 drop",
        ]
    );
    assert_eq!(
        chain_text(&armed, Family::Arp, "steadfast_fence_edge", "input"),
        ["arp daddr ip 10.213.0.100 meta mark != 0x00005f1d counter packets 0 bytes 0 drop"]
    );
    assert!(
        text.contains(
            "\tset lease {\n\t\ttype ipv4_addr\n\t\tsize 65535\n\t\tflags dynamic,timeout\n\t}\n"
        ),
        "{text}"
    );
    assert_eq!(
        chain_text(&armed, Family::Inet, "steadfast_fence_edge", "lease_end"),
        ["delete @lease { ip daddr } drop"]
    );
    // A chain per lease step, each updating the set with its timeout (as the kernel keeps it:
    // in clock ticks), and the keeper's map from each step's mark to its chain.
    let steps = steadfast_os::fence::lease_steps();
    let fence_inet = armed.table(Family::Inet, "steadfast_fence_edge").unwrap();
    let mut keeper = vec!["0x5f1e0000 : jump lease_end".to_string()];
    for (i, step) in steps.iter().enumerate() {
        let rules = chain_text(
            &armed,
            Family::Inet,
            "steadfast_fence_edge",
            &format!("lease_{step}"),
        );
        assert_eq!(rules.len(), 1);
        assert!(
            rules[0].starts_with("update @lease { ip daddr timeout ")
                && rules[0].ends_with(" } drop"),
            "{rules:?}"
        );
        keeper.push(format!(
            "0x{:08x} : jump lease_{step}",
            0x5f1e_0001 + i as u32
        ));
    }
    assert_eq!(
        fence_inet.chains.len(),
        steps.len() + 4,
        "lease_end, the steps, lease_keeper, input, output"
    );
    assert_eq!(
        chain_text(&armed, Family::Inet, "steadfast_fence_edge", "lease_keeper"),
        [format!(
            "ip daddr 10.213.0.100 meta mark vmap {{ {} }}",
            keeper.join(", ")
        )]
    );
    assert!(
        text.contains(
            "\tchain lease_keeper {\n\t\ttype filter hook output priority -20; policy accept;\n"
        ),
        "{text}"
    );

    // The owner tables go with the fence's socket; the fence stays and keeps the address dark.
    // (The kernel releases an owner table after its socket, not within the close: wait.)
    drop(fence);
    let dropped_at = Instant::now();
    let mut dropped = ruleset_in(ns.name());
    while dropped.table(Family::Inet, "steadfast_live_edge").is_some()
        || dropped.table(Family::Arp, "steadfast_live_edge").is_some()
    {
        assert!(
            dropped_at.elapsed() < Duration::from_secs(2),
            "the owner tables outlived their socket by 2 s:\n{}",
            rendered(&dropped)
        );
        std::thread::sleep(Duration::from_millis(5));
        dropped = ruleset_in(ns.name());
    }
    eprintln!(
        "owner tables gone {:?} after the socket closed",
        dropped_at.elapsed()
    );
    for family in [Family::Inet, Family::Arp] {
        assert!(dropped.table(family, "steadfast_fence_edge").is_some());
    }
    netns::spawn_in(ns.name(), || steadfast_os::fence::disarm("edge"))
        .join()
        .expect("namespace thread")
        .expect("entering the namespace")
        .expect("disarming");
    assert!(ruleset_in(ns.name()).tables.is_empty());
}

#[test]
fn a_refused_transaction_names_the_change_and_applies_nothing() {
    use steadfast_os::nftables::{Batch, RuleBuilder, Table, Verdict};
    let ns = NetnsGuard::create(&unique("refused")).expect("namespace");
    let error = netns::spawn_in(ns.name(), || {
        let mut batch = Batch::new();
        batch.add_table(Table::new(Family::Inet, "steadfast_probe"));
        batch.add_rule(
            RuleBuilder::new(Family::Inet)
                .verdict(Verdict::Accept)
                .build("steadfast_probe", "no_such_chain"),
        );
        steadfast_os::nftables::NftSocket::open()
            .expect("socket")
            .apply(&batch, "a probe")
            .expect_err("the chain does not exist")
    })
    .join()
    .expect("namespace thread")
    .expect("entering the namespace");
    let message = error.to_string();
    assert_eq!(error.raw_os_error(), Some(libc::ENOENT), "{message}");
    assert!(
        message.contains("a probe: adding rule 1 to chain inet steadfast_probe no_such_chain"),
        "{message}"
    );
    assert!(
        ruleset_in(ns.name()).tables.is_empty(),
        "the table of the refused transaction must not exist"
    );
}

fn mac_of(ns: &str, dev: &str) -> [u8; 6] {
    let text = ip(&["-n", ns, "link", "show", "dev", dev]);
    let word = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {text}"));
    let bytes: Vec<u8> = word
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect();
    bytes.try_into().expect("6 bytes")
}

#[test]
fn the_ingress_guard_drops_bounces_and_counts_frames_in_the_kernel() {
    use steadfast_os::ingress_guard::{GuardState, IngressGuard};
    let pair = Pair::new();
    pair.address("10.214.0.100/24", "10.214.0.2/24");
    let vip = Ipv4Addr::new(10, 214, 0, 100);
    let to = std::net::SocketAddr::from((vip, 8080));
    let own_mac = mac_of(pair.a.name(), &pair.veth_a);
    let client_mac = mac_of(pair.b.name(), &pair.veth_b);
    let not_the_client = [0x02, 0, 0, 0, 0x5f, 0x99];
    let veth_a = pair.veth_a.clone();
    let (mut guard, _listener) = netns::spawn_in(pair.a.name(), move || {
        let listener = std::net::TcpListener::bind(to).expect("listening on the address");
        let guard = IngressGuard::install("edge", &veth_a, own_mac, vip, &[8080, 8443])
            .expect("installing");
        (guard, listener)
    })
    .join()
    .expect("namespace thread")
    .expect("entering the namespace");
    let b = pair.b.name().to_string();
    assert!(connects(&b, to), "an open guard lets the client in");
    assert_eq!(guard.counts().expect("counting"), Default::default());

    guard.apply(GuardState::DropAll).expect("dropping all");
    assert!(
        !connects(&b, to),
        "everything to the service ports is dropped"
    );
    let counts = guard.counts().expect("counting");
    assert!(counts.dropped >= 1 && counts.bounced == 0, "{counts:?}");

    // Frames not from the "backup" go back out to it, rewritten: the client never gets an
    // answer and the bounce counter counts them.
    guard
        .apply(GuardState::OnlyFrom(not_the_client))
        .expect("only from another MAC");
    assert!(
        !connects(&b, to),
        "a client that is not the backup is bounced"
    );
    let bounced = guard.counts().expect("counting");
    assert!(bounced.bounced >= 1, "{bounced:?}");
    assert_eq!(
        bounced.dropped, counts.dropped,
        "IPv4 frames are bounced, not dropped"
    );
    let text = rendered(&ruleset_in(pair.a.name()));
    assert!(
        text.contains(&format!(
            "ip daddr 10.214.0.100 tcp dport {{ 8080, 8443 }} counter name \"guard_bounced\" ether saddr set {} ether daddr set 02:00:00:00:5f:99 fwd to {}",
            mac_text(own_mac),
            // NoNames: the interface by its index.
            ip(&["-n", pair.a.name(), "-o", "link", "show", "dev", &pair.veth_a]).split(':').next().unwrap()
        )),
        "{text}"
    );

    guard
        .apply(GuardState::OnlyFrom(client_mac))
        .expect("only from the client");
    assert!(connects(&b, to), "frames from the backup's MAC pass");
    guard.open().expect("opening");
    assert!(connects(&b, to), "open again");
    // The counters live on across state changes (named counters, not the rules').
    assert_eq!(guard.counts().expect("counting"), bounced);

    guard.remove().expect("removing");
    assert!(ruleset_in(pair.a.name()).tables.is_empty());
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The fence is armed again the moment its last life ends, twenty times over. (A daemon
/// restarted at once after its process died finds its previous life's owner tables still
/// being released, and the kernel refuses them with EPERM until they go: arming waits. Only a
/// process death shows that; the duplex tests' heals restart daemons that way.)
#[test]
fn the_fence_can_be_armed_again_the_moment_its_last_life_ends() {
    let ns = NetnsGuard::create(&format!("sfos-{}-rearm", std::process::id())).expect("namespace");
    let vip = Ipv4Addr::new(10, 219, 0, 100);
    netns::spawn_in(ns.name(), move || {
        // Held for the whole test: it takes the process's first netlink port id, so each
        // fence's socket gets a port id of its own, as a new process's would (a socket that
        // reused its predecessor's id would find the tables its own).
        let _first = steadfast_os::nftables::NftSocket::open().expect("a netlink socket");
        for round in 0..20 {
            let fence = steadfast_os::fence::Fence::arm("edge", &[vip])
                .unwrap_or_else(|e| panic!("round {round}: arming: {e}"));
            drop(fence);
        }
        steadfast_os::fence::disarm("edge").expect("disarming");
    })
    .join()
    .expect("namespace thread")
    .expect("entering the namespace");
}

/// What the child process of the test below does when this variable names its namespace,
/// address and peer: arm the fence, open connections from the address, say "ready", wait to
/// be killed.
const FENCE_CHILD: &str = "STEADFAST_TEST_FENCE_CHILD";
const DEATH_CONNECTIONS: usize = 40;

/// The child's part: the fence armed and leased for a minute (so only the owner table's
/// going can darken the address), then connections that hold unread bytes (their close sends
/// RST) and connections that hold none (their close sends FIN), opened after the fence as a
/// daemon's are.
fn fence_child(spec: &str) {
    use std::io::Write;
    let mut parts = spec.split(',');
    let (ns, vip, peer) = (
        parts.next().expect("namespace").to_string(),
        parts
            .next()
            .expect("address")
            .parse::<Ipv4Addr>()
            .expect("address"),
        parts
            .next()
            .expect("peer")
            .parse::<std::net::SocketAddr>()
            .expect("peer"),
    );
    netns::spawn_in(&ns, move || {
        let mut fence = steadfast_os::fence::Fence::arm("edge", &[vip]).expect("arming");
        fence
            .hold_lease(Some(Duration::from_secs(60)))
            .expect("leasing");
        let streams: Vec<std::net::TcpStream> = (0..DEATH_CONNECTIONS)
            .map(|_| {
                std::net::TcpStream::connect_timeout(&peer, Duration::from_secs(2))
                    .expect("connecting")
            })
            .collect();
        for (i, stream) in streams.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut byte = [0u8; 1];
            assert_eq!(
                stream.peek(&mut byte).expect("peeking"),
                1,
                "connection {i}"
            );
        }
        // On a line of its own: libtest has written "test <name> ... " without a newline.
        println!("\nfence child ready");
        std::io::stdout().flush().unwrap();
        std::thread::sleep(Duration::from_secs(60));
        drop((fence, streams));
    })
    .join()
    .expect("namespace thread")
    .expect("entering the namespace");
}

/// I5, daemon death is node death, at the moment of death: a process killed with connections
/// open (some with bytes it never read) closes them as it dies, and its kernel would send FIN
/// or RST on each; none may leave the node, or the client that gets it is lost to the node
/// that takes over. The fence's owner table must go before the connections do.
#[test]
fn a_process_killed_with_connections_open_sends_nothing_from_the_address() {
    if let Ok(spec) = std::env::var(FENCE_CHILD) {
        fence_child(&spec);
        return;
    }
    use std::io::{BufRead, Read, Write};
    let pair = Pair::new();
    pair.address("10.221.0.100/24", "10.221.0.2/24");
    let peer = std::net::SocketAddr::from(([10, 221, 0, 2], 8080));
    let listener = netns::spawn_in(pair.b.name(), move || {
        std::net::TcpListener::bind(peer).expect("listening in b")
    })
    .join()
    .expect("namespace thread")
    .expect("entering b");
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "a_process_killed_with_connections_open_sends_nothing_from_the_address",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            FENCE_CHILD,
            format!("{},10.221.0.100,{peer}", pair.a.name()),
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the child");
    let mut accepted = Vec::new();
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while accepted.len() < DEATH_CONNECTIONS && Instant::now() < deadline {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                if accepted.len() % 2 == 0 {
                    stream
                        .write_all(&[7u8; 1000])
                        .expect("sending unread bytes");
                }
                accepted.push(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => panic!("accepting: {e}"),
        }
    }
    assert_eq!(accepted.len(), DEATH_CONNECTIONS, "the child connected");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|line| line.map(|l| l == "fence child ready").unwrap_or(false)),
        "the child never got ready (its output above)"
    );
    child.kill().expect("killing the child");
    let status = child.wait().expect("reaping the child");
    assert!(!status.success(), "the child was killed: {status}");
    // Give whatever the dying kernel sockets sent time to arrive.
    std::thread::sleep(Duration::from_millis(300));
    let mut heard = Vec::new();
    for (i, stream) in accepted.iter_mut().enumerate() {
        stream.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        match stream.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok(0) => heard.push(format!("connection {i}: FIN")),
            Ok(n) => heard.push(format!("connection {i}: {n} bytes")),
            Err(e) => heard.push(format!("connection {i}: {e}")),
        }
    }
    assert!(
        heard.is_empty(),
        "the dead process's kernel spoke for the address: {heard:?}"
    );
}

/// The hand-over's look for client bytes a read cannot return yet: a segment beyond a gap sits
/// in the kernel's out-of-order queue and is seen there until the gap is filled and read.
#[test]
fn bytes_beyond_a_gap_are_seen_until_the_gap_is_filled_and_read() {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use steadfast_os::repair::{holds_bytes_beyond_a_gap, live_sequences};
    let ns = NetnsGuard::create(&unique("gap")).unwrap();
    ip(&["-n", ns.name(), "link", "set", "lo", "up"]);
    netns::spawn_in(ns.name(), || {
        // Without timestamps a hand-made segment needs no clock to pass PAWS.
        sysctl::write("net/ipv4/tcp_timestamps", "0").expect("timestamps off");
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
        let server_at = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(server_at).expect("connect");
        let (mut server, client_at) = listener.accept().expect("accept");
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        client.write_all(b"first").unwrap();
        let mut first = [0u8; 5];
        server.read_exact(&mut first).expect("the first bytes");
        assert!(
            !holds_bytes_beyond_a_gap(&server).unwrap(),
            "a socket whose queue was read holds nothing"
        );

        // Ten bytes the client has not sent yet are the gap; the segment after it is forged.
        let (client_acks, client_next) = live_sequences(&client).expect("client numbers");
        let (SocketAddr::V4(from), SocketAddr::V4(to)) = (client_at, server_at) else {
            unreachable!("IPv4 sockets")
        };
        let beyond = b"beyond";
        let mut packet = Vec::new();
        etherparse::PacketBuilder::ipv4(from.ip().octets(), to.ip().octets(), 64)
            .tcp(from.port(), to.port(), client_next.wrapping_add(10), 65535)
            .ack(client_acks)
            .psh()
            .write(&mut packet, beyond)
            .expect("building the segment");
        steadfast_os::raw_ip::RawIpSender::open()
            .expect("raw socket")
            .send(&packet, *to.ip())
            .expect("sending the segment");
        let deadline = Instant::now() + Duration::from_secs(1);
        while !holds_bytes_beyond_a_gap(&server).unwrap() {
            assert!(
                Instant::now() < deadline,
                "the segment beyond the gap was never seen"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut unread: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        assert_eq!(
            unsafe {
                libc::ioctl(
                    std::os::fd::AsRawFd::as_raw_fd(&server),
                    libc::FIONREAD,
                    &mut unread,
                )
            },
            0
        );
        assert_eq!(unread, 0, "nothing beyond a gap is readable");

        client.write_all(b"0123456789").unwrap();
        let mut joined = [0u8; 16];
        server
            .read_exact(&mut joined)
            .expect("the gap and what was beyond it");
        assert_eq!(&joined, b"0123456789beyond");
        assert!(
            !holds_bytes_beyond_a_gap(&server).unwrap(),
            "once the gap is filled and read, nothing is held"
        );
    })
    .join()
    .expect("the test thread")
    .expect("entering the namespace");
}

/// A listener whose handshakes SYN cookies complete (here always: tcp_syncookies = 2; in
/// production when a flood fills its SYN queue) saves no SYN; the client's ISN then comes
/// from the accepted socket's receive sequence, and it is the ISN the client really chose.
#[test]
fn the_isn_of_a_handshake_a_syn_cookie_completed_comes_from_the_receive_sequence() {
    use std::io::Write;
    use steadfast_os::repair;
    let ns = NetnsGuard::create(&unique("c")).unwrap();
    ip(&["-n", ns.name(), "link", "set", "lo", "up"]);
    let (cookie, saved) = netns::spawn_in(ns.name(), || {
        let mut isns = Vec::new();
        for cookies in ["2", "0"] {
            sysctl::write("net/ipv4/tcp_syncookies", cookies).expect("tcp_syncookies");
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
            repair::enable_saved_syn(&listener).expect("TCP_SAVE_SYN");
            let mut client =
                std::net::TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
            // Before any byte is sent, the client's next sequence number is its ISN + 1.
            let (_, client_next) = repair::live_sequences(&client).expect("client sequences");
            client.write_all(b"hello").expect("send");
            let (accepted, _) = listener.accept().expect("accept");
            // Let the bytes land, so that the ISN is read with data waiting unread.
            let waited = Instant::now();
            while repair::queued_bytes(&accepted).unwrap().0 < 5 {
                assert!(
                    waited.elapsed() < Duration::from_secs(2),
                    "the bytes arrive"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            let from_socket = repair::client_isn_of_unread_socket(&accepted).expect("ISN");
            let saved = repair::saved_syn(&accepted).ok().map(|syn| syn.client_isn);
            isns.push((client_next.wrapping_sub(1), from_socket, saved));
        }
        isns
    })
    .join()
    .unwrap()
    .map(|isns| (isns[0], isns[1]))
    .unwrap();
    let (chosen, from_socket, saved_syn) = cookie;
    assert_eq!(saved_syn, None, "a cookie handshake saves no SYN");
    assert_eq!(from_socket, chosen, "the ISN the client chose");
    let (chosen, from_socket, saved_syn) = saved;
    assert_eq!(
        (from_socket, saved_syn),
        (chosen, Some(chosen)),
        "with a saved SYN both agree"
    );
}

/// An Ethernet frame carrying IPv4 TCP to `vip:port` with `payload_len` bytes of payload, each
/// byte `fill`. (Only the packet socket reads it: its checksums are not filled in.)
fn tcp_frame_to(
    dst: [u8; 6],
    src: [u8; 6],
    vip: Ipv4Addr,
    port: u16,
    payload_len: usize,
    fill: u8,
) -> Vec<u8> {
    let mut frame = Vec::with_capacity(54 + payload_len);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 20 + payload_len) as u16;
    frame.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        6,
        0,
        0,
    ]);
    frame.extend_from_slice(&[10, 9, 0, 2]);
    frame.extend_from_slice(&vip.octets());
    frame.extend_from_slice(&40_000u16.to_be_bytes());
    frame.extend_from_slice(&port.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    frame.resize(54 + payload_len, fill);
    frame
}

/// A sending and a logging packet port on the two ends of a veth pair whose MTU lets frames
/// larger than a ring slot through.
fn packet_ports(pair: &Pair, vip: Ipv4Addr) -> (PacketPort, PacketPort) {
    for (ns, dev) in [(pair.a.name(), &pair.veth_a), (pair.b.name(), &pair.veth_b)] {
        ip(&["-n", ns, "link", "set", dev, "mtu", "9000"]);
    }
    let filter = IngressFilter {
        vip,
        ports: vec![80],
    };
    let open = |ns: &str, dev: &str| {
        let (dev, filter) = (dev.to_string(), filter.clone());
        netns::spawn_in(ns, move || PacketPort::open(&dev, &filter))
            .join()
            .expect("opening thread")
            .expect("entering the namespace")
            .expect("packet port")
    };
    (
        open(pair.a.name(), &pair.veth_a),
        open(pair.b.name(), &pair.veth_b),
    )
}

/// Drains `port` until `count` frames came or two seconds passed; each frame's bytes.
fn drain_frames(port: &mut PacketPort, count: usize) -> Vec<(Vec<u8>, bool)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while got.len() < count && Instant::now() < deadline {
        if port.drain(usize::MAX, |frame| {
            got.push((frame.data.to_vec(), frame.truncated))
        }) == 0
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    got
}

#[test]
fn frames_larger_than_a_ring_slot_arrive_whole_and_in_order() {
    let pair = Pair::new();
    let vip: Ipv4Addr = "10.9.0.1".parse().unwrap();
    let (sender, mut logger) = packet_ports(&pair, vip);
    let ours = mac_of(pair.b.name(), &pair.veth_b);
    let theirs = mac_of(pair.a.name(), &pair.veth_a);
    let elsewhere = [0x02, 0, 0, 0, 0, 0x99];
    let sent = [
        tcp_frame_to(ours, theirs, vip, 80, 100, b'a'),
        // Not for this host, larger than a slot: its queued copy is skipped in step.
        tcp_frame_to(elsewhere, theirs, vip, 80, 6000, b'x'),
        tcp_frame_to(ours, theirs, vip, 80, 8000, b'b'),
        tcp_frame_to(ours, theirs, vip, 80, 1400, b'c'),
        tcp_frame_to(ours, theirs, vip, 80, 8900, b'd'),
        tcp_frame_to(ours, theirs, vip, 80, 10, b'e'),
    ];
    for frame in &sent {
        sender.send(frame).expect("send");
    }
    let expected: Vec<(Vec<u8>, bool)> = sent
        .iter()
        .filter(|frame| frame[..6] == ours)
        .map(|frame| (frame.clone(), false))
        .collect();
    let got = drain_frames(&mut logger, expected.len());
    let shape = |frames: &[(Vec<u8>, bool)]| -> Vec<(usize, u8, bool)> {
        frames
            .iter()
            .map(|(data, truncated)| (data.len(), *data.last().unwrap(), *truncated))
            .collect()
    };
    assert_eq!(shape(&got), shape(&expected));
    assert!(got == expected, "the bytes are the frames sent");
    assert_eq!(logger.counters().ring_drops, 0);
}

#[test]
fn a_burst_of_ten_thousand_small_frames_waits_in_the_ring_whole() {
    const BURST: usize = 10_000;
    let pair = Pair::new();
    let vip: Ipv4Addr = "10.9.0.1".parse().unwrap();
    let (sender, mut logger) = packet_ports(&pair, vip);
    let (ours, theirs) = (
        mac_of(pair.b.name(), &pair.veth_b),
        mac_of(pair.a.name(), &pair.veth_a),
    );
    // Sent before the logger reads any, as 10,000 clients sending a byte each at once.
    for i in 0..BURST {
        let frame = tcp_frame_to(ours, theirs, vip, 80, 1, i as u8);
        sender.send(&frame).expect("send");
    }
    let got = drain_frames(&mut logger, BURST);
    assert_eq!(
        logger.counters().ring_drops,
        0,
        "none dropped for a full ring"
    );
    assert_eq!(got.len(), BURST);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, (data, _))| *data.last().unwrap() == i as u8),
        "in order"
    );
}

/// Drains `catcher` for up to 2 s, until a packet to `destination` arrives; every packet kept.
fn caught_until(
    catcher: &steadfast_os::relay_catch::FrameCatcher,
    destination: Ipv4Addr,
) -> Vec<Vec<u8>> {
    let mut kept = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        catcher
            .drain(64, |p| kept.push(p.to_vec()))
            .expect("draining the catcher");
        let found = kept.iter().any(|p| {
            steadfast_os::relay_catch::addresses(p).is_some_and(|(_, d)| d == destination)
        });
        if found {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    kept
}

/// The receiver's check of a TCP checksum: the one's complement sum over pseudo-header and
/// segment, checksum included, is all ones.
fn tcp_checksum_valid(packet: &[u8]) -> bool {
    let header = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([
                pair[0],
                pair.get(1).copied().unwrap_or(0),
            ]));
        }
    };
    add(&packet[12..20]);
    add(&[0, 6]);
    add(&((total - header) as u16).to_be_bytes());
    add(&packet[header..total]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

#[test]
fn catchers_keep_flooded_and_routed_tcp_with_a_whole_checksum_and_nothing_else() {
    use steadfast_os::relay_catch::{CatchKind, FrameCatcher};
    let pair = Pair::new();
    pair.address("10.207.0.1/24", "10.207.0.2/24");
    let (ns_a, veth_a) = (pair.a.name().to_string(), pair.veth_a.clone());
    let (ns_b, veth_b) = (pair.b.name().to_string(), pair.veth_b.clone());
    // A sends 10.207.0.50 to a MAC that is not B's (as a switch floods a dead port's frames),
    // and 10.207.5.5 through B (as a relayed node sends its replies); also UDP to the first.
    ip(&[
        "-n",
        &ns_a,
        "neigh",
        "add",
        "10.207.0.50",
        "lladdr",
        "02:00:00:00:00:77",
        "dev",
        &veth_a,
    ]);
    ip(&[
        "-n",
        &ns_a,
        "route",
        "add",
        "10.207.5.5/32",
        "via",
        "10.207.0.2",
    ]);
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let catching = netns::spawn_in(&ns_b, move || {
        let name = std::ffi::CString::new(veth_b).unwrap();
        // SAFETY: name is a valid C string; if_nametoindex looks it up in this thread's namespace.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex > 0, "veth in b");
        let flooded = FrameCatcher::open(ifindex, &CatchKind::Flooded).expect("flooded catcher");
        let routed_with = |exclude| {
            FrameCatcher::open(ifindex, &CatchKind::Routed { exclude }).expect("routed catcher")
        };
        let routed = routed_with(vec![Ipv4Addr::new(10, 207, 0, 9)]);
        let routed_from_a = routed_with(vec![Ipv4Addr::new(10, 207, 0, 1)]);
        ready_tx.send(()).unwrap();
        let flooded = caught_until(&flooded, Ipv4Addr::new(10, 207, 0, 50));
        let routed = caught_until(&routed, Ipv4Addr::new(10, 207, 5, 5));
        let excluded = caught_until(&routed_from_a, Ipv4Addr::new(10, 207, 5, 5));
        (flooded, routed, excluded)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("catchers open");
    // Real connects, so that the SYNs leave A's stack as any client's do (on a veth, with the
    // checksum left to the device). Nothing answers: bounded by the connect timeout.
    netns::spawn_in(&ns_a, || {
        let udp = std::net::UdpSocket::bind("10.207.0.1:0").expect("udp socket");
        udp.send_to(b"not tcp", "10.207.0.50:80").expect("udp send");
        let timeout = Duration::from_millis(300);
        let _ = std::net::TcpStream::connect_timeout(&"10.207.0.50:80".parse().unwrap(), timeout);
        let _ = std::net::TcpStream::connect_timeout(&"10.207.5.5:80".parse().unwrap(), timeout);
    })
    .join()
    .expect("client thread")
    .expect("entering a");
    let (flooded, routed, excluded) = catching
        .join()
        .expect("catching thread")
        .expect("entering b");
    let summary = |packets: &[Vec<u8>]| -> Vec<(Ipv4Addr, Ipv4Addr, u8)> {
        packets
            .iter()
            .filter_map(|p| {
                let (s, d) = steadfast_os::relay_catch::addresses(p)?;
                Some((s, d, p[9]))
            })
            .collect()
    };
    let a = Ipv4Addr::new(10, 207, 0, 1);
    assert!(
        !flooded.is_empty()
            && summary(&flooded)
                .iter()
                .all(|&f| f == (a, Ipv4Addr::new(10, 207, 0, 50), 6)),
        "the flooded catcher keeps the TCP segment for the other MAC, nothing else: {:?}",
        summary(&flooded)
    );
    assert!(
        !routed.is_empty()
            && summary(&routed)
                .iter()
                .all(|&f| f == (a, Ipv4Addr::new(10, 207, 5, 5), 6)),
        "the routed catcher keeps the TCP segment through B, nothing else: {:?}",
        summary(&routed)
    );
    // A sibling's own traffic to its sibling is not a relay's.
    assert!(
        excluded.is_empty(),
        "a routed catcher keeps nothing from an excluded source: {:?}",
        summary(&excluded)
    );
    for packet in flooded.iter().chain(&routed) {
        assert!(
            tcp_checksum_valid(packet),
            "a caught segment goes out with a whole checksum"
        );
    }
}
