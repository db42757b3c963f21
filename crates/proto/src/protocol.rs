//! The wire protocol: what a handshake may say, which names and rooms are allowed, how a line a
//! client sent is cleaned, and how every event is rendered in each format.
//!
//! Everything here is pure (no I/O), so the rules that keep one client from forging another's
//! lines or driving another's terminal can be tested exhaustively. The exact bytes are written
//! down in `docs/PROTOCOL.md`; keep the two in step.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use crate::message::{History, StoredMessage};

/// Longest name, in characters (not bytes).
pub const MAX_NAME_CHARS: usize = 32;
/// Longest room name, in characters.
pub const MAX_ROOM_CHARS: usize = 64;

/// How a client wants the server's lines: MaChat's plain `name:text` or one JSON object a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text = 0,
    Json = 1,
    /// JSON for a WebSocket client: every renderer here writes it as [`Format::Json`] lines;
    /// a room's log of it holds each event as a text frame instead ([`crate::frame`]), made
    /// once for all its WebSocket members, and the WebSocket transport frames any plain line
    /// it is handed. Never asked for in a handshake.
    Frames = 2,
}

impl Format {
    /// Every format, in the order of their numbers (a room keeps a log per format).
    pub const ALL: [Format; 3] = [Format::Text, Format::Json, Format::Frames];

    /// True for the JSON formats (plain lines or frames).
    pub fn is_json(self) -> bool {
        !matches!(self, Format::Text)
    }
}

/// What a client asked for in its first JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub name: String,
    /// The room to join at once. Always there in version 1; a version-2 client may leave it
    /// out and join rooms with requests.
    pub room: Option<String>,
    pub format: Format,
    /// `"version"`: 1 (the default) speaks lines and sits in one room; 2 speaks JSON requests
    /// ([`crate::request`]) and may be in many rooms.
    pub version: u8,
    /// `"history": N`: replay the room's last N messages before live ones.
    pub history: Option<u64>,
    /// `"since": ID`: replay every stored message after ID (resume after a reconnect).
    pub since: Option<u64>,
    /// `"password"`: for a registered name.
    pub password: Option<Secret>,
    /// `"key"`: the password of a room with a key (mode `+key`).
    pub key: Option<Secret>,
    /// `"token"`: a session token from `POST /api/login`, for a registered name instead of
    /// its password (the password wins when both are given).
    pub token: Option<Secret>,
}

/// A password, a room's key or a session token: never printed, not even in debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Longest password accepted, in bytes.
pub const MAX_PASSWORD: usize = 1024;

/// Reads a WebSocket handshake frame: the same object, rules and refusals as on TCP.
pub fn handshake_frame(text: &str, max: usize) -> Result<Handshake, String> {
    if text.len() > max {
        return Err(format!("handshake too large (over {max} bytes)"));
    }
    // PlainValue, as on TCP: a serde_json::Value would read an object keyed
    // "$serde_json::private::RawValue" as the JSON in its string (axum enables raw_value).
    let value = serde_json::from_str::<crate::codec::PlainValue>(text)
        .map(|v| v.0)
        .map_err(|e| format!("invalid handshake JSON: {e}"))?;
    // The answer is always JSON here: a `"format"` in the handshake is checked, then ignored.
    parse_handshake(value)
}

