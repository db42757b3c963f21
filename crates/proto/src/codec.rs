//! Framing: turns the bytes of a connection into a handshake and then lines, within limits.
//!
//! The codec owns buffering and nothing else (no I/O, no policy), so the same code can be fed by
//! any transport and tested with any split of any byte stream. Two rules matter for memory: a
//! line longer than the limit is reported once and then discarded as it arrives, never buffered,
//! and the buffer is released once it is empty, so an idle connection holds no buffer at all.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::refusal::Refusal;
use crate::sniff::{sniff, HttpHead, Sniff};

/// Outcome of feeding bytes to a [`HandshakeDecoder`].
#[derive(Debug, PartialEq)]
pub enum HandshakeStatus {
    /// Not a complete JSON value yet.
    Incomplete,
    /// A complete JSON value, and how many of the fed bytes it (and surrounding whitespace) used.
    Done(Value, usize),
    /// The stream can never become a valid handshake.
    Invalid(String),
    /// An HTTP request: a browser (or curl) pointed at the chat port (see [`crate::sniff`]).
    Http(HttpHead),
}

/// Accumulates the first JSON value a client sends, however it is split over reads.
#[derive(Debug)]
pub struct HandshakeDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl HandshakeDecoder {
    pub fn new(max: usize) -> Self {
        HandshakeDecoder {
            buf: Vec::new(),
            max,
        }
    }

    /// Feeds bytes. On `Done(value, used)`, `used` counts bytes of *this* input that belonged to
    /// the handshake: the rest of the input belongs to the line stream.
    pub fn feed(&mut self, input: &[u8]) -> HandshakeStatus {
        let before = self.buf.len();
        let room = (self.max + 1).saturating_sub(before);
        self.buf.extend_from_slice(&input[..input.len().min(room)]);
        // JSON's whitespace only (not form feed, which `is_ascii_whitespace` also accepts): the
        // same bytes as a WebSocket handshake frame, parsed by serde_json alone.
        let start = self
            .buf
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
        let Some(start) = start else {
            if self.buf.len() > self.max {
                return HandshakeStatus::Invalid(too_large(self.max));
            }
            return HandshakeStatus::Incomplete;
        };
        // Not even the start of a JSON value: someone typing into `nc`, or a browser.
        if typed_not_json(self.buf[start]) {
            let more = self.buf.len() <= self.max;
            return match (start, sniff(&self.buf, more)) {
                (0, Sniff::Undecided) => HandshakeStatus::Incomplete,
                (0, Sniff::Http(head)) => {
                    self.buf = Vec::new();
                    HandshakeStatus::Http(head)
                }
                _ => HandshakeStatus::Invalid(Refusal::NotAHandshake.to_string()),
            };
        }
        let mut stream =
            serde_json::Deserializer::from_slice(&self.buf[start..]).into_iter::<PlainValue>();
        match stream.next() {
            Some(Ok(PlainValue(value))) => {
                let end = start + stream.byte_offset();
                if end > self.max {
                    return HandshakeStatus::Invalid(too_large(self.max));
                }
                // A number at the very end may still be growing ("12" then "3"), or be followed
                // by what makes it invalid ("0" then "a"): wait for the byte after it, so that
                // how the bytes were split never changes the outcome (the property test found
                // "0" | "a" accepted as the number 0, while "0a" at once is invalid JSON).
                if matches!(value, Value::Number(_)) && end == self.buf.len() {
                    if self.buf.len() > self.max {
                        return HandshakeStatus::Invalid(too_large(self.max));
                    }
                    return HandshakeStatus::Incomplete;
                }
                let used = end - before;
                self.buf = Vec::new();
                HandshakeStatus::Done(value, used)
            }
            Some(Err(e)) if e.is_eof() || number_may_grow(&e, &self.buf[start..]) => {
                if self.buf.len() > self.max {
                    HandshakeStatus::Invalid(too_large(self.max))
                } else {
                    HandshakeStatus::Incomplete
                }
            }
            Some(Err(e)) => HandshakeStatus::Invalid(format!("invalid handshake JSON: {e}")),
            None => HandshakeStatus::Incomplete,
        }
    }
}

