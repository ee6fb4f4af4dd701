//! The node daemon: the I/O shell around the election state machine.
//!
//! One loop owns the election. It waits for a heartbeat frame, the election's next deadline, a
//! health verdict, a control request or a signal, feeds the election, and carries out the
//! actions in order (addresses through netlink, announcements through a packet socket).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use steadfast_core::election::{
    Action, DeathEvidence, Destination, Disposition, Election, Event, Reason,
};
use steadfast_core::election_messages::Envelope;
use steadfast_core::heartbeat_wire::{self, FrameError, ReplayGuard};
use steadfast_core::signed_datagram::ReplayRefusal;
use steadfast_core::{Message, NodeId, Role};
use steadfast_os::peer_probe::{PeerProber, ProbeAnswer};
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::control::{self, CommandAnswer, ControlRequest};
use crate::health;
use crate::hooks::{self, HookCounters, RoleChange};
use crate::service_manager;
use crate::settings::{ServiceSettings, Settings};
use crate::status::{Counters, NodeStatus, PeerStatus, ServiceStatus};

/// How long a planned stop waits for the data plane to hand its connections over.
const HAND_OVER_WAIT: Duration = Duration::from_secs(2);

/// How long `steadfast move` waits, once the address is given up, to hear its target as
/// primary before it reports failure (the group then elects as usual).
const MOVE_WAIT: Duration = Duration::from_secs(5);

/// A hand-over of the data plane's connections under way (see `PlaneHandle::hand_over`).
type HandOver = std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send>>;

/// A switchover the operator asked for: `steadfast move` or `standby on` at the primary.
struct Switchover {
    /// The member the address moves to; `None`: standby, any member may stand.
    to: Option<NodeId>,
    started: Instant,
    /// Sessions handed over, and when the address was given up.
    released: Option<(u64, Instant)>,
    reply: Option<tokio::sync::oneshot::Sender<CommandAnswer>>,
}

/// Where standby is kept so that it outlives a restart of the daemon: beside the control
/// socket (`/run/steadfast/NAME.standby` by default: kept over a restart, gone at a reboot).
fn standby_file(control_socket: &Path) -> PathBuf {
    control_socket.with_extension("standby")
}

/// Resolves at SIGTERM or SIGINT, having told systemd at once: a duplex hand-over takes a
/// while, and systemd reports the unit as stopping meanwhile, not as failing.
async fn stop_requested(
    sigterm: &mut tokio::signal::unix::Signal,
    sigint: &mut tokio::signal::unix::Signal,
) {
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
    }
    service_manager::stopping();
}

/// One interface the service addresses live on.
struct AddressSite {
    ifindex: u32,
    garp: crate::announce::Announcer,
}

struct Daemon {
    settings: Settings,
    config_path: PathBuf,
    election: Election,
    origin: Instant,
    socket: UdpSocket,
    replay: ReplayGuard,
    counter: u64,
    counters: Counters,
    hook_counters: Arc<HookCounters>,
    netlink: steadfast_os::addr::Netlink,
    sites: BTreeMap<String, AddressSite>,
    vip_held: bool,
    /// Each health check's last verdict (None: none yet) and why.
    check_verdicts: Vec<(Option<bool>, String)>,
    /// Whether the election has had a health verdict since the start (before it, the node
    /// tells its peers it is starting).
    health_known: bool,
    /// The dead-man switch: while it is armed the addresses work; when this process dies the
    /// node's kernel stops answering for them (I5).
    fence: Option<steadfast_os::fence::Fence>,
    /// The election lease last given to the fence's kernel lease (see [`Self::renew_kernel_lease`]).
    kernel_lease: Option<Duration>,
    /// Hooks still running; at exit they get their timeout to finish.
    running_hooks: Vec<tokio::task::JoinHandle<()>>,
    /// The simplex/duplex data plane, told the node's role after every election step.
    plane: Option<crate::plane::PlaneHandle>,
    plane_mode: String,
    /// Probes the hosts of silent peers the election waits for (None: no raw socket here).
    prober: Option<tokio::io::unix::AsyncFd<steadfast_os::peer_probe::PeerProber>>,
    /// The silent peers being probed now (see `Election::peers_to_probe`).
    probes: BTreeMap<NodeId, PeerProbe>,
    /// Per peer: frames that came more than two intervals after the one before, the longest
    /// gap, and what a probe found.
    peer_notes: BTreeMap<NodeId, PeerNotes>,
    /// The link relay's shell (issue 19), when configured.
    relay: Option<crate::relay::RelayHandle>,
    /// `steadfast move` or `standby on` under way.
    switchover: Option<Switchover>,
}

/// One silent peer under probe.
struct PeerProbe {
    address: Ipv4Addr,
    /// When probing began, and the last answer of its host since.
    since: Instant,
    answered: Option<Instant>,
    next_send: Instant,
}

#[derive(Default)]
struct PeerNotes {
    late_heartbeats: u64,
    longest_gap: Duration,
    dead: Option<DeathEvidence>,
    /// The number of its last heartbeat: it starts again from 1 when the peer restarts.
    last_seq: Option<u64>,
}

/// Runs a member (`witness == false`) or the witness until SIGTERM/SIGINT.
/// Reply pieces of a streamed download are half a megabyte each, and a proxy allocates and
/// frees several per piece (the read buffer, the frame to the backup, the bytes kept until the
/// client acknowledges them). With glibc's defaults such blocks are mapped and unmapped, or the
/// heap trimmed, each time: the kernel then faults in and zeroes every page again, a fifth of the
/// primary's CPU on a 32 MiB download. Freed memory stays in the process instead, up to a bound.
fn keep_freed_buffers_for_reuse() {
    const MAPPED_ABOVE: libc::c_int = 16 << 20;
    const TRIMMED_ABOVE: libc::c_int = 128 << 20;
    // SAFETY: mallopt only changes the allocator's tuning; both values are within glibc's
    // accepted ranges, and nothing else runs yet.
    let set = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MAPPED_ABOVE) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIMMED_ABOVE) == 1
    };
    if !set {
        tracing::warn!("the allocator refused its tuning (mallopt): large replies cost more CPU");
    }
}

