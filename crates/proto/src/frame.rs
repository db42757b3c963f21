//! WebSocket text frames as the server sends them (RFC 6455, section 5.2).
//!
//! A server's frames are never masked, so a frame's bytes are the same for every client that
//! gets it: a room renders each event's frame once, into a log of frames its WebSocket members
//! read from, exactly as it renders a line once for its TCP members. This module writes those
//! frames and walks a buffer that holds them. It knows nothing of sockets.
//!
//! Every frame written here is a whole text message (`FIN` set, opcode 1), so its first byte is
//! always [`TEXT_FRAME`] (0x81). That byte can never begin a line of the JSON format (a line
//! begins with `{`) nor any UTF-8 text (0x81 is a continuation byte), so a buffer may mix frames
//! and plain `\n`-terminated JSON lines and still be read without doubt ([`Piece`]).

/// The first byte of a final, unfragmented text frame.
pub const TEXT_FRAME: u8 = 0x81;

/// How many bytes a frame's header takes for a payload of `len` bytes.
pub fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

/// Appends the header of a text frame whose payload is `len` bytes.
pub fn push_header(out: &mut Vec<u8>, len: usize) {
    out.push(TEXT_FRAME);
    match len {
        0..=125 => out.push(len as u8),
        126..=65535 => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// Appends one text frame holding `payload`.
pub fn push_text(out: &mut Vec<u8>, payload: &[u8]) {
    push_header(out, payload.len());
    out.extend_from_slice(payload);
}

/// Turns the `\n`-terminated lines in `buf[start..]` into one text frame each (the line without
/// its `\n`), in place. Empty lines are dropped: an empty frame tells a client nothing. Bytes
/// after the last `\n` are left as they are.
pub fn frame_lines(buf: &mut Vec<u8>, start: usize) {
    let Some(tail) = buf.get(start..) else {
        return;
    };
    // Usually one line (a room's event): frame it with one shift of its bytes.
    let mut framed = Vec::new();
    let mut end = start;
    for line in tail.split_inclusive(|&b| b == b'\n') {
        let Some(text) = line.strip_suffix(b"\n") else {
            break;
        };
        end += line.len();
        if !text.is_empty() {
            push_text(&mut framed, text);
        }
    }
    let rest = buf.split_off(end);
    buf.truncate(start);
    buf.extend_from_slice(&framed);
    buf.extend_from_slice(&rest);
}

/// The total size (header and payload) of the frame at the start of `bytes`, if its header is
/// all there; None if `bytes` does not start with a whole header of a [`TEXT_FRAME`].
pub fn frame_len(bytes: &[u8]) -> Option<usize> {
    if bytes.first() != Some(&TEXT_FRAME) {
        return None;
    }
    let len = *bytes.get(1)?;
    match len {
        0..=125 => Some(2 + len as usize),
        126 => {
            let n = u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]);
            Some(4 + n as usize)
        }
        _ => {
            let raw: [u8; 8] = bytes.get(2..10)?.try_into().ok()?;
            usize::try_from(u64::from_be_bytes(raw))
                .ok()
                .and_then(|n| n.checked_add(10))
        }
    }
}

/// What a buffer of frames and plain lines holds next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// A frame of this many bytes, header included (it may run past the buffer's end).
    Frame(usize),
    /// A plain line of this many bytes, its `\n` included, or up to the buffer's end.
    Line(usize),
}

/// The piece at the start of `bytes` (not empty).
pub fn piece(bytes: &[u8]) -> Piece {
    match frame_len(bytes) {
        Some(n) => Piece::Frame(n),
        None => Piece::Line(memchr::memchr(b'\n', bytes).map_or(bytes.len(), |i| i + 1)),
    }
}

/// Appends `bytes` (starting at a piece's start) to `out` as frames only: frames as they are,
/// each plain line as a frame of its own (empty lines dropped). A frame cut short at the end
/// is copied as far as it goes; so is a last line without its `\n`, as a frame.
pub fn encode(mut bytes: &[u8], out: &mut Vec<u8>) {
    while !bytes.is_empty() {
        match piece(bytes) {
            Piece::Frame(n) => {
                let n = n.min(bytes.len());
                out.extend_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
            }
            Piece::Line(n) => {
                let line = &bytes[..n];
                let text = line.strip_suffix(b"\n").unwrap_or(line);
                let text = text.strip_suffix(b"\r").unwrap_or(text);
                if !text.is_empty() {
                    push_text(out, text);
                }
                bytes = &bytes[n..];
            }
        }
    }
}

/// How many of `bytes` are frames, from the start up to the first plain line: `mid` bytes
/// that finish a frame begun earlier, then whole frames (the last may run past the end).
pub fn frames_run(bytes: &[u8], mid: usize) -> usize {
    // A plain line ends with `\n`; a frame of ours has one only in a header that happens to
    // hold 10 (its JSON escapes newlines). No `\n` at all, the usual case: frames only, with no
    // walk through their headers.
    if memchr::memchr(b'\n', bytes).is_none() {
        return bytes.len();
    }
    let mut at = mid.min(bytes.len());
    while at < bytes.len() {
        match piece(&bytes[at..]) {
            Piece::Frame(n) => at = at.saturating_add(n).min(bytes.len()),
            Piece::Line(_) => break,
        }
    }
    at
}

