//! What web requests pass before anything is served: the host they are for, and the tokens
//! `/metrics` and the admin API may require.
//!
//! **DNS rebinding.** A page on `rebind.attacker.example` can point that name at this server's
//! address once the page is loaded; the browser then treats the server as the page's own origin
//! (its requests carry `Host: rebind.attacker.example` and a matching `Origin`), so the page
//! could read the API and open a WebSocket as any visitor. Rebinding needs a DNS name, so a
//! request is served only if its `Host` is an IP address, `localhost`, the host of `--http` (or
//! of `--metrics-addr`) or a name in `--allowed-hosts`; anything else gets `421`.
//!
//! **The tokens** (`--metrics-token-file`, `--admin-token-file`): `/metrics`, and the admin
//! API under `/api/admin/`, then require `Authorization: Bearer TOKEN`, compared in constant
//! time (the admin API's check, and what counts its failures, is `super::admin::gate`).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::response::Response;

use super::api::error;
use crate::settings::WebSettings;

/// The host names the web side answers to (IP addresses are always accepted).
#[derive(Debug, Clone)]
pub struct Hosts {
    /// `*` in `--allowed-hosts`: no check.
    any: bool,
    /// Lower case, without a final dot or a port.
    names: Vec<String>,
}

/// The host names in force: a reload (SIGHUP) swaps them, and each HTTP connection takes
/// them once, when it starts.
#[derive(Debug)]
pub struct LiveHosts(std::sync::RwLock<std::sync::Arc<Hosts>>);

impl LiveHosts {
    pub fn new(hosts: Hosts) -> Self {
        LiveHosts(std::sync::RwLock::new(std::sync::Arc::new(hosts)))
    }

    pub fn get(&self) -> std::sync::Arc<Hosts> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, hosts: Hosts) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(hosts);
    }
}

/// A `Host` value, taken apart.
#[derive(Debug, PartialEq, Eq)]
enum Host {
    /// An IPv4 or IPv6 address (in brackets or, leniently, without).
    Ip,
    /// A name, in lower case, without a final dot.
    Name(String),
}

impl Hosts {
    /// The accepted names: `localhost`, the hosts of `--http` and `--metrics-addr` when they
    /// are names, and `--allowed-hosts`. An entry that is not a host (`--allowed-hosts a/b`)
    /// is an error, so a typo does not silently lock everyone out.
    pub fn new(settings: &WebSettings) -> Result<Hosts, GuardError> {
        let mut hosts = Hosts {
            any: false,
            names: vec!["localhost".to_string()],
        };
        for entry in &settings.allowed_hosts {
            let entry = entry.trim();
            if entry == "*" {
                hosts.any = true;
                continue;
            }
            match parse(entry) {
                Some(Host::Name(name)) => hosts.add(name),
                Some(Host::Ip) => {}
                None => return Err(GuardError::NotAHost(entry.to_owned())),
            }
        }
        let listens = [settings.http.as_deref(), settings.metrics_addr.as_deref()];
        for addr in listens.into_iter().flatten() {
            if let Some(Host::Name(name)) = parse(addr.trim()) {
                hosts.add(name);
            }
        }
        Ok(hosts)
    }

    fn add(&mut self, name: String) {
        if !self.names.contains(&name) {
            self.names.push(name);
        }
    }

    /// Whether `host` (a `Host` header's value, or a target's authority) names this server.
    pub fn allows(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        match parse(host.trim()) {
            Some(Host::Ip) => true,
            Some(Host::Name(name)) => self.names.contains(&name),
            None => false,
        }
    }

