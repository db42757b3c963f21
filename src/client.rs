//! The one poll loop every joined client runs, whatever its transport: messages from the
//! client into the session, the session's lines out to the client, its timers, and its end.
//!
//! A transport is a [`Wire`]: it turns its bytes into messages (a line of a TCP stream, the
//! text of a WebSocket frame) and whole lines of the session's output into its bytes (written
//! as they are, or one text frame each). It never sees rooms, claims or the store; the
//! [`Client`] loop never sees framing. So a rule of the chat lives in the session, a rule of
//! the loop (pacing, cut-off, idle timeout, shutdown) here, and each transport only in its
//! adapter: `connection` (TCP and TLS) and `web::ws`.
//!
//! The loop keeps what makes a connection cheap: the task's waker sits in the socket's slots
//! and in the rooms' (no `select!`, no future per event), reads go to the adapter's per-thread
//! buffer, what the rooms hold is copied into a per-thread scratch buffer and written at once,
//! and only what the socket would not take is kept (`pending`, freed once written). An idle
//! member holds no buffer.

use std::cell::RefCell;
use std::fmt::Display;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::time::{sleep_until, Sleep};

use crate::codec::Flow;
use crate::context::Shared;
use crate::limits::IdleTimer;
use crate::protocol::Format;
use crate::refusal::Refusal;
use crate::room::{Parting, Take};
use crate::session::{End, Next, Session};

/// Most bytes copied out of the rooms for one write.
const WRITE_CHUNK: usize = 64 * 1024;
/// Chunks written in one round.
const WRITES_PER_TURN: usize = 8;
/// Rounds of read-and-write in one poll before yielding to other connections.
const TURNS_PER_POLL: usize = 16;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(WRITE_CHUNK + 1024));
}

/// Why a connection ended, whatever its transport: for the log, the metrics and the
/// client's last words (which each transport puts in its own form).
#[derive(Debug)]
pub enum Ending {
    /// Refused before or at the handshake; the text is the client's error.
    Refused(String),
    /// The client broke a rule of its transport (a WebSocket frame too long or binary, a
    /// frame flood) or went silent past `--idle-timeout`: told why, then closed. Boxed: every
    /// connection keeps room for an `Ending` while it lives, and most never break a rule.
    Broke(Box<Refusal>),
    ClosedByClient,
    Ended(End),
    Shutdown,
    /// The TLS handshake failed or did not finish in time.
    Tls(String),
    Io(String),
}

impl Ending {
    pub fn broke(refusal: Refusal) -> Self {
        Ending::Broke(Box::new(refusal))
    }
}

impl Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::Refused(r) => write!(f, "refused: {r}"),
            Ending::Broke(r) => write!(f, "{r}"),
            Ending::ClosedByClient => write!(f, "closed by client"),
            Ending::Ended(End::Quit) => write!(f, "quit"),
            Ending::Ended(End::SlowConsumer) => write!(f, "slow consumer: outbound queue full"),
            Ending::Ended(End::Removed) => write!(f, "closed out of the room by a moderator"),
            Ending::Shutdown => write!(f, "server shutting down"),
            Ending::Tls(e) => write!(f, "tls: {e}"),
            Ending::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

