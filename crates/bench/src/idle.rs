//! The `idle` scenario: many connections that join rooms and then stay quiet. Reports how long
//! opening them took and the server's resident memory per connection.
//!
//! A connection counts as open when the server confirmed membership: machat's own
//! `*** NAME joined` notice (over WebSocket: its own JSON join event), Redis's subscribe
//! confirmation, NATS's `PONG` after `SUB` + `PING`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::net;
use crate::procstat;
use crate::proto::{self, Event, Target};
use crate::ws;
use crate::Common;

/// tungstenite's read buffer per idle WebSocket connection (allocated up front): an idle member
/// only reads the join events of its room's later members.
const WS_READ_BUF: usize = 2048;

#[derive(clap::Args, Debug, Clone)]
pub struct IdleArgs {
    /// Connections to open (the process may have at most ~20,000 descriptors).
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Connections per room.
    #[arg(long, default_value_t = 10)]
    pub per_room: usize,
    /// Connections being opened at the same time.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// Seconds to wait after all are open before sampling the server's RSS.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Seconds to keep the connections open after sampling.
    #[arg(long, default_value_t = 0.0)]
    pub hold: f64,
    /// Seconds allowed for opening all connections.
    #[arg(long, default_value_t = 120.0)]
    pub open_timeout: f64,
}

struct Ctx {
    target: Target,
    addr: SocketAddr,
    sem: Semaphore,
    opened: AtomicUsize,
    failed: AtomicUsize,
}

struct ConnOut {
    open_us: Option<u64>,
    error: Option<String>,
}

async fn conn_task(
    ctx: Arc<Ctx>,
    idx: usize,
    room: usize,
    src: Option<std::net::Ipv4Addr>,
    phase: watch::Receiver<bool>,
) -> ConnOut {
    match conn_run(&ctx, idx, room, src, phase).await {
        Ok(open_us) => ConnOut {
            open_us: Some(open_us),
            error: None,
        },
        Err(e) => {
            ctx.failed.fetch_add(1, Relaxed);
            ConnOut {
                open_us: None,
                error: Some(e),
            }
        }
    }
}

/// Reads once into `buf` (growing it when a frame does not fit) and decodes; returns whether
/// `done(ev)` was true for some event, and how many PINGs must be answered.
async fn read_some(
    target: Target,
    stream: &tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    filled: &mut usize,
    done: &mut impl FnMut(&Event<'_>) -> bool,
) -> Result<(bool, usize), String> {
    stream.readable().await.map_err(|e| format!("read: {e}"))?;
    if *filled == buf.len() {
        buf.resize(buf.len() * 2, 0);
    }
    match stream.try_read(&mut buf[*filled..]) {
        Ok(0) => Err("connection closed by the server".into()),
        Ok(n) => {
            *filled += n;
            let mut hit = false;
            let mut pings = 0;
            let used = proto::decode(target, &buf[..*filled], &mut |ev| {
                if matches!(ev, Event::Ping) {
                    pings += 1;
                }
                if done(&ev) {
                    hit = true;
                }
            })?;
            buf.copy_within(used..*filled, 0);
            *filled -= used;
            Ok((hit, pings))
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok((false, 0)),
        Err(e) => Err(format!("read: {e}")),
    }
}

async fn write_all(stream: &tokio::net::TcpStream, mut data: &[u8]) -> Result<(), String> {
    while !data.is_empty() {
        stream.writable().await.map_err(|e| format!("write: {e}"))?;
        match stream.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("write: {e}")),
        }
    }
    Ok(())
}

async fn conn_run(
    ctx: &Ctx,
    idx: usize,
    room: usize,
    src: Option<std::net::Ipv4Addr>,
    mut phase: watch::Receiver<bool>,
) -> Result<u64, String> {
    if ctx.target.is_websocket() {
        return conn_run_ws(ctx, idx, room, src, phase).await;
    }
    let name = proto::client_name(idx);
    let room_name = proto::room_name(room);
    let joined = format!("*** {name} joined");
    let mut buf = vec![0u8; 512];
    let mut filled = 0usize;
    let open_us;
    let stream;
    {
        let _permit = ctx
            .sem
            .acquire()
            .await
            .map_err(|_| "semaphore closed".to_string())?;
        let t0 = Instant::now();
        stream = net::connect(ctx.addr, src).await?;
        let mut hs = Vec::new();
        proto::handshake(ctx.target, &name, &room_name, true, &mut hs);
        write_all(&stream, &hs).await?;
        let target = ctx.target;
        let json_joined = proto::ws_join_prefix(&name, &room_name);
        let mut is_ready = |ev: &Event<'_>| match (target, ev) {
            (Target::Machat, Event::Notice(n)) => n.starts_with(joined.as_bytes()),
            (Target::MachatJson, Event::Notice(n)) => n.starts_with(&json_joined),
            (Target::Redis, Event::Subscribed) => true,
            (Target::Nats, Event::Pong) => true,
            _ => false,
        };
        loop {
            let (hit, pings) =
                read_some(ctx.target, &stream, &mut buf, &mut filled, &mut is_ready).await?;
            for _ in 0..pings {
                write_all(&stream, b"PONG\r\n").await?;
            }
            if hit {
                break;
            }
        }
        open_us = t0.elapsed().as_micros() as u64;
    }
    ctx.opened.fetch_add(1, Relaxed);
    // Stay: drain whatever the server sends (join notices of the room's later members) and
    // answer NATS pings, until told to stop.
    let mut ignore = |_: &Event<'_>| false;
    loop {
        tokio::select! {
            biased;
            r = phase.changed() => {
                if r.is_err() || *phase.borrow_and_update() {
                    return Ok(open_us);
                }
            }
            r = read_some(ctx.target, &stream, &mut buf, &mut filled, &mut ignore) => {
                let (_, pings) = r?;
                for _ in 0..pings {
                    write_all(&stream, b"PONG\r\n").await?;
                }
            }
        }
    }
}

