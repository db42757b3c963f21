//! A room: its members, and one append-only log of rendered bytes per wire format.
//!
//! Fan-out is the hot path of a chat server, so a message is rendered once per format and
//! appended to the room's log; each member holds only a cursor into it. Publishing is one copy
//! under the room's lock and a wake-up for the members that were idle; a member's connection
//! copies everything from its cursor to the head into one write. Every member therefore sees the
//! same order (the log's), no recipient costs an allocation, and a member that falls behind by
//! more than `max_pending` bytes is cut off instead of holding the log (and the server's memory)
//! hostage. Lines meant for one member only (command replies, private messages) wait in that
//! member's own queue, tagged with the log position they were sent at, so they interleave with
//! room traffic in the order things happened.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use crate::act::Act;
use crate::bus::Envelope;
use crate::grace::Graces;
use crate::moderation::Net;
use crate::protocol::{Format, Reply, RoomEvent, Timestamp};
use crate::sequencer::{Here, Placed, Refuse, Sequencer};
use crate::store::{Deliver, MessageRef, Pending, PendingCount, PendingSpan, Store, StoredMessage};

/// Bytes queued for members in all rooms together (room logs not yet read by everyone, and
/// private lines), held against `--max-queued-total`. Each room adds and removes its own share
/// when its lock is released, and only when the share changed.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    max: usize,
    /// The thread that enforces the budget, unparked when `used` passes `max` (see
    /// `Hub::enforce_budget`). A thread of its own, so a busy runtime cannot delay it.
    enforcer: std::sync::OnceLock<std::thread::Thread>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(usize::MAX)
    }
}

impl Budget {
    pub fn new(max: usize) -> Self {
        Budget {
            used: AtomicUsize::new(0),
            max,
            enforcer: std::sync::OnceLock::new(),
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Sets the thread to unpark when the budget is exceeded.
    pub fn set_enforcer(&self, thread: std::thread::Thread) {
        let _ = self.enforcer.set(thread);
    }

    fn adjust(&self, was: usize, now: usize) {
        if now > was {
            let used = self.used.fetch_add(now - was, Ordering::Relaxed) + (now - was);
            if used > self.max {
                if let Some(t) = self.enforcer.get() {
                    t.unpark();
                }
            }
        } else {
            self.used.fetch_sub(was - now, Ordering::Relaxed);
        }
    }
}

/// A room's lock; releasing it updates the room's share of the budget.
struct Locked<'a> {
    guard: MutexGuard<'a, Inner>,
    budget: &'a Budget,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.guard
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.guard
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let inner = &mut *self.guard;
        let now = inner.logs.iter().map(|l| l.buf.len()).sum::<usize>()
            + inner.private_total
            + inner.held_total;
        if now != inner.accounted {
            self.budget.adjust(inner.accounted, now);
            inner.accounted = now;
        }
    }
}

/// Where a member sits in a room: its slot and its connection id (slots are reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seat {
    slot: usize,
    id: u64,
}

/// How a member's connection leaves a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parting {
    /// The room is told (`left`), now: a `leave`, `/quit`, `/join` elsewhere, a rule broken.
    Told,
    /// Nobody is told (shutdown on one server: everyone is leaving).
    Silent,
    /// The connection closed or dropped: the member stays as a ghost for the leave grace, if
    /// it has one (see [`crate::grace`]), else as [`Parting::Told`].
    Lost,
}

/// A member whose last connection closed or dropped, kept for the leave grace (see
/// [`crate::grace`]): it holds its name and its place, and `/who` lists it.
#[derive(Debug)]
struct Ghost {
    /// The connection that left.
    owner: u64,
    name: String,
    key: KeyHash,
    person: bool,
    addr: IpAddr,
}

/// How a join finds the room (see [`Inner::check_join`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entering {
    /// The name is free: the room is told.
    New,
    /// A person's connection joins the person's others: only it is told.
    Shares,
    /// The member comes back within its grace (ghost number N): only it is told.
    Returns(usize),
}

/// What [`Room::take`] found for a member.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// Bytes were appended to the output, and more are waiting.
    Data,
    /// Bytes were appended to the output, and that was all: the waker is stored, as for `Empty`.
    Drained,
    /// Nothing new: the member's waker is stored and will be woken by the next line for it.
    Empty,
    /// The member is no longer in this room: it was cut off as a slow consumer.
    Gone,
    /// The member was closed out of this room (kicked or banned): what it had not read, the
    /// reason last, waits for [`Room::leave`] to hand it over.
    Parted,
}

/// Why a join, rename or private message was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum RoomError {
    NameTaken,
    /// The name is too much like (has the same [`crate::protocol::name_key`] as) this
    /// member's.
    LooksLike(String),
    /// The room has `--max-room-members` members.
    Full,
    /// The server has `--max-rooms` rooms and this would be a new one.
    TooManyRooms,
    NoSuchMember,
    Gone,
}

#[derive(Debug, Default)]
struct Log {
    /// Absolute position of `buf[0]`.
    base: u64,
    buf: Vec<u8>,
    /// Members reading this log.
    members: usize,
    /// Of those, how many have unread bytes; when it drops to 0 the log is emptied.
    behind: usize,
    /// Length at which to look for members that fell too far behind.
    check_at: usize,
}

impl Log {
    fn head(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    fn clear_if_caught_up(&mut self, floor: usize) {
        if self.behind == 0 && !self.buf.is_empty() {
            self.base = self.head();
            self.buf.clear();
            if self.buf.capacity() > 64 * 1024 {
                self.buf.shrink_to(4096);
            }
            self.check_at = floor;
        }
    }
}

#[derive(Debug)]
struct Member {
    id: u64,
    name: String,
    /// The name's [`crate::protocol::name_key`]: names in a room are unique by it.
    key: KeyHash,
    format: Format,
    cursor: u64,
    /// Lines for this member only, each with the log position it was sent at.
    private: VecDeque<(u64, Vec<u8>)>,
    private_bytes: usize,
    /// The member's connection task, to wake when there is something for it.
    waker: Option<Waker>,
    /// True while the task waits for the room (its waker is current and on the waiters list).
    waiting: bool,
    /// A replay under way: the member's cursor stops at its place until it is over. Boxed, so
    /// an idle member pays a pointer for it.
    hold: Option<Box<Hold>>,
    /// A connection of a person (a registered name, logged in with its password): it shares
    /// its name with the person's other connections in the room, which are one member to the
    /// others (one `joined`, one `left`, one name in `/who`). A bool, in the padding after
    /// `waiting`: an idle member does not grow.
    person: bool,
    /// Where the connection comes from: a ban by address closes it out, and the admin API
    /// lists it.
    addr: IpAddr,
}

/// Where a replay (history on joining, `/history`) stands in a member's stream. The replay is
/// read from the store a page at a time as the member drains it; meanwhile the room's newer
/// traffic and later private lines wait behind it, so everything keeps its order, and every
/// byte held for the replay counts as the member's lag and towards the server's budget.
/// A name's key as a member keeps it: the two forms of [`crate::protocol::NameKey`] as hashes
/// keyed at random per process. A member holds 16 bytes instead of two strings (about 100
/// bytes with their allocations), and since nobody knows the keys, nobody can pick two names
/// whose hashes meet (by chance: one in 2^64 per pair of names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyHash {
    lower: u64,
    upper: u64,
}

impl KeyHash {
    fn of(key: &crate::protocol::NameKey) -> Self {
        use std::hash::BuildHasher;
        static STATE: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
        let state = STATE.get_or_init(std::hash::RandomState::new);
        KeyHash {
            lower: state.hash_one(&key.lower),
            upper: state.hash_one(&key.upper),
        }
    }

    fn clashes(&self, other: &KeyHash) -> bool {
        self.lower == other.lower || self.upper == other.upper
    }
}

#[derive(Debug)]
struct Hold {
    /// The log position the replay stands at.
    pos: u64,
    /// How many of the private lines queued when it began come before it.
    before: usize,
    /// The rendered page the member has not taken yet.
    page: Vec<u8>,
    /// Bytes of stored messages the session holds for the next pages.
    raw: usize,
}

impl Hold {
    fn bytes(&self) -> usize {
        self.page.len() + self.raw
    }
}

#[derive(Debug)]
struct Inner {
    next_id: u64,
    /// The newest message id in the log (with sync durability, behind `next_id` while
    /// messages wait for their commit).
    last_published: u64,
    logs: [Log; 3],
    slots: Vec<Option<Member>>,
    free: Vec<usize>,
    count: usize,
    waiters: Vec<usize>,
    /// Bytes in the members' private queues.
    private_total: usize,
    /// Bytes held for replays under way (see [`Hold`]).
    held_total: usize,
    /// This room's share of the budget, as last added to it.
    accounted: usize,
    /// Connections beyond each person's first: `count - extra` is how many people are here.
    extra: usize,
    /// Cluster mode: the nodes each person is in this room on, as the cluster's joins and
    /// leaves tell (see [`Room::deliver`]). Empty (no allocation) without a cluster.
    persons: std::collections::HashMap<String, Vec<String>>,
    /// Cluster mode: a person's first connection on this node, until its join comes back
    /// from the cluster ([`Placed::Away`]). If the person was in the room on another node
    /// already, the room does not show the join, and this connection alone is told it is in.
    awaiting_join: Vec<(String, Seat)>,
    /// Cluster mode: connections whose join is on its way through the cluster, with what
    /// they are to be shown right after their join line (the topic): held until the join
    /// comes back, so it does not come first.
    greetings: Vec<(Seat, String, Vec<u8>)>,
    /// Members closed out of the room (kicked, banned) whose connections have not yet taken
    /// what was left for them (see [`Take::Parted`]). Counted in `private_total`.
    parted: Vec<(Seat, Vec<u8>)>,
    /// Members within their leave grace (see [`crate::grace`]). Empty (no allocation) unless
    /// someone's connection dropped in the last seconds.
    ghosts: Vec<Ghost>,
}