/// Parses the handshake object. Unknown keys are ignored, so clients of later versions (or with
/// extra fields of their own) still get in.
pub fn parse_handshake(value: Value) -> Result<Handshake, String> {
    let Value::Object(map) = value else {
        return Err(
            "handshake must be a JSON object like {\"name\":\"Mina\",\"room\":\"devroom\"}".into(),
        );
    };
    let field = |key: &str| -> Result<String, String> {
        match map.get(key) {
            None | Some(Value::Null) => Err(format!("handshake is missing \"{key}\"")),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("\"{key}\" must be a string")),
        }
    };
    let version = match map.get("version") {
        None | Some(Value::Null) => 1,
        Some(v) if v.as_u64() == Some(1) => 1,
        Some(v) if v.as_u64() == Some(2) => 2,
        Some(_) => return Err("\"version\" must be 1 or 2".into()),
    };
    let name = field("name")?;
    // Version 2 joins its rooms with requests: a room in the handshake is optional there.
    let room = match (version, map.get("room")) {
        (2, None | Some(Value::Null)) => None,
        _ => Some(field("room")?),
    };
    validate_name(&name)?;
    if let Some(room) = &room {
        validate_room(room)?;
    }
    let format = match map.get("format") {
        None | Some(Value::Null) if version == 2 => Format::Json,
        None | Some(Value::Null) => Format::Text,
        Some(Value::String(s)) if s == "text" && version == 1 => Format::Text,
        Some(Value::String(s)) if s == "json" => Format::Json,
        Some(_) if version == 2 => {
            return Err("version 2 speaks JSON: \"format\" must be \"json\" or absent".into())
        }
        Some(_) => return Err("\"format\" must be \"text\" or \"json\"".into()),
    };
    let count = |key: &str| -> Result<Option<u64>, String> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("\"{key}\" must be a whole number >= 0")),
        }
    };
    let history = count("history")?;
    let since = count("since")?;
    let secret = |key: &str| -> Result<Option<Secret>, String> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(p)) if p.len() <= MAX_PASSWORD => Ok(Some(Secret(p.clone()))),
            Some(Value::String(_)) => Err(format!("\"{key}\" is longer than {MAX_PASSWORD} bytes")),
            Some(_) => Err(format!("\"{key}\" must be a string")),
        }
    };
    let password = secret("password")?;
    let key = secret("key")?;
    let token = secret("token")?;
    Ok(Handshake {
        name,
        room,
        format,
        version,
        history,
        since,
        password,
        key,
        token,
    })
}

/// Whether a name or room may hold `c`: an allow-list of character classes (letters, marks,
/// numbers, punctuation and symbols), less `: * /` and every default-ignorable code point
/// (variation selectors, tag characters, Mongolian free variation selectors, Hangul fillers,
/// zero-width joiners, ...), which render as nothing and would let `Mina` + U+E0100 pass for
/// `Mina`. Whitespace, control, format, private-use and unassigned characters are not in the
/// classes. The tables are the crates' (Unicode's own data), not ours.
fn allowed_in_ident(c: char) -> bool {
    use unicode_properties::{GeneralCategoryGroup as G, UnicodeGeneralCategory};
    use unicode_security::general_security_profile::IdentifierType;
    use unicode_security::GeneralSecurityProfile;
    if c.is_ascii() {
        return c.is_ascii_graphic() && !matches!(c, ':' | '*' | '/');
    }
    matches!(
        c.general_category_group(),
        G::Letter | G::Mark | G::Number | G::Punctuation | G::Symbol
    ) && c.identifier_type() != Some(IdentifierType::Default_Ignorable)
}

fn validate_ident(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if s.chars().count() > max {
        return Err(format!("{what} is longer than {max} characters"));
    }
    if let Some(c) = s.chars().find(|&c| !allowed_in_ident(c)) {
        return Err(format!("{what}s cannot contain {}", forbidden(c)));
    }
    Ok(())
}

/// What is wrong with a forbidden character, in words a person can act on: the character
/// itself when it shows (`":"`), its code point when it may not (`U+200B`), and why or what to
/// do instead.
fn forbidden(c: char) -> String {
    use unicode_security::general_security_profile::IdentifierType;
    use unicode_security::GeneralSecurityProfile;
    let kind = match c {
        ' ' => return "spaces: use _ or - instead".to_owned(),
        ':' => return "\":\" (it ends the name in a message line)".to_owned(),
        '*' => return "\"*\" (it marks the server's lines)".to_owned(),
        '/' => return "\"/\" (it starts commands)".to_owned(),
        c if c.is_control() => "a control character",
        c if c.is_whitespace() => "a space: use _ or - instead",
        c if c.identifier_type() == Some(IdentifierType::Default_Ignorable) => {
            "an invisible character"
        }
        _ => "a character that may not show as itself",
    };
    format!("U+{:04X} ({kind})", c as u32)
}

