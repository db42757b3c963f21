//! The terminal client: sends the handshake and each line typed on stdin, prints each line the
//! server sends. Like MaChat's example client it sends nothing else unless asked to, so it works
//! against the original Go server too.
//!
//! With more than one `-address` it also fails over: when the connection is lost it reconnects
//! to the next address and resumes by message id, so that a node of a cluster can die without
//! the user missing or seeing twice any message. To know the ids it asks the server for JSON and
//! renders each event itself to the very bytes the server sends a plain-text client.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::config::go_style_args;
use crate::protocol::{render_history_end, render_history_start, Format, Reply, RoomEvent};

/// machat-client: chat from a terminal. Flags may be written with one dash or two
/// (`-client Mina`, `--client Mina`).
#[derive(Parser, Debug, Clone)]
#[command(name = "machat-client", version)]
pub struct ClientArgs {
    /// Your name in the room (default: a random UserN).
    #[arg(long)]
    pub client: Option<String>,

    /// The room to join.
    #[arg(long, default_value = "lounge")]
    pub room: String,

    /// Server address; give it more than once (or several separated by commas) to try the next
    /// when one cannot be reached, and to fail over to the next (resuming where the lost one
    /// stopped) when a connection is lost.
    #[arg(long, default_value = "localhost:8989", value_delimiter = ',')]
    pub address: Vec<String>,

    /// Ask the server for one JSON object per line instead of `name:text` lines.
    #[arg(long)]
    pub json: bool,

    /// Connect with TLS (to the server's --tls-addr), checking its certificate.
    #[arg(long)]
    pub tls: bool,

    /// With --tls: trust the certificates in this PEM file (a private CA) instead of the
    /// system's.
    #[arg(long, requires = "tls")]
    pub ca: Option<std::path::PathBuf>,

    /// The password of a registered name, read from the first line of this file (or from
    /// the MACHAT_PASSWORD environment variable): never on the command line.
    #[arg(long)]
    pub password_file: Option<std::path::PathBuf>,

    /// With more than one --address: how long to keep trying to reconnect, in seconds, when
    /// the connection is lost (0 = never; then the client ends as with one address).
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_secs)]
    pub reconnect_for: Duration,

    /// Set from --password-file or MACHAT_PASSWORD, not a flag.
    #[arg(skip)]
    pub password: Option<String>,
}

impl ClientArgs {
    pub fn from_args() -> Self {
        ClientArgs::parse_from(go_style_args(std::env::args_os(), &ClientArgs::command()))
    }

    /// Reads the password, if one is given.
    pub fn load_password(&mut self) -> io::Result<()> {
        self.password = match &self.password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
                })?;
                Some(text.lines().next().unwrap_or("").to_owned())
            }
            None => std::env::var("MACHAT_PASSWORD").ok(),
        };
        Ok(())
    }

    /// The handshake, byte for byte what MaChat's client sends (plus `format` if asked).
    pub fn handshake(&self, name: &str) -> Vec<u8> {
        let mut v = serde_json::json!({"name": name, "room": self.room});
        if self.json {
            v["format"] = "json".into();
        }
        if let Some(pw) = &self.password {
            v["password"] = pw.as_str().into();
        }
        v.to_string().into_bytes()
    }
}

/// A name like MaChat's default, `User` and a number below 400.
pub fn random_name() -> String {
    let n = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        % 400;
    format!("User{n}")
}

/// Seconds as a whole or fractional number, for `--reconnect-for`.
fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if secs < 0.0 {
        return Err("seconds must be 0 or more".into());
    }
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{s:?} is not a usable number of seconds"))
}

/// True for a line the server reads as `/quit` (the command word, any case, any arguments).
fn is_quit(line: &str) -> bool {
    line.strip_prefix('/')
        .and_then(|cmd| cmd.split([' ', '\t']).next())
        .is_some_and(|verb| verb.eq_ignore_ascii_case("quit"))
}

/// How the client ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// Stdin ended and the server then closed: a normal end.
    Done,
    /// The server closed while the user was still typing.
    ServerClosed,
}

/// A connection to the server, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn connect_to(addr: &str, tls: Option<&TlsConnector>) -> io::Result<Box<dyn Stream>> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    match tls {
        None => Ok(Box::new(stream) as Box<dyn Stream>),
        Some(tls) => {
            let name = crate::tls::server_name(addr).map_err(io::Error::other)?;
            Ok(Box::new(tls.connect(name, stream).await?) as Box<dyn Stream>)
        }
    }
}

fn tls_connector(args: &ClientArgs) -> io::Result<Option<TlsConnector>> {
    match args.tls {
        true => Ok(Some(
            crate::tls::connector(args.ca.as_deref()).map_err(io::Error::other)?,
        )),
        false => Ok(None),
    }
}