/// Whether `b`, a first byte, is text that cannot start a JSON value (`hello`, `GET /`, `привет`).
/// It gets the hint of what to send (or, for a request line, an HTTP answer). A byte that may
/// start JSON keeps the parser's own words on what is wrong, which say more to someone writing
/// JSON; so does a control byte (a TLS hello on the plain port, a form feed), which nobody typed.
fn typed_not_json(b: u8) -> bool {
    let json = matches!(
        b,
        b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n'
    );
    !json && (b.is_ascii_graphic() || b >= 0x80)
}

/// A JSON value read as JSON says, without serde_json's private conventions.
///
/// With serde_json's `raw_value` feature, which axum turns on for the whole build, deserializing
/// a [`Value`] treats an object whose key is `$serde_json::private::RawValue` (escapes decoded, so
/// `\u0024serde...` too) as the JSON text in that key's string: `{"name":{"$serde_json::private::
/// RawValue":"\"Mina\""},"room":"r"}` read as `{"name":"Mina","room":"r"}`, a handshake whose
/// name is not a string in the bytes the client sent. This builds the same `Value` from the
/// parser's events with no special keys. Use it for anything a client sends:
/// `serde_json::from_str::<PlainValue>(text)`.
#[derive(Debug, Clone, PartialEq)]
pub struct PlainValue(pub Value);

impl<'de> Deserialize<'de> for PlainValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PlainVisitor).map(PlainValue)
    }
}

struct PlainVisitor;

