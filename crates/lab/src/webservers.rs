//! The backends a lab node runs on the service port: the builtin one (`steadfast-lab backend`),
//! nginx or apache2 on port 80, or redis-server on port 6379. For nginx and apache2 the lab
//! writes a configuration per node and a shared docroot; for redis-server a configuration per
//! node (each member its own data, nothing persisted).
//! In front of them an unreplicated lab may run HAProxy on each member (see [`FrontProxy`]),
//! with a configuration per node as well.
//!
//! The docroot mirrors the builtin backend's `/bytes/N?seed=0` for the sizes the benchmarks use
//! (1 KB, 10 KB, 50 KB, 1 MB): the file `www/bytes/N` holds exactly the generator's bytes for
//! length N and seed 0 (see [`crate::generator`]), and static servers ignore the query string, so
//! the same URL returns the same verifiable body from every backend. `/health` is a file
//! holding `ok`. Every reply carries `Steadfast-Node: nI`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::LabError;
use crate::options::{BackendKind, FrontProxy};
use crate::state::LabPaths;
use crate::system::require_program;
use crate::topology::Host;

/// The seed of the docroot files.
pub const DOCROOT_SEED: u64 = 0;
/// The sizes of the docroot files: 1 KB, 10 KB, 50 KB, 1 MB.
pub const DOCROOT_SIZES: [u64; 4] = [1024, 10 * 1024, 50 * 1024, 1024 * 1024];
/// A larger docroot file (32 MiB, same seed), for replies streamed in parts.
pub const DOCROOT_LARGE: u64 = 32 * 1024 * 1024;
/// The modification date of the docroot files, in seconds since the epoch: 2026-01-01
/// 00:00:00 UTC.
pub const DOCROOT_MODIFIED_SECS: u64 = 1_767_225_600;
/// Where apache2's loadable modules live on Debian.
pub const APACHE2_MODULES: &str = "/usr/lib/apache2/modules";

/// The URL path of a generated body, the same on every backend (for the docroot sizes).
pub fn bytes_path(size: u64) -> String {
    format!("/bytes/{size}?seed={DOCROOT_SEED}")
}

/// Checks that the backend's server is installed; returns its program (none for builtin).
pub(crate) fn require_installed(kind: BackendKind) -> Result<Option<PathBuf>, LabError> {
    match kind {
        BackendKind::Builtin => Ok(None),
        BackendKind::Nginx => require_program("nginx", "nginx (or nginx-light)").map(Some),
        BackendKind::Apache2 => {
            let program = require_program("apache2", "apache2")?;
            if !Path::new(APACHE2_MODULES)
                .join("mod_mpm_event.so")
                .is_file()
            {
                return Err(LabError::MissingProgram {
                    program: format!("{APACHE2_MODULES}/mod_mpm_event.so"),
                    package: "apache2".into(),
                });
            }
            Ok(Some(program))
        }
        BackendKind::Redis => require_program("redis-server", "redis-server").map(Some),
    }
}

/// Writes the docroot shared by the nodes' nginx or apache2.
pub(crate) fn write_docroot(paths: &LabPaths) -> Result<(), LabError> {
    let root = paths.docroot();
    let bytes = root.join("bytes");
    std::fs::create_dir_all(&bytes).map_err(|e| LabError::io("creating the docroot", &bytes, e))?;
    let health = root.join("health");
    std::fs::write(&health, "ok\n").map_err(|e| LabError::io("writing", &health, e))?;
    for size in DOCROOT_SIZES.into_iter().chain([DOCROOT_LARGE]) {
        let file = bytes.join(size.to_string());
        crate::generator::write_expected_file(&file, size, DOCROOT_SEED)
            .map_err(|e| LabError::io("writing the docroot file", &file, e))?;
        // Served files are rarely seconds old. apache2 gives a file modified less than a
        // second before the request a weak ETag (it could still change within the second of
        // its timestamp), and a reply with a weak ETag cannot be resumed by range: a test that
        // starts right after `lab up` would depend on the clock. One fixed date in the past:
        // every lab, and every node, then serves the same ETag and Last-Modified, as a
        // deployment that copies its files with their dates does.
        std::fs::File::options()
            .write(true)
            .open(&file)
            .and_then(|f| {
                f.set_modified(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(DOCROOT_MODIFIED_SECS),
                )
            })
            .map_err(|e| LabError::io("dating the docroot file", &file, e))?;
    }
    Ok(())
}

