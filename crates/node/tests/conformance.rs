//! HTTP/1.1 conformance of the duplex proxy: a set of raw exchanges written from RFC 9110 and
//! RFC 9112 (methods, ranges, conditionals, bodies, Expect, pipelining, keep-alive and close,
//! framing and smuggling shapes, malformed heads, large and half-closed transfers), each sent
//! to the server alone (unreplicated mode) and through the proxy (duplex) with the same
//! backend. What a client sees must be the same: every reply's status, header fields (but
//! `Date`) and body bytes, and whether the connection was left open or closed. The differences
//! that remain are listed in [`KNOWN_DIFFERENCES`] and in the README, each with its reason.
//!
//! Run as root (network namespaces). The nginx and apache2 variants are the interop tier.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::Lab;
use sha2::{Digest, Sha256};
use steadfast_lab::webservers::bytes_path;
use steadfast_lab::{BackendKind, Mode};

/// How long a connection must stay silent before its exchange counts as over.
const QUIET: Duration = Duration::from_millis(1000);
/// The longest any case may take (a 32 MiB download included).
const CASE_LIMIT: Duration = Duration::from_secs(15);
/// Cases run at once.
const PARALLEL: usize = 12;

/// One thing the client does.
#[derive(Clone)]
enum Step {
    Send(Vec<u8>),
    Pause(Duration),
    /// Half-close: the client sends FIN and keeps reading.
    CloseWrite,
    /// Every case in flight stops here while the primary's host crashes (see
    /// [`split_by_a_crash`]).
    Crash,
}

#[derive(Clone)]
struct Case {
    name: String,
    /// The methods of the requests sent, in order (HEAD replies have no body).
    methods: Vec<String>,
    steps: Vec<Step>,
    /// The whole body goes with the head: whether a 100 (Continue) comes first depends on
    /// when the server reads (RFC 9110 §10.1.1 lets it leave it out), so it is not compared.
    continue_optional: bool,
}

/// A reply as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SeenReply {
    status: u16,
    /// Every header field but `Date` (and `Steadfast-Node`, which names the serving node), in
    /// order, names lowercased.
    fields: Vec<(String, String)>,
    body_len: usize,
    body_sha256: String,
}

/// What the client saw on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    replies: Vec<SeenReply>,
    /// Bytes after the last whole reply that are not a whole reply.
    rest: usize,
    closed: bool,
    /// What went wrong before the exchange could run (a refused connection).
    trouble: Option<String>,
}