impl<'de> Visitor<'de> for PlainVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Number::from_f64(f).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(PlainValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some((key, PlainValue(value))) = map.next_entry::<String, PlainValue>()? {
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// serde_json judges a number as soon as its digits stop, even at the end of the bytes so far:
/// `1` and 400 zeros is out of range, but `e-400` may still arrive and make it 1. Such an error,
/// detected at the last byte of `json`, is not final yet. (One detected earlier is: the exponent
/// already overflowed, and the same bytes give the same error whatever follows.)
fn number_may_grow(e: &serde_json::Error, json: &[u8]) -> bool {
    if !json.last().is_some_and(u8::is_ascii_digit) {
        return false;
    }
    // serde_json's position of the last byte: 1-based line, and column within the line.
    let line = 1 + memchr::memchr_iter(b'\n', json).count();
    let column = json.len() - json.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    e.line() == line && e.column() == column && e.to_string().starts_with("number out of range")
}

fn too_large(max: usize) -> String {
    format!("handshake too large (over {max} bytes)")
}

/// One unit of the line stream.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Item<'a> {
    /// A complete line, without its `\n` and without a `\r` just before it.
    Line(&'a [u8]),
    /// A line passed the limit; the rest of it, up to its `\n`, is discarded.
    TooLong,
}

/// Whether the consumer wants more items now.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Flow {
    Continue,
    /// The item was taken; keep the remaining bytes for [`LineCodec::resume`].
    Pause,
}

/// Splits the byte stream after the handshake into lines of at most `max` bytes.
#[derive(Debug)]
pub struct LineCodec {
    /// A partial line, or (when paused) everything not yet handed out.
    buf: Vec<u8>,
    paused: bool,
    discarding: bool,
    /// No line has ended yet (see [`blank_rest`]).
    first: bool,
    max: usize,
}

impl LineCodec {
    pub fn new(max: usize) -> Self {
        LineCodec {
            buf: Vec::new(),
            first: true,
            paused: false,
            discarding: false,
            max,
        }
    }

    /// True while bytes that were already read wait for [`LineCodec::resume`]: don't read more.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Bytes held, for memory accounting and tests.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Hands out the items in `input`. Must not be called while paused.
    pub fn feed(&mut self, input: &[u8], f: &mut dyn FnMut(Item<'_>) -> Flow) {
        debug_assert!(!self.paused);
        let mut rest = input;
        // Finish a line that started in an earlier read.
        if !self.buf.is_empty() || self.discarding {
            match memchr(b'\n', rest) {
                Some(pos) => {
                    let tail = &rest[..pos];
                    rest = &rest[pos + 1..];
                    if self.discarding {
                        self.discarding = false;
                    } else {
                        self.buf.extend_from_slice(tail);
                        let flow = match check(&self.buf, self.max) {
                            Some(line) if blank_rest(&mut self.first, line) => Flow::Continue,
                            Some(line) => f(Item::Line(line)),
                            None => {
                                self.first = false;
                                f(Item::TooLong)
                            }
                        };
                        self.buf.clear();
                        if flow == Flow::Pause {
                            self.pause_with(rest);
                            return;
                        }
                    }
                }
                None => {
                    self.absorb_partial(rest, f);
                    return;
                }
            }
        }
        self.split(rest, f);
    }

    /// Keeps bytes that arrived before the line stream may be read (with the handshake, while
    /// its replay is under way) to be handed out by [`LineCodec::resume`], as after a pause.
    pub fn hold(&mut self, input: &[u8]) {
        if input.is_empty() {
            return;
        }
        debug_assert!(!self.paused && self.buf.is_empty());
        self.buf.extend_from_slice(input);
        self.paused = true;
    }

    /// Continues handing out bytes kept by a pause.
    pub fn resume(&mut self, f: &mut dyn FnMut(Item<'_>) -> Flow) {
        if !self.paused {
            return;
        }
        self.paused = false;
        let held = std::mem::take(&mut self.buf);
        self.split(&held, f);
    }

    /// Splits `input`, which starts at a line boundary.
    fn split(&mut self, input: &[u8], f: &mut dyn FnMut(Item<'_>) -> Flow) {
        let mut rest = input;
        while let Some(pos) = memchr(b'\n', rest) {
            let flow = match check(&rest[..pos], self.max) {
                Some(line) if blank_rest(&mut self.first, line) => Flow::Continue,
                Some(line) => f(Item::Line(line)),
                None => {
                    self.first = false;
                    f(Item::TooLong)
                }
            };
            rest = &rest[pos + 1..];
            if flow == Flow::Pause {
                self.pause_with(rest);
                return;
            }
        }
        self.absorb_partial(rest, f);
    }

    /// Keeps the start of a line whose end has not arrived, unless it is already too long.
    fn absorb_partial(&mut self, rest: &[u8], f: &mut dyn FnMut(Item<'_>) -> Flow) {
        if self.discarding || rest.is_empty() {
            self.release_if_empty();
            return;
        }
        // One more byte than the limit may be a `\r` that will be dropped.
        if self.buf.len() + rest.len() > self.max + 1 {
            self.buf = Vec::new();
            self.discarding = true;
            self.first = false;
            // The overlong line is reported now, not when (if ever) its end arrives.
            if f(Item::TooLong) == Flow::Pause {
                self.paused = !self.buf.is_empty();
            }
        } else {
            self.buf.extend_from_slice(rest);
        }
    }

    fn pause_with(&mut self, rest: &[u8]) {
        if rest.is_empty() && !self.discarding {
            self.release_if_empty();
            return;
        }
        if self.discarding {
            // Held bytes start inside an overlong line: drop them up to its end.
            match memchr(b'\n', rest) {
                Some(pos) => {
                    self.discarding = false;
                    return self.pause_with(&rest[pos + 1..]);
                }
                None => return,
            }
        }
        self.buf.extend_from_slice(rest);
        self.paused = true;
    }

    fn release_if_empty(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = Vec::new();
        }
    }
}

/// True for the first line after the handshake when it is blank: the rest of the handshake's
/// own line (a client that ends its JSON with Enter, like `nc`), not a message. Any line after
/// that, blank or not, is a message, as in MaChat.
fn blank_rest(first: &mut bool, line: &[u8]) -> bool {
    std::mem::replace(first, false) && line.iter().all(|b| matches!(b, b' ' | b'\t'))
}

/// The line without a trailing `\r`, or None when it is over the limit.
fn check(line: &[u8], max: usize) -> Option<&[u8]> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    (line.len() <= max).then_some(line)
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    memchr::memchr(needle, haystack)
}

/// Everything the decoding of one connection produced, for tests and property checks.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Event {
    Handshake(String),
    BadHandshake(String),
    Line(Vec<u8>),
    TooLong,
}

/// A whole-connection decoder (handshake, then lines) that collects events; the server drives the
/// two parts itself, this exists so the combination can be property-tested.
pub struct StreamDecoder {
    handshake: Option<HandshakeDecoder>,
    lines: LineCodec,
    pub events: Vec<Event>,
    failed: bool,
}

impl StreamDecoder {
    pub fn new(max_handshake: usize, max_line: usize) -> Self {
        StreamDecoder {
            handshake: Some(HandshakeDecoder::new(max_handshake)),
            lines: LineCodec::new(max_line),
            events: Vec::new(),
            failed: false,
        }
    }

    pub fn feed(&mut self, mut input: &[u8]) {
        if self.failed {
            return;
        }
        if let Some(h) = &mut self.handshake {
            match h.feed(input) {
                HandshakeStatus::Incomplete => return,
                HandshakeStatus::Http(head) => {
                    self.events.push(Event::BadHandshake(format!("{head:?}")));
                    self.failed = true;
                    return;
                }
                HandshakeStatus::Invalid(e) => {
                    self.events.push(Event::BadHandshake(e));
                    self.failed = true;
                    return;
                }
                HandshakeStatus::Done(v, used) => {
                    self.events.push(Event::Handshake(v.to_string()));
                    self.handshake = None;
                    input = &input[used..];
                }
            }
        }
        let events = &mut self.events;
        self.lines.feed(input, &mut |item| {
            events.push(match item {
                Item::Line(l) => Event::Line(l.to_vec()),
                Item::TooLong => Event::TooLong,
            });
            Flow::Continue
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lines(codec: &mut LineCodec, input: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        codec.feed(input, &mut |item| {
            out.push(match item {
                Item::Line(l) => Event::Line(l.to_vec()),
                Item::TooLong => Event::TooLong,
            });
            Flow::Continue
        });
        out
    }

    #[test]
    fn handshake_then_lines_in_one_read() {
        let mut d = StreamDecoder::new(4096, 8192);
        d.feed(b"{\"name\":\"a\",\"room\":\"r\"}hello\nworld\r\n");
        assert_eq!(
            d.events,
            vec![
                Event::Handshake("{\"name\":\"a\",\"room\":\"r\"}".into()),
                Event::Line(b"hello".to_vec()),
                Event::Line(b"world".to_vec()),
            ]
        );
    }

    #[test]
    fn handshake_split_byte_by_byte_with_whitespace() {
        let mut d = StreamDecoder::new(4096, 8192);
        for b in b"  \n{ \"room\" : \"r\",\n \"name\":\"a\" }  x\n" {
            d.feed(&[*b]);
        }
        assert_eq!(d.events.len(), 2);
        // Bytes after the object belong to the line stream, whitespace included.
        assert_eq!(d.events[1], Event::Line(b"  x".to_vec()));
    }

    #[test]
    fn a_blank_rest_of_the_handshake_line_is_not_a_message() {
        let mut d = StreamDecoder::new(4096, 8192);
        d.feed(b"{\"name\":\"a\",\"room\":\"r\"} \r");
        d.feed(b"\n\nhi\n");
        assert_eq!(
            d.events[1..],
            [Event::Line(b"".to_vec()), Event::Line(b"hi".to_vec())]
        );
    }

    #[test]
    fn an_overlong_first_line_is_the_first_line() {
        let mut d = StreamDecoder::new(4096, 8);
        d.feed(b"{\"name\":\"a\",\"room\":\"r\"}123456789\n\n");
        assert_eq!(d.events[1..], [Event::TooLong, Event::Line(b"".to_vec())]);
        let mut d = StreamDecoder::new(4096, 8);
        d.feed(b"{\"name\":\"a\",\"room\":\"r\"}12345");
        d.feed(b"6789xx");
        d.feed(b"\n\n");
        assert_eq!(d.events[1..], [Event::TooLong, Event::Line(b"".to_vec())]);
    }

    #[test]
    fn handshake_limits() {
        let mut h = HandshakeDecoder::new(16);
        assert!(matches!(
            h.feed(b"{\"name\": \"aaaaaaaaaaaaaaaaaaa"),
            HandshakeStatus::Invalid(_)
        ));
        let mut h = HandshakeDecoder::new(16);
        assert!(matches!(h.feed(&[b' '; 17]), HandshakeStatus::Invalid(_)));
        let mut h = HandshakeDecoder::new(4096);
        assert!(matches!(h.feed(b"nope"), HandshakeStatus::Invalid(_)));
        let mut h = HandshakeDecoder::new(4096);
        assert_eq!(h.feed(b"{\"a\":"), HandshakeStatus::Incomplete);
    }

    #[test]
    fn serde_json_private_keys_are_plain_keys() {
        // Found by the handshake fuzzer: with serde_json's raw_value feature (axum enables it),
        // a `Value` takes `{"$serde_json::private::RawValue":"TEXT"}` to be the JSON in TEXT,
        // so a name or a whole handshake could be smuggled inside a string.
        let done = |bytes: &[u8]| match HandshakeDecoder::new(4096).feed(bytes) {
            HandshakeStatus::Done(v, used) if used == bytes.len() => v,
            other => panic!("{other:?}"),
        };
        let key = "$serde_json::private::RawValue";
        let v = done(br#"{"$serde_json::private::RawValue":"{\"name\":\"a\",\"room\":\"r\"}"}"#);
        assert_eq!(
            v,
            serde_json::json!({ key: "{\"name\":\"a\",\"room\":\"r\"}" })
        );
        let v = done(br#"{"name":{"\u0024serde_json::private::RawValue":"\"Mina\""},"room":"r"}"#);
        assert_eq!(v["name"], serde_json::json!({ key: "\"Mina\"" }));
        // Everything else reads as serde_json reads it.
        let text =
            r#"{"b":[1,-2,3.5,1e-7,18446744073709551615,true,null,{}],"a":"\u00e9\n","b":0}"#;
        let plain = done(text.as_bytes());
        assert_eq!(plain, serde_json::from_str::<Value>(text).unwrap());
        assert_eq!(
            plain.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["b", "a"]
        );
    }

    #[test]
    fn only_json_whitespace_before_the_handshake() {
        // Found by the ws_input fuzzer: TCP skipped a form feed before the object (any ASCII
        // whitespace), so it accepted a handshake the WebSocket side and docs/PROTOCOL.md refuse.
        let mut h = HandshakeDecoder::new(4096);
        assert!(matches!(
            h.feed(b"\x0c{\"name\":\"a\",\"room\":\"r\"}"),
            HandshakeStatus::Invalid(e) if e.starts_with("invalid handshake JSON")
        ));
        let mut h = HandshakeDecoder::new(4096);
        assert!(matches!(
            h.feed(b" \t\r\n{\"name\":\"a\",\"room\":\"r\"}"),
            HandshakeStatus::Done(_, 27)
        ));
    }

    #[test]
    fn text_that_is_not_json_gets_what_to_send() {
        let hint = Refusal::NotAHandshake.to_string();
        for typed in [
            &b"hello\n"[..],
            b"Hi there",
            b"  hello\n",
            b"\xd0\xbf",
            b"GET x",
        ] {
            let mut h = HandshakeDecoder::new(4096);
            assert_eq!(
                h.feed(typed),
                HandshakeStatus::Invalid(hint.clone()),
                "{typed:?}"
            );
        }
        // What may start JSON keeps the parser's words, and so do control bytes nobody types.
        for json in [&b"{\"name\": }"[..], b"nope", b"\x16\x03\x01"] {
            let mut h = HandshakeDecoder::new(4096);
            assert!(matches!(
                h.feed(json),
                HandshakeStatus::Invalid(e) if e.starts_with("invalid handshake JSON")
            ));
        }
        // A request line waits for its headers, within the limit.
        let mut h = HandshakeDecoder::new(4096);
        assert_eq!(
            h.feed(b"GET / HTTP/1.1\r\nHost: x:1"),
            HandshakeStatus::Incomplete
        );
        assert_eq!(
            h.feed(b"\r\n\r\n"),
            HandshakeStatus::Http(HttpHead {
                head: false,
                host: Some("x".into())
            })
        );
        let mut h = HandshakeDecoder::new(64);
        assert_eq!(h.feed(b"GET / HTTP/1.1\r\n"), HandshakeStatus::Incomplete);
        assert!(matches!(h.feed(&[b'a'; 100]), HandshakeStatus::Http(_)));
        let mut h = HandshakeDecoder::new(64);
        assert_eq!(h.feed(&[b'G'; 1][..]), HandshakeStatus::Incomplete);
        assert_eq!(h.feed(&[b'X'; 100]), HandshakeStatus::Invalid(hint));
    }

    #[test]
    fn a_number_is_not_judged_before_it_ends() {
        // Found by the handshake fuzzer: a valid handshake was refused ("number out of range")
        // when a read ended inside the digits of `1` and 400 zeros, before its `e-400`.
        let hs = format!(
            "{{\"name\":\"a\",\"room\":\"r\",\"x\":1{}e-400}}",
            "0".repeat(400)
        );
        let cut = hs.find("e-400").unwrap();
        let mut h = HandshakeDecoder::new(4096);
        assert_eq!(h.feed(&hs.as_bytes()[..cut]), HandshakeStatus::Incomplete);
        match h.feed(&hs.as_bytes()[cut..]) {
            HandshakeStatus::Done(v, used) => {
                assert_eq!(used, hs.len() - cut);
                assert_eq!(v["x"], 1.0);
            }
            other => panic!("{other:?}"),
        }
        // The same in JSON spread over lines.
        let mut h = HandshakeDecoder::new(4096);
        let hs = hs.replace(",", ",\n ");
        let cut = hs.find("e-400").unwrap();
        assert_eq!(h.feed(&hs.as_bytes()[..cut]), HandshakeStatus::Incomplete);
        assert!(matches!(
            h.feed(&hs.as_bytes()[cut..]),
            HandshakeStatus::Done(..)
        ));
        // A number that is out of range once it has ended is still refused.
        let mut h = HandshakeDecoder::new(4096);
        assert_eq!(h.feed(b"{\"x\":1e400"), HandshakeStatus::Incomplete);
        assert!(matches!(
            h.feed(b"}"),
            HandshakeStatus::Invalid(e) if e.contains("number out of range")
        ));
        // And one whose exponent overflowed before the end of the bytes is refused at once,
        // even when the bytes end in a digit (a later number): more bytes cannot change it.
        let mut h = HandshakeDecoder::new(4096);
        assert!(matches!(
            h.feed(b"{\"x\":1e99999999999,\"y\":1"),
            HandshakeStatus::Invalid(e) if e.contains("number out of range")
        ));
    }

    #[test]
    fn overlong_line_reported_once_and_discarded() {
        let mut c = LineCodec::new(8);
        let mut ev = lines(&mut c, b"12345678\n123456789");
        assert_eq!(c.buffered(), 9);
        ev.extend(lines(&mut c, b"0123"));
        assert_eq!(c.buffered(), 0);
        ev.extend(lines(&mut c, &[b'x'; 10000]));
        ev.extend(lines(&mut c, b"yy\nok\n"));
        assert_eq!(
            ev,
            vec![
                Event::Line(b"12345678".to_vec()),
                Event::TooLong,
                Event::Line(b"ok".to_vec())
            ]
        );
        // A line of exactly the limit plus its \r\n fits.
        assert_eq!(
            lines(&mut c, b"12345678\r\n"),
            vec![Event::Line(b"12345678".to_vec())]
        );
    }

    #[test]
    fn pause_keeps_the_rest_for_resume() {
        let mut c = LineCodec::new(100);
        let mut got = Vec::new();
        c.feed(b"a\nb\nc\npartial", &mut |item| {
            got.push(format!("{item:?}"));
            Flow::Pause
        });
        assert_eq!(got.len(), 1);
        assert!(c.is_paused());
        let mut n = 0;
        c.resume(&mut |_| {
            n += 1;
            Flow::Continue
        });
        assert_eq!(n, 2);
        assert!(!c.is_paused());
        let ev = lines(&mut c, b"-end\n");
        assert_eq!(ev, vec![Event::Line(b"partial-end".to_vec())]);
    }

    #[test]
    fn buffer_is_released_when_idle() {
        let mut c = LineCodec::new(8192);
        lines(&mut c, &[b'a'; 5000]);
        assert!(c.buffered() > 0);
        lines(&mut c, b"\n");
        assert_eq!(c.buffered(), 0);
        assert_eq!(c.buf.capacity(), 0);
    }

    fn decode_all(stream: &[u8], cuts: &[usize]) -> Vec<Event> {
        let mut d = StreamDecoder::new(64, 16);
        let mut last = 0;
        for &cut in cuts {
            let cut = cut.min(stream.len()).max(last);
            d.feed(&stream[last..cut]);
            last = cut;
        }
        d.feed(&stream[last..]);
        d.events
    }

    fn decode_paused(stream: &[u8], cuts: &[usize], pause_every: usize) -> Vec<Event> {
        // The same stream, with a consumer that pauses and resumes, must give the same events.
        let mut h = HandshakeDecoder::new(64);
        let mut c = LineCodec::new(16);
        let mut events = Vec::new();
        let mut in_handshake = true;
        let mut last = 0;
        let mut pieces: Vec<&[u8]> = Vec::new();
        for &cut in cuts {
            let cut = cut.min(stream.len()).max(last);
            pieces.push(&stream[last..cut]);
            last = cut;
        }
        pieces.push(&stream[last..]);
        let mut count = 0usize;
        for mut piece in pieces {
            if in_handshake {
                match h.feed(piece) {
                    HandshakeStatus::Incomplete => continue,
                    HandshakeStatus::Invalid(e) => {
                        events.push(Event::BadHandshake(e));
                        return events;
                    }
                    HandshakeStatus::Http(head) => {
                        events.push(Event::BadHandshake(format!("{head:?}")));
                        return events;
                    }
                    HandshakeStatus::Done(v, used) => {
                        events.push(Event::Handshake(v.to_string()));
                        in_handshake = false;
                        piece = &piece[used..];
                    }
                }
            }
            let mut f = |item: Item<'_>| {
                events.push(match item {
                    Item::Line(l) => Event::Line(l.to_vec()),
                    Item::TooLong => Event::TooLong,
                });
                count += 1;
                if count.is_multiple_of(pause_every) {
                    Flow::Pause
                } else {
                    Flow::Continue
                }
            };
            c.feed(piece, &mut f);
            while c.is_paused() {
                c.resume(&mut f);
            }
        }
        events
    }

    /// Found by `any_split_gives_the_same_events`: "0" then "a" was the handshake 0 (refused as
    /// not an object), "0a" at once invalid JSON.
    #[test]
    fn a_number_at_the_end_waits_for_the_next_byte() {
        for stream in [&b"\n\n\n0a"[..], b"12 3", b"42\n", b"7"] {
            let whole = decode_all(stream, &[]);
            for cut in 1..stream.len() {
                assert_eq!(decode_all(stream, &[cut]), whole, "{stream:?} cut at {cut}");
            }
        }
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_events(
            body in proptest::collection::vec(prop_oneof![
                Just(b'\n'), Just(b'\r'), Just(b'a'), Just(b'{'), Just(b'}'), any::<u8>()
            ], 0..200),
            prefix in prop_oneof![
                Just(b"{\"name\":\"a\",\"room\":\"r\"}".to_vec()),
                Just(b" {\"room\":\"r\",\"name\":\"a\"} ".to_vec()),
                Just(Vec::new()),
                Just(b"[1,2]".to_vec()),
                Just(b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec()),
                Just(b"GET /".to_vec()),
                Just(b"hello".to_vec()),
            ],
            cuts in proptest::collection::vec(0usize..260, 0..12),
            pause_every in 1usize..5,
        ) {
            let mut stream = prefix;
            stream.extend_from_slice(&body);
            let mut cuts = cuts;
            cuts.sort_unstable();
            let whole = decode_all(&stream, &[]);
            prop_assert_eq!(&decode_all(&stream, &cuts), &whole);
            prop_assert_eq!(&decode_paused(&stream, &cuts, pause_every), &whole);
            for e in &whole {
                if let Event::Line(l) = e {
                    prop_assert!(l.len() <= 16);
                    prop_assert!(!l.contains(&b'\n'));
                }
            }
        }
    }
}
