//! A session: one client inside the chat, after its handshake. It turns each line into a
//! message or a command, applies the line rate limit, and talks to its room and the hub.
//!
//! Nothing here does I/O or awaits: the connection feeds lines in and carries the outcome out,
//! so every rule of the chat can be exercised without a socket.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use crate::bus::ClaimError;
use crate::hub::Hub;
use crate::protocol::{clean_line, clean_message, validate_name, validate_room, Format, Reply};
use crate::refusal::Refusal;
use crate::replay::{PagedReplay, Step};
use crate::room::{ReplayStart, Room, RoomError, Seat};
use crate::store::MAX_REPLAY;

/// Why a session ends; the reason is logged, and shown to the client where it is an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The client asked (`/quit`).
    Quit,
    /// The client fell too far behind and was cut off by its room.
    SlowConsumer,
}

/// What the connection should do after a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// Stop reading until the instant: the client used up its line budget.
    Throttle(Instant),
    /// Stop reading until the replay in `Session::replay` is over, so replies keep the order
    /// of the commands.
    Wait,
    End(End),
}

/// A token bucket: `rate` lines a second sustained, `burst` at once.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    pub fn new(rate: f64, burst: u32) -> Option<Self> {
        (rate > 0.0).then(|| RateLimit {
            rate,
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
        })
    }

    fn refill(&mut self, now: Instant) {
        let earned = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.last = now;
    }

    /// Spends one line. Returns when the next line may be read, if not right away.
    pub fn spend(&mut self, now: Instant) -> Option<Instant> {
        self.refill(now);
        self.tokens -= 1.0;
        if self.tokens >= 1.0 {
            return None;
        }
        let wait = (1.0 - self.tokens) / self.rate;
        Some(now + Duration::from_secs_f64(wait))
    }
}

pub struct Session {
    hub: Arc<Hub>,
    pub id: u64,
    pub name: String,
    pub format: Format,
    pub room: Arc<Room>,
    pub seat: Seat,
    limit: Option<RateLimit>,
    /// The longest line a client may send (`--max-line`): what sizes a replay's pages.
    max_line: usize,
    /// A replay under way (history on joining, or `/history`). Boxed: an idle session (most
    /// of them, most of the time) then pays one pointer for it, not its 128 bytes.
    replay: Option<Box<PagedReplay>>,
    /// In cluster mode: a `/nick` or `/join` waiting for the cluster to confirm the name.
    claim_wait: Option<ClaimWait>,
    /// A person's connection (a registered name, its password proved at the handshake): it
    /// shares the name with the person's other connections, and keeps it (no `/nick`).
    pub person: bool,
}

/// A command that goes on once the cluster has answered a claim.
struct ClaimWait {
    answer: Pin<Box<dyn Future<Output = Result<(), ClaimError>> + Send>>,
    then: AfterClaim,
}

enum AfterClaim {
    Nick(String),
    Join(String),
}

impl Session {
    pub fn new(
        hub: Arc<Hub>,
        id: u64,
        name: String,
        format: Format,
        (room, seat): (Arc<Room>, Seat),
        limit: Option<RateLimit>,
        max_line: usize,
    ) -> Self {
        Session {
            hub,
            id,
            name,
            format,
            room,
            seat,
            limit,
            max_line,
            replay: None,
            claim_wait: None,
            person: false,
        }
    }

    /// Sends a replay (begun when the member joined) before anything newer from the room.
    pub fn start_replay(&mut self, start: ReplayStart) {
        let max_pending = self.room.max_pending();
        self.replay = Some(Box::new(PagedReplay::new(
            start,
            max_pending,
            self.max_line,
        )));
    }

    /// The longest line the client may send (`--max-line`).
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// True while a replay is under way (lines received meanwhile wait their turn).
    pub fn replaying(&self) -> bool {
        self.replay.is_some()
    }

    /// True while a replay is under way or a command waits for an answer (the cluster): the
    /// connection stops reading, so replies keep the order of the commands.
    pub fn waiting(&self) -> bool {
        self.replay.is_some() || self.claim_wait.is_some()
    }

