//! The web side's client address behind trusted proxies: `Forwarded` (RFC 7239) if the
//! request has it, else `X-Forwarded-For`.
//!
//! Each proxy appends the address it got the request from, so the list reads left (the
//! client's own claim, anything it liked) to right (what our trusted proxy saw). Walking from
//! the right, the first hop that is not itself a trusted proxy is the client: everything to
//! its left was written by that client and proves nothing. A list we cannot read all the way
//! to that hop (garbage, `unknown`, an obfuscated `_name`, too long) gives the peer's address
//! instead: lumping such requests together with the proxy's is safe, trusting them is not.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::http::header::{HeaderMap, HeaderName, FORWARDED};
use tracing::debug;

use super::{canonical_addr, Trusted};

/// The most header bytes read (all lines of the header together): a real chain of proxies
/// is a few dozen bytes a hop.
pub(crate) const MAX_BYTES: usize = 8 * 1024;
/// The most hops considered.
pub(crate) const MAX_HOPS: usize = 64;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Which header a list came from: they spell a hop differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Forwarded,
    XForwardedFor,
}

/// The client's address for a request that came from `peer`: the peer itself unless it is a
/// trusted proxy and the request says (readably) whom it forwards for.
pub(crate) fn client_addr(trusted: &Trusted, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
    if !trusted.contains(peer.ip()) {
        return peer;
    }
    for (name, kind) in [
        (&FORWARDED, Kind::Forwarded),
        (&X_FORWARDED_FOR, Kind::XForwardedFor),
    ] {
        let mut lines = headers.get_all(name).iter().peekable();
        if lines.peek().is_none() {
            continue;
        }
        let lines: Vec<&[u8]> = lines.map(|v| v.as_bytes()).collect();
        return match from_lines(trusted, kind, &lines) {
            Ok(Some(addr)) => addr,
            Ok(None) => peer,
            Err(why) => {
                debug!(%peer, header = %name, why, "forwarded address not understood: the proxy's address is used");
                peer
            }
        };
    }
    peer
}

/// The client's address from every line of one header, in order (several lines of a header
/// are one list). `Ok(None)` for a list with no hops.
pub(crate) fn from_lines(
    trusted: &Trusted,
    kind: Kind,
    lines: &[&[u8]],
) -> Result<Option<SocketAddr>, &'static str> {
    let total: usize = lines.iter().map(|l| l.len() + 1).sum();
    if total > MAX_BYTES {
        return Err("too long");
    }
    let mut hops: Vec<&str> = Vec::new();
    for line in lines {
        let line = std::str::from_utf8(line).map_err(|_| "not text")?;
        for hop in split_list(line, kind)? {
            let hop = hop.trim_matches([' ', '\t']);
            if hop.is_empty() {
                continue;
            }
            if hops.len() == MAX_HOPS {
                return Err("too many hops");
            }
            hops.push(hop);
        }
    }
    let Some(leftmost) = hops.first() else {
        return Ok(None);
    };
    for hop in hops.iter().rev() {
        let addr = node(kind, hop).ok_or("a hop is not an address")?;
        if !trusted.contains(addr.ip()) {
            return Ok(Some(addr));
        }
    }
    // Every hop is a trusted proxy: the leftmost is as far as anyone can tell.
    Ok(node(kind, leftmost))
}

/// The elements of a comma-separated list; a `Forwarded` element's quoted strings may hold
/// commas (and escaped quotes).
fn split_list(line: &str, kind: Kind) -> Result<Vec<&str>, &'static str> {
    if kind == Kind::XForwardedFor {
        return Ok(line.split(',').collect());
    }
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, b) in line.bytes().enumerate() {
        match (quoted, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (_, _, b'"') => quoted = !quoted,
            (false, _, b',') => {
                parts.push(&line[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err("an unclosed quote");
    }
    parts.push(&line[start..]);
    Ok(parts)
}

/// One hop's address: `for=` of a `Forwarded` element, or an `X-Forwarded-For` entry.
fn node(kind: Kind, hop: &str) -> Option<SocketAddr> {
    match kind {
        Kind::XForwardedFor => address(hop),
        Kind::Forwarded => {
            let value = hop.split(';').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| value.trim())
            })?;
            match value.strip_prefix('"') {
                Some(quoted) => address(&unquote(quoted.strip_suffix('"')?)),
                None => address(value),
            }
        }
    }
}