/// The command line that runs a node's backend in the foreground, after writing the server's
/// configuration if it needs one.
pub(crate) fn backend_command(
    kind: BackendKind,
    paths: &LabPaths,
    node: Host,
    steadfast_exe: &Path,
    server: Option<&Path>,
    listen: std::net::SocketAddrV4,
) -> Result<Vec<OsString>, LabError> {
    let name = node.short_name();
    match (kind, server) {
        (BackendKind::Builtin, _) => Ok(vec![
            steadfast_exe.into(),
            "backend".into(),
            "--listen".into(),
            listen.to_string().into(),
            "--node-name".into(),
            name.into(),
            "--data-tier".into(),
            paths.data_tier().into(),
        ]),
        (BackendKind::Nginx, Some(nginx)) => {
            let dir = web_dir(paths, node)?;
            let conf = dir.join("nginx.conf");
            let error_log = paths.backend_log(node);
            write(
                &conf,
                &nginx_config(&dir, &paths.docroot(), &error_log, &name, listen),
            )?;
            // `-e` sends the errors of start-up (before the config is read) to our log too.
            Ok(vec![
                nginx.into(),
                "-p".into(),
                dir.clone().into(),
                "-c".into(),
                conf.into(),
                "-e".into(),
                error_log.into(),
                "-g".into(),
                "daemon off;".into(),
            ])
        }
        (BackendKind::Apache2, Some(apache2)) => {
            let dir = web_dir(paths, node)?;
            let conf = dir.join("apache2.conf");
            write(
                &conf,
                &apache2_config(
                    &dir,
                    &paths.docroot(),
                    &paths.backend_log(node),
                    &name,
                    listen,
                ),
            )?;
            Ok(vec![
                apache2.into(),
                "-f".into(),
                conf.into(),
                "-DFOREGROUND".into(),
            ])
        }
        (BackendKind::Redis, Some(redis)) => {
            let dir = paths.redis_dir(node);
            std::fs::create_dir_all(&dir)
                .map_err(|e| LabError::io("creating the redis-server's directory", &dir, e))?;
            let conf = dir.join("redis.conf");
            write(
                &conf,
                &redis_config(&dir, &paths.backend_log(node), &name, listen),
            )?;
            Ok(vec![redis.into(), conf.into()])
        }
        (kind, None) => Err(LabError::MissingProgram {
            program: kind.to_string(),
            package: kind.to_string(),
        }),
    }
}

/// Checks that the front proxy's program is installed; returns it.
pub(crate) fn require_front_proxy(kind: FrontProxy) -> Result<PathBuf, LabError> {
    match kind {
        FrontProxy::Haproxy => require_program("haproxy", "haproxy"),
    }
}

/// The command line that runs a member's front proxy in the foreground, after writing its
/// configuration (checked with `haproxy -c` first, so a bad one fails here with HAProxy's own
/// words rather than as a VIP that never answers).
pub(crate) fn front_proxy_command(
    kind: FrontProxy,
    paths: &LabPaths,
    node: Host,
    program: &Path,
    listen: std::net::SocketAddrV4,
    backend: std::net::SocketAddrV4,
) -> Result<Vec<OsString>, LabError> {
    match kind {
        FrontProxy::Haproxy => {
            let dir = web_dir(paths, node)?;
            let conf = dir.join("haproxy.cfg");
            write(&conf, &haproxy_config(&node.short_name(), listen, backend))?;
            check_haproxy_config(program, &conf)?;
            // `-db`: foreground, one process (no master), so the pid the lab records is the one
            // that serves and the one whose CPU time the bench reads.
            Ok(vec![program.into(), "-db".into(), "-f".into(), conf.into()])
        }
    }
}

/// `haproxy -c`: the configuration is valid, or HAProxy's own complaint.
fn check_haproxy_config(program: &Path, conf: &Path) -> Result<(), LabError> {
    let output = std::process::Command::new(program)
        .arg("-c")
        .arg("-f")
        .arg(conf)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            command: format!("{} -c -f {}", program.display(), conf.display()),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(LabError::Command {
        command: format!("{} -c -f {}", program.display(), conf.display()),
        status: output.status.to_string(),
        stderr: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
        .trim()
        .to_string(),
    })
}