/// A chat room. Cheap to share (`Arc<Room>`); every method takes the room's lock briefly and
/// never across an `.await`.
pub struct Room {
    name: Arc<str>,
    max_pending: usize,
    store: Arc<dyn Store>,
    budget: Arc<Budget>,
    /// Who orders this room's events: asked once per event, it says whether the room appends
    /// it now ([`Here`], one server) or it comes back through [`Room::deliver`] (a cluster).
    sequencer: Arc<dyn Sequencer>,
    /// The leave grace's deadlines; none: no grace (a member leaves at once).
    graces: Option<Arc<Graces>>,
    inner: Mutex<Inner>,
}

impl Drop for Room {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        self.budget.adjust(inner.accounted, 0);
    }
}

/// A replay that has begun: how its size is being found, and the last id it covers.
pub struct ReplayStart {
    pub size: ReplaySize,
    pub until: u64,
}

/// How a replay's size is found: the span of the last N messages, or the count after an id.
pub enum ReplaySize {
    Last(PendingSpan),
    After(u64, PendingCount),
}

/// Who joins a room: the connection, the name and format it has there, and what the room
/// must know of it (a person's connections share a name; a ban by address finds it).
#[derive(Debug, Clone, Copy)]
pub struct Joiner<'a> {
    pub id: u64,
    pub name: &'a str,
    pub format: Format,
    pub person: bool,
    pub addr: IpAddr,
}

/// The address of members joined without one (the room's own tests).
const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// What a joining member wants replayed before live messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    /// Only messages after this id (a resume); else the last `limit`.
    pub after: Option<u64>,
    pub limit: usize,
}

impl Room {
    pub fn new(name: &str, max_pending: usize, store: Arc<dyn Store>) -> Self {
        Self::with_budget(name, max_pending, store, Arc::default(), Arc::new(Here))
    }

    /// A room whose queued bytes count towards a budget shared with other rooms.
    pub fn with_budget(
        name: &str,
        max_pending: usize,
        store: Arc<dyn Store>,
        budget: Arc<Budget>,
        sequencer: Arc<dyn Sequencer>,
    ) -> Self {
        // Ids continue after the last one ever given in this room, also across restarts.
        let next_id = store.last_id(name) + 1;
        let floor = check_floor(max_pending);
        let log = || Log {
            check_at: floor,
            ..Log::default()
        };
        Room {
            name: name.into(),
            max_pending,
            store,
            budget,
            sequencer,
            graces: None,
            inner: Mutex::new(Inner {
                next_id,
                last_published: next_id - 1,
                logs: [log(), log(), log()],
                slots: Vec::new(),
                free: Vec::new(),
                count: 0,
                waiters: Vec::new(),
                private_total: 0,
                held_total: 0,
                accounted: 0,
                extra: 0,
                persons: std::collections::HashMap::new(),
                awaiting_join: Vec::new(),
                greetings: Vec::new(),
                parted: Vec::new(),
                ghosts: Vec::new(),
            }),
        }
    }

    /// The same room, keeping a member whose connection dropped for the leave grace.
    pub fn with_graces(mut self, graces: Arc<Graces>) -> Self {
        self.graces = Some(graces);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// How far behind a member may fall before it is cut off (`--max-pending`).
    pub fn max_pending(&self) -> usize {
        self.max_pending
    }

    fn lock(&self) -> Locked<'_> {
        // A panic while holding the lock would be a bug; the room's data stays consistent
        // enough to keep serving, so recover rather than take every member down with it.
        Locked {
            guard: self.inner.lock().unwrap_or_else(|e| e.into_inner()),
            budget: &self.budget,
        }
    }

    /// Connections in the room, and members within their leave grace (what
    /// `--max-room-members` bounds: each one costs memory).
    pub fn member_count(&self) -> usize {
        let inner = self.lock();
        inner.count + inner.ghosts.len()
    }

    /// Members as the others see them: a person connected several times counts once, and a
    /// member within its leave grace is still there.
    pub fn people(&self) -> usize {
        let inner = self.lock();
        inner.count - inner.extra + inner.ghosts.len()
    }

    /// True if `who` would take back a place held for it by the leave grace (a join then
    /// needs no new place: a full room still lets it in).
    pub fn would_return(&self, who: &Joiner<'_>) -> bool {
        let key = KeyHash::of(&crate::protocol::name_key(who.name));
        let inner = self.lock();
        matches!(
            inner.check_join(who.name, &key, who.person, who.addr),
            Ok(Entering::Returns(_))
        )
    }

    /// Adds a member (its cursor at the head: it sees what is sent from now on) and tells the room.
    pub fn join(&self, id: u64, name: &str, format: Format) -> Result<Seat, RoomError> {
        let who = Joiner {
            id,
            name,
            format,
            person: false,
            addr: LOOPBACK,
        };
        self.join_replaying(who, None).map(|(seat, _)| seat)
    }

    /// Adds another connection of a person (see [`Room::join_replaying`]).
    pub fn join_person(&self, id: u64, name: &str, format: Format) -> Result<Seat, RoomError> {
        let who = Joiner {
            id,
            name,
            format,
            person: true,
            addr: LOOPBACK,
        };
        self.join_replaying(who, None).map(|(seat, _)| seat)
    }

    /// Joins, and (if asked) queries the history up to the moment of joining: the query is
    /// queued under the room's lock, after every earlier message's append and before any later
    /// one's, so history and live messages meet with no gap and no duplicate.
    ///
    /// A `person` connection (see [`Member::person`]) may join where the same person already
    /// is, under the same name: the room is told only of the person's first connection. Any
    /// other clash (a guest's name, a look-alike, a guest joining a person) is refused as ever.
    pub fn join_replaying(
        &self,
        who: Joiner<'_>,
        replay: Option<Replay>,
    ) -> Result<(Seat, Option<ReplayStart>), RoomError> {
        let Joiner {
            id,
            name,
            format,
            person,
            addr,
        } = who;
        let key = KeyHash::of(&crate::protocol::name_key(name));
        let mut inner = self.lock();
        let entering = inner.check_join(name, &key, person, addr)?;
        let log = &mut inner.logs[format as usize];
        log.members += 1;
        let member = Member {
            id,
            name: name.to_owned(),
            key,
            format,
            cursor: log.head(),
            private: VecDeque::new(),
            private_bytes: 0,
            waker: None,
            waiting: false,
            hold: replay.map(|_| {
                Box::new(Hold {
                    pos: log.head(),
                    before: 0,
                    page: Vec::new(),
                    raw: 0,
                })
            }),
            person,
            addr,
        };
        let slot = match inner.free.pop() {
            Some(slot) => {
                inner.slots[slot] = Some(member);
                slot
            }
            None => {
                inner.slots.push(Some(member));
                inner.slots.len() - 1
            }
        };
        inner.count += 1;
        let until = inner.last_published;
        let history = replay.map(|r| self.replay_start(r, until));
        if let Entering::Returns(ghost) = entering {
            // Back within its grace: for the others it never left. It alone hears that it is
            // in, as every connection's first line after its handshake says (the same bytes).
            let g = inner.ghosts.swap_remove(ghost);
            tracing::info!(room = %self.name, name, id, was = g.owner, "back within the leave grace");
            self.tell_joined(&mut inner, Seat { slot, id }, name);
        } else if entering == Entering::Shares {
            // The room knows the person already; the new connection alone hears that it is in,
            // as every connection's first line after its handshake says.
            inner.extra += 1;
            self.tell_joined(&mut inner, Seat { slot, id }, name);
        } else {
            let placed = self.announce_member(&mut inner, RoomEvent::Join { name }, person);
            if placed == Placed::Away {
                inner
                    .greetings
                    .push((Seat { slot, id }, name.to_owned(), Vec::new()));
            }
            if person && placed == Placed::Away {
                // Shown or not when it comes back (see `Room::deliver`): till then, waiting.
                inner
                    .awaiting_join
                    .push((name.to_owned(), Seat { slot, id }));
            }
        }
        Ok((Seat { slot, id }, history))
    }

    /// Asks the store for a replay's size: queued under the room's lock, after every earlier
    /// message's append and before any later one's.
    fn replay_start(&self, r: Replay, until: u64) -> ReplayStart {
        let size = match r.after {
            Some(after) => ReplaySize::After(after, self.store.count(&self.name, after, until)),
            None => ReplaySize::Last(self.store.last_span(&self.name, until, r.limit)),
        };
        ReplayStart { size, until }
    }

    /// A page of a replay: up to `limit` stored messages after `after`, up to `until`.
    pub fn history_page(&self, after: u64, until: u64, limit: usize) -> Pending {
        self.store.query(&self.name, Some(after), until, limit)
    }

    /// Begins a replay of the last `limit` stored messages for a member (`/history`): it goes
    /// out where the member stands now, before anything that comes later.
    pub fn history(&self, seat: Seat, limit: usize) -> Result<ReplayStart, RoomError> {
        self.history_before(seat, limit, None)
    }