/// A quoted string's content without its backslash escapes.
fn unquote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// `192.0.2.7`, `192.0.2.7:4711`, `2001:db8::7`, `[2001:db8::7]` or `[2001:db8::7]:4711`
/// (port 0 when none is given or it is obfuscated, `_x`). `unknown` and obfuscated names are
/// not addresses.
fn address(s: &str) -> Option<SocketAddr> {
    let port = |p: &str| -> Option<u16> {
        if p.starts_with('_') {
            return Some(0);
        }
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok()
    };
    let addr = if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = ip.parse().ok()?;
        let port = match after {
            "" => 0,
            after => port(after.strip_prefix(':')?)?,
        };
        SocketAddr::new(IpAddr::V6(ip), port)
    } else if let Ok(ip) = s.parse::<IpAddr>() {
        SocketAddr::new(ip, 0)
    } else {
        let (ip, p) = s.rsplit_once(':')?;
        SocketAddr::new(IpAddr::V4(ip.parse::<Ipv4Addr>().ok()?), port(p)?)
    };
    Some(canonical_addr(addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn trusted(list: &[&str]) -> Trusted {
        Trusted::new(
            list.iter()
                .map(|s| s.parse().unwrap_or_else(|e| panic!("{e}")))
                .collect(),
        )
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    fn xff(t: &Trusted, lines: &[&str]) -> Result<Option<SocketAddr>, &'static str> {
        let lines: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        from_lines(t, Kind::XForwardedFor, &lines)
    }

    fn fwd(t: &Trusted, lines: &[&str]) -> Result<Option<SocketAddr>, &'static str> {
        let lines: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        from_lines(t, Kind::Forwarded, &lines)
    }

    #[test]
    fn x_forwarded_for_takes_the_rightmost_untrusted_hop() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(xff(&t, &["203.0.113.7"]), Ok(Some(addr("203.0.113.7:0"))));
        // The client claimed 1.2.3.4; our proxies 10.0.0.2 and 10.0.0.1 saw 203.0.113.7.
        assert_eq!(
            xff(&t, &["1.2.3.4, 203.0.113.7, 10.0.0.2"]),
            Ok(Some(addr("203.0.113.7:0")))
        );
        // Several lines are one list, in order.
        assert_eq!(
            xff(&t, &["1.2.3.4", "203.0.113.7,10.0.0.2"]),
            Ok(Some(addr("203.0.113.7:0")))
        );
        // Every hop a trusted proxy: the leftmost.
        assert_eq!(
            xff(&t, &["10.9.9.9, 10.0.0.2"]),
            Ok(Some(addr("10.9.9.9:0")))
        );
        assert_eq!(
            xff(&t, &["203.0.113.7:4711"]),
            Ok(Some(addr("203.0.113.7:4711")))
        );
        assert_eq!(xff(&t, &["2001:db8::7"]), Ok(Some(addr("[2001:db8::7]:0"))));
        assert_eq!(
            xff(&t, &["[2001:db8::7]:80"]),
            Ok(Some(addr("[2001:db8::7]:80")))
        );
        assert_eq!(
            xff(&t, &["::ffff:203.0.113.7"]),
            Ok(Some(addr("203.0.113.7:0")))
        );
        assert_eq!(xff(&t, &[""]), Ok(None));
    }

    #[test]
    fn garbage_to_the_left_of_the_client_is_never_read() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            xff(&t, &["nonsense, unknown, 203.0.113.7, 10.0.0.1"]),
            Ok(Some(addr("203.0.113.7:0")))
        );
    }

    #[test]
    fn unreadable_hops_give_no_address() {
        let t = trusted(&["10.0.0.0/8"]);
        for bad in [
            "unknown",
            "garbage",
            "203.0.113.7, unknown",
            "_hidden",
            "1.2.3.4:99999",
            "1.2.3.4:",
            "[::1",
            "[::1]x",
            "10.0.0.1, 999.1.1.1",
        ] {
            assert!(xff(&t, &[bad]).is_err(), "{bad}");
        }
        let long = "1.1.1.1,".repeat(MAX_BYTES / 8 + 1);
        assert_eq!(xff(&t, &[&long]), Err("too long"));
        let many = "10.0.0.1,".repeat(MAX_HOPS + 1);
        assert_eq!(xff(&t, &[&many]), Err("too many hops"));
        assert_eq!(
            from_lines(&t, Kind::XForwardedFor, &[b"\xff\xfe"]),
            Err("not text")
        );
    }

    #[test]
    fn forwarded_reads_for_in_every_spelling() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            fwd(&t, &["for=192.0.2.60;proto=http;by=203.0.113.43"]),
            Ok(Some(addr("192.0.2.60:0")))
        );
        assert_eq!(
            fwd(&t, &[r#"For="[2001:db8:cafe::17]:4711""#]),
            Ok(Some(addr("[2001:db8:cafe::17]:4711")))
        );
        assert_eq!(
            fwd(&t, &[r#"for="[2001:db8:cafe::17]""#]),
            Ok(Some(addr("[2001:db8:cafe::17]:0")))
        );
        assert_eq!(
            fwd(&t, &[r#"for="192.0.2.43:47011""#]),
            Ok(Some(addr("192.0.2.43:47011")))
        );
        // A comma in a quoted string does not cut the element.
        assert_eq!(
            fwd(
                &t,
                &[r#"for=198.51.100.17;by="a,b", for=192.0.2.60, for=10.0.0.1"#]
            ),
            Ok(Some(addr("192.0.2.60:0")))
        );
        assert_eq!(
            fwd(&t, &["for=198.51.100.17", "for=10.0.0.1;proto=https"]),
            Ok(Some(addr("198.51.100.17:0")))
        );
    }

    #[test]
    fn unreadable_forwarded_gives_no_address() {
        let t = trusted(&["10.0.0.0/8"]);
        for bad in [
            "for=unknown",
            "for=_hidden",
            "by=10.0.0.1",
            r#"for="[2001:db8::1]:80"#,
            "for=[2001:db8::1]x",
            "for=192.0.2.60, for=\"unclosed",
        ] {
            assert!(fwd(&t, &[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_untrusted_peer_is_its_own_client() {
        let t = trusted(&["10.0.0.0/8"]);
        let mut headers = HeaderMap::new();
        headers.insert(
            &X_FORWARDED_FOR,
            axum::http::HeaderValue::from_static("203.0.113.7"),
        );
        let stranger = addr("192.0.2.1:5000");
        assert_eq!(client_addr(&t, stranger, &headers), stranger);
        let proxy = addr("10.0.0.1:5000");
        assert_eq!(client_addr(&t, proxy, &headers), addr("203.0.113.7:0"));
        // Forwarded comes first, and a bad one is not made up for by X-Forwarded-For.
        headers.insert(
            &FORWARDED,
            axum::http::HeaderValue::from_static("for=unknown"),
        );
        assert_eq!(client_addr(&t, proxy, &headers), proxy);
    }

    proptest! {
        #[test]
        fn no_bytes_make_it_panic(
            lines in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..4),
            forwarded in any::<bool>(),
        ) {
            let t = trusted(&["10.0.0.0/8", "::1"]);
            let kind = if forwarded { Kind::Forwarded } else { Kind::XForwardedFor };
            let lines: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
            let _ = from_lines(&t, kind, &lines);
        }

        #[test]
        fn no_text_makes_it_panic(line in "[0-9a-fA-F:\\[\\]\\., ;=\"_\\\\forFOR]{0,120}") {
            let t = trusted(&["10.0.0.0/8"]);
            let _ = from_lines(&t, Kind::Forwarded, &[line.as_bytes()]);
            let _ = from_lines(&t, Kind::XForwardedFor, &[line.as_bytes()]);
        }
    }
}
