//! The moderation rules in force: every room's record (and the server's) held in memory,
//! asked at each join and, in rooms that guard speech, at each message; changed by the
//! commands, and kept by a [`Keeper`]. In a cluster the keeper's watch hands every node each
//! record as it is stored ([`Policy::replaced`]), so a ban made on one node holds on the
//! others at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::keep::{Edit, KeepError, Keeper, SERVER};
use super::net::Net;
use super::record::{
    add_name, lift, put_ban, remove_name, Ban, LogEntry, Rank, RoomRecord, Target, Topic,
};
use crate::act::human_time;
use crate::act::{Act, ActKind};
use crate::protocol::{name_key, NameKey, Timestamp};
use crate::refusal::Refusal;
use crate::settings::RoomCreation;

/// Someone joining or speaking, as the rules see them.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub name: &'a str,
    pub addr: IpAddr,
    /// Logged in with a registered name's password: only such a connection holds a role.
    pub person: bool,
    /// A server admin (a person whose registered name has the admin flag).
    pub admin: bool,
}

#[derive(Default)]
struct State {
    rooms: HashMap<String, RoomRecord>,
    server: RoomRecord,
}

pub struct Policy {
    state: RwLock<State>,
    keeper: Arc<dyn Keeper>,
    creation: RoomCreation,
    /// True once any room has a mute or is moderated: until then a message costs no lookup.
    guarded: AtomicBool,
}

/// Most rooms one registered name comes to own by creating them.
pub const MAX_OWNED: usize = 100;

pub fn now_ms() -> u64 {
    Timestamp::now().0
}

/// ` until 2026-12-08 10:00 UTC: spam`, as a refusal ends.
fn until_and_why(ban: &Ban) -> String {
    let mut s = String::new();
    if let Some(u) = ban.until {
        s.push_str(" until ");
        s.push_str(&human_time(Timestamp(u)));
    }
    if !ban.reason.is_empty() {
        s.push_str(": ");
        s.push_str(&ban.reason);
    }
    s
}

impl Policy {
    pub fn new(keeper: Arc<dyn Keeper>, creation: RoomCreation) -> Result<Self, KeepError> {
        let mut state = State::default();
        for (key, record) in keeper.load()? {
            if key == SERVER {
                state.server = record;
            } else {
                state.rooms.insert(key, record);
            }
        }
        let guarded = state.rooms.values().any(RoomRecord::guards_speech);
        Ok(Policy {
            state: RwLock::new(state),
            keeper,
            creation,
            guarded: AtomicBool::new(guarded),
        })
    }

