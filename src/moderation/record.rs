//! What is kept about a room between its members' visits: its roles, topic, bans, mutes,
//! invitations, modes and moderation log. One record per room, and one for the server (its
//! bans and log), kept whole: a record is small, changes rarely, and read-change-write on the
//! whole of it is what both stores (SQLite, a NATS key-value bucket) do atomically.

use std::collections::VecDeque;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::net::Net;
use crate::protocol::{name_key, NameKey, Timestamp};

/// Most log entries a record keeps (the oldest go first); the server's log has every one.
pub const MAX_LOG: usize = 500;
/// Most bans, mutes, invitations or roles of each kind a record holds: a bound on what one
/// operator can make every node keep and send around.
pub const MAX_ENTRIES: usize = 1000;

/// Who a ban or mute is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A name: every name with the same key (case, look-alikes) is the same target.
    Name(String),
    /// An address or a network, whatever name comes from it.
    Net(Net),
}

impl Target {
    /// `Bob`, `203.0.113.7`, `2001:db8::/32`.
    pub fn shown(&self) -> String {
        match self {
            Target::Name(n) => n.clone(),
            Target::Net(net) => net.to_string(),
        }
    }

    pub fn matches(&self, key: &NameKey, addr: Option<IpAddr>) -> bool {
        match self {
            Target::Name(n) => name_key(n).clashes(key),
            Target::Net(net) => addr.is_some_and(|a| net.contains(a)),
        }
    }

    /// The same target (for unban): the same name by key, or the same network.
    pub fn same(&self, other: &Target) -> bool {
        match (self, other) {
            (Target::Name(a), Target::Name(b)) => name_key(a).clashes(&name_key(b)),
            (Target::Net(a), Target::Net(b)) => a == b,
            _ => false,
        }
    }
}

/// A ban or a mute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    pub target: Target,
    pub by: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// When it was made (ms since the epoch).
    pub at: u64,
    /// When it ends by itself (ms since the epoch); `None`: until lifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
}

impl Ban {
    /// Still in force at `now` (ms): an expired ban ends by itself, on every node, because
    /// every node compares with its own clock when it is asked.
    pub fn active(&self, now: u64) -> bool {
        self.until.is_none_or(|u| now < u)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topic {
    pub text: String,
    pub by: String,
    pub at: u64,
}

/// One moderation action, as `/modlog` and the admin API show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub at: u64,
    pub actor: String,
    /// `kick`, `ban`, ... (see [`crate::act::ActKind`]), or `create` for a room's creation.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
}

impl LogEntry {
    /// `2026-12-07T10:00:00.000Z Mina kick Bob until 2026-12-08 10:00 UTC: spam`
    pub fn line(&self) -> String {
        let mut s = format!("{} {} {}", Timestamp(self.at), self.actor, self.action);
        if let Some(t) = &self.target {
            s.push(' ');
            s.push_str(t);
        }
        if let Some(u) = self.until {
            s.push_str(" until ");
            s.push_str(&crate::act::human_time(Timestamp(u)));
        }
        if !self.reason.is_empty() {
            s.push_str(": ");
            s.push_str(&self.reason);
        }
        s
    }
}

/// A room's kept settings (or the server's: then only `bans` and `log` are used).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoomRecord {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ops: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub voiced: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<Topic>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bans: Vec<Ban>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mutes: Vec<Ban>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub invites: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub closed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub moderated: bool,
    #[serde(skip_serializing_if = "VecDeque::is_empty")]
    pub log: VecDeque<LogEntry>,
}

/// Where someone stands in a room, lowest first: each may act on those below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rank {
    Member,
    Voiced,
    Op,
    Owner,
    Admin,
}

impl RoomRecord {
    /// The rank a registered name holds here (a guest is always a `Member`; server admins
    /// are found by the caller).
    pub fn role(&self, name: &str) -> Rank {
        if self.owner.as_deref() == Some(name) {
            Rank::Owner
        } else if self.ops.iter().any(|o| o == name) {
            Rank::Op
        } else if self.voiced.iter().any(|v| v == name) {
            Rank::Voiced
        } else {
            Rank::Member
        }
    }

    /// The first ban in force for this name or address.
    pub fn banned(&self, key: &NameKey, addr: Option<IpAddr>, now: u64) -> Option<&Ban> {
        self.bans
            .iter()
            .find(|b| b.active(now) && b.target.matches(key, addr))
    }