/// Tries each address once, in order; returns the index of the one that answered.
async fn connect(
    args: &ClientArgs,
    tls: Option<&TlsConnector>,
) -> io::Result<(usize, Box<dyn Stream>)> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address given");
    for (i, addr) in args.address.iter().enumerate() {
        match connect_to(addr, tls).await {
            Ok(s) => return Ok((i, s)),
            Err(e) => {
                eprintln!("machat-client: cannot connect to {addr}: {e}");
                last = e;
            }
        }
    }
    Err(last)
}

/// Runs the client on stdin and stdout.
pub async fn run(mut args: ClientArgs) -> io::Result<Ending> {
    args.load_password()?;
    let name = args.client.clone().unwrap_or_else(random_name);
    let tls = tls_connector(&args)?;
    if args.address.len() > 1 && !args.reconnect_for.is_zero() {
        return Failover::start(args, name, tls).await;
    }
    let (_, stream) = connect(&args, tls.as_ref()).await?;
    let (read, mut write) = tokio::io::split(stream);
    write.write_all(&args.handshake(&name)).await?;
    write.flush().await?;
    eprintln!(
        "machat-client: connected as {name} in {}; type a line and press Enter",
        args.room
    );

    let printer = tokio::spawn(async move {
        let mut lines = BufReader::new(read);
        let mut stdout = tokio::io::stdout();
        let mut line = Vec::new();
        loop {
            line.clear();
            match lines.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if !line.ends_with(b"\n") {
                        line.push(b'\n');
                    }
                    if stdout.write_all(&line).await.is_err() {
                        break;
                    }
                    let _ = stdout.flush().await;
                }
            }
        }
    });

    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut printer = printer;
    // After our own /quit the server closing is the expected end, not a failure.
    let mut quit = false;
    loop {
        tokio::select! {
            _ = &mut printer => {
                if quit {
                    return Ok(Ending::Done);
                }
                eprintln!("machat-client: the server closed the connection");
                return Ok(Ending::ServerClosed);
            }
            line = stdin.next_line() => match line? {
                Some(line) => {
                    quit |= is_quit(&line);
                    let mut bytes = line.into_bytes();
                    bytes.push(b'\n');
                    let sent = async {
                        write.write_all(&bytes).await?;
                        write.flush().await
                    };
                    if sent.await.is_err() {
                        let _ = (&mut printer).await;
                        eprintln!("machat-client: the server closed the connection");
                        return Ok(Ending::ServerClosed);
                    }
                }
                None => break,
            }
        }
    }
    // Stdin is done: say so to the server and print what it still sends until it closes.
    let _ = write.shutdown().await;
    let _ = printer.await;
    Ok(Ending::Done)
}

// ---------------------------------------------------------------------------------------------
// Failover: several addresses, reconnect, resume by message id.

/// Most typed lines kept while there is no connection to send them on.
const MAX_WAITING_LINES: usize = 1000;
/// Waits between reconnect attempts: from the first, doubling up to the most.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A connect (TCP and TLS) that takes longer is given up, so that one address that swallows
/// packets cannot use up the whole reconnect time.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A server that has spoken machat's JSON before and neither lets us in nor refuses by then is
/// taken for stuck (its own handshake timeout is 10 s).
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);
/// MaChat's Go server says nothing on a join: when no server has ever sent machat's JSON, this
/// long with the connection still open counts as being in.
const QUIET_JOIN: Duration = Duration::from_secs(2);

/// The answers sent instead of a replay we asked for: the join itself goes on.
fn is_history_error(reason: &str) -> bool {
    reason == "history is off on this server" || reason == "history unavailable"
}

/// The line as one of machat's JSON events: an object with a string `"type"`. Anything else
/// (MaChat's plain text, a refusal sent before the handshake was understood) is printed as it
/// came.
fn typed(line: &[u8]) -> Option<Map<String, Value>> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    if !line.starts_with(b"{") {
        return None;
    }
    match serde_json::from_slice::<Value>(line).ok()? {
        Value::Object(m) if m.get("type").is_some_and(Value::is_string) => Some(m),
        _ => None,
    }
}

/// Appends a line as it came, with its newline (an unfinished last line gets one).
fn push_line(out: &mut Vec<u8>, line: &[u8]) {
    out.extend_from_slice(line);
    if !line.ends_with(b"\n") {
        out.push(b'\n');
    }
}