    /// Rules that keep nothing and let anyone create rooms (tests, benchmarks).
    pub fn open_to_all() -> Self {
        Policy {
            state: RwLock::default(),
            keeper: Arc::new(super::keep::Forget),
            creation: RoomCreation::Anyone,
            guarded: AtomicBool::new(false),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until every change made so far is stored (at shutdown).
    pub fn close(&self) {
        self.keeper.close();
    }

    /// A copy of a room's record (or the server's, for [`SERVER`]).
    pub fn record(&self, key: &str) -> Option<RoomRecord> {
        let state = self.read();
        if key == SERVER {
            return Some(state.server.clone());
        }
        state.rooms.get(key).cloned()
    }

    /// A room's topic (a join shows it: the rest of the record is not copied).
    pub fn topic(&self, room: &str) -> Option<Topic> {
        self.read().rooms.get(room).and_then(|r| r.topic.clone())
    }

    /// The rooms that have a record, sorted.
    pub fn rooms(&self) -> Vec<String> {
        let mut v: Vec<String> = self.read().rooms.keys().cloned().collect();
        v.sort_unstable();
        v
    }

    pub fn has_record(&self, room: &str) -> bool {
        self.read().rooms.contains_key(room)
    }

    /// Changes a record here at once, and has the keeper store the same change.
    pub fn change(&self, key: &str, edit: Edit) {
        {
            let mut state = self.write();
            if key == SERVER {
                edit(&mut state.server);
            } else {
                let record = state.rooms.entry(key.to_owned()).or_default();
                edit(record);
                let guards = record.guards_speech();
                if record.is_empty() {
                    state.rooms.remove(key);
                }
                if guards {
                    self.guarded.store(true, Ordering::Release);
                }
            }
        }
        self.keeper.update(key, edit);
    }

    /// Applies what a room event of another node (or this one) says was changed, to this
    /// node's copy only: the stored record (see [`Policy::replaced`]) follows moments later and
    /// replaces it. What an event does not carry (a key, an unbanned network) waits for it.
    pub fn observe(&self, room: &str, act: &Act<'_>) {
        let now = now_ms();
        let ban = |target: Target| Ban {
            target,
            by: act.actor.to_owned(),
            reason: act.text.unwrap_or("").to_owned(),
            at: now,
            until: act.until.map(|t| t.0),
        };
        let name = act.target.map(|t| Target::Name(t.to_owned()));
        let mut state = self.write();
        let r = state.rooms.entry(room.to_owned()).or_default();
        match (act.kind, name) {
            (ActKind::Mute, Some(t)) => put_ban(&mut r.mutes, ban(t)),
            (ActKind::Unmute, Some(t)) => {
                lift(&mut r.mutes, &t, now);
            }
            (ActKind::Ban, Some(t)) => put_ban(&mut r.bans, ban(t)),
            (ActKind::Ban, None) => {
                if let Some(net) = act.net.and_then(|n| n.parse::<Net>().ok()) {
                    put_ban(&mut r.bans, ban(Target::Net(net)));
                }
            }
            (ActKind::Unban, Some(t)) => {
                lift(&mut r.bans, &t, now);
            }
            (ActKind::Op, Some(Target::Name(n))) => {
                add_name(&mut r.ops, &n);
            }
            (ActKind::Deop, Some(Target::Name(n))) => {
                remove_name(&mut r.ops, &n);
            }
            (ActKind::Voice, Some(Target::Name(n))) => {
                add_name(&mut r.voiced, &n);
            }
            (ActKind::Devoice, Some(Target::Name(n))) => {
                remove_name(&mut r.voiced, &n);
            }
            (ActKind::Invite, Some(Target::Name(n))) => {
                add_name(&mut r.invites, &n);
            }
            (ActKind::Topic, _) => {
                r.topic = act.text.filter(|t| !t.is_empty()).map(|t| Topic {
                    text: t.to_owned(),
                    by: act.actor.to_owned(),
                    at: now,
                })
            }
            (ActKind::Mode, _) => {
                for m in act.text.unwrap_or("").split_whitespace() {
                    match m {
                        "+closed" => r.closed = true,
                        "-closed" => r.closed = false,
                        "+moderated" => r.moderated = true,
                        "-moderated" => r.moderated = false,
                        "-key" => r.key = None,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        if r.guards_speech() {
            self.guarded.store(true, Ordering::Release);
        }
        if r.is_empty() {
            state.rooms.remove(room);
        }
    }

    /// A record as the cluster stored it (`None`: deleted), replacing this node's copy.
    pub fn replaced(&self, key: &str, record: Option<RoomRecord>) {
        let mut state = self.write();
        match (key == SERVER, record) {
            (true, r) => state.server = r.unwrap_or_default(),
            (false, Some(r)) => {
                if r.guards_speech() {
                    self.guarded.store(true, Ordering::Release);
                }
                state.rooms.insert(key.to_owned(), r);
            }
            (false, None) => {
                state.rooms.remove(key);
            }
        }
    }

    /// The ban on the whole server that keeps `name` (or its address) out, if any.
    pub fn server_ban(&self, key: &NameKey, addr: Option<IpAddr>) -> Option<Ban> {
        self.read().server.banned(key, addr, now_ms()).cloned()
    }

    /// Whether a server ban keeps `who` out of the whole server (admins never are).
    pub fn server_admit(&self, who: &Who<'_>) -> Result<(), Refusal> {
        if who.person && who.admin {
            return Ok(());
        }
        let state = self.read();
        // A name's key costs a few allocations: only where there is a ban to compare it with.
        if state.server.bans.is_empty() {
            return Ok(());
        }
        match state
            .server
            .banned(&name_key(who.name), Some(who.addr), now_ms())
        {
            Some(ban) => Err(Refusal::ServerBanned(until_and_why(ban))),
            None => Ok(()),
        }
    }

    /// Where a connection stands in a room.
    pub fn rank(&self, room: &str, who: &Who<'_>) -> Rank {
        if !who.person {
            return Rank::Member;
        }
        if who.admin {
            return Rank::Admin;
        }
        self.read()
            .rooms
            .get(room)
            .map_or(Rank::Member, |r| r.role(who.name))
    }

    /// Whether `who` may enter `room`: server and room bans, invite-only and key modes, and
    /// (for a room that does not exist yet: `exists` is false) `--room-creation`. Operators
    /// and admins pass every mode; the refusal tells only the one refused about their own ban.
    pub fn admit(
        &self,
        room: &str,
        who: &Who<'_>,
        key: Option<&str>,
        exists: bool,
    ) -> Result<(), Refusal> {
        if who.person && who.admin {
            return Ok(());
        }
        self.server_admit(who)?;
        let now = now_ms();
        let state = self.read();
        let Some(record) = state.rooms.get(room) else {
            return self.may_create(room, who, exists);
        };
        let rank = if who.person {
            record.role(who.name)
        } else {
            Rank::Member
        };
        if rank >= Rank::Op {
            return Ok(());
        }
        let banned = (!record.bans.is_empty())
            .then(|| record.banned(&name_key(who.name), Some(who.addr), now))
            .flatten();
        if let Some(ban) = banned {
            return Err(Refusal::BannedFrom {
                room: room.into(),
                rest: until_and_why(ban),
            });
        }
        let invited = who.person && record.invites.iter().any(|n| n == who.name);
        if record.closed && !invited {
            return Err(Refusal::InviteOnly(room.into()));
        }
        if let Some(want) = &record.key {
            match key {
                None if !invited => return Err(Refusal::NeedsKey(room.into())),
                Some(k) if !invited && !constant_eq(k.as_bytes(), want.as_bytes()) => {
                    return Err(Refusal::WrongKey(room.into()))
                }
                _ => {}
            }
        }
        if exists {
            Ok(())
        } else {
            self.may_create(room, who, exists)
        }
    }

    fn may_create(&self, room: &str, who: &Who<'_>, exists: bool) -> Result<(), Refusal> {
        if exists {
            return Ok(());
        }
        match self.creation {
            RoomCreation::Anyone => Ok(()),
            RoomCreation::Registered if who.person => Ok(()),
            RoomCreation::Admins if who.person && who.admin => Ok(()),
            RoomCreation::Registered => Err(Refusal::CannotCreate {
                room: room.into(),
                who: "registered users",
            }),
            RoomCreation::Admins => Err(Refusal::CannotCreate {
                room: room.into(),
                who: "admins",
            }),
        }
    }

    /// Whether `who` may speak in `room` now: not muted, and (in a moderated room) an
    /// operator or voiced. One atomic load for every room while no room guards speech.
    pub fn speech(&self, room: &str, who: &Who<'_>) -> Result<(), Refusal> {
        if !self.guarded.load(Ordering::Acquire) {
            return Ok(());
        }
        let state = self.read();
        let Some(record) = state.rooms.get(room) else {
            return Ok(());
        };
        if !record.guards_speech() {
            return Ok(());
        }
        if who.person && who.admin {
            return Ok(());
        }
        // A mute holds whatever the rank: only a higher rank can have made it (an owner
        // muting an operator), and an admin is never muted.
        if !record.mutes.is_empty() && record.muted(&name_key(who.name), now_ms()).is_some() {
            return Err(Refusal::Muted(room.into()));
        }
        if record.moderated && !(who.person && record.role(who.name) >= Rank::Voiced) {
            return Err(Refusal::Moderated(room.into()));
        }
        Ok(())
    }

    /// A room just made by `owner` (a registered name), or by a guest (`None`): its record
    /// begins with its owner and a log entry. A guest's room gets no record, nor does the
    /// room of a name that owns [`MAX_OWNED`] already: records are kept for ever, and one
    /// account must not be able to make the server keep a million of them.
    pub fn created(&self, room: &str, owner: Option<&str>) {
        let Some(owner) = owner else {
            return;
        };
        let owned = {
            let state = self.read();
            let mine = |r: &&RoomRecord| r.owner.as_deref() == Some(owner);
            state.rooms.values().filter(mine).count()
        };
        if owned >= MAX_OWNED {
            tracing::info!(
                room,
                owner,
                "room not owned: its creator owns {MAX_OWNED} rooms already"
            );
            return;
        }
        let owner = owner.to_owned();
        self.change(
            room,
            Arc::new(move |r: &mut RoomRecord| {
                if r.owner.is_none() {
                    r.owner = Some(owner.clone());
                    r.push_log(LogEntry {
                        at: now_ms(),
                        actor: owner.clone(),
                        action: "create".into(),
                        target: None,
                        reason: String::new(),
                        until: None,
                    });
                }
            }),
        );
    }
}

/// Compares secrets in time that does not depend on where they differ.
pub fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moderation::record::{put_ban, Target};

    fn who(name: &str, person: bool) -> Who<'_> {
        Who {
            name,
            addr: [127, 0, 0, 1].into(),
            person,
            admin: false,
        }
    }

    fn edit(f: impl Fn(&mut RoomRecord) + Send + Sync + 'static) -> Edit {
        Arc::new(f)
    }

    #[test]
    fn a_closed_room_lets_in_its_invited_people_and_operators_only() {
        let p = Policy::open_to_all();
        p.change(
            "dev",
            edit(|r| {
                r.closed = true;
                r.ops.push("Mina".into());
                r.invites.push("Ann".into());
            }),
        );
        assert_eq!(
            p.admit("dev", &who("Bob", false), None, true),
            Err(Refusal::InviteOnly("dev".into()))
        );
        // A guest called Ann is not the registered Ann.
        assert!(p.admit("dev", &who("Ann", false), None, true).is_err());
        assert!(p.admit("dev", &who("Ann", true), None, true).is_ok());
        assert!(p.admit("dev", &who("Mina", true), None, true).is_ok());
    }

    #[test]
    fn a_key_must_be_given_and_right() {
        let p = Policy::open_to_all();
        p.change("dev", edit(|r| r.key = Some("s3cret".into())));
        let bob = who("Bob", false);
        assert_eq!(
            p.admit("dev", &bob, None, true),
            Err(Refusal::NeedsKey("dev".into()))
        );
        assert_eq!(
            p.admit("dev", &bob, Some("nope"), true),
            Err(Refusal::WrongKey("dev".into()))
        );
        assert!(p.admit("dev", &bob, Some("s3cret"), true).is_ok());
    }

    #[test]
    fn a_muted_name_cannot_speak_and_a_mute_ends_by_itself() {
        let p = Policy::open_to_all();
        let bob = who("Bob", false);
        assert!(p.speech("dev", &bob).is_ok());
        p.change(
            "dev",
            edit(|r| {
                put_ban(
                    &mut r.mutes,
                    Ban {
                        target: Target::Name("bob".into()),
                        by: "Mina".into(),
                        reason: String::new(),
                        at: 0,
                        until: Some(now_ms() + 60_000),
                    },
                )
            }),
        );
        assert_eq!(p.speech("dev", &bob), Err(Refusal::Muted("dev".into())));
        assert!(p.speech("other", &bob).is_ok());
        p.change(
            "dev",
            edit(|r| {
                for m in &mut r.mutes {
                    m.until = Some(1);
                }
            }),
        );
        assert!(p.speech("dev", &bob).is_ok());
    }

    #[test]
    fn a_mute_holds_for_an_operator_and_moderated_lets_operators_speak() {
        let p = Policy::open_to_all();
        p.change(
            "dev",
            edit(|r| {
                r.owner = Some("Mina".into());
                r.ops.push("Ann".into());
                r.moderated = true;
            }),
        );
        assert!(p.speech("dev", &who("Ann", true)).is_ok());
        assert_eq!(
            p.speech("dev", &who("Bob", false)),
            Err(Refusal::Moderated("dev".into()))
        );
        p.change(
            "dev",
            edit(|r| {
                put_ban(
                    &mut r.mutes,
                    Ban {
                        target: Target::Name("Ann".into()),
                        by: "Mina".into(),
                        reason: String::new(),
                        at: 0,
                        until: None,
                    },
                )
            }),
        );
        assert_eq!(
            p.speech("dev", &who("Ann", true)),
            Err(Refusal::Muted("dev".into()))
        );
        let admin = Who {
            admin: true,
            ..who("Ann", true)
        };
        assert!(p.speech("dev", &admin).is_ok());
    }

    #[test]
    fn one_name_owns_a_bounded_number_of_rooms() {
        let p = Policy::open_to_all();
        for i in 0..MAX_OWNED + 5 {
            p.created(&format!("r{i}"), Some("Mina"));
        }
        assert_eq!(p.rooms().len(), MAX_OWNED);
        // A guest's room is kept nowhere.
        p.created("guests", None);
        assert!(!p.has_record("guests"));
    }

    #[test]
    fn room_creation_follows_the_setting() {
        let mut p = Policy::open_to_all();
        p.creation = RoomCreation::Registered;
        assert!(matches!(
            p.admit("new", &who("Bob", false), None, false),
            Err(Refusal::CannotCreate { .. })
        ));
        assert!(p.admit("new", &who("Bob", false), None, true).is_ok());
        assert!(p.admit("new", &who("Ann", true), None, false).is_ok());
        p.creation = RoomCreation::Admins;
        assert!(p.admit("new", &who("Ann", true), None, false).is_err());
        let admin = Who {
            admin: true,
            ..who("Root", true)
        };
        assert!(p.admit("new", &admin, None, false).is_ok());
    }
}