/// The keys names are compared by, for uniqueness in a room and for registration: two names
/// are too much alike when either key is the same. Both are NFKC, then the confusable skeleton
/// of Unicode TS #39, then case folding; `lower` takes the skeleton of the case-folded name
/// (so `alice`, `ALICE`, `Аlice` with a Cyrillic А, `Ａlice` fullwidth, `rnina`/`mina` meet),
/// `upper` of the upper-cased one (capitals whose small letters look unlike their Latin
/// twins: Cyrillic `Мina`/`Mina`, `ТОМ`/`TOM`). `José` in NFC and in NFD have one key.
/// Computed at a join, a rename or a login, never per message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NameKey {
    pub lower: String,
    pub upper: String,
}

impl NameKey {
    pub fn clashes(&self, other: &NameKey) -> bool {
        self.lower == other.lower || self.upper == other.upper
    }
}

pub fn name_key(name: &str) -> NameKey {
    use unicode_normalization::UnicodeNormalization;
    let nfkc: String = name.nfkc().collect();
    let shape = |s: &str| -> String {
        let skeleton: String = unicode_security::skeleton(s).collect();
        caseless::default_case_fold_str(&skeleton)
    };
    NameKey {
        lower: shape(&caseless::default_case_fold_str(&nfkc)),
        upper: shape(&nfkc.to_uppercase()),
    }
}

/// A name is 1 to 32 characters with no whitespace, control or invisible characters and none of
/// `: * /`: so `name:` always ends at the first colon and `*** ` can never start a user's line.
pub fn validate_name(name: &str) -> Result<(), String> {
    validate_ident("name", name, MAX_NAME_CHARS)
}

/// A room follows the name rules with up to 64 characters.
pub fn validate_room(room: &str) -> Result<(), String> {
    validate_ident("room", room, MAX_ROOM_CHARS)
}

/// Cleans one received line (its `\n` and a `\r` before it already gone) for delivery: invalid
/// UTF-8 becomes U+FFFD, and control characters other than tab are removed together with the
/// escape sequences they start, so no client can move another's cursor, recolour its terminal or
/// set its window title.
pub fn clean_line(raw: &[u8]) -> Cow<'_, str> {
    // Fast path: plain printable ASCII, the overwhelming majority of chat lines, borrowed as is.
    if raw.iter().all(|&b| (0x20..0x7f).contains(&b) || b == b'\t') {
        if let Ok(text) = std::str::from_utf8(raw) {
            return Cow::Borrowed(text);
        }
    }
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\t' => out.push(c),
            '\u{1b}' => match chars.peek() {
                // CSI: ESC [ parameters intermediates final
                Some('[') => {
                    chars.next();
                    skip_csi(&mut chars);
                }
                // OSC, DCS, SOS, PM, APC: strings ended by BEL or ESC \
                Some(']' | 'P' | 'X' | '^' | '_') => {
                    chars.next();
                    skip_string(&mut chars);
                }
                // Two-character escapes (ESC c resets the terminal, ESC 7 saves the cursor...)
                Some(_) => {
                    chars.next();
                }
                None => {}
            },
            '\u{9b}' => skip_csi(&mut chars),
            '\u{9d}' | '\u{90}' | '\u{98}' | '\u{9e}' | '\u{9f}' => skip_string(&mut chars),
            // Unicode line and paragraph separators end a line for some clients: a line of
            // text cannot hold a line break, so they go like CR (NEL, U+0085, is a control).
            '\u{2028}' | '\u{2029}' => {}
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Cleans a message that may span lines (a WebSocket frame): each line as [`clean_line`] does,
/// kept apart by `\n` (a `\r` before it is dropped), and trailing line ends removed. A single
/// line comes back exactly as `clean_line` returns it.
pub fn clean_message(raw: &[u8]) -> Cow<'_, str> {
    // U+2028 and U+2029 (and NEL, U+0085) are line breaks too: as `\n`, so each line gets the
    // sender's name in plain text.
    const BREAKS: [&[u8]; 3] = [
        "\u{2028}".as_bytes(),
        "\u{2029}".as_bytes(),
        "\u{85}".as_bytes(),
    ];
    if !raw.is_ascii()
        && BREAKS
            .iter()
            .any(|b| memchr::memmem::find(raw, b).is_some())
    {
        let mut copy = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            match BREAKS.iter().find(|b| raw[i..].starts_with(b)) {
                Some(b) => {
                    copy.push(b'\n');
                    i += b.len();
                }
                None => {
                    copy.push(raw[i]);
                    i += 1;
                }
            }
        }
        return Cow::Owned(clean_message(&copy).into_owned());
    }
    let mut end = raw.len();
    while end > 0 && matches!(raw[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    let raw = &raw[..end];
    if memchr::memchr(b'\n', raw).is_none() {
        return clean_line(raw);
    }
    let mut out = String::with_capacity(raw.len());
    for (i, line) in raw.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.push_str(&clean_line(line));
    }
    Cow::Owned(out)
}

