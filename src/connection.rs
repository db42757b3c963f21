//! TCP and TLS clients: the handshake in their framing (one JSON value, then lines), then the
//! shared client loop (`client`) over a [`Wire`] that cuts the byte stream into lines and
//! writes the session's lines as they are.
//!
//! A connection in its handshake holds only what the handshake decoder keeps: reads go to a
//! per-thread buffer. After the handshake a connection moves to the runtime (thread) that
//! serves its room, so a room's members share a thread with it.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::sleep_until;
use tracing::{debug, info};

use crate::client::{Client, Ending, Input, Wire};
use crate::codec::{Flow, HandshakeDecoder, HandshakeStatus, Item, LineCodec};
use crate::context::{Greeted, Greeting, Handoff, Shared};
use crate::lifecycle::{self, Entry};
use crate::limits::{SeatPass, Ticket, Waiting};
use crate::metrics::Transport;
use crate::protocol::{parse_handshake, Format, Handshake, Reply};
use crate::refusal::{Notice, Refusal};
use crate::session::{End, RateLimit};
use crate::settings::TransportSettings;
use crate::sniff::HttpHead;
use crate::transport::{Io, READ_CHUNK};

thread_local! {
    /// Where every read lands before its lines go to the session (see the module doc).
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
    // Counted from before the TLS handshake, which a slow client may drag out as well. Over
    // the limit there is no TLS session yet to say why in (as at the connection limits).
    let waiting = match ticket.start_handshake() {
        Ok(waiting) => waiting,
        Err(refusal) => {
            info!(%addr, reason = %refusal, "disconnect: refused");
            crate::metrics::handshake_rejected(crate::metrics::rejection_reason(
                &refusal.to_string(),
            ));
            return;
        }
    };
    let started = tokio::time::Instant::now();
    let tls = match tokio::time::timeout(ctx.transport().handshake_timeout, acceptor.accept(stream))
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
        .transport()
        .handshake_timeout
        .saturating_sub(started.elapsed());
    serve_within(tls, addr, ctx, shutdown, ticket, (left, Ok(waiting))).await;
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
    let within = ctx.transport().handshake_timeout;
    let waiting = ticket.start_handshake();
    serve_within(stream, addr, ctx, shutdown, ticket, (within, waiting))
}

