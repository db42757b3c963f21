//! Behind a reverse proxy: which peers are trusted to say whose connection they carry
//! (`--trusted-proxies`), and how they say it: `Forwarded` / `X-Forwarded-For` on the web side
//! ([`forwarded`]), a PROXY protocol header on the chat and TLS ports ([`header`]).
//!
//! Everything per address (connection limits, failed logins, bans, log lines) keys on the
//! client's address; behind a proxy the TCP peer is the proxy, and one person's mistakes would
//! hold back everyone. Only a trusted peer's word is taken: from anyone else these headers are
//! what any client can type, and are ignored.

pub(crate) mod forwarded;
pub(crate) mod header;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;

/// One `--trusted-proxies` entry: a network (`10.0.0.0/8`, `fd00::/8`) or a bare address (a
/// network of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedNet(IpNet);

impl FromStr for TrustedNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let net = match s.parse::<IpNet>() {
            Ok(net) => net.trunc(),
            Err(_) => match s.parse::<IpAddr>() {
                Ok(addr) => IpNet::from(addr),
                Err(_) => {
                    return Err(format!(
                        "{s:?} is not an address or a network (ADDRESS or ADDRESS/BITS)"
                    ))
                }
            },
        };
        Ok(TrustedNet(net))
    }
}

impl fmt::Display for TrustedNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The trusted proxies; empty (the default) trusts nobody, and every peer is the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trusted(Vec<TrustedNet>);

impl Trusted {
    pub fn new(nets: Vec<TrustedNet>) -> Trusted {
        Trusted(nets)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is a trusted proxy. An IPv4 address seen as IPv6 (`::ffff:10.0.0.1`, a
    /// dual-stack socket's view) is the IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.0.contains(&ip))
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is, so one client has one address in
/// every per-address count.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `addr` with its IP in [`canonical`] form.
pub(crate) fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(addr.ip()), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(list: &[&str]) -> Trusted {
        Trusted::new(
            list.iter()
                .map(|s| s.parse().unwrap_or_else(|e| panic!("{e}")))
                .collect(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    #[test]
    fn networks_and_bare_addresses_are_trusted() {
        let t = trusted(&["10.1.2.3/8", "192.0.2.7", "2001:db8::/32", "::1"]);
        assert!(t.contains(ip("10.200.0.1")));
        assert!(t.contains(ip("::ffff:10.9.9.9")));
        assert!(t.contains(ip("192.0.2.7")));
        assert!(!t.contains(ip("192.0.2.8")));
        assert!(t.contains(ip("2001:db8:1::1")));
        assert!(t.contains(ip("::1")));
        assert!(!t.contains(ip("::2")));
        assert!(!t.contains(ip("11.0.0.1")));
        assert!(!Trusted::default().contains(ip("127.0.0.1")));
    }

    #[test]
    fn bad_entries_are_refused_by_name() {
        for bad in [
            "",
            "bob",
            "10.0.0.0/33",
            "10.0.0.0/",
            "::/129",
            "1.2.3/8",
            "10.0.0.0/x",
        ] {
            let e = bad.parse::<TrustedNet>().err();
            assert!(
                e.as_deref().is_some_and(|e| e.contains(bad)),
                "{bad}: {e:?}"
            );
        }
        assert_eq!(
            " 10.1.0.0/16 ".parse::<TrustedNet>().map(|n| n.to_string()),
            Ok("10.1.0.0/16".into())
        );
    }
}
