//! What sealing the replication stream costs per frame: seal and open of one reply frame of
//! each size, encrypted and authenticated only, on one core. A measurement, not a check: a
//! bench target, which no test tier runs.
//!
//!   cargo bench -p steadfast-core --bench seal_bench
//!
//! SF_SEAL_BENCH_MIB sets how many MiB each figure seals (default 256).

use std::time::Instant;

use steadfast_core::heartbeat_wire::AuthKey;
use steadfast_core::image::FourTuple;
use steadfast_core::replication_seal::{self, LinkEnd, Protection};
use steadfast_core::replication_wire::{encode_reply, FrameReader, LinkAttempt, ReplyHeader};

fn end(node: u16, nonce: u8) -> LinkEnd {
    LinkEnd {
        node,
        nonce: [nonce; 16],
        attempt: LinkAttempt {
            incarnation: u64::from(nonce),
            number: 1,
        },
    }
}

fn main() {
    let mib: usize = std::env::var("SF_SEAL_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let key = AuthKey::new(b"a group key of thirty-two bytes!").unwrap();
    let header = ReplyHeader {
        seq: 1,
        tuple: FourTuple {
            client: "10.0.0.1:40000".parse().unwrap(),
            server: "10.0.0.2:80".parse().unwrap(),
        },
        request_index: 0,
        reply_offset: 0,
        request_end: Some(100),
        closes_after: false,
    };
    println!("| frame body | protection | seal GB/s | open + decode GB/s | seal µs/frame | open + decode µs/frame |");
    println!("|---:|---|---:|---:|---:|---:|");
    for size in [1024usize, 64 * 1024, 1024 * 1024, 4 * 1024 * 1024] {
        let body = vec![0x5au8; size];
        let frames = (mib << 20) / size;
        for protection in [Protection::Encrypted, Protection::Authenticated] {
            let (primary, backup) = (end(1, 1), end(2, 2));
            let (mut sealer, _) = replication_seal::channel(&key, protection, &primary, &backup);
            let (_, opener) = replication_seal::channel(&key, protection, &backup, &primary);
            let mut reader = FrameReader::new();
            reader.open_with(opener);
            let mut sealed = Vec::with_capacity(size + 128);
            let (mut seal_ns, mut open_ns) = (0u128, 0u128);
            for _ in 0..frames {
                sealed.clear();
                encode_reply(&header, &body, 1, &mut sealed);
                let started = Instant::now();
                sealer.seal(&mut sealed, 0).unwrap();
                seal_ns += started.elapsed().as_nanos();
                reader.push(&sealed);
                let started = Instant::now();
                let frame = reader.next_frame().unwrap().expect("a whole frame");
                open_ns += started.elapsed().as_nanos();
                std::hint::black_box(frame);
            }
            let bytes = (frames * size) as f64;
            println!(
                "| {} KiB | {} | {:.2} | {:.2} | {:.1} | {:.1} |",
                size / 1024,
                protection.label(),
                bytes / seal_ns as f64,
                bytes / open_ns as f64,
                seal_ns as f64 / frames as f64 / 1e3,
                open_ns as f64 / frames as f64 / 1e3,
            );
        }
    }
}