/// What an idle WebSocket member does with a frame; `Err` ends the connection.
fn ws_frame(
    msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    error: &mut Option<String>,
) -> Result<Option<Message>, String> {
    let why = |what: String, error: &Option<String>| match error {
        Some(e) => format!("{what} after: {e}"),
        None => what,
    };
    match msg {
        Some(Ok(Message::Close(frame))) => Err(why(
            format!(
                "connection closed by the server ({})",
                ws::close_text(frame.as_ref())
            ),
            error,
        )),
        Some(Ok(Message::Text(t))) => {
            if let Event::Error(e) = proto::decode_ws_frame(t.as_bytes()) {
                error.get_or_insert_with(|| String::from_utf8_lossy(e).into_owned());
            }
            Ok(Some(Message::Text(t)))
        }
        Some(Ok(m)) => Ok(Some(m)),
        Some(Err(e)) => Err(why(format!("read: {e}"), error)),
        None => Err(why("connection closed by the server".into(), error)),
    }
}

/// [`conn_run`] over machat's WebSocket endpoint.
async fn conn_run_ws(
    ctx: &Ctx,
    idx: usize,
    room: usize,
    src: Option<std::net::Ipv4Addr>,
    mut phase: watch::Receiver<bool>,
) -> Result<u64, String> {
    let name = proto::client_name(idx);
    let room_name = proto::room_name(room);
    let joined = proto::ws_join_prefix(&name, &room_name);
    let mut hs = Vec::new();
    proto::handshake(ctx.target, &name, &room_name, true, &mut hs);
    let mut error = None;
    let open_us;
    let mut wsock;
    {
        let _permit = ctx
            .sem
            .acquire()
            .await
            .map_err(|_| "semaphore closed".to_string())?;
        let t0 = Instant::now();
        let path = ctx.target.ws_path(&room_name);
        wsock = ws::connect(ctx.addr, &path, src, &hs, WS_READ_BUF, t0).await?;
        // nchan says nothing on a subscription: open once upgraded.
        let mut open = ctx.target != Target::MachatWs;
        while !open {
            if let Some(Message::Text(t)) = ws_frame(wsock.next().await, &mut error)? {
                open = t.as_bytes().starts_with(&joined);
            }
        }
        open_us = t0.elapsed().as_micros() as u64;
    }
    ctx.opened.fetch_add(1, Relaxed);
    // Stay: read whatever the server sends (join events of the room's later members, pings,
    // which tungstenite answers), until told to stop.
    loop {
        tokio::select! {
            biased;
            r = phase.changed() => {
                if r.is_err() || *phase.borrow_and_update() {
                    ws::close(&mut wsock).await;
                    return Ok(open_us);
                }
            }
            m = wsock.next() => {
                ws_frame(m, &mut error)?;
            }
        }
    }
}

#[derive(serde::Serialize, Debug)]
pub struct IdleReport {
    pub scenario: &'static str,
    pub label: Option<String>,
    pub target: Target,
    pub addr: String,
    pub conns: usize,
    pub per_room: usize,
    pub opened: usize,
    pub failed: usize,
    pub open_secs: f64,
    pub opens_per_s: f64,
    pub open_p50_us: u64,
    pub open_p99_us: u64,
    pub open_max_us: u64,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_after_kib: Option<u64>,
    pub server_peak_rss_kib: Option<u64>,
    pub rss_per_conn_bytes: Option<f64>,
    pub server_cpu_s: Option<f64>,
    pub gen_cpu_s: f64,
    pub first_error: Option<String>,
}

