//! The duplex proxy must not be visible: the same exchanges give the same outcome with the
//! server alone (unreplicated mode) and through the proxy (duplex), and no request of one
//! client can reach the server on another client's backend connection.
//!
//! Run as root (network namespaces). The nginx and apache2 variants are the interop tier.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Lab;
use steadfast_lab::{BackendKind, Mode};

/// A reply as a client sees it: its status, body length and where it redirects.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    status: u16,
    body_len: usize,
    location: Option<String>,
}

impl Reply {
    fn ok(body_len: usize) -> Reply {
        Reply {
            status: 200,
            body_len,
            location: None,
        }
    }
}

/// The value of the header field `name` in `head`.
fn field<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|line| {
        let (field, value) = line.split_once(':')?;
        field.eq_ignore_ascii_case(name).then_some(value.trim())
    })
}

/// Everything a client got on one connection: the replies, in order, and whether the server
/// closed the connection after them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    replies: Vec<Reply>,
    closed: bool,
}

/// Splits `raw` into replies framed by Content-Length (every reply these tests ask for has
/// one); `None` when a reply is cut short.
fn replies_in(raw: &[u8]) -> Option<Vec<Reply>> {
    let mut replies = Vec::new();
    let mut at = 0;
    while at < raw.len() {
        let rest = &raw[at..];
        let head_len = rest.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = std::str::from_utf8(&rest[..head_len]).ok()?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        let body_len = match field(head, "content-length") {
            Some(length) => length.parse().ok()?,
            None => 0,
        };
        if rest.len() < head_len + body_len {
            return None;
        }
        let location = field(head, "location").map(str::to_string);
        replies.push(Reply {
            status,
            body_len,
            location,
        });
        at += head_len + body_len;
    }
    Some(replies)
}

/// Reads from `stream` until the server closes or nothing comes for `quiet`.
fn read_until_quiet(stream: &mut TcpStream, quiet: Duration) -> (Vec<u8>, bool) {
    stream.set_read_timeout(Some(quiet)).expect("read timeout");
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (raw, true),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset) => {
                return (raw, true)
            }
            Err(_) => return (raw, false),
        }
    }
}

/// Sends `request` on `stream`, then reads as [`read_until_quiet`] does: the replies that
/// came, and whether the server closed.
fn ask(stream: &mut TcpStream, request: &[u8], quiet: Duration) -> (Option<Vec<Reply>>, bool) {
    stream.write_all(request).expect("send");
    let (raw, closed) = read_until_quiet(stream, quiet);
    (replies_in(&raw), closed)
}

/// Reads from `stream` until one whole reply has come (its status), the server closes, or
/// `within` passes.
fn read_first_reply(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, Option<u16>) {
    let deadline = Instant::now() + within;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(first) = replies_in(&raw).and_then(|replies| replies.first().cloned()) {
            return (raw, Some(first.status));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (raw, None);
        }
        stream.set_read_timeout(Some(left)).expect("read timeout");
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => raw.extend_from_slice(&buf[..n]),
            _ => return (raw, None),
        }
    }
}

fn connect(target: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("connecting to {target}: {e}"));
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// A connection to the service from the lab's client namespace.
fn client_connection(lab: &Lab) -> TcpStream {
    let target = lab.target();
    steadfast_lab::run_in_namespace(&lab.info.client_ns, || connect(target))
        .expect("enter the client namespace")
}

/// A duplex lab of two nodes and a witness, builtin backend, 10 ms heartbeats, and the rest of
/// its options set by `configure`.
fn duplex_lab(tag: &str, configure: impl FnOnce(&mut steadfast_lab::UpOptions)) -> Lab {
    Lab::up_with(tag, 2, BackendKind::Builtin, |opts| {
        opts.mode = Mode::Duplex;
        opts.witness = true;
        opts.heartbeat_ms = Some(10);
        configure(opts);
    })
}

/// A fetch's reply (or what came instead) and how long it took.
type Fetched = (Result<Reply, String>, Duration);

