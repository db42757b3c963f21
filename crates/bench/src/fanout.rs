//! The `fanout` scenario: clients in rooms, some of them senders, every message delivered to
//! every member of its room (sender included); latency and loss per delivery.
//!
//! Each connection is one task that owns its socket and both directions (`readable`/`writable`
//! with `try_read`/`try_write`), so a sender sees its own echoes without any locking. For Redis a
//! subscribed connection cannot publish, so each sender has a second, publishing connection;
//! its member connection reports the echo progress through an atomic and a `Notify`.
//!
//! Flow control: a sender never has more than `--window` of its own messages written but not yet
//! seen echoed back on its member connection. "As fast as possible" thus measures delivery, not
//! the growth of a queue in the kernel or the server.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::tcp::ReadHalf;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify, Semaphore};

use crate::net;
use crate::procstat;
use crate::proto::{self, Event, Target, Text};
use crate::Common;

mod lat;
mod schedule;
mod ws;

use lat::{add_hist, lock, new_hist, node_lat, with_thread_state, LatAgg, LatRegistry};
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Ready,
    Run { start_ns: u64 },
    Stop,
}

struct EchoShared {
    echoed: AtomicU64,
    notify: Notify,
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
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

struct SenderSpec {
    sid: u64,
    /// Offset of this sender's schedule within one interval (staggering).
    offset_ns: u64,
    shared: Arc<EchoShared>,
    /// True when the echo comes from another task (Redis publisher connection).
    wait_notify: bool,
}

struct Spec {
    client: usize,
    /// Index of the server (in `Ctx::nodes`) this connection goes to.
    node: usize,
    name: String,
    room: usize,
    room_name: String,
    src: Option<Ipv4Addr>,
    /// Member connection (subscribes and receives).
    member: bool,
    /// Sender id whose echo this member reports, and where.
    own_echo: Option<(u64, Arc<EchoShared>, bool)>,
    sender: Option<SenderSpec>,
}

#[derive(Default)]
struct ConnResult {
    member: bool,
    room: usize,
    node: usize,
    lag: Option<Histogram<u64>>,
    received: u64,
    out_of_order: u64,
    foreign: u64,
    last_delivery_ns: u64,
    is_sender: bool,
    sent: u64,
    unsent: u64,
    last_send_ns: u64,
    error: Option<String>,
    server_errors: Vec<String>,
}

/// What the sender's generator did.
enum Fill {
    /// Nothing to send before this time (ns since epoch).
    At(u64),
    /// The window is full: wait for echoes.
    Blocked,
    /// The output batch is full: write, then fill again.
    Full,
    /// All messages generated.
    Done,
}

const BATCH: usize = 64 * 1024;

struct SendState {
    spec: SenderSpec,
    next_seq: u64,
    done_gen: bool,
    announced: bool,
    /// Absolute output-byte offsets where each not yet fully written message ends.
    ends: VecDeque<u64>,
    text: Vec<u8>,
    last_send_ns: u64,
    /// How late (us) each message was generated relative to its schedule (rate > 0).
    lag: Histogram<u64>,
}

impl SendState {
    fn fill(
        &mut self,
        ctx: &Ctx,
        spec: &Spec,
        start_ns: u64,
        now_ns: u64,
        out: &mut Vec<u8>,
        out_base: u64,
    ) -> Fill {
        loop {
            if self.done_gen {
                return Fill::Done;
            }
            let sched = ctx
                .schedule
                .due_ns(start_ns, self.spec.offset_ns, self.next_seq, now_ns);
            if ctx.schedule.is_over(start_ns, self.next_seq, sched) {
                self.done_gen = true;
                continue;
            }
            let echoed = self.spec.shared.echoed.load(Relaxed);
            if self.next_seq.saturating_sub(echoed) >= ctx.window {
                return Fill::Blocked;
            }
            if sched > now_ns {
                return Fill::At(sched);
            }
            if out.len() >= BATCH {
                return Fill::Full;
            }
            self.lag
                .saturating_record(now_ns.saturating_sub(sched) / 1000);
            proto::measured_text(
                self.spec.sid,
                self.next_seq,
                sched,
                ctx.payload,
                &mut self.text,
            );
            proto::message(ctx.target, &spec.name, &spec.room_name, &self.text, out);
            self.ends.push_back(out_base + out.len() as u64);
            self.next_seq += 1;
        }
    }
}

struct RecvState {
    target: Target,
    /// The connection's server: which of the thread's latency aggregates it records into.
    node: usize,
    own_client: u64,
    own_echo: Option<(u64, Arc<EchoShared>, bool)>,
    room_first_sid: u64,
    received: u64,
    batch: u64,
    last_seq: Vec<u64>,
    out_of_order: u64,
    foreign: u64,
    ready: bool,
    pongs: usize,
    server_errors: Vec<String>,
    /// When the last read was decoded, ns since the epoch.
    read_ns: u64,
}

impl RecvState {
    #[inline(always)]
    fn on_event(&mut self, ev: Event<'_>, now_ns: u64, lat: &mut LatAgg) {
        match ev {
            Event::Payload(p) => self.on_text(proto::parse_payload(p), now_ns, lat),
            Event::Text(t) => self.on_text(proto::parse_text(t), now_ns, lat),
            Event::Subscribed => {
                if self.target == Target::Redis {
                    self.ready = true;
                }
            }
            Event::Ping => self.pongs += 1,
            Event::Error(e) => self.server_error(String::from_utf8_lossy(e).into_owned()),
            Event::Notice(_) | Event::Pong | Event::Other => {}
        }
    }

