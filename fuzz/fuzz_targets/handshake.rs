//! The TCP handshake: arbitrary bytes, cut at fuzzer-chosen points, into `HandshakeDecoder`,
//! then `parse_handshake` on the completed value.
//!
//! Input: `[limit lo, limit hi, cut count, cuts..., stream...]` (see `common.rs`); the limit is
//! 4096 (the default `--max-handshake`) or another one in 1..=8192.
//!
//! Checked, besides "never panics":
//! - `Done(_, used)`: `used` is within the piece just fed;
//! - the outcome (incomplete, invalid with its message, or the value with where it ends in the
//!   stream and what `parse_handshake` makes of it) is the same for the whole stream at once, for
//!   the fuzzer's cuts and, for short streams, byte by byte (a stream that starts with a number
//!   or literal is only checked to be refused every way: the decoder does not wait to see what
//!   follows such a value, refused anyway);
//! - a completed object ends with its `}` within the limit, and those bytes alone parse as JSON
//!   to the same value (`codec::PlainValue`: JSON with no serde_json private keys);
//! - "too large" only when more than the limit arrived, "incomplete" only when at most the limit
//!   arrived;
//! - an accepted handshake's name and room pass `validate_name` / `validate_room`, and are the
//!   strings at "name" and "room" in that JSON.

#![no_main]

use libfuzzer_sys::fuzz_target;
use machat_proto::codec::{HandshakeDecoder, HandshakeStatus, PlainValue};
use machat_proto::protocol::{parse_handshake, validate_name, validate_room, Handshake};
use machat_proto::refusal::Refusal;
use serde_json::Value;

#[path = "common.rs"]
mod common;

/// Streams up to this long are also fed one byte at a time (quadratic: every feed re-parses).
const BYTE_BY_BYTE: usize = 256;

#[derive(Debug, PartialEq)]
enum Outcome {
    Incomplete,
    Invalid(String),
    /// A complete object: the value, the stream offset just past its `}`, and the verdict.
    Object(Value, usize, Result<Handshake, String>),
    /// Any other complete value: refused whatever it is. (A number at the end of a read may be
    /// cut short, "12" then "3", so its value and end are not compared; it is refused anyway.)
    NotObject(String),
}

fn decode(pieces: &[&[u8]], max: usize) -> Outcome {
    let mut decoder = HandshakeDecoder::new(max);
    let mut offset = 0;
    for piece in pieces {
        match decoder.feed(piece) {
            HandshakeStatus::Incomplete => offset += piece.len(),
            HandshakeStatus::Invalid(e) => return Outcome::Invalid(e),
            // A browser on the chat port: refused (answered in HTTP), whatever the split.
            HandshakeStatus::Http(head) => return Outcome::Invalid(format!("http {head:?}")),
            HandshakeStatus::Done(value, used) => {
                assert!(
                    used <= piece.len(),
                    "used {used} of a piece of {}",
                    piece.len()
                );
                let verdict = parse_handshake(value.clone());
                if value.is_object() {
                    return Outcome::Object(value, offset + used, verdict);
                }
                return Outcome::NotObject(verdict.expect_err("a non-object was accepted"));
            }
        }
    }
    Outcome::Incomplete
}

fuzz_target!(|data: &[u8]| {
    let input = common::read(data, 2);
    let max = common::limit(input.params[0], input.params[1], Some(4096));
    let stream = input.stream;

    let whole = decode(&[stream], max);
    let cut = decode(&common::pieces(stream, &input.cuts), max);
    let bytes = (stream.len() <= BYTE_BY_BYTE).then(|| {
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        decode(&bytes, max)
    });
    // A stream that starts with a number or `true`/`false`/`null` is refused however it is cut,
    // but not always with the same words: serde_json ends such a value at the first byte that
    // cannot continue it, and checks that byte ("trailing characters"). So "12" then "3x" is
    // "not an object" at once, while "123x" in one read is "trailing characters", and an
    // over-long number is "too large". The decoder does not wait to see what follows a value
    // that is refused anyway (a client sending `5` is refused at once); that is by design, so
    // only "refused, and never an object" is checked for these.
    let first = stream.iter().find(|&&b| !common::is_json_ws(b));
    if matches!(first, Some(b'-' | b'0'..=b'9' | b't' | b'f' | b'n')) {
        for outcome in [&whole, &cut].into_iter().chain(&bytes) {
            assert!(!matches!(outcome, Outcome::Object(..)), "{outcome:?}");
        }
        return;
    }
    assert_eq!(whole, cut, "cuts {:?} changed the outcome", input.cuts);
    if let Some(bytes) = bytes {
        assert_eq!(whole, bytes, "byte by byte changed the outcome");
    }

    match &whole {
        Outcome::Incomplete => assert!(stream.len() <= max, "over the limit yet incomplete"),
        Outcome::Invalid(e) if e.starts_with("handshake too large") => {
            assert!(stream.len() > max, "too large at {} <= {max}", stream.len())
        }
        Outcome::Invalid(e) => assert!(
            e.starts_with("invalid handshake JSON")
                || *e == Refusal::NotAHandshake.to_string()
                || e.starts_with("http "),
            "{e}"
        ),
        Outcome::NotObject(_) => {}
        Outcome::Object(value, end, verdict) => {
            assert!(*end <= max, "object ends at {end}, past the limit {max}");
            assert_eq!(stream[end - 1], b'}');
            let PlainValue(again) = serde_json::from_slice(&stream[..*end])
                .unwrap_or_else(|e| panic!("the handshake's bytes are not JSON alone: {e}"));
            assert_eq!(&again, value);
            if let Ok(h) = verdict {
                validate_name(&h.name).expect("accepted a bad name");
                validate_room(&h.room).expect("accepted a bad room");
                assert_eq!(
                    value["name"],
                    h.name.as_str(),
                    "name is not the string sent"
                );
                assert_eq!(
                    value["room"],
                    h.room.as_str(),
                    "room is not the string sent"
                );
            }
        }
    }
});