fn request(method: &str, target: &str, fields: &[&str], body: &[u8]) -> Vec<u8> {
    let mut bytes = format!("{method} {target} HTTP/1.1\r\nHost: vip\r\n").into_bytes();
    for field in fields {
        bytes.extend_from_slice(field.as_bytes());
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(body);
    bytes
}

fn one(name: &str, method: &str, bytes: Vec<u8>) -> Case {
    Case {
        continue_optional: false,
        name: name.to_string(),
        methods: vec![method.to_string()],
        steps: vec![Step::Send(bytes)],
    }
}

fn get(name: &str, target: &str, fields: &[&str]) -> Case {
    one(name, "GET", request("GET", target, fields, b""))
}

/// Several requests sent back to back in one write.
fn pipelined(name: &str, requests: &[(&str, Vec<u8>)]) -> Case {
    Case {
        continue_optional: false,
        name: name.to_string(),
        methods: requests.iter().map(|(m, _)| m.to_string()).collect(),
        steps: vec![Step::Send(
            requests.iter().flat_map(|(_, b)| b.clone()).collect(),
        )],
    }
}

fn raw(name: &str, method: &str, bytes: &[u8]) -> Case {
    one(name, method, bytes.to_vec())
}

fn cases() -> Vec<Case> {
    let p1k = bytes_path(1024);
    let p10k = bytes_path(10 * 1024);
    let p1m = bytes_path(1024 * 1024);
    let p32m = bytes_path(32 * 1024 * 1024);
    let missing = "/no-such-path";
    let last_modified = "Thu, 01 Jan 2026 00:00:00 GMT";
    let mut cases = Vec::new();

    // Methods, on a file and on a path that does not exist (RFC 9110 §9).
    for (label, target) in [("file", p1k.as_str()), ("missing", missing)] {
        for method in ["GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "BREW"] {
            cases.push(one(
                &format!("method {method} {label}"),
                method,
                request(method, target, &[], b""),
            ));
        }
        for method in ["POST", "PUT", "PATCH"] {
            cases.push(one(
                &format!("method {method} {label} empty body"),
                method,
                request(method, target, &["Content-Length: 0"], b""),
            ));
        }
        cases.push(one(
            &format!("method lowercase get {label}"),
            "get",
            request("get", target, &[], b""),
        ));
    }
    cases.push(raw(
        "asterisk-form OPTIONS",
        "OPTIONS",
        b"OPTIONS * HTTP/1.1\r\nHost: vip\r\n\r\n",
    ));
    cases.push(one(
        "absolute-form target",
        "GET",
        request("GET", &format!("http://vip{p1k}"), &[], b""),
    ));

    // Ranges (RFC 9110 §14).
    for range in [
        "bytes=0-0",
        "bytes=0-99",
        "bytes=100-",
        "bytes=-100",
        "bytes=0-",
        "bytes=10239-",
        "bytes=10240-",
        "bytes=5000-4000",
        "bytes=0-1,5-6",
        "bytes=abc",
        "items=0-1",
        "bytes=-0",
        "bytes=0-99999",
    ] {
        cases.push(get(
            &format!("range {range}"),
            &p10k,
            &[&format!("Range: {range}")],
        ));
    }
    cases.push(one(
        "range on HEAD",
        "HEAD",
        request("HEAD", &p10k, &["Range: bytes=0-9"], b""),
    ));
    cases.push(get(
        "range with If-Range of another ETag",
        &p10k,
        &["Range: bytes=0-9", "If-Range: \"another\""],
    ));
    cases.push(get(
        "range with If-Range of the date",
        &p10k,
        &["Range: bytes=0-9", &format!("If-Range: {last_modified}")],
    ));

    // Conditional requests (RFC 9110 §13).
    for field in [
        "If-None-Match: *".to_string(),
        "If-None-Match: \"another\"".to_string(),
        "If-Match: \"another\"".to_string(),
        "If-Match: *".to_string(),
        format!("If-Modified-Since: {last_modified}"),
        "If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT".to_string(),
        "If-Modified-Since: Mon, 01 Jan 2001 00:00:00 GMT".to_string(),
        "If-Modified-Since: yesterday".to_string(),
        "If-Unmodified-Since: Mon, 01 Jan 2001 00:00:00 GMT".to_string(),
        "If-Unmodified-Since: Fri, 01 Jan 2100 00:00:00 GMT".to_string(),
    ] {
        cases.push(get(&format!("conditional {field}"), &p1k, &[&field]));
    }
    cases.push(one(
        "conditional HEAD If-None-Match",
        "HEAD",
        request("HEAD", &p1k, &["If-None-Match: *"], b""),
    ));

    // Request bodies and their framing (RFC 9112 §6, §7).
    let chunked = |name: &str, body: &[u8]| {
        one(
            name,
            "PUT",
            request("PUT", missing, &["Transfer-Encoding: chunked"], body),
        )
    };
    cases.push(one(
        "POST to a file with a body",
        "POST",
        request("POST", &p1k, &["Content-Length: 10"], b"0123456789"),
    ));
    cases.push(one(
        "POST with a body",
        "POST",
        request("POST", missing, &["Content-Length: 10"], b"0123456789"),
    ));
    cases.push(one(
        "POST with a 100 KB body",
        "POST",
        request(
            "POST",
            missing,
            &["Content-Length: 100000"],
            &vec![b'x'; 100_000],
        ),
    ));
    cases.push(one(
        "GET with a body",
        "GET",
        request("GET", &p1k, &["Content-Length: 5"], b"hello"),
    ));
    cases.push(chunked("chunked body", b"5\r\nhello\r\n0\r\n\r\n"));
    cases.push(chunked(
        "chunked body with a trailer",
        b"5\r\nhello\r\n0\r\nX-Check: 1\r\n\r\n",
    ));
    cases.push(chunked(
        "chunked body with an extension",
        b"5;name=value\r\nhello\r\n0\r\n\r\n",
    ));
    cases.push(chunked(
        "chunked body with an uppercase size",
        b"A\r\n0123456789\r\n0\r\n\r\n",
    ));
    cases.push(chunked(
        "chunked body with leading zeros",
        b"0005\r\nhello\r\n0\r\n\r\n",
    ));
    cases.push(chunked(
        "chunked body with a space after the size",
        b"5 \r\nhello\r\n0\r\n\r\n",
    ));
    cases.push(chunked(
        "chunked body with a bad size",
        b"xyz\r\nhello\r\n0\r\n\r\n",
    ));
    cases.push(one(
        "Content-Length and Transfer-Encoding",
        "POST",
        request(
            "POST",
            missing,
            &["Content-Length: 5", "Transfer-Encoding: chunked"],
            b"0\r\n\r\n",
        ),
    ));
    for (label, fields, body) in [
        (
            "chunked twice",
            vec!["Transfer-Encoding: chunked, chunked"],
            &b"0\r\n\r\n"[..],
        ),
        (
            "gzip then chunked",
            vec!["Transfer-Encoding: gzip, chunked"],
            b"0\r\n\r\n",
        ),
        ("gzip alone", vec!["Transfer-Encoding: gzip"], b"hello"),
        (
            "xchunked",
            vec!["Transfer-Encoding: xchunked"],
            b"0\r\n\r\n",
        ),
        (
            "equal lengths in a list",
            vec!["Content-Length: 5, 5"],
            b"hello",
        ),
        (
            "two different lengths",
            vec!["Content-Length: 5", "Content-Length: 6"],
            b"hello!",
        ),
        (
            "length with a plus sign",
            vec!["Content-Length: +5"],
            b"hello",
        ),
        ("negative length", vec!["Content-Length: -1"], b""),
        (
            "length beyond 64 bits",
            vec!["Content-Length: 99999999999999999999"],
            b"",
        ),
        (
            "space before the colon",
            vec!["Content-Length : 5"],
            b"hello",
        ),
    ] {
        cases.push(one(
            &format!("framing {label}"),
            "POST",
            request("POST", missing, &fields, body),
        ));
    }
    cases.push(raw(
        "chunked body on HTTP/1.0",
        "POST",
        b"POST /no-such-path HTTP/1.0\r\nHost: vip\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ));

    // Expect (RFC 9110 §10.1.1).
    cases.push(Case {
        continue_optional: true,
        ..one(
            "Expect 100-continue, body at once",
            "POST",
            request(
                "POST",
                missing,
                &["Expect: 100-continue", "Content-Length: 5"],
                b"hello",
            ),
        )
    });
    cases.push(Case {
        continue_optional: false,
        name: "Expect 100-continue, body after a pause".into(),
        methods: vec!["PUT".into()],
        steps: vec![
            Step::Send(request(
                "PUT",
                missing,
                &["Expect: 100-continue", "Content-Length: 5"],
                b"",
            )),
            Step::Pause(Duration::from_millis(300)),
            Step::Send(b"hello".to_vec()),
        ],
    });
    cases.push(get(
        "Expect 100-continue without a body",
        &p1k,
        &["Expect: 100-continue"],
    ));
    cases.push(get(
        "Expect of something else",
        &p1k,
        &["Expect: something"],
    ));
    cases.push(raw(
        "Expect 100-continue on HTTP/1.0",
        "POST",
        b"POST /no-such-path HTTP/1.0\r\nHost: vip\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
    ));

    // Pipelining (RFC 9112 §9.3.2).
    let g = |target: &str, fields: &[&str]| ("GET", request("GET", target, fields, b""));
    cases.push(pipelined("two GETs", &[g(&p1k, &[]), g(&p10k, &[])]));
    cases.push(pipelined(
        "ten GETs",
        &(0..10).map(|_| g(&p1k, &[])).collect::<Vec<_>>(),
    ));
    cases.push(pipelined(
        "GET, HEAD, GET",
        &[
            g(&p1k, &[]),
            ("HEAD", request("HEAD", &p10k, &[], b"")),
            g(&p1k, &[]),
        ],
    ));
    cases.push(pipelined(
        "a close in the middle",
        &[g(&p1k, &[]), g(&p1k, &["Connection: close"]), g(&p1k, &[])],
    ));
    cases.push(pipelined(
        "POST with a body, then GET",
        &[
            (
                "POST",
                request("POST", missing, &["Content-Length: 5"], b"hello"),
            ),
            g(&p1k, &[]),
        ],
    ));
    cases.push(pipelined(
        "missing, then found",
        &[g(missing, &[]), g(&p1k, &[])],
    ));
    cases.push(pipelined(
        "chunked PUT, then GET",
        &[
            (
                "PUT",
                request(
                    "PUT",
                    missing,
                    &["Transfer-Encoding: chunked"],
                    b"5\r\nhello\r\n0\r\n\r\n",
                ),
            ),
            g(&p1k, &[]),
        ],
    ));
    cases.push(pipelined(
        "a range, then a conditional",
        &[
            g(&p10k, &["Range: bytes=0-9"]),
            g(&p1k, &["If-None-Match: *"]),
        ],
    ));

    // Persistence and close (RFC 9112 §9).
    cases.push(raw(
        "HTTP/1.0",
        "GET",
        format!("GET {p1k} HTTP/1.0\r\nHost: vip\r\n\r\n").as_bytes(),
    ));
    cases.push(raw(
        "HTTP/1.0 keep-alive",
        "GET",
        format!("GET {p1k} HTTP/1.0\r\nHost: vip\r\nConnection: keep-alive\r\n\r\n").as_bytes(),
    ));
    cases.push(pipelined(
        "HTTP/1.0, then another request",
        &[
            (
                "GET",
                format!("GET {p1k} HTTP/1.0\r\nHost: vip\r\n\r\n").into_bytes(),
            ),
            g(&p1k, &[]),
        ],
    ));
    for field in [
        "Connection: close",
        "Connection: keep-alive",
        "Connection: foo, close",
        "Connection: CLOSE",
    ] {
        cases.push(get(&format!("persistence {field}"), &p1k, &[field]));
    }
    cases.push(Case {
        continue_optional: false,
        name: "half-close after a GET".into(),
        methods: vec!["GET".into()],
        steps: vec![Step::Send(request("GET", &p1k, &[], b"")), Step::CloseWrite],
    });
    cases.push(Case {
        continue_optional: false,
        name: "half-close after two GETs".into(),
        methods: vec!["GET".into(), "GET".into()],
        steps: vec![
            Step::Send(
                [
                    request("GET", &p1k, &[], b""),
                    request("GET", &p10k, &[], b""),
                ]
                .concat(),
            ),
            Step::CloseWrite,
        ],
    });
    cases.push(Case {
        continue_optional: false,
        name: "half-close inside a body".into(),
        methods: vec!["POST".into()],
        steps: vec![
            Step::Send(request("POST", missing, &["Content-Length: 10"], b"hello")),
            Step::CloseWrite,
        ],
    });

    // Heads: malformed, unusual and large (RFC 9112 §2-§5).
    for (label, bytes) in [
        ("no Host", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        (
            "two Hosts",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
        ),
        ("empty Host", b"GET / HTTP/1.1\r\nHost:\r\n\r\n".to_vec()),
        (
            "obs-fold",
            format!("GET {p1k} HTTP/1.1\r\nHost: vip\r\nX-A: a\r\n b\r\n\r\n").into_bytes(),
        ),
        (
            "bare LF",
            format!("GET {p1k} HTTP/1.1\nHost: vip\n\n").into_bytes(),
        ),
        (
            "two spaces in the request line",
            format!("GET  {p1k} HTTP/1.1\r\nHost: vip\r\n\r\n").into_bytes(),
        ),
        (
            "a tab in the request line",
            format!("GET\t{p1k} HTTP/1.1\r\nHost: vip\r\n\r\n").into_bytes(),
        ),
        (
            "no version",
            format!("GET {p1k}\r\nHost: vip\r\n\r\n").into_bytes(),
        ),
        (
            "HTTP/1.2",
            format!("GET {p1k} HTTP/1.2\r\nHost: vip\r\n\r\n").into_bytes(),
        ),
        (
            "HTTP/2.0",
            format!("GET {p1k} HTTP/2.0\r\nHost: vip\r\n\r\n").into_bytes(),
        ),
        (
            "lowercase version",
            format!("GET {p1k} http/1.1\r\nHost: vip\r\n\r\n").into_bytes(),
        ),
        (
            "NUL in a field value",
            format!("GET {p1k} HTTP/1.1\r\nHost: vip\r\nX-A: a\0b\r\n\r\n").into_bytes(),
        ),
        (
            "space in a field name",
            format!("GET {p1k} HTTP/1.1\r\nHost: vip\r\nX A: 1\r\n\r\n").into_bytes(),
        ),
        (
            "empty field name",
            format!("GET {p1k} HTTP/1.1\r\nHost: vip\r\n: x\r\n\r\n").into_bytes(),
        ),
        (
            "a fragment in the target",
            format!("GET {p1k}#part HTTP/1.1\r\nHost: vip\r\n\r\n").into_bytes(),
        ),
        (
            "percent-encoded path",
            b"GET /%62ytes/1024 HTTP/1.1\r\nHost: vip\r\n\r\n".to_vec(),
        ),
        (
            "dot segments",
            b"GET /bytes/../bytes/1024 HTTP/1.1\r\nHost: vip\r\n\r\n".to_vec(),
        ),
        (
            "dot segments above the root",
            b"GET /../../etc/passwd HTTP/1.1\r\nHost: vip\r\n\r\n".to_vec(),
        ),
        (
            "a byte beyond ASCII in the path",
            b"GET /\xff HTTP/1.1\r\nHost: vip\r\n\r\n".to_vec(),
        ),
        (
            "an empty line before the request",
            format!("\r\nGET {p1k} HTTP/1.1\r\nHost: vip\r\n\r\n").into_bytes(),
        ),
        (
            "three empty lines before the request",
            format!("\r\n\r\n\r\nGET {p1k} HTTP/1.1\r\nHost: vip\r\n\r\n").into_bytes(),
        ),
        ("not HTTP", b"HELLO\r\n\r\n".to_vec()),
        (
            "a 9000-byte target",
            format!("GET /{} HTTP/1.1\r\nHost: vip\r\n\r\n", "a".repeat(9000)).into_bytes(),
        ),
        (
            "a 20000-byte target",
            format!("GET /{} HTTP/1.1\r\nHost: vip\r\n\r\n", "a".repeat(20_000)).into_bytes(),
        ),
    ] {
        cases.push(one(&format!("head {label}"), "GET", bytes));
    }
    for count in [100, 140] {
        let fields: Vec<String> = (0..count).map(|i| format!("X-Field-{i}: {i}")).collect();
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        cases.push(get(&format!("head with {count} fields"), &p1k, &fields));
    }
    for len in [4000, 8000, 80_000] {
        let field = format!("X-Long: {}", "v".repeat(len));
        cases.push(get(
            &format!("head with a {len}-byte field"),
            &p1k,
            &[&field],
        ));
    }
    let cookie = format!("Cookie: {}", "session=abc; ".repeat(300));
    cases.push(get("a large cookie", &p1k, &[&cookie]));

    // Other fields a client sends.
    for field in [
        "Accept-Encoding: gzip, deflate",
        "Authorization: Basic dXNlcjpwYXNz",
        "TE: trailers",
        "Content-Type: text/plain",
        "Cache-Control: no-cache",
        "Max-Forwards: 0",
    ] {
        cases.push(get(&format!("field {field}"), &p1k, &[field]));
    }

    // Large transfers.
    cases.push(get("GET 1 MiB", &p1m, &[]));
    cases.push(get("GET 32 MiB", &p32m, &[]));
    cases.push(one("HEAD 32 MiB", "HEAD", request("HEAD", &p32m, &[], b"")));
    cases.push(get(
        "range inside 32 MiB",
        &p32m,
        &["Range: bytes=1000000-1999999"],
    ));
    cases.push(get("GET 1 MiB and close", &p1m, &["Connection: close"]));

    // Tunnels (RFC 9110 §9.3.6, §7.8).
    cases.push(raw(
        "CONNECT",
        "CONNECT",
        b"CONNECT vip:443 HTTP/1.1\r\nHost: vip:443\r\n\r\n",
    ));
    cases.push(raw(
        "CONNECT with bytes behind it",
        "CONNECT",
        b"CONNECT vip:443 HTTP/1.1\r\nHost: vip:443\r\n\r\n\x16\x03\x01\x00\x05hello",
    ));
    cases.push(get(
        "Upgrade to websocket",
        &p1k,
        &["Connection: Upgrade", "Upgrade: websocket"],
    ));
    cases.push(get(
        "Upgrade to h2c",
        &p1k,
        &[
            "Connection: Upgrade, HTTP2-Settings",
            "Upgrade: h2c",
            "HTTP2-Settings: AAMAAABkAAQAAP__",
        ],
    ));
    cases
}

/// Splits what the client received into replies, given the methods of the requests sent.
fn replies_seen(raw: &[u8], methods: &[String]) -> (Vec<SeenReply>, usize, bool) {
    let mut replies = Vec::new();
    let mut at = 0;
    let mut answered = 0;
    loop {
        let rest = &raw[at..];
        if rest.is_empty() {
            return (replies, 0, true);
        }
        let Some(head_len) = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
        else {
            return (replies, rest.len(), true);
        };
        let head = String::from_utf8_lossy(&rest[..head_len]).to_string();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let mut fields = Vec::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let name = name.trim().to_ascii_lowercase();
            if name == "date" || name == "steadfast-node" {
                continue;
            }
            // apache2 lists the methods of Allow in an order of its own from one request to
            // the next.
            let value = if name == "allow" {
                let mut methods: Vec<&str> = value.split(',').map(str::trim).collect();
                methods.sort_unstable();
                methods.join(",")
            } else {
                value.trim().to_string()
            };
            fields.push((name, value));
        }
        let field = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        // A multipart reply's boundary is drawn at random for every reply (apache2): it is
        // not part of what is compared.
        let boundary = field("content-type")
            .and_then(|ct| ct.split_once("boundary="))
            .map(|(_, b)| b.to_string());
        let method = methods.get(answered).map_or("GET", String::as_str);
        let body_start = at + head_len;
        let bodiless = (100..200).contains(&status) || status == 204 || status == 304;
        let (body, end) = if bodiless || method == "HEAD" {
            (Vec::new(), body_start)
        } else if field("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
            match dechunk(&raw[body_start..]) {
                Some((body, used)) => (body, body_start + used),
                None => return (replies, raw.len() - at, false),
            }
        } else if let Some(length) = field("content-length").and_then(|l| l.parse::<usize>().ok()) {
            if raw.len() < body_start + length {
                return (replies, raw.len() - at, false);
            }
            (
                raw[body_start..body_start + length].to_vec(),
                body_start + length,
            )
        } else {
            (raw[body_start..].to_vec(), raw.len())
        };
        if status >= 200 {
            answered += 1;
        }
        let (fields, body) = match boundary {
            Some(boundary) => {
                let body = String::from_utf8_lossy(&body)
                    .replace(&boundary, "BOUNDARY")
                    .into_bytes();
                // The boundary's length varies too, and with it the body's.
                let fields = fields
                    .into_iter()
                    .map(|(n, v)| match n.as_str() {
                        "content-length" => (n, body.len().to_string()),
                        _ => (n, v.replace(&boundary, "BOUNDARY")),
                    })
                    .collect();
                (fields, body)
            }
            None => (fields, body),
        };
        let body = if field_is(&fields, "content-type", "message/http") {
            without_request_id_values(&body)
        } else {
            body
        };
        replies.push(SeenReply {
            status,
            fields,
            body_len: body.len(),
            body_sha256: format!("{:x}", Sha256::digest(&body)),
        });
        at = end;
    }
}

/// The payload of a chunked body at the start of `bytes`, and the bytes it took.
fn dechunk(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = bytes[at..].windows(2).position(|w| w == b"\r\n")? + at;
        let line = std::str::from_utf8(&bytes[at..line_end]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailer fields up to the empty line.
            loop {
                let end = bytes[at..].windows(2).position(|w| w == b"\r\n")? + at;
                let empty = end == at;
                at = end + 2;
                if empty {
                    return Some((body, at));
                }
            }
        }
        if bytes.len() < at + size + 2 {
            return None;
        }
        body.extend_from_slice(&bytes[at..at + size]);
        at += size + 2;
    }
}

fn field_is(fields: &[(String, String)], name: &str, value: &str) -> bool {
    fields.iter().any(|(n, v)| n == name && v == value)
}

/// A TRACE echo with the value of its `Steadfast-Request-Id` field left out: the id names the
/// connection, which differs from run to run (its presence is what is compared).
fn without_request_id_values(echo: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(echo.len());
    for line in echo.split_inclusive(|&b| b == b'\n') {
        let is_id = line.len() > 21 && line[..21].eq_ignore_ascii_case(b"steadfast-request-id:");
        if is_id {
            out.extend_from_slice(b"Steadfast-Request-Id: (left out)\r\n");
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

/// `case` with a crash in its middle: half its first write before, the rest after.
fn split_by_a_crash(case: &Case) -> Case {
    let mut steps = Vec::new();
    let mut split = false;
    for step in &case.steps {
        match step {
            Step::Send(bytes) if !split && bytes.len() >= 2 => {
                let (before, after) = bytes.split_at(bytes.len() / 2);
                steps.extend([
                    Step::Send(before.to_vec()),
                    Step::Crash,
                    Step::Send(after.to_vec()),
                ]);
                split = true;
            }
            other => steps.push(other.clone()),
        }
    }
    Case {
        continue_optional: case.continue_optional,
        name: case.name.clone(),
        methods: case.methods.clone(),
        steps,
    }
}

/// Until the peer has acknowledged every byte `stream` sent (the backup holds them), at most
/// 3 s.
fn wait_sent_bytes_acknowledged(stream: &TcpStream) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match steadfast_os::repair::queued_bytes(stream) {
            Ok((_, 0)) | Err(_) => return,
            Ok(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn run_case(target: SocketAddr, case: &Case) -> Seen {
    run_case_around(target, case, &|| {})
}

/// Runs `case`; at its [`Step::Crash`], once the server has every byte sent so far,
/// `at_crash` (which returns when the crash is over).
fn run_case_around(target: SocketAddr, case: &Case, at_crash: &(dyn Fn() + Sync)) -> Seen {
    let mut stream = match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
        Ok(stream) => stream,
        Err(e) => {
            // Still through the crash, so that the cases running beside this one go on.
            if case.steps.iter().any(|step| matches!(step, Step::Crash)) {
                at_crash();
            }
            return Seen {
                replies: Vec::new(),
                rest: 0,
                closed: true,
                trouble: Some(format!("connecting to {target}: {e}")),
            };
        }
    };
    let _ = stream.set_nodelay(true);
    for step in &case.steps {
        match step {
            // The server may close while the request is still being sent (a 413, say): what
            // it answered is still read below.
            Step::Send(bytes) => {
                let _ = stream.write_all(bytes);
            }
            Step::Pause(pause) => std::thread::sleep(*pause),
            Step::CloseWrite => {
                let _ = stream.shutdown(std::net::Shutdown::Write);
            }
            Step::Crash => {
                wait_sent_bytes_acknowledged(&stream);
                at_crash();
            }
        }
    }
    let started = Instant::now();
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut closed = false;
    stream.set_read_timeout(Some(QUIET)).expect("read timeout");
    while started.elapsed() < CASE_LIMIT {
        match stream.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                closed = true;
                break;
            }
            Err(_) => break,
        }
    }
    let (mut replies, rest, _) = replies_seen(&raw, &case.methods);
    if case.continue_optional {
        replies.retain(|reply| reply.status != 100);
    }
    Seen {
        replies,
        rest,
        closed,
        trouble: None,
    }
}

/// Runs every case against `lab`'s service, [`PARALLEL`] at a time.
fn run_all(lab: &Lab, cases: &[Case]) -> Vec<Seen> {
    let target = lab.target();
    steadfast_lab::run_in_namespace(&lab.info.client_ns, || {
        let next = AtomicUsize::new(0);
        let mut seen: Vec<Option<Seen>> = vec![None; cases.len()];
        let slots: Vec<std::sync::Mutex<Option<Seen>>> = (0..cases.len())
            .map(|_| std::sync::Mutex::new(None))
            .collect();
        std::thread::scope(|scope| {
            for _ in 0..PARALLEL {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    *slots[i].lock().unwrap() = Some(run_case(target, case));
                });
            }
        });
        for (i, slot) in slots.into_iter().enumerate() {
            seen[i] = slot.into_inner().unwrap();
        }
        seen.into_iter()
            .map(|s| s.expect("every case ran"))
            .collect()
    })
    .expect("enter the client namespace")
}

/// How a known difference shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shows {
    /// The same replies; the proxy closes the connection after them where the server alone
    /// kept it open.
    ClosedAfter,
    /// Something else (said in the reason).
    Otherwise,
}

use BackendKind::{Apache2, Nginx};

const UNFRAMEABLE: &str = "a request outside RFC 9112's grammar that the server accepts: the \
    proxy passes the server's answer on, then closes the connection (it cannot frame the \
    request, so no boundary after it can be trusted)";
const EARLY_REPLY: &str = "the server answered before the request's body ended: the reply is \
    passed on, then the connection closes (the server would have read and discarded the rest \
    of the body and carried on)";

/// Differences the proxy still shows, each with its reason (also in the README): case name,
/// the backends it shows with, how it shows, why.
const KNOWN_DIFFERENCES: &[(&str, &[BackendKind], Shows, &str)] = &[
    (
        "head two spaces in the request line",
        &[Nginx],
        Shows::ClosedAfter,
        UNFRAMEABLE,
    ),
    (
        "head HTTP/1.2",
        &[Nginx, Apache2],
        Shows::ClosedAfter,
        UNFRAMEABLE,
    ),
    ("head HTTP/2.0", &[Apache2], Shows::ClosedAfter, UNFRAMEABLE),
    (
        "head a byte beyond ASCII in the path",
        &[Nginx, Apache2],
        Shows::ClosedAfter,
        UNFRAMEABLE,
    ),
    ("head obs-fold", &[Apache2], Shows::ClosedAfter, UNFRAMEABLE),
    (
        "framing chunked twice",
        &[Apache2],
        Shows::ClosedAfter,
        UNFRAMEABLE,
    ),
    (
        "CONNECT with bytes behind it",
        &[Apache2],
        Shows::ClosedAfter,
        "bytes behind a CONNECT are a tunnel, which the proxy does not carry: the server's \
         refusal of the CONNECT is passed on, then the connection closes",
    ),
    (
        "POST with a 100 KB body",
        &[Nginx],
        Shows::ClosedAfter,
        EARLY_REPLY,
    ),
    (
        "Expect 100-continue, body after a pause",
        &[Nginx],
        Shows::ClosedAfter,
        EARLY_REPLY,
    ),
    (
        "head no version",
        &[Nginx, Apache2],
        Shows::Otherwise,
        "HTTP/0.9 (a request line without a version): the server answers with a body and no \
         head, which the proxy does not pass on; the connection closes without a reply",
    ),
    (
        "method TRACE file",
        &[Apache2],
        Shows::Otherwise,
        "TRACE echoes the request as the server received it: with the proxy's \
         Steadfast-Request-Id field",
    ),
    (
        "method TRACE missing",
        &[Apache2],
        Shows::Otherwise,
        "TRACE echoes the request as the server received it: with the proxy's \
         Steadfast-Request-Id field",
    ),
    (
        "head bare LF",
        &[Apache2],
        Shows::Otherwise,
        "the proxy accepts bare LF line ends, as nginx does, and passes the head on with CRLF: \
         apache2 answers the request instead of refusing it with 400",
    ),
];

/// One lab at a time: each runs up to 140 exchanges at once, and on 2 cores several such labs
/// starve the daemons' heartbeats (a primary that steps down mid-run changes what is compared).
static ONE_LAB_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_lab_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_LAB_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn the_proxy_is_not_seen(backend: BackendKind) {
    let _alone = one_lab_at_a_time();
    let cases = cases();
    assert!(cases.len() >= 120, "{} cases", cases.len());
    let mut seen = Vec::new();
    for mode in [Mode::Unreplicated, Mode::Duplex] {
        let lab = Lab::up_in_mode("cf", 2, true, backend, None, mode);
        seen.push(run_all(&lab, &cases));
    }
    let mut unexpected = Vec::new();
    let mut known = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let (alone, proxied) = (&seen[0][i], &seen[1][i]);
        if alone == proxied {
            continue;
        }
        let listed = KNOWN_DIFFERENCES
            .iter()
            .find(|(name, backends, _, _)| *name == case.name && backends.contains(&backend));
        let report = format!(
            "{:?} / {}:\n  alone:   {alone:?}\n  proxied: {proxied:?}",
            backend, case.name
        );
        let shows = if alone.replies == proxied.replies
            && alone.rest == proxied.rest
            && !alone.closed
            && proxied.closed
        {
            Shows::ClosedAfter
        } else {
            Shows::Otherwise
        };
        match listed {
            Some((_, _, known_shows, reason)) if *known_shows == shows => {
                known.push(format!("{report}\n  known: {reason}"))
            }
            Some((_, _, known_shows, _)) => unexpected.push(format!(
                "{report}\n  listed as {known_shows:?}, but shows {shows:?}"
            )),
            None => unexpected.push(report),
        }
    }
    eprintln!(
        "{} cases, {} identical, {} known differences:\n{}",
        cases.len(),
        cases.len() - known.len() - unexpected.len(),
        known.len(),
        known.join("\n")
    );
    assert!(
        unexpected.is_empty(),
        "{} of {} cases differ through the proxy:\n{}",
        unexpected.len(),
        cases.len(),
        unexpected.join("\n")
    );
}