    /// Keeps the first few errors the server reported.
    #[cold]
    fn server_error(&mut self, e: String) {
        if self.server_errors.len() < 3 {
            self.server_errors.push(e);
        }
    }

    #[inline(always)]
    fn on_text(&mut self, text: Text, now_ns: u64, lat: &mut LatAgg) {
        match text {
            Text::Measured {
                sender,
                seq,
                sent_ns,
            } => {
                self.batch += 1;
                let us = now_ns.saturating_sub(sent_ns) / 1000;
                lat.record(us);
                let local = sender.wrapping_sub(self.room_first_sid) as usize;
                match self.last_seq.get_mut(local) {
                    Some(last) => {
                        if seq < *last {
                            self.out_of_order += 1;
                        }
                        *last = seq + 1;
                    }
                    None => self.foreign += 1,
                }
                if let Some((sid, shared, notify)) = &self.own_echo {
                    if *sid == sender {
                        shared.echoed.fetch_max(seq + 1, Relaxed);
                        if *notify {
                            shared.notify.notify_one();
                        }
                    }
                }
            }
            Text::Ready { client } => {
                if client == self.own_client && self.target != Target::Redis {
                    self.ready = true;
                }
            }
            Text::Foreign => self.foreign += 1,
        }
    }
}

/// Reads once into the thread's buffer (after the connection's incomplete frame, `carry`) and
/// decodes every complete frame; returns the bytes read (0 = end of stream). The buffer is only
/// borrowed within this poll, so the connections of a thread can share it.
fn poll_read_decode(
    cx: &mut Context<'_>,
    rd: &mut ReadHalf<'_>,
    carry: &mut Vec<u8>,
    read_buf: usize,
    ctx: &Ctx,
    recv: &mut RecvState,
) -> Poll<Result<usize, String>> {
    with_thread_state(&ctx.lat, |buf, agg| {
        let kept = carry.len();
        let end = kept + read_buf; // grows with a frame larger than the buffer
        if buf.len() < end {
            buf.resize(end, 0);
        }
        buf[..kept].copy_from_slice(carry);
        let mut rb = ReadBuf::new(&mut buf[kept..end]);
        match Pin::new(rd).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(format!("read: {e}"))),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n > 0 {
                    let now_ns = ctx.now_ns();
                    let data = &buf[..kept + n];
                    // Uncontended (one lock per read; other threads only at the end).
                    let mut aggs = lock(agg);
                    let agg = node_lat(&mut aggs, recv.node)?;
                    let used =
                        proto::decode(ctx.target, data, &mut |ev| recv.on_event(ev, now_ns, agg))?;
                    carry.clear();
                    carry.extend_from_slice(&data[used..]);
                    recv.read_ns = now_ns;
                }
                Poll::Ready(Ok(n))
            }
        }
    })
}

