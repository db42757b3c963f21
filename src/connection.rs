//! One task per client socket: the handshake, then one poll function that reads lines into the
//! session and writes what the room has for this client, until either side ends it.
//!
//! A connection that is idle holds no buffers: reads go to a per-thread buffer, writes are
//! copied from the room into a per-thread scratch buffer and written at once, and only bytes the
//! socket would not take are kept (in `pending`, bounded by the slow-consumer limit and freed
//! once written). Reading and writing are independent, so a client that never reads can still
//! be read from, and one that floods is paced without slowing its own deliveries. After the
//! handshake a connection moves to the runtime (thread) that serves its room.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, Sleep};
use tracing::{debug, info};

use crate::codec::{Flow, HandshakeDecoder, HandshakeStatus, Item, LineCodec};
use crate::context::{Greeted, Greeting, Handoff, Shared, TransportSettings};
use crate::lifecycle::{self, Ending, Entry, Link};
use crate::limits::{IdleTimer, SeatPass, Ticket};
use crate::metrics::Transport;
use crate::protocol::{parse_handshake, Format, Handshake, Reply};
use crate::refusal::{Notice, Refusal};
use crate::room::Take;
use crate::session::{End, Next, RateLimit, Session};
use crate::transport::{Io, READ_CHUNK};

/// Most bytes copied out of a room for one write.
const WRITE_CHUNK: usize = 64 * 1024;
/// Chunks written in one round.
const WRITES_PER_TURN: usize = 8;

/// Rounds of read-and-write in one poll before yielding to other connections.
const TURNS_PER_POLL: usize = 16;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(WRITE_CHUNK + 1024));
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(READ_CHUNK));
}

thread_local! {
    /// Which of the server's runtimes this thread drives.
    static RUNTIME: Cell<usize> = const { Cell::new(0) };
}

/// Records which runtime the current thread drives (at the thread's start).
pub fn set_runtime_index(i: usize) {
    RUNTIME.with(|r| r.set(i));
}

/// Serves a client of the TLS port: the TLS handshake (within the handshake timeout, which
/// covers the whole greeting: a client that never completes it costs one timer), then as any
/// other client.
pub async fn serve_tls(
    stream: TcpStream,
    addr: SocketAddr,
    ctx: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    ticket: Ticket,
) {
    let Some(acceptor) = ctx.tls.clone() else {
        return;
    };
    let started = tokio::time::Instant::now();
    let tls = match tokio::time::timeout(ctx.transport.handshake_timeout, acceptor.accept(stream))
        .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            info!(%addr, reason = %Ending::Tls(e.to_string()), "disconnect");
            crate::metrics::handshake_rejected("tls");
            return;
        }
        Err(_) => {
            info!(%addr, reason = %Ending::Tls(Refusal::HandshakeTimeout.to_string()), "disconnect");
            crate::metrics::handshake_rejected("tls");
            return;
        }
    };
    let left = ctx
        .transport
        .handshake_timeout
        .saturating_sub(started.elapsed());
    serve_within(tls, addr, ctx, shutdown, ticket, left).await;
}

/// Serves one client from its first byte to its close. (Not an `async fn` itself: a layer of
/// async fn would keep its own copy of the arguments in every connection's task.)
pub fn serve<S: Io>(
    stream: S,
    addr: SocketAddr,
    ctx: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    ticket: Ticket,
) -> impl Future<Output = ()> + Send {
    let within = ctx.transport.handshake_timeout;
    serve_within(stream, addr, ctx, shutdown, ticket, within)
}

async fn serve_within<S: Io>(
    stream: S,
    addr: SocketAddr,
    ctx: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    ticket: Ticket,
    within: Duration,
) {
    // The greeting (handshake), joining and closing are boxed: their timers and buffers are
    // needed for moments, and would otherwise sit in every connection's task for its life.
    let greeting = Box::pin(greet(stream, addr, &ctx, shutdown, within)).await;
    let Some((stream, id, hs, leftover)) = greeting else {
        return;
    };
    let rest = Greeting {
        addr,
        ticket,
        id,
        hs,
        leftover,
    };
    // A version-2 client without a room in its handshake stays where it was accepted.
    let home = rest
        .hs
        .room
        .as_deref()
        .map_or(RUNTIME.with(Cell::get), |room| ctx.home_of(room));
    if home != RUNTIME.with(Cell::get) && stream.movable() {
        match stream.into_std() {
            Ok(stream) => {
                ctx.hand_over(home, Handoff::Greeted(Box::new(Greeted { stream, rest })));
            }
            Err(e) => info!(id, %addr, reason = %format_args!("i/o error: {e}"), "disconnect"),
        }
        return;
    }
    serve_greeted(stream, rest, ctx).await;
}