pub fn run(config_path: &Path, witness: bool) -> anyhow::Result<()> {
    keep_freed_buffers_for_reuse();
    let settings = Settings::load(config_path)?;
    if witness != settings.is_witness() {
        anyhow::bail!(
            "{}: node_id {} is {} the witness: use `steadfast {}`",
            config_path.display(),
            settings.node_id,
            if settings.is_witness() { "" } else { "not" },
            if settings.is_witness() {
                "witness"
            } else {
                "run"
            }
        );
    }
    settings.refuse_unimplemented_modes(config_path)?;
    crate::dead_man::install();
    // The proxy holds two descriptors per client connection: take all the system grants.
    if let Err(e) = steadfast_os::limits::raise_open_files() {
        tracing::warn!("{e}: the proxy serves fewer connections at once");
    }
    if let Err(e) = steadfast_os::sched::set_realtime_priority(settings.realtime_priority) {
        tracing::warn!("cannot raise the scheduling priority (heartbeats may lag under load): {e}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    runtime.block_on(async move {
        let mut daemon = Daemon::start(settings, config_path.to_path_buf()).await?;
        daemon.run().await
    })
}

/// This process's incarnation: peers echo it, so nothing sent before it started is taken.
fn random_incarnation() -> anyhow::Result<u64> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| anyhow::anyhow!("drawing the incarnation: {e}"))?;
    Ok(u64::from_be_bytes(bytes))
}

fn now_wall_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
}

