//! Addresses and networks for bans (`203.0.113.7`, `203.0.113.0/24`, `2001:db8::/32`), and
//! how long a ban or mute lasts (`30m`, `2h`, `7d`). Small enough to write here: a crate for
//! either would be larger than the code.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// An address with a prefix length; a bare address is a network of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    /// Whether `ip` is in the network. An IPv4 address seen as IPv6 (`::ffff:1.2.3.4`, a
    /// dual-stack socket's view) is the IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s} is not an address or a network (ADDRESS or ADDRESS/BITS)");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(bad()),
            },
        };
        // Kept in its canonical form (host bits cleared), so one network has one spelling.
        let canonical = Net { addr, prefix };
        Ok(Net {
            addr: canonical.network(),
            prefix,
        })
    }
}

impl Net {
    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == max {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

impl Serialize for Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The longest ban or mute with a duration: a year (longer is "until lifted").
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);

/// `90s`, `30m`, `2h`, `7d`, `2w`: a positive whole number and a unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s} is not a duration (like 30s, 10m, 2h, 7d, 2w)");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    let d = Duration::from_secs(n.checked_mul(secs).ok_or_else(bad)?);
    if d.is_zero() || d > MAX_DURATION {
        return Err(format!("{s}: a duration is from 1s to 366d"));
    }
    Ok(d)
}

/// Whether a word looks like a duration (so `/ban Bob 10m spam` and `/ban Bob spam` both read).
pub fn looks_like_duration(s: &str) -> bool {
    let digits = s.chars().take_while(|c| c.is_ascii_digit()).count();
    digits > 0 && digits + 1 == s.len() && s.ends_with(['s', 'm', 'h', 'd', 'w'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Net {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn networks_contain_their_addresses() {
        let v4 = net("10.1.2.3/8");
        assert_eq!(v4.to_string(), "10.0.0.0/8");
        assert!(v4.contains("10.200.0.1".parse().unwrap_or_else(|_| unreachable!())));
        assert!(!v4.contains("11.0.0.1".parse().unwrap_or_else(|_| unreachable!())));
        assert!(v4.contains("::ffff:10.9.9.9".parse().unwrap_or_else(|_| unreachable!())));
        let one = net("192.0.2.1");
        assert_eq!(one.to_string(), "192.0.2.1");
        assert!(!one.contains("192.0.2.2".parse().unwrap_or_else(|_| unreachable!())));
        let v6 = net("2001:db8::/32");
        assert!(v6.contains("2001:db8:1::1".parse().unwrap_or_else(|_| unreachable!())));
        assert!(net("0.0.0.0/0").contains("8.8.8.8".parse().unwrap_or_else(|_| unreachable!())));
    }

    #[test]
    fn bad_networks_are_refused() {
        for bad in [
            "",
            "bob",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "::/129",
            "1.2.3/8",
            "10.0.0.0/+8",
        ] {
            assert!(bad.parse::<Net>().is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_read_with_their_unit() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1w"), Ok(Duration::from_secs(604_800)));
        for bad in [
            "",
            "0m",
            "10",
            "m",
            "10x",
            "-5m",
            "99999999999999999999d",
            "400d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(
            looks_like_duration("10m") && !looks_like_duration("spam") && !looks_like_duration("m")
        );
    }
}
