//! Shared helpers of the namespace integration tests: a lab that is always torn down, a
//! background probe load from the client namespace, and small waits.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use steadfast_lab::load::{
    self, LoadOptions, LoadProgress, LoadReport, ProbeOptions, ProbeRequest,
};
use steadfast_lab::{BackendKind, LabInfo, Mode, UpOptions};

/// The daemon a user installs.
pub fn daemon_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_steadfast"))
}

/// The lab's executable, whose hosts run their daemons and builtin backends from it.
pub fn lab_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_steadfast-lab"))
}

/// Runs the daemon's executable with `args`: (success, stdout, stderr).
pub fn steadfast(args: &[&str]) -> (bool, String, String) {
    run(daemon_exe(), args)
}

/// Runs the lab's executable with `args`: (success, stdout, stderr).
pub fn steadfast_lab(args: &[&str]) -> (bool, String, String) {
    run(lab_exe(), args)
}

fn run(exe: PathBuf, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(&exe)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", exe.display()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A unique lab name per test (pid + counter), ≤ 20 characters.
pub fn lab_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = format!("t{}{}{}", std::process::id() % 100_000, tag, n);
    name.truncate(20);
    name
}

/// A lab torn down on drop, also when the test panics.
pub struct Lab {
    pub info: LabInfo,
    pub backend: BackendKind,
    /// Labs of one test binary run one at a time: the timing figures they assert (with a
    /// margin) must not depend on how many other labs share the two cores.
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static ONE_LAB_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// For a test that builds its lab another way (a benchmark run): no other lab of this test
/// binary runs while the guard lives.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    ONE_LAB_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Lab {
    pub fn up(
        tag: &str,
        nodes: u8,
        witness: bool,
        backend: BackendKind,
        heartbeat_ms: Option<u32>,
    ) -> Lab {
        Lab::up_in_mode(
            tag,
            nodes,
            witness,
            backend,
            heartbeat_ms,
            Mode::Unreplicated,
        )
    }

    pub fn up_in_mode(
        tag: &str,
        nodes: u8,
        witness: bool,
        backend: BackendKind,
        heartbeat_ms: Option<u32>,
        mode: Mode,
    ) -> Lab {
        Lab::up_with(tag, nodes, backend, |opts| {
            opts.mode = mode;
            opts.witness = witness;
            opts.heartbeat_ms = heartbeat_ms;
        })
    }

    /// A lab of `nodes` members with `backend`, the rest of its options set by `configure`.
    pub fn up_with(
        tag: &str,
        nodes: u8,
        backend: BackendKind,
        configure: impl FnOnce(&mut UpOptions),
    ) -> Lab {
        Lab::up_named(lab_name(tag), nodes, backend, configure)
    }