impl Daemon {
    async fn start(settings: Settings, config_path: PathBuf) -> anyhow::Result<Daemon> {
        if settings.election.two_node && settings.election.witness.is_none() {
            tracing::warn!(
                "two_node = true without a witness: if the nodes lose sight of each other both \
                 serve the address (split brain). Add a witness to avoid it."
            );
        }
        let netlink = steadfast_os::addr::Netlink::new()
            .await
            .context("opening the netlink socket")?;
        let mut sites = BTreeMap::new();
        for svc in &settings.services {
            if sites.contains_key(&svc.interface) {
                continue;
            }
            let link = netlink
                .link_by_name(&svc.interface)
                .await
                .with_context(|| format!("service {}: interface {}", svc.name, svc.interface))?;
            let garp = steadfast_os::garp::GarpSender::open(link.index, link.mac)
                .with_context(|| format!("opening a packet socket on {}", svc.interface))?;
            sites.insert(
                svc.interface.clone(),
                AddressSite {
                    ifindex: link.index,
                    garp: crate::announce::Announcer::new(garp),
                },
            );
        }
        if let Some(plane_settings) = settings.plane_settings() {
            crate::plane::destroy_lingering_sockets(&plane_settings.service);
        }
        let fence = if settings.services.is_empty() {
            None
        } else {
            let vips: Vec<Ipv4Addr> = settings.services.iter().map(|s| s.vip).collect();
            Some(
                steadfast_os::fence::Fence::arm(&settings.group_name, &vips)
                    .context("arming the dead-man switch (nftables owner table)")?,
            )
        };
        let bind = SocketAddr::V4(SocketAddrV4::new(settings.local_address, settings.port));
        let socket = UdpSocket::bind(bind)
            .await
            .with_context(|| format!("binding the heartbeat socket {bind}"))?;
        let origin = Instant::now();
        let election = Election::new(settings.election.clone(), Duration::ZERO);
        let checks = settings.checks.len();
        let plane_mode = settings
            .services
            .iter()
            .find(|s| s.proxied)
            .map(|s| s.mode.clone())
            .unwrap_or_default();
        // The data plane runs the notify hook on its alarms too, counted with the role changes.
        let hook_counters = Arc::new(HookCounters::default());
        let plane = match settings.plane_settings() {
            Some(mut plane_settings) => {
                plane_settings.hook_counters = hook_counters.clone();
                Some(crate::plane::start(plane_settings).context("starting the data plane")?)
            }
            None => None,
        };
        let prober = match PeerProber::open().and_then(|p| {
            // SAFETY: the prober owns its socket and returns that same descriptor for as long
            // as it lives; the AsyncFd owns the prober.
            unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(p, tokio::io::Interest::READABLE)
            }
            .map_err(|e| steadfast_os::OsError::Unexpected {
                what: format!("registering the peer prober's socket: {e}"),
            })
        }) {
            Ok(prober) => Some(prober),
            Err(e) => {
                tracing::warn!(
                    "cannot probe the hosts of silent peers ({e}): a member holding open \
                     connections that falls silent is waited for the whole holder grace"
                );
                None
            }
        };
        let relay = match &settings.relay {
            Some(relay) => Some(
                crate::relay::start(crate::relay::RelaySettings {
                    node_id: settings.node_id,
                    key: settings.key.clone(),
                    relay: relay.clone(),
                    own_address: settings.local_address,
                    owner_table: settings.control_socket.with_extension("relay-owner"),
                })
                .context("starting the link relay")?,
            ),
            None => None,
        };
        let mut daemon = Daemon {
            relay,
            settings,
            config_path,
            election,
            origin,
            socket,
            replay: ReplayGuard::new(random_incarnation()?),
            counter: now_wall_micros(),
            counters: Counters::default(),
            hook_counters,
            netlink,
            sites,
            vip_held: true,
            check_verdicts: vec![(None, "not checked yet".to_string()); checks],
            health_known: false,
            running_hooks: Vec::new(),
            fence,
            kernel_lease: None,
            plane,
            plane_mode,
            prober,
            probes: BTreeMap::new(),
            peer_notes: BTreeMap::new(),
            switchover: None,
        };
        // A previous life may have left the addresses behind: start clean, as a backup.
        daemon.release_addresses().await;
        Ok(daemon)
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let (health_tx, mut health_rx) = mpsc::channel(64);
        let mut health_tasks = health::spawn_checks(&self.settings.checks, health_tx.clone());
        let (control_tx, mut control_rx) = mpsc::channel(16);
        if let Some(address) = self.settings.metrics_listen {
            let listener = crate::metrics::bind(address)?;
            tokio::spawn(crate::metrics::serve(listener, control_tx.clone()));
            tracing::info!("metrics on http://{address}/metrics");
        }
        control::serve(&self.settings.control_socket, control_tx)?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sighup = signal(SignalKind::hangup())?;
        let mut buf = vec![0u8; heartbeat_wire::MAX_FRAME_LEN + 64];
        tracing::info!(
            "node {} started: {} voters, quorum {}, heartbeat {:?} × {}",
            self.settings.node_id,
            self.settings.election.voters().len(),
            self.settings.election.quorum(),
            self.settings.election.heartbeat_interval,
            self.settings.election.miss_count
        );
        // keepalived users expect a notify at start too: the node enters backup (or witness).
        self.run_hook(
            self.election.role(),
            0,
            steadfast_core::election::Reason::Started.to_string(),
        );
        self.feed_health().await;
        let standby_file = standby_file(&self.settings.control_socket);
        if !self.election.config().is_witness() && standby_file.exists() {
            tracing::warn!(
                "standby, as before the restart ({} exists): this node will not serve until \
                 `steadfast standby off`",
                standby_file.display()
            );
            self.feed(Event::Standby(true)).await;
        }
        self.feed(Event::Tick).await;
        // A stop first hands the connections over (see `PlaneHandle::hand_over`) while this
        // loop goes on: were the heartbeats to stop meanwhile, the backup would take over
        // before the sessions here were quiet.
        let mut hand_over: Option<HandOver> = None;
        // The same for a switchover the operator asked for; the process goes on.
        let mut switch_hand_over: Option<HandOver> = None;
        let mut watchdog = service_manager::Watchdog::from_environment();
        service_manager::ready();
        loop {
            let deadline = self.origin + self.election.next_deadline(self.now());
            tokio::select! {
                biased;
                () = stop_requested(&mut sigterm, &mut sigint), if hand_over.is_none() => match &self.plane {
                    Some(plane) => hand_over = Some(Box::pin(plane.hand_over(HAND_OVER_WAIT))),
                    None => break,
                },
                handed = async { hand_over.as_mut().expect("guarded by the condition").await }, if hand_over.is_some() => {
                    if handed > 0 {
                        tracing::info!("stopping: {handed} connections left for the backup to carry on");
                    }
                    break;
                }
                received = self.socket.recv_from(&mut buf) => {
                    match received {
                        Ok((len, from)) => {
                            let bytes = buf[..len].to_vec();
                            self.on_frame(&bytes, from).await;
                        }
                        Err(e) => tracing::warn!("heartbeat socket receive: {e}"),
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => { self.feed(Event::Tick).await; }
                () = watchdog.due() => watchdog.ping(),
                ready = async { self.prober.as_ref().expect("guarded by the condition").readable().await }, if self.prober.is_some() => {
                    match ready {
                        Ok(mut guard) => {
                            guard.clear_ready();
                            self.read_probe_answers().await;
                        }
                        Err(e) => tracing::warn!("peer prober: {e}"),
                    }
                }
                _ = tokio::time::sleep_until(self.next_probe_at().into()), if !self.probes.is_empty() => {
                    self.probe_silent_peers().await;
                }
                Some((index, healthy, why)) = health_rx.recv() => {
                    self.check_verdicts[index] = (Some(healthy), why);
                    self.feed_health().await;
                }
                handed = async { switch_hand_over.as_mut().expect("guarded by the condition").await }, if switch_hand_over.is_some() => {
                    switch_hand_over = None;
                    self.give_address_up(handed).await;
                }
                Some(request) = control_rx.recv() => match request {
                    ControlRequest::Status(reply) => self.answer_status(reply),
                    ControlRequest::Move { to, reply } => {
                        if let Some(handing) = self.begin_move(to, reply).await {
                            switch_hand_over = Some(handing);
                        }
                    }
                    ControlRequest::Standby { on, reply } => {
                        if let Some(handing) = self.set_standby(on, reply).await {
                            switch_hand_over = Some(handing);
                        }
                    }
                },
                _ = sighup.recv() => {
                    match self.reload() {
                        Ok((changed_checks, retuned)) => {
                            if let Some(event) = retuned {
                                self.feed(event).await;
                            }
                            if changed_checks {
                                for task in health_tasks.drain(..) {
                                    task.abort();
                                }
                                self.check_verdicts =
                                    vec![(None, "not checked yet".to_string()); self.settings.checks.len()];
                                health_tasks = health::spawn_checks(&self.settings.checks, health_tx.clone());
                                self.feed_health().await;
                            }
                        }
                        Err(e) => tracing::error!("reload refused, keeping the running configuration: {e:#}"),
                    }
                }
            }
            self.follow_switchover();
        }
        tracing::info!("stopping: releasing the address and telling the peers");
        self.feed(Event::Shutdown).await;
        self.release_addresses().await;
        if let Some(relay) = self.relay.take() {
            relay.stop();
        }
        let _ = std::fs::remove_file(&self.settings.control_socket);
        // The address is gone and the peers know: now let the shutdown hook finish.
        for hook in self.running_hooks.drain(..) {
            let _ = hook.await;
        }
        Ok(())
    }

    /// `steadfast move --to NODE`: refused (with the reason) unless this node is primary, `to`
    /// can serve, and, in duplex, `to` is the backup that protects this node's connections;
    /// else the data plane hands its connections over (as at a planned stop) and returns the
    /// hand-over to await. The answer goes out once `to` is heard as primary.
    async fn begin_move(
        &mut self,
        to: NodeId,
        reply: tokio::sync::oneshot::Sender<CommandAnswer>,
    ) -> Option<HandOver> {
        let now = self.now();
        let refusal = if self.switchover.is_some() {
            Some("a switchover is already under way".to_string())
        } else if let Some(refusal) = self.election.move_refusal(to, now) {
            Some(refusal.to_string())
        } else if self.election.standby() {
            Some("this node is in standby".to_string())
        } else {
            self.duplex_backup_refusal(to)
        };
        if let Some(why) = refusal {
            tracing::warn!("move to node {to} refused: {why}");
            let _ = reply.send(Err(format!("move to node {to} refused: {why}")));
            return None;
        }
        tracing::info!("planned switchover to node {to}: handing the connections over");
        self.begin_switchover(Some(to), reply).await
    }

    /// In duplex only the backup this primary replicates to holds its connections: a move to
    /// another member would reset them all.
    fn duplex_backup_refusal(&self, to: NodeId) -> Option<String> {
        if !self.settings.services.iter().any(|s| s.mode == "duplex") {
            return None;
        }
        match self.duplex_backup() {
            Some(backup) if backup == to => None,
            Some(backup) => Some(format!(
                "node {to} is not this primary's duplex backup (node {backup} is): it holds none \
                 of the open connections, which a move would reset"
            )),
            None => Some(format!(
                "no duplex backup protects this primary: node {to} holds none of its open \
                 connections"
            )),
        }
    }

    /// The member the duplex plane replicates to: the lowest-id member heard, able to serve.
    fn duplex_backup(&self) -> Option<NodeId> {
        let now = self.now();
        let me = self.settings.node_id;
        self.election
            .peers()
            .iter()
            .filter(|(&id, p)| {
                id != me
                    && self.settings.election.members.contains(&id)
                    && p.healthy
                    && self.election.peer_alive(id, now)
            })
            .map(|(&id, _)| id)
            .min()
    }

    /// Starts a switchover: the plane's hand-over to await, or, without a plane, the address
    /// given up at once.
    async fn begin_switchover(
        &mut self,
        to: Option<NodeId>,
        reply: tokio::sync::oneshot::Sender<CommandAnswer>,
    ) -> Option<HandOver> {
        self.switchover = Some(Switchover {
            to,
            started: Instant::now(),
            released: None,
            reply: Some(reply),
        });
        match &self.plane {
            Some(plane) => Some(Box::pin(plane.hand_over(HAND_OVER_WAIT))),
            None => {
                self.give_address_up(0).await;
                None
            }
        }
    }

    /// The connections are handed over: step down and tell the peers (a Handoff for a move, a
    /// Release for standby).
    async fn give_address_up(&mut self, handed: u64) {
        let Some(switch) = self.switchover.as_mut() else {
            return;
        };
        switch.released = Some((handed, Instant::now()));
        let to = switch.to;
        tracing::info!(
            "switchover: {handed} connections handed over in {:?}",
            switch.started.elapsed()
        );
        match to {
            Some(to) => self.feed(Event::MoveTo(to)).await,
            None => self.feed(Event::Standby(true)).await,
        };
        self.follow_switchover();
    }

    /// Answers the switchover's command once it is done: a move once its target is heard as
    /// primary (or after `MOVE_WAIT`), standby once the address is given up.
    fn follow_switchover(&mut self) {
        let Some(switch) = &self.switchover else {
            return;
        };
        let Some((handed, released_at)) = switch.released else {
            return;
        };
        let hand_over_ms = (released_at - switch.started).as_secs_f64() * 1000.0;
        let answer = match switch.to {
            None => Ok(serde_json::json!({
                "standby": true,
                "handed_over": handed,
                "hand_over_ms": hand_over_ms,
            })),
            Some(to) if self.election.primary() == Some(to) => {
                let elected_ms = switch.started.elapsed().as_secs_f64() * 1000.0;
                tracing::info!(
                    "planned switchover: node {to} is primary {elected_ms:.1} ms after the \
                     hand-over began ({handed} connections handed over in {hand_over_ms:.1} ms)"
                );
                Ok(serde_json::json!({
                    "moved_to": to,
                    "handed_over": handed,
                    "hand_over_ms": hand_over_ms,
                    "stall_ms": elected_ms,
                }))
            }
            Some(to) if released_at.elapsed() >= MOVE_WAIT => {
                tracing::error!(
                    "planned switchover: node {to} was not heard as primary within {MOVE_WAIT:?}"
                );
                Err(format!(
                    "gave the address up ({handed} connections handed over) but node {to} was \
                     not heard as primary within {MOVE_WAIT:?}; the group elects as usual"
                ))
            }
            Some(_) => return,
        };
        if let Some(reply) = self.switchover.take().and_then(|s| s.reply) {
            let _ = reply.send(answer);
        }
    }

    /// `steadfast standby on|off`. On is kept in [`standby_file`] so that it outlives a
    /// restart; a primary hands its connections over first, as at a planned stop.
    async fn set_standby(
        &mut self,
        on: bool,
        reply: tokio::sync::oneshot::Sender<CommandAnswer>,
    ) -> Option<HandOver> {
        if self.election.config().is_witness() {
            let _ = reply.send(Err(
                "this is the witness: it never serves, standby means nothing for it".to_string(),
            ));
            return None;
        }
        let file = standby_file(&self.settings.control_socket);
        let kept = if on {
            std::fs::write(
                &file,
                b"standby: `steadfast standby off` removes this file\n",
            )
        } else {
            std::fs::remove_file(&file).or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
        };
        if let Err(e) = kept {
            let _ = reply.send(Err(format!(
                "cannot {} {}: {e}",
                if on { "write" } else { "remove" },
                file.display()
            )));
            return None;
        }
        if on == self.election.standby() {
            let _ = reply.send(Ok(serde_json::json!({ "standby": on })));
            return None;
        }
        tracing::info!("standby {}", if on { "on" } else { "off" });
        if on && self.election.is_primary() && self.switchover.is_none() {
            return self.begin_switchover(None, reply).await;
        }
        self.feed(Event::Standby(on)).await;
        let _ = reply.send(Ok(serde_json::json!({ "standby": on })));
        None
    }

    /// With no checks the node is healthy; with checks it proves health first (rise count).
    /// Until every check has given a verdict (none failing), a node that just started is
    /// pending (its peers wait for it a while); after a reload that changed the checks, the
    /// verdict it had holds until the new checks give theirs.
    async fn feed_health(&mut self) {
        let failing = self.check_verdicts.iter().any(|(ok, _)| *ok == Some(false));
        let unknown = self.check_verdicts.iter().any(|(ok, _)| ok.is_none());
        let event = if failing {
            Event::HealthChanged(false)
        } else if unknown {
            if self.health_known {
                return;
            }
            Event::HealthPending
        } else {
            Event::HealthChanged(true)
        };
        if let Event::HealthChanged(healthy) = event {
            if healthy != self.election.healthy() || !self.health_known {
                tracing::info!("health: {}", if healthy { "passing" } else { "failing" });
            }
            self.health_known = true;
        }
        self.feed(event).await;
    }

    async fn on_frame(&mut self, bytes: &[u8], from: SocketAddr) {
        if bytes.is_empty() {
            // A peer's probe of this daemon's heartbeat port (see `probe_silent_peers`).
            return;
        }
        let envelope = match heartbeat_wire::decode(bytes, &self.settings.key) {
            Ok(e) => e,
            Err(FrameError::BadMac) => {
                self.counters.dropped_bad_mac += 1;
                return;
            }
            Err(e) => {
                self.counters.dropped_malformed += 1;
                tracing::debug!("dropped a malformed frame from {from}: {e}");
                return;
            }
        };
        // The MAC proves the key; the source address must also be the sender's own (any
        // port: a voter behind NAT or a restarted socket may use another one).
        let known = self.settings.voters.get(&envelope.sender).copied();
        if envelope.sender == self.settings.node_id
            || known.is_none_or(|addr| std::net::IpAddr::V4(addr) != from.ip())
        {
            self.counters.dropped_unknown_node += 1;
            return;
        }
        match self.replay.admit(&envelope) {
            Ok(()) => {}
            Err(ReplayRefusal::Unfresh { .. }) => {
                self.counters.dropped_unfresh += 1;
                return;
            }
            Err(_) => {
                self.counters.dropped_replay += 1;
                return;
            }
        }
        self.counters.frames_received += 1;
        if let Message::Heartbeat { seq, .. } = envelope.message {
            self.note_gap(envelope.sender, seq);
        }
        let disposition = self
            .feed(Event::Received {
                from: envelope.sender,
                epoch: envelope.epoch,
                message: envelope.message,
            })
            .await;
        match disposition {
            Disposition::Accepted => {}
            Disposition::OldEpoch => self.counters.dropped_old_epoch += 1,
            Disposition::UnknownSender => self.counters.dropped_unknown_node += 1,
        }
    }

    async fn feed(&mut self, event: Event) -> Disposition {
        let now = self.now();
        // Sessions left from a primary life while another node serves are not connections
        // this node could carry on: only a primary, or a node between primaries, holds any.
        let me = self.settings.node_id;
        let holds = self.election.primary().is_none_or(|p| p == me)
            && self
                .plane
                .as_ref()
                .is_some_and(|plane| plane.carries_unprotected_connections());
        if holds != self.election.holds_connections() {
            tracing::info!(
                "{} open connections that no other node could carry on",
                if holds {
                    "holding"
                } else {
                    "no longer holding"
                }
            );
            let (actions, _) = self
                .election
                .handle(Event::HoldsConnectionsChanged(holds), now);
            self.renew_kernel_lease();
            for action in actions {
                self.carry_out(action).await;
            }
        }
        let (actions, disposition) = self.election.handle(event, now);
        self.renew_kernel_lease();
        for action in actions {
            self.carry_out(action).await;
        }
        self.update_plane_role();
        self.update_probes();
        disposition
    }

    /// Logs a heartbeat that comes more than two intervals after the sender's previous frame
    /// of the same life (its heartbeat numbers go on): the silences that elections must ride
    /// out (a paused daemon, a starved receive path). A peer that restarted numbers its
    /// heartbeats from 1 again: it was dead, not late.
    fn note_gap(&mut self, from: NodeId, seq: u64) {
        let now = self.now();
        let last = self.election.peers().get(&from).and_then(|p| p.last_heard);
        let notes = self.peer_notes.entry(from).or_default();
        let same_life = notes.last_seq.is_some_and(|last_seq| seq > last_seq);
        notes.last_seq = Some(seq);
        let Some(last) = last.filter(|_| same_life) else {
            return;
        };
        let gap = now.saturating_sub(last);
        let interval = self.settings.election.heartbeat_interval;
        if gap <= interval * 2 {
            return;
        }
        notes.late_heartbeats += 1;
        notes.longest_gap = notes.longest_gap.max(gap);
        tracing::info!(
            "late heartbeat: node {from} was silent for {:.1} ms ({:.1} intervals)",
            gap.as_secs_f64() * 1e3,
            gap.as_secs_f64() / interval.as_secs_f64()
        );
    }

    /// Starts probing the silent peers the election now waits for, and stops probing the
    /// others (heard again, found dead, or waited for long enough).
    fn update_probes(&mut self) {
        if self.prober.is_none() {
            return;
        }
        let wanted = self.election.peers_to_probe(self.now());
        self.probes.retain(|id, _| wanted.contains(id));
        for id in wanted {
            if self.probes.contains_key(&id) {
                continue;
            }
            let Some(&address) = self.settings.voters.get(&id) else {
                continue;
            };
            tracing::info!(
                "node {id} holds open connections no other node could carry on and went \
                 silent: waiting up to {:?} for it before standing, probing its host",
                self.settings.election.holder_grace
            );
            let now = Instant::now();
            self.probes.insert(
                id,
                PeerProbe {
                    address,
                    since: now,
                    answered: None,
                    next_send: now,
                },
            );
        }
    }

    /// How long a probed host may stay without answering before it counts as dead: long
    /// enough to ride out a backlogged receive path (its heartbeats go just as silent then),
    /// short against the holder grace it cuts short.
    fn probe_window(&self) -> Duration {
        let election = &self.settings.election;
        (election.holder_grace / 4).max(election.lease())
    }

    fn next_probe_at(&self) -> Instant {
        self.probes
            .values()
            .map(|p| p.next_send)
            .min()
            .unwrap_or_else(Instant::now)
    }

    /// Sends the probes that are due (an echo request to the host, an empty datagram to its
    /// heartbeat port) and tells the election of a host silent for a whole window.
    async fn probe_silent_peers(&mut self) {
        let now = Instant::now();
        let interval = self.settings.election.heartbeat_interval;
        let window = self.probe_window();
        let mut dead = Vec::new();
        for (&id, probe) in self.probes.iter_mut() {
            if probe.next_send > now {
                continue;
            }
            probe.next_send = now + interval;
            if let Some(prober) = self.prober.as_mut() {
                if let Err(e) = prober.get_mut().send_echo(probe.address) {
                    tracing::debug!("probing node {id}: {e}");
                }
            }
            let port = SocketAddr::V4(SocketAddrV4::new(probe.address, self.settings.port));
            let _ = self.socket.try_send_to(&[], port);
            let quiet_since = probe.answered.unwrap_or(probe.since).max(probe.since);
            if now.duration_since(quiet_since) >= window {
                dead.push((
                    id,
                    DeathEvidence::HostUnreachable,
                    now.duration_since(quiet_since),
                ));
            }
        }
        for (id, evidence, silent) in dead {
            tracing::warn!(
                "node {id} found dead: {evidence} (no echo reply for {:.0} ms)",
                silent.as_secs_f64() * 1e3
            );
            self.peer_found_dead(id, evidence).await;
        }
    }

    async fn read_probe_answers(&mut self) {
        let answers = match self.prober.as_ref().map(|p| p.get_ref().answers()) {
            Some(Ok(answers)) => answers,
            Some(Err(e)) => {
                tracing::warn!("peer prober: {e}");
                return;
            }
            None => return,
        };
        let now = Instant::now();
        let mut dead = Vec::new();
        for answer in answers {
            match answer {
                ProbeAnswer::HostAnswered { from } => {
                    for probe in self.probes.values_mut().filter(|p| p.address == from) {
                        probe.answered = Some(now);
                    }
                }
                ProbeAnswer::PortClosed { host, port } if port == self.settings.port => {
                    dead.extend(
                        self.probes
                            .iter()
                            .filter(|(_, p)| p.address == host)
                            .map(|(&id, _)| id),
                    );
                }
                ProbeAnswer::PortClosed { .. } => {}
            }
        }
        for id in dead {
            tracing::warn!("node {id} found dead: {}", DeathEvidence::DaemonGone);
            self.peer_found_dead(id, DeathEvidence::DaemonGone).await;
        }
    }

    async fn peer_found_dead(&mut self, id: NodeId, evidence: DeathEvidence) {
        self.probes.remove(&id);
        self.counters.peers_found_dead += 1;
        self.peer_notes.entry(id).or_default().dead = Some(evidence);
        self.feed(Event::PeerDead { id, evidence }).await;
    }

    /// Gives the kernel the election's lease, before anything acts on the step that renewed,
    /// granted or ended it: while this node's daemon runs, the fence lets the service
    /// addresses through only while it holds the lease (never past it); when the
    /// daemon stops without dying, its kernel falls silent before another node can be elected.
    fn renew_kernel_lease(&mut self) {
        let until = self.election.lease_until();
        if until == self.kernel_lease {
            return;
        }
        self.kernel_lease = until;
        let Some(fence) = self.fence.as_mut() else {
            return;
        };
        let remaining = until.map(|until| until.saturating_sub(self.origin.elapsed()));
        let started = Instant::now();
        let result = fence.hold_lease(remaining);
        let took = started.elapsed();
        if took > Duration::from_millis(2) {
            tracing::warn!("giving the kernel the lease took {took:?}");
        }
        if let Err(e) = result {
            self.counters.kernel_lease_errors += 1;
            tracing::error!(
                "giving the kernel the lease ({remaining:?} left; without it the fence drops the service addresses): {e}"
            );
        }
    }

    /// Tells the data plane what the election made of this node (only when it changed).
    fn update_plane_role(&self) {
        let Some(plane) = &self.plane else {
            return;
        };
        let me = self.settings.node_id;
        let epoch = self.election.epoch();
        let peer = |id| {
            self.settings
                .voters
                .get(&id)
                .map(|&address| crate::plane::Peer { id, address })
        };
        // The lease first: a session that sees the new role may already need it.
        plane
            .lease
            .set(self.election.lease_until().map(|until| self.origin + until));
        let role = if self.vip_held {
            let backup = self.duplex_backup().and_then(peer);
            crate::plane::PlaneRole::Primary { epoch, backup }
        } else if self.settings.election.members.contains(&me) {
            let primary = self.election.primary().filter(|&p| p != me).and_then(peer);
            crate::plane::PlaneRole::Backup { epoch, primary }
        } else {
            crate::plane::PlaneRole::Idle
        };
        plane.role.send_if_modified(|current| {
            if *current == role {
                false
            } else {
                *current = role;
                true
            }
        });
    }

    async fn carry_out(&mut self, action: Action) {
        match action {
            Action::Send { to, epoch, message } => {
                if matches!(message, steadfast_core::Message::VoteRequest { .. }) {
                    self.counters.elections_started += 1;
                }
                self.counter += 1;
                let targets: Vec<(NodeId, Ipv4Addr)> = match to {
                    Destination::AllVoters => self
                        .settings
                        .voters
                        .iter()
                        .filter(|(&id, _)| id != self.settings.node_id)
                        .map(|(&id, &a)| (id, a))
                        .collect(),
                    Destination::Voter(id) => self
                        .settings
                        .voters
                        .get(&id)
                        .map(|&a| (id, a))
                        .into_iter()
                        .collect(),
                };
                for (id, addr) in targets {
                    // Each peer's frame echoes that peer's incarnation.
                    let bytes = heartbeat_wire::encode(
                        &Envelope {
                            sender: self.settings.node_id,
                            epoch,
                            counter: self.counter,
                            incarnation: self.replay.incarnation(),
                            echo: self.replay.echo_for(id),
                            message: message.clone(),
                        },
                        &self.settings.key,
                    );
                    // try_send: a full socket buffer must never stall the election loop.
                    match self.socket.try_send_to(
                        &bytes,
                        SocketAddr::V4(SocketAddrV4::new(addr, self.settings.port)),
                    ) {
                        Ok(_) => self.counters.frames_sent += 1,
                        Err(_) => self.counters.send_errors += 1,
                    }
                }
            }
            Action::TakeAddress { epoch } => {
                self.counters.elections_won += 1;
                self.take_addresses(epoch).await;
            }
            Action::ReleaseAddress => self.release_addresses().await,
            Action::RefreshAnnouncement => {
                if self.settings.refresh_on_heal && self.vip_held {
                    tracing::info!("a peer is back: announcing the address again");
                    self.announce();
                }
            }
            Action::RoleChanged {
                role,
                epoch,
                reason,
            } => {
                self.counters.role_changes += 1;
                if role != Role::Primary && self.election.holds_connections() {
                    self.note_step_down_holding(&reason);
                }
                tracing::info!(
                    "role {} in epoch {} ({}): {}",
                    role.as_str(),
                    epoch,
                    crate::status::epoch_label(epoch),
                    reason
                );
                self.run_hook(role, epoch, reason.to_string());
            }
        }
    }

    /// A step-down while this node holds open connections nobody else could carry on: they
    /// survive only if it is elected again before another node is.
    fn note_step_down_holding(&mut self, reason: &Reason) {
        *self
            .counters
            .step_downs_holding
            .entry(reason.kind().to_string())
            .or_default() += 1;
        tracing::warn!(
            "stepping down while holding open connections no other node could carry on ({reason}): \
             they are lost if another node is elected before this one is again"
        );
    }

    fn run_hook(&mut self, role: Role, epoch: u64, reason: String) {
        self.running_hooks.retain(|h| !h.is_finished());
        if let Some(hook) = &self.settings.hook {
            let handle = hooks::spawn(
                hook,
                RoleChange {
                    event: "role-change",
                    node_id: self.settings.node_id,
                    group: &self.settings.group_name,
                    role: role.as_str(),
                    epoch,
                    reason,
                },
                self.hook_counters.clone(),
            );
            self.running_hooks.extend(handle);
        }
    }

    async fn take_addresses(&mut self, epoch: u64) {
        self.set_addresses(true, &format!("epoch {epoch}")).await;
        self.announce();
    }

    async fn release_addresses(&mut self) {
        // The rest of a burst would claim the address again while the new master announces it.
        for site in self.sites.values_mut() {
            site.garp.cancel();
        }
        self.set_addresses(false, "release").await;
    }

    /// Adds (`present`) or removes every service address; a failure is counted and logged,
    /// never fatal (the other addresses still move).
    async fn set_addresses(&mut self, present: bool, why: &str) {
        // Duplex services place their address themselves (on lo while a backup receives
        // first): the data plane follows the role it is told.
        for svc in self.settings.services.iter().filter(|s| !s.duplex) {
            let ifindex = self.sites[&svc.interface].ifindex;
            let result = if present {
                self.netlink
                    .add_address(ifindex, svc.vip, svc.prefix_len)
                    .await
            } else {
                self.netlink
                    .remove_address(ifindex, svc.vip, svc.prefix_len)
                    .await
            };
            if let Err(e) = result {
                self.counters.address_errors += 1;
                let verb = if present { "add" } else { "remove" };
                tracing::error!("{why}: cannot {verb} {} on {}: {e}", svc.vip, svc.interface);
            }
        }
        self.vip_held = present;
        if let Some(relay) = &self.relay {
            let held = self.settings.services.iter().filter(|_| present);
            relay.set_service_addresses(held.map(|s| s.vip).collect());
        }
    }

    /// Gratuitous ARP burst: the first at once, the rest spaced in a task so the loop goes on.
    fn announce(&mut self) {
        let count = self.settings.garp_count;
        let spacing = self.settings.garp_spacing;
        for svc in self.settings.services.iter().filter(|s| !s.duplex) {
            let site = self
                .sites
                .get_mut(&svc.interface)
                .expect("every service has its site");
            let (first, scheduled) = site.garp.announce(svc.vip, count, spacing);
            match first {
                Ok(()) if count > 0 => self.counters.garp_sent += 1,
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!("gratuitous ARP for {} on {}: {e}", svc.vip, svc.interface)
                }
            }
            self.counters.garp_sent += u64::from(scheduled);
        }
    }

