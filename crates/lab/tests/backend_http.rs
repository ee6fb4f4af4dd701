//! The builtin backend on 127.0.0.1, driven over real TCP connections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use steadfast_lab::backend::{verify_uuid_body, Backend, BackendConfig, CommitRecord};
use steadfast_lab::generator::expected_bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Every socket wait in these tests is bounded by this, so a broken server fails the test
/// instead of hanging it.
const IO_BOUND: Duration = Duration::from_secs(10);

/// A data tier file removed when the test ends, even on panic.
struct TempFile(PathBuf);

impl TempFile {
    fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        Self(std::env::temp_dir().join(format!(
            "steadfast-backend-test-{}-{}.log",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Running {
    addr: SocketAddr,
    data_tier: TempFile,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(node_name: &str) -> Running {
    let data_tier = TempFile::new();
    let backend = Backend::bind(BackendConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        node_name: node_name.to_string(),
        data_tier: data_tier.0.clone(),
    })
    .await
    .expect("backend binds an ephemeral loopback port");
    let addr = backend.local_addr();
    let task = tokio::spawn(async move {
        backend.run().await.expect("backend runs");
    });
    Running {
        addr,
        data_tier,
        task,
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Splits a byte stream into replies; `head_only[i]` says reply `i` answers a HEAD request (a
/// Content-Length but no body). Replies without Content-Length are 1xx.
fn split_replies(mut bytes: &[u8], head_only: &[bool]) -> Vec<Reply> {
    let mut replies = Vec::new();
    let mut final_index = 0;
    while !bytes.is_empty() {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut fields);
        let head_len = match response.parse(bytes).expect("valid reply head") {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => panic!("truncated reply head in {bytes:?}"),
        };
        let status = response.code.unwrap();
        let headers: Vec<(String, String)> = response
            .headers
            .iter()
            .map(|f| {
                (
                    f.name.to_string(),
                    String::from_utf8_lossy(f.value).into_owned(),
                )
            })
            .collect();
        let mut body_len = 0;
        if status >= 200 {
            let length: usize = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .expect("every final reply has Content-Length")
                .1
                .parse()
                .unwrap();
            if !head_only.get(final_index).copied().unwrap_or(false) {
                body_len = length;
            }
            final_index += 1;
        }
        assert!(bytes.len() >= head_len + body_len, "truncated reply body");
        replies.push(Reply {
            status,
            headers,
            body: bytes[head_len..head_len + body_len].to_vec(),
        });
        bytes = &bytes[head_len + body_len..];
    }
    replies
}

/// Sends `request` on a new connection and reads until the server closes it.
async fn exchange_until_close(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(IO_BOUND, stream.read_to_end(&mut received))
        .await
        .expect("server closes the connection")
        .unwrap();
    received
}

async fn one(addr: SocketAddr, request: &str) -> Reply {
    let bytes = exchange_until_close(addr, request.as_bytes()).await;
    let mut replies = split_replies(&bytes, &[request.starts_with("HEAD")]);
    assert_eq!(replies.len(), 1, "one reply to {request:?}");
    replies.remove(0)
}

fn data_tier_records(running: &Running) -> Vec<CommitRecord> {
    std::fs::read_to_string(&running.data_tier.0)
        .unwrap()
        .lines()
        .map(|line| CommitRecord::parse_line(line).expect("every data tier line is well formed"))
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn health_answers_ok_with_the_node_name() {
    let backend = start("n1").await;
    let reply = one(
        backend.addr,
        "GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, b"ok\n");
    assert_eq!(reply.header("Steadfast-Node"), Some("n1"));
    assert_eq!(reply.header("Connection"), Some("close"));
}

#[tokio::test]
async fn bytes_follow_the_generator_and_head_sends_no_body() {
    let backend = start("n1").await;
    for (len, seed) in [(0u64, 0u64), (1, 5), (1000, 42), (3 * 1024 * 1024 + 7, 9)] {
        let reply = one(
            backend.addr,
            &format!("GET /bytes/{len}?seed={seed} HTTP/1.1\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(reply.status, 200);
        assert!(
            reply.body == expected_bytes(len, seed),
            "len {len} seed {seed}"
        );
    }
    let missing_seed = one(backend.addr, "GET /bytes/16 HTTP/1.0\r\n\r\n").await;
    assert_eq!(missing_seed.body, expected_bytes(16, 0));
    let head = one(
        backend.addr,
        "HEAD /bytes/5000?seed=1 HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(head.header("Content-Length"), Some("5000"));
    assert!(head.body.is_empty());
}

#[tokio::test]
async fn uuid_is_fresh_and_self_checking() {
    let backend = start("n1").await;
    let request = "GET /uuid HTTP/1.1\r\nConnection: close\r\n\r\n";
    let first = one(backend.addr, request).await;
    let second = one(backend.addr, request).await;
    assert!(verify_uuid_body(&first.body));
    assert!(verify_uuid_body(&second.body));
    assert_ne!(first.body, second.body);
}

#[tokio::test]
async fn slow_waits_then_answers_seed_zero_bytes() {
    let backend = start("n1").await;
    let begun = std::time::Instant::now();
    let reply = one(
        backend.addr,
        "GET /slow?ms=50&bytes=2000 HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(begun.elapsed() >= Duration::from_millis(50));
    assert_eq!(reply.body, expected_bytes(2000, 0));
    let too_slow = one(
        backend.addr,
        "GET /slow?ms=60001 HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(too_slow.status, 400);
}

#[tokio::test]
async fn commit_appends_one_line_per_request_with_the_right_id() {
    let backend = start("n2").await;
    let with_steadfast = one(
        backend.addr,
        "POST /commit HTTP/1.1\r\nSteadfast-Request-Id: sf-1\r\nX-Request-Id: x-1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(with_steadfast.status, 200);
    assert_eq!(
        String::from_utf8(with_steadfast.body.clone()).unwrap(),
        format!("sf-1 n2 {}\n", sha256_hex(b"hello"))
    );
    assert_eq!(with_steadfast.header("Steadfast-Request-Id"), Some("sf-1"));
    let with_x = one(
        backend.addr,
        "POST /commit HTTP/1.1\r\nX-Request-Id: x-2\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(String::from_utf8(with_x.body)
        .unwrap()
        .starts_with("x-2 n2 "));
    let generated = one(
        backend.addr,
        "POST /commit HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    let generated_id = generated
        .header("Steadfast-Request-Id")
        .unwrap()
        .to_string();
    assert!(generated_id.starts_with("gen-"));

    let records = data_tier_records(&backend);
    let ids: Vec<_> = records.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids, ["sf-1", "x-2", generated_id.as_str()]);
    assert!(records.iter().all(|r| r.node == "n2"));
    assert_eq!(records[1].body_sha256, sha256_hex(b""));

    let bad_id = one(
        backend.addr,
        "POST /commit HTTP/1.1\r\nSteadfast-Request-Id: has space\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(bad_id.status, 400);
    assert_eq!(data_tier_records(&backend).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_from_two_backends_never_interleave() {
    let first = start("n1").await;
    // A second backend appending to the same file, as the lab's nodes do.
    let second_backend = Backend::bind(BackendConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        node_name: "n2".into(),
        data_tier: first.data_tier.0.clone(),
    })
    .await
    .unwrap();
    let second_addr = second_backend.local_addr();
    let second_task = tokio::spawn(async move { second_backend.run().await.unwrap() });

    let mut clients = Vec::new();
    for client in 0..8 {
        let addr = if client % 2 == 0 {
            first.addr
        } else {
            second_addr
        };
        clients.push(tokio::spawn(async move {
            let mut request = Vec::new();
            for sequence in 0..25 {
                let body = format!("{client}-{sequence}").repeat(50);
                request.extend_from_slice(
                    format!(
                        "POST /commit HTTP/1.1\r\nSteadfast-Request-Id: c{client}-{sequence}\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
            request.extend_from_slice(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n");
            let replies = split_replies(&exchange_until_close(addr, &request).await, &[]);
            assert_eq!(replies.len(), 26);
            assert!(replies.iter().all(|r| r.status == 200));
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    second_task.abort();
    let records = data_tier_records(&first);
    assert_eq!(records.len(), 8 * 25);
    for record in &records {
        let client: usize = record.request_id[1..]
            .split('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let expected_node = ["n1", "n2"][client % 2];
        assert_eq!(record.node, expected_node, "{record:?}");
    }
}

#[tokio::test]
async fn pipelined_requests_in_one_write_are_answered_in_order() {
    let backend = start("n1").await;
    let request = b"GET /bytes/10?seed=1 HTTP/1.1\r\n\r\n\
POST /commit HTTP/1.1\r\nSteadfast-Request-Id: p-1\r\nContent-Length: 3\r\n\r\nabc\
HEAD /uuid HTTP/1.1\r\n\r\n\
GET /nope HTTP/1.1\r\n\r\n\
GET /health HTTP/1.1\r\nConnection: close\r\n\r\n";
    let replies = split_replies(
        &exchange_until_close(backend.addr, request).await,
        &[false, false, true, false, false],
    );
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 404, 200]);
    assert_eq!(replies[0].body, expected_bytes(10, 1));
    assert!(replies[1].body.starts_with(b"p-1 n1 "));
    assert!(replies[2].body.is_empty());
    assert_eq!(replies[4].body, b"ok\n");
    assert!(replies
        .iter()
        .all(|r| r.header("Steadfast-Node") == Some("n1")));
}

#[tokio::test]
async fn keep_alive_serves_sequential_requests_on_one_connection() {
    let backend = start("n1").await;
    let mut stream = TcpStream::connect(backend.addr).await.unwrap();
    for seed in 0..5u64 {
        stream
            .write_all(format!("GET /bytes/300?seed={seed} HTTP/1.1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut received = Vec::new();
        let mut piece = [0u8; 4096];
        // Reads until the whole reply (head + 300 bytes) is in; bounded by IO_BOUND per read.
        loop {
            let count = tokio::time::timeout(IO_BOUND, stream.read(&mut piece))
                .await
                .unwrap()
                .unwrap();
            assert!(count > 0, "connection stays open between requests");
            received.extend_from_slice(&piece[..count]);
            let mut fields = [httparse::EMPTY_HEADER; 16];
            let mut response = httparse::Response::new(&mut fields);
            if let Ok(httparse::Status::Complete(head_len)) = response.parse(&received) {
                if received.len() >= head_len + 300 {
                    assert_eq!(&received[head_len..], &expected_bytes(300, seed)[..]);
                    break;
                }
            }
        }
    }
}

#[tokio::test]
async fn chunked_upload_is_decoded_before_hashing() {
    let backend = start("n1").await;
    let reply = one(
        backend.addr,
        "POST /commit HTTP/1.1\r\nSteadfast-Request-Id: ch-1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6;note=x\r\n world\r\n0\r\nTrailer-Field: 1\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 200);
    let records = data_tier_records(&backend);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].body_sha256, sha256_hex(b"hello world"));
}

#[tokio::test]
async fn expect_continue_gets_100_before_the_body_is_sent() {
    let backend = start("n1").await;
    let mut stream = TcpStream::connect(backend.addr).await.unwrap();
    stream
        .write_all(b"POST /commit HTTP/1.1\r\nSteadfast-Request-Id: e-1\r\nExpect: 100-continue\r\nContent-Length: 4\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut received = vec![0u8; interim.len()];
    tokio::time::timeout(IO_BOUND, stream.read_exact(&mut received))
        .await
        .expect("100 Continue arrives without the body")
        .unwrap();
    assert_eq!(received, interim);
    stream.write_all(b"data").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(IO_BOUND, stream.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let replies = split_replies(&rest, &[]);
    assert_eq!(replies[0].status, 200);
    assert_eq!(
        data_tier_records(&backend)[0].body_sha256,
        sha256_hex(b"data")
    );
}

#[tokio::test]
async fn malformed_requests_get_an_error_and_others_keep_being_served() {
    let backend = start("n1").await;
    // An idle keep-alive connection opened before the bad request must survive it.
    let mut survivor = TcpStream::connect(backend.addr).await.unwrap();

    let cases: [(&[u8], u16); 6] = [
        (b"\x00\x01garbage\r\n\r\n", 400),
        (b"GET /health HTTP/9.9\r\n\r\n", 400),
        (b"GET health HTTP/1.1\r\n\r\n", 400),
        (
            b"POST /commit HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (
            b"POST /commit HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
        ),
        (
            b"POST /commit HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n",
            413,
        ),
    ];
    for (request, status) in cases {
        let bytes = exchange_until_close(backend.addr, request).await;
        let replies = split_replies(&bytes, &[]);
        assert_eq!(replies.len(), 1, "{request:?}");
        assert_eq!(replies[0].status, status, "{request:?}");
        assert_eq!(replies[0].header("Connection"), Some("close"));
        assert_eq!(replies[0].header("Steadfast-Node"), Some("n1"));
    }
    let mut huge_head = b"GET /health HTTP/1.1\r\nX-Filler: ".to_vec();
    huge_head.extend(std::iter::repeat_n(b'a', 70 * 1024));
    let replies = split_replies(&exchange_until_close(backend.addr, &huge_head).await, &[]);
    assert_eq!(replies[0].status, 431);

    survivor
        .write_all(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(IO_BOUND, survivor.read_to_end(&mut received))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(split_replies(&received, &[])[0].body, b"ok\n");
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_keep_the_connection() {
    let backend = start("n1").await;
    let request = b"GET /missing HTTP/1.1\r\n\r\n\
POST /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n\
GET /commit HTTP/1.1\r\n\r\n\
GET /bytes/x HTTP/1.1\r\n\r\n\
GET /bytes/67108865 HTTP/1.1\r\n\r\n\
GET /bytes/1?seed=-1 HTTP/1.1\r\n\r\n\
GET /health HTTP/1.1\r\nConnection: close\r\n\r\n";
    let replies = split_replies(&exchange_until_close(backend.addr, request).await, &[]);
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [404, 405, 405, 400, 400, 400, 200]);
    assert_eq!(replies[1].header("Allow"), Some("GET, HEAD"));
    assert_eq!(replies[2].header("Allow"), Some("POST"));
}

#[tokio::test]
async fn invalid_node_names_and_unwritable_data_tiers_are_refused() {
    let data_tier = TempFile::new();
    let refused = Backend::bind(BackendConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        node_name: "two words".into(),
        data_tier: data_tier.0.clone(),
    })
    .await;
    assert!(refused.is_err());
    let unwritable = Backend::bind(BackendConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        node_name: "n1".into(),
        data_tier: PathBuf::from("/nonexistent-steadfast-dir/data.log"),
    })
    .await;
    let message = unwritable
        .err()
        .expect("missing directory is an error")
        .to_string();
    assert!(
        message.contains("/nonexistent-steadfast-dir/data.log"),
        "{message}"
    );
}

#[tokio::test]
async fn http10_keeps_the_connection_only_when_asked() {
    let backend = start("n1").await;
    let request =
        b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /health HTTP/1.0\r\n\r\n";
    let replies = split_replies(&exchange_until_close(backend.addr, request).await, &[]);
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[0].header("Connection"), Some("keep-alive"));
    assert_eq!(replies[1].header("Connection"), Some("close"));
}

/// `/bytes` carries a strong validator and serves byte ranges, the way a static file server
/// does, so the proxy's resume of a reply cut by a failover (I2) can be tested against it.
#[tokio::test]
async fn bytes_serve_ranges_guarded_by_a_strong_etag() {
    let backend = start("n1").await;
    let (len, seed) = (10_000u64, 3u64);
    let whole = expected_bytes(len, seed);
    let get = |range: &str| {
        format!("GET /bytes/{len}?seed={seed} HTTP/1.1\r\n{range}Connection: close\r\n\r\n")
    };
    let full = one(backend.addr, &get("")).await;
    let etag = full.header("ETag").expect("an ETag").to_string();
    assert!(etag.starts_with('"'), "strong: {etag}");
    assert_eq!(full.header("Accept-Ranges"), Some("bytes"));

    for (range, first, last) in [
        ("bytes=100-", 100u64, len - 1),
        ("bytes=100-199", 100, 199),
        ("bytes=-10", len - 10, len - 1),
        ("bytes=9990-20000", 9990, len - 1),
    ] {
        let reply = one(backend.addr, &get(&format!("Range: {range}\r\n"))).await;
        assert_eq!(reply.status, 206, "{range}");
        let content_range = format!("bytes {first}-{last}/{len}");
        assert_eq!(reply.header("Content-Range"), Some(content_range.as_str()));
        assert_eq!(reply.header("ETag"), Some(etag.as_str()));
        assert!(
            reply.body == whole[first as usize..=last as usize],
            "{range}"
        );
    }
    // If-Range with the current validator keeps the range; with another one, all of it.
    let guarded = one(
        backend.addr,
        &get(&format!("Range: bytes=5000-\r\nIf-Range: {etag}\r\n")),
    )
    .await;
    assert_eq!(guarded.status, 206);
    let changed = one(
        backend.addr,
        &get("Range: bytes=5000-\r\nIf-Range: \"other\"\r\n"),
    )
    .await;
    assert_eq!(changed.status, 200);
    assert!(changed.body == whole);
    let beyond = one(backend.addr, &get("Range: bytes=10000-\r\n")).await;
    assert_eq!(beyond.status, 416);
    assert_eq!(beyond.header("Content-Range"), Some("bytes */10000"));
    // Several ranges or another unit: ignored, the whole representation.
    for ignored in ["bytes=0-1,5-6", "items=0-1", "bytes=9-2"] {
        let reply = one(backend.addr, &get(&format!("Range: {ignored}\r\n"))).await;
        assert_eq!(reply.status, 200, "{ignored}");
        assert!(reply.body == whole);
    }
}
