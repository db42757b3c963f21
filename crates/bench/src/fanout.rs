//! The `fanout` scenario: clients in rooms, some of them senders, every message delivered to
//! every member of its room (sender included); latency and loss per delivery.
//!
//! Each connection is one task that owns its socket and both directions (`conn.rs`, over TCP
//! or WebSocket); senders generate on a schedule within a window of unechoed messages
//! (`send.rs`, `schedule.rs`), receivers record every delivery's latency (`recv.rs`, `lat.rs`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::{watch, Semaphore};

use crate::procstat;
use crate::proto::Target;
use crate::Common;

mod conn;
mod lat;
mod plan;
mod recv;
mod schedule;
mod send;
mod tcp;
mod ws;

use conn::{conn_task, ConnResult, Phase};
use lat::{add_hist, new_hist, LatRegistry};
use plan::{connection_specs, pace_targets, Nodes, Plan, SenderSpec, Spec};
use schedule::{Pacer, Schedule};

#[derive(clap::Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Clients in total, spread round-robin over the rooms.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Number of rooms.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Senders per room (the first clients of each room).
    #[arg(long, default_value_t = 1)]
    pub senders: usize,
    /// Total messages per second over all senders (0 = as fast as the sockets take it).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Sending time in seconds (default 10 when --messages is not given).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Messages per sender.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Each measured message text is padded with `x` to at least this many bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Seconds to wait for outstanding deliveries after the last send.
    #[arg(long, default_value_t = 5.0)]
    pub drain_timeout: f64,
    /// Most of a sender's own messages in flight (written, own echo not yet seen).
    #[arg(long, default_value_t = 100)]
    pub window: u64,
    /// Seconds allowed for connecting and the readiness check.
    #[arg(long, default_value_t = 60.0)]
    pub ready_timeout: f64,
    /// Bytes per read. One buffer per generator thread, shared by its connections (so it stays
    /// in the cache); a connection keeps only its incomplete last frame.
    #[arg(long, default_value_t = 64 * 1024)]
    pub read_buf: usize,
    /// Connect the readers (members that do not send) here instead of to --addr; repeat it to
    /// spread them over several servers, e.g. the nodes of a machat cluster sharing the rooms.
    /// Senders stay on --addr. Readers go round-robin over these addresses within each room,
    /// so every room has readers on each; latency and loss are then also reported per address
    /// (`nodes`), and for the addresses other than --addr together (`cross_node`).
    #[arg(long = "reader-addr", value_name = "ADDR")]
    pub reader_addr: Vec<String>,
}

struct Ctx {
    target: Target,
    /// The servers: `--addr` first (the senders'), then the other `--reader-addr`s.
    nodes: Vec<SocketAddr>,
    epoch: Instant,
    payload: usize,
    window: u64,
    schedule: Schedule,
    senders_per_room: usize,
    read_buf: usize,
    connect_sem: Semaphore,
    ready: AtomicUsize,
    failed: AtomicUsize,
    received: AtomicU64,
    senders_done: AtomicUsize,
    expected: AtomicU64,
    room_members: Vec<u64>,
    /// End-to-end latency of every delivery, us: one aggregate per generator thread, and in it
    /// one per node (the connection's server), so cross-node latency can be told apart.
    lat: LatRegistry,
}

