//! Every refusal and notice a client can be told, in one place: the text after `*** error: `
//! (or in a JSON `error`, a WebSocket close frame, an HTTP error body before the upgrade), and
//! after `*** ` for a notice, exactly as `docs/PROTOCOL.md` gives it. The server decides
//! *when* to refuse; this module alone decides *what it says*, so a transport to come (IRC)
//! says the same, and a change of wording is one change here (and one in the docs).

use thiserror::Error;

/// A refusal, rendered by `Display`. Names and rooms in it have passed the name rules (or are
/// the client's own words cut short), so the text is safe to show.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    /// A handshake that breaks a rule (its text comes from [`crate::protocol`]'s checks).
    #[error("{0}")]
    Handshake(String),
    #[error("authentication failed")]
    AuthenticationFailed,
    #[error("too many failed logins from your address; try again later")]
    TooManyFailedLogins,
    /// `/nick` under `--require-auth`: the same answer for every name, registered or not.
    #[error("you can only be your registered name on this server")]
    OnlyYourRegisteredName,
    /// `/nick` by a connection logged in as a registered name (with its password): that name
    /// is who the person is, on every one of its connections at once.
    #[error("you are logged in as {0}, a registered name: /nick cannot change it")]
    RegisteredNick(String),
    /// `/nick` to a registered name (or a look-alike of one) without `--require-auth`.
    #[error("name {0} needs a password: reconnect with it")]
    NeedsPassword(String),
    /// A handshake with a registered name (or a look-alike of one) and no password, without
    /// `--require-auth`: that the name is registered is no secret there (`/nick` says so, and an
    /// unregistered name would have joined), so the client is told what is missing.
    #[error("name {0} is registered: send its password")]
    RegisteredSendPassword(String),
    /// The name is in use where the client wants it; `place` is `room ROOM` at the handshake,
    /// `ROOM` for `/join`, `this room` for `/nick`.
    #[error("name {name} is already taken in {place}")]
    NameTaken { name: String, place: String },
    /// The name is too much like (has the same key as) a member's; `place` as for `NameTaken`.
    #[error("name {name} is too much like {like}, already in {place}")]
    TooMuchLike {
        name: String,
        like: String,
        place: String,
    },
    #[error("room {room} is full ({max} members)")]
    RoomFull { room: String, max: usize },
    #[error("too many rooms on this server ({0})")]
    TooManyRooms(usize),
    #[error("the cluster is unavailable, try again")]
    ClusterUnavailable,
    #[error("a command must be one line")]
    CommandOneLine,
    #[error("line too long")]
    LineTooLong,
    /// `/nick` with a name that breaks a rule (the rule's own text).
    #[error("usage: /nick NAME ({0})")]
    NickUsage(String),
    #[error("you are already called {0}")]
    AlreadyCalled(String),
    #[error("usage: /me ACTION")]
    MeUsage,
    #[error("usage: /msg NAME TEXT")]
    MsgUsage,
    #[error("no one called {0} in this room")]
    NoSuchMember(String),
    #[error("usage: /history [N] (N from 1 to 1000)")]
    HistoryUsage,
    #[error("history is off on this server")]
    HistoryOff,
    #[error("history unavailable")]
    HistoryUnavailable,
    /// The command as typed, cut to 32 characters.
    #[error("unknown command /{0} (try /help)")]
    UnknownCommand(String),
    /// `/join` with a room that breaks a rule (the rule's own text).
    #[error("usage: /join ROOM ({0})")]
    JoinUsage(String),
    #[error("you are already in {0}")]
    AlreadyIn(String),
    /// Version 2: a request that is not JSON (serde's words on where and why).
    #[error("invalid request JSON: {0}")]
    RequestJson(String),
    #[error("a request must be a JSON object like {{\"type\":\"say\",\"room\":\"devroom\",\"text\":\"hi\"}}")]
    RequestNotObject,
    #[error("\"req\" must be a string of at most 64 bytes or a whole number >= 0")]
    RequestId,
    #[error("request is missing \"{0}\"")]
    RequestMissing(&'static str),
    #[error("\"{0}\" must be a string")]
    RequestNotString(&'static str),
    #[error("\"{0}\" must be a whole number >= 0")]
    RequestNotCount(&'static str),
    #[error("\"{0}\" must be a whole number >= 1")]
    RequestNotId(&'static str),
    #[error("\"{0}\" must not be empty")]
    RequestEmpty(&'static str),
    /// The type as sent, cut to 32 characters.
    #[error("unknown request type \"{0}\" (one of join, leave, say, me, msg, nick, who, rooms, history, command, quit, read, notify, marks, dm)")]
    RequestType(String),
    #[error("\"limit\" must be from 1 to 1000")]
    HistoryLimit,
    /// A version-2 request about a room the session is not in.
    #[error("you are not in {0}")]
    NotIn(String),
    /// `--max-rooms-per-session`.
    #[error("you are in too many rooms ({0} at most on one connection)")]
    TooManyRoomsPerSession(usize),
    /// `--max-connections`, at connect.
    #[error("server full: too many connections")]
    ServerFull,
    /// `--max-per-ip`, at connect.
    #[error("too many connections from your address")]
    TooManyFromAddress,
    /// `--max-per-ip`, at a version-2 `join`: each room beyond a connection's first counts.
    #[error("too many connections and rooms from your address")]
    TooManySeatsFromAddress,
    /// `--max-connections`, at a version-2 `join`.
    #[error("server full: too many connections and rooms")]
    ServerFullOfSeats,
    /// A first line that is text, not JSON (someone typing into `nc`): what to send instead.
    #[error("start with {{\"name\":\"you\",\"room\":\"lobby\"}}")]
    NotAHandshake,
    /// `--max-handshakes-per-ip`, at connect: too many of the address's connections have not
    /// sent their handshake yet.
    #[error("too many connections from your address waiting to start")]
    TooManyWaiting,
    /// No complete handshake within `--handshake-timeout`.
    #[error("handshake timeout")]
    HandshakeTimeout,
    /// Nothing received for `--idle-timeout`.
    #[error("idle timeout")]
    IdleTimeout,
    /// More than `--max-pending` behind, or the largest queue over `--max-queued-total`.
    #[error("slow consumer: you fell too far behind")]
    SlowConsumer,
    /// A WebSocket binary frame.
    #[error("binary frames are not supported: send text")]
    BinaryFrame,
    /// Cluster mode: a message that could not be handed to NATS; nobody got it.
    #[error("message not sent: the cluster is unavailable, try again")]
    ClusterNotSent,
    /// Cluster mode: the queue to NATS is full; nobody got it.
    #[error("message not sent: the cluster is busy, try again")]
    ClusterBusy,
    /// Cluster mode: published, but not acknowledged within the retries.
    #[error("message not confirmed by the cluster, it may not have been delivered")]
    ClusterUnconfirmed,
    /// HTTP 403 before a WebSocket upgrade: a browser page of another site.
    #[error("origin not allowed (see --allowed-origins)")]
    OriginNotAllowed,
    /// HTTP 400: `/ws` without the upgrade headers.
    #[error("this is the WebSocket endpoint: a WebSocket upgrade is needed")]
    UpgradeNeeded,
    /// HTTP 400: an upgrade without its key.
    #[error("Sec-WebSocket-Key is missing")]
    NoWebSocketKey,
    /// HTTP 426: another WebSocket version.
    #[error("WebSocket version 13 is needed")]
    WebSocketVersion,
    /// More than 100 ping and pong frames at once, or 10 a second after that.
    #[error("too many control frames")]
    ControlFrames,
    /// A WebSocket message in more than 128 frames.
    #[error("too many fragments")]
    Fragments,

    // Moderation (docs/PROTOCOL.md, "Moderation"). `rest` is ` until 2026-12-08 10:00 UTC: why`,
    // each part only when there is one.
    #[error("you are banned from this server{0}")]
    ServerBanned(String),
    #[error("you are banned from {room}{rest}")]
    BannedFrom { room: String, rest: String },
    #[error("{0} is invite only")]
    InviteOnly(String),
    #[error("{0} needs a key")]
    NeedsKey(String),
    #[error("wrong key for {0}")]
    WrongKey(String),
    /// `--room-creation registered|admins`, and the room does not exist.
    #[error("{room} does not exist, and only {who} can create rooms on this server")]
    CannotCreate { room: String, who: &'static str },
    #[error("you are muted in {0}")]
    Muted(String),
    #[error("{0} is moderated: only operators and those they give voice may speak")]
    Moderated(String),
    /// A command the caller's rank does not allow: `what` is `an operator in ROOM`, `the
    /// owner of ROOM` or `a server admin`.
    #[error("{command} needs you to be {what}")]
    NotAllowed { command: String, what: String },
    #[error("you cannot {command} {name}: their rank is equal to or above yours")]
    Outranks { command: String, name: String },
    #[error("{0} is not registered: only registered names hold roles")]
    NotRegistered(String),
    #[error("no message {id} in {room}")]
    NoSuchMessage { id: u64, room: String },
    #[error("message {0} is not yours")]
    NotYourMessage(u64),
    /// A moderation command used wrongly: its usage line.
    #[error("usage: {0}")]
    Usage(&'static str),
    /// A duration, address or network that does not read (its own text says why).
    #[error("{0}")]
    BadArgument(String),
    #[error("{target} is not {what} in {room}")]
    NotListed {
        target: String,
        what: &'static str,
        room: String,
    },
    #[error("text too long (at most {0} bytes)")]
    TextTooLong(usize),
    /// A version-2 `command` whose text is not one `/command` line.
    #[error("\"text\" must be one line starting with /")]
    RequestCommand,
    #[error("unknown mode {0} (modes: +closed, +key KEY, +moderated, and - to unset)")]
    UnknownMode(String),

    // Marks and direct conversations (docs/PROTOCOL.md, section 19).
    /// A guest's `marks`, `read` or `notify`.
    #[error("read positions are kept for registered names: log in")]
    MarksForPersons,
    /// `read` or `notify` of a room the person keeps no mark for.
    #[error("you keep no read position for {0}: join it first")]
    NoMark(String),
    /// `notify` with another level.
    #[error("\"level\" must be all, mentions or none")]
    NotifyLevel,
    /// A join of an `@` room by anyone but its two parties (a guest, another person, any
    /// version-1 handshake or `/join`).
    #[error("rooms starting with @ are direct conversations: open one with {{\"type\":\"dm\",\"to\":\"NAME\"}}")]
    Conversation,
    /// `dm` from a guest.
    #[error("direct conversations are for registered names: log in")]
    DmForPersons,
    /// `dm` to a name that is not registered.
    #[error("{0} is not registered: direct conversations are between registered names")]
    DmNotRegistered(String),
    /// `dm` to oneself.
    #[error("you cannot open a conversation with yourself")]
    DmYourself,
}

impl Refusal {
    /// The reason in a WebSocket close frame: the text, or a shorter one (the transport cuts
    /// it to the frame's 123 bytes).
    pub fn close_reason(&self) -> String {
        match self {
            Refusal::SlowConsumer => "slow consumer".into(),
            other => other.to_string(),
        }
    }
}

/// The body of the HTTP answer to a browser (or curl) on a chat port: what the port is, and
/// where the web page is (`web`, as `http://HOST:PORT/`), or that the web side is off.
pub fn chat_port_page(web: Option<&str>) -> String {
    let page = match web {
        Some(url) => format!("The web page is at {url}"),
        None => "This server's web page is off (--http off).".to_owned(),
    };
    format!(
        "This is machat's chat port: connect with nc, machat-client or a MaChat client. {page}\n\
         With nc, start with {{\"name\":\"you\",\"room\":\"lobby\"}} and press Enter.\n"
    )
}

/// A notice a client can be told (`*** TEXT`, `{"type":"notice","text":"TEXT"}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Notice {
    /// The answer to `/quit` (and a version-2 `quit`).
    #[error("bye")]
    Bye,
    /// The server stops (SIGTERM, SIGINT).
    #[error("server shutting down")]
    ShuttingDown,
    /// A join past a person's marks: the room is joined, and keeps no mark.
    #[error("you keep 300 rooms and conversations at most: leave some to keep more")]
    MarksFull,
}

impl Notice {
    /// The text, as a `&'static str` for [`crate::protocol::Reply::Notice`].
    pub fn text(self) -> &'static str {
        match self {
            Notice::Bye => "bye",
            Notice::ShuttingDown => "server shutting down",
            Notice::MarksFull => {
                "you keep 300 rooms and conversations at most: leave some to keep more"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_and_close_reasons_read_as_documented() {
        assert_eq!(Notice::Bye.to_string(), Notice::Bye.text());
        assert_eq!(Notice::ShuttingDown.to_string(), "server shutting down");
        assert_eq!(Notice::MarksFull.to_string(), Notice::MarksFull.text());
        assert_eq!(Refusal::SlowConsumer.close_reason(), "slow consumer");
        assert_eq!(Refusal::LineTooLong.close_reason(), "line too long");
    }

    #[test]
    fn the_chat_port_page_says_where_the_web_page_is() {
        assert_eq!(
            chat_port_page(Some("http://chat.example.com:8080/")),
            "This is machat's chat port: connect with nc, machat-client or a MaChat client. \
             The web page is at http://chat.example.com:8080/\n\
             With nc, start with {\"name\":\"you\",\"room\":\"lobby\"} and press Enter.\n"
        );
        assert!(chat_port_page(None).contains("This server's web page is off (--http off)."));
    }

    #[test]
    fn refusals_read_as_the_protocol_documents_them() {
        let cases = [
            (Refusal::AuthenticationFailed, "authentication failed"),
            (
                Refusal::RegisteredSendPassword("Mina".into()),
                "name Mina is registered: send its password",
            ),
            (
                Refusal::NameTaken {
                    name: "Mina".into(),
                    place: "room devroom".into(),
                },
                "name Mina is already taken in room devroom",
            ),
            (
                Refusal::TooMuchLike {
                    name: "Аlice".into(),
                    like: "Alice".into(),
                    place: "room devroom".into(),
                },
                "name Аlice is too much like Alice, already in room devroom",
            ),
            (
                Refusal::RoomFull {
                    room: "r".into(),
                    max: 3,
                },
                "room r is full (3 members)",
            ),
            (
                Refusal::UnknownCommand("frob".into()),
                "unknown command /frob (try /help)",
            ),
            (
                Refusal::NeedsPassword("Ann".into()),
                "name Ann needs a password: reconnect with it",
            ),
            (
                Refusal::RegisteredNick("Ann".into()),
                "you are logged in as Ann, a registered name: /nick cannot change it",
            ),
            (
                Refusal::Conversation,
                "rooms starting with @ are direct conversations: open one with {\"type\":\"dm\",\"to\":\"NAME\"}",
            ),
            (
                Refusal::NotAHandshake,
                "start with {\"name\":\"you\",\"room\":\"lobby\"}",
            ),
            (
                Refusal::TooManyWaiting,
                "too many connections from your address waiting to start",
            ),
            (
                Refusal::DmNotRegistered("Zed".into()),
                "Zed is not registered: direct conversations are between registered names",
            ),
        ];
        for (refusal, text) in cases {
            assert_eq!(refusal.to_string(), text);
        }
    }
}
