//! The link relay's I/O shell (issue 19; docs/design.md, Link relay): feeds the deterministic
//! cores of `steadfast_core` (link monitors, interface manager, requester and responder) with
//! netlink link events, ARP probe answers, authenticated UDP frames from the siblings and the
//! time, and carries out what they return in the kernel.
//!
//! It runs on a thread of its own with its own single-threaded runtime: its 10 ms probe
//! rounds must not wait behind the daemon's loop, nor the daemon's heartbeats behind it. The
//! daemon only tells it which service addresses the node holds (they join the relayed ones)
//! and stops it.

mod owner_table;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use steadfast_core::config::{InterfaceClass, Relay, RelaySibling};
use steadfast_core::heartbeat_wire::AuthKey;
use steadfast_core::interface_manager::{InterfaceManager, LinkClass, PathReport};
use steadfast_core::link_monitor::{LinkEvent, LinkMonitor, LinkOutput, OperState};
use steadfast_core::relay_agent::{
    RelayEntry, Requester, RequesterAction, RequesterEvent, Responder, ResponderAction,
    ResponderEvent, ResponderSettings,
};
use steadfast_core::relay_wire::{self, RelayFrame, RelayMessage, RelayReplayGuard};
use steadfast_core::signed_datagram::ReplayRefusal;
use steadfast_core::NodeId;
use steadfast_os::relay_kernel::{ArpProber, LinkEvents, LinkStatus, OperStatus, RelayKernel};
use tokio::io::unix::AsyncFd;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

/// The routing table and rule priority through which a relayed node sends everything to its
/// sibling: ahead of `main` (32766), behind `local` (0).
const RELAY_TABLE: u32 = 7413;
const RELAY_RULE_PRIORITY: u32 = 1000;
/// Gratuitous ARPs a responder sends for each address it takes over, and their spacing: the
/// first may be lost on a busy segment.
const ANNOUNCE_COUNT: u32 = 3;
const ANNOUNCE_SPACING: Duration = Duration::from_millis(20);
/// How long the daemon waits for the shell to undo its relays at stop.
const STOP_WAIT: Duration = Duration::from_secs(2);
/// The most relays one responder carries at once, and the longest lease it grants.
const MAX_RELAYS: usize = 8;
const MAX_LEASE: Duration = Duration::from_secs(10);
/// How long a responder keeps the TCP segments it caught for a sibling's addresses before a
/// relay (`steadfast_os::relay_catch`): a carrier loss is seen within milliseconds and a relay
/// installed a few later; a black hole is not flooded, so there is nothing to catch for it.
const CATCH_KEEP: Duration = Duration::from_millis(200);
/// The most segments kept: a bound on memory (1500 bytes each) whatever the segment floods.
const CATCH_MAX: usize = 512;

/// What the shell needs from the daemon's settings.
pub struct RelaySettings {
    pub node_id: NodeId,
    pub key: AuthKey,
    pub relay: Relay,
    /// The node's own address on the service network: always relayed.
    pub own_address: Ipv4Addr,
    /// Where the responder records what it installed, for the next start to undo.
    pub owner_table: PathBuf,
}

/// The daemon's side of the shell.
pub struct RelayHandle {
    service_addresses: watch::Sender<Vec<Ipv4Addr>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RelayHandle {
    /// The service addresses this node holds now (all of them while primary, none otherwise).
    pub fn set_service_addresses(&self, addresses: Vec<Ipv4Addr>) {
        self.service_addresses.send_if_modified(|current| {
            let changed = *current != addresses;
            *current = addresses;
            changed
        });
    }

    /// Undoes every relay (revoking those carried for siblings, releasing this node's) and
    /// waits a bounded time for it.
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let deadline = Instant::now() + STOP_WAIT;
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                tracing::warn!("relay: still undoing after {STOP_WAIT:?}; leaving it behind");
            }
        }
    }
}