#[test]
fn the_proxy_is_not_seen_builtin() {
    the_proxy_is_not_seen(BackendKind::Builtin);
}

#[test]
#[ignore = "needs nginx: apt-get install nginx-light (.ci/run installs it)"]
fn the_proxy_is_not_seen_nginx() {
    the_proxy_is_not_seen(BackendKind::Nginx);
}

#[test]
#[ignore = "needs apache2: apt-get install apache2 (.ci/run installs it)"]
fn the_proxy_is_not_seen_apache2() {
    the_proxy_is_not_seen(BackendKind::Apache2);
}

/// Runs every case at once, each split by [`split_by_a_crash`]; when every one has sent its
/// first half, `crash` runs (or nothing, for the outcome without a crash).
fn run_all_split(
    lab: &Lab,
    cases: &[Case],
    crash: Option<&(dyn Fn() -> Result<(), String> + Sync)>,
) -> Vec<Seen> {
    let target = lab.target();
    let split: Vec<Case> = cases.iter().map(split_by_a_crash).collect();
    let stopped = std::sync::Barrier::new(split.len() + 1);
    let resumed = std::sync::Barrier::new(split.len() + 1);
    steadfast_lab::run_in_namespace(&lab.info.client_ns, || {
        std::thread::scope(|scope| {
            let runs: Vec<_> = split
                .iter()
                .map(|case| {
                    let (stopped, resumed) = (&stopped, &resumed);
                    scope.spawn(move || {
                        let at_crash = || {
                            stopped.wait();
                            resumed.wait();
                        };
                        if !case.steps.iter().any(|step| matches!(step, Step::Crash)) {
                            // Nothing to split: it runs whole after the crash.
                            at_crash();
                        }
                        run_case_around(target, case, &at_crash)
                    })
                })
                .collect();
            stopped.wait();
            // Not a panic yet: every case waits for `resumed`.
            let crashed = crash.map_or(Ok(()), |crash| crash());
            resumed.wait();
            let seen = runs
                .into_iter()
                .map(|run| run.join().expect("a case thread"))
                .collect();
            if let Err(trouble) = crashed {
                panic!("{trouble}");
            }
            seen
        })
    })
    .expect("enter the client namespace")
}