/// Serves a client that sent a valid handshake, on the runtime that serves its room.
pub async fn serve_greeted<S: Io>(stream: S, rest: Greeting, ctx: Arc<Shared>) {
    let Greeting {
        addr,
        ticket,
        id,
        hs,
        leftover,
    } = rest;
    let pass = ticket.seat_pass();
    let Some(conn) = Box::pin(join(stream, addr, &ctx, id, hs, leftover, pass)).await else {
        return;
    };
    // The connection's life is a task of its own, holding only what it needs: a task that
    // went through the greeting would keep the greeting's arguments for as long.
    tokio::spawn(lifecycle::live(conn, addr, ticket, ctx));
}

/// Reads and checks the handshake, or refuses the client with a reason.
async fn greet<S: Io>(
    mut stream: S,
    addr: SocketAddr,
    ctx: &Shared,
    mut shutdown: watch::Receiver<bool>,
    within: Duration,
) -> Option<(S, u64, Handshake, Vec<u8>)> {
    let id = ctx.next_id();
    let tls = stream.is_tls();
    info!(id, %addr, tls, "connect");
    let handshake = handshake(&mut stream, &ctx.transport, &mut shutdown, within).await;
    let (value, leftover) = match handshake {
        Ok(done) => done,
        Err(reason) => {
            info!(id, %addr, reason = %reason, "disconnect");
            if let Ending::Refused(text) = &reason {
                crate::metrics::handshake_rejected(crate::metrics::rejection_reason(text));
                refuse(stream, Format::Text, text).await;
            }
            return None;
        }
    };
    // A program that asked for JSON gets its refusal in JSON too; version 2 is JSON unless
    // it asked for something else.
    let asked = value.get("format").filter(|f| !f.is_null());
    let version2 = value.get("version").and_then(serde_json::Value::as_u64) == Some(2);
    let format = if asked.and_then(serde_json::Value::as_str) == Some("json")
        || (version2 && asked.is_none())
    {
        Format::Json
    } else {
        Format::Text
    };
    let checked = match parse_handshake(value) {
        Ok(hs) => lifecycle::authenticate(ctx, id, addr, &hs)
            .await
            .map(|()| hs),
        Err(text) => Err(lifecycle::refused(id, addr, Refusal::Handshake(text))),
    };
    match checked {
        Ok(hs) => Some((stream, id, hs, leftover)),
        Err(refusal) => {
            refuse(stream, format, &refusal.to_string()).await;
            None
        }
    }
}

/// Joins the room, unless the name is taken there.
async fn join<S: Io>(
    stream: S,
    addr: SocketAddr,
    ctx: &Shared,
    id: u64,
    hs: Handshake,
    leftover: Vec<u8>,
    pass: SeatPass,
) -> Option<Connection<S>> {
    let transport = if stream.is_tls() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    let format = hs.format;
    let entry = Entry {
        format,
        limit: RateLimit::new(ctx.transport.line_rate, ctx.transport.line_burst),
        transport,
        pass,
    };
    let session = match lifecycle::enter(ctx, id, addr, hs, entry).await {
        Ok(session) => session,
        Err(refusal) => {
            refuse(stream, format, &refusal.to_string()).await;
            return None;
        }
    };
    // Lines sent while the replay goes out wait their turn.
    let replaying = session.replaying();
    let mut pending = Vec::new();
    session.welcome(&mut pending);
    let mut conn = Connection {
        stream,
        transport,
        session,
        codec: LineCodec::new(ctx.transport.max_line),
        pending,
        out: Out::Ready,
        throttle: None,
        idle: IdleTimer::new(ctx.transport.idle_timeout),
        end: None,
    };
    if replaying {
        conn.codec.hold(&leftover);
    } else {
        conn.feed(&leftover);
    }
    Some(conn)
}

/// Sends `*** error: REASON` (or its JSON form) and closes.
async fn refuse<S: Io>(stream: S, format: Format, text: &str) {
    let mut line = Vec::new();
    Reply::Error(text).render(format, &mut line);
    finish(stream, line, Duration::from_secs(2), true).await;
}