/// Appends the plain-text line(s) the server sends a text client for this JSON event, through
/// the server's own renderers so the bytes cannot drift apart. `me` tells a private message's
/// two copies apart (the JSON is the same for both). None for an unknown type or a missing
/// field, and then nothing has been appended: the caller prints the JSON line rather than
/// nothing.
fn render_event(ev: &Map<String, Value>, me: &str, out: &mut Vec<u8>) -> Option<()> {
    let s = |key: &str| ev.get(key).and_then(Value::as_str);
    let strings = |key: &str| -> Option<Vec<&str>> {
        ev.get(key)?.as_array()?.iter().map(Value::as_str).collect()
    };
    let count = |v: &Value| v.as_u64().and_then(|n| usize::try_from(n).ok());
    match s("type")? {
        "message" => {
            let (name, text) = (s("name")?, s("text")?);
            RoomEvent::Message { id: 0, name, text }.render_text(out);
        }
        "action" => {
            let (name, text) = (s("name")?, s("text")?);
            RoomEvent::Action { id: 0, name, text }.render_text(out);
        }
        "join" => RoomEvent::Join { name: s("name")? }.render_text(out),
        "leave" => RoomEvent::Leave { name: s("name")? }.render_text(out),
        "nick" => {
            let (old, new) = (s("name")?, s("new")?);
            RoomEvent::Nick { old, new }.render_text(out);
        }
        "error" => Reply::Error(s("reason")?).render(Format::Text, out),
        "notice" => Reply::Notice(s("text")?).render(Format::Text, out),
        "who" => {
            let room = s("room")?;
            let members: Vec<String> = strings("members")?.into_iter().map(str::to_owned).collect();
            Reply::Who {
                room,
                members: &members,
            }
            .render(Format::Text, out);
        }
        "rooms" => {
            let more = count(ev.get("more")?)?;
            let rooms = ev
                .get("rooms")?
                .as_array()?
                .iter()
                .map(|r| {
                    Some((
                        r.get("room")?.as_str()?.to_owned(),
                        count(r.get("members")?)?,
                    ))
                })
                .collect::<Option<Vec<_>>>()?;
            // The renderer adds the two: a count near usize::MAX must not overflow there.
            rooms.len().checked_add(more)?;
            Reply::Rooms(&rooms, more).render(Format::Text, out);
        }
        "help" => {
            // From the list the server sent, not ours: it may be another version.
            let commands = strings("commands")?.join(", ");
            Reply::Notice(&format!("commands: {commands}")).render(Format::Text, out);
        }
        "history" => render_history_start("", Format::Text, count(ev.get("count")?)?, out),
        "end_of_history" => render_history_end("", Format::Text, out),
        "private" => {
            let (from, to, text) = (s("from")?, s("to")?, s("text")?);
            Reply::Private {
                from,
                to,
                text,
                incoming: from != me,
            }
            .render(Format::Text, out);
        }
        _ => return None,
    }
    Some(())
}

/// What a handshake asks to have replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// `"history": 1`: where the room stands when we join (its last id), not shown: it was sent
    /// before we were there.
    Start,
    /// `"since": ID`: everything after the last message shown, which is what was missed.
    Since(u64),
}

/// A replay being received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    /// The one the handshake asked for: its markers are ours, not the user's.
    Ours,
    /// An answer to the user's `/history`: shown as the server sent it.
    User,
}

/// What the client keeps across connections to show each message once: who and where it is
/// now, and the last message id shown in each room (ids are per room).
#[derive(Debug)]
struct Tracker {
    name: String,
    room: String,
    last: HashMap<String, u64>,
    /// `--json`: print the server's JSON lines instead of rendering them.
    raw: bool,
    /// Some server has sent machat's JSON: from then on a silent server is a stuck one.
    machat: bool,
    /// In a room at least once: until then a refused join ends the client, as before failover.
    joined_once: bool,
    /// Our own join line was shown: it is shown once, not again after each failover.
    join_shown: bool,
    /// "The server keeps no history" was said already.
    history_said: bool,
}

/// What one connection has shown so far.
#[derive(Debug)]
struct Conn {
    ask: Ask,
    /// The room the handshake named.
    room: String,
    /// Our own join arrived: the replay we asked for is over and live traffic begins.
    in_room: bool,
    /// Typed lines may be sent: we are in (our join, or a server that does not speak JSON).
    ready: bool,
    block: Option<Block>,
    /// Missed messages shown from our replay.
    replayed: u64,
    /// Messages not shown because their id was not above the last one shown.
    skipped: u64,
    /// A live message (not replayed) has arrived.
    live: bool,
    /// The server's reason, when it refused the join.
    refusal: Option<String>,
    /// Why there was no replay (history off or unavailable).
    no_history: Option<String>,
    /// For stderr.
    notes: Vec<String>,
}

impl Tracker {
    fn new(name: String, room: String, raw: bool) -> Self {
        Tracker {
            name,
            room,
            last: HashMap::new(),
            raw,
            machat: false,
            joined_once: false,
            join_shown: false,
            history_said: false,
        }
    }

    /// A new connection: resume after the last id shown in the room, if one is known.
    fn conn(&self) -> Conn {
        Conn {
            ask: match self.last.get(&self.room) {
                Some(&id) => Ask::Since(id),
                None => Ask::Start,
            },
            room: self.room.clone(),
            in_room: false,
            ready: false,
            block: None,
            replayed: 0,
            skipped: 0,
            live: false,
            refusal: None,
            no_history: None,
            notes: Vec::new(),
        }
    }

