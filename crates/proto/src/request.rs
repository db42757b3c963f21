//! Version 2 of what a JSON client sends after its handshake: one JSON object per line (per
//! text frame on a WebSocket), each a request about one of the session's rooms or about the
//! session itself. A version-1 client sends lines of text and sits in one room; a version-2
//! client may be in many rooms on one connection, and names the room of every request.
//!
//! Every request may carry `"req"`, a string of at most 64 bytes or a whole number, which the
//! server echoes in its answer (`ok`, `error`, `who`, `rooms`, `quit`'s notice), so a program can
//! match answers to the requests it sent. Parsing never panics and says what was wrong: a bad
//! request gets an error and the connection stays.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::protocol::{push_json, validate_name, validate_room, Reply};
use crate::refusal::Refusal;

/// Longest `"req"` string, in bytes: an id, not a payload (the answer repeats it).
pub const MAX_REQ_ID: usize = 64;

/// A request's `"req"`, kept as the JSON text to echo (a string, escaped, or a number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReqId(String);

impl ReqId {
    /// The id as JSON text.
    pub fn as_json(&self) -> &str {
        &self.0
    }
}

/// A version-2 request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub req: Option<ReqId>,
    pub kind: Kind,
}

/// What a version-2 request asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Join a room; `history` and `since` as in the handshake.
    Join {
        room: String,
        history: Option<u64>,
        since: Option<u64>,
        /// The room's key (mode `+key`).
        key: Option<String>,
    },
    Leave {
        room: String,
    },
    /// A message (it may span lines, like a WebSocket frame of version 1).
    Say {
        room: String,
        text: String,
    },
    /// An action (`/me`).
    Me {
        room: String,
        text: String,
    },
    /// A private message to a member of `room`.
    Msg {
        room: String,
        to: String,
        text: String,
    },
    Who {
        room: String,
    },
    Rooms,
    /// The room's last `limit` messages (20 if absent), as `/history`; with `before`, the
    /// last `limit` of those with ids below it (older history, a page at a time).
    History {
        room: String,
        limit: Option<u64>,
        before: Option<u64>,
    },
    /// Rename the session in every room it is in (`/nick`); the name already follows the
    /// name rules.
    Nick {
        name: String,
    },
    /// A command in a room, as a version-1 line would give it (`/kick Bob spam`): the
    /// moderation commands, `/topic`, `/mode`, `/bans`, `/modlog`, `/delete`, `/help`.
    Command {
        room: String,
        text: String,
    },
    Quit,
    /// Version 2, a person: moves the read position of `room` forward to `id`.
    Read {
        room: String,
        id: u64,
    },
    /// Version 2, a person: the notification level of `room`.
    Notify {
        room: String,
        level: Level,
    },
    /// Version 2, a person: every mark again.
    Marks,
    /// Version 2, a person: opens the direct conversation with the registered name `to`.
    Dm {
        to: String,
    },
}

/// A mark's notification level (`notify`): what a client should make noise about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    #[default]
    All,
    Mentions,
    None,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::All => "all",
            Level::Mentions => "mentions",
            Level::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "all" => Some(Level::All),
            "mentions" => Some(Level::Mentions),
            "none" => Some(Level::None),
            _ => None,
        }
    }
}

impl Kind {
    /// The room the request is about, if any.
    pub fn room(&self) -> Option<&str> {
        match self {
            Kind::Join { room, .. }
            | Kind::Leave { room }
            | Kind::Say { room, .. }
            | Kind::Me { room, .. }
            | Kind::Msg { room, .. }
            | Kind::Who { room }
            | Kind::History { room, .. }
            | Kind::Command { room, .. }
            | Kind::Read { room, .. }
            | Kind::Notify { room, .. } => Some(room),
            Kind::Rooms | Kind::Nick { .. } | Kind::Quit | Kind::Marks | Kind::Dm { .. } => None,
        }
    }
}

/// A request that could not be read: why, and its `"req"` if that much was readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest {
    pub req: Option<ReqId>,
    pub refusal: Refusal,
}

/// The request types, as `docs/PROTOCOL.md` lists them.
pub const TYPES: &[&str] = &[
    "join", "leave", "say", "me", "msg", "who", "rooms", "history", "nick", "command", "quit",
    "read", "notify", "marks", "dm",
];