    /// Handles one received line (without its line ending). `now` is read once per batch of
    /// lines by the caller. Bytes the session must hand to the client directly (what was still
    /// unread in a room it leaves) are appended to `out`.
    pub fn on_line(&mut self, raw: &[u8], now: Instant, out: &mut Vec<u8>) -> Next {
        let text = clean_line(raw);
        self.on_text(&text, now, out)
    }

    /// Handles one message that may span lines (a WebSocket frame): a single line is handled
    /// as [`Session::on_line`] does; several lines are one message, never a command.
    pub fn on_message(&mut self, raw: &[u8], now: Instant, out: &mut Vec<u8>) -> Next {
        let text = clean_message(raw);
        if text.contains('\n') && text.starts_with('/') && !text.starts_with("//") {
            return match self.reply(&Reply::Error(&Refusal::CommandOneLine.to_string())) {
                Ok(()) => self.pace(now),
                Err(_) => Next::End(End::SlowConsumer),
            };
        }
        self.on_text(&text, now, out)
    }

    fn on_text(&mut self, text: &str, now: Instant, out: &mut Vec<u8>) -> Next {
        let result = if text.starts_with("//") {
            self.room.say(self.seat, &text[1..], false).map(|_| ())
        } else if let Some(cmd) = text.strip_prefix('/') {
            match self.command(cmd, out) {
                Ok(Some(end)) => return Next::End(end),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            }
        } else {
            self.room.say(self.seat, text, false).map(|_| ())
        };
        if result.is_err() {
            return Next::End(End::SlowConsumer);
        }
        if self.waiting() {
            return Next::Wait;
        }
        self.pace(now)
    }

    /// Spends one line of the rate limit: go on, or wait until the given moment.
    fn pace(&mut self, now: Instant) -> Next {
        match self.limit.as_mut().and_then(|l| l.spend(now)) {
            Some(until) => Next::Throttle(until),
            None => Next::Continue,
        }
    }

    /// A line longer than the limit arrived: say so, keep the connection.
    pub fn line_too_long(&mut self) -> Next {
        match self.reply(&Reply::Error(&Refusal::LineTooLong.to_string())) {
            Ok(()) => Next::Continue,
            Err(_) => Next::End(End::SlowConsumer),
        }
    }

    fn reply(&self, reply: &Reply<'_>) -> Result<(), RoomError> {
        self.room.reply(self.seat, reply)
    }

    fn error(&self, refusal: Refusal) -> Result<Option<End>, RoomError> {
        self.reply(&Reply::Error(&refusal.to_string()))
            .map(|()| None)
    }

