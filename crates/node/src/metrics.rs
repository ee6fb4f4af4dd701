//! The optional Prometheus endpoint (`[metrics] listen`): `GET /metrics` answers the node's
//! status document (the one `steadfast status` shows) in the OpenMetrics text format.
//!
//! Every scrape takes a fresh status snapshot from the daemon's loop, the way `steadfast
//! status` does, and encodes it through prometheus-client's collector interface: nothing is
//! counted twice, and a counter added to the status appears here without a change. Names follow
//! Prometheus' conventions: a `steadfast_` prefix, counters ending in `_total`, durations in
//! seconds, booleans as 0/1 gauges, reasons and peers as labels.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use serde_json::Value;
use steadfast_core::http::{FramingLimits, RequestEvent, RequestFramer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::control::ControlRequest;
use crate::status::NodeStatus;

/// The content type of the OpenMetrics text format prometheus-client writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// A scraper that does not finish its request within this is let go.
const REQUEST_WAIT: Duration = Duration::from_secs(5);
const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// Data plane status fields that say how things stand now (gauges); every other number there
/// counts since the daemon started.
const DATA_PLANE_GAUGES: &[&str] = &[
    "protected_connections",
    "unprotected_now",
    "held_request_bytes",
    "request_bytes_budget",
    "held_reply_bytes",
    "max_connections",
    "sessions_open",
    "unadopted_now",
    "last_takeover_us",
    "last_restore_per_second",
    "join_protected_last_ms",
    "join_protected_max_ms",
];
const ACTIVE_GAUGES: &[&str] = &[
    "primary",
    "last_ordered",
    "stable",
    "sessions_open",
    "delivered",
    "last_rebuild_ms",
    "took_over_at",
];
const ROLES: &[&str] = &["backup", "candidate", "primary", "witness"];
/// The stage histograms' bucket bounds: every power of two from 4 µs to 2^23 µs (8.4 s).
pub const STAGE_BUCKETS_FROM: u32 = 2;
pub const STAGE_BUCKETS_TO: u32 = 23;

/// One stage's durations as a Prometheus histogram (prometheus-client has no constant one).
struct StageHistogram<'a>(&'a steadfast_core::latency::PowerOfTwoBuckets);

impl EncodeMetric for StageHistogram<'_> {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .0
            .buckets
            .iter()
            .map(|&(bound_us, n)| {
                let bound = if bound_us == u64::MAX {
                    f64::MAX
                } else {
                    bound_us as f64 / 1e6
                };
                (bound, n)
            })
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.0.sum_us as f64 / 1e6,
            count,
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

/// Binds the endpoint's listener (at start, so a bad address fails the start).
pub fn bind(address: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address)
        .with_context(|| format!("[metrics] listen = \"{address}\": cannot listen there"))?;
    listener
        .set_nonblocking(true)
        .context("metrics listener: non-blocking mode")?;
    Ok(listener)
}

/// Answers scrapes on `listener` until the daemon ends, asking the daemon's loop for a status
/// snapshot through `control` for each.
pub async fn serve(listener: std::net::TcpListener, control: mpsc::Sender<ControlRequest>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("metrics endpoint: {e}; no metrics are served");
            return;
        }
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("metrics endpoint: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let control = control.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, control).await {
                tracing::debug!("metrics scrape from {peer}: {e:#}");
            }
        });
    }
}

