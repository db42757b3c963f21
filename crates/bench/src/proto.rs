//! Wire protocols of the three targets: what a client writes and how its input is split into
//! events. Only what the bench needs is implemented, but every frame is parsed exactly (lengths,
//! not guesses), so a stream split anywhere decodes the same.
//!
//! The bench's own message text is shared by all targets:
//! - measured message: `b <sender-id> <seq> <send-ns> <padding>`
//! - readiness marker: `r <client-id>`
//!
//! and every target carries it as `name:text` (machat renders it so; for Redis and NATS the
//! publisher sends those very bytes as the payload), except machat over WebSocket, whose frames
//! are JSON events: there the text is read from the `"text"` field (see [`decode_ws_frame`]).

use std::io::Write as _;

/// The server under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Machat,
    /// machat's WebSocket endpoint (`ws://ADDR/ws`, ADDR = the server's `--http` address).
    #[serde(rename = "machat-ws")]
    MachatWs,
    /// machat over TCP in the JSON format (`"format":"json"`): the WebSocket's events, as lines.
    #[serde(rename = "machat-json")]
    MachatJson,
    Redis,
    Nats,
    /// nginx with the nchan module: a WebSocket per member on `ws://ADDR/room/ROOM`, a pub/sub
    /// location (`nchan_pubsub websocket`): a text frame sent is published to the room's
    /// channel, and every message of the channel comes back as a text frame, raw.
    Nchan,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Machat => "machat",
            Target::MachatWs => "machat-ws",
            Target::MachatJson => "machat-json",
            Target::Redis => "redis",
            Target::Nats => "nats",
            Target::Nchan => "nchan",
        }
    }

    /// Whether members connect over WebSocket.
    pub fn is_websocket(self) -> bool {
        matches!(self, Target::MachatWs | Target::Nchan)
    }

    /// The WebSocket's path for a member of `room`.
    pub fn ws_path(self, room: &str) -> String {
        match self {
            Target::Nchan => format!("/room/{room}"),
            _ => "/ws".into(),
        }
    }

    /// Whether a member connection can also publish (Redis cannot while subscribed).
    pub fn member_can_publish(self) -> bool {
        !matches!(self, Target::Redis)
    }
}