/// One GET of `/bytes/1024` on a fresh connection: its reply and how long it took.
fn fetch_kib(target: SocketAddr) -> Fetched {
    let started = Instant::now();
    let mut stream = connect(target);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n",
        steadfast_lab::webservers::bytes_path(1024)
    );
    stream.write_all(request.as_bytes()).expect("send the GET");
    let (raw, _) = read_until_quiet(&mut stream, Duration::from_secs(8));
    let took = started.elapsed();
    let reply = match replies_in(&raw).as_deref() {
        Some([reply]) => Ok(reply.clone()),
        _ => Err(format!(
            "{} bytes that are not one whole reply: {:?}",
            raw.len(),
            String::from_utf8_lossy(&raw[..raw.len().min(200)])
        )),
    };
    (reply, took)
}

/// What one client that posts a body the server answers early, and then a second client,
/// get.
#[derive(Debug, PartialEq, Eq)]
struct EarlyReplyCase {
    /// The poster's reply status, and whether it came before the body was sent.
    poster: Option<u16>,
    answered_early: bool,
}

/// A client posts `declared` bytes to a path that does not exist, sending only the head and
/// `sent` bytes of the body (which look like a request of their own). If the server answers at
/// once, the client leaves without sending the rest, as a client told "404" may; otherwise it
/// sends the rest and reads the reply. Then other clients fetch a page on fresh connections:
/// each must get its own reply at once, never be read by the server as the rest of the first
/// client's body.
fn post_answered_early_then_fetch(
    target: SocketAddr,
    declared: usize,
    sent: usize,
) -> (EarlyReplyCase, Vec<Fetched>) {
    let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: vip\r\n\r\n";
    let body: Vec<u8> = smuggled.iter().copied().cycle().take(declared).collect();
    let mut poster = connect(target);
    let head = format!(
        "POST /no-such-path HTTP/1.1\r\nHost: vip\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {declared}\r\n\r\n"
    );
    poster.write_all(head.as_bytes()).expect("send the head");
    poster
        .write_all(&body[..sent])
        .expect("send part of the body");
    let (raw, early) = read_first_reply(&mut poster, Duration::from_millis(700));
    let case = if early.is_some() {
        drop(poster);
        EarlyReplyCase {
            poster: early,
            answered_early: true,
        }
    } else {
        assert!(
            raw.is_empty(),
            "half a reply: {:?}",
            String::from_utf8_lossy(&raw)
        );
        poster.write_all(&body[sent..]).expect("send the rest");
        EarlyReplyCase {
            poster: read_first_reply(&mut poster, Duration::from_secs(5)).1,
            answered_early: false,
        }
    };
    // More fetches than one: every pooled backend connection must be a clean one.
    let fetches = (0..4).map(|_| fetch_kib(target)).collect();
    (case, fetches)
}

