//! What an nf_tables transaction costs, through this process's netlink socket and through the
//! `nft` program (`nft -f -`, and `nft -i` for the owner table, as the daemon did before), idle
//! and under load: the fence's arming (owner table + fence), the guard's install, one guard
//! state change, and one element update of the fence's lease set as a transaction (beside the
//! packet-path renewal the daemon uses). A measurement, not a check: a bench target, which no
//! test tier runs.
//!
//! Run as root:
//!   cargo bench -p steadfast-os --bench nft_bench
//! SF_NFT_BENCH_ROUNDS sets the rounds per figure (default 30). Without the nft program the
//! nft half is left out (and said so). Load: a CPU burner on every core and a TCP
//! request/response loop between two namespaces of the bench, both bounded in time.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use steadfast_os::fence::{self, Fence};

/// The group whose tables the benchmark makes (each group on a host has its own).
const GROUP: &str = "bench";
use steadfast_os::ingress_guard::{GuardState, IngressGuard};
use steadfast_os::netns::{self, NetnsGuard};
use steadfast_os::nftables::{Batch, Family, NftSocket, SetElement};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 216, 0, 100);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 216, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 216, 0, 2);
const PORTS: [u16; 2] = [80, 443];
/// No load phase outlasts this, whatever the rounds.
const LOAD_LIMIT: Duration = Duration::from_secs(300);

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("running ip");
    assert!(status.success(), "ip {args:?}");
}