    /// Under the current name (a `/nick` carries over), always JSON, so that ids are known;
    /// the password goes again each time.
    fn handshake(&self, ask: Ask, password: Option<&str>) -> Vec<u8> {
        let mut v = serde_json::json!({"name": self.name, "room": self.room, "format": "json"});
        match ask {
            Ask::Start => v["history"] = 1.into(),
            Ask::Since(id) => v["since"] = id.into(),
        }
        if let Some(pw) = password {
            v["password"] = pw.into();
        }
        v.to_string().into_bytes()
    }

    /// A quiet server kept the connection open: take it that we are in.
    fn assume_in(&mut self, conn: &mut Conn) {
        conn.ready = true;
        self.joined_once = true;
    }

    /// Handles one line from the server: appends to `out` what to print, if anything.
    fn on_line(&mut self, conn: &mut Conn, line: &[u8], out: &mut Vec<u8>) {
        let Some(ev) = typed(line) else {
            return self.on_text(conn, line, out);
        };
        self.machat = true;
        let s = |key: &str| ev.get(key).and_then(Value::as_str);
        let (kind, room, name) = (s("type").unwrap_or(""), s("room"), s("name"));
        match kind {
            "history" if !conn.in_room => {
                conn.block = Some(Block::Ours);
                return;
            }
            "end_of_history" if conn.block == Some(Block::Ours) => {
                conn.block = None;
                if conn.ask == Ask::Start {
                    // An empty room: every message from now on is new to us.
                    let room = room.unwrap_or(&conn.room).to_owned();
                    self.last.entry(room).or_insert(0);
                }
                return;
            }
            "history" => conn.block = Some(Block::User),
            "end_of_history" => conn.block = None,
            "message" | "action" => {
                let id = ev.get("id").and_then(Value::as_u64);
                if let (Some(id), Some(room)) = (id, room) {
                    if !self.fresh(conn, room, id) {
                        return;
                    }
                }
            }
            "join" if !conn.in_room && name == Some(&self.name) && room == Some(&conn.room) => {
                conn.in_room = true;
                self.assume_in(conn);
                if std::mem::replace(&mut self.join_shown, true) {
                    // Back in after a failover: stdout goes on as if we had never left.
                    return;
                }
            }
            "join" if conn.in_room && name == Some(&self.name) => {
                // The user's /join: a room of its own ids, and nothing of it seen yet. (A
                // room we come back to must not resume from our last visit.)
                if let Some(room) = room {
                    self.room = room.to_owned();
                    self.last.remove(room);
                }
            }
            "nick" if name == Some(&self.name) => {
                if let Some(new) = s("new") {
                    self.name = new.to_owned();
                }
            }
            "error" if !conn.in_room => {
                let reason = s("reason").unwrap_or("");
                if is_history_error(reason) {
                    conn.no_history = Some(reason.to_owned());
                    // Without a replay the last id is no use, and may even mislead: with
                    // --history off a room's ids start over when it is created anew.
                    self.last.remove(&conn.room);
                    return;
                }
                conn.refusal = Some(reason.to_owned());
                if self.joined_once {
                    return; // said on stderr by the reconnect loop
                }
            }
            _ => {}
        }
        if self.raw || render_event(&ev, &self.name, out).is_none() {
            push_line(out, line);
        }
    }

    /// A line that is not machat's JSON: printed as it came.
    fn on_text(&mut self, conn: &mut Conn, line: &[u8], out: &mut Vec<u8>) {
        if !conn.ready {
            if let Some(reason) = line.strip_prefix(b"*** error: ") {
                // Refusals sent before a handshake is understood are always plain text.
                let reason = String::from_utf8_lossy(reason);
                conn.refusal = Some(reason.trim_end().to_owned());
                if self.joined_once {
                    return;
                }
            } else {
                // A server that ignores "format" (MaChat's own) and so sends no ids: we are
                // in, and there is nothing to resume from.
                self.assume_in(conn);
            }
        }
        push_line(out, line);
    }