fn early_replies_reach_no_other_client(backend: BackendKind) {
    let smuggled_len = b"GET /smuggled HTTP/1.1\r\nHost: vip\r\n\r\n".len();
    let fetch_len = format!(
        "GET {} HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n",
        steadfast_lab::webservers::bytes_path(1024)
    )
    .len();
    // (declared, sent): no body byte yet; lengths chosen to end exactly after the next
    // client's request, or after a request smuggled behind it; a large upload cut short.
    let shapes = [
        (fetch_len, 0),
        (fetch_len + smuggled_len, 0),
        (smuggled_len, 10),
        (1 << 20, 64 * 1024),
    ];
    let mut outcomes = Vec::new();
    for mode in [Mode::Unreplicated, Mode::Duplex] {
        let lab = Lab::up_in_mode("er", 2, true, backend, Some(10), mode);
        let target = lab.target();
        for &(declared, sent) in &shapes {
            let (case, fetches) = steadfast_lab::run_in_namespace(&lab.info.client_ns, || {
                post_answered_early_then_fetch(target, declared, sent)
            })
            .expect("enter the client namespace");
            for (i, (reply, took)) in fetches.iter().enumerate() {
                assert_eq!(
                    reply.as_ref().map(|r| r.status),
                    Ok(200),
                    "{mode:?}, {backend:?}: fetch {i} after a POST declaring {declared} bytes \
                     ({sent} sent, {case:?}) took {took:?}: {reply:?}\n{}",
                    lab.situation()
                );
                assert!(
                    *took < Duration::from_secs(2),
                    "{mode:?}, {backend:?}: fetch {i} after a POST declaring {declared} bytes \
                     took {took:?}: it waited behind another client's body"
                );
            }
            outcomes.push((mode, declared, sent, case));
        }
    }
    // The poster itself sees what it sees without the proxy.
    let (alone, proxied) = outcomes.split_at(shapes.len());
    for ((_, declared, sent, without), (_, _, _, with)) in alone.iter().zip(proxied) {
        assert_eq!(
            with.poster, without.poster,
            "{backend:?}: the poster's reply (declaring {declared}, sending {sent}) differs \
             through the proxy: {with:?} vs the server alone {without:?}"
        );
    }
}

#[test]
fn early_replies_reach_no_other_client_builtin() {
    early_replies_reach_no_other_client(BackendKind::Builtin);
}

#[test]
#[ignore = "needs nginx: apt-get install nginx-light (.ci/run installs it)"]
fn early_replies_reach_no_other_client_nginx() {
    early_replies_reach_no_other_client(BackendKind::Nginx);
}

#[test]
#[ignore = "needs apache2: apt-get install apache2 (.ci/run installs it)"]
fn early_replies_reach_no_other_client_apache2() {
    early_replies_reach_no_other_client(BackendKind::Apache2);
}

/// Requests a server answers and then closes its connection on, each with a second request
/// pipelined behind it: the client gets the same replies, and the same close, through the
/// proxy as from the server alone. The first has more header fields than the builtin backend
/// and apache2 accept (100) and a field longer than nginx's buffers (8 KiB); the second is
/// larger than the proxy used to accept (128 fields, 64 KiB): the server, not the proxy,
/// answers both.
fn the_servers_close_reaches_the_client(backend: BackendKind) {
    let heads = [(110, 10_000), (140, 80_000)].map(|(count, long)| {
        let fields: String = (0..count).map(|i| format!("X-Field-{i}: {i}\r\n")).collect();
        let long_field = format!("X-Long: {}\r\n", "x".repeat(long));
        format!(
            "GET /bytes/1 HTTP/1.1\r\nHost: vip\r\n{fields}{long_field}\r\nGET {} HTTP/1.1\r\nHost: vip\r\n\r\n",
            steadfast_lab::webservers::bytes_path(1024)
        )
    });
    let mut outcomes = Vec::new();
    for mode in [Mode::Unreplicated, Mode::Duplex] {
        let lab = Lab::up_in_mode("sc", 2, true, backend, Some(10), mode);
        let target = lab.target();
        for request in &heads {
            let outcome = steadfast_lab::run_in_namespace(&lab.info.client_ns, || {
                let mut stream = connect(target);
                stream.write_all(request.as_bytes()).expect("send");
                let (raw, closed) = read_until_quiet(&mut stream, Duration::from_secs(3));
                Outcome {
                    replies: replies_in(&raw).unwrap_or_default(),
                    closed,
                }
            })
            .expect("enter the client namespace");
            outcomes.push(outcome);
        }
    }
    let (alone, proxied) = outcomes.split_at(heads.len());
    for (i, (without, with)) in alone.iter().zip(proxied).enumerate() {
        assert!(
            without.closed && !without.replies.is_empty(),
            "{backend:?} alone should answer request {i} and close: {without:?}"
        );
        assert_eq!(
            with, without,
            "{backend:?}, request {i}: through the proxy (left) vs the server alone (right)"
        );
    }
}

#[test]
fn the_servers_close_reaches_the_client_builtin() {
    the_servers_close_reaches_the_client(BackendKind::Builtin);
}

