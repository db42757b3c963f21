//! Telling a browser (or curl) on the chat port from a chat client, so it can be answered in
//! HTTP with where the web page is, instead of an error line it would show as garbage.
//!
//! A chat client's first byte starts a JSON value; an HTTP request starts with a method in
//! capitals. The verdict depends only on the bytes seen so far and whether more may come, so
//! however the bytes are split over reads the outcome is the same (the handshake decoder's
//! rule). Nothing the client sent is shown back except a Host name that passed [`clean_host`].

/// The methods a request line may start with (RFC 9110's, and PATCH).
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
];

/// What the first bytes of a connection are, as far as they tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniff {
    /// They may still become an HTTP request head: wait for more.
    Undecided,
    /// Not an HTTP/1 request.
    NotHttp,
    /// An HTTP/1 request line, and its headers as far as they came.
    Http(HttpHead),
}

/// What the answer to an HTTP request on the chat port needs from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpHead {
    /// `HEAD`: the answer has no body.
    pub head: bool,
    /// The Host header's host (without its port), when it is a plain host name or address.
    pub host: Option<String>,
}

/// Judges `buf`, the first bytes of a connection. `more` is false when no more bytes will be
/// read (the handshake limit is reached): what has not shown itself to be HTTP by then is not,
/// and a request line whose headers are cut short is answered with the headers so far.
pub fn sniff(buf: &[u8], more: bool) -> Sniff {
    let Some(method) = METHODS.iter().find(|m| buf.starts_with(m)) else {
        let may_become = METHODS.iter().any(|m| m.starts_with(buf));
        return match may_become && more {
            true => Sniff::Undecided,
            false => Sniff::NotHttp,
        };
    };
    let target = &buf[method.len()..];
    match target.first() {
        None if more => return Sniff::Undecided,
        Some(b'/') => {}
        _ => return Sniff::NotHttp,
    }
    let Some(line_end) = memchr::memchr(b'\n', buf) else {
        return match more {
            true => Sniff::Undecided,
            false => Sniff::NotHttp,
        };
    };
    let line = trim_cr(&buf[..line_end]);
    let http1 = line.len() >= 10 && {
        let (start, version) = line.split_at(line.len() - 9);
        start.len() > method.len()
            && version.starts_with(b" HTTP/1.")
            && version[8].is_ascii_digit()
    };
    if !http1 {
        return Sniff::NotHttp;
    }
    let headers = &buf[line_end + 1..];
    let end = find_blank_line(headers);
    if end.is_none() && more {
        return Sniff::Undecided;
    }
    let headers = &headers[..end.unwrap_or(headers.len())];
    Sniff::Http(HttpHead {
        head: *method == b"HEAD ",
        host: host_header(headers),
    })
}

/// Where the header block ends (just after its last line's `\n`), if it has.
fn find_blank_line(headers: &[u8]) -> Option<usize> {
    if headers.starts_with(b"\n") || headers.starts_with(b"\r\n") {
        return Some(0);
    }
    let crlf = memchr::memmem::find(headers, b"\r\n\r\n").map(|a| a + 2);
    let lf = memchr::memmem::find(headers, b"\n\n").map(|b| b + 1);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The host of the first complete `Host:` header line, if it is clean.
fn host_header(headers: &[u8]) -> Option<String> {
    // Only complete lines: a line cut by the limit may be a host cut short.
    let complete = &headers[..headers
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1)];
    complete.split(|&b| b == b'\n').find_map(|line| {
        let line = trim_cr(line);
        let colon = line.iter().position(|&b| b == b':')?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if !name.eq_ignore_ascii_case(b"host") {
            return None;
        }
        clean_host(std::str::from_utf8(value).ok()?.trim_matches([' ', '\t']))
    })
}