    /// Checks a request's host: `None` to serve it, or the answer that refuses it. A request
    /// must have exactly one non-empty `Host` (HTTP/1.0 included); with a target in absolute
    /// form (`GET http://host/path`) its authority must be allowed too.
    pub fn check<B>(&self, req: &Request<B>) -> Option<Response> {
        let mut all = req.headers().get_all(header::HOST).iter();
        let host = match (all.next(), all.next()) {
            (Some(host), None) => host.to_str().ok().map(str::trim).unwrap_or_default(),
            _ => "",
        };
        if host.is_empty() {
            return Some(error(
                StatusCode::BAD_REQUEST,
                "a request needs one Host header",
            ));
        }
        let target = req.uri().authority().map(|a| a.host());
        if !self.allows(host) || target.is_some_and(|t| !self.allows(t)) {
            return Some(error(
                StatusCode::MISDIRECTED_REQUEST,
                "this server does not answer to that host name (see --allowed-hosts)",
            ));
        }
        None
    }
}

/// Why the web side's guards cannot be set up: the start stops, naming the flag and the value.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// An entry that is not a host: refused, so a typo does not silently lock everyone out.
    #[error("--allowed-hosts: {0:?} is not a host name (or `*`)")]
    NotAHost(String),
    /// `flag` is the token file's flag (`--metrics-token-file`, `--admin-token-file`).
    #[error("{flag} {}: {source}", path.display())]
    TokenUnreadable {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{flag} {}: the file is empty (put the token on its first line)", path.display())]
    TokenEmpty { flag: &'static str, path: PathBuf },
    #[error("{flag} {}: the token must be printable ASCII without spaces", path.display())]
    TokenNotPrintable { flag: &'static str, path: PathBuf },
}

/// A bearer token a path requires: `/metrics` (`--metrics-token-file`), the admin API
/// (`--admin-token-file`).
pub struct Token(Vec<u8>);

impl Token {
    /// Reads the token of `flag`: the file's first line, without the spaces around it. A file
    /// that cannot be read, or gives no token, is an error naming the flag and the file.
    pub fn load(flag: &'static str, path: &Path) -> Result<Token, GuardError> {
        let text = std::fs::read_to_string(path).map_err(|source| GuardError::TokenUnreadable {
            flag,
            path: path.to_owned(),
            source,
        })?;
        let token = text.lines().next().unwrap_or_default().trim();
        if token.is_empty() {
            return Err(GuardError::TokenEmpty {
                flag,
                path: path.to_owned(),
            });
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(GuardError::TokenNotPrintable {
                flag,
                path: path.to_owned(),
            });
        }
        Ok(Token(token.as_bytes().to_vec()))
    }

    /// Whether a request carries `Authorization: Bearer TOKEN` (the scheme in any case).
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return false;
        };
        let value = value.as_bytes().trim_ascii();
        let Some(space) = value.iter().position(|&b| b == b' ' || b == b'\t') else {
            return false;
        };
        let (scheme, presented) = value.split_at(space);
        scheme.eq_ignore_ascii_case(b"bearer") && same(presented.trim_ascii(), &self.0)
    }
}

/// Compares a presented secret with the expected one in a time that depends only on the
/// expected one's length: every byte of it is compared (the presented bytes wrapping around)
/// and a different length counts as a difference, so the time tells nothing of where the
/// first wrong byte is, nor of the length.
fn same(presented: &[u8], expected: &[u8]) -> bool {
    if presented.is_empty() {
        return false;
    }
    let mut diff = presented.len() ^ expected.len();
    for (i, &e) in expected.iter().enumerate() {
        let p = presented
            .get(i % presented.len())
            .copied()
            .unwrap_or_default();
        diff |= usize::from(std::hint::black_box(p ^ e));
    }
    std::hint::black_box(diff) == 0
}

/// Takes a host apart: `name`, `name:port`, `1.2.3.4[:port]`, `[v6][:port]` (or a bare v6
/// address). Names are compared in lower case and without a final dot; `None` for anything
/// that is not a host.
fn parse(s: &str) -> Option<Host> {
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        ip.parse::<Ipv6Addr>().ok()?;
        return port_ok(after).then_some(Host::Ip);
    }
    if s.parse::<Ipv6Addr>().is_ok() {
        return Some(Host::Ip);
    }
    let (host, after) = match s.find(':') {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    if !port_ok(after) {
        return None;
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return Some(Host::Ip);
    }
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let valid = !name.is_empty()
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    valid.then_some(Host::Name(name))
}