/// HAProxy's configuration for one member: `mode http` on the service address, the node's
/// backend behind it over kept-alive connections, no logging.
///
/// - `bind … transparent` (IP_TRANSPARENT): the VIP is on the node only while it serves, and
///   HAProxy must be listening before (the daemon's proxy binds it with IP_FREEBIND alike).
/// - `nbthread` is left at HAProxy's default, the CPUs it may run on (2 on the lab's 2-core
///   VM), the same as the 2 worker threads of the daemon's data plane it is compared with.
/// - `http-reuse safe` (HAProxy's default, named): a client's first request opens a server
///   connection, later ones reuse idle ones; wrk's connections are kept alive, so in steady
///   state every request goes over an existing backend connection.
/// - `maxconn 4096`, far above the bench's 32 connections, and the backlog of the daemon's own
///   listener.
/// - timeouts as nginx's in the lab: 75 s idle on both sides, 10 s for a request's header.
fn haproxy_config(
    node: &str,
    listen: std::net::SocketAddrV4,
    backend: std::net::SocketAddrV4,
) -> String {
    format!(
        r#"# Written by `steadfast-lab lab up` for node {node}; run as `haproxy -db -f THIS`.
# No `log` line anywhere: HAProxy logs nothing (start-up alerts go to stderr, the lab's log).
global
    maxconn 4096

defaults
    mode http
    maxconn 4096
    option http-keep-alive
    http-reuse safe
    timeout connect 5s
    timeout client 75s
    timeout server 75s
    timeout http-request 10s
    timeout http-keep-alive 75s

frontend service
    bind {listen} transparent
    default_backend node

backend node
    server {node} {backend}
"#
    )
}

fn web_dir(paths: &LabPaths, node: Host) -> Result<PathBuf, LabError> {
    let dir = paths.web_dir(node);
    std::fs::create_dir_all(&dir)
        .map_err(|e| LabError::io("creating the web server's directory", &dir, e))?;
    Ok(dir)
}

fn write(path: &Path, text: &str) -> Result<(), LabError> {
    std::fs::write(path, text).map_err(|e| LabError::io("writing", path, e))
}

fn nginx_config(
    dir: &Path,
    docroot: &Path,
    error_log: &Path,
    node: &str,
    listen: std::net::SocketAddrV4,
) -> String {
    // nginx writes "listen 80" for every address; an explicit address otherwise.
    let listen = if listen.ip().is_unspecified() {
        listen.port().to_string()
    } else {
        listen.to_string()
    };
    let dir = dir.display();
    format!(
        r#"# Written by `steadfast-lab lab up` for node {node}.
# Root workers: the lab's files live under /run, and the lab is root's test bench anyway.
user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {error_log} warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    server {{
        listen {listen} default_server;
        server_name _;
        root {docroot};
        add_header Steadfast-Node {node} always;
    }}
}}
"#,
        error_log = error_log.display(),
        docroot = docroot.display(),
    )
}

fn apache2_config(
    dir: &Path,
    docroot: &Path,
    error_log: &Path,
    node: &str,
    listen: std::net::SocketAddrV4,
) -> String {
    let listen = if listen.ip().is_unspecified() {
        listen.port().to_string()
    } else {
        listen.to_string()
    };
    let dir = dir.display();
    format!(
        r#"# Written by `steadfast-lab lab up` for node {node}; run as `apache2 -f THIS -DFOREGROUND`.
ServerRoot "{dir}"
ServerName {node}
Listen {listen}
PidFile "{dir}/apache2.pid"
DefaultRuntimeDir "{dir}"
Mutex file:{dir} default
ErrorLog "{error_log}"
LogLevel warn

LoadModule mpm_event_module {APACHE2_MODULES}/mod_mpm_event.so
LoadModule authz_core_module {APACHE2_MODULES}/mod_authz_core.so
LoadModule headers_module {APACHE2_MODULES}/mod_headers.so
# As in Debian's default set: a directory asked without its slash is redirected to it.
LoadModule dir_module {APACHE2_MODULES}/mod_dir.so

# Apache refuses to serve as root; www-data comes with Debian's base-passwd.
User www-data
Group www-data

# Room for the conformance suite's 140 exchanges at once (a request that waits for its body
# holds a worker): every worker from the start, so that no test waits for apache to grow.
StartServers 4
ServerLimit 4
ThreadLimit 64
ThreadsPerChild 64
MaxRequestWorkers 256
MinSpareThreads 64
MaxSpareThreads 256

KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 75

DocumentRoot "{docroot}"
<Directory "/">
    Require all denied
    AllowOverride None
</Directory>
<Directory "{docroot}">
    Require all granted
    Options None
</Directory>

Header always set Steadfast-Node "{node}"
"#,
        error_log = error_log.display(),
        docroot = docroot.display(),
    )
}

