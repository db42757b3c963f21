//! The line stream after the handshake: arbitrary bytes, cut at fuzzer-chosen points, into
//! `LineCodec` with a fuzzer-chosen line limit and a consumer that pauses every Nth item; then
//! every line through `clean_line` and `clean_message`.
//!
//! Input: `[limit lo, limit hi, pause, cut count, cuts..., stream...]` (see `common.rs`); the
//! limit is in 64..=8192 or, one time in two, in 1..=128; `pause % 4` is how often the consumer
//! pauses (0: never).
//!
//! Checked, besides "never panics":
//! - the items are exactly those of a straightforward model of docs/PROTOCOL.md section 4
//!   (lines end at `\n`, one `\r` before it dropped; over the limit is `TooLong`, also for an
//!   unfinished line of more than limit + 1 bytes; a blank first line is dropped), whether the
//!   stream comes at once, in the fuzzer's pieces, byte by byte, or with pauses and resumes;
//! - no line exceeds the limit or holds a `\n`, and an unpaused codec never buffers more than
//!   limit + 1 bytes;
//! - `clean_line` output holds no control character but tab (so no ESC and no C1 control), keeps
//!   the input's characters in order (it only removes), changes nothing in a line without control
//!   characters, and is idempotent;
//! - `clean_message` of one line is `clean_line` of it without its line ends; of the whole stream
//!   it holds no control character but tab and `\n`, and one line per line of the input without
//!   its trailing line ends (a last line of only control characters is kept, as an empty line).

#![no_main]

use libfuzzer_sys::fuzz_target;
use machat_proto::codec::{Flow, Item, LineCodec};
use machat_proto::protocol::{clean_line, clean_message};

#[path = "common.rs"]
mod common;

/// Streams up to this long are also fed one byte at a time.
const BYTE_BY_BYTE: usize = 4096;

#[derive(Debug, PartialEq, Eq, Clone)]
enum Ev {
    Line(Vec<u8>),
    TooLong,
}

/// What section 4 says the stream is, read all at once.
fn model(stream: &[u8], max: usize) -> Vec<Ev> {
    let mut out = Vec::new();
    let mut first = true;
    let mut rest = stream;
    while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..pos];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let was_first = std::mem::replace(&mut first, false);
        if line.len() > max {
            out.push(Ev::TooLong);
        } else if !(was_first && line.iter().all(|&b| b == b' ' || b == b'\t')) {
            out.push(Ev::Line(line.to_vec()));
        }
        rest = &rest[pos + 1..];
    }
    // An unfinished line is reported as soon as it cannot fit (limit + 1 for a `\r`).
    if rest.len() > max + 1 {
        out.push(Ev::TooLong);
    }
    out
}

/// Runs the codec over the pieces; `pause_every` 0 never pauses.
fn decode(pieces: &[&[u8]], max: usize, pause_every: usize) -> Vec<Ev> {
    let mut codec = LineCodec::new(max);
    let mut events = Vec::new();
    let mut count = 0usize;
    let mut f = |item: Item<'_>| {
        events.push(match item {
            Item::Line(l) => Ev::Line(l.to_vec()),
            Item::TooLong => Ev::TooLong,
        });
        count += 1;
        if pause_every != 0 && count.is_multiple_of(pause_every) {
            Flow::Pause
        } else {
            Flow::Continue
        }
    };
    for piece in pieces {
        codec.feed(piece, &mut f);
        while codec.is_paused() {
            codec.resume(&mut f);
        }
        assert!(
            codec.buffered() <= max + 1,
            "{} bytes buffered with a limit of {max}",
            codec.buffered()
        );
    }
    events
}

fn check_clean_line(raw: &[u8]) {
    let clean = clean_line(raw);
    if let Some(c) = clean.chars().find(|&c| c.is_control() && c != '\t') {
        panic!("clean_line left U+{:04X} in {clean:?}", c as u32);
    }
    let lossy = String::from_utf8_lossy(raw);
    if !lossy.chars().any(|c| c.is_control() && c != '\t') {
        assert_eq!(clean, lossy, "a line without control characters changed");
    }
    let mut source = lossy.chars();
    for c in clean.chars() {
        assert!(
            source.any(|s| s == c),
            "{c:?} in {clean:?} is not from {lossy:?}"
        );
    }
    assert_eq!(clean_line(clean.as_bytes()), clean, "not idempotent");
}

fn check_clean_message(raw: &[u8]) {
    let clean = clean_message(raw);
    if let Some(c) = clean
        .chars()
        .find(|&c| c.is_control() && c != '\t' && c != '\n')
    {
        panic!("clean_message left U+{:04X} in {clean:?}", c as u32);
    }
    let mut end = raw.len();
    while end > 0 && matches!(raw[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    let trimmed = &raw[..end];
    let lines = trimmed.iter().filter(|&&b| b == b'\n').count() + 1;
    assert_eq!(clean.split('\n').count(), lines, "line count changed");
    if lines == 1 {
        assert_eq!(
            clean,
            clean_line(trimmed),
            "one line differs from clean_line"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let input = common::read(data, 3);
    let max = common::limit(input.params[0], input.params[1], None);
    let pause_every = usize::from(input.params[2] % 4);
    let stream = input.stream;

    let expected = model(stream, max);
    assert_eq!(decode(&[stream], max, 0), expected, "whole stream");
    let pieces = common::pieces(stream, &input.cuts);
    assert_eq!(
        decode(&pieces, max, pause_every),
        expected,
        "cuts {:?}, pause every {pause_every}",
        input.cuts
    );
    if pause_every != 0 {
        assert_eq!(decode(&[stream], max, pause_every), expected, "paused");
    }
    if stream.len() <= BYTE_BY_BYTE {
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(decode(&bytes, max, 0), expected, "byte by byte");
    }

    for ev in &expected {
        if let Ev::Line(line) = ev {
            assert!(line.len() <= max && !line.contains(&b'\n'));
            check_clean_line(line);
            check_clean_message(line);
        }
    }
    check_clean_line(stream);
    check_clean_message(stream);
});