#[test]
#[ignore = "needs nginx: apt-get install nginx-light (.ci/run installs it)"]
fn the_servers_close_reaches_the_client_nginx() {
    the_servers_close_reaches_the_client(BackendKind::Nginx);
}

#[test]
#[ignore = "needs apache2: apt-get install apache2 (.ci/run installs it)"]
fn the_servers_close_reaches_the_client_apache2() {
    the_servers_close_reaches_the_client(BackendKind::Apache2);
}

/// nginx's master in `namespace`, found by its process title.
fn nginx_master_in(namespace: &str) -> i32 {
    steadfast_lab::pids_in_namespace(namespace)
        .into_iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|title| title.starts_with(b"nginx: master"))
        })
        .unwrap_or_else(|| panic!("no nginx master in {namespace}"))
}

/// nginx closes its idle keep-alive connections when told to reload (its old worker finishes
/// and leaves). The server alone: the client's idle connection is closed, and a client opens
/// a new one for its next request. Through the proxy the same must happen, not a 502 on the
/// next request over a backend connection the server has closed.
#[test]
#[ignore = "needs nginx: apt-get install nginx-light (.ci/run installs it)"]
fn a_server_closing_an_idle_connection_closes_the_clients_nginx() {
    let get = format!(
        "GET {} HTTP/1.1\r\nHost: vip\r\n\r\n",
        steadfast_lab::webservers::bytes_path(1024)
    );
    for mode in [Mode::Unreplicated, Mode::Duplex] {
        let lab = Lab::up_in_mode("ic", 2, true, BackendKind::Nginx, Some(10), mode);
        let target = lab.target();
        let mut stream = steadfast_lab::run_in_namespace(&lab.info.client_ns, || connect(target))
            .expect("enter the client namespace");
        stream.write_all(get.as_bytes()).expect("send");
        let (raw, closed) = read_until_quiet(&mut stream, Duration::from_millis(500));
        assert_eq!(
            (replies_in(&raw), closed),
            (Some(vec![Reply::ok(1024)]), false),
            "{mode:?}: the first reply, connection kept open"
        );
        let holder = lab.holders();
        assert_eq!(holder.len(), 1, "one primary: {}", lab.situation());
        let namespace = format!("{}-{}", lab.name(), holder[0]);
        let master = nginx_master_in(&namespace);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(master),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("signal nginx to reload");
        let (raw, closed) = read_until_quiet(&mut stream, Duration::from_secs(5));
        assert!(
            raw.is_empty() && closed,
            "{mode:?}: the idle connection is closed when the server closes it, with nothing \
             sent: {:?}, closed: {closed}",
            String::from_utf8_lossy(&raw)
        );
    }
}

/// A server that crashes closes every connection too, but not by choice: the primary's proxy
/// must not pass that close on to its clients (their connections are carried on by the node
/// that takes the service over when the health check sees the crash).
#[test]
fn a_crashed_servers_close_is_not_passed_on_builtin() {
    let get = format!(
        "GET {} HTTP/1.1\r\nHost: vip\r\n\r\n",
        steadfast_lab::webservers::bytes_path(1024)
    );
    let one_kib = Some(vec![Reply::ok(1024)]);
    let lab = Lab::up_in_mode("cb", 2, true, BackendKind::Builtin, Some(10), Mode::Duplex);
    let target = lab.target();
    let mut stream = steadfast_lab::run_in_namespace(&lab.info.client_ns, || connect(target))
        .expect("enter the client namespace");
    stream.write_all(get.as_bytes()).expect("send");
    let (raw, closed) = read_until_quiet(&mut stream, Duration::from_millis(500));
    assert_eq!((replies_in(&raw), closed), (one_kib.clone(), false));
    let holders = lab.holders();
    assert_eq!(holders.len(), 1, "one primary: {}", lab.situation());
    steadfast_lab::crash(lab.name(), &holders[0], steadfast_lab::CrashKind::Backend)
        .expect("crash the primary's backend");
    assert!(
        common::wait_until(Duration::from_secs(5), || {
            let now = lab.holders();
            now.len() == 1 && now != holders
        }),
        "the backup takes the service over: {}",
        lab.situation()
    );
    let (raw, closed) = read_until_quiet(&mut stream, Duration::from_millis(300));
    assert!(
        raw.is_empty() && !closed,
        "the client's idle connection stays open through the crash"
    );
    stream.write_all(get.as_bytes()).expect("send again");
    let (raw, closed) = read_until_quiet(&mut stream, Duration::from_millis(1000));
    assert_eq!(
        (replies_in(&raw), closed),
        (one_kib, false),
        "the next request on the same connection: {}",
        lab.situation()
    );
}