fn nft_installed() -> bool {
    Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `nft -f -` with `script`, which must succeed (in the calling thread's namespace).
fn nft_file(script: &str) {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting nft");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .expect("writing to nft");
    let out = child.wait_with_output().expect("waiting for nft");
    assert!(
        out.status.success(),
        "nft -f - failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn nft_table_exists(family: &str, name: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", family, name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The text the daemon sent nft before: one table per line for `nft -i`.
fn old_table_text(family: &str, name: &str, flags: &str, priority: i32, verdict: &str) -> String {
    let field = |direction: &str| match (family, direction) {
        ("arp", "input") => "arp daddr ip",
        ("arp", _) => "arp saddr ip",
        (_, "input") => "ip daddr",
        _ => "ip saddr",
    };
    let mut t = format!("table {family} {name} {{ {flags} ");
    for direction in ["input", "output"] {
        t.push_str(&format!(
            "chain {direction} {{ type filter hook {direction} priority {priority}; policy accept; {} {VIP} {verdict}; }}; ",
            field(direction)
        ));
    }
    t.push_str("}\n");
    t
}

fn old_fence_text() -> String {
    let mut text = String::new();
    for family in ["inet", "arp"] {
        text.push_str(&format!(
            "table {family} steadfast_fence_bench\ndelete table {family} steadfast_fence_bench\ntable {family} steadfast_fence_bench {{ "
        ));
        let leased = family == "inet";
        let (address_in, address_out) = if leased {
            ("ip daddr", "ip saddr")
        } else {
            ("arp daddr ip", "arp saddr ip")
        };
        if leased {
            text.push_str("set lease { type ipv4_addr; flags dynamic,timeout; }; ");
            text.push_str("chain lease_end { delete @lease { ip daddr } drop; }; ");
            let mut verdicts = vec!["0x5f1e0000 : jump lease_end".to_string()];
            for (i, step) in fence::lease_steps().iter().enumerate() {
                verdicts.push(format!("{:#x} : jump lease_{step}", 0x5f1e_0001 + i as u32));
                text.push_str(&format!(
                    "chain lease_{step} {{ update @lease {{ ip daddr timeout {step}ms }} drop; }}; "
                ));
            }
            text.push_str(&format!(
                "chain lease_keeper {{ type filter hook output priority -20; policy accept; ip daddr {VIP} meta mark vmap {{ {} }}; }}; ",
                verdicts.join(", ")
            ));
        }
        for (direction, address) in [("input", address_in), ("output", address_out)] {
            text.push_str(&format!(
                "chain {direction} {{ type filter hook {direction} priority 0; policy accept; {address} {VIP} meta mark != 0x5f1d counter drop; "
            ));
            if leased {
                text.push_str(&format!(
                    "{address} {VIP} {address} != @lease counter drop; "
                ));
            }
            text.push_str("}; ");
        }
        text.push_str("}\n");
    }
    text
}

/// The old arming: `nft -i` holding the owner tables, polled for until they exist, then the
/// fence through `nft -f -`. Returns the child holding the owner tables.
fn old_arm() -> Child {
    let mut child = Command::new("nft")
        .arg("-i")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting nft -i");
    let mut live = String::new();
    for family in ["inet", "arp"] {
        live.push_str(&old_table_text(
            family,
            "steadfast_live_bench",
            "flags owner;",
            -10,
            "meta mark set 0x5f1d",
        ));
    }
    let stdin = child.stdin.as_mut().unwrap();
    stdin.write_all(live.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while !(nft_table_exists("inet", "steadfast_live_bench")
        && nft_table_exists("arp", "steadfast_live_bench"))
    {
        assert!(
            Instant::now() < deadline,
            "nft -i made no owner table in 3 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    nft_file(&old_fence_text());
    child
}

fn wait_owner_tables_gone(socket: &mut NftSocket) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while [Family::Inet, Family::Arp].into_iter().any(|f| {
        socket
            .table(f, &fence::FenceTables::for_group(GROUP).live)
            .expect("reading the owner table")
            .is_some()
    }) {
        assert!(
            Instant::now() < deadline,
            "an owner table outlived its socket"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn old_guard_install(interface: &str) -> String {
    format!(
        "add table ip steadfast_guard_bench\ndelete table ip steadfast_guard_bench\n\
         table ip steadfast_guard_bench {{\n  counter guard_dropped {{ }}\n  chain prerouting {{\n    \
         type filter hook prerouting priority -300; policy accept;\n  }}\n}}\n\
         add table netdev steadfast_bounce_bench\ndelete table netdev steadfast_bounce_bench\n\
         table netdev steadfast_bounce_bench {{\n  counter guard_bounced {{ }}\n  chain ingress {{\n    \
         type filter hook ingress device \"{interface}\" priority -500; policy accept;\n  }}\n}}\n"
    )
}

fn old_guard_state(interface: &str, state: GuardState, own: &str) -> String {
    let matching = format!("iifname \"{interface}\" ip daddr {VIP} tcp dport {{ 80, 443 }}");
    let rule = match state {
        GuardState::Open => String::new(),
        GuardState::OnlyFrom(_) => format!(
            "add rule netdev steadfast_bounce_bench ingress ether saddr != 02:00:00:00:5f:02 ether type ip \
             ip daddr {VIP} tcp dport {{ 80, 443 }} counter name guard_bounced \
             ether saddr set {own} ether daddr set 02:00:00:00:5f:02 fwd to \"{interface}\"\n\
             add rule ip steadfast_guard_bench prerouting {matching} ether saddr != 02:00:00:00:5f:02 counter name guard_dropped drop\n"
        ),
        GuardState::DropAll => {
            format!("add rule ip steadfast_guard_bench prerouting {matching} counter name guard_dropped drop\n")
        }
    };
    format!(
        "flush chain ip steadfast_guard_bench prerouting\nflush chain netdev steadfast_bounce_bench ingress\n{rule}"
    )
}

/// Milliseconds, median / 90th percentile / max.
fn summary(mut samples: Vec<Duration>) -> String {
    if samples.is_empty() {
        return "-".to_string();
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    format!(
        "{:8.3} {:8.3} {:8.3}",
        ms(at(0.5)),
        ms(at(0.9)),
        ms(*samples.last().unwrap())
    )
}

fn time<T>(samples: &mut Vec<Duration>, work: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = work();
    samples.push(start.elapsed());
    out
}

#[derive(Default)]
struct Figures {
    rows: Vec<(String, String)>,
}

impl Figures {
    fn add(&mut self, what: &str, samples: Vec<Duration>) {
        self.rows.push((what.to_string(), summary(samples)));
    }
}

/// Every measurement, `rounds` times each, in the calling thread's namespace (`a` of the
/// bench), on `interface`.
fn measure(rounds: usize, interface: &str, own_mac: [u8; 6], nft: bool) -> Figures {
    let mut figures = Figures::default();
    let mut probe = NftSocket::open().expect("socket");

    let mut arm = Vec::new();
    for _ in 0..rounds {
        let fence = time(&mut arm, || Fence::arm(GROUP, &[VIP]).expect("arming"));
        drop(fence);
        wait_owner_tables_gone(&mut probe);
    }
    figures.add("arm the fence (owner tables + fence), netlink", arm);
    if nft {
        let mut arm = Vec::new();
        for _ in 0..rounds {
            let mut child = time(&mut arm, old_arm);
            let _ = child.kill();
            let _ = child.wait();
            wait_owner_tables_gone(&mut probe);
        }
        figures.add("arm the fence, nft -i + poll + nft -f - (before)", arm);
    }

    let mut install = Vec::new();
    for _ in 0..rounds {
        let guard = time(&mut install, || {
            IngressGuard::install(GROUP, interface, own_mac, VIP, &PORTS).expect("installing")
        });
        drop(guard);
    }
    figures.add("install the guard, netlink", install);
    if nft {
        let mut install = Vec::new();
        for _ in 0..rounds {
            time(&mut install, || nft_file(&old_guard_install(interface)));
        }
        nft_file(
            "delete table ip steadfast_guard_bench\ndelete table netdev steadfast_bounce_bench\n",
        );
        figures.add("install the guard, nft -f -", install);
    }

    let states = [
        GuardState::OnlyFrom([2, 0, 0, 0, 0x5f, 2]),
        GuardState::DropAll,
    ];
    let mut guard =
        IngressGuard::install(GROUP, interface, own_mac, VIP, &PORTS).expect("installing");
    let mut change = Vec::new();
    for round in 0..rounds {
        time(&mut change, || {
            guard.apply(states[round % 2]).expect("changing state")
        });
    }
    figures.add("one guard state change, netlink", change);
    drop(guard);
    if nft {
        let own = own_mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        nft_file(&old_guard_install(interface));
        let mut change = Vec::new();
        for round in 0..rounds {
            let script = old_guard_state(interface, states[round % 2], &own);
            time(&mut change, || nft_file(&script));
        }
        nft_file(
            "delete table ip steadfast_guard_bench\ndelete table netdev steadfast_bounce_bench\n",
        );
        figures.add("one guard state change, nft -f -", change);
    }

    let mut fence = Fence::arm(GROUP, &[VIP]).expect("arming");
    let (family, table, lease) = fence::lease_set(GROUP);
    let mut socket = NftSocket::open().expect("socket");
    // A renewal as a transaction: the element's expiry set anew (alternately 20 and 30 s, so
    // that each one changes the kernel's state: an add of what is there is a no-op).
    let expiry = |round: usize| [20_000, 30_000][round % 2];
    let mut update = Vec::new();
    for round in 0..rounds {
        let mut batch = Batch::new();
        batch.add_elements(
            family,
            &table,
            lease.clone(),
            vec![SetElement {
                timeout_ms: Some(30_000),
                expires_ms: Some(expiry(round)),
                ..SetElement::key(VIP.octets().to_vec())
            }],
        );
        time(&mut update, || {
            socket
                .apply(&batch, "a lease element update")
                .expect("updating the lease element")
        });
    }
    figures.add("lease element renewal as a transaction, netlink", update);
    // The update took: the element expires as the last transaction said.
    let last_expiry = expiry(rounds - 1);
    let ruleset = socket
        .read_ruleset(&|f, name| f == family && name == table)
        .expect("reading the fence");
    let set = ruleset.table(family, &table).and_then(|t| t.set("lease"));
    assert!(
        set.is_some_and(|s| s.elements.iter().any(|e| e.key == VIP.octets()
            && e.expires_ms
                .is_some_and(|x| x <= last_expiry && x > last_expiry - 2_000))),
        "{set:?}"
    );
    if nft {
        let mut update = Vec::new();
        for round in 0..rounds {
            let script = format!(
                "add element inet steadfast_fence_bench lease {{ {VIP} timeout 30s expires {}ms }}\n",
                expiry(round)
            );
            time(&mut update, || nft_file(&script));
        }
        figures.add("lease element renewal as a transaction, nft -f -", update);
    }
    // What the daemon does instead, for scale (the address needs a route: the bench's veth).
    let mut renewal = Vec::new();
    for _ in 0..rounds.max(200) {
        time(&mut renewal, || {
            fence
                .hold_lease(Some(Duration::from_millis(30)))
                .expect("renewing")
        });
    }
    figures.add("lease renewal on the packet path (hold_lease)", renewal);
    drop(fence);
    fence::disarm(GROUP).expect("disarming");
    figures
}

/// A CPU burner per core and a TCP request/response loop from `client_ns` to a server in the
/// calling namespace's `a`, until `stop` or [`LOAD_LIMIT`].
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    exchanges: Arc<AtomicU64>,
}

impl Load {
    fn start(server_ns: &str, client_ns: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let exchanges = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let running = {
            let stop = stop.clone();
            move || !stop.load(Ordering::Relaxed) && started.elapsed() < LOAD_LIMIT
        };
        let mut threads = Vec::new();
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        for _ in 0..cores {
            let running = running.clone();
            threads.push(std::thread::spawn(move || {
                let mut x = 0u64;
                while running() {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                }
            }));
        }
        let address = SocketAddr::from((SERVER, 8080));
        let listener = netns::spawn_in(server_ns, move || TcpListener::bind(address))
            .join()
            .unwrap()
            .unwrap()
            .expect("listening");
        listener.set_nonblocking(true).unwrap();
        let server_running = running.clone();
        threads.push(std::thread::spawn(move || {
            let reply = [b'x'; 1024];
            while server_running() {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        stream
                            .set_read_timeout(Some(Duration::from_secs(1)))
                            .unwrap();
                        let mut request = [0u8; 64];
                        if stream.read(&mut request).is_ok() {
                            let _ = stream.write_all(&reply);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        }));
        let client_count = exchanges.clone();
        let client_ns = client_ns.to_string();
        threads.push(std::thread::spawn(move || {
            netns::enter(&client_ns).expect("entering the client namespace");
            while running() {
                let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(1))
                else {
                    continue;
                };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let mut reply = [0u8; 1024];
                if stream.write_all(b"GET / HTTP/1.0\r\n\r\n").is_ok()
                    && stream.read_exact(&mut reply).is_ok()
                {
                    client_count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        Load {
            stop,
            threads,
            exchanges,
        }
    }

    /// Stops the load; the request/response exchanges it made.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("load thread");
        }
        self.exchanges.load(Ordering::Relaxed)
    }
}

fn main() {
    let rounds: usize = std::env::var("SF_NFT_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(30);
    let nft = nft_installed();
    let pid = std::process::id();
    let a = NetnsGuard::create(&format!("sfbench-{pid}-a")).expect("namespace a");
    let b = NetnsGuard::create(&format!("sfbench-{pid}-b")).expect("namespace b");
    let (veth_a, veth_b) = (format!("sfba{pid}"), format!("sfbb{pid}"));
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
    for (ns, dev, address) in [
        (a.name(), &veth_a, format!("{SERVER}/24")),
        (b.name(), &veth_b, format!("{CLIENT}/24")),
    ] {
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
        ip(&["-n", ns, "addr", "add", &address, "dev", dev]);
    }
    // The lease datagrams need a route to the VIP.
    ip(&[
        "-n",
        a.name(),
        "addr",
        "add",
        &format!("{VIP}/32"),
        "dev",
        &veth_a,
    ]);
    let own_mac: [u8; 6] = {
        let out = Command::new("ip")
            .args(["-n", a.name(), "-o", "link", "show", "dev", &veth_a])
            .output()
            .expect("ip link show");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let word = text
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .expect("a MAC")
            .to_string();
        let bytes: Vec<u8> = word
            .split(':')
            .map(|x| u8::from_str_radix(x, 16).unwrap())
            .collect();
        bytes.try_into().unwrap()
    };

    let run = |ns: &str| {
        let interface = veth_a.clone();
        netns::spawn_in(ns, move || measure(rounds, &interface, own_mac, nft))
            .join()
            .expect("measuring thread")
            .expect("entering the namespace")
    };
    let idle = run(a.name());
    let load = Load::start(a.name(), b.name());
    let loaded_at = Instant::now();
    let loaded = run(a.name());
    let exchanges = load.stop();
    eprintln!(
        "\nnf_tables transactions, {rounds} rounds each (ms: median p90 max); load: a CPU burner \
         per core and {exchanges} TCP request/responses in {:.1} s",
        loaded_at.elapsed().as_secs_f64()
    );
    if !nft {
        eprintln!("(the nft program is not installed: its half is left out)");
    }
    eprintln!("{:<56} {:^23} {:^23}", "", "idle", "loaded");
    for ((what, idle), (_, loaded)) in idle.rows.iter().zip(loaded.rows.iter()) {
        eprintln!("{what:<56} {idle:>26} {loaded:>26}");
    }
}