/// One message from the client, as its transport frames it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    /// One line of a line stream, without its line ending.
    Line(&'a [u8]),
    /// A line of a line stream passed `--max-line`; the rest of it was discarded.
    TooLong,
    /// One message that may span lines (a WebSocket text frame).
    Message(&'a [u8]),
}

/// A transport, seen from the client loop: messages in, whole lines out (see the module doc).
pub trait Wire: Send + 'static {
    /// Reads what the client sent and hands each message to `on`, stopping at the first one
    /// `on` pauses at: what was read after it is held for [`Wire::resume`]. Ready(Ok) when
    /// the client sent anything at all (a WebSocket ping counts: the client is there);
    /// Ready(Err) when the connection ends here (closed, a rule of the transport broken, an
    /// i/o error). Pending with the waker left in the socket.
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        on: &mut dyn FnMut(Input<'_>) -> Flow,
    ) -> Poll<Result<(), Ending>>;

    /// Hands out what a pause held, as [`Wire::poll_read`] would.
    fn resume(&mut self, _on: &mut dyn FnMut(Input<'_>) -> Flow) {}

    /// True while messages already read wait for [`Wire::resume`]: read no more until then.
    fn is_paused(&self) -> bool {
        false
    }

    /// Writes some of `lines` (whole `\n`-terminated lines of the session's output) and
    /// returns how many bytes it took; Pending (with the waker left) when it takes none.
    fn poll_write(&mut self, cx: &mut Context<'_>, lines: &[u8]) -> Poll<io::Result<usize>>;

    /// Pushes out what the transport buffered itself (TLS records, WebSocket frames).
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// The transport's own timers (a WebSocket's pings); true when one did something.
    fn poll_keepalive(&mut self, _cx: &mut Context<'_>) -> bool {
        false
    }

    /// Whether what is left for the client may still reach it after `ending`: a TCP client
    /// that shut its side down still reads; one whose WebSocket closed does not.
    fn reachable_after(&self, ending: &Ending) -> bool;

    /// Sends `out` (whole lines) and the last words for `ending` in the transport's form,
    /// bounded in time, and closes.
    fn goodbye(
        self,
        out: Vec<u8>,
        ending: Ending,
        format: Format,
    ) -> impl Future<Output = ()> + Send;
}

/// Where the outbound side stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    /// Nothing to send; the rooms will wake us.
    Idle,
    /// The socket is full; wait until it is writable.
    Blocked,
    /// More may be waiting: look again.
    Ready,
}

/// A joined client: its session on its transport (see the module doc).
pub struct Client<W> {
    wire: W,
    session: Session,
    /// Lines for the client that the socket did not take yet.
    pending: Vec<u8>,
    out: Out,
    /// While the client is over its line rate: when to read again (boxed, as few are).
    throttle: Option<Pin<Box<Sleep>>>,
    /// With `--idle-timeout`: when the client last sent something.
    idle: Option<IdleTimer>,
    end: Option<End>,
}

impl<W: Wire> Client<W> {
    /// The member's first lines are its welcome (version 2); what the client sent with its
    /// handshake and the wire holds is handed to the session now, unless a replay must go
    /// out first.
    pub fn new(wire: W, session: Session, ctx: &Shared) -> Self {
        let mut pending = Vec::new();
        session.welcome(&mut pending);
        let mut member = Client {
            wire,
            session,
            pending,
            out: Out::Ready,
            throttle: None,
            idle: IdleTimer::new(ctx.transport().idle_timeout),
            end: None,
        };
        if !member.session.waiting() {
            member.resume();
        }
        member
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Serves the client until the connection ends. The task's waker sits in the socket's
    /// read and write slots and in the rooms' slots, so an idle member costs no future and no
    /// wake-up list entry, and a room wakes exactly the members that were waiting.
    pub fn poll_run(&mut self, cx: &mut Context<'_>, ctx: &Shared) -> Poll<Ending> {
        // Any wake-up may be a room's: look at the rooms once per poll. A member blocked on
        // a full socket is not taking from them, so ask whether it was cut off.
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
            progress |= self.wire.poll_keepalive(cx);
            let waiting = self.throttle.is_some() || self.session.waiting();
            if !waiting && !self.wire.is_paused() {
                match self.read(cx) {
                    Poll::Ready(Ok(())) => progress = true,
                    Poll::Ready(Err(ending)) => return Poll::Ready(ending),
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

    /// One read's messages into the session.
    fn read(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Ending>> {
        let mut handler = Handler::new(&mut self.session, &mut self.pending);
        let read = self.wire.poll_read(cx, &mut |input| handler.input(input));
        let next = handler.next;
        if read.is_ready() {
            if let Some(idle) = self.idle.as_mut() {
                idle.touch();
            }
            self.after_input(next);
        }
        read
    }

    /// Hands the session what a pause held.
    fn resume(&mut self) {
        let mut handler = Handler::new(&mut self.session, &mut self.pending);
        self.wire.resume(&mut |input| handler.input(input));
        let next = handler.next;
        self.after_input(next);
    }

    fn after_input(&mut self, next: Next) {
        match next {
            Next::Continue => {}
            Next::Throttle(until) => self.throttle = Some(Box::pin(sleep_until(until.into()))),
            // The session waits for an answer (a replay, the cluster); poll_run picks it up.
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
    /// when it is full, `Idle` (with the waker left with the rooms) when there is nothing
    /// more. Returns whether anything moved.
    fn flush(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let mut moved = false;
        for _ in 0..WRITES_PER_TURN {
            if !self.pending.is_empty() {
                match self.wire.poll_write(cx, &self.pending) {
                    Poll::Ready(Ok(n)) => {
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
            let (session, wire, pending) = (&mut self.session, &mut self.wire, &mut self.pending);
            let taken = SCRATCH.with(|scratch| -> io::Result<Take> {
                let mut scratch = scratch.borrow_mut();
                scratch.clear();
                let taken = session.take(&mut scratch, WRITE_CHUNK, cx.waker());
                if matches!(taken, Take::Data | Take::Drained) {
                    match wire.poll_write(cx, &scratch) {
                        Poll::Ready(Ok(n)) => pending.extend_from_slice(&scratch[n..]),
                        Poll::Pending => pending.extend_from_slice(&scratch),
                        Poll::Ready(Err(e)) => return Err(e),
                    }
                }
                Ok(taken)
            })?;
            match taken {
                Take::Data | Take::Drained if !self.pending.is_empty() => moved = true,
                Take::Data => moved = true,
                // All taken, and the socket took it all too: wait for the rooms.
                Take::Drained => {
                    self.out = Out::Idle;
                    return self.flush_wire(cx).map(|()| true);
                }
                Take::Empty => {
                    self.out = Out::Idle;
                    return self.flush_wire(cx).map(|()| moved);
                }
                Take::Parted => {
                    self.end = Some(End::Removed);
                    self.out = Out::Idle;
                    return Ok(true);
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

    /// Pushes out what the transport buffered; if the socket is full, its readiness wakes the
    /// task, which then flushes again.
    fn flush_wire(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.wire.poll_flush(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Ok(()),
        }
    }

    /// Leaves the rooms and says goodbye: what was still unread (if it can still reach the
    /// client), then the transport's last words.
    pub async fn close(mut self, ending: Ending) {
        let format = self.session.format;
        // A connection that closed or dropped may be back in a moment (a reload, a network
        // change): its rooms wait for the leave grace before they are told. A `/quit`, a
        // broken rule, a cut-off and a kick are told at once; a shutdown not at all.
        let how = match ending {
            Ending::Shutdown => Parting::Silent,
            Ending::ClosedByClient | Ending::Io(_) => Parting::Lost,
            _ => Parting::Told,
        };
        let mut out = std::mem::take(&mut self.pending);
        if self.wire.reachable_after(&ending) {
            self.session.leave(&mut out, how);
        } else {
            self.session.leave(&mut Vec::new(), how);
            out = Vec::new();
        }
        self.wire.goodbye(out, ending, format).await;
    }
}

/// Hands messages to the session and stops at the first thing that needs the loop (a
/// throttle, a wait, an end).
struct Handler<'a> {
    session: &'a mut Session,
    pending: &'a mut Vec<u8>,
    now: Instant,
    next: Next,
}

impl<'a> Handler<'a> {
    fn new(session: &'a mut Session, pending: &'a mut Vec<u8>) -> Self {
        Handler {
            session,
            pending,
            now: Instant::now(),
            next: Next::Continue,
        }
    }

    fn input(&mut self, input: Input<'_>) -> Flow {
        self.next = match input {
            Input::Line(line) => self.session.on_line(line, self.now, self.pending),
            Input::TooLong => self.session.line_too_long(self.pending),
            Input::Message(text) => self.session.on_message(text, self.now, self.pending),
        };
        if self.next == Next::Continue {
            Flow::Continue
        } else {
            Flow::Pause
        }
    }
}
