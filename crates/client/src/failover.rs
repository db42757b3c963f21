//! Failover: with several addresses, a lost connection is replaced by one to the next address,
//! which resumes by message id, while typed lines wait for it.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::args::ClientArgs;
use crate::input::{is_quit_line, read_stdin};
use crate::net::{connect, connect_to, Stream};
use crate::tracker::{Ask, Conn, Tracker};
use crate::Ending;

/// Most typed lines kept while there is no connection to send them on.
const MAX_WAITING_LINES: usize = 1000;
/// Waits between reconnect attempts: from the first, doubling up to the most.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A connect (TCP and TLS) that takes longer is given up, so that one address that swallows
/// packets cannot use up the whole reconnect time.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A server that has spoken machat's JSON before and neither lets us in nor refuses by then is
/// taken for stuck (it answers a handshake as soon as it has read it: a wrong password in about
/// a second).
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);
/// MaChat's Go server says nothing on a join: when no server has ever sent machat's JSON, this
/// long with the connection still open counts as being in.
const QUIET_JOIN: Duration = Duration::from_secs(2);

/// A lost connection being replaced.
struct Outage {
    /// The address that was lost, for the message once we are back.
    lost: String,
    until: Instant,
    backoff: Duration,
    /// The next address to try (an index, taken modulo their number).
    next: usize,
    /// What was said already, so that a retry loop says each problem once.
    said: HashSet<String>,
}

impl Outage {
    fn say(&mut self, what: String) {
        if !self.said.contains(&what) {
            eprintln!("machat-client: {what}");
            self.said.insert(what);
        }
    }
}

/// What comes after a lost connection.
enum Next {
    Connected(usize, Box<dyn Stream>),
    Stop(Ending),
}

/// How one connection ended.
enum End {
    /// The user is done (`/quit`, or input over and all of it sent) and the server closed.
    Done,
    /// Gone before the user was done; `refusal` is the server's reason if it refused the join.
    Lost {
        refusal: Option<String>,
        why: String,
    },
}

enum ToWriter {
    Line(Vec<u8>),
    /// Input is over: close our sending side, so the server finishes and closes.
    Finish,
}

/// Writes typed lines to one connection. Told to stop (the connection is gone), it hands back
/// the lines it had not written yet, to go out on the next connection; a line whose write
/// failed may have reached the server, so it is not among them.
async fn write_lines(
    mut write: tokio::io::WriteHalf<Box<dyn Stream>>,
    mut lines: mpsc::Receiver<ToWriter>,
    mut stop: oneshot::Receiver<()>,
) -> Vec<Vec<u8>> {
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut stop => break,
            next = lines.recv() => next,
        };
        match next {
            Some(ToWriter::Line(line)) => {
                let sent = async {
                    write.write_all(&line).await?;
                    write.flush().await
                };
                if sent.await.is_err() {
                    break;
                }
            }
            Some(ToWriter::Finish) => {
                let _ = write.shutdown().await;
            }
            None => break,
        }
    }
    lines.close();
    let mut rest = Vec::new();
    while let Ok(next) = lines.try_recv() {
        if let ToWriter::Line(line) = next {
            rest.push(line);
        }
    }
    rest
}

/// The client with failover: one connection at a time, replaced when it is lost.
pub struct Failover {
    args: ClientArgs,
    tls: Option<TlsConnector>,
    tracker: Tracker,
    stdin: mpsc::Receiver<io::Result<Vec<u8>>>,
    stdin_done: bool,
    /// Typed lines not handed to a connection yet.
    waiting: VecDeque<Vec<u8>>,
    /// The user sent /quit: the server closing is the expected end.
    quit: bool,
    stdout: tokio::io::Stdout,
    outage: Option<Outage>,
}