fn skip_csi(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    // Parameter and intermediate bytes are 0x20..=0x3f; the final byte is 0x40..=0x7e.
    while let Some(&c) = chars.peek() {
        chars.next();
        if ('\u{40}'..='\u{7e}').contains(&c) || !('\u{20}'..='\u{3f}').contains(&c) {
            break;
        }
    }
}

fn skip_string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while let Some(c) = chars.next() {
        match c {
            '\u{7}' | '\u{9c}' => break,
            '\u{1b}' => {
                if chars.peek() == Some(&'\\') {
                    chars.next();
                }
                break;
            }
            _ => {}
        }
    }
}

/// A UTC timestamp with millisecond precision, RFC 3339 (`2026-11-26T10:44:05.123Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Timestamp(ms)
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0 % 1000;
        let secs = self.0 / 1000;
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let mo = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(mo <= 2);
        write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Something that happened in a room, rendered once per format and shared by every member.
#[derive(Debug, Clone, Copy)]
pub enum RoomEvent<'a> {
    Message {
        id: u64,
        name: &'a str,
        text: &'a str,
    },
    Action {
        id: u64,
        name: &'a str,
        text: &'a str,
    },
    Join {
        name: &'a str,
    },
    Leave {
        name: &'a str,
    },
    Nick {
        old: &'a str,
        new: &'a str,
    },
    /// A moderation action (see [`crate::act`]).
    Act(crate::act::Act<'a>),
}

#[derive(Serialize)]
struct JsonRoomEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    room: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    new: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    ts: Timestamp,
}

impl RoomEvent<'_> {
    /// Appends the plain-text rendering, newline included. A message of several lines (sent
    /// from a WebSocket) becomes one `name:line` per line, so a line of it can never pass for
    /// another sender's.
    pub fn render_text(&self, out: &mut Vec<u8>) {
        match *self {
            RoomEvent::Message { name, text, .. } => {
                out.reserve(name.len() + text.len() + 2);
                for (i, line) in text.split('\n').enumerate() {
                    if i > 0 {
                        out.push(b'\n');
                    }
                    out.extend_from_slice(name.as_bytes());
                    out.push(b':');
                    out.extend_from_slice(line.as_bytes());
                }
            }
            RoomEvent::Action { name, text, .. } => {
                for (i, line) in text.split('\n').enumerate() {
                    if i > 0 {
                        out.push(b'\n');
                    }
                    out.extend_from_slice(b"* ");
                    out.extend_from_slice(name.as_bytes());
                    out.push(b' ');
                    out.extend_from_slice(line.as_bytes());
                }
            }
            RoomEvent::Join { name } => push_notice(out, format_args!("{name} joined")),
            RoomEvent::Leave { name } => push_notice(out, format_args!("{name} left")),
            RoomEvent::Nick { old, new } => push_notice(out, format_args!("{old} is now {new}")),
            RoomEvent::Act(act) => return act.render_text(out),
        }
        out.push(b'\n');
    }

    /// Appends the JSON rendering (one object and a newline).
    pub fn render_json(&self, room: &str, ts: Timestamp, out: &mut Vec<u8>) {
        let (kind, id, name, new, text) = match *self {
            RoomEvent::Message { id, name, text } => ("message", Some(id), name, None, Some(text)),
            RoomEvent::Action { id, name, text } => ("action", Some(id), name, None, Some(text)),
            RoomEvent::Join { name } => ("join", None, name, None, None),
            RoomEvent::Leave { name } => ("leave", None, name, None, None),
            RoomEvent::Nick { old, new } => ("nick", None, old, Some(new), None),
            RoomEvent::Act(act) => return act.render_json(room, ts, out),
        };
        let ev = JsonRoomEvent {
            kind,
            id,
            room,
            name,
            new,
            text,
            ts,
        };
        push_json(out, &ev);
    }
}

