//! The backends a lab node runs on port 80: the builtin one (`steadfast backend`), nginx or
//! apache2. For nginx and apache2 the lab writes a configuration per node and a shared docroot.
//!
//! The docroot mirrors the builtin backend's `/bytes/N?seed=0` for the sizes the benchmarks use
//! (1 KB, 10 KB, 50 KB, 1 MB): the file `www/bytes/N` holds exactly the generator's bytes for
//! length N and seed 0 (see [`crate::generator`]), and static servers ignore the query string, so
//! the same URL returns the same verifiable body from every backend. `/health` is a file
//! holding `ok`. Every reply carries `Steadfast-Node: nI`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::LabError;
use crate::options::BackendKind;
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
        (kind, None) => Err(LabError::MissingProgram {
            program: kind.to_string(),
            package: kind.to_string(),
        }),
    }
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
        r#"# Written by `steadfast lab up` for node {node}.
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
        r#"# Written by `steadfast lab up` for node {node}; run as `apache2 -f THIS -DFOREGROUND`.
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