    /// Applies what can change without a restart; returns whether the health checks changed,
    /// and the election's event when preempt or the holder grace did.
    fn reload(&mut self) -> anyhow::Result<(bool, Option<Event>)> {
        let fresh = Settings::load(&self.config_path)?;
        let mut retuned = None;
        let restart_needed = fresh.restart_needed_for(&self.settings);
        if !restart_needed.is_empty() {
            tracing::warn!(
                "reload: {} changed; these take effect only after a restart",
                restart_needed.join(", ")
            );
        }
        let checks_changed = fresh.checks != self.settings.checks;
        let (preempt, holder_grace) = (fresh.election.preempt, fresh.election.holder_grace);
        if (preempt, holder_grace)
            != (
                self.settings.election.preempt,
                self.settings.election.holder_grace,
            )
        {
            tracing::info!("reload: preempt = {preempt}, holder grace {holder_grace:?}");
            self.settings.election.preempt = preempt;
            self.settings.election.holder_grace = holder_grace;
            retuned = Some(Event::Retuned {
                preempt,
                holder_grace,
            });
        }
        self.settings.hook = fresh.hook;
        self.settings.garp_count = fresh.garp_count;
        self.settings.garp_spacing = fresh.garp_spacing;
        self.settings.refresh_on_heal = fresh.refresh_on_heal;
        self.settings.checks = fresh.checks;
        tracing::info!("reloaded {}", self.config_path.display());
        Ok((checks_changed, retuned))
    }