/// A server's keep-alive timeout can close a connection just as the proxy sends the next
/// request on it, and the request is lost with the connection. An idempotent request then goes
/// again on a fresh connection, and the client sees its reply as if nothing happened; a POST
/// is not sent twice (the client sees the failure, as it would with the server alone).
#[test]
fn a_request_crossing_the_servers_close_goes_again_only_if_idempotent_builtin() {
    let lab = Lab::up_in_mode("rc", 2, true, BackendKind::Builtin, Some(10), Mode::Duplex);
    let target = lab.target();
    let holders = lab.holders();
    assert_eq!(holders.len(), 1, "one primary: {}", lab.situation());
    let retries = || {
        lab.daemon_status(&holders[0])["data_plane"]["backend_retries"]
            .as_u64()
            .expect("backend_retries in the status")
    };
    // A client connection whose backend connection the server closes 300 ms after the first
    // reply, whatever arrives meanwhile.
    let closing_soon = || {
        let mut stream = steadfast_lab::run_in_namespace(&lab.info.client_ns, || connect(target))
            .expect("enter the client namespace");
        stream
            .write_all(b"GET /bytes/100?close-ms=300 HTTP/1.1\r\nHost: vip\r\n\r\n")
            .expect("send");
        let (_, status) = read_first_reply(&mut stream, Duration::from_secs(2));
        assert_eq!(status, Some(200), "{}", lab.situation());
        stream
    };
    let mut stream = closing_soon();
    // Sent at once: it reaches the server's connection, which will close without reading it.
    assert_eq!(
        ask(
            &mut stream,
            b"GET /bytes/2048?seed=7 HTTP/1.1\r\nHost: vip\r\n\r\n",
            Duration::from_millis(1500)
        ),
        (Some(vec![Reply::ok(2048)]), false),
        "the GET that crossed the close is answered on a fresh connection: {}",
        lab.situation()
    );
    assert_eq!(retries(), 1, "{}", lab.situation());
    // The client's connection goes on over the fresh backend connection.
    assert_eq!(
        ask(
            &mut stream,
            b"GET /bytes/10 HTTP/1.1\r\nHost: vip\r\n\r\n",
            Duration::from_millis(500)
        ),
        (Some(vec![Reply::ok(10)]), false)
    );

    let mut stream = closing_soon();
    stream
        .write_all(b"POST /commit HTTP/1.1\r\nHost: vip\r\nContent-Length: 5\r\n\r\nhello")
        .expect("send the crossing POST");
    let (_, status) = read_first_reply(&mut stream, Duration::from_millis(1500));
    assert_ne!(
        status,
        Some(200),
        "a POST that crossed the close is not sent again: {}",
        lab.situation()
    );
    assert_eq!(retries(), 1, "{}", lab.situation());
}