/// The host part of a Host header value (`name`, `name:port`, `[v6]`, `[v6]:port`), when it is a
/// DNS name or an address: letters, digits, `.` and `-` (and `:` inside brackets), at most 253
/// bytes. Anything else is not shown back to the browser.
pub fn clean_host(value: &str) -> Option<String> {
    let host = match value.strip_prefix('[') {
        Some(rest) => {
            let (inside, after) = rest.split_once(']')?;
            let port_ok = after.is_empty()
                || after
                    .strip_prefix(':')
                    .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            let v6 = !inside.is_empty()
                && inside
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            return (port_ok && v6 && inside.len() <= 64).then(|| format!("[{inside}]"));
        }
        None => match value.split_once(':') {
            Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                host
            }
            Some(_) => return None,
            None => value,
        },
    };
    let clean = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    clean.then(|| host.to_owned())
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The whole HTTP answer: `400 Bad Request` (this port serves no pages; a browser shows the
/// text of any status), plain text, closed after. A `HEAD` gets the head alone.
pub fn http_answer(head: &HttpHead, body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head.head {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(host: Option<&str>) -> Sniff {
        Sniff::Http(HttpHead {
            head: false,
            host: host.map(str::to_owned),
        })
    }

    #[test]
    fn a_browser_request_is_http_with_its_host() {
        let req = b"GET / HTTP/1.1\r\nHost: chat.example.com:8989\r\nAccept: */*\r\n\r\n";
        assert_eq!(sniff(req, true), http(Some("chat.example.com")));
        let curl = b"HEAD /x?y HTTP/1.0\nhost: [::1]:8989\n\n";
        assert_eq!(
            sniff(curl, true),
            Sniff::Http(HttpHead {
                head: true,
                host: Some("[::1]".into())
            })
        );
        assert_eq!(sniff(b"POST / HTTP/1.1\r\n\r\n", true), http(None));
    }

    #[test]
    fn it_waits_only_while_the_bytes_may_still_be_a_request() {
        let req = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        for cut in 0..req.len() {
            assert_eq!(sniff(&req[..cut], true), Sniff::Undecided, "{cut}");
        }
        for not in [
            &b"hello\n"[..],
            b"Hi",
            b"GETX",
            b"GET x",
            b"get / HTTP/1.1\r\n",
            b"GET / HTTP/2.0\r\n",
            b"GET /\r\n",
            b"GET / HTTP/1.x\r\n",
            b"GET  HTTP/1.1\r\n",
        ] {
            assert_eq!(sniff(not, true), Sniff::NotHttp, "{not:?}");
        }
        // At the limit: what is not HTTP yet never will be; a cut head is answered as it is.
        assert_eq!(sniff(b"GET /aaaa", false), Sniff::NotHttp);
        assert_eq!(sniff(b"GE", false), Sniff::NotHttp);
        assert_eq!(
            sniff(b"GET / HTTP/1.1\r\nHost: a.b\r\nX: 1", false),
            http(Some("a.b"))
        );
        assert_eq!(sniff(b"GET / HTTP/1.1\r\nHost: a.b", false), http(None));
    }

    #[test]
    fn only_a_clean_host_is_shown_back() {
        for (value, want) in [
            ("example.com", Some("example.com")),
            ("127.0.0.1:8989", Some("127.0.0.1")),
            ("[2001:db8::1]:80", Some("[2001:db8::1]")),
            ("", None),
            ("evil.com/<script>", None),
            ("a b", None),
            ("a:b", None),
            ("[::1", None),
            ("[::1]x", None),
            ("[<x>]", None),
            ("é.com", None),
        ] {
            assert_eq!(clean_host(value).as_deref(), want, "{value:?}");
        }
        assert_eq!(clean_host(&"a".repeat(254)), None);
        let req = b"GET / HTTP/1.1\r\nHost: <b>hi</b>\r\n\r\n";
        assert_eq!(sniff(req, true), http(None));
    }

    #[test]
    fn the_answer_is_plain_text_and_closes() {
        let head = HttpHead {
            head: false,
            host: None,
        };
        let answer = String::from_utf8(http_answer(&head, "hé\n")).unwrap();
        assert_eq!(
            answer,
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 4\r\nConnection: close\r\n\r\nhé\n"
        );
        let head = HttpHead { head: true, ..head };
        assert!(String::from_utf8(http_answer(&head, "hé\n"))
            .unwrap()
            .ends_with("Content-Length: 4\r\nConnection: close\r\n\r\n"));
    }
}