/// The primary's host crashes while every case is in flight (half of its first write sent and
/// held by the backup): each outcome is the one the same split exchange gets without a crash.
fn a_crash_in_every_exchange_is_not_seen(backend: BackendKind) {
    let _alone = one_lab_at_a_time();
    let cases = cases();
    let lab = Lab::up_in_mode("cc", 2, true, backend, None, Mode::Duplex);
    let holders = lab.holders();
    assert_eq!(holders.len(), 1, "one primary: {}", lab.situation());
    let started = Instant::now();
    let uncrashed = run_all_split(&lab, &cases, None);
    eprintln!(
        "{} split exchanges without a crash: {:?}",
        cases.len(),
        started.elapsed()
    );
    // Else the outcomes compared below are of two takeovers.
    assert_eq!(
        lab.holders(),
        holders,
        "the primary changed without a crash: {}",
        lab.situation()
    );
    let crash = || {
        steadfast_lab::crash(lab.name(), &holders[0], steadfast_lab::CrashKind::Host)
            .map_err(|e| format!("crashing the primary's host {}: {e:#}", holders[0]))?;
        // The crashed host's kernel still carries the address.
        let taken_over = common::wait_until(Duration::from_secs(5), || {
            lab.holders_except(&holders[0]).len() == 1
        });
        if taken_over {
            Ok(())
        } else {
            Err(format!(
                "the backup did not take over within 5 s: {}",
                lab.situation()
            ))
        }
    };
    let started = Instant::now();
    let crashed = run_all_split(&lab, &cases, Some(&crash));
    eprintln!("the same with a crash: {:?}", started.elapsed());
    let differences: Vec<String> = cases
        .iter()
        .zip(uncrashed.iter().zip(&crashed))
        .filter(|(_, (without, with))| without != with)
        .map(|(case, (without, with))| {
            format!(
                "{backend:?} / {}:\n  no crash: {without:?}\n  crash:    {with:?}",
                case.name
            )
        })
        .collect();
    let new_primary = lab
        .holders_except(&holders[0])
        .first()
        .cloned()
        .unwrap_or_default();
    assert!(
        differences.is_empty(),
        "{} of {} exchanges differ when the primary crashes in their middle:\n{}\n{}",
        differences.len(),
        cases.len(),
        differences.join("\n"),
        lab.daemon_status(&new_primary)["data_plane"]
    );
}

#[test]
fn a_crash_in_every_exchange_is_not_seen_builtin() {
    a_crash_in_every_exchange_is_not_seen(BackendKind::Builtin);
}

#[test]
#[ignore = "needs nginx: apt-get install nginx-light (.ci/run installs it)"]
fn a_crash_in_every_exchange_is_not_seen_nginx() {
    a_crash_in_every_exchange_is_not_seen(BackendKind::Nginx);
}

#[test]
#[ignore = "needs apache2: apt-get install apache2 (.ci/run installs it)"]
fn a_crash_in_every_exchange_is_not_seen_apache2() {
    a_crash_in_every_exchange_is_not_seen(BackendKind::Apache2);
}