/// What may follow a host: nothing, or `:` and a port (digits; empty is allowed by RFC 3986).
fn port_ok(after: &str) -> bool {
    match after.strip_prefix(':') {
        None => after.is_empty(),
        Some(port) => port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hosts of the default web settings as `change` leaves them.
    fn hosts(change: impl FnOnce(&mut WebSettings)) -> Hosts {
        let mut settings = WebSettings::default();
        change(&mut settings);
        Hosts::new(&settings).unwrap()
    }

    fn list(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn tokens_are_compared_whole() {
        let token = Token(b"s3cret".to_vec());
        let with = |auth: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, auth.parse().unwrap());
            token.admits(&headers)
        };
        assert!(with("Bearer s3cret") && with("bearer s3cret ") && with("BEARER\ts3cret"));
        for no in [
            "Bearer s3cre",
            "Bearer s3cret3",
            "Bearer s3cres",
            "Bearer",
            "Bearer ",
            "s3cret",
            "Basic s3cret",
            "Bearer S3CRET",
        ] {
            assert!(!with(no), "{no:?}");
        }
        assert!(!token.admits(&HeaderMap::new()));
        assert!(same(b"x", b"x") && !same(b"xx", b"x") && !same(b"x", b"xx") && !same(b"", b""));
    }

    #[test]
    fn hosts_are_taken_apart() {
        assert_eq!(parse("127.0.0.1"), Some(Host::Ip));
        assert_eq!(parse("127.0.0.1:8080"), Some(Host::Ip));
        assert_eq!(parse("[::1]"), Some(Host::Ip));
        assert_eq!(parse("[::1]:80"), Some(Host::Ip));
        assert_eq!(parse("::1"), Some(Host::Ip));
        assert_eq!(parse("[fe80::1%25eth0]"), None);
        assert_eq!(
            parse("Chat.Example.ORG.:443"),
            Some(Host::Name("chat.example.org".into()))
        );
        assert_eq!(parse("localhost:"), Some(Host::Name("localhost".into())));
        for bad in [
            "",
            ".",
            "a..b",
            ".a",
            "a b",
            "a/b",
            "a:b",
            "a:1:2",
            "[::1",
            "[::1]x",
            "a:123456",
            "é.example",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        // Not an IPv4 literal as a browser writes one, so a name (and refused as such).
        assert_eq!(parse("127.1"), Some(Host::Name("127.1".into())));
    }

    #[test]
    fn the_default_accepts_addresses_localhost_and_the_http_host() {
        let h = hosts(|s| s.http = Some("chat.internal:8080".into()));
        for ok in [
            "10.0.0.1",
            "[::1]:1",
            "localhost",
            "LOCALHOST.:8080",
            "chat.internal",
            "Chat.Internal:1",
        ] {
            assert!(h.allows(ok), "{ok}");
        }
        for no in [
            "rebind.attacker.example",
            "localhost.attacker.example",
            "sub.chat.internal",
            "",
        ] {
            assert!(!h.allows(no), "{no}");
        }
        let h = hosts(|s| {
            s.allowed_hosts = list(&["a.example", " B.example.:9"]);
            s.metrics_addr = Some("metrics.internal:9090".into());
        });
        for ok in ["a.example", "b.example", "metrics.internal", "localhost"] {
            assert!(h.allows(ok), "{ok}");
        }
        assert!(!h.allows("chat.internal"));
        assert!(hosts(|s| s.allowed_hosts = list(&["*"])).allows("anything.example"));
        let settings = WebSettings {
            allowed_hosts: list(&["a/b"]),
            ..WebSettings::default()
        };
        assert!(Hosts::new(&settings)
            .unwrap_err()
            .to_string()
            .contains("a/b"));
    }
}
