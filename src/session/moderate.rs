//! Carries out a moderation command for a session: checks the caller's rank and the
//! target's, changes the room's record (kept, and shared by every node), shows the action in
//! the room, and answers the caller. The same for every transport: a version-1 line and a
//! version-2 `command` request both end here, only the answer's rendering differs.

use std::sync::Arc;
use std::time::Duration;

use super::Session;
use crate::act::{Act, ActKind};
use crate::moderation::command::{Command, ModeChange};
use crate::moderation::keep::{Edit, SERVER};
use crate::moderation::policy::now_ms;
use crate::moderation::record::{
    add_name, lift, put_ban, remove_name, Ban, LogEntry, Rank, RoomRecord, Target, Topic,
};
use crate::moderation::Who;
use crate::protocol::{name_key, Format, Reply, Timestamp};
use crate::refusal::Refusal;
use crate::room::{Room, Seat};
use crate::store::Deleted;

/// Renders a room's topic as a joining member is shown it.
pub fn render_topic(room: &str, topic: &Topic, format: Format, out: &mut Vec<u8>) {
    match format {
        Format::Text => Reply::Notice(&format!(
            "topic of {room}: {} (set by {})",
            topic.text, topic.by
        ))
        .render(format, out),
        Format::Json => Act {
            kind: ActKind::Topic,
            actor: &topic.by,
            target: None,
            text: Some(&topic.text),
            until: None,
            id: None,
            net: None,
        }
        .render_json(room, Timestamp(topic.at), out),
    }
}

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

