//! The verifying Redis client against a real redis-server on loopback: clean against a server
//! that keeps what it acknowledged, and loud against one that restarts empty in the middle of
//! the run (what a failover to a replica without the data does). Interop tier: needs
//! redis-server.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use steadfast_lab::redis_ledger::Violation;
use steadfast_lab::redis_verify::{self, VerifyOptions};

/// A redis-server on a loopback port, without persistence, stopped on drop.
struct Server {
    child: Child,
}

impl Server {
    fn start(port: u16) -> Server {
        let program = steadfast_lab::system::find_program("redis-server").expect(
            "redis-server is not installed: this interop test needs Debian's redis-server package",
        );
        let child = Command::new(program)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let server = Server { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(address(port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn address(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A loopback port free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

#[test]
#[ignore = "needs redis-server (the interop tier)"]
fn a_server_that_keeps_what_it_acknowledged_passes() {
    let port = free_port();
    let _server = Server::start(port);
    let options = VerifyOptions {
        connections: 8,
        duration: Duration::from_secs(2),
        seed: 11,
        ..VerifyOptions::default()
    };
    let report = redis_verify::run(None, address(port), &options).expect("the run");
    eprintln!("{report}");
    assert!(report.is_clean(), "{report}");
    assert!(report.commands > 1_000, "{report}");
    for (what, count) in [
        ("INCR", report.increments),
        ("RPUSH", report.pushes),
        ("transfers", report.transfers),
        ("reads", report.reads),
    ] {
        assert!(count > 0, "no {what}: {report}");
    }
    assert!(report.final_check);
}

#[test]
#[ignore = "needs redis-server (the interop tier)"]
fn a_server_that_restarts_empty_is_caught() {
    let port = free_port();
    let server = Server::start(port);
    let options = VerifyOptions {
        connections: 4,
        duration: Duration::from_secs(3),
        exchange_timeout: Duration::from_millis(500),
        seed: 12,
        ..VerifyOptions::default()
    };
    let run = std::thread::spawn(move || redis_verify::run(None, address(port), &options));
    std::thread::sleep(Duration::from_secs(1));
    drop(server);
    let _empty = Server::start(port);
    let report = run.join().expect("the run").expect("the run ends");
    eprintln!("{report}");
    assert!(!report.is_clean());
    assert!(report.client_errors > 0, "the restart broke connections");
    assert!(report.reconnects > 0, "{report}");
    assert!(report.final_check, "the data was read back: {report}");
    // The increments acknowledged before the restart are gone: the next INCR answers a number
    // out of step with them, and reads at the end fall short.
    assert!(
        report
            .violations
            .iter()
            .any(|v| matches!(v, Violation::IncrementOutOfStep { .. })),
        "{report}"
    );
    assert!(report.violation_count >= 4, "{report}");
}