async fn conn_task(ctx: Arc<Ctx>, spec: Spec, phase: watch::Receiver<Phase>) -> ConnResult {
    let mut res = ConnResult {
        member: spec.member,
        room: spec.room,
        node: spec.node,
        is_sender: spec.sender.is_some(),
        ..Default::default()
    };
    let run = if ctx.target == Target::MachatWs {
        ws::conn_run(&ctx, spec, phase, &mut res).await
    } else {
        conn_run(&ctx, spec, phase, &mut res).await
    };
    if let Err(e) = run {
        ctx.failed.fetch_add(1, Relaxed);
        res.error = Some(e);
    }
    res
}

async fn conn_run(
    ctx: &Ctx,
    mut spec: Spec,
    mut phase: watch::Receiver<Phase>,
    res: &mut ConnResult,
) -> Result<(), String> {
    let mut stream: TcpStream = {
        let _permit = ctx
            .connect_sem
            .acquire()
            .await
            .map_err(|_| "semaphore closed".to_string())?;
        net::connect(ctx.nodes[spec.node], spec.src).await?
    };
    let mut out: Vec<u8> = Vec::with_capacity(BATCH + 1024);
    let mut out_pos = 0usize;
    let mut written: u64 = 0; // total bytes ever written
    let mut out_base: u64 = 0; // absolute offset of out[0]
    proto::handshake(
        ctx.target,
        &spec.name,
        &spec.room_name,
        spec.member,
        &mut out,
    );
    let ready_text = format!("r {}", spec.client);
    let send_ready = spec.member && ctx.target.member_can_publish();

    let mut recv = RecvState {
        target: ctx.target,
        node: spec.node,
        own_client: spec.client as u64,
        own_echo: spec.own_echo.take(),
        room_first_sid: (spec.room * ctx.senders_per_room) as u64,
        received: 0,
        batch: 0,
        last_seq: vec![0; ctx.senders_per_room],
        out_of_order: 0,
        foreign: 0,
        ready: !spec.member,
        pongs: 0,
        server_errors: Vec::new(),
        read_ns: 0,
    };
    let mut ready_counted = false;
    let mut next_ready_send: u64 = 0; // ns; resend the marker every second until seen
    let mut sender = spec.sender.take().map(|s| SendState {
        spec: s,
        next_seq: 0,
        done_gen: false,
        announced: false,
        ends: VecDeque::new(),
        text: Vec::with_capacity(ctx.payload + 64),
        last_send_ns: 0,
        lag: new_hist(),
    });

    // Reading through AsyncRead: a short read clears the readiness, saving the extra
    // `read` that would only return WouldBlock.
    let (mut rd, wr) = stream.split();
    let mut carry: Vec<u8> = Vec::new();
    let mut cur = *phase.borrow_and_update();
    let sleep = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(sleep);

    loop {
        let now_ns = ctx.now_ns();
        let mut wake: Option<u64> = None;
        let mut blocked = false;
        let mut full = false;
        let mut paced = false;

        if send_ready && !recv.ready && now_ns >= next_ready_send {
            proto::message(
                ctx.target,
                &spec.name,
                &spec.room_name,
                ready_text.as_bytes(),
                &mut out,
            );
            next_ready_send = now_ns + 1_000_000_000;
        }
        if send_ready && !recv.ready {
            wake = Some(next_ready_send);
        }
        if recv.pongs > 0 {
            for _ in 0..recv.pongs {
                out.extend_from_slice(b"PONG\r\n");
            }
            recv.pongs = 0;
        }
        if let (Phase::Run { start_ns }, Some(s)) = (cur, sender.as_mut()) {
            if out.len() - out_pos < BATCH / 2 {
                if out_pos > 0 {
                    out.drain(..out_pos);
                    out_base += out_pos as u64;
                    out_pos = 0;
                }
                match s.fill(ctx, &spec, start_ns, now_ns, &mut out, out_base) {
                    Fill::At(t) => {
                        // The pacer thread wakes us on time; the timer (1 ms ticks) is only
                        // a fallback.
                        paced = true;
                        let t = t + 2_000_000;
                        wake = Some(wake.map_or(t, |w| w.min(t)));
                    }
                    Fill::Blocked => {
                        blocked = true;
                        if let Some(t) = ctx.schedule.unpaced_end_ns(start_ns) {
                            wake = Some(wake.map_or(t, |w| w.min(t)));
                        }
                    }
                    Fill::Full => full = true,
                    Fill::Done => {}
                }
            }
        }

        // Write as much as the socket takes now.
        while out_pos < out.len() {
            match wr.try_write(&out[out_pos..]) {
                Ok(n) => {
                    out_pos += n;
                    written += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        if out_pos == out.len() {
            out_base += out.len() as u64;
            out.clear();
            out_pos = 0;
        }
        if let Some(s) = sender.as_mut() {
            let mut popped = false;
            while s.ends.front().is_some_and(|&e| e <= written) {
                s.ends.pop_front();
                popped = true;
            }
            if popped {
                s.last_send_ns = ctx.now_ns();
            }
            if s.done_gen && s.ends.is_empty() && !s.announced {
                s.announced = true;
                let members = ctx.room_members[spec.room];
                ctx.expected.fetch_add(s.next_seq * members, Relaxed);
                ctx.senders_done.fetch_add(1, Relaxed);
            }
            if full && out.is_empty() {
                continue; // the batch went out whole: generate the next one now
            }
        }

        if recv.ready && !ready_counted {
            ready_counted = true;
            ctx.ready.fetch_add(1, Relaxed);
        }

        if let Some(w) = wake {
            let dl = tokio::time::Instant::from_std(ctx.epoch + Duration::from_nanos(w));
            if sleep.deadline() != dl {
                sleep.as_mut().reset(dl);
            }
        }
        let want_write = out_pos < out.len();
        let wait_notify = paced || (blocked && sender.as_ref().is_some_and(|s| s.spec.wait_notify));
        let notified = async {
            match sender.as_ref() {
                Some(s) if wait_notify => s.spec.shared.notify.notified().await,
                _ => std::future::pending().await,
            }
        };

        tokio::select! {
            biased;
            r = phase.changed() => {
                if r.is_err() {
                    break;
                }
                cur = *phase.borrow_and_update();
                if cur == Phase::Stop {
                    break;
                }
            }
            r = std::future::poll_fn(|cx| {
                poll_read_decode(cx, &mut rd, &mut carry, ctx.read_buf, ctx, &mut recv)
            }) => {
                match r {
                    Ok(0) => {
                        return Err(match recv.server_errors.first() {
                            Some(e) => format!("connection closed by the server after: {e}"),
                            None => "connection closed by the server".into(),
                        })
                    }
                    Ok(_) => {
                        let now_ns = recv.read_ns;
                        if recv.batch > 0 {
                            recv.received += recv.batch;
                            ctx.received.fetch_add(recv.batch, Relaxed);
                            recv.batch = 0;
                            res.last_delivery_ns = now_ns;
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            r = wr.writable(), if want_write => {
                r.map_err(|e| format!("write: {e}"))?;
            }
            _ = &mut sleep, if wake.is_some() => {}
            _ = notified, if wait_notify => {}
        }
    }

    res.received = recv.received;
    res.out_of_order = recv.out_of_order;
    res.foreign = recv.foreign;
    res.server_errors = recv.server_errors;
    if let Some(s) = sender {
        res.sent = s.next_seq;
        res.unsent = s.ends.len() as u64;
        res.last_send_ns = s.last_send_ns;
        res.lag = Some(s.lag);
    }
    Ok(())
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
    if args.rooms == 0 || args.clients < args.rooms {
        return Err("need --rooms >= 1 and --clients >= --rooms".into());
    }
    let min_members = args.clients / args.rooms;
    if args.senders == 0 || args.senders > min_members {
        return Err(format!(
            "--senders must be 1..={min_members} (the smallest room's member count)"
        ));
    }
    if args.window == 0 {
        return Err("--window must be >= 1".into());
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        return Err("--rate must be >= 0".into());
    }
    let duration = match (args.duration, args.messages) {
        (None, None) => Some(10.0),
        (d, _) => d,
    };
    let total_senders = args.rooms * args.senders;
    let interval_ns = if args.rate > 0.0 {
        ((total_senders as f64) * 1e9 / args.rate).max(1.0) as u64
    } else {
        0
    };
    if interval_ns > 0 && interval_ns < 1000 {
        return Err("--rate is too high for paced sending (use 0 for as fast as possible)".into());
    }
    let mut room_members = vec![0u64; args.rooms];
    for c in 0..args.clients {
        room_members[c % args.rooms] += 1;
    }
    // Node 0 is --addr (the senders'); each further reader address once. `readers_at` is the
    // round-robin of the readers, as given (an address given twice gets twice the readers).
    let mut nodes = vec![common.addr];
    let mut readers_at = Vec::new();
    for a in &args.reader_addr {
        let addr = crate::resolve("--reader-addr", a)?;
        let i = match nodes.iter().position(|n| *n == addr) {
            Some(i) => i,
            None => {
                nodes.push(addr);
                nodes.len() - 1
            }
        };
        readers_at.push(i);
    }
    if readers_at.is_empty() {
        readers_at.push(0);
    }
    let srcs: Vec<Vec<Ipv4Addr>> = nodes
        .iter()
        .map(|n| net::source_addrs(*n, common.src_addrs))
        .collect();
    let ctx = Arc::new(Ctx {
        target: common.target,
        nodes: nodes.clone(),
        epoch: Instant::now(),
        payload: args.payload,
        window: args.window,
        schedule: Schedule {
            interval_ns,
            messages: args.messages,
            duration_ns: duration.map(|d| (d * 1e9) as u64),
        },
        senders_per_room: args.senders,
        read_buf: args.read_buf.max(1024),
        connect_sem: Semaphore::new(256),
        ready: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        received: AtomicU64::new(0),
        senders_done: AtomicUsize::new(0),
        expected: AtomicU64::new(0),
        room_members: room_members.clone(),
        lat: LatRegistry::new(nodes.len()),
    });

    // Build the connections.
    let mut specs = Vec::new();
    let src_of = |node: usize, i: usize| {
        let srcs = &srcs[node];
        if srcs.is_empty() {
            None
        } else {
            Some(srcs[i % srcs.len()])
        }
    };
    let separate_pub = !common.target.member_can_publish();
    for c in 0..args.clients {
        let room = c % args.rooms;
        let in_room = c / args.rooms;
        let name = proto::client_name(c);
        let room_name = proto::room_name(room);
        // Round-robin within the room, so that every room has readers on every node.
        let node = match in_room.checked_sub(args.senders) {
            Some(reader) => readers_at[reader % readers_at.len()],
            None => 0,
        };
        let sender = (in_room < args.senders).then(|| {
            let sid = (room * args.senders + in_room) as u64;
            SenderSpec {
                sid,
                offset_ns: ctx.schedule.offset_ns(sid, total_senders as u64),
                shared: Arc::new(EchoShared {
                    echoed: AtomicU64::new(0),
                    notify: Notify::new(),
                }),
                wait_notify: separate_pub,
            }
        });
        let own_echo = sender
            .as_ref()
            .map(|s| (s.sid, s.shared.clone(), separate_pub));
        if separate_pub {
            specs.push(Spec {
                client: c,
                node,
                name: name.clone(),
                room,
                room_name: room_name.clone(),
                src: src_of(node, specs.len()),
                member: true,
                own_echo,
                sender: None,
            });
            if let Some(s) = sender {
                specs.push(Spec {
                    client: c,
                    node,
                    name,
                    room,
                    room_name,
                    src: src_of(node, specs.len()),
                    member: false,
                    own_echo: None,
                    sender: Some(s),
                });
            }
        } else {
            specs.push(Spec {
                client: c,
                node,
                name,
                room,
                room_name,
                src: src_of(node, specs.len()),
                member: true,
                own_echo,
                sender,
            });
        }
    }
    let connections = specs.len();
    let pace_targets: Vec<Arc<EchoShared>> = specs
        .iter()
        .filter_map(|s| s.sender.as_ref().map(|x| (x.sid, x.shared.clone())))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_values()
        .collect();

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
    let stall_after = drain.max(Duration::from_secs(1)) + Duration::from_nanos(interval_ns * 2);
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = Instant::now();
        let received = ctx.received.load(Relaxed);
        if received != last_progress.0 {
            last_progress = (received, now);
        }
        if ctx.senders_done.load(Relaxed) == total_senders {
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
    let multi_node = nodes.len() > 1;
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
        duration_s: duration,
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
