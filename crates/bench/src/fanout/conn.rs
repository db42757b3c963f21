//! One fanout connection: a task that owns its socket and both directions, so a sender sees its
//! own echoes without any locking. For Redis a subscribed connection cannot publish, so each
//! sender has a second, publishing connection; its member connection reports the echo progress
//! through an atomic and a `Notify` (`EchoShared`).
//!
//! The loop is written once, generic over the wire ([`Transport`]): TCP for machat, Redis and
//! NATS (`tcp.rs`), machat's WebSocket endpoint (`ws.rs`). Each turn it puts what is due into
//! the output buffer (readiness marker, NATS `PONG`s, the sender's messages), writes what the
//! socket takes, accounts for what went out, then waits for the first of: a phase change,
//! input (or room to write), its timer, or the pacer / the echo of its messages. The
//! per-message work (generating, decoding) is in `send.rs` and `recv.rs`; generics keep it free
//! of dynamic dispatch.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::watch;

use super::recv::RecvState;
use super::send::{Fill, SendState, BATCH};
use super::tcp::Tcp;
use super::ws::WsConn;
use super::{Ctx, Spec};
use crate::proto;

/// Where the run is; the connections follow it through a `watch` channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Connecting and checking readiness: nothing is measured.
    Ready,
    /// The measurement: senders send, from `start_ns` (ns since the epoch).
    Run { start_ns: u64 },
    /// The end: every connection stops and reports.
    Stop,
}

/// What a connection reports at the end.
#[derive(Default)]
pub(super) struct ConnResult {
    pub member: bool,
    pub room: usize,
    pub node: usize,
    pub lag: Option<Histogram<u64>>,
    pub received: u64,
    pub out_of_order: u64,
    pub foreign: u64,
    pub last_delivery_ns: u64,
    pub is_sender: bool,
    pub sent: u64,
    pub unsent: u64,
    pub last_send_ns: u64,
    pub error: Option<String>,
    pub server_errors: Vec<String>,
}

/// A connection's output: bytes to write, with absolute offsets so that a sender can tell
/// which of its messages are out.
pub(super) struct Out {
    pub buf: Vec<u8>,
    /// How much of `buf` is written (or, WebSocket, handed over as frames).
    pub pos: usize,
    /// Absolute offset of `buf[0]`.
    pub base: u64,
    /// Absolute offset up to which the output is on the wire.
    pub written: u64,
}

impl Out {
    fn new() -> Out {
        Out {
            buf: Vec::with_capacity(BATCH + 1024),
            pos: 0,
            base: 0,
            written: 0,
        }
    }

    /// Bytes not yet written.
    fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Once everything is written, starts the buffer over.
    fn reclaim(&mut self) {
        if self.pos == self.buf.len() {
            self.base += self.buf.len() as u64;
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Drops what is written, so a new batch goes in after the rest.
    fn compact(&mut self) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.base += self.pos as u64;
            self.pos = 0;
        }
    }
}

/// What a poll of the transport found.
pub(super) struct Io {
    /// The server closed the connection.
    pub eof: bool,
}

/// The wire under a connection: how it connects, writes and reads. Reading decodes into the
/// connection's `RecvState`, recording latencies in the thread's aggregates.
pub(super) trait Transport: Sized {
    /// Connects to the server of `spec` and starts its protocol: what must be written first
    /// goes into `out`, or is sent before this returns.
    async fn connect(ctx: &Ctx, spec: &Spec, out: &mut Vec<u8>) -> Result<Self, String>;

    /// Writes what the socket takes of `out` now, without waiting, advancing `out.pos` and
    /// `out.written`. A transport that can only write while polled does it in `poll_io`.
    fn write_now(&mut self, out: &mut Out) -> Result<(), String>;

    /// Ready when input was read (and decoded into `recv`), when there is room to write
    /// (or output went out), or when the server closed the connection.
    fn poll_io(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Out,
        ctx: &Ctx,
        recv: &mut RecvState,
    ) -> Poll<Result<Io, String>>;

    /// Closes a connection that ran to the end.
    async fn close(&mut self);
}