/// Starts the shell; returns once its sockets are open and its kernel state is clean.
pub fn start(settings: RelaySettings) -> anyhow::Result<RelayHandle> {
    let (addresses_tx, addresses_rx) = watch::channel(Vec::new());
    let (stop_tx, stop_rx) = oneshot::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    let thread = std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("relay: building its runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut shell = match Shell::open(settings).await {
                    Ok(shell) => {
                        let _ = ready_tx.send(Ok(()));
                        shell
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                shell.run(addresses_rx, stop_rx).await;
            });
        })
        .context("relay: spawning its thread")?;
    ready_rx
        .recv()
        .context("relay: its thread ended before it was ready")??;
    Ok(RelayHandle {
        service_addresses: addresses_tx,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// One declared interface as the shell watches it.
struct WatchedLink {
    class: InterfaceClass,
    index: Option<u32>,
    monitor: LinkMonitor,
    prober: Option<Arc<AsyncFd<ArpProber>>>,
    targets: Vec<Ipv4Addr>,
    /// The last probe round sent: an answer counts for it.
    last_round: Option<u64>,
}

struct Shell {
    settings: RelaySettings,
    origin: Instant,
    kernel: RelayKernel,
    netlink: steadfast_os::addr::Netlink,
    events: LinkEvents,
    links: BTreeMap<String, WatchedLink>,
    manager: InterfaceManager,
    requester: Option<Requester>,
    responder: Responder,
    socket: UdpSocket,
    guard: RelayReplayGuard,
    counter: u64,
    siblings: BTreeMap<NodeId, RelaySibling>,
    answers_rx: mpsc::UnboundedReceiver<String>,
    service_addresses: Vec<Ipv4Addr>,
    /// The sibling this node's own traffic goes through now.
    routed_through: Option<NodeId>,
    /// Before this, a private link alone is no reason to ask for a relay: the public links,
    /// probed from the start, have not had the time to prove themselves (rise rounds).
    relay_allowed_from: Duration,
    owner: owner_table::OwnerTable,
    /// Fences the relayed addresses when this process dies (`None`: no nf_tables here).
    fence: Option<steadfast_os::relay_fence::RelayFence>,
    /// Segments for (or from) a sibling's addresses that reached this host before it relayed
    /// for the sibling, and the socket that sends them again once it does (`None`: not
    /// available here, and those segments wait for TCP's retransmission).
    caught: Arc<std::sync::Mutex<Caught>>,
    resender: Option<steadfast_os::raw_ip::RawIpSender>,
    catchers: Vec<Arc<AsyncFd<steadfast_os::relay_catch::FrameCatcher>>>,
    /// What the catchers catch now: nothing while this host relays for a sibling.
    catching: steadfast_os::relay_catch::Catching,
}

/// The segments the catchers keep, oldest first.
#[derive(Default)]
struct Caught {
    packets: std::collections::VecDeque<(Instant, Vec<u8>)>,
}

impl Caught {
    fn keep(&mut self, packet: &[u8]) {
        let now = Instant::now();
        while self.packets.len() >= CATCH_MAX
            || self
                .packets
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > CATCH_KEEP)
        {
            self.packets.pop_front();
        }
        self.packets.push_back((now, packet.to_vec()));
    }

    /// Takes the recent segments sent to `address` or from it.
    fn take_for(&mut self, address: Ipv4Addr) -> Vec<Vec<u8>> {
        let now = Instant::now();
        let mut taken = Vec::new();
        self.packets.retain(|(at, packet)| {
            let ours = now.duration_since(*at) <= CATCH_KEEP
                && steadfast_os::relay_catch::addresses(packet).is_some_and(
                    |(source, destination)| source == address || destination == address,
                );
            if ours {
                taken.push(packet.clone());
            }
            !ours
        });
        taken
    }
}

fn oper_state(status: OperStatus) -> OperState {
    match status {
        OperStatus::Unknown => OperState::Unknown,
        OperStatus::NotPresent => OperState::NotPresent,
        OperStatus::Down => OperState::Down,
        OperStatus::LowerLayerDown => OperState::LowerLayerDown,
        OperStatus::Testing => OperState::Testing,
        OperStatus::Dormant => OperState::Dormant,
        OperStatus::Up => OperState::Up,
    }
}

fn random_incarnation() -> anyhow::Result<u64> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| anyhow::anyhow!("relay: drawing the incarnation: {e}"))?;
    Ok(u64::from_be_bytes(bytes))
}