/// Reads until the first JSON value is complete, or the limits say no.
async fn handshake<S: Io>(
    stream: &mut S,
    settings: &TransportSettings,
    shutdown: &mut watch::Receiver<bool>,
    within: Duration,
) -> Result<(serde_json::Value, Vec<u8>), Ending> {
    let deadline = sleep_until(tokio::time::Instant::now() + within);
    tokio::pin!(deadline);
    let mut decoder = HandshakeDecoder::new(settings.max_handshake);
    // Each read goes to the per-thread buffer and straight into the decoder: a connection in
    // its handshake holds only what the decoder keeps (thousands may be at once).
    let mut read_some = |cx: &mut Context<'_>| {
        READ_BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            buf.clear();
            match std::task::ready!(stream.poll_read_some(cx, &mut buf)) {
                Ok(0) => Poll::Ready(Err(Ending::ClosedByClient)),
                Err(e) => Poll::Ready(Err(Ending::Io(e.to_string()))),
                Ok(_) => Poll::Ready(match decoder.feed(&buf) {
                    HandshakeStatus::Incomplete => Ok(None),
                    HandshakeStatus::Invalid(e) => Err(Ending::Refused(e)),
                    HandshakeStatus::Done(value, used) => Ok(Some((value, buf[used..].to_vec()))),
                }),
            }
        })
    };
    loop {
        tokio::select! {
            _ = &mut deadline => return Err(Ending::Refused(Refusal::HandshakeTimeout.to_string())),
            _ = shutdown.changed() => return Err(Ending::Shutdown),
            read = std::future::poll_fn(&mut read_some) => {
                if let Some(done) = read? {
                    return Ok(done);
                }
            }
        }
    }
}

/// Where the outbound side stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    /// Nothing to send; the room will wake us.
    Idle,
    /// The socket is full; wait until it is writable.
    Blocked,
    /// More may be waiting: look again.
    Ready,
}

struct Connection<S> {
    stream: S,
    transport: Transport,
    session: Session,
    codec: LineCodec,
    /// Bytes taken from the room that the socket did not accept yet.
    pending: Vec<u8>,
    out: Out,
    /// While the client is over its line rate: when to read again (boxed, as few are).
    throttle: Option<Pin<Box<Sleep>>>,
    /// With `--idle-timeout`: when the client last sent something.
    idle: Option<IdleTimer>,
    end: Option<End>,
}

impl<S: Io> Link for Connection<S> {
    fn poll_run(&mut self, cx: &mut Context<'_>, ctx: &Shared) -> Poll<Ending> {
        Connection::poll_run(self, cx, ctx)
    }

    fn session(&self) -> &Session {
        &self.session
    }

    fn close(self, ending: Ending) -> impl Future<Output = ()> + Send {
        Connection::close(self, ending)
    }
}