/// A reply after which the proxy closes the connection (here: to an HTTP/1.0 request) is the
/// last one the client gets, even when the primary dies after logging it and before the client
/// has it: the node that takes over sends that reply and closes, and does not answer the
/// request pipelined behind it, which the server alone would never have read. The primary's
/// replies are kept from the client by a partition (the client's frames still reach it through
/// the backup), so the crash always falls in that window.
#[test]
fn a_reply_that_closes_stays_the_last_one_through_a_takeover_builtin() {
    let lab = Lab::up_in_mode("lc", 2, true, BackendKind::Builtin, Some(10), Mode::Duplex);
    let target = lab.target();
    let holders = lab.holders();
    assert_eq!(holders.len(), 1, "one primary: {}", lab.situation());
    let primary = holders[0].clone();
    let backup = if primary == "n1" { "n2" } else { "n1" };
    let logged = || {
        lab.daemon_status(backup)["data_plane"]["replies_logged"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(
        common::wait_until(Duration::from_secs(5), || {
            lab.daemon_status(&primary)["data_plane"]["backups_joined"]
                .as_u64()
                .unwrap_or(0)
                > 0
        }),
        "{backup} joins {primary}: {}",
        lab.situation()
    );
    let mut stream = steadfast_lab::run_in_namespace(&lab.info.client_ns, || connect(target))
        .expect("enter the client namespace");
    assert!(
        common::wait_until(Duration::from_secs(5), || {
            let status = lab.daemon_status(&primary);
            let plane = &status["data_plane"];
            plane["sessions_open"].as_u64() == Some(1)
                && plane["unadopted_now"].as_u64() == Some(0)
                && status["holds_connections"] == false
        }),
        "{primary} protects the client's connection: {}",
        lab.situation()
    );
    let logged_before = logged();
    steadfast_lab::partition(lab.name(), &primary, "client").expect("partition");
    stream
        .write_all(b"GET /bytes/100 HTTP/1.0\r\n\r\nGET /bytes/200 HTTP/1.1\r\nHost: vip\r\n\r\n")
        .expect("send");
    assert!(
        common::wait_until(Duration::from_secs(5), || logged() > logged_before),
        "{backup} logs the reply: {}",
        lab.situation()
    );
    steadfast_lab::crash(lab.name(), &primary, steadfast_lab::CrashKind::Host)
        .expect("crash the primary");
    let (raw, closed) = read_until_quiet(&mut stream, Duration::from_secs(3));
    assert_eq!(
        (replies_in(&raw), closed),
        (Some(vec![Reply::ok(100)]), true),
        "only the reply to the HTTP/1.0 request, then the close: {}",
        lab.situation()
    );
}

/// A web server redirects `/bytes` to `/bytes/` with an absolute URL of its own making: through
/// the proxy it must name the address and port the client used, as without the proxy (the
/// server keeps the service's port on a local address; see the README's duplex setup).
fn redirects_name_the_service_address(backend: BackendKind) {
    let mut locations = Vec::new();
    for mode in [Mode::Unreplicated, Mode::Duplex] {
        let lab = Lab::up_in_mode("rd", 2, true, backend, Some(10), mode);
        let target = lab.target();
        let request = format!("GET /bytes HTTP/1.1\r\nHost: {}\r\n\r\n", target.ip());
        let replies = steadfast_lab::run_in_namespace(&lab.info.client_ns, || {
            let mut stream = connect(target);
            stream.write_all(request.as_bytes()).expect("send");
            let (raw, _) = read_first_reply(&mut stream, Duration::from_secs(3));
            replies_in(&raw)
        })
        .expect("enter the client namespace");
        let reply = replies.and_then(|r| r.first().cloned());
        let location = reply.as_ref().and_then(|r| r.location.clone());
        assert_eq!(
            location.as_deref(),
            Some(format!("http://{}/bytes/", target.ip()).as_str()),
            "{mode:?}, {backend:?}: the redirect of /bytes: {reply:?}"
        );
        locations.push(reply);
    }
    assert_eq!(locations[0], locations[1], "{backend:?}: alone vs proxied");
}

#[test]
#[ignore = "needs nginx: apt-get install nginx-light (.ci/run installs it)"]
fn redirects_name_the_service_address_nginx() {
    redirects_name_the_service_address(BackendKind::Nginx);
}

#[test]
#[ignore = "needs apache2: apt-get install apache2 (.ci/run installs it)"]
fn redirects_name_the_service_address_apache2() {
    redirects_name_the_service_address(BackendKind::Apache2);
}

/// A client that keeps the proxy waiting is let go as a server would let it go: a connection
/// with no request under way is closed after the idle timeout, a request head that does not
/// complete within the header timeout is answered 408 and closed, however slowly its bytes
/// trickle in. Nothing else is cut short: a keep-alive client asking more often than the idle
/// timeout keeps its connection, and a reply that takes longer than both timeouts comes whole.
#[test]
fn clients_that_keep_the_proxy_waiting_are_let_go_builtin() {
    const HEADER_TIMEOUT: Duration = Duration::from_millis(500);
    const IDLE_TIMEOUT: Duration = Duration::from_millis(800);
    // Far above the timeouts, so only a proxy that never lets go fails the bound.
    const SLACK: Duration = Duration::from_millis(1500);
    let lab = duplex_lab("ct", |opts| {
        opts.client_timeouts_ms = Some((
            HEADER_TIMEOUT.as_millis() as u32,
            IDLE_TIMEOUT.as_millis() as u32,
        ));
    });
    let holders = lab.holders();
    assert_eq!(holders.len(), 1, "one primary: {}", lab.situation());
    let open = || client_connection(&lab);

    // A connection that never sends a byte.
    let started = Instant::now();
    let mut silent = open();
    let (raw, closed) = read_until_quiet(&mut silent, IDLE_TIMEOUT + SLACK);
    let waited = started.elapsed();
    assert!(
        raw.is_empty() && closed && waited >= IDLE_TIMEOUT,
        "a silent connection is closed without a word after {IDLE_TIMEOUT:?}: got {} bytes, \
         closed {closed}, after {waited:?}: {}",
        raw.len(),
        lab.situation()
    );

    // A head that grows by a byte every 100 ms and never completes.
    let mut slow = open();
    let mut writer = slow.try_clone().expect("clone the slow connection");
    let started = Instant::now();
    let trickle = std::thread::spawn(move || {
        let _ = writer.write_all(b"GET /bytes/10 HTTP/1.1\r\nHost: vip\r\nX-Slow: ");
        for _ in 0..30 {
            std::thread::sleep(Duration::from_millis(100));
            if writer.write_all(b"a").is_err() {
                break;
            }
        }
    });
    let (raw, status) = read_first_reply(&mut slow, HEADER_TIMEOUT + SLACK);
    let waited = started.elapsed();
    assert_eq!(
        status,
        Some(408),
        "the unfinished head is answered 408: {:?}: {}",
        String::from_utf8_lossy(&raw),
        lab.situation()
    );
    assert!(waited >= HEADER_TIMEOUT, "408 after {waited:?}");
    let (_, closed) = read_until_quiet(&mut slow, SLACK);
    assert!(closed, "the connection closes after the 408");
    trickle.join().expect("the trickling writer");

    // A keep-alive client asking every 400 ms, for three idle timeouts in all, then silent.
    let mut steady = open();
    for i in 0..6 {
        assert_eq!(
            ask(
                &mut steady,
                b"GET /bytes/10 HTTP/1.1\r\nHost: vip\r\n\r\n",
                Duration::from_millis(400)
            ),
            (Some(vec![Reply::ok(10)]), false),
            "request {i} of a client that asks more often than the idle timeout: {}",
            lab.situation()
        );
    }
    // A reply slower than both timeouts.
    steady
        .write_all(b"GET /slow?ms=1500&bytes=10 HTTP/1.1\r\nHost: vip\r\n\r\n")
        .expect("send the slow request");
    let (_, status) = read_first_reply(&mut steady, Duration::from_secs(4));
    assert_eq!(
        status,
        Some(200),
        "a slow reply comes whole: {}",
        lab.situation()
    );
    let started = Instant::now();
    let (raw, closed) = read_until_quiet(&mut steady, IDLE_TIMEOUT + SLACK);
    let waited = started.elapsed();
    assert!(
        raw.is_empty() && closed && waited >= IDLE_TIMEOUT - Duration::from_millis(50),
        "the client's connection closes once idle: {} bytes, closed {closed}, after {waited:?}",
        raw.len()
    );

    let plane = &lab.daemon_status(&holders[0])["data_plane"];
    assert_eq!(
        (
            plane["client_idle_timeouts"].as_u64(),
            plane["client_header_timeouts"].as_u64()
        ),
        (Some(2), Some(1)),
        "counted in the primary's status: {}",
        lab.situation()
    );
}

/// The proxy serves at most `max_connections` clients at once: one more is accepted by the
/// kernel and waits, unanswered, until a session ends, then is served (HAProxy's `maxconn`).
/// At most `max_connections_per_source` come from one address: one more is closed at once and
/// counted, and the address gets in again once one of its sessions ends.
#[test]
fn connections_beyond_the_limits_wait_or_are_refused_builtin() {
    const GET: &[u8] = b"GET /bytes/10 HTTP/1.1\r\nHost: vip\r\n\r\n";
    let one_reply = Some(vec![Reply::ok(10)]);
    let served = |stream: &mut TcpStream, what: &str, lab: &Lab| {
        assert_eq!(
            ask(stream, GET, Duration::from_millis(300)),
            (one_reply.clone(), false),
            "{what}: {}",
            lab.situation()
        );
    };

    let lab = duplex_lab("mc", |opts| opts.max_connections = Some(3));
    let open = || client_connection(&lab);
    let mut sessions: Vec<TcpStream> = (0..3).map(|_| open()).collect();
    for (i, stream) in sessions.iter_mut().enumerate() {
        served(stream, &format!("connection {i} of 3"), &lab);
    }
    let mut waiting = open();
    waiting
        .write_all(GET)
        .expect("send on the fourth connection");
    let (raw, closed) = read_until_quiet(&mut waiting, Duration::from_millis(500));
    assert!(
        raw.is_empty() && !closed,
        "a fourth connection waits unanswered while three are served: {} bytes, closed \
         {closed}: {}",
        raw.len(),
        lab.situation()
    );
    drop(sessions.pop());
    let (raw, closed) = read_until_quiet(&mut waiting, Duration::from_millis(1000));
    assert_eq!(
        (replies_in(&raw), closed),
        (one_reply.clone(), false),
        "the waiting connection is served once a session ends: {}",
        lab.situation()
    );
    drop(lab);

    let lab = duplex_lab("ms", |opts| opts.max_connections_per_source = Some(2));
    let holders = lab.holders();
    assert_eq!(holders.len(), 1, "one primary: {}", lab.situation());
    let open = || client_connection(&lab);
    let mut first = open();
    let mut second = open();
    served(&mut first, "the first connection of the address", &lab);
    served(&mut second, "the second connection of the address", &lab);
    let mut third = open();
    let _ = third.write_all(GET);
    let (raw, closed) = read_until_quiet(&mut third, Duration::from_millis(1000));
    assert!(
        raw.is_empty() && closed,
        "a third connection from the address is closed unanswered: {} bytes, closed {closed}: \
         {}",
        raw.len(),
        lab.situation()
    );
    served(&mut second, "the address's sessions go on", &lab);
    drop(first);
    assert!(
        common::wait_until(Duration::from_secs(2), || {
            let mut again = open();
            again.write_all(GET).is_ok() && {
                let (raw, _) = read_until_quiet(&mut again, Duration::from_millis(300));
                replies_in(&raw) == one_reply
            }
        }),
        "the address gets in again once one of its sessions ended: {}",
        lab.situation()
    );
    let refused = lab.daemon_status(&holders[0])["data_plane"]["connections_refused"].as_u64();
    assert!(
        refused >= Some(1),
        "refusals are counted: {refused:?}: {}",
        lab.situation()
    );
}