impl Shell {
    async fn open(settings: RelaySettings) -> anyhow::Result<Shell> {
        let relay = &settings.relay;
        let netlink = steadfast_os::addr::Netlink::new()
            .await
            .context("relay: opening the netlink socket")?;
        let kernel = RelayKernel::new(&netlink);
        // Subscribed before the dump: a change between the two arrives as an event after it.
        let events = LinkEvents::open().context("relay: subscribing to link events")?;
        let (answers_tx, answers_rx) = mpsc::unbounded_channel();
        let mut links = BTreeMap::new();
        for interface in &relay.interfaces {
            let link = netlink
                .link_by_name(&interface.name)
                .await
                .with_context(|| format!("relay: interface {}", interface.name))?;
            let probes = !interface.probe_targets.is_empty();
            let prober = if probes {
                let prober = ArpProber::open(link.index, link.mac)
                    .with_context(|| format!("relay: ARP probes on {}", interface.name))?;
                // SAFETY: the prober owns its socket and returns that same descriptor for as
                // long as it lives; the AsyncFd owns the prober.
                let registered = unsafe {
                    AsyncFd::register_with_interest(prober, tokio::io::Interest::READABLE)
                };
                let prober = Arc::new(registered.with_context(|| {
                    format!("relay: registering the ARP prober of {}", interface.name)
                })?);
                spawn_answer_reader(
                    interface.name.clone(),
                    prober.clone(),
                    interface.probe_targets.clone(),
                    answers_tx.clone(),
                );
                Some(prober)
            } else {
                None
            };
            links.insert(
                interface.name.clone(),
                WatchedLink {
                    class: interface.class,
                    index: Some(link.index),
                    monitor: LinkMonitor::new(probes.then(|| relay.probe_settings())),
                    prober,
                    targets: interface.probe_targets.clone(),
                    last_round: None,
                },
            );
        }
        let manager = InterfaceManager::new(relay.declared_links(), relay.hold_down)
            .context("relay: the declared interfaces")?;
        let requester = (!relay.siblings.is_empty()).then(|| {
            let requester_settings = relay.requester_settings();
            requester_settings
                .validate()
                .map(|()| Requester::new(requester_settings))
        });
        let requester = requester
            .transpose()
            .context("relay: the siblings and lease settings")?;
        let caught = Arc::new(std::sync::Mutex::new(Caught::default()));
        let mut catchers = Vec::new();
        let sibling_addresses: Vec<Ipv4Addr> = relay.siblings.iter().map(|s| s.address).collect();
        for interface in &relay.interfaces {
            let Some(index) = links
                .get(&interface.name)
                .and_then(|l: &WatchedLink| l.index)
            else {
                continue;
            };
            let kind = match interface.class {
                InterfaceClass::Public => steadfast_os::relay_catch::CatchKind::Flooded,
                InterfaceClass::Private => steadfast_os::relay_catch::CatchKind::Routed {
                    exclude: sibling_addresses.clone(),
                },
            };
            match steadfast_os::relay_catch::FrameCatcher::open(index, &kind) {
                Ok(catcher) => {
                    catchers.push(spawn_catcher(
                        interface.name.clone(),
                        catcher,
                        caught.clone(),
                    )?);
                }
                Err(e) => tracing::warn!(
                    "relay: {e}; segments lost before a relay through this host is in place \
                     wait for TCP's retransmission"
                ),
            }
        }
        let resender = match steadfast_os::raw_ip::RawIpSender::open() {
            Ok(sender) => Some(sender),
            Err(e) => {
                tracing::warn!("relay: {e}; caught segments cannot be sent again");
                None
            }
        };
        let owner = owner_table::OwnerTable::new(settings.owner_table.clone());
        let leftovers = owner.read();
        // Forwarding the operator turned on is theirs: the relay neither sets nor clears it.
        let forwarding_managed_elsewhere = relay
            .interfaces
            .iter()
            .filter(|i| {
                !leftovers.contains(&RelayEntry::Forwarding {
                    interface: i.name.clone(),
                })
            })
            .filter(|i| {
                steadfast_os::sysctl::read(&format!("net/ipv4/conf/{}/forwarding", i.name))
                    .is_ok_and(|v| v.trim() == "1")
            })
            .map(|i| i.name.clone())
            .collect();
        let (responder, undo) = Responder::start(
            ResponderSettings {
                max_relays: MAX_RELAYS,
                max_lease: MAX_LEASE,
                forwarding_managed_elsewhere,
            },
            None,
            leftovers,
        );
        let bind = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, relay.port));
        let socket = UdpSocket::bind(bind)
            .await
            .with_context(|| format!("relay: binding its socket {bind}"))?;
        let siblings = relay.siblings.iter().map(|s| (s.id, s.clone())).collect();
        let relay_allowed_from = startup_grace(relay);
        let now_micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        let mut shell = Shell {
            origin: Instant::now(),
            kernel,
            netlink,
            events,
            links,
            manager,
            requester,
            responder,
            socket,
            guard: RelayReplayGuard::new(random_incarnation()?),
            counter: now_micros,
            siblings,
            answers_rx,
            service_addresses: Vec::new(),
            routed_through: None,
            relay_allowed_from,
            owner,
            fence: None,
            caught,
            resender,
            catchers,
            // As the catchers were opened.
            catching: steadfast_os::relay_catch::Catching::On,
            settings,
        };
        // A previous life may have left its relays and its own route through a sibling.
        shell.responder_actions(undo).await;
        match steadfast_os::relay_fence::RelayFence::arm() {
            Ok(fence) => shell.fence = Some(fence),
            Err(e) => tracing::error!(
                "relay: cannot arm the relay fence ({e}): if this daemon dies while it relays \
                 for a sibling, its kernel goes on answering for it until the next start"
            ),
        }
        if let Err(e) = shell
            .kernel
            .stop_routing_through(RELAY_TABLE, RELAY_RULE_PRIORITY)
            .await
        {
            tracing::warn!("relay: clearing a previous life's route through a sibling: {e}");
        }
        let statuses = shell
            .events
            .dump()
            .await
            .context("relay: reading the interfaces' state")?;
        for status in statuses {
            shell.link_status(status).await;
        }
        Ok(shell)
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// A relay needed during the startup grace is asked for once the grace ends.
    async fn start_deferred_relay(&mut self, now: Duration) {
        if now < self.relay_allowed_from || !self.manager.relay_needed() {
            return;
        }
        let Some(via) = self.manager.active().map(|l| l.name.clone()) else {
            return;
        };
        if self.requester.as_ref().is_none_or(|r| r.started()) {
            return;
        }
        self.path_reports(vec![PathReport::RelayNeeded { via }])
            .await;
    }

    fn next_deadline(&self) -> Option<Duration> {
        let now = self.now();
        let grace = (now < self.relay_allowed_from).then_some(self.relay_allowed_from);
        self.links
            .values()
            .filter_map(|l| l.monitor.next_deadline())
            .chain(self.manager.next_deadline(now))
            .chain(self.requester.as_ref().and_then(Requester::next_deadline))
            .chain(self.responder.next_deadline())
            .chain(grace)
            .min()
    }

    async fn run(
        &mut self,
        mut service_addresses: watch::Receiver<Vec<Ipv4Addr>>,
        mut stop: oneshot::Receiver<()>,
    ) {
        let mut buf = vec![0u8; relay_wire::MAX_FRAME_LEN + 64];
        // Holding no service address yet: catch this host's own forwards too.
        self.update_catching();
        loop {
            let deadline = self
                .next_deadline()
                .map(|d| self.origin + d)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = &mut stop => break,
                status = self.events.next() => match status {
                    Some(status) => self.link_status(status).await,
                    None => {
                        tracing::error!("relay: the link event socket closed; links are no longer watched");
                        break;
                    }
                },
                Some(link) = self.answers_rx.recv() => self.probe_answered(&link).await,
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => {
                        let bytes = buf[..len].to_vec();
                        self.on_frame(&bytes, from).await;
                    }
                    Err(e) => tracing::warn!("relay: socket receive: {e}"),
                },
                changed = service_addresses.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let addresses = service_addresses.borrow_and_update().clone();
                    self.service_addresses_changed(addresses).await;
                }
                _ = tokio::time::sleep_until(deadline.into()) => self.tick().await,
            }
        }
        self.shut_down().await;
    }

    async fn shut_down(&mut self) {
        let now = self.now();
        let actions = self.responder.handle(ResponderEvent::Shutdown, now);
        self.responder_actions(actions).await;
        if let Some(requester) = self.requester.as_mut() {
            let actions = requester.handle(RequesterEvent::Stop, now);
            self.requester_actions(actions).await;
        }
        if let Err(e) = self
            .kernel
            .stop_routing_through(RELAY_TABLE, RELAY_RULE_PRIORITY)
            .await
        {
            tracing::warn!("relay: stopping: {e}");
        }
    }

    /// The addresses a sibling answers for when it relays for this node.
    fn relayed_addresses(&self) -> Vec<Ipv4Addr> {
        let mut addresses = vec![self.settings.own_address];
        for a in &self.service_addresses {
            if !addresses.contains(a) {
                addresses.push(*a);
            }
        }
        addresses.truncate(relay_wire::MAX_ADDRESSES);
        addresses
    }

    async fn service_addresses_changed(&mut self, addresses: Vec<Ipv4Addr>) {
        self.service_addresses = addresses;
        self.update_catching();
        let relayed = self.relayed_addresses();
        let now = self.now();
        if let Some(requester) = self.requester.as_mut().filter(|r| r.started()) {
            let actions = requester.handle(RequesterEvent::AddressesChanged(relayed), now);
            self.requester_actions(actions).await;
        }
    }

    async fn link_status(&mut self, status: LinkStatus) {
        let Some(link) = self.links.get_mut(&status.name) else {
            return;
        };
        let now = self.origin.elapsed();
        let mut events = Vec::new();
        if status.removed {
            link.index = None;
            events.push(LinkEvent::Carrier(false));
        } else {
            link.index = Some(status.index);
            if let Some(oper) = status.oper {
                events.push(LinkEvent::OperState(oper_state(oper)));
            }
            if let Some(carrier) = status.carrier {
                events.push(LinkEvent::Carrier(carrier));
            }
        }
        for event in events {
            let Some(link) = self.links.get_mut(&status.name) else {
                return;
            };
            let outputs = link.monitor.handle(event, now);
            self.link_outputs(&status.name, outputs).await;
        }
    }

    async fn probe_answered(&mut self, name: &str) {
        let now = self.now();
        let Some(link) = self.links.get_mut(name) else {
            return;
        };
        let Some(seq) = link.last_round else { return };
        let outputs = link.monitor.handle(LinkEvent::ProbeAnswered { seq }, now);
        self.link_outputs(name, outputs).await;
    }

    async fn tick(&mut self) {
        let now = self.now();
        let names: Vec<String> = self.links.keys().cloned().collect();
        for name in names {
            let outputs = self
                .links
                .get_mut(&name)
                .map(|l| l.monitor.handle(LinkEvent::Tick, now))
                .unwrap_or_default();
            self.link_outputs(&name, outputs).await;
        }
        let reports = self.manager.tick(now);
        self.path_reports(reports).await;
        self.start_deferred_relay(now).await;
        if let Some(requester) = self.requester.as_mut() {
            let actions = requester.handle(RequesterEvent::Tick, now);
            self.requester_actions(actions).await;
        }
        let actions = self.responder.handle(ResponderEvent::Tick, now);
        self.responder_actions(actions).await;
    }

    async fn link_outputs(&mut self, name: &str, outputs: Vec<LinkOutput>) {
        for output in outputs {
            match output {
                LinkOutput::SendProbe { seq } => {
                    let Some(link) = self.links.get_mut(name) else {
                        continue;
                    };
                    link.last_round = Some(seq);
                    if let Some(prober) = &link.prober {
                        if let Err(e) = prober.get_ref().send_round(&link.targets) {
                            // Counted as a missed round by the monitor: nothing else to do.
                            tracing::debug!("relay: probe round {seq} on {name}: {e}");
                        }
                    }
                }
                LinkOutput::Changed { up, reason } => {
                    let class = self.links.get(name).map(|l| l.class);
                    tracing::info!(
                        "relay: link {name} ({class:?}) is {} ({reason})",
                        if up { "up" } else { "down" }
                    );
                    let now = self.now();
                    match self.manager.link_changed(name, up, now) {
                        Ok(reports) => self.path_reports(reports).await,
                        Err(e) => tracing::error!("relay: {e}"),
                    }
                }
            }
        }
    }

    async fn path_reports(&mut self, reports: Vec<PathReport>) {
        let now = self.now();
        for report in reports {
            match report {
                PathReport::ActiveChanged { from, to, reason } => {
                    tracing::info!("relay: active path {from:?} -> {to:?} ({reason})");
                    let uplink = self
                        .manager
                        .active()
                        .filter(|l| l.class == LinkClass::Public)
                        .map(|l| l.name.clone());
                    let actions = self
                        .responder
                        .handle(ResponderEvent::UplinkChanged(uplink), now);
                    self.responder_actions(actions).await;
                }
                PathReport::RelayNeeded { via } => {
                    if now < self.relay_allowed_from {
                        // Checked again at the first tick after the grace.
                        continue;
                    }
                    tracing::warn!("relay: no public link up; asking a sibling over {via}");
                    let addresses = self.relayed_addresses();
                    if let Some(requester) = self.requester.as_mut() {
                        let actions =
                            requester.handle(RequesterEvent::Start { via, addresses }, now);
                        self.requester_actions(actions).await;
                    }
                }
                PathReport::RelayEnded => {
                    tracing::info!("relay: a public link is back; relay no longer needed");
                    if let Some(requester) = self.requester.as_mut() {
                        let actions = requester.handle(RequesterEvent::Stop, now);
                        self.requester_actions(actions).await;
                    }
                    // The segment's caches name the sibling's MAC for this node's addresses:
                    // take them back at once, before the sibling stops answering for them.
                    let uplink = self
                        .manager
                        .active()
                        .filter(|l| l.class == LinkClass::Public)
                        .map(|l| l.name.clone());
                    if let Some(uplink) = uplink {
                        for address in self.relayed_addresses() {
                            self.announce(address, &uplink).await;
                        }
                    }
                }
                PathReport::NoPath => tracing::error!("relay: no link is up"),
                PathReport::PathRestored => tracing::info!("relay: a link is up again"),
            }
        }
    }

    async fn send(&mut self, to: NodeId, message: RelayMessage) {
        let Some(sibling) = self.siblings.get(&to) else {
            tracing::warn!(
                "relay: no address for node {to}; {} not sent",
                message.kind_name()
            );
            return;
        };
        self.counter += 1;
        let frame = RelayFrame {
            sender: self.settings.node_id,
            counter: self.counter,
            incarnation: self.guard.incarnation(),
            echo: self.guard.echo_for(to),
            message,
        };
        let bytes = match relay_wire::encode(&frame, &self.settings.key) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!("relay: encoding a frame to node {to}: {e}");
                return;
            }
        };
        let target = SocketAddr::V4(SocketAddrV4::new(sibling.address, self.settings.relay.port));
        if let Err(e) = self.socket.send_to(&bytes, target).await {
            tracing::debug!(
                "relay: sending {} to node {to} at {target}: {e}",
                frame.message.kind_name()
            );
        }
    }

    async fn on_frame(&mut self, bytes: &[u8], from: SocketAddr) {
        let frame = match relay_wire::decode(bytes, &self.settings.key) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::debug!("relay: frame from {from} refused: {e}");
                return;
            }
        };
        // Only a configured sibling, from its configured private address.
        let Some(sibling) = self
            .siblings
            .get(&frame.sender)
            .filter(|s| std::net::IpAddr::V4(s.address) == from.ip())
            .cloned()
        else {
            tracing::debug!(
                "relay: frame from {from} claims node {}, not a sibling there",
                frame.sender
            );
            return;
        };
        let now = self.now();
        match self.guard.admit(&frame) {
            Ok(()) => {}
            Err(ReplayRefusal::Unfresh { .. }) => {
                let actions = self
                    .responder
                    .handle(ResponderEvent::Unfresh { from: frame.sender }, now);
                self.responder_actions(actions).await;
                return;
            }
            Err(e) => {
                tracing::debug!("relay: {e}");
                return;
            }
        }
        let actions = self.responder.handle(
            ResponderEvent::Received {
                from: frame.sender,
                interface: sibling.interface.clone(),
                message: frame.message.clone(),
            },
            now,
        );
        self.responder_actions(actions).await;
        if let Some(requester) = self.requester.as_mut() {
            let actions = requester.handle(
                RequesterEvent::Received {
                    from: frame.sender,
                    message: frame.message,
                },
                now,
            );
            self.requester_actions(actions).await;
        }
    }

    async fn requester_actions(&mut self, actions: Vec<RequesterAction>) {
        for action in actions {
            match action {
                RequesterAction::Send { to, message } => {
                    let request = matches!(message, RelayMessage::Request { .. });
                    self.send(to, message).await;
                    if request && self.routed_through != Some(to) {
                        // Make before break: no public link carries anything now, so the
                        // node's replies go to the sibling asked at once rather than into the
                        // dead link until the grant; the sibling sends again what reached it
                        // before it relayed.
                        if let Some(link) = self.siblings.get(&to).map(|s| s.interface.clone()) {
                            self.route_through(to, &link).await;
                        }
                    }
                }
                RequesterAction::RelayThrough { sibling, link } => {
                    tracing::warn!(
                        "relay: sending and receiving through node {sibling} over {link}"
                    );
                    self.route_through(sibling, &link).await;
                }
                RequesterAction::RelayLost { sibling, reason } => {
                    tracing::warn!("relay: the relay through node {sibling} is lost: {reason:?}");
                    self.stop_routing(sibling).await;
                }
                RequesterAction::RelayEnded { sibling } => {
                    tracing::info!("relay: relay through node {sibling} ended");
                    self.stop_routing(sibling).await;
                }
                RequesterAction::NoSiblingGranted => {
                    tracing::error!(
                        "relay: no sibling granted a relay; the node cannot serve through one"
                    );
                    if let Some(sibling) = self.routed_through {
                        self.stop_routing(sibling).await;
                    }
                }
            }
        }
        // A request that was never granted leaves no route behind once the relay is over.
        let idle = self.requester.as_ref().is_none_or(|r| !r.started());
        if let (true, Some(sibling)) = (idle, self.routed_through) {
            self.stop_routing(sibling).await;
        }
    }

    async fn route_through(&mut self, sibling: NodeId, link: &str) {
        let Some(address) = self.siblings.get(&sibling).map(|s| s.address) else {
            return;
        };
        let Some(index) = self.links.get(link).and_then(|l| l.index) else {
            tracing::error!("relay: interface {link} is gone; cannot route through node {sibling}");
            return;
        };
        match self
            .kernel
            .route_all_through(address, index, RELAY_TABLE, RELAY_RULE_PRIORITY)
            .await
        {
            Ok(()) => {
                self.routed_through = Some(sibling);
                self.release_what_the_public_links_hold().await;
            }
            Err(e) => tracing::error!("relay: routing through node {sibling}: {e}"),
        }
        self.update_catching();
    }

    /// Once the route goes through the sibling: what waits in the public links' neighbour
    /// queues for an ARP answer (`RelayKernel::flush_neighbours`) is dropped, so that TCP
    /// sends it again the relayed way instead of waiting seconds for the entries to fail.
    async fn release_what_the_public_links_hold(&mut self) {
        let public: Vec<(String, u32)> = self
            .links
            .iter()
            .filter(|(_, l)| l.class == InterfaceClass::Public)
            .filter_map(|(name, l)| Some((name.clone(), l.index?)))
            .collect();
        for (name, index) in public {
            match self.kernel.flush_neighbours(index).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    "relay: dropped {n} neighbour entries of {name} and what they held"
                ),
                Err(e) => tracing::warn!("relay: flushing the neighbours of {name}: {e}"),
            }
        }
    }

    async fn stop_routing(&mut self, sibling: NodeId) {
        if self.routed_through != Some(sibling) {
            return;
        }
        self.routed_through = None;
        if let Err(e) = self
            .kernel
            .stop_routing_through(RELAY_TABLE, RELAY_RULE_PRIORITY)
            .await
        {
            tracing::error!("relay: undoing the route through node {sibling}: {e}");
        }
        self.update_catching();
    }

    /// Guards `addresses` in the relay fence; a failure is logged (the relay still works).
    fn guard(&mut self, addresses: Vec<Ipv4Addr>) {
        if let Some(fence) = self.fence.as_mut() {
            if let Err(e) = fence.guard(&addresses) {
                tracing::error!("relay: {e}");
            }
        }
    }

    async fn responder_actions(&mut self, actions: Vec<ResponderAction>) {
        // Fenced before installed: a daemon killed in between must leave nothing answering.
        let installed = || -> Vec<Ipv4Addr> {
            self.responder
                .installed()
                .filter_map(entry_address)
                .collect()
        };
        let mut before = installed();
        before.extend(actions.iter().filter_map(|a| match a {
            ResponderAction::Install(entry) => entry_address(entry),
            _ => None,
        }));
        self.guard(before);
        self.carry_out_responder_actions(actions).await;
        self.update_catching();
        let after = self
            .responder
            .installed()
            .filter_map(entry_address)
            .collect();
        self.guard(after);
    }

    async fn carry_out_responder_actions(&mut self, actions: Vec<ResponderAction>) {
        for action in actions {
            match action {
                ResponderAction::Install(entry) => {
                    // Recorded first: a daemon killed in between leaves a record of something
                    // absent, which the next start's removal tolerates.
                    self.owner.record(&entry, true);
                    if let Err(e) = self.apply(&entry, true).await {
                        tracing::error!("relay: installing {entry}: {e}");
                    }
                }
                ResponderAction::Remove(entry) => {
                    if let Err(e) = self.apply(&entry, false).await {
                        tracing::error!("relay: removing {entry}: {e}");
                    }
                    self.owner.record(&entry, false);
                }
                ResponderAction::Announce { address, interface } => {
                    self.announce(address, &interface).await;
                    // Installed before announced: the segments go the relay's way now.
                    self.send_caught(address);
                }
                ResponderAction::Send { to, message } => self.send(to, message).await,
                ResponderAction::RelayStarted { node, addresses } => {
                    tracing::warn!("relay: relaying for node {node}: {addresses:?}");
                }
                ResponderAction::RelayEnded { node, reason } => {
                    tracing::warn!("relay: relay for node {node} ended: {reason:?}");
                }
            }
        }
    }

    async fn ifindex(&self, interface: &str) -> Result<u32, steadfast_os::OsError> {
        match self.links.get(interface).and_then(|l| l.index) {
            Some(index) => Ok(index),
            None => self.netlink.link_by_name(interface).await.map(|l| l.index),
        }
    }

    async fn apply(&self, entry: &RelayEntry, install: bool) -> Result<(), steadfast_os::OsError> {
        match entry {
            RelayEntry::Forwarding { interface } => {
                steadfast_os::relay_kernel::set_forwarding(interface, install)
            }
            RelayEntry::Route {
                address,
                interface,
                next_hop,
            } => {
                let index = match self.ifindex(interface).await {
                    Ok(index) => index,
                    // The interface is gone, and its routes with it.
                    Err(steadfast_os::OsError::NoSuchInterface(_)) if !install => return Ok(()),
                    Err(e) => return Err(e),
                };
                if install {
                    self.kernel.add_host_route(*address, *next_hop, index).await
                } else {
                    self.kernel
                        .remove_host_route(*address, *next_hop, index)
                        .await
                }
            }
            RelayEntry::ProxyArp { address, interface } => {
                let index = match self.ifindex(interface).await {
                    Ok(index) => index,
                    Err(steadfast_os::OsError::NoSuchInterface(_)) if !install => return Ok(()),
                    Err(e) => return Err(e),
                };
                if install {
                    self.kernel.add_proxy_arp(*address, index).await
                } else {
                    self.kernel.remove_proxy_arp(*address, index).await
                }
            }
        }
    }

    /// Catching is for a host that may be asked to relay: while it relays, or is relayed, the
    /// segments it would catch are the relay's own traffic, and copying each of them would
    /// only take the time this thread needs for its probes and leases.
    ///
    /// A host that holds no service address also catches what it sends itself on behalf of
    /// others: as a duplex backup its logger forwards every client frame to the primary, and
    /// between a cut of the primary's link and the relay those go into the dead port (a SYN
    /// among them would wait a second). A primary sends its own replies: never caught.
    fn update_catching(&mut self) {
        use steadfast_os::relay_catch::Catching;
        let wanted = if self.responder.relays().next().is_some() || self.routed_through.is_some() {
            Catching::Off
        } else if self.service_addresses.is_empty() {
            Catching::WithOutgoing {
                not_from: vec![self.settings.own_address],
            }
        } else {
            Catching::On
        };
        if wanted == self.catching {
            return;
        }
        if wanted == Catching::Off {
            if let Ok(mut caught) = self.caught.lock() {
                caught.packets.clear();
            }
        }
        for catcher in &self.catchers {
            if let Err(e) = catcher.get_ref().set_catching(&wanted) {
                tracing::warn!("relay: {e}");
            }
        }
        self.catching = wanted;
    }

    /// Sends again the segments caught for (or from) `address`, which this host now relays.
    fn send_caught(&self, address: Ipv4Addr) {
        let packets = match self.caught.lock() {
            Ok(mut caught) => caught.take_for(address),
            Err(_) => return,
        };
        let Some(resender) = self.resender.as_ref() else {
            return;
        };
        let mut sent = 0;
        for packet in &packets {
            let Some((_, destination)) = steadfast_os::relay_catch::addresses(packet) else {
                continue;
            };
            match resender.send(packet, destination) {
                Ok(()) => sent += 1,
                Err(e) => tracing::debug!("relay: sending a caught segment again: {e}"),
            }
        }
        if sent > 0 {
            tracing::info!("relay: sent {sent} caught segment(s) of {address} again");
        }
    }

    async fn announce(&self, address: Ipv4Addr, interface: &str) {
        let link = match self.netlink.link_by_name(interface).await {
            Ok(link) => link,
            Err(e) => {
                tracing::error!("relay: announcing {address} on {interface}: {e}");
                return;
            }
        };
        let sender = match steadfast_os::garp::GarpSender::open(link.index, link.mac) {
            Ok(sender) => sender,
            Err(e) => {
                tracing::error!("relay: announcing {address} on {interface}: {e}");
                return;
            }
        };
        if let Err(e) = sender.send(address) {
            tracing::warn!("relay: gratuitous ARP for {address} on {interface}: {e}");
        }
        tokio::spawn(async move {
            for _ in 1..ANNOUNCE_COUNT {
                tokio::time::sleep(ANNOUNCE_SPACING).await;
                if let Err(e) = sender.send(address) {
                    tracing::debug!("relay: gratuitous ARP for {address}: {e}");
                }
            }
        });
    }
}

