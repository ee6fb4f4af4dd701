//! What moving an address costs: `Netlink::add_address` / `remove_address` against the `ip addr`
//! subprocess the daemon would otherwise spawn (the design measured ~3.5 ms for the latter).
//! A measurement, not a check. Run as root: `cargo bench -p steadfast-os --bench addr_bench`.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use steadfast_os::addr::Netlink;
use steadfast_os::netns::{self, NetnsGuard};

const ROUNDS: usize = 200;

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("running ip");
    assert!(status.success(), "ip {args:?}");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let pid = std::process::id();
    let ns = NetnsGuard::create(&format!("sfaddr-{pid}")).expect("namespace");
    let dev = format!("sfad{pid}");
    let peer = format!("sfae{pid}");
    ip(&[
        "link",
        "add",
        &dev,
        "netns",
        ns.name(),
        "type",
        "veth",
        "peer",
        "name",
        &peer,
        "netns",
        ns.name(),
    ]);
    ip(&["-n", ns.name(), "link", "set", &dev, "up"]);
    let vip = Ipv4Addr::new(10, 204, 0, 1);
    let device = dev.clone();
    let (add, remove) = netns::spawn_in(ns.name(), move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let netlink = Netlink::new().await.expect("netlink");
            let index = netlink.link_by_name(&device).await.expect("link").index;
            let (mut add, mut remove) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                let start = Instant::now();
                netlink.add_address(index, vip, 32).await.expect("add");
                add.push(start.elapsed());
                let start = Instant::now();
                netlink
                    .remove_address(index, vip, 32)
                    .await
                    .expect("remove");
                remove.push(start.elapsed());
            }
            (add, remove)
        })
    })
    .join()
    .expect("namespace thread")
    .expect("entering the namespace");
    let (mut subprocess_add, mut subprocess_del) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS / 10 {
        let start = Instant::now();
        ip(&["-n", ns.name(), "addr", "add", "10.204.0.1/32", "dev", &dev]);
        subprocess_add.push(start.elapsed());
        let start = Instant::now();
        ip(&["-n", ns.name(), "addr", "del", "10.204.0.1/32", "dev", &dev]);
        subprocess_del.push(start.elapsed());
    }
    println!(
        "netlink add_address median {:?}, remove_address median {:?} over {ROUNDS} rounds; \
         `ip addr add` subprocess median {:?}, `ip addr del` {:?} over {}",
        median(add),
        median(remove),
        median(subprocess_add),
        median(subprocess_del),
        ROUNDS / 10
    );
}