impl Failover {
    pub async fn start(
        args: ClientArgs,
        name: String,
        tls: Option<TlsConnector>,
    ) -> io::Result<Ending> {
        // At start, as with one address: each address once, in order.
        let (mut at, mut stream) = connect(&args, tls.as_ref()).await?;
        let mut tracker = Tracker::new(name, args.room.clone(), args.json);
        tracker.show = args.history;
        let mut me = Failover {
            tracker,
            args,
            tls,
            stdin: read_stdin(),
            stdin_done: false,
            waiting: VecDeque::new(),
            quit: false,
            stdout: tokio::io::stdout(),
            outage: None,
        };
        loop {
            let (refusal, why) = match me.session(stream, at).await? {
                End::Done => return Ok(Ending::Done),
                End::Lost { refusal, why } => (refusal, why),
            };
            let addr = me.args.address[at].clone();
            let with_password = me.args.password.is_some();
            match refusal.as_deref() {
                // Never in: a refusal (a taken name, a wrong password) is the answer, as it
                // is with one address.
                Some(r) if !me.tracker.joined_once => {
                    eprintln!("machat-client: the server closed the connection");
                    crate::refused::advise(r, &me.tracker.name, with_password);
                    return Ok(Ending::ServerClosed);
                }
                // Back after a loss, refused for what retrying will not change (a ban, a
                // password changed meanwhile): said once, and the end.
                Some(r) if !crate::refused::may_pass_later(r) => {
                    eprintln!("machat-client: {addr} refused the join: {r}; not retrying");
                    crate::refused::advise(r, &me.tracker.name, with_password);
                    return Ok(Ending::ServerClosed);
                }
                _ => {}
            }
            match me.outage.as_mut() {
                None => {
                    let limit = me.args.reconnect_for;
                    eprintln!(
                        "machat-client: connection to {addr} lost ({why}); reconnecting (for up to {} s)",
                        limit.as_secs_f64()
                    );
                    let now = Instant::now();
                    me.outage = Some(Outage {
                        lost: addr,
                        // A limit too large to add means no limit in practice.
                        until: now
                            .checked_add(limit)
                            .unwrap_or(now + Duration::from_secs(100 * 365 * 86_400)),
                        backoff: BACKOFF_FIRST,
                        next: at + 1,
                        said: HashSet::new(),
                    });
                }
                Some(o) => {
                    // The name may still be held by the dead node for a few seconds: retry.
                    o.say(match refusal {
                        Some(r) => format!("{addr} refused the join: {r}; retrying"),
                        None => format!("{addr}: {why}; retrying"),
                    });
                    me.backoff().await?;
                }
            }
            match me.reconnect().await? {
                Next::Connected(i, s) => (at, stream) = (i, s),
                Next::Stop(ending) => return Ok(ending),
            }
        }
    }

    /// Tries the addresses round-robin from the one after the lost one, until one accepts a
    /// connection, the time is up, or the user is done.
    async fn reconnect(&mut self) -> io::Result<Next> {
        loop {
            if let Some(ending) = self.user_done() {
                match ending {
                    Ending::Done => eprintln!("machat-client: /quit while reconnecting: quitting"),
                    Ending::ServerClosed => eprintln!(
                        "machat-client: input ended while reconnecting, with nothing left to send"
                    ),
                }
                return Ok(Next::Stop(ending));
            }
            let Some(o) = self.outage.as_mut() else {
                return Ok(Next::Stop(Ending::ServerClosed));
            };
            let now = Instant::now();
            if now >= o.until {
                let n = self.waiting.len();
                let unsent = match n {
                    0 => String::new(),
                    1 => "; 1 typed line was not sent".to_owned(),
                    n => format!("; {n} typed lines were not sent"),
                };
                eprintln!(
                    "machat-client: could not reconnect within {} s; giving up{unsent}",
                    self.args.reconnect_for.as_secs_f64()
                );
                return Ok(Next::Stop(Ending::ServerClosed));
            }
            let i = o.next % self.args.address.len().max(1);
            o.next = i + 1;
            let limit = CONNECT_TIMEOUT.min(o.until - now);
            let addr = self.args.address[i].clone();
            match self.connect_within(&addr, limit).await? {
                None => {} // the user is done: said at the top of the loop
                Some(Ok(stream)) => return Ok(Next::Connected(i, stream)),
                Some(Err(e)) => {
                    if let Some(o) = self.outage.as_mut() {
                        o.say(format!("cannot connect to {addr}: {e}"));
                    }
                    self.backoff().await?;
                }
            }
        }
    }

