//! Micro-benchmarks of the codec and protocol hot paths: handshake parsing, line splitting,
//! line cleaning and event rendering. Run with `cargo bench --bench codec` (add
//! `-- --warm-up-time 1 --measurement-time 2` for a quick pass).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use machat::codec::{Flow, HandshakeDecoder, HandshakeStatus, Item, LineCodec};
use machat::protocol::{self, RoomEvent, Timestamp};

/// The defaults of `--max-handshake` and `--max-line`.
const MAX_HANDSHAKE: usize = 4096;
const MAX_LINE: usize = 8192;

const HANDSHAKE: &[u8] = b"{\"name\":\"Mina\",\"room\":\"devroom\",\"format\":\"text\"}\n";

/// A typical chat line of exactly 60 bytes (newline included).
fn chat_line(i: usize) -> Vec<u8> {
    let mut line = format!("message {i:05} from the benchmark, lorem ipsum dolor sit");
    line.truncate(59);
    while line.len() < 59 {
        line.push('.');
    }
    line.push('\n');
    line.into_bytes()
}

/// About 16 KiB of whole 60-byte lines.
fn lines_16k() -> Vec<u8> {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut i = 0;
    while buf.len() + 60 <= 16 * 1024 {
        buf.extend_from_slice(&chat_line(i));
        i += 1;
    }
    buf
}

fn handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Bytes(HANDSHAKE.len() as u64));
    let parse = |status: HandshakeStatus| match status {
        HandshakeStatus::Done(value, used) => {
            let hs = protocol::parse_handshake(value).expect("valid handshake");
            (hs, used)
        }
        other => panic!("handshake not done: {other:?}"),
    };
    g.bench_function("whole", |b| {
        b.iter(|| {
            let mut dec = HandshakeDecoder::new(MAX_HANDSHAKE);
            parse(dec.feed(black_box(HANDSHAKE)))
        })
    });
    let (a, rest) = HANDSHAKE.split_at(HANDSHAKE.len() / 3);
    let (m, z) = rest.split_at(rest.len() / 2);
    g.bench_function("split_in_3", |b| {
        b.iter(|| {
            let mut dec = HandshakeDecoder::new(MAX_HANDSHAKE);
            assert_eq!(dec.feed(black_box(a)), HandshakeStatus::Incomplete);
            assert_eq!(dec.feed(black_box(m)), HandshakeStatus::Incomplete);
            parse(dec.feed(black_box(z)))
        })
    });
    g.finish();
}

fn line_split(c: &mut Criterion) {
    let buf = lines_16k();
    let n_lines = buf.len() / 60;
    let mut g = c.benchmark_group("line_split");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    // A long-lived codec, as on a connection: the first (non-blank) line clears the handshake
    // rule once and for all.
    let mut codec = LineCodec::new(MAX_LINE);
    g.bench_function("16KiB_whole_lines", |b| {
        b.iter(|| {
            let mut n = 0usize;
            codec.feed(black_box(&buf), &mut |item| {
                if let Item::Line(l) = item {
                    n += black_box(l).len();
                }
                Flow::Continue
            });
            assert_eq!(n, n_lines * 59);
        })
    });
    // The same bytes in reads of 1000 bytes: most reads end inside a line, which the codec
    // keeps until the next read.
    let mut codec = LineCodec::new(MAX_LINE);
    g.bench_function("16KiB_reads_of_1000", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for chunk in buf.chunks(1000) {
                codec.feed(black_box(chunk), &mut |item| {
                    if let Item::Line(l) = item {
                        n += black_box(l).len();
                    }
                    Flow::Continue
                });
            }
            assert_eq!(n, n_lines * 59);
            assert_eq!(codec.buffered(), 0);
        })
    });
    g.finish();
}

fn clean_line(c: &mut Criterion) {
    let plain = chat_line(42);
    let plain = &plain[..plain.len() - 1];
    let fancy =
        "\x1b[1;31mAchtung\x1b[0m: Grüße aus Köln, naïve café ☕ \x1b]0;title\x07— done\ttab"
            .as_bytes();
    let mut g = c.benchmark_group("clean_line");
    g.throughput(Throughput::Bytes(plain.len() as u64));
    g.bench_function("ascii_59B", |b| {
        b.iter(|| protocol::clean_line(black_box(plain)))
    });
    g.throughput(Throughput::Bytes(fancy.len() as u64));
    g.bench_function("escapes_utf8", |b| {
        b.iter(|| protocol::clean_line(black_box(fancy)))
    });
    g.finish();
}

fn render(c: &mut Criterion) {
    let text = String::from_utf8(chat_line(7)).expect("ascii");
    let ev = RoomEvent::Message {
        id: 123_456,
        name: "Mina",
        text: text.trim_end(),
    };
    let ts = Timestamp(1_795_000_000_123);
    let mut out = Vec::with_capacity(512);
    let mut g = c.benchmark_group("render");
    g.bench_function("text_message", |b| {
        b.iter(|| {
            out.clear();
            black_box(&ev).render_text(&mut out);
            black_box(out.len())
        })
    });
    g.bench_function("json_message", |b| {
        b.iter(|| {
            out.clear();
            black_box(&ev).render_json(black_box("devroom"), ts, &mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, handshake, line_split, clean_line, render);
criterion_main!(benches);