/// After `written` bytes of `bytes` (a [`frames_run`] begun with `mid` bytes of an earlier
/// frame) went out: how many bytes of the frame under way are still to go (0 at a boundary).
pub fn left_in_frame(bytes: &[u8], mid: usize, written: usize) -> usize {
    if written < mid {
        return mid - written;
    }
    let mut at = mid;
    while at < written {
        let n = frame_len(&bytes[at..]).unwrap_or(bytes.len() - at);
        if at + n > written {
            return at + n - written;
        }
        at += n;
    }
    0
}

/// Where to cut `frames` (a run of whole frames) so that what goes first is about `want`
/// bytes: the end of the last whole frame within `want`, or of the first frame if that one is
/// longer (progress is always made).
pub fn cut(frames: &[u8], want: usize) -> usize {
    if want >= frames.len() {
        return frames.len();
    }
    let mut at = 0;
    while at < frames.len() {
        let n = frame_len(&frames[at..]).unwrap_or(frames.len() - at);
        if at > 0 && at + n > want {
            break;
        }
        at = (at + n).min(frames.len());
        if at >= want {
            break;
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames_of(mut bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let n = frame_len(bytes).unwrap();
            let payload_start = match bytes[1] {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            out.push(bytes[payload_start..n].to_vec());
            bytes = &bytes[n..];
        }
        out
    }

    #[test]
    fn headers_have_the_three_sizes_of_rfc_6455() {
        for (len, header) in [
            (0, vec![0x81, 0]),
            (125, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65535, vec![0x81, 126, 0xff, 0xff]),
            (65536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let mut out = Vec::new();
            push_header(&mut out, len);
            assert_eq!(out, header, "{len}");
            assert_eq!(header_len(len), header.len());
            let mut whole = out.clone();
            whole.resize(out.len() + len, b'x');
            assert_eq!(frame_len(&whole), Some(whole.len()));
        }
    }

    #[test]
    fn lines_become_frames_in_place_and_the_rest_stays() {
        let mut buf = b"keep{\"a\":1}\n\n{\"b\":2}\npartial".to_vec();
        frame_lines(&mut buf, 4);
        assert_eq!(&buf[..4], b"keep");
        assert!(buf.ends_with(b"partial"));
        let framed = &buf[4..buf.len() - 7];
        assert_eq!(
            frames_of(framed),
            vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]
        );
    }

    #[test]
    fn a_long_line_gets_a_long_header() {
        let line = "x".repeat(70_000);
        let mut buf = format!("{line}\n").into_bytes();
        frame_lines(&mut buf, 0);
        assert_eq!(frames_of(&buf), vec![line.into_bytes()]);
    }

    #[test]
    fn pieces_tell_frames_from_lines() {
        let mut buf = Vec::new();
        push_text(&mut buf, b"{\"x\":1}");
        buf.extend_from_slice(b"{\"y\":2}\n");
        push_text(&mut buf, &[b'a'; 10]);
        let first = piece(&buf);
        assert_eq!(first, Piece::Frame(9));
        assert_eq!(piece(&buf[9..]), Piece::Line(8));
        assert_eq!(piece(&buf[17..]), Piece::Frame(12));
        // A payload of 10 bytes has a length byte of b'\n': frames are never split on it.
        assert_eq!(cut(&buf[17..], 5), 12);
    }

    #[test]
    fn encoding_frames_plain_lines_and_keeps_frames() {
        let mut mixed = Vec::new();
        push_text(&mut mixed, b"{\"a\":1}");
        mixed.extend_from_slice(b"{\"b\":2}\r\n\n");
        push_text(&mut mixed, b"{\"c\":3}");
        let mut out = Vec::new();
        encode(&mixed, &mut out);
        assert_eq!(
            frames_of(&out),
            vec![
                b"{\"a\":1}".to_vec(),
                b"{\"b\":2}".to_vec(),
                b"{\"c\":3}".to_vec()
            ]
        );
        assert_eq!(frames_run(&mixed, 0), 9);
        assert_eq!(frames_run(&mixed[9..], 0), 0);
        assert_eq!(frames_run(&mixed[4..], 5), 5);
    }

    #[test]
    fn what_is_left_of_a_frame_after_a_short_write() {
        let mut buf = Vec::new();
        push_text(&mut buf, &[b'q'; 8]); // 10 bytes
        push_text(&mut buf, &[b'q'; 18]); // 20 bytes
        assert_eq!(left_in_frame(&buf, 0, 0), 0);
        assert_eq!(left_in_frame(&buf, 0, 4), 6);
        assert_eq!(left_in_frame(&buf, 0, 10), 0);
        assert_eq!(left_in_frame(&buf, 0, 15), 15);
        assert_eq!(left_in_frame(&buf, 0, 30), 0);
        // Begun with 3 bytes of an earlier frame.
        let mut cont = vec![b'x'; 3];
        cont.extend_from_slice(&buf);
        assert_eq!(left_in_frame(&cont, 3, 2), 1);
        assert_eq!(left_in_frame(&cont, 3, 3), 0);
        assert_eq!(left_in_frame(&cont, 3, 5), 8);
    }

    #[test]
    fn cuts_fall_between_frames() {
        let mut buf = Vec::new();
        for _ in 0..10 {
            push_text(&mut buf, &[b'z'; 98]);
        }
        assert_eq!(cut(&buf, 250), 200);
        assert_eq!(cut(&buf, 50), 100);
        assert_eq!(cut(&buf, 10_000), 1000);
        assert_eq!(cut(&buf, 300), 300);
    }
}