pub async fn run(common: &Common, args: &IdleArgs) -> Result<IdleReport, String> {
    if args.conns == 0 || args.per_room == 0 {
        return Err("--conns and --per-room must be >= 1".into());
    }
    let srcs = net::source_addrs(common.addr, common.src_addrs);
    let ctx = Arc::new(Ctx {
        target: common.target,
        addr: common.addr,
        sem: Semaphore::new(args.concurrency.max(1)),
        opened: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
    });
    let srv0 = procstat::sample_opt(&common.server_pids)?;
    let cpu0 = procstat::self_cpu_s();
    let t0 = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let handles: Vec<_> = (0..args.conns)
        .map(|i| {
            let src = (!srcs.is_empty()).then(|| srcs[i % srcs.len()]);
            tokio::spawn(conn_task(
                ctx.clone(),
                i,
                i / args.per_room,
                src,
                stop_rx.clone(),
            ))
        })
        .collect();
    drop(stop_rx);
    let deadline = t0 + Duration::from_secs_f64(args.open_timeout);
    while ctx.opened.load(Relaxed) + ctx.failed.load(Relaxed) < args.conns
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let open_secs = t0.elapsed().as_secs_f64();
    let opened = ctx.opened.load(Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let srv1 = procstat::sample_opt(&common.server_pids)?;
    let cpu1 = procstat::self_cpu_s();
    if args.hold > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    }
    let _ = stop_tx.send(true);

    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .map_err(|e| format!("histogram: {e:?}"))?;
    let mut first_error = None;
    for h in handles {
        let r = h.await.map_err(|e| format!("task failed: {e}"))?;
        if let Some(us) = r.open_us {
            hist.saturating_record(us);
        }
        if first_error.is_none() {
            first_error = r.error;
        }
    }
    let failed = args.conns - opened;
    if opened == 0 {
        return Err(format!(
            "no connection could be opened{}",
            first_error
                .map(|e| format!(" (first error: {e})"))
                .unwrap_or_default()
        ));
    }
    let q = |p: f64| crate::quantile(&hist, p);
    Ok(IdleReport {
        scenario: "idle",
        label: common.label.clone(),
        target: common.target,
        addr: common.addr.to_string(),
        conns: args.conns,
        per_room: args.per_room,
        opened,
        failed,
        open_secs,
        opens_per_s: if open_secs > 0.0 {
            opened as f64 / open_secs
        } else {
            0.0
        },
        open_p50_us: q(0.5),
        open_p99_us: q(0.99),
        open_max_us: if hist.is_empty() { 0 } else { hist.max() },
        server_rss_before_kib: srv0.map(|s| s.rss_kib),
        server_rss_after_kib: srv1.map(|s| s.rss_kib),
        server_peak_rss_kib: srv1.map(|s| s.hwm_kib),
        rss_per_conn_bytes: match (srv0, srv1) {
            (Some(a), Some(b)) if opened > 0 => {
                Some((b.rss_kib as f64 - a.rss_kib as f64) * 1024.0 / opened as f64)
            }
            _ => None,
        },
        server_cpu_s: match (srv0, srv1) {
            (Some(a), Some(b)) => Some(b.cpu_s - a.cpu_s),
            _ => None,
        },
        gen_cpu_s: cpu1 - cpu0,
        first_error,
    })
}

pub fn print_table(r: &IdleReport) {
    println!(
        "idle  target={}  addr={}{}",
        r.target.name(),
        r.addr,
        r.label
            .as_ref()
            .map(|l| format!("  label={l}"))
            .unwrap_or_default()
    );
    println!(
        "  setup        {} connections, {} per room",
        r.conns, r.per_room
    );
    println!(
        "  opened       {} ({} failed) in {:.3} s ({:.0}/s); per connection p50 {} us  p99 {} us  max {} us",
        r.opened, r.failed, r.open_secs, r.opens_per_s, r.open_p50_us, r.open_p99_us, r.open_max_us
    );
    let kib = |v: Option<u64>| v.map(|v| format!("{v} KiB")).unwrap_or_else(|| "-".into());
    println!(
        "  server RSS   before {}  after {}  peak {}  per connection {}",
        kib(r.server_rss_before_kib),
        kib(r.server_rss_after_kib),
        kib(r.server_peak_rss_kib),
        r.rss_per_conn_bytes
            .map(|b| format!("{b:.0} B"))
            .unwrap_or_else(|| "- (needs --server-pid)".into())
    );
    println!(
        "  CPU          server {}  generator {:.2} s",
        r.server_cpu_s
            .map(|c| format!("{c:.2} s"))
            .unwrap_or_else(|| "-".into()),
        r.gen_cpu_s
    );
    if let Some(e) = &r.first_error {
        println!("  problems     first error: {e}");
    }
}