/// One decoded unit of input.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A chat message as `name:text` (machat line, Redis `message` push, NATS `MSG` payload).
    Payload(&'a [u8]),
    /// A chat message's text alone (machat over WebSocket: the JSON event's `"text"`).
    Text(&'a [u8]),
    /// A machat server notice (`*** ...`; over WebSocket: any other JSON event, whole).
    Notice(&'a [u8]),
    /// NATS `PING`: must be answered with `PONG`.
    Ping,
    /// NATS `PONG`.
    Pong,
    /// Redis subscribe confirmation.
    Subscribed,
    /// An error reported by the server (Redis `-ERR`, NATS `-ERR`).
    Error(&'a [u8]),
    /// Anything else (NATS `INFO`, `+OK`, Redis `PUBLISH` replies).
    Other,
}

fn find_nl(buf: &[u8], from: usize) -> Option<usize> {
    memchr::memchr(b'\n', &buf[from..]).map(|i| i + from)
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Decodes every complete frame in `buf`, calling `f` for each; returns the number of bytes
/// consumed (the rest is an incomplete frame to keep for the next read). For
/// [`Target::MachatWs`] `buf` is one WebSocket frame's payload, always consumed whole.
pub fn decode(target: Target, buf: &[u8], f: &mut impl FnMut(Event<'_>)) -> Result<usize, String> {
    match target {
        Target::Machat => Ok(decode_lines(buf, f)),
        Target::MachatJson => {
            let mut start = 0;
            for_each_newline(buf, |nl| {
                f(decode_ws_frame(strip_cr(&buf[start..nl])));
                start = nl + 1;
            });
            Ok(start)
        }
        Target::MachatWs => {
            f(decode_ws_frame(buf));
            Ok(buf.len())
        }
        Target::Nchan => {
            f(Event::Text(buf));
            Ok(buf.len())
        }
        Target::Nats => decode_nats(buf, f),
        Target::Redis => decode_resp(buf, f),
    }
}

fn decode_lines(buf: &[u8], f: &mut impl FnMut(Event<'_>)) -> usize {
    let mut start = 0;
    for_each_newline(buf, |nl| {
        let line = strip_cr(&buf[start..nl]);
        if line.starts_with(b"*** ") {
            f(Event::Notice(line));
        } else {
            f(Event::Payload(line));
        }
        start = nl + 1;
    });
    start
}

/// How a machat message event starts; its keys come in a fixed order
/// (`type`, `id`, `room`, `name`, `text`, `ts`: docs/PROTOCOL.md, section 6).
const WS_MESSAGE: &[u8] = b"{\"type\":\"message\",\"id\":";
const WS_ROOM_KEY: &[u8] = b",\"room\":\"";
const WS_NAME_KEY: &[u8] = b"\",\"name\":\"";
const WS_TEXT_KEY: &[u8] = b"\",\"text\":\"";
const WS_ERROR: &[u8] = b"{\"type\":\"error\",";

/// Decodes one text frame of machat's WebSocket endpoint, one JSON event. Only as much JSON is
/// read as the measurement needs: a message's `"text"` value, up to its closing quote. The keys
/// before it are stepped over in their documented order (the id's digits, the room and the
/// name up to their closing quotes: the bench's own names need no escapes); a frame of another
/// shape is searched for `,"text":"`. The bench's own texts have no escapes either; a text with
/// any comes out cut at its first `\"` and parses as foreign.
#[inline]
pub fn decode_ws_frame(frame: &[u8]) -> Event<'_> {
    if let Some(rest) = frame.strip_prefix(WS_MESSAGE) {
        let text = ws_text_fast(rest).or_else(|| ws_text_search(rest));
        return match text {
            Some(t) => Event::Text(t),
            None => Event::Other,
        };
    }
    if frame.starts_with(WS_ERROR) {
        return Event::Error(frame);
    }
    Event::Notice(frame)
}

/// The text of a message event whose keys come as documented, from just after `"id":`.
#[inline(always)]
fn ws_text_fast(rest: &[u8]) -> Option<&[u8]> {
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let rest = rest[digits..].strip_prefix(WS_ROOM_KEY)?;
    let rest = &rest[memchr::memchr(b'"', rest)?..];
    let rest = rest.strip_prefix(WS_NAME_KEY)?;
    let rest = &rest[memchr::memchr(b'"', rest)?..];
    let text = rest.strip_prefix(WS_TEXT_KEY)?;
    Some(&text[..memchr::memchr(b'"', text)?])
}

/// The text of a message event of any shape: after the first `,"text":"` (which cannot occur
/// inside a JSON string: its quotes would be escaped).
#[cold]
fn ws_text_search(rest: &[u8]) -> Option<&[u8]> {
    let key = &WS_TEXT_KEY[1..];
    let at = memchr::memmem::find(rest, key)?;
    let text = &rest[at + key.len()..];
    Some(&text[..memchr::memchr(b'"', text)?])
}

/// The start of machat's JSON join event for `name` in `room`, as sent over WebSocket
/// (`{"type":"join","room":ROOM,"name":NAME,"ts":...}`). Names and rooms are the bench's own:
/// plain ASCII, nothing to escape.
pub fn ws_join_prefix(name: &str, room: &str) -> Vec<u8> {
    format!("{{\"type\":\"join\",\"room\":\"{room}\",\"name\":\"{name}\",").into_bytes()
}

/// Calls `f` with the position of every `\n` in `buf`, in order. With lines of ~70 bytes this
/// is the hot loop of the generator: a 64-byte newline bit mask (SSE2, part of x86_64) per step
/// costs ~2 ns per line, where `memchr_iter` restarts its search at every match (~6 ns).
#[inline(always)]
fn for_each_newline(buf: &[u8], mut f: impl FnMut(usize)) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
        };
        let mut i = 0;
        while let Some(chunk) = buf.get(i..i + 64) {
            let p = chunk.as_ptr();
            // SAFETY: SSE2 is part of x86_64; the four unaligned 16-byte loads stay inside
            // `chunk` (64 bytes).
            let mut m = unsafe {
                let nl = _mm_set1_epi8(b'\n' as i8);
                let at = |k: usize| {
                    let v = _mm_loadu_si128(p.add(k) as *const __m128i);
                    u64::from(_mm_movemask_epi8(_mm_cmpeq_epi8(v, nl)) as u16)
                };
                at(0) | at(16) << 16 | at(32) << 32 | at(48) << 48
            };
            while m != 0 {
                f(i + m.trailing_zeros() as usize);
                m &= m - 1;
            }
            i += 64;
        }
        for nl in memchr::memchr_iter(b'\n', &buf[i..]) {
            f(i + nl);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for nl in memchr::memchr_iter(b'\n', buf) {
        f(nl);
    }
}

fn parse_usize(s: &[u8]) -> Option<usize> {
    if s.is_empty() || s.len() > 18 {
        return None;
    }
    let mut v = 0usize;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + usize::from(b - b'0');
    }
    Some(v)
}

fn decode_nats(buf: &[u8], f: &mut impl FnMut(Event<'_>)) -> Result<usize, String> {
    let mut start = 0;
    while let Some(nl) = find_nl(buf, start) {
        let line = strip_cr(&buf[start..nl]);
        let op_end = line
            .iter()
            .position(|&b| b == b' ' || b == b'\t')
            .unwrap_or(line.len());
        let op = &line[..op_end];
        if op.eq_ignore_ascii_case(b"MSG") {
            let len = line
                .split(|&b| b == b' ' || b == b'\t')
                .rfind(|t| !t.is_empty())
                .and_then(parse_usize)
                .ok_or_else(|| format!("bad NATS MSG line: {}", String::from_utf8_lossy(line)))?;
            let body = nl + 1;
            if buf.len() < body + len + 2 {
                break; // payload not complete yet
            }
            f(Event::Payload(&buf[body..body + len]));
            start = body + len + 2;
            continue;
        }
        if op.eq_ignore_ascii_case(b"PING") {
            f(Event::Ping);
        } else if op.eq_ignore_ascii_case(b"PONG") {
            f(Event::Pong);
        } else if op.eq_ignore_ascii_case(b"-ERR") {
            f(Event::Error(line));
        } else {
            f(Event::Other);
        }
        start = nl + 1;
    }
    Ok(start)
}

/// One RESP item inside a push array: a byte range of `buf`, or an integer.
#[derive(Clone, Copy)]
enum Item {
    Bytes(usize, usize),
    Int,
    Nil,
}

/// Parses one non-array RESP item at `pos`; `Ok(None)` when incomplete.
fn resp_item(buf: &[u8], pos: usize) -> Result<Option<(Item, usize)>, String> {
    let Some(nl) = find_nl(buf, pos) else {
        return Ok(None);
    };
    let head = strip_cr(&buf[pos..nl]);
    let Some((&kind, rest)) = head.split_first() else {
        return Err("empty RESP line".into());
    };
    match kind {
        b'$' => {
            if rest == b"-1" {
                return Ok(Some((Item::Nil, nl + 1)));
            }
            let len = parse_usize(rest).ok_or("bad RESP bulk length")?;
            let body = nl + 1;
            if buf.len() < body + len + 2 {
                return Ok(None);
            }
            Ok(Some((Item::Bytes(body, body + len), body + len + 2)))
        }
        b':' => Ok(Some((Item::Int, nl + 1))),
        b'+' | b'-' => Ok(Some((Item::Bytes(pos + 1, pos + head.len()), nl + 1))),
        _ => Err(format!(
            "unexpected RESP item: {}",
            String::from_utf8_lossy(head)
        )),
    }
}

fn decode_resp(buf: &[u8], f: &mut impl FnMut(Event<'_>)) -> Result<usize, String> {
    let mut start = 0;
    'frames: while start < buf.len() {
        match buf[start] {
            b'*' | b'>' => {
                let Some(nl) = find_nl(buf, start) else {
                    break;
                };
                let n = parse_usize(strip_cr(&buf[start + 1..nl])).ok_or("bad RESP array")?;
                let mut items = [Item::Nil; 3];
                let mut pos = nl + 1;
                for i in 0..n {
                    match resp_item(buf, pos)? {
                        None => break 'frames,
                        Some((item, next)) => {
                            if i < items.len() {
                                items[i] = item;
                            }
                            pos = next;
                        }
                    }
                }
                let kind = match items[0] {
                    Item::Bytes(a, b) => &buf[a..b],
                    _ => &b""[..],
                };
                if n == 3 && kind == b"message" {
                    if let Item::Bytes(a, b) = items[2] {
                        f(Event::Payload(&buf[a..b]));
                    }
                } else if kind == b"subscribe" {
                    f(Event::Subscribed);
                } else {
                    f(Event::Other);
                }
                start = pos;
            }
            b'-' => {
                let Some(nl) = find_nl(buf, start) else {
                    break;
                };
                f(Event::Error(strip_cr(&buf[start..nl])));
                start = nl + 1;
            }
            _ => match resp_item(buf, start)? {
                None => break,
                Some((_, next)) => {
                    f(Event::Other);
                    start = next;
                }
            },
        }
    }
    Ok(start)
}

pub fn room_name(room: usize) -> String {
    format!("room{room}")
}

pub fn client_name(client: usize) -> String {
    format!("c{client}")
}

/// What a connection writes first. `subscribe`: join the room as a member (a Redis publisher
/// connection does not subscribe).
pub fn handshake(target: Target, name: &str, room: &str, subscribe: bool, out: &mut Vec<u8>) {
    match target {
        // The room is in the WebSocket's path; nothing is sent first.
        Target::Nchan => {}
        Target::Machat => {
            // Names and rooms are generated by the bench: plain ASCII, no escaping needed.
            let _ = write!(out, "{{\"name\":\"{name}\",\"room\":\"{room}\"}}");
        }
        Target::MachatJson => {
            let _ = write!(
                out,
                "{{\"name\":\"{name}\",\"room\":\"{room}\",\"format\":\"json\",\"history\":0}}"
            );
        }
        Target::MachatWs => {
            // The first text frame. No replay, whatever the server's --history-on-join.
            let _ = write!(
                out,
                "{{\"name\":\"{name}\",\"room\":\"{room}\",\"history\":0}}"
            );
        }
        Target::Redis => {
            if subscribe {
                let _ = write!(
                    out,
                    "*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{room}\r\n",
                    room.len()
                );
            }
        }
        Target::Nats => {
            out.extend_from_slice(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n");
            if subscribe {
                let _ = write!(out, "SUB room.{room} 1\r\n");
            }
            out.extend_from_slice(b"PING\r\n");
        }
    }
}

/// Appends one chat message with text `text` from `name` to `room`. For
/// [`Target::MachatWs`] each message is `text\n` too, and the connection sends each line as one
/// text frame (the bench's texts have no newline).
pub fn message(target: Target, name: &str, room: &str, text: &[u8], out: &mut Vec<u8>) {
    match target {
        Target::Machat | Target::MachatWs | Target::MachatJson | Target::Nchan => {
            out.extend_from_slice(text);
            out.push(b'\n');
        }
        Target::Redis => {
            let _ = write!(
                out,
                "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{room}\r\n${}\r\n{name}:",
                room.len(),
                name.len() + 1 + text.len()
            );
            out.extend_from_slice(text);
            out.extend_from_slice(b"\r\n");
        }
        Target::Nats => {
            let _ = write!(
                out,
                "PUB room.{room} {}\r\n{name}:",
                name.len() + 1 + text.len()
            );
            out.extend_from_slice(text);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// The bench's own text inside a payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Text {
    Measured { sender: u64, seq: u64, sent_ns: u64 },
    Ready { client: u64 },
    Foreign,
}

/// Per byte of `chunk` (8 bytes, first byte least significant): zero when it is an ASCII digit.
#[inline(always)]
fn non_digit_bytes(chunk: u64) -> u64 {
    const LO: u64 = 0x0f0f_0f0f_0f0f_0f0f;
    const HI: u64 = 0xf0f0_f0f0_f0f0_f0f0;
    // High nibble must be 3; low nibble + 6 must not carry into the high nibble (i.e. <= 9).
    // No carry crosses a byte: a low nibble + 6 is at most 0x15.
    ((chunk & HI) ^ 0x3030_3030_3030_3030) | (((chunk & LO) + 0x0606_0606_0606_0606) & HI)
}

/// Value of 8 ASCII digits, the first byte (least significant in `chunk`) the most significant
/// digit. Bytes may also hold 0..=9 already (leading zeros shifted in).
#[inline(always)]
fn swar8(digits: u64) -> u64 {
    let v = digits;
    let v = (v.wrapping_mul(10) + (v >> 8)) & 0x00ff_00ff_00ff_00ff;
    let v = (v.wrapping_mul(100) + (v >> 16)) & 0x0000_ffff_0000_ffff;
    (v.wrapping_mul(10_000) + (v >> 32)) & 0xffff_ffff
}

const POW10: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// Parses the decimal number at `*pos` (at most 19 digits, so it cannot overflow), followed by a
/// space (skipped) or the end of `s`. Eight digits at a time while 8 bytes are readable.
#[inline]
fn next_num(s: &[u8], pos: &mut usize) -> Option<u64> {
    let start = *pos;
    let mut p = start;
    let mut v: u64 = 0;
    while let Some(b) = s.get(p..p + 8) {
        let chunk = u64::from_le_bytes(b.try_into().ok()?);
        let bad = non_digit_bytes(chunk);
        let n = (bad.trailing_zeros() / 8) as usize; // leading digits in the chunk (8 = all)
        if n == 0 {
            break;
        }
        let d = chunk.wrapping_sub(0x3030_3030_3030_3030);
        let d = if n == 8 { d } else { d << (8 * (8 - n)) }; // keep the n digits, as low places
        v = v.wrapping_mul(POW10[n]).wrapping_add(swar8(d));
        p += n;
        if n < 8 {
            break;
        }
    }
    // Tail (fewer than 8 bytes left in `s`).
    while let Some(&b) = s.get(p) {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        v = v.wrapping_mul(10).wrapping_add(u64::from(d));
        p += 1;
    }
    if p == start || p - start > 19 {
        return None;
    }
    if p < s.len() {
        if s[p] != b' ' {
            return None;
        }
        p += 1;
    }
    *pos = p;
    Some(v)
}

/// Widths of the zero-padded fields of a measured text: `b SSSSSSSS QQQQQQQQ TTTTTTTTTTTTTTTT`.
/// Fixed positions let the receiver decode all three with four independent 8-digit steps; a
/// value too wide for its field is written in full and decoded by the general parser.
const SENDER_W: usize = 8;
const SEQ_W: usize = 8;
const NS_W: usize = 16;
/// Length of a measured text without padding.
pub const MEASURED_LEN: usize = 2 + SENDER_W + 1 + SEQ_W + 1 + NS_W;

#[inline(always)]
fn load8(s: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&s[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Position of the `:` ending the sender's name; names of up to 7 bytes (`c1234567`) are found
/// with one 8-byte load.
#[inline(always)]
fn find_colon(p: &[u8]) -> Option<usize> {
    if p.len() >= 8 {
        let x = load8(p, 0) ^ 0x3a3a_3a3a_3a3a_3a3a; // zero byte where p[i] == ':'
        let zero = x.wrapping_sub(0x0101_0101_0101_0101) & !x & 0x8080_8080_8080_8080;
        if zero != 0 {
            // The lowest flagged byte is exact (borrows only run towards higher bytes).
            return Some((zero.trailing_zeros() / 8) as usize);
        }
    }
    p.iter().position(|&b| b == b':')
}

/// Offsets of the sequence number and the timestamp in a measured text.
const Q: usize = 2 + SENDER_W + 1;
const T: usize = Q + SEQ_W + 1;

/// Whether `t` has the shape of a fixed-width measured text (the digits are checked apart).
#[inline(always)]
fn fixed_shape(t: &[u8]) -> bool {
    t.len() >= MEASURED_LEN
        && (t.len() == MEASURED_LEN || t[MEASURED_LEN] == b' ')
        && t[0] == b'b'
        && t[1] == b' '
        && t[Q - 1] == b' '
        && t[T - 1] == b' '
}

/// The fixed-width measured text at the start of `t`, if it is one: 32 digits checked and
/// converted with a dozen SSE2 instructions (pairs, then groups of 4, then of 8 digits).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn parse_fixed(t: &[u8]) -> Option<Text> {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_cvtsi128_si64, _mm_loadl_epi64, _mm_loadu_si128,
        _mm_madd_epi16, _mm_movemask_epi8, _mm_or_si128, _mm_packs_epi32, _mm_set1_epi32,
        _mm_set1_epi8, _mm_setzero_si128, _mm_sub_epi8, _mm_subs_epu8, _mm_unpackhi_epi64,
        _mm_unpackhi_epi8, _mm_unpacklo_epi64, _mm_unpacklo_epi8,
    };
    if !fixed_shape(t) {
        return None;
    }
    let p = t.as_ptr();
    // SAFETY: SSE2 is part of x86_64; `fixed_shape` checked t.len() >= MEASURED_LEN = T + 16,
    // so the loads (8 bytes at 2 and at Q, 16 at T) stay inside `t`.
    let (lo, hi) = unsafe {
        let zero = _mm_setzero_si128();
        let ascii0 = _mm_set1_epi8(b'0' as i8);
        // sender digits, then seq digits; the 16 timestamp digits.
        let sq = _mm_unpacklo_epi64(
            _mm_loadl_epi64(p.add(2) as *const __m128i),
            _mm_loadl_epi64(p.add(Q) as *const __m128i),
        );
        let sq = _mm_sub_epi8(sq, ascii0);
        let ts = _mm_sub_epi8(_mm_loadu_si128(p.add(T) as *const __m128i), ascii0);
        // A digit is 0..=9 after the subtraction (bytes below b'0' wrapped to >= 0xd0).
        let nine = _mm_set1_epi8(9);
        let over = _mm_or_si128(_mm_subs_epu8(sq, nine), _mm_subs_epu8(ts, nine));
        if _mm_movemask_epi8(_mm_cmpeq_epi8(over, zero)) != 0xffff {
            return None;
        }
        // Digits to i16, then multiply-add neighbours: d0*10+d1, then *100, then *10000.
        let x10 = _mm_set1_epi32(0x0001_000a);
        let x100 = _mm_set1_epi32(0x0001_0064);
        let x1e4 = _mm_set1_epi32(0x0001_2710);
        let pairs = |v| {
            _mm_packs_epi32(
                _mm_madd_epi16(_mm_unpacklo_epi8(v, zero), x10),
                _mm_madd_epi16(_mm_unpackhi_epi8(v, zero), x10),
            )
        };
        let quads_sq = _mm_madd_epi16(pairs(sq), x100);
        let quads_ts = _mm_madd_epi16(pairs(ts), x100);
        // [sender, seq, ts high 8 digits, ts low 8 digits] as i32.
        let r = _mm_madd_epi16(_mm_packs_epi32(quads_sq, quads_ts), x1e4);
        (
            _mm_cvtsi128_si64(r) as u64,
            _mm_cvtsi128_si64(_mm_unpackhi_epi64(r, r)) as u64,
        )
    };
    Some(Text::Measured {
        sender: lo & 0xffff_ffff,
        seq: lo >> 32,
        sent_ns: (hi & 0xffff_ffff) * 100_000_000 + (hi >> 32),
    })
}

/// The fixed-width measured text at the start of `t`, if it is one (8 digits per step).
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline(always)]
fn parse_fixed_swar(t: &[u8]) -> Option<Text> {
    const Z: u64 = 0x3030_3030_3030_3030;
    if !fixed_shape(t) {
        return None;
    }
    let (a, b, c, d) = (load8(t, 2), load8(t, Q), load8(t, T), load8(t, T + 8));
    if non_digit_bytes(a) | non_digit_bytes(b) | non_digit_bytes(c) | non_digit_bytes(d) != 0 {
        return None;
    }
    Some(Text::Measured {
        sender: swar8(a - Z),
        seq: swar8(b - Z),
        sent_ns: swar8(c - Z) * 100_000_000 + swar8(d - Z),
    })
}

/// Parses `name:text` as delivered.
#[inline]
pub fn parse_payload(p: &[u8]) -> Text {
    let Some(colon) = find_colon(p) else {
        return Text::Foreign;
    };
    parse_text(&p[colon + 1..])
}

/// Parses a message's text alone (the bench's measured text or readiness marker).
#[inline(always)]
pub fn parse_text(t: &[u8]) -> Text {
    #[cfg(target_arch = "x86_64")]
    let fixed = parse_fixed(t);
    #[cfg(not(target_arch = "x86_64"))]
    let fixed = parse_fixed_swar(t);
    match fixed {
        Some(m) => m,
        None => parse_general(t),
    }
}

/// Any spacing of the numbers (the fixed-width form is only the fast path).
#[cold]
fn parse_general(t: &[u8]) -> Text {
    if t.len() < 3 || t[1] != b' ' {
        return Text::Foreign;
    }
    let mut pos = 2;
    match t[0] {
        b'b' => {
            let Some(sender) = next_num(t, &mut pos) else {
                return Text::Foreign;
            };
            let Some(seq) = next_num(t, &mut pos) else {
                return Text::Foreign;
            };
            let Some(sent_ns) = next_num(t, &mut pos) else {
                return Text::Foreign;
            };
            Text::Measured {
                sender,
                seq,
                sent_ns,
            }
        }
        b'r' => match next_num(t, &mut pos) {
            Some(client) => Text::Ready { client },
            None => Text::Foreign,
        },
        _ => Text::Foreign,
    }
}

/// Appends `v` in decimal, zero-padded to at least `width` digits.
fn put_num(v: u64, width: usize, out: &mut Vec<u8>) {
    let mut tmp = [b'0'; 20];
    let mut i = tmp.len();
    let mut v = v;
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let start = i.min(tmp.len() - width.min(tmp.len()));
    out.extend_from_slice(&tmp[start..]);
}

/// Writes a measured text (`b SSSSSSSS QQQQQQQQ TTTTTTTTTTTTTTTT`, zero-padded fields), padded
/// with ` xxx...` to at least `min_len` bytes.
pub fn measured_text(sender: u64, seq: u64, sent_ns: u64, min_len: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"b ");
    put_num(sender, SENDER_W, out);
    out.push(b' ');
    put_num(seq, SEQ_W, out);
    out.push(b' ');
    put_num(sent_ns, NS_W, out);
    if out.len() < min_len {
        out.push(b' ');
        out.resize(min_len.max(out.len()), b'x');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(target: Target, data: &[u8]) -> Vec<String> {
        // Feed byte by byte to check that any split decodes the same.
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for &b in data {
            buf.push(b);
            let n = decode(target, &buf, &mut |e| out.push(format!("{e:?}"))).unwrap();
            buf.drain(..n);
        }
        assert!(buf.is_empty());
        out
    }

    /// The reference: digits one by one, checked arithmetic.
    fn slow_num(s: &[u8], pos: usize) -> Option<(u64, usize)> {
        let digits = s[pos..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 19 {
            return None;
        }
        let v = std::str::from_utf8(&s[pos..pos + digits])
            .ok()?
            .parse()
            .ok()?;
        let mut end = pos + digits;
        if end < s.len() {
            if s[end] != b' ' {
                return None;
            }
            end += 1;
        }
        Some((v, end))
    }

    #[test]
    fn next_num_matches_reference() {
        let mut cases: Vec<Vec<u8>> = Vec::new();
        let nums = [
            "0",
            "7",
            "12",
            "1234567",
            "12345678",
            "123456789",
            "9999999999999999",
            "18446744073709551615",
            "1844674407370955161",
            "00000000000000000001",
            "0000000000000000001",
        ];
        for n in nums {
            for pre in ["", "b "] {
                for post in [
                    "",
                    " ",
                    " xxxxxxxxxxxxxxxx",
                    "x",
                    ":",
                    "/",
                    "9 1",
                    "\n",
                    " 1",
                ] {
                    cases.push(format!("{pre}{n}{post}").into_bytes());
                }
            }
        }
        cases.push(b"".to_vec());
        cases.push(b" 1".to_vec());
        cases.push(b"b 12345678/0000000".to_vec());
        for c in &cases {
            for start in 0..c.len().min(3) {
                let mut pos = start;
                let got = next_num(c, &mut pos).map(|v| (v, pos));
                assert_eq!(
                    got,
                    slow_num(c, start),
                    "{:?} at {start}",
                    String::from_utf8_lossy(c)
                );
            }
        }
        // Every byte value next to a digit.
        for b in 0..=255u8 {
            for at in 0..10 {
                let mut c = b"1234567890123".to_vec();
                c[at] = b;
                let mut pos = 0;
                let got = next_num(&c, &mut pos).map(|v| (v, pos));
                assert_eq!(got, slow_num(&c, 0), "{b} at {at}");
            }
        }
    }

    #[test]
    fn fixed_parsers_agree() {
        let mut text = Vec::new();
        let mut cases = Vec::new();
        for (a, b, c) in [
            (0, 0, 0),
            (12_345_678, 87_654_321, 1_234_567_890_123_456),
            (99_999_999, 99_999_999, 9_999_999_999_999_999),
        ] {
            measured_text(a, b, c, 50, &mut text);
            cases.push(text.clone());
            // Every byte value at every position of the fixed part.
            for at in 0..MEASURED_LEN + 1 {
                for v in 0..=255u8 {
                    let mut t = text.clone();
                    t[at] = v;
                    cases.push(t);
                }
            }
        }
        let mut fast = 0;
        for t in &cases {
            let swar = parse_fixed_swar(t);
            #[cfg(target_arch = "x86_64")]
            assert_eq!(parse_fixed(t), swar, "{}", String::from_utf8_lossy(t));
            // Whatever the fast path accepts, the general parser reads the same; what it
            // rejects goes to the general parser anyway.
            if let Some(m) = swar {
                fast += 1;
                assert_eq!(m, parse_general(t), "{}", String::from_utf8_lossy(t));
            }
        }
        assert!(fast > 3 * 10 * (MEASURED_LEN - 5), "{fast}");
    }

    #[test]
    fn nchan_frames_are_the_text_as_sent() {
        let mut text = Vec::new();
        measured_text(3, 7, 123456, 64, &mut text);
        let mut got = Vec::new();
        let used = decode(Target::Nchan, &text, &mut |e| {
            if let Event::Text(t) = e {
                got.push(parse_text(t));
            }
        })
        .unwrap();
        assert_eq!(used, text.len());
        assert_eq!(
            got,
            vec![Text::Measured {
                sender: 3,
                seq: 7,
                sent_ns: 123456
            }]
        );
        let mut out = Vec::new();
        handshake(Target::Nchan, "c1", "room0", true, &mut out);
        assert!(out.is_empty());
        assert_eq!(Target::Nchan.ws_path("room0"), "/room/room0");
        assert!(Target::Nchan.is_websocket() && !Target::Redis.is_websocket());
    }

    #[test]
    fn websocket_frames() {
        let mut text = Vec::new();
        measured_text(3, 7, 123456, 64, &mut text);
        let t = String::from_utf8(text.clone()).unwrap();
        let want = Text::Measured {
            sender: 3,
            seq: 7,
            sent_ns: 123456,
        };
        let ts = "\"ts\":\"2026-11-26T11:22:56.182Z\"}";
        // As the server sends it, and with keys in another order or added (the slow path).
        for frame in [
            format!("{{\"type\":\"message\",\"id\":12,\"room\":\"room0\",\"name\":\"c1\",\"text\":\"{t}\",{ts}"),
            format!("{{\"type\":\"message\",\"id\":1,\"room\":\"r\\\"q\",\"name\":\"c1\",\"text\":\"{t}\",{ts}"),
            format!("{{\"type\":\"message\",\"id\":1,\"x\":2,\"room\":\"r\",\"name\":\"c1\",\"text\":\"{t}\",{ts}"),
            format!("{{\"type\":\"message\",\"id\":1,\"text\":\"{t}\",\"name\":\"c1\",{ts}"),
        ] {
            let mut got = None;
            let n = decode(Target::MachatWs, frame.as_bytes(), &mut |e| {
                if let Event::Text(x) = e {
                    got = Some(parse_text(x));
                }
            })
            .unwrap();
            assert_eq!(n, frame.len());
            assert_eq!(got.as_ref(), Some(&want), "{frame}");
        }
        let ready = format!("{{\"type\":\"message\",\"id\":1,\"room\":\"room0\",\"name\":\"c9\",\"text\":\"r 9\",{ts}");
        assert_eq!(
            decode_ws_frame(ready.as_bytes()),
            Event::Text(b"r 9".as_slice())
        );
        // An escaped quote cuts the text: foreign, never a wrong measurement.
        let esc = format!("{{\"type\":\"message\",\"id\":1,\"room\":\"room0\",\"name\":\"c9\",\"text\":\"b 1 \\\"2 3\",{ts}");
        match decode_ws_frame(esc.as_bytes()) {
            Event::Text(x) => assert_eq!(parse_text(x), Text::Foreign),
            e => panic!("{e:?}"),
        }
        let join = "{\"type\":\"join\",\"room\":\"room0\",\"name\":\"c9\",\"ts\":\"2026-11-26T11:22:54.726Z\"}";
        assert!(join.as_bytes().starts_with(&ws_join_prefix("c9", "room0")));
        assert!(!join.as_bytes().starts_with(&ws_join_prefix("c1", "room0")));
        assert_eq!(
            decode_ws_frame(join.as_bytes()),
            Event::Notice(join.as_bytes())
        );
        let err = b"{\"type\":\"error\",\"reason\":\"line too long\"}";
        assert_eq!(decode_ws_frame(err), Event::Error(err));
        assert_eq!(
            decode_ws_frame(b"{\"type\":\"message\",\"id\":1}"),
            Event::Other
        );
    }

    #[test]
    fn newlines_found_everywhere() {
        let mut buf = vec![b'x'; 300];
        for (i, b) in buf.iter_mut().enumerate() {
            if i % 7 == 0 || i % 64 == 63 || i == 299 {
                *b = b'\n';
            }
        }
        for len in 0..buf.len() {
            let want: Vec<usize> = memchr::memchr_iter(b'\n', &buf[..len]).collect();
            let mut got = Vec::new();
            for_each_newline(&buf[..len], |i| got.push(i));
            assert_eq!(got, want);
        }
    }

    #[test]
    fn roundtrip_all_targets() {
        let mut text = Vec::new();
        measured_text(3, 7, 123456, 40, &mut text);
        assert!(text.len() >= 40);
        for target in [Target::Machat, Target::Redis, Target::Nats] {
            let mut wire = Vec::new();
            match target {
                Target::Machat => {
                    wire.extend_from_slice(b"*** c1 joined\nc1:");
                    wire.extend_from_slice(&text);
                    wire.push(b'\n');
                }
                Target::Redis => {
                    wire.extend_from_slice(b"*3\r\n$9\r\nsubscribe\r\n$5\r\nroom0\r\n:1\r\n:5\r\n");
                    let p = [b"c1:".as_slice(), &text].concat();
                    wire.extend_from_slice(
                        format!("*3\r\n$7\r\nmessage\r\n$5\r\nroom0\r\n${}\r\n", p.len())
                            .as_bytes(),
                    );
                    wire.extend_from_slice(&p);
                    wire.extend_from_slice(b"\r\n");
                }
                Target::Nats => {
                    wire.extend_from_slice(b"INFO {}\r\nPING\r\n");
                    let p = [b"c1:".as_slice(), &text].concat();
                    wire.extend_from_slice(format!("MSG room.room0 1 {}\r\n", p.len()).as_bytes());
                    wire.extend_from_slice(&p);
                    wire.extend_from_slice(b"\r\n");
                }
                Target::MachatWs | Target::MachatJson | Target::Nchan => continue, // see websocket_frames
            }
            let evs = all(target, &wire);
            assert!(
                evs.iter().any(|e| e.starts_with("Payload")),
                "{target:?} {evs:?}"
            );
        }
        assert_eq!(
            parse_payload(&[b"c1:".as_slice(), &text].concat()),
            Text::Measured {
                sender: 3,
                seq: 7,
                sent_ns: 123456
            }
        );
        for (sender, seq, ns) in [
            (0, 0, 0),
            (99_999_999, 99_999_999, 9_999_999_999_999_999),
            (100_000_000, 100_000_000, 10_000_000_000_000_000),
            (u64::MAX / 10, 1, 2),
        ] {
            for min_len in [0, MEASURED_LEN, MEASURED_LEN + 1, MEASURED_LEN + 2, 64] {
                measured_text(sender, seq, ns, min_len, &mut text);
                assert!(text.len() >= min_len);
                for name in ["c1", "c1234567", "c12345678", "a:b"] {
                    let p = [name.as_bytes(), b":", &text].concat();
                    let want = if name == "a:b" {
                        Text::Foreign
                    } else {
                        Text::Measured {
                            sender,
                            seq,
                            sent_ns: ns,
                        }
                    };
                    assert_eq!(parse_payload(&p), want, "{}", String::from_utf8_lossy(&p));
                }
            }
        }
        measured_text(1, 2, 3, 0, &mut text);
        assert_eq!(text, b"b 00000001 00000002 0000000000000003");
        assert_eq!(
            parse_payload(b"c1:b 00000001 00000002 000000000000000x"),
            Text::Foreign
        );
        assert_eq!(
            parse_payload(b"c1:b 00000001 00000002 0000000000000003x"),
            Text::Foreign
        );
        assert_eq!(
            parse_payload(b"c1:b 00000001 0000000200000000000000003"),
            Text::Foreign
        );
        assert_eq!(
            parse_payload(b"c1:b 1 2 3 xx"),
            Text::Measured {
                sender: 1,
                seq: 2,
                sent_ns: 3
            }
        );
        assert_eq!(parse_payload(b"c9:r 9"), Text::Ready { client: 9 });
        assert_eq!(parse_payload(b"c9:r 9x"), Text::Foreign);
        assert_eq!(parse_payload(b"c9:b 1 2"), Text::Foreign);
        assert_eq!(parse_payload(b"c9:hello"), Text::Foreign);
    }
}
