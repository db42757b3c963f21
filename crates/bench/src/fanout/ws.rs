//! A fanout connection to machat's WebSocket endpoint (`--target machat-ws`).
//!
//! Same flow as the TCP connection (`conn_run` in the parent): one task owns the connection and
//! both directions, the sender's schedule, window and accounting are shared. What differs is the
//! wire: each message goes out as one text frame, and each frame that comes in is one JSON event
//! of which only the message's `"text"` is read ([`proto::decode_ws_frame`]). Reading and
//! writing go through one poll function, since both need the one `WebSocketStream`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Sink, Stream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::lat::{lock, new_hist, node_lat, with_thread_state};
use super::{ConnResult, Ctx, Fill, Phase, RecvState, SendState, Spec, BATCH};
use crate::proto;
use crate::ws::{self, Ws};

/// tungstenite's read buffer per connection: the most one `read` takes (~100 message frames of
/// ~150 bytes). It zero-fills this much before each read, so larger costs more than it saves.
const READ_BUF: usize = 16 * 1024;
/// Frames handled in one poll before the loop looks at its schedule again.
const FRAMES_PER_POLL: usize = 256;

/// What one poll of the socket did.
struct Io {
    /// Frames read.
    frames: usize,
    /// The server closed the connection.
    eof: bool,
}

/// Output state: `out` holds messages as `text\n`, each sent as one frame.
struct Out {
    buf: Vec<u8>,
    pos: usize,
    /// Absolute offset of `buf[0]`.
    base: u64,
    /// Bytes handed to tungstenite (absolute).
    queued: u64,
    /// Bytes of messages flushed to the socket (absolute).
    written: u64,
    /// Frames handed over and not flushed yet.
    flushing: bool,
}