/// Reads one request (a line without its line end, or a text frame).
pub fn parse_request(line: &[u8]) -> Result<Request, BadRequest> {
    let bad = |req: Option<ReqId>, refusal: Refusal| BadRequest { req, refusal };
    // PlainValue, as for the handshake: serde_json's raw_value would read an object with its
    // private key as the JSON inside a string.
    let value = serde_json::from_slice::<crate::codec::PlainValue>(line)
        .map(|v| v.0)
        .map_err(|e| bad(None, Refusal::RequestJson(e.to_string())))?;
    let Value::Object(map) = value else {
        return Err(bad(None, Refusal::RequestNotObject));
    };
    let req = req_id(&map).map_err(|r| bad(None, r))?;
    let kind = kind(&map).map_err(|r| bad(req.clone(), r))?;
    Ok(Request { req, kind })
}

fn req_id(map: &Map<String, Value>) -> Result<Option<ReqId>, Refusal> {
    match map.get("req") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= MAX_REQ_ID => Ok(Some(ReqId(
            serde_json::to_string(s).map_err(|_| Refusal::RequestId)?,
        ))),
        Some(Value::Number(n)) if n.is_u64() => Ok(Some(ReqId(n.to_string()))),
        Some(_) => Err(Refusal::RequestId),
    }
}

fn kind(map: &Map<String, Value>) -> Result<Kind, Refusal> {
    let string = |key: &'static str| -> Result<String, Refusal> {
        match map.get(key) {
            None | Some(Value::Null) => Err(Refusal::RequestMissing(key)),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(Refusal::RequestNotString(key)),
        }
    };
    let room = || -> Result<String, Refusal> {
        let room = string("room")?;
        validate_room(&room).map_err(Refusal::Handshake)?;
        Ok(room)
    };
    let count = |key: &'static str| -> Result<Option<u64>, Refusal> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or(Refusal::RequestNotCount(key)),
        }
    };
    let kind = string("type")?;
    Ok(match kind.as_str() {
        "join" => Kind::Join {
            room: room()?,
            history: count("history")?,
            since: count("since")?,
            key: match map.get("key") {
                None | Some(Value::Null) => None,
                Some(Value::String(k)) if k.len() <= 1024 => Some(k.clone()),
                Some(_) => return Err(Refusal::RequestNotString("key")),
            },
        },
        "leave" => Kind::Leave { room: room()? },
        "say" => Kind::Say {
            room: room()?,
            text: string("text")?,
        },
        "me" => {
            let room = room()?;
            let text = string("text")?;
            if text.trim().is_empty() {
                return Err(Refusal::RequestEmpty("text"));
            }
            Kind::Me { room, text }
        }
        "msg" => {
            let room = room()?;
            let to = string("to")?;
            validate_name(&to).map_err(Refusal::Handshake)?;
            let text = string("text")?;
            if text.trim().is_empty() {
                return Err(Refusal::RequestEmpty("text"));
            }
            Kind::Msg { room, to, text }
        }
        "who" => Kind::Who { room: room()? },
        "rooms" => Kind::Rooms,
        "history" => Kind::History {
            room: room()?,
            limit: count("limit")?,
            // An id: there is no message below 1, so 0 asks for nothing and is refused.
            before: match count("before") {
                Ok(Some(0)) | Err(_) => return Err(Refusal::RequestNotId("before")),
                Ok(before) => before,
            },
        },
        "nick" => {
            let name = string("name")?;
            // The same answer as `/nick` gives a name that breaks a rule.
            validate_name(&name).map_err(Refusal::NickUsage)?;
            Kind::Nick { name }
        }
        "command" => {
            let room = room()?;
            let text = string("text")?;
            if !text.starts_with('/') || text.contains(['\n', '\r']) {
                return Err(Refusal::RequestCommand);
            }
            Kind::Command { room, text }
        }
        "quit" => Kind::Quit,
        "read" => {
            let room = room()?;
            let id = count("id")?.ok_or(Refusal::RequestMissing("id"))?;
            Kind::Read { room, id }
        }
        "notify" => {
            let room = room()?;
            let level = string("level")?;
            let level = Level::parse(&level).ok_or(Refusal::NotifyLevel)?;
            Kind::Notify { room, level }
        }
        "marks" => Kind::Marks,
        "dm" => {
            let to = string("to")?;
            validate_name(&to).map_err(Refusal::Handshake)?;
            Kind::Dm { to }
        }
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(Refusal::RequestType(shown));
        }
    })
}

/// Renders a reply for a version-2 client: the reply's JSON line with `"req"` right after
/// `"type"` when the request had one.
pub fn render_reply(reply: &Reply<'_>, req: Option<&ReqId>, out: &mut Vec<u8>) {
    let Some(req) = req else {
        reply.render(crate::protocol::Format::Json, out);
        return;
    };
    let mut value = reply.to_json();
    if let (Value::Object(map), Ok(id)) = (&mut value, serde_json::from_str::<Value>(req.as_json()))
    {
        map.shift_insert(1, "req".to_owned(), id);
    }
    push_json(out, &value);
}

