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

use tokio::sync::{watch, Semaphore};

use crate::procstat;
use crate::proto::Target;
use crate::Common;

mod conn;
mod lat;
mod plan;
mod recv;
mod report;
mod schedule;
mod send;
mod tcp;
mod ws;

use conn::{conn_task, ConnResult, Phase};
use lat::LatRegistry;
use plan::{connection_specs, pace_targets, Nodes, Plan, SenderSpec, Spec};
pub use report::{print_table, FanoutReport};
use report::{Outcome, Window};
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

    let mut results = Vec::with_capacity(handles.len());
    for h in handles {
        results.push(h.await.map_err(|e| format!("task failed: {e}"))?);
    }
    let outcome = Outcome {
        results,
        node_hists: ctx.lat.per_node(),
        window: Window {
            start_ns,
            servers_before: srv0,
            servers_after: srv1,
            gen_cpu_s: cpu1 - cpu0,
            stalled,
        },
    };
    FanoutReport::new(common, args, &plan, &nodes.addrs, outcome)
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
