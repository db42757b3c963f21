//! Carries out a moderation command: checks the actor's rank and the target's, changes the
//! room's record (kept, and shared by every node), shows the action in the room, and answers
//! the actor. The same for every transport and for the admin API: a version-1 line, a
//! version-2 `command` request and an API call all end here; only the answer's rendering
//! differs.

use std::sync::Arc;
use std::time::Duration;

use crate::act::{Act, ActKind};
use crate::hub::Hub;
use crate::moderation::command::{Command, ModeChange};
use crate::moderation::keep::{Edit, SERVER};
use crate::moderation::policy::now_ms;
use crate::moderation::record::{
    add_name, lift, put_ban, remove_name, Ban, LogEntry, Rank, RoomRecord, Target, Topic,
};
use crate::moderation::Who;
use crate::protocol::{name_key, Timestamp};
use crate::refusal::Refusal;
use crate::store::Deleted;

fn edit(f: impl Fn(&mut RoomRecord) + Send + Sync + 'static) -> Edit {
    Arc::new(f)
}

/// A log entry and the change it records, as one edit.
fn logged(entry: LogEntry, change: impl Fn(&mut RoomRecord) + Send + Sync + 'static) -> Edit {
    edit(move |r| {
        r.sweep(now_ms());
        change(r);
        r.push_log(entry.clone());
    })
}

fn until_of(time: Option<Duration>) -> Option<u64> {
    time.map(|d| now_ms().saturating_add(d.as_millis() as u64))
}

/// Who acts, and where it stands.
pub struct Moderator {
    hub: Arc<Hub>,
    /// The actor's name, as the room and the log show it.
    name: String,
    via: Via,
}

/// Where an actor stands.
pub enum Via {
    /// A connection: its rank comes from its room's record (or the admin flag).
    Connection {
        addr: std::net::IpAddr,
        person: bool,
        admin: bool,
    },
    /// The admin API (`--admin-token-file`): a server admin everywhere.
    AdminApi,
}

impl Moderator {
    pub fn new(hub: Arc<Hub>, name: String, via: Via) -> Self {
        Moderator { hub, name, via }
    }

    /// The actor's rank in `room`.
    pub fn rank(&self, room: &str) -> Rank {
        match self.via {
            Via::AdminApi => Rank::Admin,
            Via::Connection {
                addr,
                person,
                admin,
            } => self.hub.policy.rank(
                room,
                &Who {
                    name: &self.name,
                    addr,
                    person,
                    admin,
                },
            ),
        }
    }

    /// The caller's rank in `room`, if it is at least `need`.
    fn need(&self, room: &str, need: Rank, command: &str) -> Result<Rank, Refusal> {
        let rank = self.rank(room);
        if rank >= need {
            return Ok(rank);
        }
        let what = match need {
            Rank::Admin => "a server admin".to_owned(),
            Rank::Owner => format!("the owner of {room}"),
            _ => format!("an operator in {room}"),
        };
        Err(Refusal::NotAllowed {
            command: format!("/{command}"),
            what,
        })
    }

    /// A target's rank in `room` by its name (a guest's is `Member`), and its registered
    /// spelling if it is registered.
    fn rank_of(&self, room: &str, name: &str) -> (Rank, Option<String>) {
        let Some(registered) = self.hub.users.registered_name(name) else {
            return (Rank::Member, None);
        };
        let who = Who {
            name: &registered,
            addr: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            person: true,
            admin: self.hub.users.is_admin(&registered),
        };
        (self.hub.policy.rank(room, &who), Some(registered))
    }

    /// Refuses acting on someone of equal or higher rank.
    fn outranks(&self, mine: Rank, room: &str, name: &str, command: &str) -> Result<(), Refusal> {
        if self.rank_of(room, name).0 >= mine {
            return Err(Refusal::Outranks {
                command: command.into(),
                name: name.into(),
            });
        }
        Ok(())
    }

    /// The member of `room` called `name` (by key), as the room knows them.
    fn member_called(&self, room: &str, name: &str) -> Result<String, Refusal> {
        let key = name_key(name);
        self.hub
            .members_of(room)
            .into_iter()
            .find(|m| name_key(m).clashes(&key))
            .ok_or_else(|| Refusal::NoSuchMember(name.into()))
    }