    pub fn muted(&self, key: &NameKey, now: u64) -> Option<&Ban> {
        self.mutes
            .iter()
            .find(|b| b.active(now) && b.target.matches(key, None))
    }

    /// Whether speaking here needs a look at who speaks (a mute, or moderated mode).
    pub fn guards_speech(&self) -> bool {
        self.moderated || !self.mutes.is_empty()
    }

    /// Drops bans and mutes that have ended, so records do not grow with old ones.
    pub fn sweep(&mut self, now: u64) {
        self.bans.retain(|b| b.active(now));
        self.mutes.retain(|b| b.active(now));
    }

    pub fn push_log(&mut self, entry: LogEntry) {
        self.log.push_back(entry);
        while self.log.len() > MAX_LOG {
            self.log.pop_front();
        }
    }

    /// `+closed +key +moderated` (the key itself is never shown), or `none`.
    pub fn modes(&self) -> String {
        let mut m = Vec::new();
        if self.closed {
            m.push("+closed");
        }
        if self.key.is_some() {
            m.push("+key");
        }
        if self.moderated {
            m.push("+moderated");
        }
        if m.is_empty() {
            "none".into()
        } else {
            m.join(" ")
        }
    }

    /// True when nothing is kept: such a record need not be stored.
    pub fn is_empty(&self) -> bool {
        *self == RoomRecord::default()
    }
}

/// Adds `name` to a list of names once (by exact spelling: roles are registered names).
pub fn add_name(list: &mut Vec<String>, name: &str) -> bool {
    if list.iter().any(|n| n == name) || list.len() >= MAX_ENTRIES {
        return false;
    }
    list.push(name.to_owned());
    true
}

pub fn remove_name(list: &mut Vec<String>, name: &str) -> bool {
    let before = list.len();
    list.retain(|n| n != name);
    list.len() != before
}

/// Adds a ban or mute, replacing one for the same target (a new duration or reason).
pub fn put_ban(list: &mut Vec<Ban>, ban: Ban) {
    list.retain(|b| !b.target.same(&ban.target));
    if list.len() < MAX_ENTRIES {
        list.push(ban);
    }
}

/// Lifts the ban or mute for `target`; false if there was none in force.
pub fn lift(list: &mut Vec<Ban>, target: &Target, now: u64) -> bool {
    let before = list.iter().filter(|b| b.active(now)).count();
    list.retain(|b| b.active(now) && !b.target.same(target));
    list.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(target: Target, until: Option<u64>) -> Ban {
        Ban {
            target,
            by: "Mina".into(),
            reason: String::new(),
            at: 0,
            until,
        }
    }

    #[test]
    fn a_ban_by_name_holds_for_every_spelling_of_it() {
        let mut r = RoomRecord::default();
        put_ban(&mut r.bans, ban(Target::Name("Bob".into()), None));
        for name in ["Bob", "bob", "BOB", "Вob"] {
            assert!(r.banned(&name_key(name), None, 1).is_some(), "{name}");
        }
        assert!(r.banned(&name_key("Rob"), None, 1).is_none());
    }

    #[test]
    fn a_ban_ends_by_itself_and_is_swept() {
        let mut r = RoomRecord::default();
        put_ban(&mut r.bans, ban(Target::Name("Bob".into()), Some(100)));
        assert!(r.banned(&name_key("Bob"), None, 99).is_some());
        assert!(r.banned(&name_key("Bob"), None, 100).is_none());
        r.sweep(100);
        assert!(r.bans.is_empty());
    }

    #[test]
    fn an_address_ban_covers_its_network() {
        let mut r = RoomRecord::default();
        let net: Net = "203.0.113.0/24".parse().unwrap_or_else(|_| unreachable!());
        put_ban(&mut r.bans, ban(Target::Net(net), None));
        let inside: IpAddr = [203, 0, 113, 9].into();
        let outside: IpAddr = [203, 0, 114, 9].into();
        assert!(r.banned(&name_key("x"), Some(inside), 1).is_some());
        assert!(r.banned(&name_key("x"), Some(outside), 1).is_none());
    }

    #[test]
    fn a_record_travels_as_small_json() {
        let mut r = RoomRecord {
            owner: Some("Mina".into()),
            closed: true,
            ..RoomRecord::default()
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap_or_default(),
            r#"{"owner":"Mina","closed":true}"#
        );
        r.closed = false;
        let back: RoomRecord = serde_json::from_str(r#"{"owner":"Mina","unknown":1}"#)
            .unwrap_or_else(|_| RoomRecord::default());
        assert_eq!(back, r);
    }
}
