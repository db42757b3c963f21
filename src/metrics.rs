//! What the server counts, for `GET /metrics` (Prometheus text format, rendered by
//! `metrics-exporter-prometheus`).
//!
//! Counters on the hot path (messages, deliveries, bytes written) are handles resolved once and
//! kept in statics, so counting costs one atomic add, not a registry lookup. Before the recorder
//! is installed (unit tests, or a server without the web side) every handle is a no-op.

use std::sync::LazyLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// How a client is connected, the label of the per-transport metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The line protocol over TCP (plain text or JSON lines).
    Tcp,
    /// The line protocol inside TLS (`--tls-addr`).
    Tls,
    WebSocket,
    /// An HTTP connection to the web side (before any WebSocket upgrade).
    Http,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::WebSocket => "websocket",
            Transport::Http => "http",
        }
    }
}

const CONNECTIONS: &str = "machat_connections";
const BYTES_OUT: &str = "machat_bytes_out_total";
const STORE_APPEND: &str = "machat_store_append_seconds";

static OPEN_TCP: LazyLock<Gauge> = LazyLock::new(|| gauge!(CONNECTIONS, "transport" => "tcp"));
static OPEN_TLS: LazyLock<Gauge> = LazyLock::new(|| gauge!(CONNECTIONS, "transport" => "tls"));
static OUT_TLS: LazyLock<Counter> = LazyLock::new(|| counter!(BYTES_OUT, "transport" => "tls"));
static OPEN_WS: LazyLock<Gauge> = LazyLock::new(|| gauge!(CONNECTIONS, "transport" => "websocket"));
static OUT_TCP: LazyLock<Counter> = LazyLock::new(|| counter!(BYTES_OUT, "transport" => "tcp"));
static OPEN_HTTP: LazyLock<Gauge> = LazyLock::new(|| gauge!(CONNECTIONS, "transport" => "http"));
static OUT_WS: LazyLock<Counter> =
    LazyLock::new(|| counter!(BYTES_OUT, "transport" => "websocket"));
static RECEIVED: LazyLock<Counter> = LazyLock::new(|| counter!("machat_messages_received_total"));
static DELIVERED: LazyLock<Counter> = LazyLock::new(|| counter!("machat_messages_delivered_total"));
static SLOW: LazyLock<Counter> =
    LazyLock::new(|| counter!("machat_slow_consumer_disconnects_total"));
static APPEND: LazyLock<Histogram> = LazyLock::new(|| histogram!(STORE_APPEND));

/// Installs the process-wide recorder. Returns None if one is installed already.
pub fn install() -> Option<PrometheusHandle> {
    // Store appends take from microseconds (memory) to a group commit's tens of milliseconds.
    let buckets = [
        0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    ];
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(STORE_APPEND.into()), &buckets)
        .ok()?;
    let handle = builder.install_recorder().ok()?;
    describe();
    Some(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(CONNECTIONS, "Open client connections, by transport.");
    describe_gauge!("machat_rooms", "Rooms with at least one member.");
    describe_counter!(
        "machat_messages_received_total",
        "Messages accepted from clients (after the rate limit)."
    );
    describe_counter!(
        "machat_messages_delivered_total",
        "Room events queued to members: one per member per event."
    );
    describe_counter!(
        BYTES_OUT,
        Unit::Bytes,
        "Bytes written to clients, by transport."
    );
    describe_counter!(
        "machat_slow_consumer_disconnects_total",
        "Clients cut off for falling more than --max-pending behind."
    );
    describe_counter!(
        "machat_handshakes_rejected_total",
        "Connections refused at the handshake, by reason."
    );
    describe_histogram!(
        STORE_APPEND,
        Unit::Seconds,
        "Time from a message's append to its commit in the history store."
    );
}

/// Counts an open connection until dropped.
#[derive(Debug)]
pub struct OpenConnection(Transport);

impl OpenConnection {
    pub fn new(transport: Transport) -> Self {
        open_gauge(transport).increment(1.0);
        OpenConnection(transport)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        open_gauge(self.0).decrement(1.0);
    }
}

fn open_gauge(transport: Transport) -> &'static Gauge {
    match transport {
        Transport::Tcp => &OPEN_TCP,
        Transport::Tls => &OPEN_TLS,
        Transport::WebSocket => &OPEN_WS,
        Transport::Http => &OPEN_HTTP,
    }
}

pub fn bytes_out(transport: Transport, n: usize) {
    let counter = match transport {
        Transport::Tcp => &OUT_TCP,
        Transport::Tls => &OUT_TLS,
        // HTTP answers are not counted; WebSocket frames are.
        Transport::WebSocket | Transport::Http => &OUT_WS,
    };
    counter.increment(n as u64);
}

pub fn message_received() {
    RECEIVED.increment(1);
}

pub fn delivered(n: usize) {
    DELIVERED.increment(n as u64);
}

pub fn slow_consumer() {
    SLOW.increment(1);
}

pub fn store_append(latency: Duration) {
    APPEND.record(latency.as_secs_f64());
}

pub fn rooms(n: usize) {
    gauge!("machat_rooms").set(n as f64);
}

/// A refused handshake, by a reason from a short fixed list (a label must not take values from
/// clients, or every bad handshake would make a new time series).
pub fn handshake_rejected(reason: &'static str) {
    counter!("machat_handshakes_rejected_total", "reason" => reason).increment(1);
}

/// The reason label for a refusal text (see `handshake_rejected`).
pub fn rejection_reason(text: &str) -> &'static str {
    const KNOWN: &[(&str, &str)] = &[
        ("handshake timeout", "timeout"),
        ("handshake too large", "too_large"),
        ("invalid handshake JSON", "invalid_json"),
        ("is already taken", "name_taken"),
        ("server full", "server_full"),
        ("too many connections from", "per_ip_limit"),
        ("authentication", "auth"),
        ("is registered: send its password", "auth"),
        ("failed logins", "auth_rate_limited"),
        ("is full", "room_full"),
        ("too many rooms", "too_many_rooms"),
        ("cluster is unavailable", "cluster_unavailable"),
    ];
    KNOWN
        .iter()
        .find(|(needle, _)| text.contains(needle))
        .map_or("invalid_handshake", |(_, label)| label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_reasons_come_from_a_fixed_list() {
        assert_eq!(rejection_reason("handshake timeout"), "timeout");
        assert_eq!(
            rejection_reason("name Mina is already taken in room r"),
            "name_taken"
        );
        assert_eq!(
            rejection_reason("name must not be empty"),
            "invalid_handshake"
        );
    }
}