    /// The log entry of an action about to be carried out (every check passed); the server's
    /// log gets the same line, so the audit trail survives even a lost record.
    fn entry(
        &self,
        room: &str,
        action: ActKind,
        target: Option<String>,
        reason: &str,
        until: Option<u64>,
    ) -> LogEntry {
        audit(room, &self.name, action, target.as_deref(), reason);
        LogEntry {
            at: now_ms(),
            actor: self.name.clone(),
            action: action.as_str().into(),
            target,
            reason: reason.into(),
            until,
        }
    }

    fn registered(&self, name: &str) -> Result<String, Refusal> {
        self.hub
            .users
            .registered_name(name)
            .ok_or_else(|| Refusal::NotRegistered(name.into()))
    }

    fn act<'a>(&'a self, kind: ActKind, target: Option<&'a str>, text: Option<&'a str>) -> Act<'a> {
        Act {
            kind,
            actor: &self.name,
            target,
            text,
            until: None,
            id: None,
            net: None,
        }
    }

    /// Carries out `cmd` in `room`. The actor's answer (lines for it alone, or why not) goes
    /// to `answer`, at once or, for a delete, once the store has answered.
    pub fn run(&self, room: &str, cmd: Command, answer: Answer) {
        if let Command::Delete(id) = cmd {
            if let Err((answer, refusal)) = self.delete(room, id, answer) {
                answer(Err(refusal));
            }
            return;
        }
        answer(self.command_lines(room, cmd));
    }

    fn command_lines(&self, rn: &str, cmd: Command) -> Result<Vec<String>, Refusal> {
        let room = Shown {
            hub: &self.hub,
            room: rn,
        };
        let policy = self.hub.policy.clone();
        let none = Vec::new;
        match cmd {
            Command::Topic(None) => Ok(vec![match policy.record(rn).and_then(|r| r.topic) {
                Some(t) => format!("topic of {rn}: {} (set by {})", t.text, t.by),
                None => format!("no topic in {rn}"),
            }]),
            Command::Topic(Some(text)) => {
                self.need(rn, Rank::Op, "topic")?;
                let topic = (!text.is_empty()).then(|| Topic {
                    text: text.clone(),
                    by: self.name.clone(),
                    at: now_ms(),
                });
                let entry = self.entry(rn, ActKind::Topic, None, &text, None);
                policy.change(rn, logged(entry, move |r| r.topic = topic.clone()));
                room.act(self.act(ActKind::Topic, None, Some(&text)));
                Ok(none())
            }
            Command::Kick { name, reason } => {
                let mine = self.need(rn, Rank::Op, "kick")?;
                let target = self.member_called(rn, &name)?;
                self.outranks(mine, rn, &target, "kick")?;
                let entry = self.entry(rn, ActKind::Kick, Some(target.clone()), &reason, None);
                policy.change(rn, logged(entry, |_| {}));
                room.act(self.act(ActKind::Kick, Some(&target), Some(&reason)));
                Ok(none())
            }
            Command::Ban {
                target,
                time,
                reason,
            } => {
                let mine = self.need(rn, Rank::Op, "ban")?;
                if let Target::Name(n) = &target {
                    self.outranks(mine, rn, n, "ban")?;
                }
                let until = until_of(time);
                let ban = self.ban_of(target.clone(), &reason, until);
                let entry = self.entry(rn, ActKind::Ban, Some(target.shown()), &reason, until);
                policy.change(
                    rn,
                    logged(entry, move |r| put_ban(&mut r.bans, ban.clone())),
                );
                let shown = target.shown();
                let (name, net) = match &target {
                    Target::Name(n) => (Some(n.as_str()), None),
                    Target::Net(_) => (None, Some(shown.as_str())),
                };
                room.act(Act {
                    until: until.map(Timestamp),
                    net,
                    ..self.act(ActKind::Ban, name, Some(&reason))
                });
                Ok(match target {
                    Target::Net(_) => vec![format!("banned {shown} from {rn}")],
                    Target::Name(_) => none(),
                })
            }
            Command::Unban(target) => {
                self.need(rn, Rank::Op, "unban")?;
                self.lift_ban(rn, rn, &target, rn)?;
                let name = match &target {
                    Target::Name(n) => Some(n.as_str()),
                    Target::Net(_) => None,
                };
                room.act(self.act(ActKind::Unban, name, None));
                Ok(match target {
                    Target::Net(net) => vec![format!("unbanned {net} from {rn}")],
                    Target::Name(_) => none(),
                })
            }
            Command::Sban {
                target,
                time,
                reason,
            } => {
                self.need(rn, Rank::Admin, "sban")?;
                if let Target::Name(n) = &target {
                    self.outranks(Rank::Admin, rn, n, "sban")?;
                }
                let until = until_of(time);
                let ban = self.ban_of(target.clone(), &reason, until);
                let entry = self.entry(rn, ActKind::Ban, Some(target.shown()), &reason, until);
                policy.change(
                    SERVER,
                    logged(entry, move |r| put_ban(&mut r.bans, ban.clone())),
                );
                // This node closes out whom it covers now; in a cluster every other node does
                // as the record reaches it.
                let closed = self.hub.enforce_server_bans();
                Ok(vec![format!(
                    "banned {} from the server ({closed} connections closed here)",
                    target.shown()
                )])
            }
            Command::Unsban(target) => {
                self.need(rn, Rank::Admin, "unsban")?;
                self.lift_ban(rn, SERVER, &target, "the server")?;
                Ok(vec![format!("unbanned {} from the server", target.shown())])
            }
            Command::Bans => {
                self.need(rn, Rank::Op, "bans")?;
                let now = now_ms();
                let record = policy.record(rn).unwrap_or_default();
                let mut lines = Vec::new();
                let mut list = |kind: &str, bans: &[Ban]| {
                    for b in bans.iter().filter(|b| b.active(now)) {
                        lines.push(describe_ban(kind, b));
                    }
                };
                list("banned", &record.bans);
                list("muted", &record.mutes);
                if self.rank(rn) == Rank::Admin {
                    let server = policy.record(SERVER).unwrap_or_default();
                    list("banned from the server", &server.bans);
                }
                let mut out = vec![format!("bans in {rn}: {}", lines.len())];
                out.extend(lines);
                Ok(out)
            }
            Command::Mute { name, time, reason } => {
                let mine = self.need(rn, Rank::Op, "mute")?;
                self.outranks(mine, rn, &name, "mute")?;
                let until = until_of(time);
                let ban = self.ban_of(Target::Name(name.clone()), &reason, until);
                let entry = self.entry(rn, ActKind::Mute, Some(name.clone()), &reason, until);
                policy.change(
                    rn,
                    logged(entry, move |r| put_ban(&mut r.mutes, ban.clone())),
                );
                room.act(Act {
                    until: until.map(Timestamp),
                    ..self.act(ActKind::Mute, Some(&name), Some(&reason))
                });
                Ok(none())
            }
            Command::Unmute(name) => {
                self.need(rn, Rank::Op, "unmute")?;
                let record = policy.record(rn).unwrap_or_default();
                if record.muted(&name_key(&name), now_ms()).is_none() {
                    return Err(Refusal::NotListed {
                        target: name,
                        what: "muted",
                        room: rn.into(),
                    });
                }
                let target = Target::Name(name.clone());
                let entry = self.entry(rn, ActKind::Unmute, Some(name.clone()), "", None);
                policy.change(
                    rn,
                    logged(entry, move |r| {
                        lift(&mut r.mutes, &target, now_ms());
                    }),
                );
                room.act(self.act(ActKind::Unmute, Some(&name), None));
                Ok(none())
            }
            Command::Op(name) => self.role(rn, ActKind::Op, &name, Rank::Owner, true),
            Command::Deop(name) => self.role(rn, ActKind::Deop, &name, Rank::Owner, false),
            Command::Voice(name) => self.role(rn, ActKind::Voice, &name, Rank::Op, true),
            Command::Devoice(name) => self.role(rn, ActKind::Devoice, &name, Rank::Op, false),
            Command::Invite(name) => self.role(rn, ActKind::Invite, &name, Rank::Op, true),
            Command::Uninvite(name) => self.role(rn, ActKind::Invite, &name, Rank::Op, false),
            Command::Mode(changes) if changes.is_empty() => {
                let record = policy.record(rn).unwrap_or_default();
                let mut line = format!("modes of {rn}: {}", record.modes());
                // The key is for those who may change it.
                if let (Some(key), Ok(_)) = (&record.key, self.need(rn, Rank::Op, "mode")) {
                    line.push_str(&format!(" (key: {key})"));
                }
                Ok(vec![line])
            }
            Command::Mode(changes) => {
                self.need(rn, Rank::Op, "mode")?;
                let shown: Vec<&str> = changes
                    .iter()
                    .map(|c| match c {
                        ModeChange::Closed(true) => "+closed",
                        ModeChange::Closed(false) => "-closed",
                        ModeChange::Moderated(true) => "+moderated",
                        ModeChange::Moderated(false) => "-moderated",
                        ModeChange::Key(Some(_)) => "+key",
                        ModeChange::Key(None) => "-key",
                    })
                    .collect();
                let shown = shown.join(" ");
                let entry = self.entry(rn, ActKind::Mode, None, &shown, None);
                policy.change(
                    rn,
                    logged(entry, move |r| {
                        for c in &changes {
                            match c {
                                ModeChange::Closed(on) => r.closed = *on,
                                ModeChange::Moderated(on) => r.moderated = *on,
                                ModeChange::Key(key) => r.key = key.clone(),
                            }
                        }
                    }),
                );
                room.act(self.act(ActKind::Mode, None, Some(&shown)));
                Ok(none())
            }
            Command::Wall(text) => {
                self.need(rn, Rank::Admin, "wall")?;
                let (rooms, _) = self.hub.rooms(usize::MAX);
                let entry = self.entry(rn, ActKind::Wall, None, &text, None);
                policy.change(SERVER, logged(entry, |_| {}));
                for (r, _) in &rooms {
                    self.hub
                        .act_anywhere(r, self.act(ActKind::Wall, None, Some(&text)));
                }
                Ok(vec![format!("notice sent to {} rooms", rooms.len())])
            }
            Command::Modlog(n) => {
                self.need(rn, Rank::Op, "modlog")?;
                let record = policy.record(rn).unwrap_or_default();
                let skip = record.log.len().saturating_sub(n);
                let mut out = vec![format!(
                    "moderation log of {rn}: {} entries",
                    record.log.len() - skip
                )];
                out.extend(record.log.iter().skip(skip).map(LogEntry::line));
                Ok(out)
            }
            Command::Delete(_) => Ok(none()),
        }
    }

    /// Lifts the ban on `target` in `scope`'s record (a room's, or [`SERVER`]), and logs it;
    /// refused if none is in force (`place` names the scope in the refusal).
    fn lift_ban(&self, rn: &str, scope: &str, target: &Target, place: &str) -> Result<(), Refusal> {
        let policy = &self.hub.policy;
        let record = policy.record(scope).unwrap_or_default();
        let now = now_ms();
        let banned = |b: &Ban| b.active(now) && b.target.same(target);
        if !record.bans.iter().any(banned) {
            return Err(Refusal::NotListed {
                target: target.shown(),
                what: "banned",
                room: place.into(),
            });
        }
        let entry = self.entry(rn, ActKind::Unban, Some(target.shown()), "", None);
        let lifted = target.clone();
        policy.change(
            scope,
            logged(entry, move |r| {
                lift(&mut r.bans, &lifted, now_ms());
            }),
        );
        Ok(())
    }

    fn ban_of(&self, target: Target, reason: &str, until: Option<u64>) -> Ban {
        Ban {
            target,
            by: self.name.clone(),
            reason: reason.into(),
            at: now_ms(),
            until,
        }
    }

    /// Gives (`on`) or takes a role (operator, voice, an invitation) to a registered name.
    fn role(
        &self,
        rn: &str,
        kind: ActKind,
        name: &str,
        need: Rank,
        on: bool,
    ) -> Result<Vec<String>, Refusal> {
        let room = Shown {
            hub: &self.hub,
            room: rn,
        };
        let verb = match (kind, on) {
            (ActKind::Invite, false) => "uninvite",
            _ => kind.as_str(),
        };
        let mine = self.need(rn, need, verb)?;
        let registered = self.registered(name)?;
        if !on {
            // Taking a role: only from someone below.
            self.outranks(mine, rn, &registered, verb)?;
        }
        let record = self.hub.policy.record(rn).unwrap_or_default();
        let list = |r: &RoomRecord| match kind {
            ActKind::Op | ActKind::Deop => r.ops.clone(),
            ActKind::Voice | ActKind::Devoice => r.voiced.clone(),
            _ => r.invites.clone(),
        };
        let has = list(&record).contains(&registered);
        let what = match kind {
            ActKind::Op | ActKind::Deop => "an operator",
            ActKind::Voice | ActKind::Devoice => "voiced",
            _ => "invited",
        };
        if !on && !has {
            return Err(Refusal::NotListed {
                target: registered,
                what,
                room: rn.into(),
            });
        }
        if on && has {
            return Ok(vec![format!("{registered} is already {what} in {rn}")]);
        }
        let entry = self.entry(rn, kind, Some(registered.clone()), "", None);
        let who = registered.clone();
        self.hub.policy.change(
            rn,
            logged(entry, move |r| {
                let list = match kind {
                    ActKind::Op | ActKind::Deop => &mut r.ops,
                    ActKind::Voice | ActKind::Devoice => &mut r.voiced,
                    _ => &mut r.invites,
                };
                if on {
                    add_name(list, &who);
                } else {
                    remove_name(list, &who);
                }
            }),
        );
        if kind == ActKind::Invite && !on {
            return Ok(vec![format!("{registered} is no longer invited to {rn}")]);
        }
        room.act(self.act(kind, Some(&registered), None));
        Ok(Vec::new())
    }

    /// `/delete ID`: one's own message, or (an operator) any message of the room. The store
    /// answers later; the room then shows the deletion, or the caller hears why not.
    fn delete(&self, rn: &str, id: u64, answer: Answer) -> Result<(), (Answer, Refusal)> {
        if !self.hub.keeps_history() {
            return Err((answer, Refusal::HistoryOff));
        }
        let op = self.rank(rn) >= Rank::Op;
        let only_by = (!op).then(|| self.name.clone());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err((answer, Refusal::HistoryUnavailable));
        };
        let pending = self.hub.delete_message(rn, id, only_by.as_deref());
        let (hub, actor, rn) = (self.hub.clone(), self.name.clone(), rn.to_owned());
        runtime.spawn(async move {
            let policy = hub.policy.clone();
            match pending.await {
                Ok(Ok(Deleted::Done { name })) => {
                    audit(
                        &rn,
                        &actor,
                        ActKind::Delete,
                        Some(&format!("{id} by {name}")),
                        "",
                    );
                    let entry = LogEntry {
                        at: now_ms(),
                        actor: actor.clone(),
                        action: ActKind::Delete.as_str().into(),
                        target: Some(format!("{id} by {name}")),
                        reason: String::new(),
                        until: None,
                    };
                    policy.change(&rn, logged(entry, |_| {}));
                    hub.act_anywhere(
                        &rn,
                        Act {
                            kind: ActKind::Delete,
                            actor: &actor,
                            target: None,
                            text: None,
                            until: None,
                            id: Some(id),
                            net: None,
                        },
                    );
                    answer(Ok(Vec::new()));
                }
                Ok(Ok(Deleted::NotFound)) => answer(Err(Refusal::NoSuchMessage { id, room: rn })),
                Ok(Ok(Deleted::NotYours)) => answer(Err(Refusal::NotYourMessage(id))),
                Ok(Err(e)) => answer(Err(Refusal::BadArgument(e.to_string()))),
                Err(_) => answer(Err(Refusal::HistoryUnavailable)),
            }
        });
        Ok(())
    }
}