/// Renders replayed history: in text, `*** history: N messages`, the messages as ordinary
/// lines, `*** end of history`; in JSON, `{"type":"history","room":..,"count":N}`, the message
/// objects (with their ids and times), `{"type":"end_of_history","room":..}`.
pub fn render_history(room: &str, format: Format, messages: &[StoredMessage], out: &mut Vec<u8>) {
    render_history_start(room, format, messages.len(), out);
    render_history_messages(room, format, messages, out);
    render_history_end(room, format, out);
}

/// Renders a history answer: the replay, or the reason there is none.
pub fn render_answer(room: &str, format: Format, answer: History, out: &mut Vec<u8>) {
    match answer {
        Ok(messages) => render_history(room, format, &messages, out),
        Err(reason) => Reply::Error(&reason).render(format, out),
    }
}

/// The line that opens a replay of `n` messages.
pub fn render_history_start(room: &str, format: Format, n: usize, out: &mut Vec<u8>) {
    match format {
        Format::Text => {
            let plural = if n == 1 { "" } else { "s" };
            push_notice(out, format_args!("history: {n} message{plural}"));
            out.push(b'\n');
        }
        Format::Json | Format::Frames => push_json(
            out,
            &serde_json::json!({"type": "history", "room": room, "count": n}),
        ),
    }
}

/// Replayed messages, as ordinary message lines (text) or message objects with ids (JSON).
pub fn render_history_messages(
    room: &str,
    format: Format,
    messages: &[StoredMessage],
    out: &mut Vec<u8>,
) {
    for m in messages {
        let (id, name, text) = (m.id, m.name.as_str(), m.text.as_str());
        let event = if m.action {
            RoomEvent::Action { id, name, text }
        } else {
            RoomEvent::Message { id, name, text }
        };
        match format {
            Format::Text => event.render_text(out),
            Format::Json | Format::Frames => event.render_json(room, m.ts, out),
        }
    }
}

/// The line that closes a replay.
pub fn render_history_end(room: &str, format: Format, out: &mut Vec<u8>) {
    match format {
        Format::Text => {
            push_notice(out, format_args!("end of history"));
            out.push(b'\n');
        }
        Format::Json | Format::Frames => push_json(
            out,
            &serde_json::json!({"type": "end_of_history", "room": room}),
        ),
    }
}

/// Appends `*** ` + the notice + no newline.
fn push_notice(out: &mut Vec<u8>, args: std::fmt::Arguments<'_>) {
    out.extend_from_slice(b"*** ");
    let mut s = String::new();
    let _ = s.write_fmt(args);
    out.extend_from_slice(s.as_bytes());
}

/// Appends one JSON value and a newline. Our event types always serialize; should one ever fail,
/// the line is dropped rather than sent half-written.
pub fn push_json<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    let start = out.len();
    if serde_json::to_writer(&mut *out, value).is_ok() {
        out.push(b'\n');
    } else {
        out.truncate(start);
    }
}

