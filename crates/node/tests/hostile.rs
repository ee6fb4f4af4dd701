//! Hostile input at a running duplex lab: spoofed SYNs at the service address must not take the
//! service down. Run as root (network namespaces); the full-size flood (50,000 SYN/s for 30 s)
//! is `steadfast-lab bench`'s, this one is sized for CI.

mod common;

use std::net::SocketAddrV4;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::{BackgroundLoad, Lab};
use steadfast_lab::flood::{spoofed_syns, syn_flood, FloodOptions};
use steadfast_lab::load::{KeepAliveOptions, LoadOptions, ProbeOptions, ProbeRequest};
use steadfast_lab::{BackendKind, Mode};

/// A flood of spoofed SYNs, more than the backup keeps half-open images for, under a verifying
/// load: the established keep-alive connections lose no request, new connections (one every
/// 10 ms, 500 ms to connect) rarely fail, and the service answers at once after the flood.
/// Before the half-open bound and the SYN-cookie path, most new connections failed. The
/// hostile-input issue asks for fewer than 1 in 100 failing, as in unreplicated mode. Measured
/// 0.8 to 1.3 in 100 (a SYN that got no SYN-ACK within 500 ms) while the backup's packet ring
/// had 256 slots and dropped bursts; with 16,384: 0 of 530 in eight runs.
///
/// The default heartbeat (50 ms, a lease of 150 ms): with 10 ms heartbeats the flood delayed
/// the primary's heartbeats by 30 ms in one CI run of ten, its lease lapsed and its backup
/// took over in the middle of the flood (the clients lost nothing), which split the flood
/// between two backups, neither of which then held enough of it to reach its bound.
#[test]
fn a_syn_flood_leaves_established_and_new_connections_working_builtin() {
    const RATE: u32 = 20_000;
    const FLOOD: Duration = Duration::from_secs(5);
    let lab = Lab::up_in_mode("sf", 2, true, BackendKind::Builtin, None, Mode::Duplex);
    let (primary, backup) = protected_primary(&lab);
    let load = verifying_load(&lab);
    load.wait_for_successes(0, 100, Duration::from_secs(5), "before the flood");
    let target = SocketAddrV4::new(steadfast_lab::topology::VIP, 80);
    let flood = syn_flood(
        &lab.info.client_ns,
        FloodOptions {
            target,
            syns_per_second: RATE,
            duration: FLOOD,
        },
        &AtomicBool::new(false),
    )
    .expect("flood the service address");
    let after = load.successes();
    load.wait_for_successes(
        after,
        50,
        Duration::from_secs(1),
        "within a second of the flood's end",
    );
    let report = load.stop();
    let summary = report.summary();
    let backup_plane = lab.daemon_status(&backup)["data_plane"].clone();
    let evicted = backup_plane["half_open_evicted"].as_u64();
    let by_cookie = lab.daemon_status(&primary)["data_plane"]["accepted_by_syn_cookie"].as_u64();
    eprintln!(
        "backup: frames dropped {} {}, refused {}; primary: {by_cookie:?} connections accepted \
         by SYN cookie",
        backup_plane["frames_dropped"],
        backup_plane["drop_reasons"],
        backup_plane["frames_refused"],
    );
    eprintln!(
        "flood: {} SYNs in {:?} ({:.0}/s, {} not sent); probes {} failed of {}, keep-alive \
         requests {} failed of {}; backup pushed out {evicted:?} half-open images; probe errors {:?}",
        flood.sent,
        flood.took,
        flood.rate(),
        flood.send_errors,
        summary.probe_failures,
        summary.probes,
        summary.request_failures,
        summary.requests,
        summary.probe_errors
    );
    assert!(
        flood.sent >= u64::from(RATE) * FLOOD.as_secs() * 8 / 10,
        "the flood ran at its rate (else this test shows nothing): {flood:?}"
    );
    assert!(
        evicted > Some(0),
        "the flood was larger than the backup's half-open bound: {evicted:?}: {}",
        lab.situation()
    );
    assert_eq!(
        summary.request_failures,
        0,
        "no request of an established connection fails: {:?}: {}",
        summary.request_errors,
        lab.situation()
    );
    assert!(
        summary.probe_failures * 100 < summary.probes,
        "fewer than 1 in 100 new connections fail: {} of {} ({:?}): {}",
        summary.probe_failures,
        summary.probes,
        summary.probe_errors,
        lab.situation()
    );
}