/// One line in the server's log per moderation action (`room` is empty for the server's own
/// record: `/sban`, `/wall`).
fn audit(room: &str, actor: &str, action: ActKind, target: Option<&str>, reason: &str) {
    tracing::info!(
        room,
        actor,
        action = action.as_str(),
        target = target.unwrap_or(""),
        reason,
        "moderation"
    );
}

/// Where a command's answer goes: lines for the caller alone, or why not.
pub type Answer = Box<dyn FnOnce(Result<Vec<String>, Refusal>) + Send>;

/// `Bob until 2026-12-08 10:00 UTC by Mina: spam`
fn describe_ban(kind: &str, b: &Ban) -> String {
    let mut s = format!("{} {kind}", b.target.shown());
    if let Some(u) = b.until {
        s.push_str(" until ");
        s.push_str(&crate::act::human_time(Timestamp(u)));
    }
    s.push_str(" by ");
    s.push_str(&b.by);
    if !b.reason.is_empty() {
        s.push_str(": ");
        s.push_str(&b.reason);
    }
    s
}

/// A room as the actions show things in it: through the hub, so a room with no members on
/// this node (a cluster's, or the admin API's target) is reached too.
struct Shown<'a> {
    hub: &'a Hub,
    room: &'a str,
}

impl Shown<'_> {
    fn act(&self, act: Act<'_>) {
        self.hub.act_anywhere(self.room, act);
    }
}