/// Reads one request and answers it; the connection closes after the reply.
async fn answer(
    mut stream: TcpStream,
    control: mpsc::Sender<ControlRequest>,
) -> anyhow::Result<()> {
    let target = tokio::time::timeout(REQUEST_WAIT, read_request_target(&mut stream))
        .await
        .context("no complete request head in time")??;
    let (status, content_type, body) = match target.as_deref() {
        Some("/metrics") => {
            let (reply, wait) = oneshot::channel();
            control
                .send(ControlRequest::Status(reply))
                .await
                .map_err(|_| anyhow::anyhow!("the daemon's loop has ended"))?;
            let snapshot = wait.await.context("the daemon's loop gave no status")?;
            ("200 OK", CONTENT_TYPE, render(&snapshot))
        }
        Some(_) => (
            "404 Not Found",
            "text/plain",
            "only /metrics is served here\n".to_string(),
        ),
        None => (
            "400 Bad Request",
            "text/plain",
            "a GET request was expected\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

/// The target of the first request on `stream` when it is a GET, framed by the proxy's own
/// request framer; `None` for any other method or a head that cannot be framed.
async fn read_request_target(stream: &mut TcpStream) -> anyhow::Result<Option<String>> {
    let mut framer = RequestFramer::new(FramingLimits::default());
    let mut events = Vec::new();
    let mut buf = [0u8; 4096];
    let mut read = 0;
    while read < MAX_REQUEST_BYTES {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            anyhow::bail!("the scraper closed before its request head ended");
        }
        read += n;
        if framer.feed(&buf[..n], &mut events).is_err() {
            return Ok(None);
        }
        if let Some(head) = events.iter().find_map(|event| match event {
            RequestEvent::Head(head) => Some(head),
            _ => None,
        }) {
            let path = head.target.split('?').next().unwrap_or_default();
            return Ok((head.method == "GET").then(|| path.to_string()));
        }
    }
    anyhow::bail!("a request head longer than {MAX_REQUEST_BYTES} bytes")
}

/// `status` in the OpenMetrics text format.
pub fn render(status: &NodeStatus) -> String {
    let mut registry = Registry::with_prefix("steadfast");
    registry.register_collector(Box::new(StatusCollector(status.clone())));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("encoding into a String cannot fail");
    text
}

#[derive(Debug)]
struct StatusCollector(NodeStatus);

impl Collector for StatusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let info = [
            ("group", s.group.clone()),
            ("node_id", s.node_id.to_string()),
        ];
        let mut metric =
            encoder.encode_descriptor("node", "This node and its group.", None, info_type())?;
        metric.encode_info(&info)?;
        let mut role = encoder.encode_descriptor(
            "role",
            "1 for the role this node has now (backup, candidate, primary, witness).",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for name in ROLES {
            let labels = [("role", *name)];
            ConstGauge::new(i64::from(s.role == *name)).encode(role.encode_family(&labels)?)?;
        }
        gauge(
            &mut encoder,
            "epoch",
            "The election epoch.",
            None,
            s.epoch as f64,
        )?;
        for (name, help, value) in [
            ("healthy", "The node's own health checks pass.", s.healthy),
            (
                "has_quorum",
                "The node sees a quorum of its group.",
                s.has_quorum,
            ),
            (
                "vip_held",
                "The node holds the service addresses.",
                s.vip_held,
            ),
            (
                "holds_connections",
                "The node carries open connections no other node could carry on.",
                s.holds_connections,
            ),
            (
                "standby",
                "The operator put the node in standby: it never serves.",
                s.standby,
            ),
        ] {
            gauge(&mut encoder, name, help, None, f64::from(u8::from(value)))?;
        }
        gauge(
            &mut encoder,
            "uptime",
            "Time since the daemon started.",
            Some(&Unit::Seconds),
            s.uptime_ms as f64 / 1e3,
        )?;
        gauge(
            &mut encoder,
            "resident_memory",
            "The daemon's resident memory.",
            Some(&Unit::Bytes),
            s.resident_bytes as f64,
        )?;
        encode_peers(&mut encoder, s)?;
        let counters = serde_json::to_value(&s.counters).map_err(|_| std::fmt::Error)?;
        encode_fields(&mut encoder, ("", "counters."), &counters, &[])?;
        if let Some(plane) = &s.data_plane {
            let mut value = serde_json::to_value(plane).map_err(|_| std::fmt::Error)?;
            if let Some(fields) = value.as_object_mut() {
                fields.remove("stages");
                fields.remove("active");
            }
            let names = ("data_plane_", "data_plane.");
            encode_fields(&mut encoder, names, &value, DATA_PLANE_GAUGES)?;
            encode_stages(&mut encoder, plane)?;
            if let Some(active) = &plane.active {
                let value = serde_json::to_value(active).map_err(|_| std::fmt::Error)?;
                let names = ("active_", "data_plane.active.");
                encode_fields(&mut encoder, names, &value, ACTIVE_GAUGES)?;
            }
        }
        Ok(())
    }
}

fn info_type() -> prometheus_client::metrics::MetricType {
    prometheus_client::metrics::MetricType::Info
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

fn encode_peers(
    encoder: &mut DescriptorEncoder<'_>,
    s: &NodeStatus,
) -> Result<(), std::fmt::Error> {
    type PeerValue = fn(&crate::status::PeerStatus) -> Option<f64>;
    let gauges: [(&str, &str, Option<&Unit>, PeerValue); 4] = [
        ("peer_alive", "The peer's heartbeats arrive.", None, |p| {
            Some(f64::from(u8::from(p.alive)))
        }),
        (
            "peer_healthy",
            "The peer says its health checks pass.",
            None,
            |p| Some(f64::from(u8::from(p.healthy))),
        ),
        (
            "peer_last_heard",
            "Time since the peer's last heartbeat.",
            Some(&Unit::Seconds),
            |p| p.last_heard_ms.map(|ms| ms as f64 / 1e3),
        ),
        (
            "peer_longest_heartbeat_gap",
            "The longest gap between two of the peer's heartbeats.",
            Some(&Unit::Seconds),
            |p| Some(p.longest_gap_ms as f64 / 1e3),
        ),
    ];
    for (name, help, unit, value) in gauges {
        let mut family =
            encoder.encode_descriptor(name, help, unit, ConstGauge::new(0.0).metric_type())?;
        for peer in &s.peers {
            if let Some(value) = value(peer) {
                let labels = [("peer", peer.id.to_string())];
                ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
    }
    let mut late = encoder.encode_descriptor(
        "peer_late_heartbeats",
        "The peer's heartbeats that came more than two intervals after the one before.",
        None,
        ConstCounter::new(0u64).metric_type(),
    )?;
    for peer in &s.peers {
        let labels = [("peer", peer.id.to_string())];
        ConstCounter::new(peer.late_heartbeats).encode(late.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Every number, boolean, list and table of numbers in `fields` (a status section as JSON),
/// named `prefix` + the field's name (`section` + it in the status document): a gauge when the field is in `gauges`, a counter
/// otherwise; a table of numbers is one family labelled by its keys; a list is a gauge of its
/// length. Fields in milliseconds or microseconds are given in seconds.
fn encode_fields(
    encoder: &mut DescriptorEncoder<'_>,
    (prefix, section): (&str, &str),
    fields: &Value,
    gauges: &[&str],
) -> Result<(), std::fmt::Error> {
    let Some(fields) = fields.as_object() else {
        return Ok(());
    };
    for (field, value) in fields {
        let (base, scale, unit) = if let Some(base) = field.strip_suffix("_ms") {
            (base, 1e-3, Some(Unit::Seconds))
        } else if let Some(base) = field.strip_suffix("_us") {
            (base, 1e-6, Some(Unit::Seconds))
        } else {
            (field.as_str(), 1.0, None)
        };
        let name = format!("{prefix}{base}");
        let help = format!("`steadfast status --json`: {section}{field}.");
        let is_gauge = gauges.contains(&field.as_str());
        match value {
            Value::Bool(flag) => {
                gauge(encoder, &name, &help, None, f64::from(u8::from(*flag)))?;
            }
            Value::Number(number) => {
                let Some(number) = number.as_f64() else {
                    continue;
                };
                if is_gauge {
                    gauge(encoder, &name, &help, unit.as_ref(), number * scale)?;
                } else if scale == 1.0 {
                    let counter = ConstCounter::new(number as u64);
                    counter.encode(encoder.encode_descriptor(
                        &name,
                        &help,
                        None,
                        counter.metric_type(),
                    )?)?;
                } else {
                    let counter = ConstCounter::new(number * scale);
                    counter.encode(encoder.encode_descriptor(
                        &name,
                        &help,
                        unit.as_ref(),
                        counter.metric_type(),
                    )?)?;
                }
            }
            Value::Object(table) if table.values().all(Value::is_number) => {
                let label = if field.starts_with("reads_by") {
                    "replica"
                } else {
                    "reason"
                };
                let mut family = encoder.encode_descriptor(
                    &name,
                    &help,
                    None,
                    ConstCounter::new(0u64).metric_type(),
                )?;
                for (key, count) in table {
                    let labels = [(label, key.as_str())];
                    let count = count.as_u64().unwrap_or_default();
                    ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
                }
            }
            // A list of node ids (replicas linked, serving): how many now.
            Value::Array(entries) => {
                let help = format!("How many in `steadfast status --json`: {section}{field}.");
                gauge(encoder, &name, &help, None, entries.len() as f64)?;
            }
            // Text (the mode, divergence reasons) is in `steadfast status`.
            _ => {}
        }
    }
    Ok(())
}

/// The proxy's and the planes' stage latencies: how many, and the quantiles `steadfast status`
/// shows, by stage.
fn encode_stages(
    encoder: &mut DescriptorEncoder<'_>,
    plane: &crate::status::DataPlaneStatus,
) -> Result<(), std::fmt::Error> {
    let mut count = encoder.encode_descriptor(
        "stage_durations",
        "Durations measured of each data plane stage.",
        None,
        ConstCounter::new(0u64).metric_type(),
    )?;
    for (stage, latency) in &plane.stages {
        let labels = [("stage", stage.as_str())];
        ConstCounter::new(latency.count).encode(count.encode_family(&labels)?)?;
    }
    let mut quantiles = encoder.encode_descriptor(
        "stage_latency",
        "Each data plane stage's duration at a quantile (upper edge of a log-linear bucket, \
         at most 1/8 above the exact value), and its mean.",
        Some(&Unit::Seconds),
        ConstGauge::new(0.0).metric_type(),
    )?;
    for (stage, latency) in &plane.stages {
        for (quantile, micros) in [
            ("0.5", latency.p50_us),
            ("0.9", latency.p90_us),
            ("0.99", latency.p99_us),
            ("1", latency.max_us),
            ("mean", latency.mean_us),
        ] {
            let labels = [("stage", stage.as_str()), ("quantile", quantile)];
            ConstGauge::new(micros as f64 / 1e6).encode(quantiles.encode_family(&labels)?)?;
        }
    }
    let mut histograms = encoder.encode_descriptor(
        "stage_duration",
        "Durations of each data plane stage, by power-of-two buckets.",
        Some(&Unit::Seconds),
        prometheus_client::metrics::MetricType::Histogram,
    )?;
    for (stage, latency) in &plane.stages {
        let labels = [("stage", stage.as_str())];
        StageHistogram(&latency.histogram).encode(histograms.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The value of the metric sample `sample` (name and labels as written, e.g.
/// `steadfast_role{role="primary"}`) in `text`, for tests and the lab.
pub fn sample_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(sample)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Counters, DataPlaneStatus, PeerStatus, StageLatency};
    use std::fmt::Write as _;

    fn status() -> NodeStatus {
        let mut plane = DataPlaneStatus {
            mode: "duplex".into(),
            takeovers: 2,
            sessions_open: 7,
            last_takeover_us: 1_500,
            unprotected_ms: 2_000,
            ..Default::default()
        };
        plane.lost_reasons.insert("not logged".into(), 3);
        let histogram = steadfast_core::latency::LatencyHistogram::new();
        for us in [3, 20, 30, 30, 40, 40, 50, 60, 90, 100] {
            histogram.record_us(us);
        }
        plane.stages.insert(
            "backup_hold".into(),
            StageLatency {
                count: 10,
                mean_us: 46,
                p50_us: 30,
                p90_us: 60,
                p99_us: 90,
                max_us: 100,
                histogram: histogram.power_of_two_buckets(STAGE_BUCKETS_FROM, STAGE_BUCKETS_TO),
            },
        );
        NodeStatus {
            node_id: 2,
            group: "web".into(),
            role: "primary".into(),
            epoch: 9,
            healthy: true,
            uptime_ms: 12_000,
            peers: vec![PeerStatus {
                id: 1,
                alive: false,
                last_heard_ms: Some(250),
                late_heartbeats: 4,
                ..Default::default()
            }],
            counters: Counters {
                role_changes: 3,
                ..Default::default()
            },
            data_plane: Some(plane),
            ..Default::default()
        }
    }

    #[test]
    fn status_fields_become_samples_named_by_prometheus_conventions() {
        let text = render(&status());
        let value = |sample: &str| sample_value(&text, sample);
        assert_eq!(
            value("steadfast_role{role=\"primary\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value("steadfast_role{role=\"backup\"}"),
            Some(0.0),
            "{text}"
        );
        assert_eq!(value("steadfast_epoch"), Some(9.0), "{text}");
        assert_eq!(value("steadfast_role_changes_total"), Some(3.0), "{text}");
        assert_eq!(
            value("steadfast_data_plane_takeovers_total"),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            value("steadfast_data_plane_sessions_open"),
            Some(7.0),
            "{text}"
        );
        assert_eq!(
            value("steadfast_data_plane_last_takeover_seconds"),
            Some(0.0015),
            "{text}"
        );
        assert_eq!(
            value("steadfast_data_plane_unprotected_seconds_total"),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            value("steadfast_data_plane_lost_reasons_total{reason=\"not logged\"}"),
            Some(3.0),
            "{text}"
        );
        assert_eq!(
            value("steadfast_peer_alive{peer=\"1\"}"),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            value("steadfast_peer_last_heard_seconds{peer=\"1\"}"),
            Some(0.25),
            "{text}"
        );
        assert_eq!(
            value("steadfast_stage_latency_seconds{stage=\"backup_hold\",quantile=\"0.99\"}"),
            Some(0.00009),
            "{text}"
        );
        // The histogram: cumulative counts at each power of two, in seconds.
        for (le, below) in [
            ("0.000004", 1.0),
            ("0.000016", 1.0),
            ("0.000032", 4.0),
            ("0.000064", 8.0),
            ("0.000128", 10.0),
            ("+Inf", 10.0),
        ] {
            assert_eq!(
                value(&format!(
                    "steadfast_stage_duration_seconds_bucket{{le=\"{le}\",stage=\"backup_hold\"}}"
                )),
                Some(below),
                "le {le}: {text}"
            );
        }
        assert_eq!(
            value("steadfast_stage_duration_seconds_count{stage=\"backup_hold\"}"),
            Some(10.0),
            "{text}"
        );
        assert_eq!(
            value("steadfast_stage_duration_seconds_sum{stage=\"backup_hold\"}"),
            Some(0.000463),
            "{text}"
        );
        assert_eq!(value("steadfast_uptime_seconds"), Some(12.0), "{text}");
        assert!(
            text.contains("steadfast_node_info{group=\"web\",node_id=\"2\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn every_metric_has_one_type_and_help_line() {
        let text = render(&status());
        let mut seen = std::collections::BTreeSet::new();
        let mut names = String::new();
        for line in text.lines().filter(|line| line.starts_with("# TYPE ")) {
            let name = line.split_whitespace().nth(2).expect("a name");
            let _ = writeln!(names, "{name}");
            assert!(
                seen.insert(name.to_string()),
                "{name} declared twice:\n{text}"
            );
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no help:\n{text}"
            );
        }
        assert!(seen.len() > 60, "{names}");
    }
}