impl Ctx {
    fn new(common: &Common, args: &FanoutArgs, plan: &Plan, nodes: &Nodes) -> Ctx {
        Ctx {
            target: common.target,
            nodes: nodes.addrs.clone(),
            epoch: Instant::now(),
            payload: args.payload,
            window: args.window,
            schedule: plan.schedule,
            senders_per_room: args.senders,
            read_buf: args.read_buf.max(1024),
            connect_sem: Semaphore::new(256),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            received: AtomicU64::new(0),
            senders_done: AtomicUsize::new(0),
            expected: AtomicU64::new(0),
            room_members: plan.room_members.clone(),
            lat: LatRegistry::new(nodes.addrs.len()),
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// The result of one fanout run (one JSON line).
#[derive(serde::Serialize, Debug)]
pub struct FanoutReport {
    pub scenario: &'static str,
    pub label: Option<String>,
    pub target: Target,
    pub addr: String,
    pub clients: usize,
    pub rooms: usize,
    pub senders_per_room: usize,
    pub rate: f64,
    pub messages_per_sender: Option<u64>,
    pub duration_s: Option<f64>,
    pub payload: usize,
    pub window: u64,
    pub threads: usize,
    pub connections: usize,
    pub sent: u64,
    pub send_secs: f64,
    pub offered_per_s: f64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub out_of_order: u64,
    pub foreign: u64,
    pub elapsed_secs: f64,
    pub delivered_per_s: f64,
    /// Deliveries whose latency is in the percentiles (all measured ones: equals `received`).
    pub latency_samples: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
    pub send_lag_p50_us: u64,
    pub send_lag_p99_us: u64,
    pub send_lag_max_us: u64,
    pub server_peak_rss_kib: Option<u64>,
    pub server_rss_kib: Option<u64>,
    pub server_cpu_s: Option<f64>,
    pub gen_cpu_s: f64,
    pub disconnects: usize,
    pub first_error: Option<String>,
    pub stalled: bool,
    /// The readers' addresses (`--reader-addr`), when given.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reader_addrs: Vec<String>,
    /// Per server when connections went to more than one (`--reader-addr`): node 0 is
    /// `--addr`, the senders' server.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeReport>,
    /// The deliveries read from servers other than the senders': the cross-node latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_node: Option<Latency>,
    /// Each server process, when several `--server-pid`s were given (in their order); the
    /// `server_*` figures above are then their sums.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<ServerReport>,
}

/// Latency percentiles of a set of deliveries, us.
#[derive(serde::Serialize, Debug)]
pub struct Latency {
    pub deliveries: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            deliveries: h.len(),
            p50_us: crate::quantile(h, 0.5),
            p99_us: crate::quantile(h, 0.99),
            p999_us: crate::quantile(h, 0.999),
            max_us: if h.is_empty() { 0 } else { h.max() },
            mean_us: if h.is_empty() { 0.0 } else { h.mean() },
        }
    }
}

/// What the members connected to one server received.
#[derive(serde::Serialize, Debug)]
pub struct NodeReport {
    pub addr: String,
    /// Member connections to this server (senders included).
    pub members: usize,
    pub senders: usize,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub latency: Latency,
}

/// One server process's figures over the measurement.
#[derive(serde::Serialize, Debug)]
pub struct ServerReport {
    pub pid: u32,
    pub peak_rss_kib: u64,
    pub rss_kib: u64,
    pub cpu_s: f64,
}

pub async fn run(common: &Common, args: &FanoutArgs) -> Result<FanoutReport, String> {
    let plan = Plan::new(args)?;
    let nodes = Nodes::resolve(common.addr, &args.reader_addr)?;
    let ctx = Arc::new(Ctx::new(common, args, &plan, &nodes));
    let specs = connection_specs(args, &plan, &nodes, common.target, common.src_addrs);
    let pace_targets = pace_targets(&specs);
    let connections = specs.len();

    let (phase_tx, phase_rx) = watch::channel(Phase::Ready);
    let handles: Vec<_> = specs
        .into_iter()
        .map(|s| tokio::spawn(conn_task(ctx.clone(), s, phase_rx.clone())))
        .collect();
    drop(phase_rx);

    // Readiness: every connection connected, every member saw its own marker (or, for Redis,
    // its subscribe confirmation).
    let ready_deadline = Instant::now() + Duration::from_secs_f64(args.ready_timeout);
    loop {
        let ready = ctx.ready.load(Relaxed);
        if ready == connections {
            break;
        }
        let failed = ctx.failed.load(Relaxed);
        if failed > 0 || Instant::now() > ready_deadline {
            let _ = phase_tx.send(Phase::Stop);
            let mut first = None;
            for h in handles {
                if let Ok(r) = h.await {
                    if first.is_none() {
                        first = r.error;
                    }
                }
            }
            return Err(format!(
                "readiness failed: {ready}/{connections} ready, {failed} failed{}",
                first
                    .map(|e| format!(" (first error: {e})"))
                    .unwrap_or_default()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Measure.
    let srv0 = procstat::sample_all(&common.server_pids)?;
    let cpu0 = procstat::self_cpu_s();
    let start_ns = ctx.now_ns();
    let _ = phase_tx.send(Phase::Run { start_ns });
    let pacer_stop = Arc::new(AtomicBool::new(false));
    let pacer = Pacer {
        epoch: ctx.epoch,
        start_ns,
        schedule: ctx.schedule,
        targets: pace_targets,
        stop: pacer_stop.clone(),
    }
    .spawn();
    let drain = Duration::from_secs_f64(args.drain_timeout);
    let mut sends_done_at: Option<Instant> = None;
    let mut last_progress = (0u64, Instant::now());
    let mut stalled = false;
    let stall_after =
        drain.max(Duration::from_secs(1)) + Duration::from_nanos(plan.schedule.interval_ns * 2);
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = Instant::now();
        let received = ctx.received.load(Relaxed);
        if received != last_progress.0 {
            last_progress = (received, now);
        }
        if ctx.senders_done.load(Relaxed) == plan.total_senders {
            let t = *sends_done_at.get_or_insert(now);
            if received >= ctx.expected.load(Relaxed) || now - t > drain {
                break;
            }
        } else if ctx.failed.load(Relaxed) == connections || now - last_progress.1 > stall_after {
            // Senders cannot finish (window blocked) and nothing arrives: the server stalled.
            stalled = true;
            break;
        }
    }
    let srv1 = procstat::sample_all(&common.server_pids)?;
    let cpu1 = procstat::self_cpu_s();
    let _ = phase_tx.send(Phase::Stop);
    pacer_stop.store(true, Relaxed);
    if let Some(p) = pacer {
        let _ = p.join();
    }

    let mut lag = new_hist();
    let mut sent = 0;
    let mut expected = 0;
    let mut received = 0;
    let mut out_of_order = 0;
    let mut foreign = 0;
    let mut last_delivery = start_ns;
    let mut last_send = start_ns;
    let mut disconnects = 0;
    let mut first_error: Option<String> = None;
    let mut results = Vec::with_capacity(handles.len());
    for h in handles {
        results.push(h.await.map_err(|e| format!("task failed: {e}"))?);
    }
    // What each room's senders got out: every member of the room should receive all of it.
    let mut room_sent = vec![0u64; args.rooms];
    for r in results.iter().filter(|r| r.is_sender) {
        room_sent[r.room] += r.sent - r.unsent;
    }
    let mut node_reports: Vec<NodeReport> = nodes
        .addrs
        .iter()
        .map(|n| NodeReport {
            addr: n.to_string(),
            members: 0,
            senders: 0,
            expected: 0,
            received: 0,
            lost: 0,
            latency: Latency::of(&new_hist()),
        })
        .collect();
    for r in &results {
        if let Some(n) = node_reports.get_mut(r.node) {
            if r.member {
                n.members += 1;
                n.expected += room_sent[r.room];
                n.received += r.received;
            }
            // Redis: the sender's publishing connection (not a member) counts.
            n.senders += usize::from(r.is_sender);
        }
    }
    for r in results {
        if let Some(hh) = &r.lag {
            add_hist(&mut lag, hh)?;
        }
        if r.error.is_some() || !r.server_errors.is_empty() {
            if r.error.is_some() {
                disconnects += 1;
            }
            if first_error.is_none() {
                first_error = r.error.clone().or_else(|| r.server_errors.first().cloned());
            }
        }
        if r.is_sender {
            let delivered_sent = r.sent - r.unsent;
            sent += delivered_sent;
            expected += delivered_sent * ctx.room_members[r.room];
            last_send = last_send.max(r.last_send_ns);
        }
        received += r.received;
        out_of_order += r.out_of_order;
        foreign += r.foreign;
        if r.member && r.received > 0 {
            last_delivery = last_delivery.max(r.last_delivery_ns);
        }
    }
    let node_hists = ctx.lat.per_node();
    let mut hist = new_hist();
    let mut cross = new_hist();
    for (i, h) in node_hists.iter().enumerate() {
        add_hist(&mut hist, h)?;
        if i > 0 {
            add_hist(&mut cross, h)?;
        }
    }
    let multi_node = nodes.addrs.len() > 1;
    for (n, h) in node_reports.iter_mut().zip(&node_hists) {
        n.lost = n.expected.saturating_sub(n.received);
        n.latency = Latency::of(h);
    }
    let (srv0, srv1, servers) = (
        procstat::total(&srv0),
        procstat::total(&srv1),
        if srv1.len() > 1 {
            common
                .server_pids
                .iter()
                .zip(srv0.iter().zip(&srv1))
                .map(|(&pid, (a, b))| ServerReport {
                    pid,
                    peak_rss_kib: b.hwm_kib,
                    rss_kib: b.rss_kib,
                    cpu_s: b.cpu_s - a.cpu_s,
                })
                .collect()
        } else {
            Vec::new()
        },
    );
    let send_secs = (last_send - start_ns) as f64 / 1e9;
    let elapsed_secs = (last_delivery - start_ns) as f64 / 1e9;
    let per_s = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    let q = |p: f64| crate::quantile(&hist, p);
    Ok(FanoutReport {
        scenario: "fanout",
        label: common.label.clone(),
        target: common.target,
        addr: common.addr.to_string(),
        clients: args.clients,
        rooms: args.rooms,
        senders_per_room: args.senders,
        rate: args.rate,
        messages_per_sender: args.messages,
        duration_s: plan.duration_s,
        payload: args.payload,
        window: args.window,
        threads: common.threads,
        connections,
        sent,
        send_secs,
        offered_per_s: per_s(sent, send_secs),
        expected,
        received,
        lost: expected.saturating_sub(received),
        out_of_order,
        foreign,
        elapsed_secs,
        delivered_per_s: per_s(received, elapsed_secs),
        latency_samples: hist.len(),
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: if hist.is_empty() { 0 } else { hist.max() },
        mean_us: if hist.is_empty() { 0.0 } else { hist.mean() },
        send_lag_p50_us: if lag.is_empty() {
            0
        } else {
            lag.value_at_quantile(0.5)
        },
        send_lag_p99_us: if lag.is_empty() {
            0
        } else {
            lag.value_at_quantile(0.99)
        },
        send_lag_max_us: if lag.is_empty() { 0 } else { lag.max() },
        server_peak_rss_kib: srv1.map(|s| s.hwm_kib),
        server_rss_kib: srv1.map(|s| s.rss_kib),
        server_cpu_s: match (srv0, srv1) {
            (Some(a), Some(b)) => Some(b.cpu_s - a.cpu_s),
            _ => None,
        },
        gen_cpu_s: cpu1 - cpu0,
        disconnects,
        first_error,
        stalled,
        reader_addrs: args.reader_addr.clone(),
        nodes: if multi_node { node_reports } else { Vec::new() },
        cross_node: multi_node.then(|| Latency::of(&cross)),
        servers,
    })
}

fn opt<T: std::fmt::Display>(v: Option<T>, unit: &str) -> String {
    v.map(|v| format!("{v}{unit}"))
        .unwrap_or_else(|| "-".into())
}

pub fn print_table(r: &FanoutReport) {
    println!(
        "fanout  target={}  addr={}{}",
        r.target.name(),
        r.addr,
        r.label
            .as_ref()
            .map(|l| format!("  label={l}"))
            .unwrap_or_default()
    );
    println!(
        "  setup        {} clients, {} rooms, {} senders/room, rate {} msg/s, payload {} B, window {}, {} connections, {} generator thread(s)",
        r.clients,
        r.rooms,
        r.senders_per_room,
        if r.rate > 0.0 { format!("{}", r.rate) } else { "max".into() },
        r.payload,
        r.window,
        r.connections,
        r.threads
    );
    println!(
        "  sent         {} msgs in {:.3} s ({:.0} msgs/s offered)",
        r.sent, r.send_secs, r.offered_per_s
    );
    println!(
        "  deliveries   expected {}  received {}  lost {}  out-of-order {}  foreign {}",
        r.expected, r.received, r.lost, r.out_of_order, r.foreign
    );
    println!(
        "  delivered    {:.0} msgs/s over {:.3} s",
        r.delivered_per_s, r.elapsed_secs
    );
    println!(
        "  latency us   p50 {}  p99 {}  p99.9 {}  max {}  mean {:.0}  ({} deliveries)",
        r.p50_us, r.p99_us, r.p999_us, r.max_us, r.mean_us, r.latency_samples
    );
    println!(
        "  server       peak RSS {}  RSS {}  CPU {}",
        opt(r.server_peak_rss_kib, " KiB"),
        opt(r.server_rss_kib, " KiB"),
        opt(r.server_cpu_s.map(|c| format!("{c:.2}")), " s")
    );
    println!(
        "  generator    CPU {:.2} s; send lag behind schedule us: p50 {}  p99 {}  max {}",
        r.gen_cpu_s, r.send_lag_p50_us, r.send_lag_p99_us, r.send_lag_max_us
    );
    for (i, n) in r.nodes.iter().enumerate() {
        println!(
            "  node {i}       {} ({}): {} members ({} senders), expected {}  received {}  lost {}; latency us p50 {}  p99 {}  p99.9 {}  max {}",
            n.addr,
            if i == 0 { "senders' node" } else { "readers only" },
            n.members,
            n.senders,
            n.expected,
            n.received,
            n.lost,
            n.latency.p50_us,
            n.latency.p99_us,
            n.latency.p999_us,
            n.latency.max_us
        );
    }
    if let Some(c) = &r.cross_node {
        println!(
            "  cross-node   latency us p50 {}  p99 {}  p99.9 {}  max {}  mean {:.0}  ({} deliveries)",
            c.p50_us, c.p99_us, c.p999_us, c.max_us, c.mean_us, c.deliveries
        );
    }
    for s in &r.servers {
        println!(
            "  process {}  peak RSS {} KiB  RSS {} KiB  CPU {:.2} s",
            s.pid, s.peak_rss_kib, s.rss_kib, s.cpu_s
        );
    }
    if r.disconnects > 0 || r.first_error.is_some() || r.stalled {
        println!(
            "  problems     disconnects {}  stalled {}  first error: {}",
            r.disconnects,
            r.stalled,
            r.first_error.as_deref().unwrap_or("-")
        );
    }
}

/// What the modules' unit tests need to build: a run's context and a connection's spec.
#[cfg(test)]
mod testing {
    use super::*;
    use crate::proto;

    /// A context for `target` with one node, `room_members[r]` members in room `r` and one
    /// sender per room; its epoch is a second ago, so that `now_ns` is never 0.
    pub(super) fn test_ctx(
        target: Target,
        schedule: Schedule,
        window: u64,
        room_members: Vec<u64>,
    ) -> Ctx {
        Ctx {
            target,
            nodes: vec![SocketAddr::from(([127, 0, 0, 1], 1))],
            epoch: Instant::now() - Duration::from_secs(1),
            payload: 64,
            window,
            schedule,
            senders_per_room: 1,
            read_buf: 1024,
            connect_sem: Semaphore::new(1),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            received: AtomicU64::new(0),
            senders_done: AtomicUsize::new(0),
            expected: AtomicU64::new(0),
            room_members,
            lat: LatRegistry::new(1),
        }
    }

    /// The fanout flags, parsed as on the command line (`flags` after `fanout`).
    pub(super) fn args(flags: &[&str]) -> FanoutArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            fanout: FanoutArgs,
        }
        let argv = std::iter::once("fanout").chain(flags.iter().copied());
        match <Cli as clap::Parser>::try_parse_from(argv) {
            Ok(cli) => cli.fanout,
            Err(e) => panic!("{flags:?}: {e}"),
        }
    }

    /// The member connection of client 0 of `room`, on node 0, neither sender nor echo.
    pub(super) fn test_spec(room: usize) -> Spec {
        Spec {
            client: 0,
            node: 0,
            name: proto::client_name(0),
            room,
            room_name: proto::room_name(room),
            src: None,
            member: true,
            own_echo: None,
            sender: None,
        }
    }
}