/// A line meant for one client only: a command's reply, an error, a private message.
#[derive(Debug, Clone)]
pub enum Reply<'a> {
    Error(&'a str),
    Notice(&'a str),
    Who {
        room: &'a str,
        members: &'a [String],
    },
    Rooms(&'a [(String, usize)], usize),
    Private {
        from: &'a str,
        to: &'a str,
        text: &'a str,
        incoming: bool,
    },
    /// The commands the caller may use (see [`HELP`] for everyone's).
    Help(&'a [&'a str]),
}

/// The commands `/help` lists, in order.
pub const HELP: &[&str] = &[
    "/who",
    "/rooms",
    "/join ROOM",
    "/nick NAME",
    "/me ACTION",
    "/msg NAME TEXT",
    "/history [N]",
    "/quit",
    "/help",
];

impl Reply<'_> {
    pub fn render(&self, format: Format, out: &mut Vec<u8>) {
        match format {
            Format::Text => {
                match self {
                    Reply::Error(reason) => push_notice(out, format_args!("error: {reason}")),
                    Reply::Notice(text) => push_notice(out, format_args!("{text}")),
                    Reply::Who { room, members } => push_notice(
                        out,
                        format_args!("{} in {room}: {}", members.len(), members.join(" ")),
                    ),
                    Reply::Rooms(rooms, more) => {
                        let total = rooms.len() + more;
                        let mut s = format!("{total} room{}:", if total == 1 { "" } else { "s" });
                        for (room, n) in rooms.iter() {
                            let _ = write!(s, " {room}({n})");
                        }
                        if *more > 0 {
                            let _ = write!(s, " and {more} more");
                        }
                        push_notice(out, format_args!("{s}"));
                    }
                    Reply::Private {
                        from,
                        to,
                        text,
                        incoming,
                    } => {
                        for (i, line) in text.split('\n').enumerate() {
                            if i > 0 {
                                out.push(b'\n');
                            }
                            if *incoming {
                                push_notice(out, format_args!("private from {from}: {line}"));
                            } else {
                                push_notice(out, format_args!("private to {to}: {line}"));
                            }
                        }
                    }
                    Reply::Help(commands) => {
                        push_notice(out, format_args!("commands: {}", commands.join(", ")));
                    }
                }
                out.push(b'\n');
            }
            Format::Json | Format::Frames => self.render_json(out),
        }
    }

    fn render_json(&self, out: &mut Vec<u8>) {
        push_json(out, &self.to_json());
    }

    /// The reply as a JSON object, its keys in the documented order.
    pub fn to_json(&self) -> Value {
        use serde_json::json;
        match self {
            Reply::Error(reason) => json!({"type": "error", "reason": reason}),
            Reply::Notice(text) => json!({"type": "notice", "text": text}),
            Reply::Who { room, members } => {
                json!({"type": "who", "room": room, "members": members})
            }
            Reply::Rooms(rooms, more) => {
                let list: Vec<Value> = rooms
                    .iter()
                    .map(|(room, n)| json!({"room": room, "members": n}))
                    .collect();
                json!({"type": "rooms", "rooms": list, "more": more})
            }
            Reply::Private { from, to, text, .. } => json!({
                "type": "private", "from": from, "to": to, "text": text, "ts": Timestamp::now()
            }),
            Reply::Help(commands) => json!({"type": "help", "commands": commands}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_message_of_several_lines_is_one_line_per_line_in_text() {
        let text = clean_message(b"first\r\nBob:second\x1b[31m\n\n");
        assert_eq!(text, "first\nBob:second");
        let mut out = Vec::new();
        RoomEvent::Message {
            id: 1,
            name: "Mina",
            text: &text,
        }
        .render_text(&mut out);
        assert_eq!(out, b"Mina:first\nMina:Bob:second\n");
        out.clear();
        RoomEvent::Message {
            id: 1,
            name: "Mina",
            text: &text,
        }
        .render_json("r", Timestamp(0), &mut out);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(matches!(clean_message(b"plain\n"), Cow::Borrowed("plain")));
    }

    #[test]
    fn handshake_accepts_any_key_order_and_ignores_unknown_keys() {
        let h = parse_handshake(json!({"room": "dev", "x": [1], "name": "Mina"})).unwrap();
        assert_eq!(h.name, "Mina");
        assert_eq!(h.room.as_deref(), Some("dev"));
        assert_eq!(h.format, Format::Text);
        let h = parse_handshake(json!({"room": "dev", "name": "Mina", "format": "json"})).unwrap();
        assert_eq!(h.format, Format::Json);
    }

    #[test]
    fn handshake_secrets_are_read_and_never_shown() {
        let h = parse_handshake(json!({
            "name": "Mina", "room": "r", "password": "pw-1", "key": "k-2", "token": "tk-3"
        }))
        .unwrap();
        assert_eq!(h.password, Some(Secret("pw-1".into())));
        assert_eq!(h.key, Some(Secret("k-2".into())));
        assert_eq!(h.token, Some(Secret("tk-3".into())));
        let shown = format!("{h:?}");
        assert!(
            !["pw-1", "k-2", "tk-3"].iter().any(|s| shown.contains(s)),
            "{shown}"
        );
        let h = parse_handshake(json!({"name": "Mina", "room": "r", "token": null})).unwrap();
        assert_eq!(h.token, None, "null counts as absent");
        let long = "t".repeat(MAX_PASSWORD + 1);
        let err = parse_handshake(json!({"name": "a", "room": "r", "token": long})).unwrap_err();
        assert_eq!(err, "\"token\" is longer than 1024 bytes");
        let err = parse_handshake(json!({"name": "a", "room": "r", "token": 5})).unwrap_err();
        assert_eq!(err, "\"token\" must be a string");
    }

    #[test]
    fn handshake_rejections_say_why() {
        let cases = [
            (json!([1]), "JSON object"),
            (json!({"room": "r"}), "missing \"name\""),
            (json!({"name": "a"}), "missing \"room\""),
            (json!({"name": 1, "room": "r"}), "\"name\" must be a string"),
            (
                json!({"name": "a", "room": true}),
                "\"room\" must be a string",
            ),
            (json!({"name": "", "room": "r"}), "name must not be empty"),
            (json!({"name": "a", "room": ""}), "room must not be empty"),
            (
                json!({"name": "Bob\nAlice", "room": "r"}),
                "names cannot contain",
            ),
            (json!({"name": "a:b", "room": "r"}), "names cannot contain"),
            (json!({"name": "a", "room": "r", "format": "xml"}), "format"),
            (
                json!({"name": "a", "room": "r", "history": -1}),
                "\"history\" must be",
            ),
            (
                json!({"name": "a", "room": "r", "since": "5"}),
                "\"since\" must be",
            ),
            (
                json!({"name": "a", "room": "r", "history": 1.5}),
                "\"history\" must be",
            ),
        ];
        for (v, want) in cases {
            let err = parse_handshake(v.clone()).unwrap_err();
            assert!(err.contains(want), "{v}: {err}");
        }
    }

    #[test]
    fn name_rules() {
        assert!(validate_name("Mina").is_ok());
        assert!(validate_name("Ünïcødé_名前-1").is_ok());
        assert!(validate_name(&"a".repeat(32)).is_ok());
        assert!(validate_name(&"é".repeat(32)).is_ok());
        assert!(validate_name(&"a".repeat(33)).is_err());
        for bad in [
            "a b",
            "a\tb",
            "a*",
            "*** x",
            "a/b",
            "a:b",
            "a\u{7}",
            "Mina\u{200b}",
            "a\u{202e}",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_room(&"r".repeat(64)).is_ok());
        assert!(validate_room(&"r".repeat(65)).is_err());
    }

    #[test]
    fn name_refusals_say_what_is_wrong_in_plain_words() {
        for (name, want) in [
            (
                "Mina Lee",
                "names cannot contain spaces: use _ or - instead",
            ),
            (
                "a:b",
                "names cannot contain \":\" (it ends the name in a message line)",
            ),
            (
                "***",
                "names cannot contain \"*\" (it marks the server's lines)",
            ),
            ("a/b", "names cannot contain \"/\" (it starts commands)"),
            (
                "a\u{1b}[31m",
                "names cannot contain U+001B (a control character)",
            ),
            (
                "Mina\u{200b}",
                "names cannot contain U+200B (an invisible character)",
            ),
            (
                "Mina\u{e0100}",
                "names cannot contain U+E0100 (an invisible character)",
            ),
            (
                "Mina\u{a0}Lee",
                "names cannot contain U+00A0 (a space: use _ or - instead)",
            ),
            (
                "Mina\u{e000}",
                "names cannot contain U+E000 (a character that may not show as itself)",
            ),
            ("", "name must not be empty"),
        ] {
            assert_eq!(validate_name(name).unwrap_err(), want, "{name:?}");
        }
        assert_eq!(
            validate_room("r\tx").unwrap_err(),
            "rooms cannot contain U+0009 (a control character)"
        );
    }

    #[test]
    fn names_are_an_allow_list_of_classes_without_invisible_characters() {
        for ok in [
            "Mina",
            "o'brien",
            "j.doe",
            "<b>Eve",
            "🦀",
            "नमस्ते",
            "Jose\u{301}",
            "x+y",
        ] {
            assert!(validate_name(ok).is_ok(), "{ok:?}");
        }
        for c in [
            '\u{fe00}',
            '\u{fe0f}',
            '\u{e0100}',
            '\u{e01ef}',
            '\u{e0000}',
            '\u{e0041}',
            '\u{e007f}',
            '\u{180b}',
            '\u{180f}',
            '\u{1d173}',
            '\u{1d17a}',
            '\u{1bca0}',
            '\u{1bca3}',
            '\u{200c}',
            '\u{200d}',
            '\u{2028}',
            '\u{85}',
            '\u{e000}',
            '\u{3164}',
            '\u{115f}',
            '\u{34f}',
            '\u{ad}',
            '\u{61c}',
            '\u{a0}',
            '\u{3000}',
        ] {
            let name = format!("Mina{c}");
            let err = validate_name(&name).unwrap_err();
            assert!(err.contains(&format!("U+{:04X}", c as u32)), "{err}");
        }
    }

    #[test]
    fn lookalikes_share_a_key() {
        let clash = |a: &str, b: &str| name_key(a).clashes(&name_key(b));
        for (a, b) in [
            ("Alice", "alice"),
            ("Alice", "ALICE"),
            ("Alice", "\u{410}lice"),
            ("Alice", "\u{ff21}lice"),
            ("Jos\u{e9}", "Jose\u{301}"),
            ("Mina", "\u{41c}ina"),
            ("TOM", "\u{422}\u{41e}\u{41c}"),
            ("mina", "rnina"),
            ("stra\u{df}e", "STRASSE"),
        ] {
            assert!(clash(a, b), "{a:?} {b:?}");
        }
        for (a, b) in [
            ("Alice", "Alicia"),
            ("Ann", "Anna"),
            ("Bob", "Rob"),
            ("a", "b"),
        ] {
            assert!(!clash(a, b), "{a:?} {b:?}");
        }
    }

    #[test]
    fn unicode_line_breaks_are_line_breaks() {
        assert_eq!(
            clean_line("hi\u{2028}Alice:forged".as_bytes()),
            "hiAlice:forged"
        );
        assert_eq!(clean_line("a\u{2029}b\u{85}c".as_bytes()), "abc");
        assert_eq!(
            clean_message("hi\u{2028}Alice:forged\u{2029}x\u{85}y".as_bytes()),
            "hi\nAlice:forged\nx\ny"
        );
        assert_eq!(clean_message("ünï".as_bytes()), "ünï");
    }

    #[test]
    fn clean_line_removes_control_and_escapes() {
        assert_eq!(clean_line(b"hello\tworld"), "hello\tworld");
        assert_eq!(clean_line(b"\x1b[31mred\x1b[0m"), "red");
        assert_eq!(clean_line(b"\x1b]0;title\x07after"), "after");
        assert_eq!(clean_line(b"\x1b]0;title\x1b\\after"), "after");
        assert_eq!(clean_line(b"a\x1bcb"), "ab");
        assert_eq!(clean_line(b"bell\x07\x08\x00x"), "bellx");
        assert_eq!(clean_line(b"bad\xffutf8"), "bad\u{fffd}utf8");
        assert_eq!(clean_line("c1\u{9b}2Jx".as_bytes()), "c1x");
        assert_eq!(clean_line("ünï".as_bytes()), "ünï");
        assert_eq!(clean_line(b"a\rb"), "ab");
    }

    #[test]
    fn timestamps_are_utc_rfc3339() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Timestamp(951_782_400_123).to_string(),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            Timestamp(1_795_690_445_007).to_string(),
            "2026-11-26T10:54:05.007Z"
        );
    }

    #[test]
    fn renders_exact_bytes() {
        let mut out = Vec::new();
        RoomEvent::Message {
            id: 1,
            name: "Mina",
            text: "hi",
        }
        .render_text(&mut out);
        RoomEvent::Join { name: "Bob" }.render_text(&mut out);
        RoomEvent::Nick {
            old: "Bob",
            new: "Rob",
        }
        .render_text(&mut out);
        RoomEvent::Action {
            id: 2,
            name: "Rob",
            text: "waves",
        }
        .render_text(&mut out);
        assert_eq!(
            out,
            b"Mina:hi\n*** Bob joined\n*** Bob is now Rob\n* Rob waves\n"
        );
        let mut out = Vec::new();
        RoomEvent::Message {
            id: 7,
            name: "Mina",
            text: "a\"b",
        }
        .render_json("dev", Timestamp(0), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"type\":\"message\",\"id\":7,\"room\":\"dev\",\"name\":\"Mina\",\"text\":\"a\\\"b\",\"ts\":\"1970-01-01T00:00:00.000Z\"}\n"
        );
    }
}
