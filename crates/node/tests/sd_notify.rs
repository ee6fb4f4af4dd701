//! The daemon as a service manager runs it, with no systemd around: it speaks the notification
//! protocol (the test plays the service manager with a Unix datagram socket as `NOTIFY_SOCKET`)
//! and writes JSON log lines when asked. A one-member group in a network namespace of its own.
//! Needs root.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use steadfast_os::netns::NetnsGuard;

/// Removes its directory when dropped, so a failing test leaves nothing behind.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The daemon under test, killed when dropped unless it already exited.
struct Daemon(Child);

impl Daemon {
    fn terminate(&self) {
        // SAFETY: signals the child this guard owns and has not reaped yet.
        let sent = unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM to the daemon (pid {})", self.0.id());
    }

    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < within {
            if let Some(status) = self.0.try_wait().expect("waiting for the daemon") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A namespace with the member's address on one end of a veth pair (both ends inside), and the member's files.
struct Host {
    namespace: NetnsGuard,
    dir: TempDir,
}

impl Host {
    fn new(tag: &str) -> Host {
        let name = format!("sfst-{}-{tag}", std::process::id());
        let namespace = NetnsGuard::create(&name).expect("creating the namespace");
        for args in [
            &["link", "set", "lo", "up"][..],
            &["link", "add", "sf0", "type", "veth", "peer", "name", "sf1"],
            &["link", "set", "sf1", "up"],
            &["addr", "add", "10.216.0.1/24", "dev", "sf0"],
            &["link", "set", "sf0", "up"],
        ] {
            let status = Command::new("ip")
                .args(["-n", &name])
                .args(args)
                .status()
                .expect("running ip");
            assert!(status.success(), "ip -n {name} {}", args.join(" "));
        }
        let dir = TempDir(std::env::temp_dir().join(format!("steadfast-notify-{name}")));
        std::fs::create_dir_all(&dir.0).expect("the test's directory");
        write_private(&dir.0.join("key"), "0123456789abcdef0123456789abcdef\n");
        let config = format!(
            "node_id = 1\n\n[group]\nname = \"notify\"\nauth_key_file = \"key\"\n\n\
             [[group.member]]\nid = 1\naddress = \"10.216.0.1/24\"\n\n\
             [control]\nsocket = \"{}\"\n\n\
             [[service]]\nname = \"web\"\nvip = \"10.216.0.100\"\ninterface = \"sf0\"\n\
             ports = [80]\nmode = \"unreplicated\"\nbackend = \"127.0.0.1:80\"\n",
            dir.0.join("control.sock").display()
        );
        std::fs::write(dir.0.join("notify.toml"), config).expect("writing the configuration");
        Host { namespace, dir }
    }

    /// Starts the daemon with `manager` as its NOTIFY_SOCKET and `environment` besides.
    fn start(&self, manager: &Path, environment: &[(&str, &str)]) -> Daemon {
        Daemon(
            self.command(manager, environment)
                .spawn()
                .expect("starting the daemon"),
        )
    }

    fn command(&self, manager: &Path, environment: &[(&str, &str)]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", self.namespace.name()])
            .arg(env!("CARGO_BIN_EXE_steadfast"))
            .args(["run", "--config"])
            .arg(self.dir.0.join("notify.toml"))
            .env("NOTIFY_SOCKET", manager)
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(environment.iter().copied())
            .stdin(std::process::Stdio::null());
        command
    }
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("writing the group key");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// Plays the service manager: what the daemon sends, with the time each datagram arrived.
struct Manager {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Manager {
    fn bind(dir: &Path) -> Manager {
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("binding the notification socket");
        Manager { socket, path }
    }

    /// The datagrams received within `span`, each as text with its arrival time.
    fn receive_for(&self, span: Duration) -> Vec<(Instant, String)> {
        let started = Instant::now();
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        while let Some(left) = span.checked_sub(started.elapsed()) {
            if left.is_zero() {
                break;
            }
            self.socket.set_read_timeout(Some(left)).expect("timeout");
            match self.socket.recv(&mut buf) {
                Ok(len) => received.push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..len]).into_owned(),
                )),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
                Err(e) => panic!("receiving a notification: {e}"),
            }
        }
        received
    }

