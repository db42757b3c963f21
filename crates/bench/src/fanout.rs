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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    use super::*;
    use crate::fanout::testing::args;

    type Rooms = Arc<Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Vec<u8>>>>>>;

    /// Just enough of machat over TCP: a `{"name":..,"room":..}` handshake, then every line a
    /// client sends goes to every member of its room (the sender too) as `name:line`.
    async fn toy_machat() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let rooms = Rooms::default();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(toy_client(sock, rooms.clone()));
            }
        });
        addr
    }

    async fn toy_client(sock: TcpStream, rooms: Rooms) {
        let (rd, mut wr) = sock.into_split();
        let mut rd = BufReader::new(rd);
        let mut handshake = Vec::new();
        rd.read_until(b'}', &mut handshake).await.unwrap();
        let hs: serde_json::Value = serde_json::from_slice(&handshake).unwrap();
        let (name, room) = (hs["name"].as_str().unwrap(), hs["room"].as_str().unwrap());
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        rooms
            .lock()
            .unwrap()
            .entry(room.into())
            .or_default()
            .push(tx);
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                if wr.write_all(&line).await.is_err() {
                    break;
                }
            }
        });
        let mut line = Vec::new();
        while rd.read_until(b'\n', &mut line).await.unwrap_or(0) > 0 {
            let mut out = format!("{name}:").into_bytes();
            out.extend_from_slice(&line);
            for member in &rooms.lock().unwrap()[room] {
                let _ = member.send(out.clone());
            }
            line.clear();
        }
    }

    fn common(addr: SocketAddr) -> Common {
        Common {
            target: Target::Machat,
            addr,
            server_pids: Vec::new(),
            threads: 1,
            label: Some("toy".into()),
            src_addrs: 0,
        }
    }

    #[tokio::test]
    async fn a_run_as_fast_as_possible_delivers_everything() {
        let addr = toy_machat().await;
        let flags = [
            "--clients",
            "6",
            "--rooms",
            "2",
            "--senders",
            "2",
            "--messages",
            "300",
        ];
        let r = run(&common(addr), &args(&flags)).await.unwrap();
        assert_eq!(
            (r.connections, r.sent, r.expected),
            (6, 4 * 300, 4 * 300 * 3)
        );
        assert_eq!((r.received, r.lost, r.latency_samples), (3600, 0, 3600));
        assert_eq!((r.out_of_order, r.foreign, r.disconnects), (0, 0, 0));
        assert!(!r.stalled && r.first_error.is_none());
        assert!(r.delivered_per_s > 0.0 && r.offered_per_s > 0.0);
        assert_eq!(r.label.as_deref(), Some("toy"));
    }

    #[tokio::test]
    async fn a_paced_run_sends_on_schedule() {
        let addr = toy_machat().await;
        // 2 senders, 2,000 msgs/s in total, 0.2 s: 200 each.
        let flags = [
            "--clients",
            "4",
            "--senders",
            "2",
            "--rate",
            "2000",
            "--duration",
            "0.2",
        ];
        let r = run(&common(addr), &args(&flags)).await.unwrap();
        assert_eq!(
            (r.sent, r.expected, r.received, r.lost),
            (400, 1600, 1600, 0)
        );
        assert!(r.send_secs > 0.19 && r.send_secs < 1.0, "{}", r.send_secs);
        assert_eq!(r.duration_s, Some(0.2));
        assert!(!r.stalled);
    }
}
