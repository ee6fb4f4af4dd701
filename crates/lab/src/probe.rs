//! A minimal HTTP/1.1 GET, and a RESP `PING` for the redis backend, made from inside a lab
//! namespace: how the lab knows that a backend or the VIP answers, and which node served.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::error::LabError;
use crate::system::run_in_namespace;

/// Replies larger than this are cut off with an error (the docroot's largest file is 1 MiB).
const MAX_REPLY_BYTES: usize = 4 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    /// The `Steadfast-Node` header: the node that served.
    pub node: Option<String>,
    pub body: Vec<u8>,
}

/// `GET path` to `target` over a new connection opened inside `namespace`; `timeout` bounds the
/// connect and the whole exchange.
pub fn http_get_in_namespace(
    namespace: &str,
    target: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<HttpReply, LabError> {
    run_in_namespace(namespace, || http_get(target, path, timeout))?.map_err(|source| {
        LabError::Http {
            namespace: namespace.to_string(),
            target,
            path: path.to_string(),
            source,
        }
    })
}

/// The whole `PING` request, as redis-cli sends it (an array of bulk strings).
pub const RESP_PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
/// A `PING` reply longer than this without its line end is not Redis answering.
const MAX_PING_REPLY: usize = 4096;

/// `PING` to `target` over a new connection opened inside `namespace`, answered `+PONG`;
/// `timeout` bounds the connect and the whole exchange.
pub fn redis_ping_in_namespace(
    namespace: &str,
    target: SocketAddr,
    timeout: Duration,
) -> Result<(), LabError> {
    run_in_namespace(namespace, || redis_ping(target, timeout))?.map_err(|source| LabError::Redis {
        namespace: namespace.to_string(),
        target,
        source,
    })
}

fn redis_ping(target: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&target, timeout)?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(RESP_PING)?;
    let mut reply = Vec::new();
    let mut piece = [0u8; 512];
    loop {
        if let Some(verdict) = ping_reply(&reply) {
            return verdict.map_err(invalid);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no reply line after {timeout:?} ({} bytes)", reply.len()),
            ));
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut piece)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed before a reply line: {:?}",
                    String::from_utf8_lossy(&reply)
                ),
            ));
        }
        reply.extend_from_slice(&piece[..n]);
    }
}

/// The verdict on the bytes read so far in answer to a `PING`: `None` while its first line is
/// incomplete, `Ok` for `+PONG`, and otherwise what the server said instead (an error reply
/// such as protected mode's `-DENIED`, or anything else).
pub fn ping_reply(reply: &[u8]) -> Option<Result<(), String>> {
    let Some(end) = reply.windows(2).position(|w| w == b"\r\n") else {
        return (reply.len() > MAX_PING_REPLY).then(|| {
            Err(format!(
                "{} bytes without a line end: not a RESP reply",
                reply.len()
            ))
        });
    };
    let line = &reply[..end];
    Some(match line {
        b"+PONG" => Ok(()),
        [b'-', message @ ..] => Err(format!("error reply: {}", String::from_utf8_lossy(message))),
        other => Err(format!("not +PONG: {:?}", String::from_utf8_lossy(other))),
    })
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

fn http_get(target: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<HttpReply> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&target, timeout)?;
    stream.set_write_timeout(Some(timeout))?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: steadfast-lab\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut reply = Vec::new();
    let mut piece = [0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "reply not complete after {timeout:?} ({} bytes)",
                    reply.len()
                ),
            ));
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut piece)?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&piece[..n]);
        if reply.len() > MAX_REPLY_BYTES {
            return Err(invalid(format!(
                "reply larger than {MAX_REPLY_BYTES} bytes"
            )));
        }
    }
    parse_reply(&reply)
}

fn parse_reply(reply: &[u8]) -> std::io::Result<HttpReply> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(reply) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return Err(invalid(format!(
                "connection closed inside the reply head ({} bytes)",
                reply.len()
            )))
        }
        Err(e) => return Err(invalid(format!("malformed reply head: {e}"))),
    };
    let status = response
        .code
        .ok_or_else(|| invalid("reply without a status".into()))?;
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let node = header("Steadfast-Node");
    let mut body = reply[head_len..].to_vec();
    if let Some(length) = header("Content-Length") {
        let length: usize = length
            .parse()
            .map_err(|_| invalid(format!("bad Content-Length {length:?}")))?;
        if body.len() < length {
            return Err(invalid(format!(
                "body cut short: {} of {length} bytes",
                body.len()
            )));
        }
        body.truncate(length);
    }
    Ok(HttpReply { status, node, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_reply_with_length() {
        let reply = b"HTTP/1.1 200 OK\r\nSteadfast-Node: n2\r\nContent-Length: 2\r\n\r\nokEXTRA";
        let parsed = parse_reply(reply).unwrap();
        assert_eq!(parsed.status, 200);
        assert_eq!(parsed.node.as_deref(), Some("n2"));
        assert_eq!(parsed.body, b"ok");
    }

    #[test]
    fn a_ping_is_answered_by_pong_alone() {
        assert_eq!(RESP_PING, b"*1\r\n$4\r\nPING\r\n");
        assert_eq!(ping_reply(b"+PONG\r\n"), Some(Ok(())));
        // Pieces of any size: no verdict before the line end.
        assert_eq!(ping_reply(b""), None);
        assert_eq!(ping_reply(b"+PO"), None);
        assert_eq!(ping_reply(b"+PONG\r"), None);
        let denied = ping_reply(b"-DENIED Redis is running in protected mode\r\n")
            .expect("a verdict")
            .unwrap_err();
        assert!(
            denied.contains("DENIED Redis is running in protected mode"),
            "{denied}"
        );
        assert!(ping_reply(b"-LOADING Redis is loading\r\n")
            .unwrap()
            .is_err());
        // A web server on the port, or a RESP3 simple string that is not PONG.
        assert!(ping_reply(b"HTTP/1.1 400 Bad Request\r\n")
            .unwrap()
            .is_err());
        assert!(ping_reply(b"+PONGX\r\n").unwrap().is_err());
        assert!(ping_reply(b"$4\r\nPONG\r\n").unwrap().is_err());
        assert!(ping_reply(&[b'x'; MAX_PING_REPLY + 1]).unwrap().is_err());
    }

    #[test]
    fn refuses_a_cut_reply() {
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok").is_err());
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\nContent-").is_err());
    }
}