    fn status(&self) -> NodeStatus {
        let now = self.now();
        let mut counters = self.counters.clone();
        counters.hooks_run = self
            .hook_counters
            .run
            .load(std::sync::atomic::Ordering::Relaxed);
        counters.hooks_failed = self
            .hook_counters
            .failed
            .load(std::sync::atomic::Ordering::Relaxed);
        NodeStatus {
            node_id: self.settings.node_id,
            group: self.settings.group_name.clone(),
            role: self.election.role().as_str().to_string(),
            epoch: self.election.epoch(),
            incarnation: self.replay.incarnation(),
            healthy: self.election.healthy(),
            health_detail: self
                .check_verdicts
                .iter()
                .zip(&self.settings.checks)
                .map(|((ok, why), check)| {
                    format!(
                        "{:?}: {}",
                        check.kind,
                        if *ok == Some(true) { "passing" } else { why }
                    )
                })
                .collect(),
            has_quorum: self.election.has_quorum(now),
            standby: self.election.standby(),
            handoff_to: self.election.handoff(now).map(|h| h.to),
            holds_connections: self.election.holds_connections(),
            waiting_for_holder: self.election.holder_to_wait_for(now),
            holder_grace_ms: self.settings.election.holder_grace.as_millis() as u64,
            primary: self.election.primary(),
            vip_held: self.vip_held,
            uptime_ms: now.as_millis() as u64,
            resident_bytes: crate::status::resident_bytes().unwrap_or(0),
            heartbeat_interval_ms: self.settings.election.heartbeat_interval.as_millis() as u64,
            miss_count: self.settings.election.miss_count,
            services: self
                .settings
                .services
                .iter()
                .map(|s: &ServiceSettings| ServiceStatus {
                    name: s.name.clone(),
                    vip: s.vip.to_string(),
                    ports: s.ports.clone(),
                    mode: s.mode.clone(),
                })
                .collect(),
            peers: self
                .election
                .peers()
                .iter()
                .map(|(&id, p)| PeerStatus {
                    id,
                    role: p.role.map(|r: Role| r.as_str().to_string()),
                    healthy: p.healthy,
                    has_quorum: p.has_quorum,
                    holds_connections: p.holds_connections,
                    alive: self.election.peer_alive(id, now),
                    last_heard_ms: p
                        .last_heard
                        .map(|t| now.saturating_sub(t).as_millis() as u64),
                    dead: p.dead.map(|why| why.to_string()),
                    late_heartbeats: self.peer_notes.get(&id).map_or(0, |n| n.late_heartbeats),
                    longest_gap_ms: self
                        .peer_notes
                        .get(&id)
                        .map_or(0, |n| n.longest_gap.as_millis() as u64),
                })
                .collect(),
            counters,
            // Filled in by `answer_status`, off this thread.
            data_plane: None,
        }
    }