/// A connection's task: runs it over its target's transport and reports.
pub(super) async fn conn_task(
    ctx: Arc<Ctx>,
    spec: Spec,
    phase: watch::Receiver<Phase>,
) -> ConnResult {
    let mut res = ConnResult {
        member: spec.member,
        room: spec.room,
        node: spec.node,
        is_sender: spec.sender.is_some(),
        ..Default::default()
    };
    let run = if ctx.target.is_websocket() {
        conn_run::<WsConn>(&ctx, spec, phase, &mut res).await
    } else {
        conn_run::<Tcp>(&ctx, spec, phase, &mut res).await
    };
    if let Err(e) = run {
        ctx.failed.fetch_add(1, Relaxed);
        res.error = Some(e);
    }
    res
}

/// Connects (at most `Ctx::connect_sem` at a time), runs the connection until the run stops,
/// and fills in `res`. A connection that fails reports only its error and last delivery time.
async fn conn_run<T: Transport>(
    ctx: &Ctx,
    spec: Spec,
    mut phase: watch::Receiver<Phase>,
    res: &mut ConnResult,
) -> Result<(), String> {
    let mut out = Out::new();
    let mut io = {
        let _permit = ctx
            .connect_sem
            .acquire()
            .await
            .map_err(|_| "semaphore closed".to_string())?;
        T::connect(ctx, &spec, &mut out.buf).await?
    };
    let mut conn = Conn::new(ctx, spec);
    conn.run(&mut io, &mut out, &mut phase, res).await?;
    io.close().await;
    conn.finish(res);
    Ok(())
}

/// What a connection waits for in one turn of its loop, besides input and the phase.
#[derive(Clone, Copy, Default)]
struct Wait {
    /// The timer, ns since the epoch.
    wake: Option<u64>,
    /// The sender's `Notify`: the pacer, or (Redis) the echo seen by the member connection.
    notify: bool,
    /// The output batch was full: once it is written, generate the next at once.
    full: bool,
}

impl Wait {
    fn wake_at(&mut self, t: u64) {
        self.wake = Some(self.wake.map_or(t, |w| w.min(t)));
    }
}

/// A connection's state between turns of its loop.
struct Conn<'a> {
    ctx: &'a Ctx,
    /// Its spec, without `own_echo` and `sender` (taken by `recv` and `sender`).
    spec: Spec,
    recv: RecvState,
    sender: Option<SendState>,
    /// This connection sends the readiness marker `r <client>` until it sees it (members that
    /// can publish; for Redis the subscribe confirmation is the sign).
    send_ready: bool,
    ready_text: String,
    /// When to send the marker again (every second until seen), ns.
    next_ready_send: u64,
    /// Counted in `Ctx::ready`.
    ready_counted: bool,
}