    /// Whether to show a message with this id, remembering it if so.
    fn fresh(&mut self, conn: &mut Conn, room: &str, id: u64) -> bool {
        match conn.block {
            // The user's /history shows old messages on purpose; they say nothing about what
            // has been shown live.
            Some(Block::User) => return true,
            Some(Block::Ours) if conn.ask == Ask::Start => {
                let last = self.last.entry(room.to_owned()).or_insert(id);
                *last = (*last).max(id);
                return false;
            }
            _ => {}
        }
        let first_live = conn.block.is_none() && !std::mem::replace(&mut conn.live, true);
        match self.last.get_mut(room) {
            // A server that resumed after `since` sends only later ids, so if its replay was
            // empty and its first live id is not later, its ids started over (a server with
            // --history memory restarted): skipping would hide every message until the ids
            // caught up.
            Some(last)
                if id <= *last
                    && first_live
                    && matches!(conn.ask, Ask::Since(_))
                    && conn.replayed + conn.skipped == 0 =>
            {
                conn.notes.push(format!(
                    "message ids in {room} started over at the server (its history was lost?): showing them from {id} on"
                ));
                *last = id;
            }
            Some(last) if id <= *last => {
                conn.skipped += 1;
                if conn.block.is_none() {
                    conn.notes.push(format!(
                        "message {id} in {room} not shown: a message with that id or a later one was shown already"
                    ));
                }
                return false;
            }
            Some(last) => *last = id,
            None => {
                self.last.insert(room.to_owned(), id);
            }
        }
        if conn.block == Some(Block::Ours) {
            conn.replayed += 1;
        }
        true
    }
}

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

/// Reads stdin on its own task, so that typing goes on while the client reconnects. Lines keep
/// their bytes (the server cleans them) and end with `\n`.
fn read_stdin() -> mpsc::Receiver<io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut stdin = BufReader::new(tokio::io::stdin());
        loop {
            let mut line = Vec::new();
            match stdin.read_until(b'\n', &mut line).await {
                Ok(0) => break,
                Ok(_) => {
                    if line.ends_with(b"\n") {
                        line.pop();
                        if line.ends_with(b"\r") {
                            line.pop();
                        }
                    }
                    line.push(b'\n');
                    if tx.send(Ok(line)).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            }
        }
    });
    rx
}