    fn command(&mut self, cmd: &str, out: &mut Vec<u8>) -> Result<Option<End>, RoomError> {
        let (verb, args) = match cmd.find([' ', '\t']) {
            Some(i) => (&cmd[..i], cmd[i..].trim()),
            None => (cmd, ""),
        };
        match verb.to_ascii_lowercase().as_str() {
            "who" => {
                let members = self.hub.who(&self.room);
                self.reply(&Reply::Who {
                    room: self.room.name(),
                    members: &members,
                })?;
            }
            "rooms" => {
                let (rooms, more) = self.hub.rooms(100);
                self.reply(&Reply::Rooms(&rooms, more))?;
            }
            "join" => return self.join(args, out),
            "nick" => {
                if let Err(e) = validate_name(args) {
                    return self.error(Refusal::NickUsage(e));
                }
                if args == self.name {
                    return self.error(Refusal::AlreadyCalled(args.into()));
                }
                // Under --require-auth a person is only the name they logged in with: the same
                // answer whatever the target, registered or not.
                if self.hub.users.required() {
                    return self.error(Refusal::OnlyYourRegisteredName);
                }
                // A registered login is who one is, on each of one's connections at once.
                if self.person {
                    return self.error(Refusal::RegisteredNick(self.name.clone()));
                }
                // A registered name (or a look-alike of one, which is that name) is taken only
                // at the handshake, with its password.
                if self.hub.users.is_registered(args) {
                    return self.error(Refusal::NeedsPassword(args.into()));
                }
                if self.hub.clustered() {
                    self.wait_for_claim(self.room.name().to_owned(), AfterClaim::Nick(args.into()));
                    return Ok(None);
                }
                return self.rename(args);
            }
            "me" => {
                if args.is_empty() {
                    return self.error(Refusal::MeUsage);
                }
                self.room.say(self.seat, args, true)?;
            }
            "msg" => {
                let (to, text) = match args.find([' ', '\t']) {
                    Some(i) => (&args[..i], args[i..].trim_start()),
                    None => (args, ""),
                };
                if to.is_empty() || text.is_empty() {
                    return self.error(Refusal::MsgUsage);
                }
                match self.room.private(self.seat, to, text) {
                    Ok(()) => {}
                    Err(RoomError::NoSuchMember) => {
                        return self.error(Refusal::NoSuchMember(to.into()));
                    }
                    Err(e) => return Err(e),
                }
            }
            "quit" => {
                let _ = self.reply(&Reply::Notice("bye"));
                return Ok(Some(End::Quit));
            }
            "help" => self.reply(&Reply::Help)?,
            "history" => {
                let n = match args {
                    "" => 20,
                    n => match n.parse::<usize>() {
                        Ok(n) if (1..=MAX_REPLAY).contains(&n) => n,
                        _ => return self.error(Refusal::HistoryUsage),
                    },
                };
                if !self.room.history_kept() {
                    return self.error(Refusal::HistoryOff);
                }
                if !self.room.history_available() {
                    return self.error(Refusal::HistoryUnavailable);
                }
                let start = self.room.history(self.seat, n)?;
                self.start_replay(start);
            }
            _ => {
                let shown: String = verb.chars().take(32).collect();
                return self.error(Refusal::UnknownCommand(shown));
            }
        }
        Ok(None)
    }

    fn rename(&mut self, new: &str) -> Result<Option<End>, RoomError> {
        match self.room.rename(self.seat, new) {
            Ok(()) => {
                let old = std::mem::replace(&mut self.name, new.to_owned());
                self.hub.release(self.room.name(), &old, self.id, false);
                Ok(None)
            }
            Err(RoomError::NameTaken) => {
                self.hub.release(self.room.name(), new, self.id, false);
                self.error(taken(new, "this room"))
            }
            Err(RoomError::LooksLike(like)) => {
                self.hub.release(self.room.name(), new, self.id, false);
                self.error(Refusal::TooMuchLike {
                    name: new.into(),
                    like,
                    place: "this room".into(),
                })
            }
            Err(e) => {
                self.hub.release(self.room.name(), new, self.id, false);
                Err(e)
            }
        }
    }

    fn join(&mut self, room: &str, out: &mut Vec<u8>) -> Result<Option<End>, RoomError> {
        if let Err(e) = validate_room(room) {
            return self.error(Refusal::JoinUsage(e));
        }
        if room == self.room.name() {
            return self.error(Refusal::AlreadyIn(room.into()));
        }
        if self.hub.clustered() {
            self.wait_for_claim(room.to_owned(), AfterClaim::Join(room.to_owned()));
            return Ok(None);
        }
        self.join_now(room, out)
    }

    /// Asks the cluster for a name in a room; the command goes on in [`Session::poll_wait`].
    fn wait_for_claim(&mut self, room: String, then: AfterClaim) {
        let (hub, id, person) = (self.hub.clone(), self.id, self.person);
        let name = match &then {
            AfterClaim::Nick(new) => new.clone(),
            AfterClaim::Join(_) => self.name.clone(),
        };
        self.claim_wait = Some(ClaimWait {
            answer: Box::pin(async move { hub.claim(&room, &name, id, person).await }),
            then,
        });
    }