    /// [`Room::history`] of the messages with ids below `before` (older history, a page at a
    /// time: the client passes the first id it has). Read in pages like any replay.
    pub fn history_before(
        &self,
        seat: Seat,
        limit: usize,
        before: Option<u64>,
    ) -> Result<ReplayStart, RoomError> {
        let mut inner = self.lock();
        let until = match before {
            Some(before) => inner.last_published.min(before.saturating_sub(1)),
            None => inner.last_published,
        };
        let inner = &mut *inner;
        let Some(m) = inner.slots.get_mut(seat.slot).and_then(|m| m.as_mut()) else {
            return Err(RoomError::Gone);
        };
        if m.id != seat.id {
            return Err(RoomError::Gone);
        }
        let pos = inner.logs[m.format as usize].head();
        if let Some(h) = m.hold.take() {
            // One replay at a time; a new one ends the old one where it was.
            inner.held_total -= h.bytes();
            m.release(*h, &mut inner.private_total);
        }
        m.hold = Some(Box::new(Hold {
            pos,
            before: m.private.len(),
            page: Vec::new(),
            raw: 0,
        }));
        Ok(self.replay_start(Replay { after: None, limit }, until))
    }

    /// Hands a member the next rendered page of its replay; `raw` is what the session still
    /// holds for the pages after it. Both count as the member's lag.
    pub fn push_replay(&self, seat: Seat, page: &[u8], raw: usize) -> Result<(), RoomError> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(m) = inner.slots.get_mut(seat.slot).and_then(|m| m.as_mut()) else {
            return Err(RoomError::Gone);
        };
        if m.id != seat.id {
            return Err(RoomError::Gone);
        }
        let Some(h) = m.hold.as_mut() else {
            return Err(RoomError::Gone);
        };
        let was = h.bytes();
        h.page.extend_from_slice(page);
        h.raw = raw;
        inner.held_total = inner.held_total - was + h.bytes();
        let head = inner.logs[m.format as usize].head();
        if lag(m, head) > self.max_pending {
            if let Some(m) = inner.remove(seat.slot, self.max_pending) {
                tracing::info!(room = %self.name, name = %m.name, limit = self.max_pending, "cut off: slow consumer");
                m.wake();
            }
            return Err(RoomError::Gone);
        }
        if m.waiting {
            m.waiting = false;
            m.wake();
        }
        Ok(())
    }

    /// True once the member has taken the last page it was handed.
    pub fn replay_drained(&self, seat: Seat) -> Result<bool, RoomError> {
        let inner = self.lock();
        let m = inner.member(seat).ok_or(RoomError::Gone)?;
        Ok(m.hold.as_ref().is_none_or(|h| h.page.is_empty()))
    }

    /// Ends a member's replay: what is left of it goes out, then everything that waited.
    pub fn end_replay(&self, seat: Seat) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(m) = inner.slots.get_mut(seat.slot).and_then(|m| m.as_mut()) else {
            return;
        };
        if m.id != seat.id {
            return;
        }
        if let Some(h) = m.hold.take() {
            inner.held_total -= h.bytes();
            m.release(*h, &mut inner.private_total);
            m.wake();
        }
    }

    /// The highest message id the room has given or shown (0: none yet): a mark's `last`.
    pub fn last_id(&self) -> u64 {
        let inner = self.lock();
        inner.last_published.max(inner.next_id.saturating_sub(1))
    }

    /// A message from `name`, who need not be a member here (a `/msg` kept in a direct
    /// conversation): ordered, stored and shown as a member's would be. Its id, where the room
    /// is its own order (0 in a cluster, where it shows when the stream delivers it).
    pub fn post(self: &Arc<Self>, name: &str, text: &str) -> u64 {
        let mut inner = self.lock();
        let id = inner.next_id;
        let event = RoomEvent::Message { id, name, text };
        let sender = || -> Refuse {
            let room = self.name.to_string();
            Box::new(move |why| tracing::warn!(room, why, "a conversation's copy was not kept"))
        };
        match self.sequencer.message(&self.name, &event, &sender) {
            Placed::Local => {
                inner.next_id += 1;
                self.append_message(&mut inner, event);
                id
            }
            Placed::Away => 0,
            Placed::Refused(why) => {
                tracing::warn!(room = %self.name, %why, "a conversation's copy was not kept");
                0
            }
        }
    }

    /// False when this server keeps no history at all (`--history off`).
    pub fn history_kept(&self) -> bool {
        self.store.keeps()
    }

    /// Whether history is being stored right now.
    pub fn history_available(&self) -> bool {
        self.store.available()
    }

    /// Removes a member, first moving everything still unread for it to `out` so that nothing
    /// it was sent is lost, and (if `announce`) tells the others. Returns how many members remain.
    pub fn leave(&self, seat: Seat, out: &mut Vec<u8>, announce: bool) -> usize {
        let how = if announce {
            Parting::Told
        } else {
            Parting::Silent
        };
        self.part(seat, out, how).0
    }

    /// [`Room::leave`], as `how` says; returns how many members remain (ghosts included) and
    /// whether the member stays as a ghost (its name's claim is then kept for it).
    pub fn part(&self, seat: Seat, out: &mut Vec<u8>, how: Parting) -> (usize, bool) {
        let mut inner = self.lock();
        let mut ghost = false;
        if let Some(bytes) = inner.take_parted(seat) {
            out.extend_from_slice(&bytes);
        } else if inner.member(seat).is_some() {
            inner.end_hold(seat.slot);
            inner.copy_out(seat.slot, out, usize::MAX);
            if let Some(m) = inner.remove(seat.slot, self.max_pending) {
                // Told even when nobody is left here: in a cluster, members on other nodes
                // must hear of it (on one server, an empty room renders it for nobody). A
                // person leaves with its last connection.
                if inner.last_of(&m) {
                    ghost = how == Parting::Lost && self.haunt(&mut inner, &m);
                    if !ghost && how != Parting::Silent {
                        let leave = RoomEvent::Leave { name: &m.name };
                        self.announce_member(&mut inner, leave, m.person);
                    }
                }
            }
        }
        (inner.count + inner.ghosts.len(), ghost)
    }

    /// Keeps `m` (its last connection just dropped) as a ghost, if the leave grace takes it.
    fn haunt(&self, inner: &mut Inner, m: &Member) -> bool {
        let Some(graces) = &self.graces else {
            return false;
        };
        if !graces.admit(&self.name, m.id, &m.name, m.person, m.addr) {
            return false;
        }
        tracing::info!(room = %self.name, name = %m.name, id = m.id, "kept for the leave grace");
        inner.ghosts.push(Ghost {
            owner: m.id,
            name: m.name.clone(),
            key: m.key,
            person: m.person,
            addr: m.addr,
        });
        true
    }

    /// The leave grace of the member whose connection `owner` dropped is over: it leaves,
    /// and (if `announce`) the room is told. False if it came back, or left otherwise.
    pub fn end_grace(&self, owner: u64, announce: bool) -> bool {
        let mut inner = self.lock();
        let Some(i) = inner.ghosts.iter().position(|g| g.owner == owner) else {
            return false;
        };
        let g = inner.ghosts.swap_remove(i);
        tracing::info!(room = %self.name, name = %g.name, id = owner, "leave grace over");
        if announce {
            self.announce_member(&mut inner, RoomEvent::Leave { name: &g.name }, g.person);
        }
        true
    }

    /// Ends the grace of the ghosts `hit` picks (a kick or a ban found them): the room is told
    /// they left, as it is of a member it closes out.
    fn exorcise(&self, inner: &mut Inner, hit: impl Fn(&Ghost) -> bool) {
        if inner.ghosts.iter().any(&hit) {
            let (gone, kept) = std::mem::take(&mut inner.ghosts).into_iter().partition(hit);
            inner.ghosts = kept;
            for g in gone {
                self.announce_member(inner, RoomEvent::Leave { name: &g.name }, g.person);
            }
        }
    }

    /// Sends a message. Where the room is its own order (one server), it takes the room's next
    /// id, is rendered once per format in use and appended; in a cluster it shows when it comes
    /// back (see [`Room::deliver`]), and its id is not known here (0).
    pub fn say(self: &Arc<Self>, seat: Seat, text: &str, action: bool) -> Result<u64, RoomError> {
        let mut inner = self.lock();
        let Some(m) = inner.member_mut(seat) else {
            return Err(RoomError::Gone);
        };
        // The name is moved out (and back) because appending needs the whole room mutably;
        // nobody else sees the room until the lock is released.
        let name = std::mem::take(&mut m.name);
        let id = inner.next_id;
        let event = if action {
            RoomEvent::Action {
                id,
                name: &name,
                text,
            }
        } else {
            RoomEvent::Message {
                id,
                name: &name,
                text,
            }
        };
        // Made only by a sequencer that may fail after this returns (the lock is gone by then).
        let sender = || -> Refuse {
            let room = self.clone();
            Box::new(move |why| {
                // Gone already: nobody to tell.
                let _ = room.reply(seat, &Reply::Error(why));
            })
        };
        let said = match self.sequencer.message(&self.name, &event, &sender) {
            Placed::Local => {
                inner.next_id += 1;
                self.append_message(&mut inner, event);
                id
            }
            Placed::Away => 0,
            Placed::Refused(why) => {
                // The member is here: the lock was held since it was found.
                let _ = self.reply_locked(&mut inner, seat, &Reply::Error(&why.to_string()));
                0
            }
        };
        if let Some(m) = inner.member_mut(seat) {
            m.name = name;
        }
        crate::metrics::message_received();
        Ok(said)
    }

    /// Appends a message this room ordered itself to its log and its store: the store is
    /// handed it under the room's lock, so it keeps the room's order, and a history query
    /// queued later sees it.
    fn append_message(self: &Arc<Self>, inner: &mut Inner, event: RoomEvent<'_>) {
        let (id, name, text, action) = match event {
            RoomEvent::Message { id, name, text } => (id, name, text, false),
            RoomEvent::Action { id, name, text } => (id, name, text, true),
            _ => return, // members say messages and actions only
        };
        let ts = Timestamp::now();
        let msg = MessageRef {
            id,
            name,
            text,
            ts,
            action,
        };
        if self.store.durable() {
            // Delivered by the store's writer once it is on disk, in id order.
            let room = self.clone();
            let stored = msg.to_owned();
            let deliver: Deliver = Box::new(move || room.publish_stored(&stored));
            self.store.append(&self.name, &msg, Some(deliver));
        } else {
            self.publish_at(inner, event, Some(ts));
            if self.store.keeps() {
                self.store.append(&self.name, &msg, None);
            }
        }
    }

    /// Publishes a message the store has just made durable.
    fn publish_stored(&self, m: &StoredMessage) {
        let (id, name, text) = (m.id, m.name.as_str(), m.text.as_str());
        let event = if m.action {
            RoomEvent::Action { id, name, text }
        } else {
            RoomEvent::Message { id, name, text }
        };
        let mut inner = self.lock();
        self.publish_at(&mut inner, event, Some(m.ts));
    }

    /// Whether `seat`'s member could be renamed `new` right now, as [`Room::rename`] checks,
    /// without renaming. A rename over many rooms (a version-2 `nick`) asks every room first,
    /// so a clash in one room does not show a rename and its undoing in the others.
    pub fn rename_check(&self, seat: Seat, new: &str) -> Result<(), RoomError> {
        let key = KeyHash::of(&crate::protocol::name_key(new));
        self.lock().check_free(new, &key, Some(seat.slot))
    }

    /// Renames a member if the new name is free in this room, and tells the room.
    pub fn rename(&self, seat: Seat, new: &str) -> Result<(), RoomError> {
        let key = KeyHash::of(&crate::protocol::name_key(new));
        let mut inner = self.lock();
        // One's own name in another case or form is a rename, not a clash.
        inner.check_free(new, &key, Some(seat.slot))?;
        let Some(m) = inner.member_mut(seat) else {
            return Err(RoomError::Gone);
        };
        m.key = key;
        let old = std::mem::replace(&mut m.name, new.to_owned());
        self.announce(&mut inner, RoomEvent::Nick { old: &old, new });
        Ok(())
    }

    /// The member with the most unread bytes, and how many.
    pub fn largest_lag(&self) -> Option<(usize, Seat)> {
        let inner = self.lock();
        inner
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, m)| {
                let m = m.as_ref()?;
                let lag = lag(m, inner.logs[m.format as usize].head());
                Some((lag, Seat { slot, id: m.id }))
            })
            .max_by_key(|(lag, _)| *lag)
    }

    /// Cuts a member off, `why` (over `--max-queued-total`, see `Hub::enforce_budget`; or a
    /// replay not read in time). False if it was gone already.
    pub fn cut_off(&self, seat: Seat, why: &str) -> bool {
        let mut inner = self.lock();
        let Some((format, behind)) = inner.member(seat).map(|m| {
            let head = inner.logs[m.format as usize].head();
            (m.format, lag(m, head))
        }) else {
            return false;
        };
        self.cut_members(&mut inner, format, vec![(seat.slot, behind)], why);
        true
    }

    /// False once the member left or was cut off.
    pub fn contains(&self, seat: Seat) -> bool {
        let inner = self.lock();
        inner.member(seat).is_some() || inner.parted.iter().any(|(s, _)| *s == seat)
    }

    /// Wakes every member's connection, whatever it is waiting for (at shutdown).
    pub fn wake_everyone(&self) {
        for m in self.lock().slots.iter().flatten() {
            if let Some(w) = &m.waker {
                w.wake_by_ref();
            }
        }
    }

    /// The members' names, sorted, each once (a person connected several times is one member).
    pub fn names(&self) -> Vec<String> {
        let inner = self.lock();
        let mut names: Vec<String> = inner
            .slots
            .iter()
            .flatten()
            .map(|m| m.name.clone())
            .chain(inner.ghosts.iter().map(|g| g.name.clone()))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Queues a reply for one member, after everything the room sent it so far.
    pub fn reply(&self, seat: Seat, reply: &Reply<'_>) -> Result<(), RoomError> {
        let mut inner = self.lock();
        self.reply_locked(&mut inner, seat, reply)
    }

    fn reply_locked(
        &self,
        inner: &mut Inner,
        seat: Seat,
        reply: &Reply<'_>,
    ) -> Result<(), RoomError> {
        let Some(m) = inner.member(seat) else {
            return Err(RoomError::Gone);
        };
        let mut bytes = Vec::new();
        reply.render(m.format, &mut bytes);
        inner.push_private(seat.slot, bytes, self.max_pending);
        Ok(())
    }

    /// Queues bytes already rendered for one member (a version-2 answer, which carries its
    /// request's id), after everything the room sent it so far.
    pub fn send_to(&self, seat: Seat, bytes: Vec<u8>) -> Result<(), RoomError> {
        let mut inner = self.lock();
        if inner.member(seat).is_none() {
            return Err(RoomError::Gone);
        }
        inner.push_private(seat.slot, bytes, self.max_pending);
        Ok(())
    }

    /// A private message from `seat` to the member called `to`; both get a copy: every
    /// connection of `to` (a person may have several), and every connection of the sender's
    /// person (or the sender alone, for a guest).
    ///
    /// `elsewhere` says whether `to` is in the room on another node (asked only when no one
    /// here is called so); in a cluster the message also goes to the other nodes, which
    /// deliver it to their connections of `to` and of the sending person.
    pub fn private(
        &self,
        seat: Seat,
        to: &str,
        text: &str,
        elsewhere: impl FnOnce() -> bool,
    ) -> Result<(), RoomError> {
        let mut inner = self.lock();
        let Some((from, from_person)) = inner.member(seat).map(|m| (m.name.clone(), m.person))
        else {
            return Err(RoomError::Gone);
        };
        let targets = inner.find_all(to);
        if targets.is_empty() && !elsewhere() {
            return Err(RoomError::NoSuchMember);
        }
        if let Placed::Refused(why) = self.sequencer.private(&self.name, &from, to, text) {
            // The recipient is only elsewhere: nobody gets it, and the sender must know.
            // (With connections here too, those get it, as the sender's copy shows.)
            if targets.is_empty() {
                return self.reply_locked(&mut inner, seat, &Reply::Error(&why.to_string()));
            }
        }
        let senders = if from_person {
            inner.find_all(&from)
        } else {
            vec![seat.slot]
        };
        self.copy_private(&mut inner, &targets, &senders, &from, to, text);
        Ok(())
    }

    /// Queues a private message for its recipient's connections (`targets`, incoming) and
    /// its sender's (`senders`, outgoing); one copy for a note to oneself.
    fn copy_private(
        &self,
        inner: &mut Inner,
        targets: &[usize],
        senders: &[usize],
        from: &str,
        to: &str,
        text: &str,
    ) {
        let incoming = targets.iter().map(|&slot| (slot, true));
        let outgoing = senders.iter().map(|&slot| (slot, false));
        for (slot, incoming) in incoming.chain(outgoing) {
            if incoming && senders.contains(&slot) {
                continue; // a note to oneself: one copy is enough
            }
            if let Some(m) = inner.slots[slot].as_ref() {
                let mut bytes = Vec::new();
                Reply::Private {
                    from,
                    to,
                    text,
                    incoming,
                }
                .render(m.format, &mut bytes);
                inner.push_private(slot, bytes, self.max_pending);
            }
        }
    }

    /// A private message sent on another node: copies for this node's connections of its
    /// recipient (incoming) and of its sender, if a person (outgoing, as on the sender's node).
    pub fn private_from_elsewhere(&self, note: &crate::bus::PrivateNote) {
        let mut inner = self.lock();
        let targets = inner.find_all(&note.to);
        let senders: Vec<usize> = inner
            .find_all(&note.from)
            .into_iter()
            .filter(|&slot| inner.slots[slot].as_ref().is_some_and(|m| m.person))
            .collect();
        self.copy_private(
            &mut inner, &targets, &senders, &note.from, &note.to, &note.text,
        );
    }

    /// Keeps `waker` to wake if the member is cut off (or sent something) while its connection
    /// waits for its socket rather than for the room.
    pub fn watch(&self, seat: Seat, waker: &Waker) {
        let mut inner = self.lock();
        if let Some(m) = inner.member_mut(seat) {
            match &mut m.waker {
                Some(w) => w.clone_from(waker),
                None => m.waker = Some(waker.clone()),
            }
        }
    }

    /// Copies up to about `max` unread bytes for a member into `out`; when there are none,
    /// keeps `waker` to wake when there are.
    pub fn take(&self, seat: Seat, out: &mut Vec<u8>, max: usize, waker: &Waker) -> Take {
        let mut inner = self.lock();
        if inner.member(seat).is_none() {
            if inner.parted.iter().any(|(s, _)| *s == seat) {
                return Take::Parted;
            }
            return Take::Gone;
        }
        let copied = inner.copy_out(seat.slot, out, max);
        if copied {
            let floor = check_floor(self.max_pending);
            for log in inner.logs.iter_mut() {
                log.clear_if_caught_up(floor);
            }
        }
        let inner = &mut *inner;
        let Some(m) = inner.slots[seat.slot].as_mut() else {
            return Take::Gone;
        };
        let head = inner.logs[m.format as usize].head();
        if let Some(h) = &m.hold {
            if copied && h.page.is_empty() {
                // The page is taken: the session fetches the next one in this task's next poll.
                waker.wake_by_ref();
            }
        }
        if m.has_data(head) {
            return Take::Data;
        }
        // Everything is taken: leave the waker now, which saves the caller coming back (and
        // taking the lock again) only to find nothing.
        match &mut m.waker {
            Some(w) => w.clone_from(waker),
            None => m.waker = Some(waker.clone()),
        }
        if !m.waiting {
            m.waiting = true;
            inner.waiters.push(seat.slot);
        }
        if copied {
            Take::Drained
        } else {
            Take::Empty
        }
    }

    /// Tells the room of a join, leave or rename, as its sequencer places it: into the log
    /// now, or (in a cluster) when it comes back in the cluster's order.
    fn announce(&self, inner: &mut Inner, event: RoomEvent<'_>) {
        self.announce_member(inner, event, false);
    }

    /// Tells one connection of a person that it is in the room (a private line, as the join
    /// line that every connection's first line after its handshake is).
    fn tell_joined(&self, inner: &mut Inner, seat: Seat, name: &str) {
        let Some(format) = inner.member(seat).map(|m| m.format) else {
            return;
        };
        let mut line = Vec::new();
        let event = RoomEvent::Join { name };
        match format {
            Format::Text => event.render_text(&mut line),
            Format::Json | Format::Frames => {
                event.render_json(&self.name, Timestamp::now(), &mut line)
            }
        }
        inner.push_private(seat.slot, line, self.max_pending);
    }

    /// A member's join or leave (see [`Sequencer::announce`] for a `person`'s), or a rename.
    fn announce_member(&self, inner: &mut Inner, event: RoomEvent<'_>, person: bool) -> Placed {
        let placed = self.sequencer.announce(&self.name, &event, person);
        if placed == Placed::Local {
            self.publish_locked(inner, event);
        }
        placed
    }

    /// Cluster mode, a room just made on this node: the persons other nodes have in it, so
    /// that their joins and leaves from now on are shown as everywhere else (see
    /// [`Room::deliver`]). This node's own are not among them: it has no member here yet.
    pub fn seed_persons(&self, persons: Vec<(String, String)>) {
        if persons.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for (name, node) in persons {
            let nodes = inner.persons.entry(name).or_default();
            if !nodes.contains(&node) {
                nodes.push(node);
            }
        }
    }

    /// Appends an event the cluster delivered: `seq` is its place in the cluster's order, and
    /// the id of a message. History queries end at the last one delivered, so a member joining
    /// now gets everything before it from history and everything after it live.
    ///
    /// A person's join or leave on a node is shown only if it is the person's first node in
    /// the room or its last: every node reads the same events in the same order, so every node
    /// shows the same one `joined` and one `left`. `ours`: the person's join or leave is this
    /// node's, the one a connection here may wait for (see [`Inner::awaiting_join`]).
    pub fn deliver(&self, seq: u64, envelope: &Envelope, ours: bool) {
        let mut inner = self.lock();
        self.deliver_locked(&mut inner, seq, envelope, ours);
        if let crate::bus::Event::Join { name, .. } = &envelope.event {
            // Whoever waited for this join to show is shown its greeting now, after it.
            while let Some(i) = inner.greetings.iter().position(|(_, n, _)| n == name) {
                let (seat, _, bytes) = inner.greetings.swap_remove(i);
                if !bytes.is_empty() && inner.member(seat).is_some() {
                    inner.push_private(seat.slot, bytes, self.max_pending);
                }
            }
        }
    }

    /// Shows a member, right after its own join line, what a joining member is shown (the
    /// topic); in a cluster, once its join has come back.
    pub fn greet(&self, seat: Seat, bytes: Vec<u8>) {
        let mut inner = self.lock();
        if let Some(g) = inner.greetings.iter_mut().find(|(s, _, _)| *s == seat) {
            g.2.extend_from_slice(&bytes);
        } else if inner.member(seat).is_some() {
            inner.push_private(seat.slot, bytes, self.max_pending);
        }
    }

    fn deliver_locked(&self, inner: &mut Locked<'_>, seq: u64, envelope: &Envelope, ours: bool) {
        if let Some(node) = envelope.person_node() {
            let shown = inner.person_moved(envelope, node);
            if let (true, crate::bus::Event::Join { name, .. }) = (ours, &envelope.event) {
                let waiting = inner.awaiting_join.iter().position(|(n, _)| n == name);
                if let Some(i) = waiting {
                    let (_, seat) = inner.awaiting_join.swap_remove(i);
                    if !shown {
                        self.tell_joined(inner, seat, name);
                    }
                }
            }
            if !shown {
                return;
            }
        }
        self.publish_at(
            inner,
            envelope.as_room_event(seq),
            Some(Timestamp(envelope.ts)),
        );
        inner.last_published = inner.last_published.max(seq);
    }

    fn publish_locked(&self, inner: &mut Inner, event: RoomEvent<'_>) {
        self.publish_at(inner, event, None);
    }

    /// Appends an event; `ts` is its time if it already has one (a stored message).
    fn publish_at(&self, inner: &mut Inner, event: RoomEvent<'_>, mut ts: Option<Timestamp>) {
        if let RoomEvent::Message { id, .. } | RoomEvent::Action { id, .. } = event {
            inner.last_published = id;
            crate::metrics::delivered(inner.count);
        }
        for format in Format::ALL {
            let log = &mut inner.logs[format as usize];
            if log.members == 0 {
                continue;
            }
            match format {
                Format::Text => event.render_text(&mut log.buf),
                Format::Json => {
                    let ts = *ts.get_or_insert_with(Timestamp::now);
                    event.render_json(&self.name, ts, &mut log.buf);
                }
                // The WebSocket members' frame, made once for all of them.
                Format::Frames => {
                    let ts = *ts.get_or_insert_with(Timestamp::now);
                    let start = log.buf.len();
                    event.render_json(&self.name, ts, &mut log.buf);
                    crate::frame::frame_lines(&mut log.buf, start);
                }
            }
            log.behind = log.members;
            if log.buf.len() >= log.check_at {
                self.cut_off_laggards(inner, format);
            }
        }
        if let RoomEvent::Act(act) = event {
            if act.kind.expels() {
                self.expel(inner, &act);
            }
        }
        inner.wake_all();
    }

    /// Closes the target of a kick or a ban out of the room, on every node (each node does it
    /// for its own connections as the event reaches it): each connection keeps what it had
    /// not read (the kick or ban line last) until it takes it, then its seat is gone. Whoever
    /// leaves the room with it is told as any leave is.
    fn expel(&self, inner: &mut Inner, act: &Act<'_>) {
        let key = act
            .target
            .map(|t| KeyHash::of(&crate::protocol::name_key(t)));
        let net = act.net.and_then(|n| n.parse::<Net>().ok());
        let hit: Vec<usize> = inner
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, m)| {
                let m = m.as_ref()?;
                let by_name = key.is_some_and(|k| m.key.clashes(&k));
                let by_addr = net.is_some_and(|n| n.contains(m.addr));
                (by_name || by_addr).then_some(slot)
            })
            .collect();
        self.close_out(inner, hit, None);
        self.exorcise(inner, |g| {
            key.is_some_and(|k| g.key.clashes(&k)) || net.is_some_and(|n| n.contains(g.addr))
        });
    }

    /// Closes the connections in `slots` out of the room (see [`Room::expel`]); `last` is a
    /// line each gets after what it had not read.
    fn close_out(&self, inner: &mut Inner, slots: Vec<usize>, last: Option<&Reply<'_>>) {
        let mut gone = Vec::new();
        for slot in slots {
            inner.end_hold(slot);
            let mut bytes = Vec::new();
            inner.copy_out(slot, &mut bytes, usize::MAX);
            let Some(m) = inner.remove(slot, self.max_pending) else {
                continue;
            };
            if let Some(reply) = last {
                reply.render(m.format, &mut bytes);
            }
            tracing::info!(room = %self.name, name = %m.name, "closed out of the room");
            inner.private_total += bytes.len();
            inner.parted.push((Seat { slot, id: m.id }, bytes));
            m.wake();
            if inner.last_of(&m) {
                gone.push((m.name, m.person));
            }
        }
        for (name, person) in gone {
            self.announce_member(inner, RoomEvent::Leave { name: &name }, person);
        }
    }

    /// Closes every connection `matches` picks (by name and address) out of the room, each
    /// told `why` last: a ban on the whole server, which no room event carries.
    pub fn close_out_where(
        &self,
        matches: impl Fn(&str, IpAddr) -> bool,
        why: &Reply<'_>,
    ) -> usize {
        let mut inner = self.lock();
        let hit: Vec<usize> = inner
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, m)| {
                m.as_ref()
                    .filter(|m| matches(&m.name, m.addr))
                    .map(|_| slot)
            })
            .collect();
        let n = hit.len();
        self.close_out(&mut inner, hit, Some(why));
        self.exorcise(&mut inner, |g| matches(&g.name, g.addr));
        inner.wake_all();
        n
    }

    /// Shows a moderation action in the room, in its order (on every node of a cluster); a
    /// kick or a ban closes its target out as it is shown (see [`Room::expel`]).
    pub fn act(&self, act: Act<'_>) {
        let mut inner = self.lock();
        self.announce(&mut inner, RoomEvent::Act(act));
    }

    /// The connections in the room: name, address, and whether a person's (for the admin API).
    pub fn members(&self) -> Vec<(String, IpAddr, bool)> {
        let inner = self.lock();
        inner
            .slots
            .iter()
            .flatten()
            .map(|m| (m.name.clone(), m.addr, m.person))
            .collect()
    }

    /// Removes every reader of `format`'s log that is more than `max_pending` behind, and drops
    /// the log's prefix that nobody needs any more.
    fn cut_off_laggards(&self, inner: &mut Inner, format: Format) {
        let head = inner.logs[format as usize].head();
        let mut cut = Vec::new();
        for (slot, m) in inner.slots.iter().enumerate() {
            if let Some(m) = m {
                if m.format == format && lag(m, head) > self.max_pending {
                    cut.push((slot, lag(m, head)));
                }
            }
        }
        self.cut_members(inner, format, cut, "more than --max-pending behind");
    }

    /// Removes the given readers of `format`'s log (slot, bytes behind), tells them (they find
    /// themselves gone) and the room, and drops the log's prefix nobody needs any more.
    fn cut_members(&self, inner: &mut Inner, format: Format, cut: Vec<(usize, usize)>, why: &str) {
        let head = inner.logs[format as usize].head();
        let mut names = Vec::new();
        for (slot, behind) in cut {
            if let Some(m) = inner.remove(slot, self.max_pending) {
                m.wake();
                tracing::info!(room = %self.name, name = %m.name, behind, limit = self.max_pending, why, "cut off: slow consumer");
                // A person's other connections keep it in the room.
                if inner.last_of(&m) {
                    names.push((m.name, m.person));
                }
            }
        }
        let min = inner
            .slots
            .iter()
            .flatten()
            .filter(|m| m.format == format)
            .map(|m| m.cursor)
            .min();
        let log = &mut inner.logs[format as usize];
        let min = min.unwrap_or(head);
        let drop = (min - log.base) as usize;
        log.buf.drain(..drop);
        log.base = min;
        log.check_at = log.buf.len() + check_floor(self.max_pending);
        for (name, person) in names {
            self.announce_member(inner, RoomEvent::Leave { name: &name }, person);
        }
    }
}