/// SYNs damaged on the wire (a bit of the TCP header flipped after the checksum was computed)
/// never reach the primary through the backup: the backup verifies what no NIC verified
/// before logging, where it used to log the segment as sent and recompute its checksum on the
/// way to the primary, which then took it as good. The same SYNs undamaged do reach it.
#[test]
fn segments_damaged_on_the_wire_are_neither_logged_nor_forwarded() {
    const SYNS: u32 = 50;
    let lab = Lab::up_in_mode("ck", 2, true, BackendKind::Builtin, None, Mode::Duplex);
    let (primary, backup) = protected_primary(&lab);
    let primary_ns = format!("{}-{primary}", lab.name());
    // SYNs from the spoofed sources leave half-open sockets at the primary (their SYN-ACKs go
    // nowhere) for a minute: each one that reached its TCP.
    let half_open_at_primary = || {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &primary_ns,
                "ss",
                "-Htn",
                "state",
                "syn-recv",
            ])
            .output()
            .expect("ss (Debian package iproute2) runs");
        assert!(out.status.success(), "ss in {primary_ns}: {out:?}");
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let bad_checksums = || {
        lab.daemon_status(&backup)["data_plane"]["drop_reasons"]["bad-checksum"]
            .as_u64()
            .unwrap_or(0)
    };
    let logged = || {
        lab.daemon_status(&backup)["data_plane"]["frames_logged"]
            .as_u64()
            .unwrap_or(0)
    };
    let target = SocketAddrV4::new(steadfast_lab::topology::VIP, 80);

    let logged_before = logged();
    let sent = spoofed_syns(&lab.info.client_ns, target, SYNS, true).expect("send damaged SYNs");
    assert_eq!(sent, u64::from(SYNS), "the client's kernel sent them all");
    let dropped = common::wait_until(Duration::from_secs(5), || {
        bad_checksums() >= u64::from(SYNS)
    });
    // Anything they would have caused at the primary has happened by now: the undamaged ones
    // below show how fast.
    std::thread::sleep(Duration::from_millis(200));
    let (half_open, logged_damaged) = (half_open_at_primary(), logged() - logged_before);
    eprintln!(
        "damaged: {} dropped for their checksum, {logged_damaged} logged, {half_open} half-open \
         at the primary",
        bad_checksums()
    );
    assert!(dropped, "the backup dropped {} of {SYNS}", bad_checksums());
    assert_eq!(half_open, 0, "no damaged SYN reached the primary");
    assert_eq!(logged_damaged, 0, "no damaged SYN was logged");

    let sent = spoofed_syns(&lab.info.client_ns, target, SYNS, false).expect("send SYNs");
    assert_eq!(sent, u64::from(SYNS));
    let reached = common::wait_until(Duration::from_secs(5), || {
        half_open_at_primary() >= SYNS as usize
    });
    eprintln!(
        "undamaged: {} half-open at the primary, {} logged",
        half_open_at_primary(),
        logged() - logged_before
    );
    assert!(reached, "the undamaged SYNs reached the primary");
    assert_eq!(bad_checksums(), u64::from(SYNS), "none of them dropped");
}

