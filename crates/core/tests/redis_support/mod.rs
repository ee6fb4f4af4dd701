//! A real redis-server for the interop tier's tests: on a unix socket only (no TCP listener),
//! stopped on drop, and a client that reads exactly one reply per request.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use steadfast_core::resp_value::{decode_value, DecodeError, DecodeErrorKind, ValueLimits};

/// A redis-server on a unix socket only (`--port 0`: no TCP listener), stopped on drop.
pub struct Server {
    child: Child,
    socket: PathBuf,
}

impl Server {
    pub fn start() -> Server {
        let program = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        // Several servers per test process: a number of their own each.
        static STARTED: AtomicU64 = AtomicU64::new(0);
        let socket = std::env::temp_dir().join(format!(
            "steadfast-redis-{}-{}.sock",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&socket);
        let child = Command::new(&program)
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            // DEBUG DIGEST compares replicas' data; the socket is this test's alone.
            .args(["--enable-debug-command", "yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {program:?} ({error}): the interop tier needs redis-server 7 \
                     installed (or REDIS_SERVER set to its path)"
                )
            });
        let server = Server { child, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&server.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not open {:?}",
                server.socket
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn connect(&self) -> UnixStream {
        let stream = UnixStream::connect(&self.socket).expect("connect to redis-server");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        stream
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Sends `request` and returns the bytes of exactly one reply.
pub fn ask(stream: &mut UnixStream, request: &[u8]) -> Vec<u8> {
    stream.write_all(request).expect("send");
    let mut reply = Vec::new();
    let mut buffer = [0u8; 64 * 1024];
    loop {
        match decode_value(&reply, ValueLimits::default()) {
            Ok((_, used)) => {
                assert_eq!(used, reply.len(), "bytes after the reply");
                return reply;
            }
            Err(DecodeError {
                kind: DecodeErrorKind::Truncated,
                ..
            }) => {}
            Err(error) => panic!("reply: {error}"),
        }
        let read = stream.read(&mut buffer).expect("read a reply");
        assert!(read > 0, "redis-server closed the connection");
        reply.extend_from_slice(&buffer[..read]);
    }
}