    /// The wait before the next attempt, doubling each time up to its most.
    async fn backoff(&mut self) -> io::Result<()> {
        let Some(o) = self.outage.as_mut() else {
            return Ok(());
        };
        let wait = o
            .backoff
            .min(o.until.saturating_duration_since(Instant::now()));
        o.backoff = (o.backoff * 2).min(BACKOFF_MAX);
        self.pause(wait).await
    }

    /// With nothing left for a server (input over and nothing waiting, or only a /quit
    /// waiting), how to end instead of reconnecting.
    fn user_done(&self) -> Option<Ending> {
        if self.stdin_done && self.waiting.is_empty() {
            // The connection was lost while the user was still typing: as with one address.
            Some(Ending::ServerClosed)
        } else if self.waiting.len() == 1 && self.waiting.front().is_some_and(|l| is_quit_line(l)) {
            Some(Ending::Done)
        } else {
            None
        }
    }

    /// Waits, still taking typed lines; ends early when the user is done.
    async fn pause(&mut self, wait: Duration) -> io::Result<()> {
        let until = Instant::now() + wait;
        while self.user_done().is_none() {
            tokio::select! {
                () = tokio::time::sleep_until(until) => break,
                input = self.stdin.recv(), if !self.stdin_done => self.take_input(input)?,
            }
        }
        Ok(())
    }