/// Slowloris: 10,000 connections, opened at 2,500 a second, each sending a request head that
/// never completes (a byte now and then), with the header timeout at 8 s so that all of them
/// are open at once for a while. Every one is answered 408 and closed by the header timeout,
/// and meanwhile 20 verifying keep-alive clients lose nothing and new connections (one every
/// 10 ms) rarely fail (see the bound at the end).
/// `max_connections` is set above the slow ones: its default, from this machine's open-file
/// limit (two descriptors a session), is below 10,000, and where the daemon may not raise the
/// hard limit (no CAP_SYS_RESOURCE) a slow head, which holds no backend connection, takes one.
#[test]
fn ten_thousand_slow_heads_are_let_go_and_disturb_no_one_builtin() {
    use std::io::{Read, Write};
    const SLOW: usize = 10_000;
    const OPENED_PER_SECOND: usize = 2_500;
    const HEADER_TIMEOUT: Duration = Duration::from_secs(8);
    const SLACK: Duration = Duration::from_secs(5);
    steadfast_os::limits::raise_open_files_to(SLOW as u64 + 1024).expect("open-file limit");
    let lab = Lab::up_with("sl", 2, BackendKind::Builtin, |opts| {
        opts.mode = Mode::Duplex;
        opts.witness = true;
        opts.client_timeouts_ms = Some((HEADER_TIMEOUT.as_millis() as u32, 75_000));
        opts.max_connections = Some(12_000);
    });
    let (primary, backup) = protected_primary(&lab);
    let load = verifying_load(&lab);
    load.wait_for_successes(0, 100, Duration::from_secs(5), "before the slow clients");

    let target = lab.target();
    let started = std::time::Instant::now();
    let opened = steadfast_lab::run_in_namespace(&lab.info.client_ns, || {
        let mut slow = Vec::with_capacity(SLOW);
        for i in 0..SLOW {
            let due = Duration::from_secs_f64(i as f64 / OPENED_PER_SECOND as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
            let mut stream = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("slow client {i} connects: {e}"));
            stream
                .write_all(b"GET /bytes/10 HTTP/1.1\r\nHost: vip\r\nX-Slow: a")
                .unwrap_or_else(|e| panic!("slow client {i} starts its head: {e}"));
            slow.push((stream, std::time::Instant::now()));
        }
        slow
    })
    .expect("enter the client namespace");
    let all_open = started.elapsed();
    // A byte more on each: trickling does not put the deadline off.
    for (stream, _) in &opened {
        let _ = (&*stream).write_all(b"b");
    }
    let open_now = lab.daemon_status(&primary)["data_plane"]["sessions_open"].as_u64();

    // Each is answered 408 and closed; read them as they end, and how long each lived.
    let mut answered_408 = 0usize;
    let mut lived: Vec<Duration> = Vec::with_capacity(SLOW);
    let mut pending: Vec<(std::net::TcpStream, std::time::Instant, Vec<u8>)> = opened
        .into_iter()
        .map(|(stream, opened_at)| {
            stream.set_nonblocking(true).expect("non-blocking");
            (stream, opened_at, Vec::new())
        })
        .collect();
    let deadline = all_open + HEADER_TIMEOUT + SLACK;
    let mut buf = [0u8; 4096];
    while !pending.is_empty() && started.elapsed() < deadline {
        pending.retain_mut(|(stream, opened_at, got)| loop {
            let ended = match stream.read(&mut buf) {
                Ok(0) => true,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
                Err(_) => true,
            };
            if ended {
                lived.push(opened_at.elapsed());
                if got.starts_with(b"HTTP/1.1 408 ") {
                    answered_408 += 1;
                }
            }
            return !ended;
        });
        std::thread::sleep(Duration::from_millis(20));
    }
    let all_closed = started.elapsed();
    let still_open = pending.len();
    drop(pending);
    let report = load.stop();
    let summary = report.summary();
    let plane = lab.daemon_status(&primary)["data_plane"].clone();
    let backup_plane = lab.daemon_status(&backup)["data_plane"].clone();
    let shortest = lived.iter().min().copied().unwrap_or_default();
    let longest = lived.iter().max().copied().unwrap_or_default();
    eprintln!(
        "{SLOW} slow heads open after {all_open:?} ({open_now:?} sessions open then); {answered_408} \
         answered 408, {still_open} still open at {all_closed:?}; each lived {shortest:?} to \
         {longest:?}; header timeouts counted {}; keep-alive requests {} failed of {}, new \
         connections {} failed of {} ({:?}); client frames the backup dropped: {} {}",
        plane["client_header_timeouts"],
        summary.request_failures,
        summary.requests,
        summary.probe_failures,
        summary.probes,
        summary.probe_errors,
        backup_plane["frames_dropped"],
        backup_plane["drop_reasons"],
    );
    assert_eq!(
        still_open,
        0,
        "every slow head is let go: {}",
        lab.situation()
    );
    assert_eq!(answered_408, SLOW, "each with a 408");
    // (A connection's time is taken just after its first bytes were written: a client thread
    // preempted there sees its connection a little older than the proxy does.)
    assert!(
        shortest + Duration::from_millis(100) >= HEADER_TIMEOUT
            && longest <= HEADER_TIMEOUT + SLACK,
        "each let go by the header timeout, not before: lived {shortest:?} to {longest:?}"
    );
    assert!(
        plane["client_header_timeouts"].as_u64() >= Some(SLOW as u64),
        "counted: {plane}"
    );
    assert_eq!(
        summary.request_failures, 0,
        "no request of an established connection fails: {:?}",
        summary.request_errors
    );
    // The issue asks for no client affected. 3 to 12 of about 1,220 new connections used to
    // miss their 500 ms: the backup's packet ring had 256 slots, and the 10,000 trickled bytes
    // above, sent at once, overflowed it (about 12,000 frames dropped, each resent by its
    // client a retransmission timeout later). With a slot per MTU-sized frame (16,384 slots):
    // 0 dropped, 0 failed in eight runs.
    assert_eq!(
        summary.probe_failures,
        0,
        "no new connection fails: {} of {} ({:?}); the backup dropped {} {}",
        summary.probe_failures,
        summary.probes,
        summary.probe_errors,
        backup_plane["frames_dropped"],
        backup_plane["drop_reasons"],
    );
}

