//! The `fanout` scenario: clients in rooms, some of them senders, every message delivered to
//! every member of its room (sender included); latency and loss per delivery.
//!
//! A run, as [`run`] composes it: the plan from the flags (`plan.rs`), one task per connection
//! owning its socket and both directions, over TCP or WebSocket (`conn.rs`, `tcp.rs`, `ws.rs`);
//! senders generate on a schedule within a window of unechoed messages (`send.rs`,
//! `schedule.rs`), receivers record every delivery's latency (`recv.rs`, `lat.rs`); the
//! readiness check and the measurement window (`measure.rs`); the report (`report.rs`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::proto::Target;
use crate::Common;

mod conn;
mod lat;
mod measure;
mod plan;
mod recv;
mod report;
mod schedule;
mod send;
mod tcp;
mod ws;

use conn::ConnResult;
use lat::LatRegistry;
use measure::Connections;
use plan::{connection_specs, pace_targets, Nodes, Plan, SenderSpec, Spec};
use report::Outcome;
pub use report::{print_table, FanoutReport};
use schedule::Schedule;

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

/// What every connection of a run shares: its settings, and the counters through which the
/// run follows the connections (atomics: the connections may be on several threads).
struct Ctx {
    target: Target,
    /// The servers: `--addr` first (the senders'), then the other `--reader-addr`s.
    nodes: Vec<SocketAddr>,
    /// Time zero of every timestamp of the run (ns since it): one clock for all connections.
    epoch: Instant,
    payload: usize,
    window: u64,
    schedule: Schedule,
    senders_per_room: usize,
    read_buf: usize,
    /// Connects at most this many at a time.
    connect_sem: Semaphore,
    /// Connections ready (connected, own marker seen).
    ready: AtomicUsize,
    /// Connections that failed.
    failed: AtomicUsize,
    /// Deliveries so far.
    received: AtomicU64,
    /// Senders done (schedule over, everything written).
    senders_done: AtomicUsize,
    /// Deliveries due for what the done senders sent.
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

    /// Now, ns since the epoch.
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// Runs the fanout scenario: plans it from the flags, starts every connection, waits until
/// all are ready, measures, and reports.
pub async fn run(common: &Common, args: &FanoutArgs) -> Result<FanoutReport, String> {
    let plan = Plan::new(args)?;
    let nodes = Nodes::resolve(common.addr, &args.reader_addr)?;
    let ctx = Arc::new(Ctx::new(common, args, &plan, &nodes));
    let specs = connection_specs(args, &plan, &nodes, common.target, common.src_addrs);
    let pace_targets = pace_targets(&specs);

    let mut conns = Connections::spawn(&ctx, specs);
    let ready_timeout = Duration::from_secs_f64(args.ready_timeout);
    conns.wait_ready(&ctx, ready_timeout).await?;
    let drain = Duration::from_secs_f64(args.drain_timeout);
    let pids = &common.server_pids;
    let window = conns
        .measure(&ctx, &plan, drain, pids, pace_targets)
        .await?;
    let outcome = Outcome {
        results: conns.join().await?,
        node_hists: ctx.lat.per_node(),
        window,
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
