//! The PROXY protocol header (HAProxy's, versions 1 and 2) that a trusted proxy sends first on
//! a chat or TLS connection, naming the client it carries (`--proxy-protocol`).
//!
//! Exactly the header's bytes are read, never one more: what follows is the client's chat
//! handshake or TLS ClientHello, and goes to it untouched. Version 1 is a text line of at
//! most 107 bytes; its end is found by peeking and then taking only up to the line feed.
//! Version 2 says its length in its first 16 bytes; longer than [`MAX_V2`] is refused, so
//! a header costs at most that much memory. Parsing is `ppp`'s.

use std::io;
use std::net::SocketAddr;

use ppp::{v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::canonical_addr;

/// The longest version-1 header, its CRLF included (the protocol's own bound).
pub(crate) const MAX_V1: usize = 107;
/// The fixed part of a version-2 header: signature, version and command, family, length.
const V2_FIXED: usize = 16;
/// The longest version-2 header read: the largest addresses (two UNIX paths, 216 bytes) and
/// room for the extensions (TLVs) HAProxy may add.
pub(crate) const MAX_V2: usize = V2_FIXED + 2048;

/// Why a header was not accepted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BadHeader {
    #[error("closed before the PROXY header ended")]
    Closed,
    #[error("no PROXY header (the connection started with something else)")]
    Missing,
    #[error("PROXY header longer than {0} bytes")]
    TooLong(usize),
    #[error("PROXY header not understood: {0}")]
    Invalid(String),
    #[error("i/o error reading the PROXY header: {0}")]
    Io(#[from] io::Error),
}

/// Reads one header from `stream`: the client's address, or `None` where the header names
/// none (a version-2 LOCAL command, as health checks send; `UNKNOWN`; a UNIX or unspecified
/// family): the peer is then its own client.
pub(crate) async fn read(stream: &mut TcpStream) -> Result<Option<SocketAddr>, BadHeader> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Err(BadHeader::Closed);
    }
    match first[0] {
        b'P' => read_v1(stream).await,
        b'\r' => read_v2(stream).await,
        _ => Err(BadHeader::Missing),
    }
}

/// Version 1: `PROXY TCP4 192.0.2.7 198.51.100.1 4711 8989\r\n`.
async fn read_v1(stream: &mut TcpStream) -> Result<Option<SocketAddr>, BadHeader> {
    let mut line = Vec::with_capacity(MAX_V1);
    let mut peeked = [0u8; MAX_V1];
    loop {
        let room = MAX_V1 - line.len();
        if room == 0 {
            return Err(BadHeader::TooLong(MAX_V1));
        }
        let n = stream.peek(&mut peeked[..room]).await?;
        if n == 0 {
            return Err(BadHeader::Closed);
        }
        // Up to the line feed if it came, else all that came (all of it is header): the
        // next peek then waits for more instead of seeing the same bytes again.
        let take = memchr::memchr(b'\n', &peeked[..n]).map_or(n, |at| at + 1);
        stream.read_exact(&mut peeked[..take]).await?;
        line.extend_from_slice(&peeked[..take]);
        if line.ends_with(b"\n") {
            return parse_v1(&line);
        }
    }
}

/// Version 2: a 12-byte signature, then version, command, family and length, then the
/// addresses (and extensions, skipped).
async fn read_v2(stream: &mut TcpStream) -> Result<Option<SocketAddr>, BadHeader> {
    let mut header = vec![0u8; V2_FIXED];
    read_all(stream, &mut header).await?;
    let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
    if V2_FIXED + length > MAX_V2 {
        return Err(BadHeader::TooLong(MAX_V2));
    }
    header.resize(V2_FIXED + length, 0);
    read_all(stream, &mut header[V2_FIXED..]).await?;
    parse_v2(&header)
}

async fn read_all(stream: &mut TcpStream, buf: &mut [u8]) -> Result<(), BadHeader> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(BadHeader::Closed),
        Err(e) => Err(e.into()),
    }
}

/// A whole version-1 line, CRLF included.
pub(crate) fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, BadHeader> {
    let header = v1::Header::try_from(line).map_err(|e| BadHeader::Invalid(e.to_string()))?;
    Ok(match header.addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v1::Addresses::Unknown => None,
    }
    .map(canonical_addr))
}