impl Session {
    /// The session as a room it joins sees it.
    pub(super) fn joiner(&self, format: Format) -> crate::room::Joiner<'_> {
        crate::room::Joiner {
            id: self.id,
            name: &self.name,
            format,
            person: self.person,
            addr: self.addr,
        }
    }

    pub(super) fn who(&self) -> Who<'_> {
        Who {
            name: &self.name,
            addr: self.addr,
            person: self.person,
            admin: self.admin,
        }
    }

    /// The caller's rank in `room`, if it is at least `need`.
    fn need(&self, room: &str, need: Rank, command: &str) -> Result<Rank, Refusal> {
        let rank = self.hub.policy.rank(room, &self.who());
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
            addr: self.addr,
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
    fn member_called(&self, room: &Room, name: &str) -> Result<String, Refusal> {
        let key = name_key(name);
        self.hub
            .who(room)
            .into_iter()
            .find(|m| name_key(m).clashes(&key))
            .ok_or_else(|| Refusal::NoSuchMember(name.into()))
    }

    fn entry(
        &self,
        action: ActKind,
        target: Option<String>,
        reason: &str,
        until: Option<u64>,
    ) -> LogEntry {
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

    /// Carries out `cmd` in `room`, where the session sits at `seat`. The caller's answer
    /// (lines for it alone, or why not) goes to `answer`, at once or, for a delete, once the
    /// store has answered.
    pub(super) fn moderate(&mut self, room: &Arc<Room>, seat: Seat, cmd: Command, answer: Answer) {
        match self.carry_out(room, seat, cmd, answer) {
            Ok(None) => {}
            Ok(Some((answer, lines))) => answer(Ok(lines)),
            Err((answer, refusal)) => answer(Err(refusal)),
        }
    }

    #[allow(clippy::type_complexity)]
    fn carry_out(
        &mut self,
        room: &Arc<Room>,
        seat: Seat,
        cmd: Command,
        answer: Answer,
    ) -> Result<Option<(Answer, Vec<String>)>, (Answer, Refusal)> {
        if let Command::Delete(id) = cmd {
            return match self.delete(room, seat, id, answer) {
                Ok(()) => Ok(None),
                Err((answer, refusal)) => Err((answer, refusal)),
            };
        }
        match self.command_lines(room, cmd) {
            Ok(lines) => Ok(Some((answer, lines))),
            Err(refusal) => Err((answer, refusal)),
        }
    }

    fn command_lines(&mut self, room: &Arc<Room>, cmd: Command) -> Result<Vec<String>, Refusal> {
        let rn = room.name().to_owned();
        let rn = rn.as_str();
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
                let entry = self.entry(ActKind::Topic, None, &text, None);
                policy.change(rn, logged(entry, move |r| r.topic = topic.clone()));
                room.act(self.act(ActKind::Topic, None, Some(&text)));
                Ok(none())
            }
            Command::Kick { name, reason } => {
                let mine = self.need(rn, Rank::Op, "kick")?;
                let target = self.member_called(room, &name)?;
                self.outranks(mine, rn, &target, "kick")?;
                let entry = self.entry(ActKind::Kick, Some(target.clone()), &reason, None);
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
                let entry = self.entry(ActKind::Ban, Some(target.shown()), &reason, until);
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
                let record = policy.record(rn).unwrap_or_default();
                let now = now_ms();
                if !record
                    .bans
                    .iter()
                    .any(|b| b.active(now) && b.target.same(&target))
                {
                    return Err(Refusal::NotListed {
                        target: target.shown(),
                        what: "banned",
                        room: rn.into(),
                    });
                }
                let entry = self.entry(ActKind::Unban, Some(target.shown()), "", None);
                let lifted = target.clone();
                policy.change(
                    rn,
                    logged(entry, move |r| {
                        lift(&mut r.bans, &lifted, now_ms());
                    }),
                );
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
                let entry = self.entry(ActKind::Ban, Some(target.shown()), &reason, until);
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
                let record = policy.record(SERVER).unwrap_or_default();
                let now = now_ms();
                if !record
                    .bans
                    .iter()
                    .any(|b| b.active(now) && b.target.same(&target))
                {
                    return Err(Refusal::NotListed {
                        target: target.shown(),
                        what: "banned",
                        room: "the server".into(),
                    });
                }
                let entry = self.entry(ActKind::Unban, Some(target.shown()), "", None);
                let lifted = target.clone();
                policy.change(
                    SERVER,
                    logged(entry, move |r| {
                        lift(&mut r.bans, &lifted, now_ms());
                    }),
                );
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
                if self.person && self.admin {
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
                let entry = self.entry(ActKind::Mute, Some(name.clone()), &reason, until);
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
                let entry = self.entry(ActKind::Unmute, Some(name.clone()), "", None);
                policy.change(
                    rn,
                    logged(entry, move |r| {
                        lift(&mut r.mutes, &target, now_ms());
                    }),
                );
                room.act(self.act(ActKind::Unmute, Some(&name), None));
                Ok(none())
            }
            Command::Op(name) => self.role(room, ActKind::Op, &name, Rank::Owner, true),
            Command::Deop(name) => self.role(room, ActKind::Deop, &name, Rank::Owner, false),
            Command::Voice(name) => self.role(room, ActKind::Voice, &name, Rank::Op, true),
            Command::Devoice(name) => self.role(room, ActKind::Devoice, &name, Rank::Op, false),
            Command::Invite(name) => self.role(room, ActKind::Invite, &name, Rank::Op, true),
            Command::Uninvite(name) => self.role(room, ActKind::Invite, &name, Rank::Op, false),
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
                let entry = self.entry(ActKind::Mode, None, &shown, None);
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
                let entry = self.entry(ActKind::Wall, None, &text, None);
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
        &mut self,
        room: &Arc<Room>,
        kind: ActKind,
        name: &str,
        need: Rank,
        on: bool,
    ) -> Result<Vec<String>, Refusal> {
        let rn = room.name();
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
        let entry = self.entry(kind, Some(registered.clone()), "", None);
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
    fn delete(
        &mut self,
        room: &Arc<Room>,
        seat: Seat,
        id: u64,
        answer: Answer,
    ) -> Result<(), (Answer, Refusal)> {
        let rn = room.name();
        if !room.history_kept() {
            return Err((answer, Refusal::HistoryOff));
        }
        let op = self.hub.policy.rank(rn, &self.who()) >= Rank::Op;
        let only_by = (!op).then(|| self.name.clone());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err((answer, Refusal::HistoryUnavailable));
        };
        let pending = room.delete(id, only_by.as_deref());
        let (room, actor, policy) = (room.clone(), self.name.clone(), self.hub.policy.clone());
        let _ = seat;
        runtime.spawn(async move {
            let rn = room.name().to_owned();
            match pending.await {
                Ok(Ok(Deleted::Done { name })) => {
                    let entry = LogEntry {
                        at: now_ms(),
                        actor: actor.clone(),
                        action: ActKind::Delete.as_str().into(),
                        target: Some(format!("{id} by {name}")),
                        reason: String::new(),
                        until: None,
                    };
                    policy.change(&rn, logged(entry, |_| {}));
                    room.act(Act {
                        kind: ActKind::Delete,
                        actor: &actor,
                        target: None,
                        text: None,
                        until: None,
                        id: Some(id),
                        net: None,
                    });
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