impl<'a> Conn<'a> {
    fn new(ctx: &'a Ctx, mut spec: Spec) -> Conn<'a> {
        let recv = RecvState::new(ctx, &mut spec);
        let sender = spec.sender.take().map(|s| SendState::new(s, ctx.payload));
        Conn {
            ctx,
            send_ready: spec.member && ctx.target.member_can_publish(),
            ready_text: format!("r {}", spec.client),
            next_ready_send: 0,
            ready_counted: false,
            spec,
            recv,
            sender,
        }
    }

    /// The connection's loop, until the run stops (`Ok`) or the connection fails.
    async fn run<T: Transport>(
        &mut self,
        io: &mut T,
        out: &mut Out,
        phase: &mut watch::Receiver<Phase>,
        res: &mut ConnResult,
    ) -> Result<(), String> {
        let ctx = self.ctx;
        let mut cur = *phase.borrow_and_update();
        let sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(sleep);
        loop {
            out.reclaim(); // what the last poll wrote (WebSocket)
            let wait = self.produce(cur, out);
            io.write_now(out)?;
            out.reclaim();
            if let Some(s) = self.sender.as_mut() {
                s.account_written(ctx, self.spec.room, out.written);
                if wait.full && out.buf.is_empty() {
                    continue; // the batch went out whole: generate the next one now
                }
            }
            if self.recv.ready && !self.ready_counted {
                self.ready_counted = true;
                ctx.ready.fetch_add(1, Relaxed);
            }
            if let Some(w) = wait.wake {
                let dl = tokio::time::Instant::from_std(ctx.epoch + Duration::from_nanos(w));
                if sleep.deadline() != dl {
                    sleep.as_mut().reset(dl);
                }
            }

            let recv = &mut self.recv;
            let sender = self.sender.as_ref();
            let notified = async move {
                match sender {
                    Some(s) if wait.notify => s.spec.shared.notify.notified().await,
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
                r = std::future::poll_fn(|cx| io.poll_io(cx, out, ctx, recv)) => {
                    let got = r?;
                    recv.take_batch(ctx, res);
                    if got.eof {
                        return Err(recv.closed_error());
                    }
                }
                _ = &mut sleep, if wait.wake.is_some() => {}
                _ = notified, if wait.notify => {}
            }
        }
        Ok(())
    }

    /// Puts what is due into `out`: the readiness marker until it comes back, answers to
    /// NATS pings, and, while the measurement runs, the sender's messages (a batch at a time).
    /// Says what to wait for next.
    fn produce(&mut self, cur: Phase, out: &mut Out) -> Wait {
        let ctx = self.ctx;
        let now_ns = ctx.now_ns();
        let mut wait = Wait::default();
        if self.send_ready && !self.recv.ready {
            if now_ns >= self.next_ready_send {
                let (name, room) = (&self.spec.name, &self.spec.room_name);
                let marker = self.ready_text.as_bytes();
                proto::message(ctx.target, name, room, marker, &mut out.buf);
                self.next_ready_send = now_ns + 1_000_000_000;
            }
            wait.wake = Some(self.next_ready_send);
        }
        if self.recv.pongs > 0 {
            for _ in 0..self.recv.pongs {
                out.buf.extend_from_slice(b"PONG\r\n");
            }
            self.recv.pongs = 0;
        }
        if let (Phase::Run { start_ns }, Some(s)) = (cur, self.sender.as_mut()) {
            if out.pending() < BATCH / 2 {
                out.compact();
                match s.fill(ctx, &self.spec, start_ns, now_ns, &mut out.buf, out.base) {
                    Fill::At(t) => {
                        // The pacer thread wakes us on time; the timer (1 ms ticks) is only
                        // a fallback.
                        wait.notify = true;
                        wait.wake_at(t + 2_000_000);
                    }
                    Fill::Blocked => {
                        wait.notify = s.spec.wait_notify;
                        if let Some(t) = ctx.schedule.unpaced_end_ns(start_ns) {
                            wait.wake_at(t);
                        }
                    }
                    Fill::Full => wait.full = true,
                    Fill::Done => {}
                }
            }
        }
        wait
    }

    /// Reports what the connection received and sent.
    fn finish(self, res: &mut ConnResult) {
        res.received = self.recv.received;
        res.out_of_order = self.recv.out_of_order;
        res.foreign = self.recv.foreign;
        res.server_errors = self.recv.server_errors;
        if let Some(s) = self.sender {
            res.sent = s.next_seq;
            res.unsent = s.ends.len() as u64;
            res.last_send_ns = s.last_send_ns;
            res.lag = Some(s.lag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_offsets_stay_absolute() {
        let mut out = Out::new();
        out.buf.extend_from_slice(b"abcdef");
        out.pos = 2;
        out.reclaim();
        assert_eq!((out.buf.len(), out.base), (6, 0));
        out.compact();
        assert_eq!((&out.buf[..], out.pos, out.base), (&b"cdef"[..], 0, 2));
        assert_eq!(out.pending(), 4);
        out.pos = 4;
        out.reclaim();
        assert_eq!((out.buf.len(), out.pos, out.base), (0, 0, 6));
        out.compact();
        assert_eq!(out.base, 6);
    }

    #[test]
    fn wake_keeps_the_earliest_time() {
        let mut w = Wait::default();
        w.wake_at(50);
        w.wake_at(70);
        assert_eq!(w.wake, Some(50));
        w.wake_at(20);
        assert_eq!(w.wake, Some(20));
    }
}
