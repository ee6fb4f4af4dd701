//! A minimal HTTP/1.1 GET made from inside a lab namespace: how the lab knows that a backend or
//! the VIP answers, and which node served.

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
    fn refuses_a_cut_reply() {
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok").is_err());
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\nContent-").is_err());
    }
}
