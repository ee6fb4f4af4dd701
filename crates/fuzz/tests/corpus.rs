//! Every `cargo test` is a short fuzz run: each target replays its committed corpus
//! (`fuzz/corpus/TARGET`, grown by libFuzzer through `fuzz/run`), then runs inputs mutated from
//! it by a fixed-seed generator, so a failure here replays exactly. Coverage guidance, and the
//! long runs, are libFuzzer's (see the README).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// Mutated inputs per target: about a second each in a release build.
const MUTATIONS: usize = 20_000;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus of {target} at {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a corpus entry").path();
            let bytes =
                std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            (path, bytes)
        })
        .collect();
    inputs.sort();
    inputs.into_iter().map(|(_, bytes)| bytes).collect()
}

/// xorshift64: the mutations need to differ, not to be unpredictable.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A few of libFuzzer's own mutations: flip a bit, set a byte to a boundary value, insert or
/// erase a run, copy a run within the input, splice in another input's tail.
fn mutate(input: &[u8], other: &[u8], random: &mut Random) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=random.below(4) {
        let at = random.below(out.len() + 1);
        match random.below(6) {
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << random.below(8);
            }
            1 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] = [0, 1, 0x7f, 0x80, 0xff, b'\r', b'\n', b'0'][random.below(8)];
            }
            2 => {
                let run: Vec<u8> = (0..random.below(16)).map(|_| random.next() as u8).collect();
                out.splice(at..at, run);
            }
            3 => {
                let end = (at + random.below(16)).min(out.len());
                out.drain(at..end);
            }
            4 if !out.is_empty() => {
                let from = random.below(out.len());
                let end = (from + random.below(32)).min(out.len());
                let run = out[from..end].to_vec();
                out.splice(at..at, run);
            }
            _ => {
                out.truncate(at);
                out.extend_from_slice(&other[random.below(other.len() + 1)..]);
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn run_target(name: &str, target: fn(&[u8])) {
    let inputs = corpus(name);
    assert!(!inputs.is_empty(), "{name} has a committed corpus");
    let run = |input: &[u8], what: &str| {
        if catch_unwind(AssertUnwindSafe(|| target(input))).is_err() {
            panic!("{name} failed on {what}: {}", hex(input));
        }
    };
    for input in &inputs {
        run(input, "a corpus input");
    }
    let mut random = Random(0x5eed_f00d_u64 ^ name.len() as u64);
    for _ in 0..MUTATIONS {
        let input = &inputs[random.below(inputs.len())];
        let other = &inputs[random.below(inputs.len())];
        run(&mutate(input, other, &mut random), "a mutated input");
    }
}

#[test]
fn every_target_has_a_corpus_directory() {
    for (name, _) in steadfast_fuzz::TARGETS {
        assert!(!corpus(name).is_empty(), "fuzz/corpus/{name}");
    }
}

#[test]
fn relay_frames() {
    run_target("relay_frame", steadfast_fuzz::relay_frame);
}

#[test]
fn active_links() {
    run_target("active_link", steadfast_fuzz::active_link);
}

#[test]
fn reply_progresses() {
    run_target("reply_progress", steadfast_fuzz::reply_progress);
}

#[test]
fn resp_streams() {
    run_target("resp_stream", steadfast_fuzz::resp_stream);
}

#[test]
fn heartbeat_frames() {
    run_target("heartbeat_frame", steadfast_fuzz::heartbeat_frame);
}

#[test]
fn replication_streams() {
    run_target("replication_stream", steadfast_fuzz::replication_stream);
}

#[test]
fn http_requests() {
    run_target("http_requests", steadfast_fuzz::http_requests);
}

#[test]
fn http_replies() {
    run_target("http_replies", steadfast_fuzz::http_replies);
}

#[test]
fn http_fields() {
    run_target("http_fields", steadfast_fuzz::http_fields);
}

#[test]
fn client_frames() {
    run_target("client_frames", steadfast_fuzz::client_frames);
}

#[test]
fn config_files() {
    run_target("config", steadfast_fuzz::config);
}