    /// Connects, still taking typed lines; the inner error says why it failed. None: the user
    /// is done, and the attempt was dropped.
    async fn connect_within(
        &mut self,
        addr: &str,
        limit: Duration,
    ) -> io::Result<Option<Result<Box<dyn Stream>, String>>> {
        let tls = self.tls.clone();
        let attempt = async move {
            match tokio::time::timeout(limit, connect_to(addr, tls.as_ref())).await {
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_owned()),
            }
        };
        tokio::pin!(attempt);
        while self.user_done().is_none() {
            tokio::select! {
                done = &mut attempt => return Ok(Some(done)),
                input = self.stdin.recv(), if !self.stdin_done => self.take_input(input)?,
            }
        }
        Ok(None)
    }

    fn take_input(&mut self, input: Option<io::Result<Vec<u8>>>) -> io::Result<()> {
        match input {
            None => self.stdin_done = true,
            Some(Err(e)) => return Err(e),
            Some(Ok(line)) if self.waiting.len() >= MAX_WAITING_LINES => {
                let line = line.strip_suffix(b"\n").unwrap_or(&line);
                eprintln!(
                    "machat-client: not connected and {MAX_WAITING_LINES} lines already waiting; line dropped: {}",
                    String::from_utf8_lossy(line)
                );
            }
            Some(Ok(line)) => self.waiting.push_back(line),
        }
        Ok(())
    }

    /// One connection, from the handshake until it ends.
    async fn session(&mut self, mut stream: Box<dyn Stream>, at: usize) -> io::Result<End> {
        let addr = self.args.address[at].clone();
        let mut conn = self.tracker.conn();
        let hello = self
            .tracker
            .handshake(conn.ask, self.args.password.as_deref());
        let sent = tokio::time::timeout(CONNECT_TIMEOUT, async {
            stream.write_all(&hello).await?;
            stream.flush().await
        })
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let why = format!("cannot send the handshake: {e}");
                return Ok(End::Lost { refusal: None, why });
            }
            Err(_) => {
                let why = "cannot send the handshake: timed out".to_owned();
                return Ok(End::Lost { refusal: None, why });
            }
        }
        let (read, write) = tokio::io::split(stream);
        let mut read = BufReader::new(read);
        let (to_writer, from_main) = mpsc::channel(16);
        let (stop, stopped) = oneshot::channel();
        let mut writer = tokio::spawn(write_lines(write, from_main, stopped));
        let mut finished = false;
        let mut join_by = Instant::now()
            + if self.tracker.machat {
                JOIN_TIMEOUT
            } else {
                QUIET_JOIN
            };
        if let Some(o) = &self.outage {
            join_by = join_by.min(o.until);
        }
        let mut line = Vec::new();
        let mut out = Vec::new();
        let why = loop {
            let can_send =
                conn.ready && (!self.waiting.is_empty() || (self.stdin_done && !finished));
            // Lines are dropped only while reconnecting: otherwise a full queue waits, as
            // input piped in at start waits for the first join.
            let can_type = !self.stdin_done
                && (self.outage.is_some() || self.waiting.len() < MAX_WAITING_LINES);
            tokio::select! {
                got = read.read_until(b'\n', &mut line) => {
                    // Cancel-safe: a part read before another branch won stays in `line`.
                    let end = match got {
                        Err(e) => Some(e.to_string()),
                        Ok(_) if line.ends_with(b"\n") => None,
                        Ok(_) => Some("the server closed the connection".to_owned()),
                    };
                    if !line.is_empty() {
                        let was_ready = conn.ready;
                        self.tracker.on_line(&mut conn, &line, &mut out);
                        line.clear();
                        self.show(&mut out).await?;
                        for note in conn.notes.drain(..) {
                            eprintln!("machat-client: {note}");
                        }
                        if conn.ready && !was_ready {
                            self.now_in(&conn, &addr);
                        }
                    }
                    if let Some(why) = end {
                        break why;
                    }
                }
                input = self.stdin.recv(), if can_type => self.take_input(input)?,
                permit = to_writer.reserve(), if can_send => match permit {
                    Ok(permit) => match self.waiting.pop_front() {
                        Some(l) => {
                            self.quit |= is_quit_line(&l);
                            permit.send(ToWriter::Line(l));
                        }
                        None => {
                            permit.send(ToWriter::Finish);
                            finished = true;
                        }
                    },
                    Err(_) => break "cannot write to the server".to_owned(),
                },
                () = tokio::time::sleep_until(join_by), if !conn.ready => {
                    if self.tracker.machat {
                        break "no answer to the handshake".to_owned();
                    }
                    self.tracker.assume_in(&mut conn);
                    self.now_in(&conn, &addr);
                }
            }
        };
        // Take back what the writer had not written yet; a writer stuck on a dead socket is
        // given up with its lines.
        let _ = stop.send(());
        match tokio::time::timeout(Duration::from_secs(1), &mut writer).await {
            Ok(Ok(rest)) => {
                if rest.iter().any(|l| is_quit_line(l)) {
                    self.quit = false;
                }
                for l in rest.into_iter().rev() {
                    self.waiting.push_front(l);
                }
            }
            _ => writer.abort(),
        }
        if self.quit || (conn.ready && self.stdin_done && self.waiting.is_empty()) {
            return Ok(End::Done);
        }
        Ok(End::Lost {
            refusal: conn.refusal,
            why,
        })
    }

    async fn show(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        if !out.is_empty() {
            self.stdout.write_all(out).await?;
            self.stdout.flush().await?;
            out.clear();
        }
        Ok(())
    }

    /// The connection let us in: after an outage, say so and what could be resumed.
    fn now_in(&mut self, conn: &Conn, addr: &str) {
        let Some(o) = self.outage.take() else {
            // Said once the server let us in, not when the socket connected.
            eprintln!(
                "machat-client: connected as {} in {}; type a line and press Enter",
                self.tracker.name, conn.room
            );
            if let Some(reason) = &conn.no_history {
                if !std::mem::replace(&mut self.tracker.history_said, true) {
                    eprintln!(
                        "machat-client: the server cannot replay history ({reason}): after a failover, messages sent meanwhile may be missing"
                    );
                }
            }
            return;
        };
        eprintln!(
            "machat-client: connection to {} lost; reconnected to {addr}",
            o.lost
        );
        let skipped = match conn.skipped {
            0 => String::new(),
            n => format!(" ({n} shown before, skipped)"),
        };
        match (conn.ask, &conn.no_history) {
            _ if !conn.in_room => eprintln!(
                "machat-client: {addr} sends no message ids: messages sent meanwhile may be missing"
            ),
            (_, Some(reason)) => eprintln!(
                "machat-client: could not resume ({reason}): messages sent meanwhile may be missing"
            ),
            (Ask::Since(id), None) => eprintln!(
                "machat-client: resumed after message {id}: {} missed message{} shown{skipped}",
                conn.replayed,
                if conn.replayed == 1 { "" } else { "s" }
            ),
            (Ask::Start, None) => eprintln!(
                "machat-client: no message id was known in {}: messages sent meanwhile may be missing",
                conn.room
            ),
        }
    }
}