    /// Receives until a datagram reads `message` (waiting at most `within`); returns those before.
    fn wait_for(&self, message: &str, within: Duration) -> Vec<String> {
        let started = Instant::now();
        let mut before = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = within.checked_sub(started.elapsed()).unwrap_or_default();
            assert!(
                !left.is_zero(),
                "no {message:?} within {within:?}; received {before:?}"
            );
            self.socket.set_read_timeout(Some(left)).expect("timeout");
            match self.socket.recv(&mut buf) {
                Ok(len) => {
                    let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                    if text.lines().any(|line| line == message) {
                        return before;
                    }
                    before.push(text);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("no {message:?} within {within:?}; received {before:?}")
                }
                Err(e) => panic!("receiving a notification: {e}"),
            }
        }
    }
}

fn stop_and_expect_stopping(manager: &Manager, mut daemon: Daemon) {
    daemon.terminate();
    manager.wait_for("STOPPING=1", Duration::from_secs(5));
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("the daemon exits after SIGTERM");
    assert!(
        status.success(),
        "the daemon's exit after SIGTERM: {status}"
    );
}

/// READY=1 once the node runs its election (its control socket answers), WATCHDOG=1 twice per
/// WATCHDOG_USEC, STOPPING=1 at SIGTERM; without WATCHDOG_USEC no ping at all.
#[test]
fn the_daemon_tells_systemd_ready_watchdog_and_stopping() {
    let host = Host::new("notify");
    let manager = Manager::bind(&host.dir.0);
    let control_socket = host.dir.0.join("control.sock");

    let daemon = host.start(&manager.path, &[("WATCHDOG_USEC", "400000")]);
    let before_ready = manager.wait_for("READY=1", Duration::from_secs(20));
    assert!(
        !before_ready.iter().any(|m| m.contains("WATCHDOG=1")),
        "the watchdog pings once the loop runs, after READY=1: {before_ready:?}"
    );
    assert!(
        std::os::unix::net::UnixStream::connect(&control_socket).is_ok(),
        "READY=1 came before the control socket {} listened",
        control_socket.display()
    );
    let pings: Vec<Instant> = manager
        .receive_for(Duration::from_millis(1100))
        .into_iter()
        .filter(|(_, text)| text.lines().any(|line| line == "WATCHDOG=1"))
        .map(|(at, _)| at)
        .collect();
    // One ping each 200 ms: 5 in 1.1 s, 4 with a slow start; a hung or absent loop sends none.
    assert!(
        (4..=7).contains(&pings.len()),
        "{} WATCHDOG=1 in 1.1 s at WATCHDOG_USEC=400000",
        pings.len()
    );
    for pair in pings.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap < Duration::from_millis(400),
            "pings {gap:?} apart: systemd would have killed the daemon"
        );
    }
    stop_and_expect_stopping(&manager, daemon);

    let daemon = host.start(&manager.path, &[]);
    manager.wait_for("READY=1", Duration::from_secs(20));
    let unasked: Vec<String> = manager
        .receive_for(Duration::from_millis(600))
        .into_iter()
        .map(|(_, text)| text)
        .collect();
    assert!(
        unasked.is_empty(),
        "without WATCHDOG_USEC the daemon sends nothing more: {unasked:?}"
    );
    stop_and_expect_stopping(&manager, daemon);
}

/// `--log-format json`: every line the daemon writes to stderr is one JSON object with the
/// event's level and message, the start and the stop among them.
#[test]
fn json_log_lines_when_asked() {
    let host = Host::new("jsonlog");
    let manager = Manager::bind(&host.dir.0);
    let mut command = host.command(&manager.path, &[]);
    command
        .arg("--log-format")
        .arg("json")
        .stderr(std::process::Stdio::piped());
    let mut daemon = Daemon(command.spawn().expect("starting the daemon"));
    manager.wait_for("READY=1", Duration::from_secs(20));
    daemon.terminate();
    daemon
        .wait_exit(Duration::from_secs(10))
        .expect("the daemon exits after SIGTERM");
    let mut stderr = String::new();
    std::io::Read::read_to_string(daemon.0.stderr.as_mut().expect("piped stderr"), &mut stderr)
        .expect("reading the daemon's stderr");
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\n{stderr}"))
        })
        .collect();
    let messages: Vec<&str> = events
        .iter()
        .map(|event| {
            assert!(event["level"].is_string(), "no level: {event}");
            assert!(event["timestamp"].is_string(), "no timestamp: {event}");
            event["fields"]["message"]
                .as_str()
                .unwrap_or_else(|| panic!("no message: {event}"))
        })
        .collect();
    for expected in ["node 1 started", "stopping: releasing the address"] {
        assert!(
            messages.iter().any(|m| m.starts_with(expected)),
            "no {expected:?} among {messages:?}"
        );
    }
}