impl<S: Io> Connection<S> {
    /// Drives both directions. The task's waker sits in the socket's read and write slots and
    /// in the member's room slot, so an idle connection costs no future and no wake-up list
    /// entry, and a room wakes exactly the members that were waiting.
    fn poll_run(&mut self, cx: &mut Context<'_>, ctx: &Shared) -> Poll<Ending> {
        // Any wake-up may be the room's: look at the room once per poll. A connection blocked
        // on a full socket is not taking from the room, so ask whether it was cut off.
        match self.out {
            Out::Idle => self.out = Out::Ready,
            Out::Blocked if !self.session.present() => {
                return Poll::Ready(Ending::Ended(End::SlowConsumer));
            }
            _ => {}
        }
        for _ in 0..TURNS_PER_POLL {
            if let Some(end) = self.end.take() {
                return Poll::Ready(Ending::Ended(end));
            }
            if ctx.is_shutting_down() {
                return Poll::Ready(Ending::Shutdown);
            }
            let mut progress = false;
            if let Poll::Ready(answered) = self.session.poll_wait(cx, &mut self.pending) {
                match answered {
                    Ok(None) => {}
                    Ok(Some(end)) => return Poll::Ready(Ending::Ended(end)),
                    Err(_) => return Poll::Ready(Ending::Ended(End::SlowConsumer)),
                }
                if self.out == Out::Idle {
                    self.out = Out::Ready;
                }
                if !self.session.waiting() {
                    self.resume();
                }
                progress = true;
            }
            if let Some(sleep) = self.throttle.as_mut() {
                if sleep.as_mut().poll(cx).is_ready() {
                    self.throttle = None;
                    if !self.session.waiting() {
                        self.resume();
                    }
                    progress = true;
                }
            }
            if self.idle.as_mut().is_some_and(|idle| idle.poll_expired(cx)) {
                return Poll::Ready(Ending::broke(Refusal::IdleTimeout));
            }
            let waiting = self.throttle.is_some() || self.session.waiting();
            if !waiting && !self.codec.is_paused() {
                match self.read(cx) {
                    Poll::Ready(Ok(true)) => progress = true,
                    Poll::Ready(Ok(false)) => return Poll::Ready(Ending::ClosedByClient),
                    Poll::Ready(Err(e)) => return Poll::Ready(Ending::Io(e.to_string())),
                    Poll::Pending => {}
                }
            }
            if self.out != Out::Idle {
                match self.flush(cx) {
                    Ok(wrote) => progress |= wrote,
                    Err(e) => return Poll::Ready(Ending::Io(e.to_string())),
                }
            }
            if !progress {
                // Shutdown may have woken every room's members just before we put our waker
                // in ours: look once more now that it is there.
                if ctx.is_shutting_down() {
                    return Poll::Ready(Ending::Shutdown);
                }
                return Poll::Pending;
            }
        }
        // Enough for one turn: let the other connections run, and come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// One read, into a per-thread buffer. Ready(false) at the end of the stream.
    fn read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        READ_BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            buf.clear();
            match self.stream.poll_read_some(cx, &mut buf) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => Poll::Ready(Ok(false)),
                Poll::Ready(Ok(_)) => {
                    if let Some(idle) = self.idle.as_mut() {
                        idle.touch();
                    }
                    self.feed(&buf);
                    Poll::Ready(Ok(true))
                }
            }
        })
    }

    fn feed(&mut self, bytes: &[u8]) {
        let mut handler = LineHandler::new(&mut self.session, &mut self.pending);
        self.codec.feed(bytes, &mut |item| handler.item(item));
        let next = handler.next;
        self.after_lines(next);
    }

    fn resume(&mut self) {
        let mut handler = LineHandler::new(&mut self.session, &mut self.pending);
        self.codec.resume(&mut |item| handler.item(item));
        let next = handler.next;
        self.after_lines(next);
    }

    fn after_lines(&mut self, next: Next) {
        match next {
            Next::Continue => {}
            Next::Throttle(until) => self.throttle = Some(Box::pin(sleep_until(until.into()))),
            // The session waits for a /history answer; poll_run picks it up.
            Next::Wait => {}
            Next::End(end) => self.end = Some(end),
        }
        // A command may have moved us to another room (whose wake-up list we are not on) or
        // handed us bytes from the room we left: look for output without waiting to be woken.
        if self.out == Out::Idle {
            self.out = Out::Ready;
        }
    }

    /// Writes what is waiting for this client, without ever waiting for the socket: `Blocked`
    /// when it is full, `Idle` (with the waker left with the room) when there is nothing more.
    /// Returns whether anything moved.
    fn flush(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let mut moved = false;
        for _ in 0..WRITES_PER_TURN {
            if !self.pending.is_empty() {
                match self.stream.poll_write_some(cx, &self.pending) {
                    Poll::Ready(Ok(n)) => {
                        crate::metrics::bytes_out(self.transport, n);
                        self.pending.drain(..n);
                        moved = true;
                    }
                    Poll::Pending => {
                        self.out = Out::Blocked;
                        // Cut off while the socket is full? The rooms must be able to say so.
                        self.session.watch(cx.waker());
                        return Ok(moved);
                    }
                    Poll::Ready(Err(e)) => return Err(e),
                }
                if self.pending.is_empty() {
                    self.pending = Vec::new();
                }
                continue;
            }
            let session = &mut self.session;
            let (stream, pending, transport) =
                (&mut self.stream, &mut self.pending, self.transport);
            let taken = SCRATCH.with(|scratch| -> io::Result<Take> {
                let mut scratch = scratch.borrow_mut();
                scratch.clear();
                let taken = session.take(&mut scratch, WRITE_CHUNK, cx.waker());
                if matches!(taken, Take::Data | Take::Drained) {
                    match stream.poll_write_some(cx, &scratch) {
                        Poll::Ready(Ok(n)) => {
                            crate::metrics::bytes_out(transport, n);
                            pending.extend_from_slice(&scratch[n..]);
                        }
                        Poll::Pending => pending.extend_from_slice(&scratch),
                        Poll::Ready(Err(e)) => return Err(e),
                    }
                }
                Ok(taken)
            })?;
            match taken {
                Take::Data | Take::Drained if !self.pending.is_empty() => moved = true,
                Take::Data => moved = true,
                // All taken, and the socket took it all too: wait for the room.
                Take::Drained => {
                    self.out = Out::Idle;
                    return self.flush_out(cx).map(|()| true);
                }
                Take::Empty => {
                    self.out = Out::Idle;
                    return self.flush_out(cx).map(|()| moved);
                }
                Take::Gone => {
                    self.end = Some(End::SlowConsumer);
                    self.out = Out::Idle;
                    return Ok(true);
                }
            }
        }
        self.out = Out::Ready;
        Ok(true)
    }

    /// Pushes out what the stream buffered itself (TLS records); if the socket is full, its
    /// readiness wakes the task, which then flushes again.
    fn flush_out(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.stream.poll_flush_out(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Ok(()),
        }
    }

    /// Leaves the room and says goodbye: what was still unread, then the last line.
    async fn close(mut self, reason: Ending) {
        let format = self.session.format;
        let mut out = std::mem::take(&mut self.pending);
        let announce = !matches!(reason, Ending::Shutdown);
        let told = match &reason {
            Ending::Broke(refusal) => refusal.to_string(),
            _ => String::new(),
        };
        let last = match &reason {
            Ending::Ended(End::SlowConsumer) | Ending::Io(_) => {
                // Don't wait for a client that is not reading: one attempt at the error line.
                self.session.leave(&mut Vec::new(), announce);
                if matches!(reason, Ending::Ended(End::SlowConsumer)) {
                    let mut line = Vec::new();
                    Reply::Error(&Refusal::SlowConsumer.to_string()).render(format, &mut line);
                    let mut cx = Context::from_waker(Waker::noop());
                    let _ = self.stream.poll_write_some(&mut cx, &line);
                    let _ = self.stream.poll_flush_out(&mut cx);
                }
                return;
            }
            Ending::Shutdown => Some(Reply::Notice(Notice::ShuttingDown.text())),
            Ending::Broke(_) => Some(Reply::Error(&told)),
            _ => None,
        };
        self.session.leave(&mut out, announce);
        if let Some(reply) = last {
            reply.render(format, &mut out);
        }
        let linger = matches!(reason, Ending::Ended(End::Quit));
        finish(self.stream, out, Duration::from_secs(3), linger).await;
    }
}