    /// Like [`Lab::up_with`], under a name the caller chose (unique, ≤ 20 characters).
    pub fn up_named(
        name: String,
        nodes: u8,
        backend: BackendKind,
        configure: impl FnOnce(&mut UpOptions),
    ) -> Lab {
        let mut opts = UpOptions::new(name, nodes, lab_exe());
        opts.backend = backend;
        opts.ready_timeout = Duration::from_secs(30);
        configure(&mut opts);
        let name = opts.name.clone();
        // A test that panicked while holding the lock poisons it; the lab it held is gone.
        let guard = exclusive();
        match steadfast_lab::up(&opts) {
            Ok(info) => Lab {
                info,
                backend,
                _one_at_a_time: guard,
            },
            Err(e) => {
                let _ = steadfast_lab::down(&name);
                panic!("lab up {name}: {e}");
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.info.lab
    }

    pub fn target(&self) -> SocketAddr {
        SocketAddr::new(self.info.vip.into(), self.info.port)
    }

    /// Hosts (`n1` …) whose namespace holds the VIP.
    pub fn holders(&self) -> Vec<String> {
        let prefix = format!("{}-", self.name());
        steadfast_lab::vip_holders(self.name())
            .expect("vip holders")
            .into_iter()
            .map(|ns| ns.strip_prefix(&prefix).unwrap_or(&ns).to_string())
            .collect()
    }

    /// Watches for `span`; returns the longest time two nodes held the VIP at once, and the
    /// holders seen over time (`n1`, `n1+n2`, ``…).
    pub fn longest_double_ownership(&self, span: Duration) -> (Duration, Vec<String>) {
        let start = Instant::now();
        let mut longest = Duration::ZERO;
        let mut since: Option<Instant> = None;
        let mut seen = Vec::new();
        while start.elapsed() < span {
            let holders = self.holders();
            let joined = holders.join("+");
            if seen.last() != Some(&joined) {
                seen.push(joined);
            }
            if holders.len() > 1 {
                let s = *since.get_or_insert_with(Instant::now);
                longest = longest.max(s.elapsed());
            } else {
                since = None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (longest, seen)
    }

    /// Holders other than `except` (a crashed host whose kernel may still carry the address).
    pub fn holders_except(&self, except: &str) -> Vec<String> {
        self.holders().into_iter().filter(|h| h != except).collect()
    }

    /// Waits until exactly `host` holds the VIP.
    pub fn wait_holder(&self, host: &str, within: Duration) -> bool {
        wait_until(within, || self.holders() == vec![host.to_string()])
    }

    /// Copies the lab's logs out of its state directory (which `down` removes) so a failed
    /// test can be diagnosed: to `/tmp/steadfast-test-logs/<lab>/`.
    fn keep_logs(&self) {
        let keep = std::path::Path::new("/tmp/steadfast-test-logs").join(self.name());
        let Ok(entries) = std::fs::read_dir(&self.info.state_dir) else {
            return;
        };
        let _ = std::fs::create_dir_all(&keep);
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let _ = std::fs::copy(&path, keep.join(entry.file_name()));
            }
        }
        // The kernels' view too: TCP counters (PAWS drops, retransmits) and live sockets.
        let namespaces = std::iter::once(&self.info.client_ns).chain(self.info.nodes.iter());
        for ns in namespaces {
            for (what, args) in [("nstat", vec!["nstat", "-az"]), ("ss", vec!["ss", "-tnie"])] {
                if let Ok(out) = std::process::Command::new("ip")
                    .args(["netns", "exec", ns])
                    .args(&args)
                    .output()
                {
                    let _ = std::fs::write(keep.join(format!("{ns}.{what}.txt")), out.stdout);
                }
            }
        }
        eprintln!("lab {} logs kept in {}", self.name(), keep.display());
    }

    /// For a failure message: each voter's role, epoch and what it holds, and the last lines
    /// of its daemon's log (the events that led here).
    pub fn situation(&self) -> String {
        let mut text = String::new();
        let voters = self
            .info
            .nodes
            .iter()
            .map(|ns| {
                ns.strip_prefix(&format!("{}-", self.name()))
                    .unwrap_or(ns)
                    .to_string()
            })
            .chain(self.info.witness_ns.as_ref().map(|_| "w".to_string()));
        for host in voters {
            let socket = self.info.state_dir.join(format!("{host}.sock"));
            let summary = match steadfast_lab::lab::query_control_socket(&socket) {
                Ok(s) => format!(
                    "{} in epoch {}, primary {}, holds connections {}, {} open sessions",
                    s["role"],
                    s["epoch"],
                    s["primary"],
                    s["holds_connections"],
                    s["data_plane"]["sessions_open"]
                ),
                Err(e) => format!("no status ({e})"),
            };
            text.push_str(&format!("\n--- {host}: {summary}\n"));
            let log =
                std::fs::read_to_string(self.info.state_dir.join(format!("{host}.daemon.log")))
                    .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            for line in &lines[lines.len().saturating_sub(12)..] {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }

    /// The lines of `host`'s daemon log (every life of it) that contain `needle`.
    pub fn daemon_log_lines(&self, host: &str, needle: &str) -> Vec<String> {
        std::fs::read_to_string(self.info.state_dir.join(format!("{host}.daemon.log")))
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// The daemon's status document of `host` (`n1`, `w`), straight from its control socket.
    pub fn daemon_status(&self, host: &str) -> serde_json::Value {
        let socket = self.info.state_dir.join(format!("{host}.sock"));
        steadfast_lab::lab::query_control_socket(&socket)
            .unwrap_or_else(|e| panic!("status of {host}: {e}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // STEADFAST_KEEP_LOGS keeps them from passing tests too (to measure what the daemons
        // log across a whole suite, such as their late heartbeats).
        if std::thread::panicking() || std::env::var_os("STEADFAST_KEEP_LOGS").is_some() {
            self.keep_logs();
        }
        if let Err(e) = steadfast_lab::down(&self.info.lab) {
            eprintln!("lab down {}: {e}", self.info.lab);
        }
    }
}

pub fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A probe load (a new connection every `period`) running in the client namespace until
/// [`BackgroundLoad::stop`].
pub struct BackgroundLoad {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<LoadReport>>,
    pub progress: Arc<LoadProgress>,
    pub started: Instant,
}

impl BackgroundLoad {
    pub fn start(
        lab: &Lab,
        period: Duration,
        timeout: Duration,
        limit: Duration,
    ) -> BackgroundLoad {
        let options = LoadOptions {
            probes: Some(ProbeOptions {
                period,
                timeout,
                // nginx and apache2 serve fixed files; the builtin backend any seed.
                request: match lab.backend {
                    BackendKind::Builtin => ProbeOptions::default().request,
                    _ => ProbeRequest::StaticFile {
                        path: steadfast_lab::webservers::bytes_path(1024),
                        len: 1024,
                        seed: 0,
                    },
                },
            }),
            ..LoadOptions::probes_only(lab.target(), limit)
        };
        BackgroundLoad::start_with(lab, options)
    }

    /// Runs `options` (probes, keep-alive connections, or both) in the client namespace.
    pub fn start_with(lab: &Lab, options: LoadOptions) -> BackgroundLoad {
        assert!(
            lab.backend.speaks_http(),
            "the verifying load speaks HTTP: the {} backend has none to load",
            lab.backend
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let progress = Arc::new(LoadProgress::default());
        let namespace = lab.info.client_ns.clone();
        let thread_progress = progress.clone();
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            steadfast_lab::run_in_namespace(&namespace, move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(load::run_load(
                    options,
                    async move {
                        let _ = stop_rx.await;
                    },
                    thread_progress,
                ))
            })
            .expect("enter the client namespace")
            .expect("load options")
        });
        BackgroundLoad {
            stop: Some(stop_tx),
            thread: Some(thread),
            progress,
            started,
        }
    }

    /// Successful probes and requests so far.
    pub fn successes(&self) -> u64 {
        let now = self.progress.snapshot();
        now.probes_ok + now.requests_ok
    }

    /// Waits until the load has had `count` more successful probes or requests than `since`
    /// (a value of [`Self::successes`]), within `within`; panics naming `what` otherwise. A
    /// test that needs the load running (before a crash) or served again (after one) waits
    /// for that, not for a fixed time.
    pub fn wait_for_successes(&self, since: u64, count: u64, within: Duration, what: &str) {
        let done = wait_until(within, || self.successes() >= since + count);
        assert!(
            done,
            "{what}: the load had {} successes of the {count} awaited within {within:?} ({:?})",
            self.successes() - since,
            self.progress.snapshot()
        );
    }

    pub fn stop(mut self) -> LoadReport {
        let _ = self.stop.take().map(|s| s.send(()));
        self.thread.take().unwrap().join().expect("load thread")
    }
}

impl Drop for BackgroundLoad {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// The MAC of a lab host's service interface, as `aa:bb:cc:dd:ee:ff`.
pub fn mac_of(namespace: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", namespace, "cat"])
        .arg(format!(
            "/sys/class/net/{}/address",
            steadfast_lab::topology::HOST_INTERFACE
        ))
        .output()
        .expect("ip netns exec");
    assert!(
        out.status.success(),
        "reading the MAC of {namespace}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether a network namespace of this name exists (`ip netns` lists it).
pub fn namespace_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

/// Sends one command (an array of bulk strings) to `target` over a new connection opened in
/// `namespace`, and returns its whole reply's bytes, as RESP frames them; `timeout` bounds the
/// connect and the whole exchange.
pub fn redis_exchange(
    namespace: &str,
    target: SocketAddr,
    args: &[&str],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    use std::io::{Read, Write};
    use steadfast_core::resp::{Direction, RespFramer, RespLimits};
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    steadfast_lab::run_in_namespace(namespace, move || {
        let deadline = Instant::now() + timeout;
        let mut stream = std::net::TcpStream::connect_timeout(&target, timeout)
            .map_err(|e| format!("connect {target}: {e}"))?;
        stream
            .set_write_timeout(Some(timeout))
            .and_then(|()| stream.write_all(&request))
            .map_err(|e| format!("send to {target}: {e}"))?;
        let mut framer = RespFramer::new(Direction::Replies, RespLimits::default());
        let mut reply = Vec::new();
        let mut messages = Vec::new();
        let mut piece = [0u8; 4096];
        while messages.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no whole reply from {target} within {timeout:?}"));
            }
            stream
                .set_read_timeout(Some(left))
                .map_err(|e| format!("{target}: {e}"))?;
            let n = stream
                .read(&mut piece)
                .map_err(|e| format!("read from {target}: {e}"))?;
            if n == 0 {
                return Err(format!("{target} closed after {} bytes", reply.len()));
            }
            reply.extend_from_slice(&piece[..n]);
            framer
                .feed(&piece[..n], &mut messages)
                .map_err(|e| format!("{target}: {e}"))?;
        }
        Ok(reply)
    })
    .map_err(|e| e.to_string())?
}

/// Commands sent one after another over one connection opened in `namespace`: each whole
/// reply's bytes, in order.
pub fn redis_session(
    namespace: &str,
    target: SocketAddr,
    commands: Vec<Vec<String>>,
    timeout: Duration,
) -> Result<Vec<Vec<u8>>, String> {
    use std::io::{Read, Write};
    use steadfast_core::resp::{Direction, RespFramer, RespLimits};
    steadfast_lab::run_in_namespace(namespace, move || {
        let mut stream = std::net::TcpStream::connect_timeout(&target, timeout)
            .map_err(|e| format!("connect {target}: {e}"))?;
        stream
            .set_write_timeout(Some(timeout))
            .and_then(|()| stream.set_read_timeout(Some(timeout)))
            .map_err(|e| format!("{target}: {e}"))?;
        let mut framer = RespFramer::new(Direction::Replies, RespLimits::default());
        let mut replies = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut messages = Vec::new();
        let mut piece = [0u8; 16 * 1024];
        for (i, args) in commands.iter().enumerate() {
            let mut request = format!("*{}\r\n", args.len()).into_bytes();
            for arg in args {
                request.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
            }
            stream
                .write_all(&request)
                .map_err(|e| format!("command {i} ({args:?}) to {target}: {e}"))?;
            messages.clear();
            while messages.is_empty() {
                let n = stream
                    .read(&mut piece)
                    .map_err(|e| format!("reply {i} ({args:?}) from {target}: {e}"))?;
                if n == 0 {
                    return Err(format!("{target} closed before replying to {args:?}"));
                }
                pending.extend_from_slice(&piece[..n]);
                framer
                    .feed(&piece[..n], &mut messages)
                    .map_err(|e| format!("{target}: {e}"))?;
            }
            // One command at a time: its reply is all that came.
            replies.push(std::mem::take(&mut pending));
        }
        Ok(replies)
    })
    .map_err(|e| e.to_string())?
}