async fn serve_within<S: Io>(
    stream: S,
    addr: SocketAddr,
    ctx: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    ticket: Ticket,
    (within, waiting): (Duration, Result<Waiting, Refusal>),
) {
    // The greeting (handshake), joining and closing are boxed: their timers and buffers are
    // needed for moments, and would otherwise sit in every connection's task for its life.
    let greeting = Box::pin(greet(stream, addr, &ctx, shutdown, (within, waiting))).await;
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

/// Reads and checks the handshake, or refuses the client with a reason. `waiting` is the
/// connection's place among its address's handshakes (`--max-handshakes-per-ip`), or the
/// refusal when there was none left.
async fn greet<S: Io>(
    mut stream: S,
    addr: SocketAddr,
    ctx: &Shared,
    mut shutdown: watch::Receiver<bool>,
    (within, waiting): (Duration, Result<Waiting, Refusal>),
) -> Option<(S, u64, Handshake, Vec<u8>)> {
    let id = ctx.next_id();
    let tls = stream.is_tls();
    info!(id, %addr, tls, "connect");
    let waiting = match waiting {
        Ok(waiting) => waiting,
        Err(refusal) => {
            let text = lifecycle::refused(id, addr, refusal).to_string();
            refuse(stream, Format::Text, &text).await;
            return None;
        }
    };
    let handshake = handshake(&mut stream, &ctx.transport(), &mut shutdown, within).await;
    drop(waiting);
    let (value, leftover) = match handshake {
        Ok(First::Json(value, leftover)) => (value, leftover),
        Ok(First::Http(head)) => {
            info!(id, %addr, reason = "an HTTP request on the chat port", "disconnect");
            crate::metrics::handshake_rejected("http");
            let body = crate::refusal::chat_port_page(web_page(ctx, &head).as_deref());
            let answer = crate::sniff::http_answer(&head, &body);
            finish(stream, answer, Duration::from_secs(2), true).await;
            return None;
        }
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
) -> Option<Client<Tcp<S>>> {
    let transport = if stream.is_tls() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    let format = hs.format;
    let entry = Entry {
        format,
        limit: RateLimit::new(ctx.transport().line_rate, ctx.transport().line_burst),
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
    // What came with the handshake waits until the replay went out.
    let mut codec = LineCodec::new(ctx.transport().max_line);
    codec.hold(&leftover);
    let wire = Tcp {
        stream,
        codec,
        transport,
    };
    Some(Client::new(wire, session, ctx))
}

/// Sends `*** error: REASON` (or its JSON form) and closes.
async fn refuse<S: Io>(stream: S, format: Format, text: &str) {
    let mut line = Vec::new();
    Reply::Error(text).render(format, &mut line);
    finish(stream, line, Duration::from_secs(2), true).await;
}

/// Where a browser that came to a chat port finds the page: the web side's first address,
/// or, when that is a wildcard (`0.0.0.0`, `[::]`), the host the browser asked for (cleaned by
/// `sniff`) with the web port; `https` when the server has a certificate (the web side serves
/// HTTPS with it). None when the web side is off.
fn web_page(ctx: &Shared, head: &HttpHead) -> Option<String> {
    let web = ctx.web_addrs.first()?;
    let host = match web.ip().is_unspecified() {
        true => head.host.clone().unwrap_or_else(|| "HOST".to_owned()),
        false => match web.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        },
    };
    let scheme = if ctx.tls.is_some() { "https" } else { "http" };
    Some(format!("{scheme}://{host}:{}/", web.port()))
}

/// What a connection's first bytes were: a handshake (and what came after it), or an HTTP
/// request (a browser on the chat port).
enum First {
    Json(serde_json::Value, Vec<u8>),
    Http(HttpHead),
}

/// Reads until the first JSON value is complete (or an HTTP request head), or the limits say
/// no.
async fn handshake<S: Io>(
    stream: &mut S,
    settings: &TransportSettings,
    shutdown: &mut watch::Receiver<bool>,
    within: Duration,
) -> Result<First, Ending> {
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
                    HandshakeStatus::Http(head) => Ok(Some(First::Http(head))),
                    HandshakeStatus::Done(value, used) => {
                        Ok(Some(First::Json(value, buf[used..].to_vec())))
                    }
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

/// A TCP or TLS client's side of the client loop: bytes cut into lines on the way in,
/// lines written as they are on the way out.
struct Tcp<S> {
    stream: S,
    codec: LineCodec,
    transport: Transport,
}

impl<S: Io> Wire for Tcp<S> {
    /// One read, into a per-thread buffer, its lines handed out.
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        on: &mut dyn FnMut(Input<'_>) -> Flow,
    ) -> Poll<Result<(), Ending>> {
        READ_BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            buf.clear();
            match ready!(self.stream.poll_read_some(cx, &mut buf)) {
                Err(e) => Poll::Ready(Err(Ending::Io(e.to_string()))),
                Ok(0) => Poll::Ready(Err(Ending::ClosedByClient)),
                Ok(_) => {
                    self.codec.feed(&buf, &mut |item| on(line_input(item)));
                    Poll::Ready(Ok(()))
                }
            }
        })
    }

    fn resume(&mut self, on: &mut dyn FnMut(Input<'_>) -> Flow) {
        self.codec.resume(&mut |item| on(line_input(item)));
    }

    fn is_paused(&self) -> bool {
        self.codec.is_paused()
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, lines: &[u8]) -> Poll<io::Result<usize>> {
        let written = ready!(self.stream.poll_write_some(cx, lines))?;
        crate::metrics::bytes_out(self.transport, written);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream.poll_flush_out(cx)
    }

    /// A client that shut down its side may still read (`nc -N`): it gets what was left.
    fn reachable_after(&self, ending: &Ending) -> bool {
        !matches!(ending, Ending::Ended(End::SlowConsumer) | Ending::Io(_))
    }

    /// What was still unread, then the last line; a client that is not reading gets one
    /// attempt at its error line, and is not waited for.
    async fn goodbye(mut self, mut out: Vec<u8>, ending: Ending, format: Format) {
        match &ending {
            Ending::Ended(End::SlowConsumer) => {
                let mut line = Vec::new();
                Reply::Error(&Refusal::SlowConsumer.to_string()).render(format, &mut line);
                let mut cx = Context::from_waker(Waker::noop());
                let _ = self.stream.poll_write_some(&mut cx, &line);
                let _ = self.stream.poll_flush_out(&mut cx);
                return;
            }
            Ending::Io(_) => return,
            Ending::Shutdown => Reply::Notice(Notice::ShuttingDown.text()).render(format, &mut out),
            Ending::Broke(refusal) => Reply::Error(&refusal.to_string()).render(format, &mut out),
            _ => {}
        }
        let linger = matches!(ending, Ending::Ended(End::Quit | End::Removed));
        finish(self.stream, out, Duration::from_secs(3), linger).await;
    }
}

fn line_input(item: Item<'_>) -> Input<'_> {
    match item {
        Item::Line(line) => Input::Line(line),
        Item::TooLong => Input::TooLong,
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

#[cfg(test)]
mod tests {
    /// Every idle TCP member's task holds this future: the client once, not twice as an
    /// `async fn` would (its arguments, then the locals they move into).
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn an_idle_connection_holds_its_client_once() {
        type Member = crate::client::Client<super::Tcp<tokio::net::TcpStream>>;
        let client = std::mem::size_of::<Member>();
        let live = crate::lifecycle::live_size::<super::Tcp<tokio::net::TcpStream>>();
        println!("Client<Tcp>: {client} bytes, live: {live} bytes");
        assert!(live <= client + 160, "{live}");
    }
}
