//! What a WebSocket client sends as text: the handshake frame
//! (`machat_proto::protocol::handshake_frame`) and message frames (`clean_message`, then rendered for text and JSON members).
//!
//! Input: `[limit lo, limit hi, name, room, id x8, ts x8, stream...]`; the frame is the stream as
//! UTF-8 (invalid bytes replaced: a WebSocket text frame is always UTF-8). The limit is 4096 or
//! another in 1..=8192; name and room are picked from lists of valid ones.
//!
//! Checked, besides "never panics":
//! - `handshake_frame`: refuses a frame over the limit; an accepted name and room pass
//!   `validate_name` / `validate_room`; it agrees with the TCP path (`HandshakeDecoder` +
//!   `parse_handshake`) whenever the frame is one JSON value with only whitespace around it
//!   (serde_json's private RawValue key included: both read it as a plain key);
//! - `clean_message`: no control character but tab and `\n`, and one line per line of the frame
//!   without its trailing line ends;
//! - `RoomEvent::Message.render_text`: one `NAME:line` per line of the message, nothing else, and
//!   `RoomEvent::Action` likewise with `* NAME `;
//! - `render_json`: one line, no control characters, that parses back to the same type, id, room,
//!   name, text and time.

#![no_main]

use libfuzzer_sys::fuzz_target;
use machat_proto::codec::{HandshakeDecoder, HandshakeStatus};
use machat_proto::protocol::{
    clean_message, handshake_frame, parse_handshake, validate_name, validate_room, RoomEvent,
    Timestamp,
};
use serde_json::Value;

#[path = "common.rs"]
mod common;

const NAMES: &[&str] = &[
    "Mina",
    "a",
    "Ünïcødé_名前-1",
    "éééééééééééééééééééééééééééééééé",
    "\"quoted\\",
    "<b>&amp;",
];
const ROOMS: &[&str] = &[
    "devroom",
    "r",
    "😀",
    "\\u0000",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
];

fn check_handshake(text: &str, max: usize) {
    let ws = handshake_frame(text, max);
    if text.len() > max {
        assert!(ws.is_err(), "a frame over the limit was accepted");
    }
    if let Ok(h) = &ws {
        validate_name(&h.name).expect("accepted a bad name");
        validate_room(&h.room).expect("accepted a bad room");
    }
    // The TCP path on the same bytes, when the frame is one value with whitespace around it.
    let bytes = text.as_bytes();
    let tcp = match HandshakeDecoder::new(max).feed(bytes) {
        HandshakeStatus::Done(value, used)
            if text.len() <= max && bytes[used..].iter().all(|&b| common::is_json_ws(b)) =>
        {
            Some(parse_handshake(value))
        }
        _ => None,
    };
    match (&ws, tcp) {
        (_, Some(tcp)) => assert_eq!(ws, tcp, "WebSocket and TCP disagree"),
        (Ok(h), None) => panic!("WebSocket accepted {h:?}, TCP did not"),
        (Err(_), None) => {}
    }
}

fn check_message(raw: &[u8], name: &str, room: &str, id: u64, ts: Timestamp) {
    let text = clean_message(raw);
    if let Some(c) = text
        .chars()
        .find(|&c| c.is_control() && c != '\t' && c != '\n')
    {
        panic!("clean_message left U+{:04X} in {text:?}", c as u32);
    }
    let mut end = raw.len();
    while end > 0 && matches!(raw[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    let raw_lines = raw[..end].iter().filter(|&&b| b == b'\n').count() + 1;
    let lines: Vec<&str> = text.split('\n').collect();
    assert_eq!(lines.len(), raw_lines, "line count changed");

    for action in [false, true] {
        let (event, prefix) = if action {
            (
                RoomEvent::Action {
                    id,
                    name,
                    text: &text,
                },
                format!("* {name} "),
            )
        } else {
            (
                RoomEvent::Message {
                    id,
                    name,
                    text: &text,
                },
                format!("{name}:"),
            )
        };
        let mut out = Vec::new();
        event.render_text(&mut out);
        let out = String::from_utf8(out).expect("text rendering is not UTF-8");
        let body = out.strip_suffix('\n').expect("no final newline");
        let got: Vec<&str> = body.split('\n').collect();
        assert_eq!(got.len(), lines.len(), "{out:?} is not one line per line");
        for (line, want) in got.iter().zip(&lines) {
            assert_eq!(line.strip_prefix(&prefix), Some(*want), "{out:?}");
        }
    }

    let mut out = Vec::new();
    RoomEvent::Message {
        id,
        name,
        text: &text,
    }
    .render_json(room, ts, &mut out);
    let out = String::from_utf8(out).expect("JSON rendering is not UTF-8");
    let line = out.strip_suffix('\n').expect("no final newline");
    assert!(
        !line.chars().any(char::is_control),
        "JSON line holds a control character: {line:?}"
    );
    let v: Value = serde_json::from_str(line).expect("JSON rendering does not parse");
    assert_eq!(v["type"], "message");
    assert_eq!(v["id"], id);
    assert_eq!(v["room"], room);
    assert_eq!(v["name"], name);
    assert_eq!(v["text"].as_str(), Some(&*text));
    assert_eq!(v["ts"].as_str(), Some(&*ts.to_string()));
}

fuzz_target!(|data: &[u8]| {
    let head = data.get(..20).unwrap_or(data);
    let mut p = [0u8; 20];
    p[..head.len()].copy_from_slice(head);
    let stream = data.get(20..).unwrap_or(&[]);
    let max = common::limit(p[0], p[1], Some(4096));
    let name = NAMES[usize::from(p[2]) % NAMES.len()];
    let room = ROOMS[usize::from(p[3]) % ROOMS.len()];
    let id = u64::from_le_bytes(p[4..12].try_into().unwrap());
    let ts = Timestamp(u64::from_le_bytes(p[12..20].try_into().unwrap()));

    let text = String::from_utf8_lossy(stream);
    check_handshake(&text, max);
    check_message(text.as_bytes(), name, room, id, ts);
});