impl Member {
    fn wake(&self) {
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
    }

    /// True if `take` would hand over something now (a replay under way lets through only
    /// what comes before it, and its page).
    fn has_data(&self, head: u64) -> bool {
        match &self.hold {
            None => self.cursor < head || !self.private.is_empty(),
            Some(h) => self.cursor < h.pos.min(head) || h.before > 0 || !h.page.is_empty(),
        }
    }

    /// Puts what is left of a replay's page among the private lines, where the replay stood.
    fn release(&mut self, h: Hold, private_total: &mut usize) {
        if !h.page.is_empty() {
            let at = h.before.min(self.private.len());
            self.private_bytes += h.page.len();
            *private_total += h.page.len();
            self.private.insert(at, (h.pos, h.page));
        }
    }
}

/// Bytes a member has not yet taken, or that are held for it.
fn lag(m: &Member, head: u64) -> usize {
    (head - m.cursor) as usize + m.private_bytes + m.hold.as_ref().map_or(0, |h| h.bytes())
}

/// How many of `unread`'s bytes to copy for about `want`: whole lines only, so that what a
/// session takes from several rooms into one write never splits a line. `want` is cut back to
/// the end of its last whole line, or stretched to the end of the first line if that is longer
/// (the log holds whole lines only, so there always is an end).
fn line_end(unread: &[u8], want: usize) -> usize {
    if want >= unread.len() || want == 0 {
        return want;
    }
    match memchr::memrchr(b'\n', &unread[..want]) {
        Some(i) => i + 1,
        None => memchr::memchr(b'\n', &unread[want..]).map_or(unread.len(), |i| want + i + 1),
    }
}