/// Images of handshakes that never complete (spoofed SYNs) go once their lifetime is over (2 s
/// here, 64 s by default: the kernel's own SYN-RECV lifetime), each counted once, while the
/// real clients' connections, opened and used meanwhile, lose nothing.
#[test]
fn half_open_images_of_spoofed_syns_expire_builtin() {
    const SYNS: u32 = 2_000;
    const LIFETIME: Duration = Duration::from_secs(2);
    let lab = Lab::up_with("ho", 2, BackendKind::Builtin, |opts| {
        opts.mode = Mode::Duplex;
        opts.witness = true;
        opts.half_open_lifetime_ms = Some(LIFETIME.as_millis() as u32);
    });
    let (_primary, backup) = protected_primary(&lab);
    let load = verifying_load(&lab);
    load.wait_for_successes(0, 50, Duration::from_secs(5), "before the SYNs");
    let expired = || {
        lab.daemon_status(&backup)["data_plane"]["half_open_expired"]
            .as_u64()
            .unwrap_or(0)
    };
    let target = SocketAddrV4::new(steadfast_lab::topology::VIP, 80);
    let sent_at = std::time::Instant::now();
    let sent = spoofed_syns(&lab.info.client_ns, target, SYNS, false).expect("spoofed SYNs");
    assert_eq!(sent, u64::from(SYNS));
    std::thread::sleep(LIFETIME / 2);
    assert_eq!(expired(), 0, "none before its lifetime");
    let all_gone = common::wait_until(LIFETIME * 3, || expired() >= sent);
    let took = sent_at.elapsed();
    let report = load.stop();
    let summary = report.summary();
    eprintln!(
        "{sent} spoofed SYNs: {} half-open images expired {took:?} after they were sent; \
         keep-alive requests {} failed of {}, new connections {} failed of {}",
        expired(),
        summary.request_failures,
        summary.requests,
        summary.probe_failures,
        summary.probes
    );
    assert!(all_gone, "every spoofed SYN's image expired: {}", expired());
    assert_eq!(expired(), sent, "each once, and no real client's");
    assert_eq!(summary.request_failures, 0, "{:?}", summary.request_errors);
    assert_eq!(summary.probe_failures, 0, "{:?}", summary.probe_errors);
}

/// 20 verifying keep-alive clients (a request every 50 ms) and a new verified connection every
/// 10 ms (500 ms to answer), for at most a minute: the clients a hostile one must not disturb.
/// With nginx or apache2 they ask for the docroot's 1 KiB file.
fn verifying_load(lab: &Lab) -> BackgroundLoad {
    let builtin = lab.backend == BackendKind::Builtin;
    let probe = if builtin {
        ProbeOptions::default()
    } else {
        ProbeOptions {
            request: ProbeRequest::StaticFile {
                path: steadfast_lab::webservers::bytes_path(1024),
                len: 1024,
                seed: steadfast_lab::webservers::DOCROOT_SEED,
            },
            ..ProbeOptions::default()
        }
    };
    BackgroundLoad::start_with(
        lab,
        LoadOptions {
            target: lab.target(),
            duration: Duration::from_secs(60),
            probes: Some(probe),
            keep_alive: Some(KeepAliveOptions {
                connections: 20,
                sizes: vec![1024],
                include_uuid: false,
                fixed_seed: (!builtin).then_some(steadfast_lab::webservers::DOCROOT_SEED),
                pause: Duration::from_millis(50),
                ..KeepAliveOptions::default()
            }),
        },
    )
}