    /// Answers a status request. The data plane's part takes locks its session threads hold:
    /// it is read on a blocking-pool thread, which runs at normal priority, so this realtime
    /// thread never waits for a preempted session (its heartbeats would lag past the lease).
    fn answer_status(&self, reply: tokio::sync::oneshot::Sender<NodeStatus>) {
        let mut status = self.status();
        let Some(plane) = &self.plane else {
            let _ = reply.send(status);
            return;
        };
        let shared = plane.shared.clone();
        let mode = self.plane_mode.clone();
        tokio::task::spawn_blocking(move || {
            status.data_plane = Some(plane_status(&mode, &shared));
            let _ = reply.send(status);
        });
    }
}

fn plane_status(mode: &str, shared: &crate::plane::PlaneShared) -> crate::status::DataPlaneStatus {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &shared.counters;
    let mut status = crate::status::DataPlaneStatus {
        mode: mode.to_string(),
        frames_logged: c.frames_logged.load(Relaxed),
        frames_forwarded: c.frames_forwarded.load(Relaxed),
        frames_dropped: c.frames_dropped.load(Relaxed),
        frames_refused: c.frames_refused.load(Relaxed),
        drop_reasons: shared
            .drop_reasons
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default(),
        arp_replies: c.arp_replies.load(Relaxed),
        log_bytes: c.log_bytes.load(Relaxed),
        protected_connections: shared.protected_connections.load(Relaxed),
        replies_logged: c.replies_logged.load(Relaxed),
        unprotected_ms: c.unprotected_ms.load(Relaxed),
        unprotected_now: shared.unprotected_now.load(Relaxed) != 0,
        backups_joined: c.backups_joined.load(Relaxed),
        backup_losses: c.backup_losses.load(Relaxed),
        takeovers: c.takeovers.load(Relaxed),
        connections_restored: c.connections_restored.load(Relaxed),
        connections_restored_unreported: c.connections_restored_unreported.load(Relaxed),
        probes_sent: c.probes_sent.load(Relaxed),
        probes_unanswered: c.probes_unanswered.load(Relaxed),
        connections_lost: c.connections_lost.load(Relaxed),
        syns_replayed: c.syns_replayed.load(Relaxed),
        syns_not_replayed: c.syns_not_replayed.load(Relaxed),
        lost_reasons: shared
            .lost_reasons
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default(),
        last_takeover_us: c.last_takeover_us.load(Relaxed),
        last_restore_per_second: c.last_restore_per_second.load(Relaxed),
        replication_frames_refused: c.replication_frames_refused.load(Relaxed),
        replication_old_epoch: c.replication_old_epoch.load(Relaxed),
        handshakes_refused: c.handshakes_refused.load(Relaxed),
        replication_stalls: c.replication_stalls.load(Relaxed),
        stale_link_attempts: c.stale_link_attempts.load(Relaxed),
        opened_unlogged: c.opened_unlogged.load(Relaxed),
        opened_around: c.opened_around.load(Relaxed),
        half_open_evicted: c.half_open_evicted.load(Relaxed),
        half_open_expired: c.half_open_expired.load(Relaxed),
        held_request_bytes: shared.held_request_bytes.load(Relaxed),
        request_bytes_budget: shared.request_bytes_budget.load(Relaxed),
        held_reply_bytes: shared.held_reply_bytes.load(Relaxed),
        forged_frames: c.forged_frames.load(Relaxed),
        adopted: c.adopted.load(Relaxed),
        frames_held_at_takeover: c.frames_held_at_takeover.load(Relaxed),
        guard_dropped: c.guard_dropped.load(Relaxed),
        guard_bounced: c.guard_bounced.load(Relaxed),
        sessions_dropped_at_step_down: c.sessions_dropped_at_step_down.load(Relaxed),
        ..Default::default()
    };
    if let Some(proxy) = shared.proxy.get() {
        let p = &proxy.counters;
        status.connections = p.connections.load(Relaxed);
        status.connections_unprotected = p.connections_unprotected.load(Relaxed);
        status.requests = p.requests.load(Relaxed);
        status.replies = p.replies.load(Relaxed);
        status.reply_bytes = p.reply_bytes.load(Relaxed);
        status.replies_unprotected = p.replies_unprotected.load(Relaxed);
        status.replies_fenced = p.replies_fenced.load(Relaxed);
        status.bad_requests = p.bad_requests.load(Relaxed);
        status.backend_errors = p.backend_errors.load(Relaxed);
        status.backend_retries = p.backend_retries.load(Relaxed);
        status.client_idle_timeouts = p.client_idle_timeouts.load(Relaxed);
        status.client_header_timeouts = p.client_header_timeouts.load(Relaxed);
        status.connections_refused = p.connections_refused.load(Relaxed);
        status.accepted_by_syn_cookie = p.accepted_by_syn_cookie.load(Relaxed);
        status.max_connections = proxy.admission.limit() as u64;
        status.adopted += p.adopted.load(Relaxed);
        status.adoptions_skipped = p.adoptions_skipped.load(Relaxed);
        status.replies_resumed = p.replies_resumed.load(Relaxed);
        status.resumes_failed = p.resumes_failed.load(Relaxed);
        status.replies_aborted = p.replies_aborted.load(Relaxed);
        status.sessions_open = proxy.census.open();
        status.sessions_retired = p.sessions_retired.load(Relaxed);
        let stages = &p.stages;
        for (name, histogram) in [
            ("backend", &stages.backend),
            ("backup_hold", &stages.backup_hold),
            ("client_write", &stages.client_write),
            ("request", &stages.request),
        ] {
            add_stage(&mut status, name, histogram);
        }
    }
    if mode == "active" {
        status.active = Some(shared.active.status());
    }
    add_stage(&mut status, "logger_batch", &c.logger_batch);
    add_stage(&mut status, "replication_batch", &c.replication_batch);
    add_stage(&mut status, "ingress_wait", &c.ingress_wait);
    shared.fill_adoption_status(&mut status);
    status
}

/// A stage that ran at least once on this node goes into the status.
fn add_stage(
    status: &mut crate::status::DataPlaneStatus,
    name: &str,
    histogram: &steadfast_core::latency::LatencyHistogram,
) {
    let summary = histogram.summary();
    if summary.count > 0 {
        let mut stage = crate::status::StageLatency::from(summary);
        stage.histogram = histogram.power_of_two_buckets(
            crate::metrics::STAGE_BUCKETS_FROM,
            crate::metrics::STAGE_BUCKETS_TO,
        );
        status.stages.insert(name.to_string(), stage);
    }
}