/// The address a relay entry serves, if it is one address's.
fn entry_address(entry: &RelayEntry) -> Option<Ipv4Addr> {
    match entry {
        RelayEntry::Route { address, .. } | RelayEntry::ProxyArp { address, .. } => Some(*address),
        RelayEntry::Forwarding { .. } => None,
    }
}

/// How long after start a node waits before it asks a sibling to relay: its public links'
/// first probe rounds (rise of them, each answered within the timeout) plus one period.
fn startup_grace(relay: &Relay) -> Duration {
    let public_probed = relay
        .interfaces
        .iter()
        .any(|i| i.class == InterfaceClass::Public && !i.probe_targets.is_empty());
    if !public_probed {
        return Duration::ZERO;
    }
    relay.probe_period * relay.probe_rise + relay.probe_timeout + relay.probe_period
}

/// Reads a catcher's socket whenever it is readable and keeps what it caught.
fn spawn_catcher(
    name: String,
    catcher: steadfast_os::relay_catch::FrameCatcher,
    caught: Arc<std::sync::Mutex<Caught>>,
) -> anyhow::Result<Arc<AsyncFd<steadfast_os::relay_catch::FrameCatcher>>> {
    // SAFETY: the catcher owns its socket and returns that same descriptor for as long as it
    // lives; the AsyncFd owns the catcher.
    let catcher =
        unsafe { AsyncFd::register_with_interest(catcher, tokio::io::Interest::READABLE) }
            .with_context(|| format!("relay: registering the frame catcher of {name}"))?;
    let catcher = Arc::new(catcher);
    let shell_side = catcher.clone();
    tokio::spawn(async move {
        loop {
            let mut guard = match catcher.readable().await {
                Ok(guard) => guard,
                Err(e) => {
                    tracing::error!("relay: catching frames on {name}: {e}; no longer");
                    return;
                }
            };
            let more = {
                let Ok(mut kept) = caught.lock() else { return };
                match catcher
                    .get_ref()
                    .drain(CATCH_MAX, |packet| kept.keep(packet))
                {
                    Ok(more) => more,
                    Err(e) => {
                        tracing::debug!("relay: caught frames on {name}: {e}");
                        false
                    }
                }
            };
            if more {
                // A flood must not keep the probes and leases of this thread waiting.
                drop(guard);
                tokio::task::yield_now().await;
            } else {
                guard.clear_ready();
            }
        }
    });
    Ok(shell_side)
}

/// Reads a prober's socket whenever it is readable and reports the link when a target
/// answered.
fn spawn_answer_reader(
    name: String,
    prober: Arc<AsyncFd<ArpProber>>,
    targets: Vec<Ipv4Addr>,
    answers: mpsc::UnboundedSender<String>,
) {
    tokio::spawn(async move {
        loop {
            let mut guard = match prober.readable().await {
                Ok(guard) => guard,
                Err(e) => {
                    tracing::error!("relay: ARP probes on {name}: {e}; the link is judged by carrier alone from now");
                    return;
                }
            };
            guard.clear_ready();
            match prober.get_ref().drain_answers(&targets) {
                Ok(true) => {
                    if answers.send(name.clone()).is_err() {
                        return;
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::debug!("relay: ARP answers on {name}: {e}"),
            }
        }
    });
}