/// The primary of a two-node lab and its backup, once the backup has joined it.
fn protected_primary(lab: &Lab) -> (String, String) {
    let holders = lab.holders();
    assert_eq!(holders.len(), 1, "one primary: {}", lab.situation());
    let primary = holders[0].clone();
    let backup = if primary == "n1" { "n2" } else { "n1" }.to_string();
    let joined = common::wait_until(Duration::from_secs(10), || {
        lab.daemon_status(&primary)["data_plane"]["backups_joined"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    assert!(joined, "no backup joined {primary}: {}", lab.situation());
    (primary, backup)
}

/// A client that declares a 10 GB upload and sends as fast as it can: the server's limit
/// answers it (the builtin backend's 16 MiB, nginx's 1 MiB `client_max_body_size`: 413), the
/// proxy relays that answer at once and ends the connection, no byte of it stays held at the
/// backup, and the verifying clients meanwhile lose nothing. The upload is bounded (it stops
/// at the answer, or after 20 s, whichever comes first).
fn a_ten_gigabyte_upload_gets_the_servers_413_and_nothing_hangs(backend: BackendKind) {
    use std::io::{Read, Write};
    const DECLARED: u64 = 10 * 1024 * 1024 * 1024;
    const BOUND: Duration = Duration::from_secs(20);
    let lab = Lab::up_in_mode("up", 2, true, backend, None, Mode::Duplex);
    let (primary, backup) = protected_primary(&lab);
    let load = verifying_load(&lab);
    load.wait_for_successes(0, 100, Duration::from_secs(5), "before the upload");
    let target = lab.target();
    let (reply, sent, answered_after, ended_after) =
        steadfast_lab::run_in_namespace(&lab.info.client_ns, move || {
            let stream = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))
                .expect("the upload connects");
            let started = std::time::Instant::now();
            let mut writer = stream.try_clone().expect("a second handle");
            writer
                .set_write_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let stop = std::sync::Arc::new(AtomicBool::new(false));
            let stop_writing = stop.clone();
            let upload = std::thread::spawn(move || {
                let head = format!(
                    "POST /commit HTTP/1.1\r\nHost: vip\r\nContent-Length: {DECLARED}\r\n\r\n"
                );
                writer.write_all(head.as_bytes()).expect("the head");
                let chunk = vec![b'x'; 256 * 1024];
                let mut sent = 0u64;
                while !stop_writing.load(std::sync::atomic::Ordering::Relaxed)
                    && started.elapsed() < BOUND
                    && sent < DECLARED
                {
                    match writer.write(&chunk) {
                        Ok(n) => sent += n as u64,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                        // The server closed after its answer.
                        Err(_) => break,
                    }
                }
                sent
            });
            let mut reader = stream;
            reader.set_read_timeout(Some(BOUND)).unwrap();
            let mut reply = Vec::new();
            let mut buf = [0u8; 4096];
            let mut answered_after = None;
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        reply.extend_from_slice(&buf[..n]);
                        answered_after.get_or_insert(started.elapsed());
                    }
                    Err(_) => break,
                }
            }
            let ended_after = started.elapsed();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let sent = upload.join().expect("the upload thread");
            (reply, sent, answered_after, ended_after)
        })
        .expect("enter the client namespace");
    let report = load.stop();
    let summary = report.summary();
    let held = common::wait_until(Duration::from_secs(5), || {
        lab.daemon_status(&backup)["data_plane"]["held_request_bytes"].as_u64() == Some(0)
    });
    let head = String::from_utf8_lossy(&reply[..reply.len().min(200)]).into_owned();
    eprintln!(
        "{backend}: 10 GB upload declared, {sent} bytes sent; answered after {answered_after:?}, \
         connection ended after {ended_after:?}: {head:?}; verifying clients: {} of {} \
         requests failed, {} of {} new connections",
        summary.request_failures, summary.requests, summary.probe_failures, summary.probes
    );
    assert!(
        reply.starts_with(b"HTTP/1.1 413 "),
        "the server's 413 reaches the client: {head:?} ({})",
        lab.situation()
    );
    assert!(
        ended_after < BOUND,
        "the connection ends after the answer, it does not hang: {ended_after:?}"
    );
    assert!(sent < DECLARED, "the upload was cut short: {sent}");
    assert!(
        held,
        "no byte of the refused upload stays held at the backup: {}",
        lab.daemon_status(&backup)["data_plane"]
    );
    assert_eq!(summary.request_failures, 0, "{:?}", summary.request_errors);
    assert_eq!(summary.probe_failures, 0, "{:?}", summary.probe_errors);
    assert_eq!(lab.holders(), vec![primary]);
}

#[test]
fn a_ten_gigabyte_upload_gets_the_servers_413_and_nothing_hangs_builtin() {
    a_ten_gigabyte_upload_gets_the_servers_413_and_nothing_hangs(BackendKind::Builtin);
}

#[test]
#[ignore = "needs nginx: apt-get install nginx-light (.ci/run installs it)"]
fn a_ten_gigabyte_upload_gets_the_servers_413_and_nothing_hangs_nginx() {
    a_ten_gigabyte_upload_gets_the_servers_413_and_nothing_hangs(BackendKind::Nginx);
}