    fn join_now(&mut self, room: &str, out: &mut Vec<u8>) -> Result<Option<End>, RoomError> {
        // Take the seat in the new room first, so a taken name leaves the client where it was.
        let joined = self
            .hub
            .join(room, self.id, &self.name, self.format, self.person);
        match joined {
            Ok((new_room, seat)) => {
                let old = std::mem::replace(&mut self.room, new_room);
                let old_seat = std::mem::replace(&mut self.seat, seat);
                self.hub.leave(&old, old_seat, out, true);
                self.hub
                    .release(old.name(), &self.name, self.id, self.person);
                Ok(None)
            }
            Err(e) => {
                self.hub.release(room, &self.name, self.id, self.person);
                match e {
                    RoomError::NameTaken => self.error(taken(&self.name, room)),
                    RoomError::Full | RoomError::TooManyRooms | RoomError::LooksLike(_) => {
                        self.error(self.hub.refusal(&e, &self.name, room))
                    }
                    e => Err(e),
                }
            }
        }
    }

    /// Moves on whatever the session waits for: hands the room the next page of a replay, or
    /// completes a `/nick` or `/join` the cluster answered. Ready when something changed,
    /// Pending until then (or when nothing is awaited); Ready(Err) if the client was cut off
    /// meanwhile. Bytes for the client from a room it left go to `out`.
    pub fn poll_wait(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<u8>,
    ) -> Poll<Result<Option<End>, RoomError>> {
        if let Some(wait) = self.claim_wait.as_mut() {
            let answer = ready!(wait.answer.as_mut().poll(cx));
            let Some(wait) = self.claim_wait.take() else {
                return Poll::Pending;
            };
            return Poll::Ready(match (answer, wait.then) {
                (Ok(()), AfterClaim::Nick(new)) => self.rename(&new),
                (Ok(()), AfterClaim::Join(room)) => self.join_now(&room, out),
                (Err(ClaimError::Taken), AfterClaim::Nick(new)) => {
                    self.error(taken(&new, "this room"))
                }
                (Err(ClaimError::Taken), AfterClaim::Join(room)) => {
                    self.error(taken(&self.name, &room))
                }
                (Err(ClaimError::Unavailable(_)), _) => self.error(Refusal::ClusterUnavailable),
            });
        }
        let Some(replay) = self.replay.as_mut() else {
            return Poll::Pending;
        };
        let step = ready!(replay.poll(cx, &self.room, self.seat, self.format));
        if step != Ok(Step::Progress) {
            self.replay = None;
        }
        Poll::Ready(step.map(|_| None))
    }

    /// Leaves the room for good, moving what was still unread to `out`. At shutdown the room is not told (everyone is leaving), unless it spans a cluster: members
    /// on other nodes stay, and must hear of it.
    pub fn leave(&mut self, out: &mut Vec<u8>, announce: bool) {
        let announce = announce || self.hub.clustered();
        self.replay = None;
        self.hub.leave(&self.room, self.seat, out, announce);
        self.hub
            .release(self.room.name(), &self.name, self.id, self.person);
        // A claim still on its way would otherwise hold the name until the cluster's TTL.
        if let Some(wait) = self.claim_wait.take() {
            match wait.then {
                AfterClaim::Nick(new) => self.hub.release(self.room.name(), &new, self.id, false),
                AfterClaim::Join(room) => self.hub.release(&room, &self.name, self.id, self.person),
            }
        }
    }
}

/// `name NAME is already taken in PLACE` (`this room`, or the room of a `/join`).
fn taken(name: &str, place: &str) -> Refusal {
    Refusal::NameTaken {
        name: name.into(),
        place: place.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_a_burst_then_paces() {
        let start = Instant::now();
        let mut l = RateLimit::new(10.0, 3).unwrap();
        assert_eq!(l.spend(start), None);
        assert_eq!(l.spend(start), None);
        let until = l.spend(start).unwrap();
        assert!(until > start && until <= start + Duration::from_millis(101));
        // After a second the bucket is full again, but never above the burst.
        let later = start + Duration::from_secs(5);
        assert_eq!(l.spend(later), None);
        assert_eq!(l.spend(later), None);
        assert!(l.spend(later).is_some());
        assert!(RateLimit::new(0.0, 10).is_none());
    }
}