/// `{"type":"ok","req":R}`: a request that has no answer of its own was carried out; a
/// message's `ok` also gives the id the room gave it (`"id":N`), where it is known at once.
pub fn render_ok(req: &ReqId, id: Option<u64>, out: &mut Vec<u8>) {
    let mut sink = Utf8Sink(out);
    let _ = write!(sink, "{{\"type\":\"ok\",\"req\":{}", req.as_json());
    if let Some(id) = id {
        let _ = write!(sink, ",\"id\":{id}");
    }
    let _ = sink.write_str("}\n");
}

/// Lets `write!` append to a byte buffer.
struct Utf8Sink<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Utf8Sink<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Request, BadRequest> {
        parse_request(s.as_bytes())
    }

    #[test]
    fn every_request_type_reads() {
        let r = parse(r#"{"type":"join","room":"ops","history":5,"req":"a1"}"#).unwrap();
        assert_eq!(r.req.as_ref().map(ReqId::as_json), Some("\"a1\""));
        assert_eq!(
            r.kind,
            Kind::Join {
                room: "ops".into(),
                history: Some(5),
                since: None,
                key: None,
            }
        );
        let r = parse(r#"{"type":"join","room":"ops","key":"s3cret"}"#).unwrap();
        assert!(matches!(r.kind, Kind::Join { key: Some(k), .. } if k == "s3cret"));
        let r = parse(r#"{"type":"command","room":"ops","text":"/kick Bob spam"}"#).unwrap();
        assert_eq!(
            r.kind,
            Kind::Command {
                room: "ops".into(),
                text: "/kick Bob spam".into()
            }
        );
        let bad = parse(r#"{"type":"command","room":"ops","text":"kick Bob"}"#).unwrap_err();
        assert_eq!(bad.refusal, Refusal::RequestCommand);
        let r = parse(r#"{"req":7,"type":"say","room":"ops","text":"two\nlines"}"#).unwrap();
        assert_eq!(r.req.as_ref().map(ReqId::as_json), Some("7"));
        assert_eq!(
            r.kind,
            Kind::Say {
                room: "ops".into(),
                text: "two\nlines".into()
            }
        );
        for (line, kind) in [
            (r#"{"type":"rooms"}"#, Kind::Rooms),
            (r#"{"type":"quit"}"#, Kind::Quit),
            (r#"{"type":"marks"}"#, Kind::Marks),
            (
                r#"{"type":"read","room":"a","id":18446744073709551615}"#,
                Kind::Read {
                    room: "a".into(),
                    id: u64::MAX,
                },
            ),
            (
                r#"{"type":"notify","room":"a","level":"mentions"}"#,
                Kind::Notify {
                    room: "a".into(),
                    level: Level::Mentions,
                },
            ),
            (r#"{"type":"dm","to":"Ann"}"#, Kind::Dm { to: "Ann".into() }),
            (
                r#"{"type":"nick","name":"Minnie"}"#,
                Kind::Nick {
                    name: "Minnie".into(),
                },
            ),
            (
                r#"{"type":"who","room":"a"}"#,
                Kind::Who { room: "a".into() },
            ),
            (
                r#"{"type":"leave","room":"a"}"#,
                Kind::Leave { room: "a".into() },
            ),
            (
                r#"{"type":"history","room":"a","limit":3}"#,
                Kind::History {
                    room: "a".into(),
                    limit: Some(3),
                    before: None,
                },
            ),
            (
                r#"{"type":"history","room":"a","limit":3,"before":41}"#,
                Kind::History {
                    room: "a".into(),
                    limit: Some(3),
                    before: Some(41),
                },
            ),
            (
                r#"{"type":"me","room":"a","text":"waves"}"#,
                Kind::Me {
                    room: "a".into(),
                    text: "waves".into(),
                },
            ),
            (
                r#"{"type":"msg","room":"a","to":"Bob","text":"psst"}"#,
                Kind::Msg {
                    room: "a".into(),
                    to: "Bob".into(),
                    text: "psst".into(),
                },
            ),
        ] {
            assert_eq!(parse(line).unwrap().kind, kind, "{line}");
        }
    }

    #[test]
    fn bad_requests_say_why_and_keep_their_req() {
        let cases = [
            ("nope", None, "invalid request JSON"),
            ("[1]", None, "must be a JSON object"),
            (r#"{"type":"rooms","req":[1]}"#, None, "\"req\" must be"),
            (r#"{"type":"rooms","req":-1}"#, None, "\"req\" must be"),
            (r#"{"req":1}"#, Some("1"), "missing \"type\""),
            (
                r#"{"req":1,"type":5}"#,
                Some("1"),
                "\"type\" must be a string",
            ),
            (
                r#"{"req":"x","type":"dance"}"#,
                Some("\"x\""),
                "unknown request type",
            ),
            (
                r#"{"req":1,"type":"say","text":"hi"}"#,
                Some("1"),
                "missing \"room\"",
            ),
            (
                r#"{"req":1,"type":"say","room":"a/b","text":"hi"}"#,
                Some("1"),
                "rooms cannot contain \"/\"",
            ),
            (
                r#"{"req":1,"type":"say","room":"a"}"#,
                Some("1"),
                "missing \"text\"",
            ),
            (
                r#"{"req":1,"type":"me","room":"a","text":" "}"#,
                Some("1"),
                "\"text\" must not be empty",
            ),
            (
                r#"{"req":1,"type":"msg","room":"a","to":"B b","text":"x"}"#,
                Some("1"),
                "names cannot contain",
            ),
            (r#"{"req":1,"type":"nick"}"#, Some("1"), "missing \"name\""),
            (
                r#"{"req":1,"type":"nick","name":7}"#,
                Some("1"),
                "\"name\" must be a string",
            ),
            (
                r#"{"req":1,"type":"nick","name":""}"#,
                Some("1"),
                "usage: /nick NAME (name must not be empty)",
            ),
            (
                r#"{"req":1,"type":"join","room":"a","since":-2}"#,
                Some("1"),
                "\"since\" must be",
            ),
            (
                r#"{"req":1,"type":"history","room":"a","limit":"5"}"#,
                Some("1"),
                "\"limit\" must be",
            ),
            (
                r#"{"req":1,"type":"history","room":"a","before":0}"#,
                Some("1"),
                "\"before\" must be a whole number >= 1",
            ),
            (
                r#"{"req":1,"type":"history","room":"a","before":-3}"#,
                Some("1"),
                "\"before\" must be a whole number >= 1",
            ),
            (
                r#"{"req":1,"type":"history","room":"a","before":"9"}"#,
                Some("1"),
                "\"before\" must be a whole number >= 1",
            ),
            (
                r#"{"req":1,"type":"history","room":"a","before":2.5}"#,
                Some("1"),
                "\"before\" must be a whole number >= 1",
            ),
            (
                r#"{"req":1,"type":"read","room":"a"}"#,
                Some("1"),
                "missing \"id\"",
            ),
            (
                r#"{"req":1,"type":"read","room":"a","id":-1}"#,
                Some("1"),
                "\"id\" must be a whole number",
            ),
            (
                r#"{"req":1,"type":"read","room":"a","id":1e30}"#,
                Some("1"),
                "\"id\" must be a whole number",
            ),
            (
                r#"{"req":1,"type":"notify","room":"a","level":"loud"}"#,
                Some("1"),
                "\"level\" must be all, mentions or none",
            ),
            (
                r#"{"req":1,"type":"notify","room":"a"}"#,
                Some("1"),
                "missing \"level\"",
            ),
            (r#"{"req":1,"type":"dm"}"#, Some("1"), "missing \"to\""),
            (
                r#"{"req":1,"type":"dm","to":"a b"}"#,
                Some("1"),
                "names cannot contain",
            ),
        ];
        for (line, req, want) in cases {
            let bad = parse(line).unwrap_err();
            assert_eq!(bad.req.as_ref().map(ReqId::as_json), req, "{line}");
            let text = bad.refusal.to_string();
            assert!(text.contains(want), "{line}: {text}");
        }
        let long = format!(
            r#"{{"type":"rooms","req":"{}"}}"#,
            "x".repeat(MAX_REQ_ID + 1)
        );
        assert!(parse(&long).is_err());
    }

    #[test]
    fn replies_echo_the_req_right_after_the_type() {
        let r = parse(r#"{"type":"rooms","req":"a\"b"}"#).unwrap();
        let mut out = Vec::new();
        render_reply(&Reply::Error("no"), r.req.as_ref(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"type\":\"error\",\"req\":\"a\\\"b\",\"reason\":\"no\"}\n"
        );
        let mut out = Vec::new();
        render_ok(r.req.as_ref().unwrap(), None, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"type\":\"ok\",\"req\":\"a\\\"b\"}\n"
        );
        let mut out = Vec::new();
        render_ok(&ReqId("7".into()), Some(12), &mut out);
        assert_eq!(out, b"{\"type\":\"ok\",\"req\":7,\"id\":12}\n");
        let mut out = Vec::new();
        render_reply(&Reply::Error("no"), None, &mut out);
        assert_eq!(out, b"{\"type\":\"error\",\"reason\":\"no\"}\n");
    }
}