/// How much a log may grow before it is checked for members that fell behind.
fn check_floor(max_pending: usize) -> usize {
    (max_pending / 4).max(4096)
}

impl Inner {
    /// The slots of the connections called exactly `name` (for `/msg`: no key per message):
    /// one for a guest, one or more for a person.
    fn find_all(&self, name: &str) -> Vec<usize> {
        let named = |(slot, m): (usize, &Option<Member>)| {
            m.as_ref().is_some_and(|m| m.name == name).then_some(slot)
        };
        self.slots.iter().enumerate().filter_map(named).collect()
    }

    /// Whether `name` may join: [`Entering::Shares`] if it is a person's and joins that
    /// person's other connections (already here under exactly that name),
    /// [`Entering::Returns`] if the member comes back within its leave grace (a person under
    /// exactly its name; a guest under exactly its name and from the same address),
    /// [`Entering::New`] if the name is free. A guest never shares, and never with a person;
    /// look-alikes stay refused, of ghosts too: a ghost holds its name as its member did.
    fn check_join(
        &self,
        name: &str,
        key: &KeyHash,
        person: bool,
        addr: IpAddr,
    ) -> Result<Entering, RoomError> {
        let mut entering = Entering::New;
        for m in self.slots.iter().flatten().filter(|m| m.key.clashes(key)) {
            if person && m.person && m.name == name {
                entering = Entering::Shares;
            } else if m.name == name {
                return Err(RoomError::NameTaken);
            } else {
                return Err(RoomError::LooksLike(m.name.clone()));
            }
        }
        let clashing = self.ghosts.iter().enumerate();
        for (i, g) in clashing.filter(|(_, g)| g.key.clashes(key)) {
            // An address as IPv4 whether it came over IPv4 or IPv6 (a dual-stack listener).
            let here = g.addr.to_canonical() == addr.to_canonical();
            let same = g.name == name && g.person == person && (person || here);
            if same {
                entering = Entering::Returns(i);
            } else if g.name == name {
                return Err(RoomError::NameTaken);
            } else {
                return Err(RoomError::LooksLike(g.name.clone()));
            }
        }
        Ok(entering)
    }

