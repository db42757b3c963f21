#![allow(dead_code)] // each target uses part of it

//! The input layout the targets share: a few parameter bytes, then the cut points, then the
//! stream. `data = params[n] ++ [k] ++ k * u16le cut ++ stream`, where `k` is taken modulo
//! `MAX_CUTS + 1` and each cut modulo `stream.len() + 1`. Missing bytes read as zero, so any
//! input is valid, and a seed is just `n` zero bytes, a zero, and the stream.

/// At most this many cut points (so at most this many + 1 pieces).
pub const MAX_CUTS: usize = 16;

pub struct Input<'a> {
    pub params: Vec<u8>,
    pub stream: &'a [u8],
    /// Sorted positions in `0..=stream.len()`; repeats give empty pieces.
    pub cuts: Vec<usize>,
}

pub fn read(data: &[u8], nparams: usize) -> Input<'_> {
    let mut params = data.get(..nparams).unwrap_or(data).to_vec();
    params.resize(nparams, 0);
    let rest = data.get(nparams..).unwrap_or(&[]);
    let ncuts = usize::from(rest.first().copied().unwrap_or(0)) % (MAX_CUTS + 1);
    let rest = rest.get(1..).unwrap_or(&[]);
    let header = (2 * ncuts).min(rest.len());
    let (raw_cuts, stream) = rest.split_at(header);
    let mut cuts: Vec<usize> = raw_cuts
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();
    Input {
        params,
        stream,
        cuts,
    }
}

/// The stream cut at the given points (sorted, within the stream).
pub fn pieces<'a>(stream: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut last = 0;
    for &cut in cuts {
        out.push(&stream[last..cut]);
        last = cut;
    }
    out.push(&stream[last..]);
    out
}

/// A limit from two parameter bytes: usually a realistic one in `64..=8192` (or `default`), but
/// one time in two a tiny one in `1..=128`, where the edges are easy to reach.
pub fn limit(lo: u8, hi: u8, default: Option<usize>) -> usize {
    let v = u16::from_le_bytes([lo, hi]);
    if v & 0x8000 != 0 {
        1 + usize::from(v & 0x7f)
    } else if let Some(d) = default.filter(|_| v & 0x4000 == 0) {
        d
    } else {
        64 + usize::from(v) % (8192 - 64 + 1)
    }
}

/// JSON's whitespace (RFC 8259): what may surround a value.
pub fn is_json_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}