/// redis-server's configuration for one member: the service port, no persistence (each node
/// starts empty and loses its data with its process, so that what a failover carries over is
/// only what replication carries), its log in the lab's state directory, in the foreground so
/// that the pid the lab records is the server's.
///
/// Protected mode refuses every client that does not come over the loopback address while the
/// default user has no password. Listening on every address (unreplicated: the VIP comes and
/// goes), the clients come from the client namespace, so it is off; the network namespace is
/// the fence (nothing outside the lab reaches 10.77.0.0/24). On a loopback address alone
/// (behind a proxy) it stays on.
fn redis_config(dir: &Path, logfile: &Path, node: &str, listen: std::net::SocketAddrV4) -> String {
    let protected = if listen.ip().is_loopback() {
        "yes"
    } else {
        "no"
    };
    format!(
        r#"# Written by `steadfast-lab lab up` for node {node}; run as `redis-server THIS`.
bind {ip}
port {port}
protected-mode {protected}
daemonize no
supervised no
# The process keeps this file's path in its command line, so it can be told to its lab.
set-proc-title no
always-show-logo no
logfile "{logfile}"
loglevel notice
dir "{dir}"
# No persistence: no RDB snapshots, no append-only file.
save ""
appendonly no
# DEBUG DIGEST from this node's own namespace, over the loopback address: how the tests
# compare the data of active mode's replicas. Clients of the VIP are never local.
enable-debug-command local
"#,
        ip = listen.ip(),
        port = listen.port(),
        logfile = logfile.display(),
        dir = dir.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    #[test]
    fn haproxy_serves_the_service_address_in_http_mode_without_logging() {
        let listen = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 100), 80);
        let backend = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 80);
        let text = haproxy_config("n1", listen, backend);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert!(lines.contains(&"bind 10.77.0.100:80 transparent"), "{text}");
        assert!(lines.contains(&"server n1 127.0.0.1:80"), "{text}");
        assert!(lines.contains(&"mode http"), "{text}");
        assert!(lines.contains(&"http-reuse safe"), "{text}");
        assert!(
            lines
                .iter()
                .all(|l| !l.starts_with("log ") && !l.starts_with("option httplog") && *l != "log"),
            "HAProxy must not log: {text}"
        );
        // maxconn well above the bench's 32 connections, globally and per frontend.
        let maxconn: Vec<u32> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("maxconn "))
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(maxconn.len(), 2, "{text}");
        assert!(maxconn.iter().all(|&n| n >= 1024), "{text}");
        for timeout in [
            "connect",
            "client",
            "server",
            "http-request",
            "http-keep-alive",
        ] {
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with(&format!("timeout {timeout} "))),
                "timeout {timeout}: {text}"
            );
        }
    }

    /// The configuration's directives, comments and blank lines left out.
    fn directives(text: &str) -> Vec<&str> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    }

    #[test]
    fn redis_serves_the_service_port_and_persists_nothing() {
        let dir = Path::new("/run/steadfast-lab/rd1/n1.redis");
        let log = Path::new("/run/steadfast-lab/rd1/n1.backend.log");
        let text = redis_config(
            dir,
            log,
            "n1",
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 6379),
        );
        let lines = directives(&text);
        assert!(lines.contains(&"port 6379"), "{text}");
        assert!(lines.contains(&"bind 0.0.0.0"), "{text}");
        // Clients come from the client namespace, not the loopback address.
        assert!(lines.contains(&"protected-mode no"), "{text}");
        assert!(lines.contains(&"daemonize no"), "{text}");
        assert!(
            lines.contains(&"logfile \"/run/steadfast-lab/rd1/n1.backend.log\""),
            "{text}"
        );
        assert!(
            lines.contains(&"dir \"/run/steadfast-lab/rd1/n1.redis\""),
            "{text}"
        );
        // No persistence: one `save ""` (no snapshot point), no append-only file.
        let saves: Vec<&&str> = lines.iter().filter(|l| l.starts_with("save")).collect();
        assert_eq!(saves, [&"save \"\""], "{text}");
        assert!(lines.contains(&"appendonly no"), "{text}");
        // Every directive once: Redis takes the last of a repeated one.
        let mut names: Vec<&str> = lines
            .iter()
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        names.sort_unstable();
        let count = names.len();
        names.dedup();
        assert_eq!(names.len(), count, "{text}");

        let behind = redis_config(dir, log, "n1", SocketAddrV4::new(Ipv4Addr::LOCALHOST, 6379));
        let lines = directives(&behind);
        assert!(lines.contains(&"bind 127.0.0.1"), "{behind}");
        assert!(lines.contains(&"protected-mode yes"), "{behind}");
    }

    #[test]
    #[ignore = "needs haproxy (the interop tier)"]
    fn haproxy_accepts_the_configuration() {
        let haproxy = crate::system::find_program("haproxy")
            .expect("haproxy is not installed: the interop tier needs Debian's haproxy package");
        let dir = std::env::temp_dir().join(format!("steadfast-haproxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("haproxy.cfg");
        std::fs::write(
            &conf,
            haproxy_config(
                "n2",
                SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 100), 80),
                SocketAddrV4::new(Ipv4Addr::LOCALHOST, 80),
            ),
        )
        .unwrap();
        let checked = check_haproxy_config(&haproxy, &conf);
        std::fs::remove_dir_all(&dir).unwrap();
        checked.unwrap();
    }
}