    /// Follows a person's join or leave on `node` (cluster mode); true if the room should show
    /// it: the person's first node in the room, or its last.
    fn person_moved(&mut self, envelope: &Envelope, node: &str) -> bool {
        use crate::bus::Event;
        match &envelope.event {
            Event::Join { name, .. } => {
                let nodes = self.persons.entry(name.clone()).or_default();
                if nodes.iter().any(|n| n == node) {
                    return false; // heard already
                }
                nodes.push(node.to_owned());
                nodes.len() == 1
            }
            Event::Leave { name, .. } => {
                let Some(nodes) = self.persons.get_mut(name) else {
                    return true; // joined before this room was followed here
                };
                nodes.retain(|n| n != node);
                if nodes.is_empty() {
                    self.persons.remove(name);
                    return true;
                }
                false
            }
            _ => true,
        }
    }

    /// True if `m` (just removed) was the last connection of its member: a guest always, a
    /// person when none of its other connections is left in the room.
    fn last_of(&self, m: &Member) -> bool {
        !m.person
            || !self
                .slots
                .iter()
                .flatten()
                .any(|o| o.person && o.name == m.name)
    }

    /// The member whose name has `key`, other than the one in slot `except`.
    fn find_key(&self, key: &KeyHash, except: Option<usize>) -> Option<&Member> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(slot, _)| Some(*slot) != except)
            .find_map(|(_, m)| m.as_ref().filter(|m| m.key.clashes(key)))
    }

    /// Ok if no one else in the room has `name`, nor a name too much like it.
    fn check_free(
        &self,
        name: &str,
        key: &KeyHash,
        except: Option<usize>,
    ) -> Result<(), RoomError> {
        let ghost = || {
            self.ghosts
                .iter()
                .find(|g| g.key.clashes(key))
                .map(|g| &g.name)
        };
        match self.find_key(key, except).map(|m| &m.name).or_else(ghost) {
            None => Ok(()),
            Some(other) if other == name => Err(RoomError::NameTaken),
            Some(other) => Err(RoomError::LooksLike(other.clone())),
        }
    }

    fn member(&self, seat: Seat) -> Option<&Member> {
        self.slots
            .get(seat.slot)?
            .as_ref()
            .filter(|m| m.id == seat.id)
    }

    fn member_mut(&mut self, seat: Seat) -> Option<&mut Member> {
        self.slots
            .get_mut(seat.slot)?
            .as_mut()
            .filter(|m| m.id == seat.id)
    }

    fn remove(&mut self, slot: usize, max_pending: usize) -> Option<Member> {
        let m = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        self.awaiting_join.retain(|(_, seat)| seat.slot != slot);
        self.greetings.retain(|(seat, _, _)| seat.slot != slot);
        self.count -= 1;
        if !self.last_of(&m) {
            self.extra -= 1;
        }
        self.private_total -= m.private_bytes;
        self.held_total -= m.hold.as_ref().map_or(0, |h| h.bytes());
        let log = &mut self.logs[m.format as usize];
        log.members -= 1;
        if m.cursor < log.head() {
            log.behind -= 1;
        }
        log.clear_if_caught_up(check_floor(max_pending));
        Some(m)
    }

    /// What a member closed out of the room had left to read, once.
    fn take_parted(&mut self, seat: Seat) -> Option<Vec<u8>> {
        let i = self.parted.iter().position(|(s, _)| *s == seat)?;
        let (_, bytes) = self.parted.swap_remove(i);
        self.private_total -= bytes.len();
        Some(bytes)
    }

    /// Ends a member's replay in place (it is leaving): its page joins the private lines.
    fn end_hold(&mut self, slot: usize) {
        let Some(m) = self.slots.get_mut(slot).and_then(|m| m.as_mut()) else {
            return;
        };
        if let Some(h) = m.hold.take() {
            self.held_total -= h.bytes();
            m.release(*h, &mut self.private_total);
        }
    }

    fn wake_all(&mut self) {
        for slot in self.waiters.drain(..) {
            if let Some(Some(m)) = self.slots.get_mut(slot) {
                if m.waiting {
                    m.waiting = false;
                    m.wake();
                }
            }
        }
    }

    fn push_private(&mut self, slot: usize, bytes: Vec<u8>, max_pending: usize) {
        let Some(m) = self.slots[slot].as_mut() else {
            return;
        };
        let head = self.logs[m.format as usize].head();
        m.private_bytes += bytes.len();
        self.private_total += bytes.len();
        m.private.push_back((head, bytes));
        if lag(m, head) > max_pending {
            if let Some(m) = self.remove(slot, max_pending) {
                tracing::info!(name = %m.name, limit = max_pending, "cut off: slow consumer");
                m.wake();
            }
        } else if m.waiting {
            m.waiting = false;
            m.wake();
        }
    }

    /// Moves up to about `max` unread bytes (log and private lines, in order) to `out`.
    fn copy_out(&mut self, slot: usize, out: &mut Vec<u8>, max: usize) -> bool {
        let Some(m) = self.slots[slot].as_mut() else {
            return false;
        };
        let log = &mut self.logs[m.format as usize];
        let head = log.head();
        let start_len = out.len();
        let was_behind = m.cursor < head;
        // A replay under way: the log up to its place and the private lines before it, then
        // its page, and nothing after it until it ends.
        let limit = m.hold.as_ref().map_or(head, |h| h.pos.min(head));
        while out.len() - start_len < max {
            let private_next = m.hold.as_ref().is_none_or(|h| h.before > 0);
            let until = match m.private.front() {
                Some((pos, _)) if private_next => (*pos).min(limit),
                _ => limit,
            };
            if m.cursor < until {
                let room = max - (out.len() - start_len);
                let from = (m.cursor - log.base) as usize;
                let unread = &log.buf[from..(until - log.base) as usize];
                let want = unread.len().min(room);
                let n = match m.format {
                    Format::Frames => crate::frame::cut(unread, want),
                    Format::Text | Format::Json => line_end(unread, want),
                };
                out.extend_from_slice(&log.buf[from..from + n]);
                m.cursor += n as u64;
            } else if let Some((_, bytes)) = private_next.then(|| m.private.pop_front()).flatten() {
                m.private_bytes -= bytes.len();
                self.private_total -= bytes.len();
                if let Some(h) = m.hold.as_mut() {
                    h.before -= 1;
                }
                out.extend_from_slice(&bytes);
            } else if let Some(h) = m.hold.as_mut().filter(|h| !h.page.is_empty()) {
                self.held_total -= h.page.len();
                out.extend_from_slice(&h.page);
                h.page = Vec::new();
            } else {
                break;
            }
        }
        if was_behind && m.cursor == head {
            log.behind -= 1;
        }
        out.len() > start_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle connection is a member somewhere (BENCHMARKS.md, I1).
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn an_idle_member_stays_small() {
        let member = std::mem::size_of::<Member>();
        println!(
            "Member: {member} bytes, Inner: {}",
            std::mem::size_of::<Inner>()
        );
        assert!(member <= 176, "{member}");
    }

    fn new_room(name: &str, max_pending: usize) -> Room {
        Room::new(name, max_pending, Arc::new(crate::store::NoStore))
    }

    fn drain(room: &Room, seat: Seat) -> String {
        let mut out = Vec::new();
        while matches!(room.take(seat, &mut out, 7, Waker::noop()), Take::Data) {}
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_replay_goes_out_at_its_place_and_later_traffic_waits_behind_it() {
        let room = Arc::new(new_room("r", 1 << 20));
        let a = room.join(1, "a", Format::Text).unwrap();
        let b = room.join(2, "b", Format::Text).unwrap();
        room.say(a, "before", false).unwrap();
        room.reply(b, &Reply::Notice("queued before")).unwrap();
        let _ = room.history(b, 10).unwrap();
        room.say(a, "during", false).unwrap();
        room.reply(b, &Reply::Notice("queued during")).unwrap();
        // Nothing of the replay yet: b gets what came before it, and then waits.
        assert_eq!(
            drain(&room, b),
            "*** b joined\na:before\n*** queued before\n"
        );
        assert_eq!(room.replay_drained(b), Ok(true));
        room.push_replay(b, b"page one\n", 100).unwrap();
        assert_eq!(room.replay_drained(b), Ok(false));
        assert_eq!(drain(&room, b), "page one\n");
        assert_eq!(room.replay_drained(b), Ok(true));
        room.push_replay(b, b"the end\n", 0).unwrap();
        room.end_replay(b);
        assert_eq!(drain(&room, b), "the end\na:during\n*** queued during\n");
    }

    #[test]
    fn a_replay_counts_as_lag_and_leaving_hands_it_over_in_order() {
        let room = Arc::new(new_room("r", 1000));
        let a = room.join(1, "a", Format::Text).unwrap();
        let b = room.join(2, "b", Format::Text).unwrap();
        drain(&room, b);
        let _ = room.history(b, 10).unwrap();
        room.say(a, "later", false).unwrap();
        room.push_replay(b, b"page\n", 200).unwrap();
        let (lag, seat) = room.largest_lag().unwrap();
        assert_eq!(seat, b);
        assert_eq!(lag, "a:later\n".len() + "page\n".len() + 200);
        let mut out = Vec::new();
        room.leave(b, &mut out, false);
        assert_eq!(String::from_utf8(out).unwrap(), "page\na:later\n");
        // Over the limit with what is held for it: cut off.
        let c = room.join(3, "c", Format::Text).unwrap();
        let _ = room.history(c, 10).unwrap();
        assert_eq!(room.push_replay(c, b"x", 2000), Err(RoomError::Gone));
        assert!(!room.contains(c));
    }

    #[test]
    fn everyone_sees_the_same_order_and_the_log_empties() {
        let room = Arc::new(new_room("r", 1 << 20));
        let a = room.join(1, "a", Format::Text).unwrap();
        let b = room.join(2, "b", Format::Text).unwrap();
        assert_eq!(room.join(3, "a", Format::Text), Err(RoomError::NameTaken));
        room.say(a, "hi", false).unwrap();
        room.say(b, "yo", false).unwrap();
        room.reply(b, &Reply::Notice("just b")).unwrap();
        room.say(a, "there", false).unwrap();
        assert_eq!(
            drain(&room, a),
            "*** a joined\n*** b joined\na:hi\nb:yo\na:there\n"
        );
        assert_eq!(
            drain(&room, b),
            "*** b joined\na:hi\nb:yo\n*** just b\na:there\n"
        );
        assert!(room.lock().logs[0].buf.is_empty());
    }

    #[test]
    fn a_member_that_falls_behind_is_cut_off_and_the_log_stays_bounded() {
        let room = Arc::new(new_room("r", 10_000));
        let slow = room.join(1, "slow", Format::Text).unwrap();
        let fast = room.join(2, "fast", Format::Text).unwrap();
        for i in 0..5_000 {
            room.say(fast, &format!("message {i}"), false).unwrap();
            drain(&room, fast);
            assert!(room.lock().logs[0].buf.len() < 20_000);
        }
        let mut out = Vec::new();
        assert_eq!(room.take(slow, &mut out, 100, Waker::noop()), Take::Gone);
        assert_eq!(room.member_count(), 1);
    }

    #[test]
    fn leaving_hands_over_the_unread_bytes() {
        let room = Arc::new(new_room("r", 1 << 20));
        let a = room.join(1, "a", Format::Text).unwrap();
        room.say(a, "bye", false).unwrap();
        let mut out = Vec::new();
        assert_eq!(room.leave(a, &mut out, true), 0);
        assert_eq!(out, b"*** a joined\na:bye\n");
    }

    #[test]
    fn a_member_whose_connection_dropped_is_kept_and_comes_back_unseen() {
        let graces = Arc::new(Graces::new(std::time::Duration::from_secs(60), true));
        let room = Arc::new(new_room("r", 1 << 20).with_graces(graces.clone()));
        let bob = room.join(1, "Bob", Format::Text).unwrap();
        let mina = room.join(2, "Mina", Format::Text).unwrap();
        drain(&room, bob);
        // Dropped: kept, listed, counted, its name held (a look-alike or /nick too).
        assert_eq!(room.part(mina, &mut Vec::new(), Parting::Lost), (2, true));
        assert_eq!(graces.waiting(), 1);
        assert_eq!(room.names(), ["Bob", "Mina"]);
        assert_eq!((room.member_count(), room.people()), (2, 2));
        let away = Joiner {
            id: 3,
            name: "Mina",
            format: Format::Text,
            person: false,
            addr: IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9)),
        };
        assert!(!room.would_return(&away));
        assert_eq!(
            room.join_replaying(away, None).err(),
            Some(RoomError::NameTaken)
        );
        assert_eq!(
            room.join(3, "MINA", Format::Text),
            Err(RoomError::LooksLike("Mina".into()))
        );
        assert_eq!(room.rename_check(bob, "Mina"), Err(RoomError::NameTaken));
        // Back from the same address: only it hears of it.
        let back = room.join(4, "Mina", Format::Text).unwrap();
        assert_eq!(drain(&room, back), "*** Mina joined\n");
        assert_eq!(drain(&room, bob), "");
        assert_eq!((room.member_count(), room.people()), (2, 2));
        // Its old deadline finds nothing to end.
        assert!(!room.end_grace(2, true));
        // Dropped again and not back: the room is told when the grace ends.
        assert_eq!(room.part(back, &mut Vec::new(), Parting::Lost), (2, true));
        assert!(room.end_grace(4, true));
        assert_eq!(drain(&room, bob), "*** Mina left\n");
        assert_eq!(room.names(), ["Bob"]);
        // A quit (told) and a shutdown (silent) keep nobody.
        let zed = room.join(5, "Zed", Format::Text).unwrap();
        assert_eq!(room.part(zed, &mut Vec::new(), Parting::Told), (1, false));
        assert_eq!(drain(&room, bob), "*** Zed joined\n*** Zed left\n");
        assert_eq!(room.part(bob, &mut Vec::new(), Parting::Silent), (0, false));
    }

    #[test]
    fn a_kick_ends_a_ghost_and_the_room_is_told() {
        let graces = Arc::new(Graces::new(std::time::Duration::from_secs(60), true));
        let room = Arc::new(new_room("r", 1 << 20).with_graces(graces));
        let bob = room.join(1, "Bob", Format::Text).unwrap();
        let mina = room.join(2, "Mina", Format::Text).unwrap();
        room.part(mina, &mut Vec::new(), Parting::Lost);
        drain(&room, bob);
        let why = Reply::Error("banned");
        assert_eq!(room.close_out_where(|name, _| name == "Mina", &why), 0);
        assert_eq!(drain(&room, bob), "*** Mina left\n");
        assert_eq!(room.names(), ["Bob"]);
    }

    #[test]
    fn a_person_connected_twice_is_one_member() {
        let room = Arc::new(new_room("r", 1 << 20));
        let bob = room.join(1, "Bob", Format::Text).unwrap();
        let laptop = room.join_person(2, "Mina", Format::Text).unwrap();
        let phone = room.join_person(3, "Mina", Format::Json).unwrap();
        // Guests never share, with a guest or with a person; look-alikes stay refused.
        assert_eq!(
            room.join(4, "Mina", Format::Text),
            Err(RoomError::NameTaken)
        );
        assert_eq!(
            room.join_person(4, "Bob", Format::Text),
            Err(RoomError::NameTaken)
        );
        assert_eq!(
            room.join_person(4, "mina", Format::Text),
            Err(RoomError::LooksLike("Mina".into()))
        );
        assert_eq!((room.member_count(), room.people()), (3, 2));
        assert_eq!(room.names(), ["Bob", "Mina"]);
        room.say(phone, "from the phone", false).unwrap();
        room.private(bob, "Mina", "psst", || false).unwrap();
        room.private(laptop, "Bob", "hi Bob", || false).unwrap();
        assert_eq!(
            drain(&room, bob),
            "*** Bob joined\n*** Mina joined\nMina:from the phone\n\
             *** private to Mina: psst\n*** private from Mina: hi Bob\n"
        );
        assert_eq!(
            drain(&room, laptop),
            "*** Mina joined\nMina:from the phone\n\
             *** private from Bob: psst\n*** private to Bob: hi Bob\n"
        );
        let phone_lines = drain(&room, phone);
        let types: Vec<String> = phone_lines
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["type"].to_string())
            .collect();
        assert_eq!(
            types,
            [r#""join""#, r#""message""#, r#""private""#, r#""private""#]
        );
        // One connection leaves: nobody is told; the last one: the room is.
        let mut out = Vec::new();
        room.leave(phone, &mut out, true);
        assert_eq!((room.member_count(), room.people()), (2, 2));
        room.leave(laptop, &mut out, true);
        assert_eq!(drain(&room, bob), "*** Mina left\n");
        assert_eq!(room.people(), 1);
    }

    #[test]
    fn a_person_cut_off_leaves_only_with_its_last_connection() {
        let room = Arc::new(new_room("r", 10_000));
        let bob = room.join(1, "Bob", Format::Text).unwrap();
        let slow = room.join_person(2, "Mina", Format::Text).unwrap();
        let fast = room.join_person(3, "Mina", Format::Text).unwrap();
        drain(&room, bob);
        for i in 0..2_000 {
            room.say(bob, &format!("message {i}"), false).unwrap();
            drain(&room, bob);
            drain(&room, fast);
        }
        assert!(!room.contains(slow));
        assert_eq!((room.member_count(), room.people()), (2, 2));
        assert!(!drain(&room, bob).contains("left"));
        assert!(room.cut_off(fast, "test"));
        assert_eq!(drain(&room, bob), "*** Mina left\n");
    }

    #[test]
    fn json_members_get_json() {
        let room = Arc::new(new_room("r", 1 << 20));
        let a = room.join(1, "a", Format::Json).unwrap();
        room.say(a, "hi", false).unwrap();
        let out = drain(&room, a);
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["type"], "join");
        assert_eq!(lines[1]["type"], "message");
        assert_eq!(lines[1]["id"], 1);
        assert_eq!(lines[1]["text"], "hi");
    }

    /// A sequencer that orders elsewhere, as a cluster's does: it answers `answer` and keeps
    /// what it was handed.
    struct Elsewhere {
        answer: fn() -> Placed,
        handed: Mutex<Vec<String>>,
    }

    impl Elsewhere {
        fn new(answer: fn() -> Placed) -> Arc<Self> {
            Arc::new(Elsewhere {
                answer,
                handed: Mutex::default(),
            })
        }

        fn handed(&self) -> Vec<String> {
            std::mem::take(&mut *self.handed.lock().unwrap())
        }

        fn note(&self, what: String) -> Placed {
            self.handed.lock().unwrap().push(what);
            (self.answer)()
        }
    }

    impl Sequencer for Elsewhere {
        fn message(&self, _: &str, event: &RoomEvent<'_>, _: &dyn Fn() -> Refuse) -> Placed {
            self.note(format!("{:?}", Envelope::from_room_event(event).event))
        }

        fn announce(&self, _: &str, event: &RoomEvent<'_>, person: bool) -> Placed {
            let event = Envelope::from_room_event(event).event;
            self.note(format!("{event:?} person={person}"))
        }

        fn private(&self, _: &str, from: &str, to: &str, text: &str) -> Placed {
            self.note(format!("private {from}>{to}: {text}"))
        }
    }

    fn ordered_by(sequencer: Arc<Elsewhere>) -> Arc<Room> {
        let store = Arc::new(crate::store::NoStore);
        Arc::new(Room::with_budget(
            "r",
            1 << 20,
            store,
            Arc::default(),
            sequencer,
        ))
    }

    fn came_back(event: crate::bus::Event) -> Envelope {
        Envelope { event, ts: 1 }
    }

    #[test]
    fn a_room_ordered_elsewhere_shows_its_events_as_they_come_back() {
        use crate::bus::Event;
        let sequencer = Elsewhere::new(|| Placed::Away);
        let room = ordered_by(sequencer.clone());
        let a = room.join(1, "a", Format::Text).unwrap();
        let b = room.join(2, "b", Format::Text).unwrap();
        assert_eq!(room.say(a, "hi", false), Ok(0));
        room.private(a, "b", "psst", || false).unwrap();
        assert_eq!(
            sequencer.handed(),
            [
                r#"Join { name: "a", node: None } person=false"#,
                r#"Join { name: "b", node: None } person=false"#,
                r#"Message { name: "a", text: "hi" }"#,
                "private a>b: psst",
            ]
        );
        // Only the private line so far: the rest shows in the order it comes back in.
        assert_eq!(drain(&room, b), "*** private from a: psst\n");
        let join = |name: &str| Event::Join {
            name: name.into(),
            node: None,
        };
        room.deliver(4, &came_back(join("a")), false);
        room.deliver(5, &came_back(join("b")), false);
        let hi = Event::Message {
            name: "a".into(),
            text: "hi".into(),
        };
        room.deliver(9, &came_back(hi), false);
        assert_eq!(drain(&room, b), "*** a joined\n*** b joined\na:hi\n");
        // History ends where delivery is.
        assert_eq!(room.lock().last_published, 9);
        // A leave is handed on even when nobody is left on this server.
        room.leave(b, &mut Vec::new(), true);
        room.leave(a, &mut Vec::new(), true);
        assert_eq!(sequencer.handed().len(), 2);
    }

    #[test]
    fn a_message_the_sequencer_refuses_is_told_to_its_sender_alone() {
        use crate::refusal::Refusal;
        let sequencer = Elsewhere::new(|| Placed::Refused(Refusal::ClusterBusy));
        let room = ordered_by(sequencer);
        let a = room.join(1, "a", Format::Text).unwrap();
        let b = room.join(2, "b", Format::Text).unwrap();
        assert_eq!(room.say(a, "hi", false), Ok(0));
        assert_eq!(
            drain(&room, a),
            format!("*** error: {}\n", Refusal::ClusterBusy)
        );
        assert_eq!(drain(&room, b), "");
        // The sender keeps its name (it was lent out while the message was handed over).
        assert_eq!(room.names(), ["a", "b"]);
    }

    #[test]
    fn a_private_message_that_cannot_leave_the_node_is_told_to_its_sender() {
        use crate::refusal::Refusal;
        let sequencer = Elsewhere::new(|| Placed::Refused(Refusal::ClusterNotSent));
        let room = ordered_by(sequencer.clone());
        let a = room.join(1, "a", Format::Text).unwrap();
        let b = room.join(2, "b", Format::Text).unwrap();
        sequencer.handed();
        // "far" is in the room on another node only: nobody gets it, the sender is told.
        assert_eq!(room.private(a, "far", "psst", || true), Ok(()));
        assert_eq!(sequencer.handed(), ["private a>far: psst"]);
        assert_eq!(
            drain(&room, a),
            format!("*** error: {}\n", Refusal::ClusterNotSent)
        );
        // A recipient here gets it as ever (and its other nodes' connections do not).
        assert_eq!(room.private(a, "b", "hi", || false), Ok(()));
        assert_eq!(drain(&room, b), "*** private from a: hi\n");
        assert_eq!(drain(&room, a), "*** private to b: hi\n");
    }

    #[test]
    fn a_persons_join_that_comes_back_unshown_is_told_to_its_connection_alone() {
        use crate::bus::Event;
        let sequencer = Elsewhere::new(|| Placed::Away);
        let room = ordered_by(sequencer.clone());
        // Mina is in the room on node n2 already.
        room.seed_persons(vec![("Mina".into(), "n2".into())]);
        let bob = room.join(1, "Bob", Format::Text).unwrap();
        let phone = room.join_person(2, "Mina", Format::Text).unwrap();
        assert_eq!(
            sequencer.handed()[1],
            r#"Join { name: "Mina", node: None } person=true"#
        );
        let here = Event::Join {
            name: "Mina".into(),
            node: Some("n1".into()),
        };
        room.deliver(3, &came_back(here), true);
        assert_eq!(drain(&room, phone), "*** Mina joined\n");
        assert_eq!(drain(&room, bob), "");
    }
}