/// A whole version-2 header.
pub(crate) fn parse_v2(bytes: &[u8]) -> Result<Option<SocketAddr>, BadHeader> {
    let header = v2::Header::try_from(bytes).map_err(|e| BadHeader::Invalid(e.to_string()))?;
    if header.as_bytes().len() != bytes.len() {
        return Err(BadHeader::Invalid("its length is not its bytes'".into()));
    }
    if header.command == v2::Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        v2::Addresses::IPv4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v2::Addresses::IPv6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v2::Addresses::Unix(_) | v2::Addresses::Unspecified => None,
    }
    .map(canonical_addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap_or_else(|_| panic!("{s}")))
    }

    /// A version-2 header: command (0 LOCAL, 1 PROXY), family and protocol, address bytes.
    pub(crate) fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        h.extend_from_slice(addresses);
        h
    }

    #[test]
    fn version_1_names_the_client() {
        let ok = |s: &str| parse_v1(s.as_bytes()).ok().flatten();
        assert_eq!(
            ok("PROXY TCP4 192.0.2.7 198.51.100.1 4711 8989\r\n"),
            addr("192.0.2.7:4711")
        );
        assert_eq!(
            ok("PROXY TCP6 2001:db8::7 2001:db8::1 4711 8989\r\n"),
            addr("[2001:db8::7]:4711")
        );
        assert!(matches!(parse_v1(b"PROXY UNKNOWN\r\n"), Ok(None)));
        for bad in [
            "PROXY TCP4 192.0.2.7\r\n",
            "PROXY TCP4 nope 198.51.100.1 4711 8989\r\n",
            "PROXY TCP9 192.0.2.7 198.51.100.1 4711 8989\r\n",
            "HELLO\r\n",
            "PROXY TCP4 192.0.2.7 198.51.100.1 4711 8989\n",
        ] {
            assert!(parse_v1(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn version_2_names_the_client_unless_local() {
        let v4 = [192, 0, 2, 7, 198, 51, 100, 1, 0x12, 0x67, 0x23, 0x1d];
        assert_eq!(
            parse_v2(&v2(1, 0x11, &v4)).ok().flatten(),
            addr("192.0.2.7:4711")
        );
        let mut v6 = Vec::new();
        v6.extend_from_slice(
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap_or_else(|_| unreachable!())
                .octets(),
        );
        v6.extend_from_slice(&[0; 16]);
        v6.extend_from_slice(&[0x12, 0x67, 0x23, 0x1d]);
        assert_eq!(
            parse_v2(&v2(1, 0x21, &v6)).ok().flatten(),
            addr("[2001:db8::7]:4711")
        );
        // LOCAL (a health check), and the unspecified family: the peer's own address.
        assert!(matches!(parse_v2(&v2(0, 0x11, &v4)), Ok(None)));
        assert!(matches!(parse_v2(&v2(1, 0x00, &[])), Ok(None)));
        // Extensions after the addresses are skipped.
        let mut tlv = v4.to_vec();
        tlv.extend_from_slice(&[0x04, 0, 1, 42]);
        assert_eq!(
            parse_v2(&v2(1, 0x11, &tlv)).ok().flatten(),
            addr("192.0.2.7:4711")
        );
        // Too short for its family, a bad command, a bad version.
        assert!(parse_v2(&v2(1, 0x11, &v4[..8])).is_err());
        assert!(parse_v2(&v2(7, 0x11, &v4)).is_err());
        let mut old = v2(1, 0x11, &v4);
        old[12] = 0x11;
        assert!(parse_v2(&old).is_err());
    }

    proptest! {
        #[test]
        fn no_bytes_make_a_parser_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_v1(&bytes);
            let _ = parse_v2(&bytes);
            let mut signed = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
            signed.extend_from_slice(&bytes);
            let _ = parse_v2(&signed);
            let mut line = b"PROXY ".to_vec();
            line.extend_from_slice(&bytes);
            let _ = parse_v1(&line);
        }
    }
}