/// Hands lines from the codec to the session and stops at the first thing that needs the
/// connection (a throttle, an end).
struct LineHandler<'a> {
    session: &'a mut Session,
    pending: &'a mut Vec<u8>,
    now: Instant,
    next: Next,
}

impl<'a> LineHandler<'a> {
    fn new(session: &'a mut Session, pending: &'a mut Vec<u8>) -> Self {
        LineHandler {
            session,
            pending,
            now: Instant::now(),
            next: Next::Continue,
        }
    }

    fn item(&mut self, item: Item<'_>) -> Flow {
        self.next = match item {
            Item::Line(line) => self.session.on_line(line, self.now, self.pending),
            Item::TooLong => self.session.line_too_long(self.pending),
        };
        if self.next == Next::Continue {
            Flow::Continue
        } else {
            Flow::Pause
        }
    }
}

/// Writes the last bytes (bounded by `within`), closes our side, and then reads and discards
/// what the client still sends for a moment, so that closing with unread input does not reset
/// the connection before the client has read our last line.
pub async fn finish<S: Io>(mut stream: S, bytes: Vec<u8>, within: Duration, linger: bool) {
    if !bytes.is_empty() {
        if let Err(e) = tokio::time::timeout(within, stream.write_all(&bytes)).await {
            debug!("last write timed out: {e}");
            return;
        }
    }
    let _ = stream.shutdown().await;
    if linger {
        let mut sink = [0u8; 1024];
        let drain = async {
            let mut total = 0usize;
            while let Ok(n) = stream.read(&mut sink).await {
                total += n;
                if n == 0 || total > 64 * 1024 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
    }
}