/// Writes what `out` holds (one frame per line) and flushes; then reads frames. Ready when
/// anything was read or written, or the connection ended.
fn poll_io(
    cx: &mut Context<'_>,
    wsock: &mut Ws,
    out: &mut Out,
    ctx: &Ctx,
    recv: &mut RecvState,
) -> Poll<Result<Io, String>> {
    let mut wrote = false;
    while out.pos < out.buf.len() {
        match Pin::new(&mut *wsock).poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(format!("write: {e}"))),
            Poll::Pending => break,
        }
        let rest = &out.buf[out.pos..];
        let len = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
        let text = std::str::from_utf8(&rest[..len]).map_err(|e| format!("message text: {e}"));
        let text = match text {
            Ok(t) => t,
            Err(e) => return Poll::Ready(Err(e)),
        };
        if let Err(e) = Pin::new(&mut *wsock).start_send(Message::Text(Utf8Bytes::from(text))) {
            return Poll::Ready(Err(format!("write: {e}")));
        }
        let step = (len + 1).min(rest.len());
        out.pos += step;
        out.queued += step as u64;
        out.flushing = true;
        wrote = true;
    }
    if out.flushing {
        match Pin::new(&mut *wsock).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                out.flushing = false;
                out.written = out.queued;
                wrote = true;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(format!("write: {e}"))),
            Poll::Pending => {}
        }
    }

    let mut io = Io {
        frames: 0,
        eof: false,
    };
    let read = with_thread_state(&ctx.lat, |_, lat| {
        // Uncontended (one lock per poll; other threads only at the end).
        let mut aggs = lock(lat);
        let agg = node_lat(&mut aggs, recv.node)?;
        while io.frames < FRAMES_PER_POLL {
            match Pin::new(&mut *wsock).poll_next(cx) {
                Poll::Ready(Some(Ok(msg))) => {
                    io.frames += 1;
                    match msg {
                        Message::Text(t) => {
                            // Received when the read that completed it returned.
                            let now_ns = wsock.get_ref().read_ns;
                            recv.on_event(proto::decode_ws_frame(t.as_bytes()), now_ns, agg);
                            recv.read_ns = now_ns;
                        }
                        Message::Close(frame) => recv.server_error(ws::close_text(frame.as_ref())),
                        Message::Binary(_) => recv.foreign += 1,
                        // tungstenite answers pings itself.
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
                Poll::Ready(Some(Err(e))) => return Err(format!("read: {e}")),
                Poll::Ready(None) => {
                    io.eof = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        Ok(())
    });
    if let Err(e) = read {
        return Poll::Ready(Err(e));
    }
    if wrote || io.frames > 0 || io.eof {
        Poll::Ready(Ok(io))
    } else {
        Poll::Pending
    }
}

pub(super) async fn conn_run(
    ctx: &Ctx,
    mut spec: Spec,
    mut phase: watch::Receiver<Phase>,
    res: &mut ConnResult,
) -> Result<(), String> {
    let mut handshake = Vec::new();
    proto::handshake(
        ctx.target,
        &spec.name,
        &spec.room_name,
        true,
        &mut handshake,
    );
    let mut wsock = {
        let _permit = ctx
            .connect_sem
            .acquire()
            .await
            .map_err(|_| "semaphore closed".to_string())?;
        ws::connect(
            ctx.nodes[spec.node],
            spec.src,
            &handshake,
            READ_BUF,
            ctx.epoch,
        )
        .await?
    };
    let result = run(ctx, &mut spec, &mut phase, res, &mut wsock).await;
    if result.is_ok() {
        ws::close(&mut wsock).await;
    }
    result
}

async fn run(
    ctx: &Ctx,
    spec: &mut Spec,
    phase: &mut watch::Receiver<Phase>,
    res: &mut ConnResult,
    wsock: &mut Ws,
) -> Result<(), String> {
    let mut out = Out {
        buf: Vec::with_capacity(BATCH + 1024),
        pos: 0,
        base: 0,
        queued: 0,
        written: 0,
        flushing: false,
    };
    let ready_text = format!("r {}", spec.client);
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
        ready: false,
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
    let mut cur = *phase.borrow_and_update();
    let sleep = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(sleep);

    loop {
        let now_ns = ctx.now_ns();
        let mut wake: Option<u64> = None;
        let mut blocked = false;
        let mut paced = false;

        if out.pos == out.buf.len() {
            out.base += out.buf.len() as u64;
            out.buf.clear();
            out.pos = 0;
        }
        if !recv.ready {
            if now_ns >= next_ready_send {
                proto::message(
                    ctx.target,
                    &spec.name,
                    &spec.room_name,
                    ready_text.as_bytes(),
                    &mut out.buf,
                );
                next_ready_send = now_ns + 1_000_000_000;
            }
            wake = Some(next_ready_send);
        }
        if let (Phase::Run { start_ns }, Some(s)) = (cur, sender.as_mut()) {
            if out.buf.len() - out.pos < BATCH / 2 {
                if out.pos > 0 {
                    out.buf.drain(..out.pos);
                    out.base += out.pos as u64;
                    out.pos = 0;
                }
                match s.fill(ctx, spec, start_ns, now_ns, &mut out.buf, out.base) {
                    Fill::At(t) => {
                        // The pacer thread wakes us on time; the timer is only a fallback.
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
                    // The batch goes out in the poll below, which then returns at once.
                    Fill::Full | Fill::Done => {}
                }
            }
        }

        if let Some(s) = sender.as_mut() {
            let mut popped = false;
            while s.ends.front().is_some_and(|&e| e <= out.written) {
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
            r = std::future::poll_fn(|cx| poll_io(cx, wsock, &mut out, ctx, &mut recv)) => {
                let io = r?;
                if recv.batch > 0 {
                    recv.received += recv.batch;
                    ctx.received.fetch_add(recv.batch, Relaxed);
                    recv.batch = 0;
                    res.last_delivery_ns = recv.read_ns;
                }
                if io.eof {
                    return Err(match recv.server_errors.first() {
                        Some(e) => format!("connection closed by the server after: {e}"),
                        None => "connection closed by the server".into(),
                    });
                }
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