fn is_quit_line(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    std::str::from_utf8(line).is_ok_and(is_quit)
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
struct Failover {
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
    async fn start(
        args: ClientArgs,
        name: String,
        tls: Option<TlsConnector>,
    ) -> io::Result<Ending> {
        // At start, as with one address: each address once, in order.
        let (mut at, mut stream) = connect(&args, tls.as_ref()).await?;
        eprintln!(
            "machat-client: connected as {name} in {}; type a line and press Enter",
            args.room
        );
        let mut me = Failover {
            tracker: Tracker::new(name, args.room.clone(), args.json),
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
            if !me.tracker.joined_once && refusal.is_some() {
                // Never in: a refusal (a taken name, a wrong password) is the answer, as it
                // is with one address.
                eprintln!("machat-client: the server closed the connection");
                return Ok(Ending::ServerClosed);
            }
            let addr = me.args.address[at].clone();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_flags_and_defaults() {
        let parse = |a: &[&str]| {
            let args = a.iter().map(std::ffi::OsString::from);
            ClientArgs::try_parse_from(go_style_args(args, &ClientArgs::command())).unwrap()
        };
        let c = parse(&[
            "c",
            "-client",
            "Mina",
            "-room",
            "dev",
            "-address",
            "127.0.0.1:1",
        ]);
        assert_eq!(c.client.as_deref(), Some("Mina"));
        assert_eq!(c.room, "dev");
        assert_eq!(c.address, vec!["127.0.0.1:1"]);
        let c = parse(&["c", "--client", "Mina"]);
        assert_eq!(c.room, "lounge");
        assert_eq!(c.address, vec!["localhost:8989"]);
        assert_eq!(c.handshake("Mina"), br#"{"name":"Mina","room":"lounge"}"#);
        let c = parse(&["c", "-address", "a:1", "-address", "b:2", "-json"]);
        assert_eq!(c.address, vec!["a:1", "b:2"]);
        assert_eq!(
            c.handshake("x"),
            br#"{"name":"x","room":"lounge","format":"json"}"#
        );
        assert!(random_name().starts_with("User"));
        assert!(is_quit("/quit") && is_quit("/QUIT now") && is_quit("/quit\tx"));
        assert!(!is_quit(" /quit") && !is_quit("//quit") && !is_quit("/quitter"));
    }
    /// Each JSON event the server sends, rendered by the client, against the server's own text
    /// rendering of the same event.
    #[test]
    fn renders_every_json_event_as_the_server_renders_text() {
        use crate::protocol::Timestamp;
        let ts = Timestamp(1_795_690_445_007);
        let room_events = [
            RoomEvent::Message {
                id: 3,
                name: "Mina",
                text: "hello: \"Bob\" \u{e9}\t",
            },
            RoomEvent::Message {
                id: 4,
                name: "Ann",
                text: "two\nlines",
            },
            RoomEvent::Message {
                id: 5,
                name: "Mina",
                text: "",
            },
            RoomEvent::Action {
                id: 6,
                name: "Mina",
                text: "waves\nagain",
            },
            RoomEvent::Join { name: "Bob" },
            RoomEvent::Leave { name: "Bob" },
            RoomEvent::Nick {
                old: "Bob",
                new: "Rob",
            },
        ];
        for ev in room_events {
            let (mut json, mut text, mut got) = (Vec::new(), Vec::new(), Vec::new());
            ev.render_json("dev", ts, &mut json);
            ev.render_text(&mut text);
            let parsed = typed(&json).expect("a typed JSON line");
            assert_eq!(render_event(&parsed, "Zed", &mut got), Some(()));
            assert_eq!(got, text, "{}", String::from_utf8_lossy(&json));
        }
        let members = ["Bob".to_owned(), "Mina".to_owned()];
        let rooms = [("dev".to_owned(), 2), ("lobby".to_owned(), 1)];
        let one_room = [("dev".to_owned(), 1)];
        let private = |incoming| Reply::Private {
            from: "Mina",
            to: "Bob",
            text: "psst\nsecond",
            incoming,
        };
        // (reply, the client's own name: it tells the two private copies apart)
        let replies = [
            (Reply::Error("name Bob is already taken in room dev"), "Bob"),
            (Reply::Notice("bye"), "Bob"),
            (Reply::Notice("server shutting down"), "Bob"),
            (
                Reply::Who {
                    room: "dev",
                    members: &members,
                },
                "Bob",
            ),
            (Reply::Rooms(&rooms, 0), "Bob"),
            (Reply::Rooms(&rooms, 101), "Bob"),
            (Reply::Rooms(&one_room, 0), "Bob"),
            (Reply::Help, "Bob"),
            (private(true), "Bob"),
            (private(false), "Mina"),
            (
                Reply::Private {
                    from: "Mina",
                    to: "Mina",
                    text: "note to self",
                    incoming: false,
                },
                "Mina",
            ),
        ];
        for (reply, me) in replies {
            let (mut json, mut text, mut got) = (Vec::new(), Vec::new(), Vec::new());
            reply.render(Format::Json, &mut json);
            reply.render(Format::Text, &mut text);
            let parsed = typed(&json).expect("a typed JSON line");
            assert_eq!(render_event(&parsed, me, &mut got), Some(()));
            assert_eq!(got, text, "{}", String::from_utf8_lossy(&json));
        }
        for n in [0, 1, 2] {
            let (mut json, mut text, mut got) = (Vec::new(), Vec::new(), Vec::new());
            render_history_start("dev", Format::Json, n, &mut json);
            render_history_end("dev", Format::Json, &mut json);
            render_history_start("dev", Format::Text, n, &mut text);
            render_history_end("dev", Format::Text, &mut text);
            for line in json.split_inclusive(|&b| b == b'\n') {
                let parsed = typed(line).expect("a typed JSON line");
                assert_eq!(render_event(&parsed, "Bob", &mut got), Some(()));
            }
            assert_eq!(got, text);
        }
    }

    #[test]
    fn unknown_or_broken_events_are_not_rendered_and_other_lines_are_not_events() {
        let mut out = Vec::new();
        for line in [
            &br#"{"type":"poll","question":"lunch?"}"#[..],
            br#"{"type":"message","name":"Mina"}"#,
            br#"{"type":"rooms","rooms":[{"room":"r","members":1}],"more":18446744073709551615}"#,
            br#"{"type":"who","room":"r","members":[1]}"#,
        ] {
            let parsed = typed(line).expect("typed");
            assert_eq!(render_event(&parsed, "Bob", &mut out), None);
            assert!(out.is_empty());
        }
        for line in [
            &b"Mina:hi\n"[..],
            b"*** Mina joined\n",
            b"{\"name\":\"x\"}\n",
            b"{\"type\":1}\n",
            b"{not json\n",
            b"[1]\n",
            b"\xff\xfe\n",
            b"",
        ] {
            assert!(typed(line).is_none(), "{line:?}");
        }
    }

    fn feed(t: &mut Tracker, c: &mut Conn, lines: &[&str]) -> String {
        let mut out = Vec::new();
        for l in lines {
            t.on_line(c, format!("{l}\n").as_bytes(), &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    fn msg(id: u64, name: &str, text: &str) -> String {
        format!(
            r#"{{"type":"message","id":{id},"room":"r","name":"{name}","text":"{text}","ts":"x"}}"#
        )
    }

    const HIST0: &str = r#"{"type":"history","room":"r","count":0}"#;
    const HIST1: &str = r#"{"type":"history","room":"r","count":1}"#;
    const HIST2: &str = r#"{"type":"history","room":"r","count":2}"#;
    const END: &str = r#"{"type":"end_of_history","room":"r"}"#;

    fn join(name: &str, room: &str) -> String {
        format!(r#"{{"type":"join","room":"{room}","name":"{name}","ts":"x"}}"#)
    }

    #[test]
    fn first_join_learns_where_the_room_stands_without_showing_it() {
        let mut t = Tracker::new("Cli".into(), "r".into(), false);
        let mut c = t.conn();
        assert_eq!(c.ask, Ask::Start);
        assert_eq!(
            t.handshake(c.ask, Some("pw")),
            br#"{"name":"Cli","room":"r","format":"json","history":1,"password":"pw"}"#
        );
        let out = feed(&mut t, &mut c, &[HIST1, &msg(7, "Old", "before"), END]);
        assert_eq!(out, "");
        assert!(!c.ready);
        let out = feed(&mut t, &mut c, &[&join("Cli", "r"), &msg(8, "S", "new")]);
        assert_eq!(out, "*** Cli joined\nS:new\n");
        assert!(c.ready && c.in_room && t.joined_once);
        assert_eq!(t.last.get("r"), Some(&8));

        // An empty room: everything after the join is new.
        let mut t = Tracker::new("Cli".into(), "r".into(), false);
        let mut c = t.conn();
        feed(&mut t, &mut c, &[HIST0, END, &join("Cli", "r")]);
        assert_eq!(t.conn().ask, Ask::Since(0));

        // A join slower than QUIET_JOIN, taken for done before it came: still shown, once.
        let mut t = Tracker::new("Cli".into(), "r".into(), false);
        let mut c = t.conn();
        t.assume_in(&mut c);
        let out = feed(&mut t, &mut c, &[HIST0, END, &join("Cli", "r")]);
        assert_eq!(out, "*** Cli joined\n");
        let mut c = t.conn();
        assert_eq!(feed(&mut t, &mut c, &[HIST0, END, &join("Cli", "r")]), "");
    }

    #[test]
    fn a_resume_shows_what_was_missed_once_and_no_markers() {
        let mut t = Tracker::new("Cli".into(), "r".into(), false);
        let mut c = t.conn();
        feed(
            &mut t,
            &mut c,
            &[HIST0, END, &join("Cli", "r"), &msg(1, "S", "m1")],
        );
        let mut c = t.conn();
        assert_eq!(c.ask, Ask::Since(1));
        assert_eq!(
            t.handshake(c.ask, None),
            br#"{"name":"Cli","room":"r","format":"json","since":1}"#
        );
        let out = feed(
            &mut t,
            &mut c,
            &[
                HIST2,
                &msg(1, "S", "m1"),
                &msg(2, "S", "m2"),
                END,
                &join("Cli", "r"),
                &msg(3, "S", "m3"),
                &msg(3, "S", "m3"),
            ],
        );
        assert_eq!(out, "S:m2\nS:m3\n");
        assert_eq!((c.replayed, c.skipped), (1, 2));
        assert_eq!(c.notes.len(), 1, "{:?}", c.notes);
        // A second live copy is not shown either.
        assert_eq!(feed(&mut t, &mut c, &[&msg(2, "S", "m2")]), "");
        // The user's own /history shows old messages and its markers, and changes nothing.
        let out = feed(&mut t, &mut c, &[HIST1, &msg(1, "S", "m1"), END]);
        assert_eq!(out, "*** history: 1 message\nS:m1\n*** end of history\n");
        assert_eq!(t.conn().ask, Ask::Since(3));
    }

    #[test]
    fn ids_that_started_over_are_shown_not_skipped() {
        let mut t = Tracker::new("Cli".into(), "r".into(), false);
        let mut c = t.conn();
        feed(
            &mut t,
            &mut c,
            &[HIST0, END, &join("Cli", "r"), &msg(20, "S", "m20")],
        );
        // A restarted --history memory server: nothing after 20, and ids from 1 again.
        let mut c = t.conn();
        let out = feed(
            &mut t,
            &mut c,
            &[
                HIST0,
                END,
                &join("Cli", "r"),
                &msg(3, "S", "a"),
                &msg(4, "S", "b"),
            ],
        );
        assert_eq!(out, "S:a\nS:b\n");
        assert_eq!(c.notes.len(), 1, "{:?}", c.notes);
        assert_eq!(t.conn().ask, Ask::Since(4));
        // A server with --history off cannot resume: its ids are no guide either.
        let mut c = t.conn();
        let off = r#"{"type":"error","reason":"history is off on this server"}"#;
        let out = feed(&mut t, &mut c, &[off, &join("Cli", "r"), &msg(1, "S", "c")]);
        assert_eq!(out, "S:c\n");
        assert_eq!(
            c.no_history.as_deref(),
            Some("history is off on this server")
        );
    }

    #[test]
    fn refusals_and_history_errors_before_the_join() {
        let refused = r#"{"type":"error","reason":"name Cli is already taken in room r"}"#;
        let mut t = Tracker::new("Cli".into(), "r".into(), false);
        let mut c = t.conn();
        // Never in yet: shown, as with one address.
        let out = feed(&mut t, &mut c, &[refused]);
        assert_eq!(out, "*** error: name Cli is already taken in room r\n");
        assert!(c.refusal.is_some() && !c.ready);
        let mut c = t.conn();
        let off = r#"{"type":"error","reason":"history is off on this server"}"#;
        let out = feed(&mut t, &mut c, &[off, &join("Cli", "r")]);
        assert_eq!(out, "*** Cli joined\n");
        assert_eq!(
            c.no_history.as_deref(),
            Some("history is off on this server")
        );
        assert_eq!(t.conn().ask, Ask::Start);
        // In once: a refusal while reconnecting is for stderr, not stdout.
        let mut c = t.conn();
        assert_eq!(feed(&mut t, &mut c, &[refused]), "");
        assert!(c.refusal.is_some());
        let mut c = t.conn();
        assert_eq!(
            feed(
                &mut t,
                &mut c,
                &["*** error: server full: too many connections"]
            ),
            ""
        );
        assert_eq!(
            c.refusal.as_deref(),
            Some("server full: too many connections")
        );
        // Errors after the join are the user's.
        let mut c = t.conn();
        let out = feed(
            &mut t,
            &mut c,
            &[
                &join("Cli", "r"),
                r#"{"type":"error","reason":"line too long"}"#,
            ],
        );
        assert_eq!(out, "*** error: line too long\n");
    }

    #[test]
    fn text_lines_unknown_events_and_raw_json_pass_through() {
        let mut t = Tracker::new("Mina".into(), "r".into(), false);
        let mut c = t.conn();
        // MaChat's Go server ignores "format": its text is printed as it came, and we are in.
        assert_eq!(feed(&mut t, &mut c, &["Mina:hi"]), "Mina:hi\n");
        assert!(c.ready && !t.machat);
        let poll = r#"{"type":"poll","question":"lunch?"}"#;
        assert_eq!(feed(&mut t, &mut c, &[poll]), format!("{poll}\n"));
        let mut out = Vec::new();
        t.on_line(&mut c, b"no newline at the end", &mut out);
        assert_eq!(out, b"no newline at the end\n");

        let mut t = Tracker::new("Cli".into(), "r".into(), true);
        let mut c = t.conn();
        let (j, m1) = (join("Cli", "r"), msg(1, "S", "m1"));
        let out = feed(
            &mut t,
            &mut c,
            &[HIST1, &msg(0, "S", "old"), END, &j, &m1, &m1],
        );
        assert_eq!(out, format!("{j}\n{m1}\n"));
    }

    #[test]
    fn names_and_rooms_follow_nick_and_join() {
        let mut t = Tracker::new("Mina".into(), "r".into(), false);
        let mut c = t.conn();
        let nick = r#"{"type":"nick","room":"r","name":"Mina","new":"Minnie","ts":"x"}"#;
        let private = r#"{"type":"private","from":"Minnie","to":"Bob","text":"hi","ts":"x"}"#;
        let reply = r#"{"type":"private","from":"Bob","to":"Minnie","text":"yo","ts":"x"}"#;
        let out = feed(
            &mut t,
            &mut c,
            &[
                HIST0,
                END,
                &join("Mina", "r"),
                &msg(4, "S", "a"),
                nick,
                private,
                reply,
            ],
        );
        assert_eq!(
            out,
            "*** Mina joined\nS:a\n*** Mina is now Minnie\n*** private to Bob: hi\n*** private from Bob: yo\n"
        );
        assert_eq!(t.name, "Minnie");
        assert!(String::from_utf8_lossy(&t.handshake(Ask::Since(4), None)).contains("\"Minnie\""));
        // /join elsewhere: ids there are another sequence, and nothing of it is known yet.
        let out = feed(&mut t, &mut c, &[&join("Minnie", "lobby")]);
        assert_eq!(out, "*** Minnie joined\n");
        assert_eq!((t.room.as_str(), t.conn().ask), ("lobby", Ask::Start));
        feed(&mut t, &mut c, &[&join("Minnie", "r")]);
        assert_eq!(
            t.conn().ask,
            Ask::Start,
            "a room we come back to starts afresh"
        );
    }

    #[test]
    fn reconnect_for_takes_seconds() {
        assert_eq!(parse_secs("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_secs("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_secs("0"), Ok(Duration::ZERO));
        assert!(parse_secs("-1").is_err() && parse_secs("x").is_err());
        assert!(parse_secs("1e300").is_err() && parse_secs("NaN").is_err());
        let args = [
            "c",
            "-address",
            "a:1",
            "-address",
            "b:2",
            "-reconnect-for",
            "5",
        ];
        let c = ClientArgs::try_parse_from(go_style_args(
            args.iter().map(std::ffi::OsString::from),
            &ClientArgs::command(),
        ))
        .unwrap();
        assert_eq!(c.reconnect_for, Duration::from_secs(5));
    }
}
