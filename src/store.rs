//! Message history: every delivered message, by room and id, kept across restarts.
//!
//! Behind the small [`Store`] trait so that the cluster mode can add a distributed one. The
//! embedded default is a SQLite file (WAL mode) owned by one writer thread that commits in
//! batches (group commit): a room hands each message over without waiting, so fan-out never
//! waits on the disk. Reads go through the same thread, after the appends queued before them,
//! so a reader always sees every message up to the moment it asked: a client that joins with
//! `"history"` gets exactly the messages before its first live one, no gap and no duplicate.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::protocol::Timestamp;
use crate::refusal::Refusal;
use crate::settings::{Durability, HistoryMode, HistorySettings, Retention};
pub use machat_proto::message::{History, MessageRef, StoredMessage};

/// Most messages one replay (`"history"`, `"since"`, `/history`) sends: a bound on what one
/// client can make the server hold for it. A client that missed more resumes again from the
/// last id it got.
pub const MAX_REPLAY: usize = 1000;

/// What a durable store runs once a message is on disk: its delivery to the room.
pub type Deliver = Box<dyn FnOnce() + Send>;

/// A history query whose answer arrives later (after the appends queued before it).
pub type Pending = oneshot::Receiver<History>;

/// A count of stored messages whose answer arrives later.
pub type PendingCount = oneshot::Receiver<Result<usize, StoreError>>;

/// Where a replay of a room's last messages starts, and how long it is: the replay is then
/// read in pages after `after`, so nobody holds the whole of it at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The replay is every stored message with an id above this (and up to its `until`).
    pub after: u64,
    pub count: usize,
}

/// A [`Span`] whose answer arrives later.
pub type PendingSpan = oneshot::Receiver<Result<Span, StoreError>>;

/// What deleting a stored message found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleted {
    /// It was there and is gone; its author's name (as stored).
    Done { name: String },
    /// No stored message of the room has that id (never was, already deleted, or dropped by
    /// retention).
    NotFound,
    /// It is there, but `only_by` was given and is not its author: nothing deleted.
    NotYours,
}

/// A [`Deleted`] whose answer arrives later (after the appends queued before it).
pub type PendingDelete = oneshot::Receiver<Result<Deleted, StoreError>>;

/// Why a store cannot open, or cannot answer. Opening keeps the file and SQLite's (or the
/// system's) reason, so a caller can tell a missing directory from an unwritable or a corrupt
/// file. A failed answer displays as the text its client is told.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data dir {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Also a corrupt file: opening checks every page.
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot start the store's writer: {0}")]
    Writer(#[source] std::io::Error),
    #[error("{}", Refusal::HistoryOff)]
    Off,
    #[error("{}", Refusal::HistoryUnavailable)]
    Unavailable,
    /// A read (or a delete) that SQLite failed. Told apart from `Unavailable` for the log; a
    /// client is told the same.
    #[error("{}", Refusal::HistoryUnavailable)]
    Query(#[source] rusqlite::Error),
    /// Cluster mode: JetStream's own text is for the log (`{:?}`); a client is told the same
    /// as for any store that cannot answer, and learns nothing of the cluster's inside.
    #[error("{}", Refusal::HistoryUnavailable)]
    Stream(#[source] async_nats::Error),
    /// Cluster mode: the stream did not answer in time.
    #[error("{}", Refusal::HistoryUnavailable)]
    ReadTimedOut,
}

/// What any history store does.
pub trait Store: Send + Sync {
    /// The highest id ever given in `room` (0 for a new room), so ids are never reused.
    fn last_id(&self, room: &str) -> u64;
    /// Queues a message for storage. Never blocks. A durable store calls `deliver` once the
    /// message is on disk (from its own thread, in id order); others get `None`. A room calls
    /// it for the messages it orders itself ([`crate::sequencer::Placed::Local`]): in a
    /// cluster the stream orders them, and publishing to it is their append.
    fn append(&self, room: &Arc<str>, msg: &MessageRef<'_>, deliver: Option<Deliver>);
    /// True if messages must be delivered only once stored (`--durability sync`).
    fn durable(&self) -> bool {
        false
    }
    /// False for a store that keeps nothing (`--history off`): no need to hand it anything.
    fn keeps(&self) -> bool {
        true
    }
    /// The last `limit` messages of `room` with ids up to `until`, or (when `after` is given)
    /// the first `limit` after it. `until` is the last id the room has delivered: with sync
    /// durability, messages stored but not yet delivered arrive live, not in the replay.
    fn query(&self, room: &str, after: Option<u64>, until: u64, limit: usize) -> Pending;
    /// How many stored messages have ids in `after + 1 ..= until` (the size of a resume).
    fn count(&self, room: &str, after: u64, until: u64) -> PendingCount;
    /// Where the last `limit` messages with ids up to `until` start, and how many there are,
    /// without handing them over (a replay then reads them a page at a time).
    fn last_span(&self, room: &str, until: u64, limit: usize) -> PendingSpan;
    /// Deletes message `id` of `room` from history (moderation): every later query, count,
    /// span and replay skips it, as if it had never been stored, but the id is never given
    /// again ([`Store::last_id`] is unchanged), so a client's `since` still means what it meant.
    /// `only_by`: delete only if that name (exact string) is the author's, so a person can
    /// take back their own message without a moderator's rights. Handled after every append
    /// queued before it: a message appended and deleted at once ends deleted.
    fn delete(&self, room: &str, id: u64, only_by: Option<&str>) -> PendingDelete;
    /// False while writes are failing (the disk is full, say).
    fn available(&self) -> bool;
    /// Writes everything queued and marks the store as cleanly closed (at shutdown).
    fn close(&self) {}
    /// `room` has no members left and the hub has dropped it: what the store keeps in memory
    /// for it may go, once its ids are safe where [`Store::last_id`] will find them again.
    /// Without this, every room name ever used would stay in memory.
    fn forget(&self, _room: &str) {}
}

/// The store the settings ask for. A database that cannot be opened is an error here.
pub fn open(settings: &HistorySettings) -> Result<Arc<dyn Store>, StoreError> {
    let retention = settings.retention;
    Ok(match settings.mode {
        HistoryMode::Off => Arc::new(NoStore),
        HistoryMode::Memory => Arc::new(MemoryStore::new(retention)),
        HistoryMode::Sqlite => {
            let sync = settings.durability == Durability::Sync;
            let batching = Batching::for_durability(sync);
            Arc::new(SqliteStore::open(
                &settings.data_dir,
                retention,
                batching,
                sync,
            )?)
        }
    })
}

/// Highest id handed out per room, and whether ids were handed out since it was read from
/// disk (then they may still be queued for the writer).
type LastIds = Arc<Mutex<HashMap<String, LastId>>>;

#[derive(Debug, Clone, Copy)]
struct LastId {
    id: u64,
    appended: bool,
}

/// Records a room's newest id (allocating the key only for a room's first message).
fn note_last_id(ids: &Mutex<HashMap<String, LastId>>, room: &str, id: u64) {
    let mut ids = ids.lock().unwrap_or_else(|e| e.into_inner());
    let last = LastId { id, appended: true };
    match ids.get_mut(room) {
        Some(entry) => *entry = last,
        None => {
            ids.insert(room.to_owned(), last);
        }
    }
}

fn answer_count(count: Result<usize, StoreError>) -> PendingCount {
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(count);
    rx
}

fn answer(history: History) -> Pending {
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(history);
    rx
}

fn answer_span(span: Result<Span, StoreError>) -> PendingSpan {
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(span);
    rx
}

fn answer_delete(deleted: Result<Deleted, StoreError>) -> PendingDelete {
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(deleted);
    rx
}

/// The span of the last `limit` ids up to `until`, from ids given newest first.
pub fn span_of_newest(newest_first: impl Iterator<Item = u64>, until: u64, limit: usize) -> Span {
    let mut span = Span {
        after: until,
        count: 0,
    };
    for id in newest_first.filter(|&id| id <= until).take(limit) {
        span.after = id.saturating_sub(1);
        span.count += 1;
    }
    span
}

/// No history at all: ids still grow per room while it lives.
pub struct NoStore;

impl Store for NoStore {
    fn last_id(&self, _room: &str) -> u64 {
        0
    }
    fn append(&self, _room: &Arc<str>, _msg: &MessageRef<'_>, deliver: Option<Deliver>) {
        if let Some(deliver) = deliver {
            deliver();
        }
    }
    fn keeps(&self) -> bool {
        false
    }
    fn query(&self, _room: &str, _after: Option<u64>, _until: u64, _limit: usize) -> Pending {
        answer(Err(Refusal::HistoryOff.to_string()))
    }
    fn count(&self, _room: &str, _after: u64, _until: u64) -> PendingCount {
        answer_count(Err(StoreError::Off))
    }
    fn last_span(&self, _room: &str, _until: u64, _limit: usize) -> PendingSpan {
        answer_span(Err(StoreError::Off))
    }
    fn delete(&self, _room: &str, _id: u64, _only_by: Option<&str>) -> PendingDelete {
        answer_delete(Err(StoreError::Off))
    }
    fn available(&self) -> bool {
        false
    }
}

/// History in memory only: kept while the process runs.
pub struct MemoryStore {
    inner: Mutex<MemoryRooms>,
    retention: Retention,
}

#[derive(Default)]
struct MemoryRooms {
    /// Only rooms with stored messages: a room's entry (and its last id) goes with its last
    /// message, so memory follows the history that exists. (Not when a delete took that last
    /// message: see [`MemoryRooms::delete`].)
    rooms: HashMap<String, MemoryLog>,
    /// Each stored message's room and id, oldest first: what the total bound drops first.
    /// Entries of messages already gone by a room's own retention are skipped when met, and
    /// swept when they outnumber the live ones.
    order: VecDeque<(Arc<str>, u64)>,
    /// Messages stored, and what they cost.
    count: usize,
    bytes: u64,
}

struct MemoryLog {
    last_id: u64,
    msgs: VecDeque<StoredMessage>,
}

/// What a message held in memory costs, for the total bound.
fn memory_cost(m: &StoredMessage) -> u64 {
    (std::mem::size_of::<StoredMessage>() + m.name.len() + m.text.len()) as u64
}

impl MemoryRooms {
    /// Drops the oldest message of `room` if it is `id` (not already gone).
    fn drop_oldest(&mut self, room: &str, id: u64) {
        let Some(log) = self.rooms.get_mut(room) else {
            return;
        };
        if log.msgs.front().is_some_and(|m| m.id == id) {
            self.pop_front(room);
        }
    }

    fn pop_front(&mut self, room: &str) {
        let Some(log) = self.rooms.get_mut(room) else {
            return;
        };
        if let Some(m) = log.msgs.pop_front() {
            self.count -= 1;
            self.bytes = self.bytes.saturating_sub(memory_cost(&m));
        }
        if log.msgs.is_empty() {
            self.rooms.remove(room);
        }
    }

    /// Removes message `id` of `room` wherever it is in the room's log. Its entry in `order`
    /// stays, to be skipped when met (`drop_oldest` drops only the oldest message, and only
    /// if it has that id) and swept with the others. The room's entry stays even if this was
    /// its last message: its last id must outlive it (unlike with retention, whose oldest
    /// messages go, the newest id can be the one deleted).
    fn delete(&mut self, room: &str, id: u64, only_by: Option<&str>) -> Deleted {
        let Some(log) = self.rooms.get_mut(room) else {
            return Deleted::NotFound;
        };
        let Ok(at) = log.msgs.binary_search_by_key(&id, |m| m.id) else {
            return Deleted::NotFound;
        };
        if only_by.is_some_and(|name| log.msgs[at].name != name) {
            return Deleted::NotYours;
        }
        let Some(m) = log.msgs.remove(at) else {
            return Deleted::NotFound;
        };
        self.count -= 1;
        self.bytes = self.bytes.saturating_sub(memory_cost(&m));
        self.sweep_order();
        Deleted::Done { name: m.name }
    }

    /// Forgets the order of messages that are gone, when they are most of it.
    fn sweep_order(&mut self) {
        if self.order.len() <= 2 * self.count + 1024 {
            return;
        }
        let rooms = &self.rooms;
        self.order.retain(|(room, id)| {
            rooms
                .get(&**room)
                .is_some_and(|log| log.msgs.binary_search_by_key(id, |m| m.id).is_ok())
        });
    }
}

impl MemoryStore {
    pub fn new(retention: Retention) -> Self {
        MemoryStore {
            inner: Mutex::default(),
            retention,
        }
    }

    fn lock(&self) -> MutexGuard<'_, MemoryRooms> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_log<T>(&self, room: &str, f: impl FnOnce(&VecDeque<StoredMessage>) -> T) -> T {
        let inner = self.lock();
        match inner.rooms.get(room) {
            Some(log) => f(&log.msgs),
            None => f(&VecDeque::new()),
        }
    }
}

impl Store for MemoryStore {
    fn last_id(&self, room: &str) -> u64 {
        self.lock().rooms.get(room).map_or(0, |log| log.last_id)
    }

    fn append(&self, room: &Arc<str>, msg: &MessageRef<'_>, deliver: Option<Deliver>) {
        if let Some(deliver) = deliver {
            deliver();
        }
        let msg = msg.to_owned();
        let (id, cost) = (msg.id, memory_cost(&msg));
        let mut inner = self.lock();
        let inner = &mut *inner;
        let log = match inner.rooms.get_mut(&**room) {
            Some(log) => log,
            None => inner.rooms.entry(room.to_string()).or_insert(MemoryLog {
                last_id: 0,
                msgs: VecDeque::new(),
            }),
        };
        log.last_id = id;
        log.msgs.push_back(msg);
        let mut over = log
            .msgs
            .len()
            .saturating_sub(self.retention.max_messages as usize);
        if let Some(age) = self.retention.max_age {
            let oldest = Timestamp::now().0.saturating_sub(age.as_millis() as u64);
            over = over.max(log.msgs.iter().take_while(|m| m.ts.0 < oldest).count());
        }
        inner.count += 1;
        inner.bytes += cost;
        for _ in 0..over {
            inner.pop_front(room);
        }
        let max_total = self.retention.max_total_bytes;
        if max_total > 0 {
            inner.order.push_back((room.clone(), id));
            while inner.bytes > max_total {
                let Some((oldest_room, oldest_id)) = inner.order.pop_front() else {
                    break;
                };
                inner.drop_oldest(&oldest_room, oldest_id);
            }
            inner.sweep_order();
        }
    }

    fn query(&self, room: &str, after: Option<u64>, until: u64, limit: usize) -> Pending {
        let picked = self.with_log(room, |log| {
            let upto = log.iter().filter(|m| m.id <= until);
            match after {
                Some(after) => upto.filter(|m| m.id > after).take(limit).cloned().collect(),
                None => {
                    let mut last: Vec<StoredMessage> = upto.rev().take(limit).cloned().collect();
                    last.reverse();
                    last
                }
            }
        });
        answer(Ok(picked))
    }

    fn count(&self, room: &str, after: u64, until: u64) -> PendingCount {
        let n = self.with_log(room, |log| {
            log.iter().filter(|m| m.id > after && m.id <= until).count()
        });
        answer_count(Ok(n))
    }

    fn last_span(&self, room: &str, until: u64, limit: usize) -> PendingSpan {
        let span = self.with_log(room, |log| {
            span_of_newest(log.iter().rev().map(|m| m.id), until, limit)
        });
        answer_span(Ok(span))
    }

    fn delete(&self, room: &str, id: u64, only_by: Option<&str>) -> PendingDelete {
        answer_delete(Ok(self.lock().delete(room, id, only_by)))
    }

    fn available(&self) -> bool {
        true
    }
}

/// How long a batch may wait before it is committed, and how large it may grow.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub window: Duration,
    pub max_messages: usize,
}

impl Batching {
    /// The batching for a durability: in sync mode every message waits for its commit, so
    /// commit whatever is queued at once instead of waiting for more (the queue makes the
    /// groups).
    pub fn for_durability(sync: bool) -> Self {
        if sync {
            Batching {
                window: Duration::ZERO,
                ..Batching::default()
            }
        } else {
            Batching::default()
        }
    }
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            window: Duration::from_millis(50),
            max_messages: 1000,
        }
    }
}

/// What a room handed over and the writer has not taken yet: one room's messages, encoded back
/// to back (see [`encode`]) as they will lie in its chunk.
struct Appended {
    room: Arc<str>,
    data: Vec<u8>,
    count: usize,
    first_ts: u64,
    last_id: u64,
}

/// Operations other than appends, in the queue's order.
enum Op {
    Count {
        room: String,
        after: u64,
        until: u64,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    Close(mpsc::Sender<()>),
    /// The room is gone from the hub (see [`Store::forget`]).
    Forget(String),
    Span {
        room: String,
        until: u64,
        limit: usize,
        reply: oneshot::Sender<Result<Span, StoreError>>,
    },
    Query {
        room: String,
        after: Option<u64>,
        until: u64,
        limit: usize,
        reply: oneshot::Sender<History>,
    },
    /// Answered like a query: after the appends queued before it are committed.
    Delete {
        room: String,
        id: u64,
        only_by: Option<String>,
        reply: oneshot::Sender<Result<Deleted, StoreError>>,
    },
}

impl Op {
    /// Answers an operation that cannot be queued (the queue is full, or the writer is gone).
    fn refuse(self) {
        match self {
            Op::Query { reply, .. } => {
                let _ = reply.send(Err(Refusal::HistoryUnavailable.to_string()));
            }
            Op::Count { reply, .. } => {
                let _ = reply.send(Err(StoreError::Unavailable));
            }
            Op::Span { reply, .. } => {
                let _ = reply.send(Err(StoreError::Unavailable));
            }
            Op::Delete { reply, .. } => {
                let _ = reply.send(Err(StoreError::Unavailable));
            }
            Op::Close(_) | Op::Forget(_) => {}
        }
    }
}

/// Most messages and operations queued for the writer; past this, appends are dropped (and
/// logged) rather than let a stalled disk grow memory without bound.
const QUEUE: usize = 100_000;

/// Buffers of handed-over messages kept for reuse once written: at most this many bytes.
const SPARE_BYTES: usize = 256 * 1024;

/// Appends that came one after another, grouped by room, then the operation that followed
/// them (if any): a query is answered after its segment's appends are committed, and before
/// the next segment's.
#[derive(Default)]
struct Segment {
    rooms: Vec<Appended>,
    /// Sync durability: the deliveries, in the order the messages came.
    delivers: Vec<Deliver>,
    then: Option<Op>,
}

/// The writer's queue: everything handed over and not yet taken, under one short lock.
///
/// An append takes the lock, copies the message (encoded) to the end of its room's buffer and
/// returns: no allocation once a room's buffer has grown, no channel, and no wake-up of the
/// writer except the one that starts a batch (the writer is idle) and the one that ends it
/// early (the batch is full). The writer takes the whole of it at once.
struct Queue {
    pending: Mutex<Waiting>,
    /// The writer thread, to wake from its wait.
    writer: std::sync::OnceLock<std::thread::Thread>,
    /// A batch this large is committed without waiting for the window.
    full: usize,
}

#[derive(Default)]
struct Waiting {
    segments: Vec<Segment>,
    /// Where each room's buffer is in the last segment, by the address of the room's name
    /// (each room hands over the same `Arc<str>`, which its buffer holds while it is here).
    by_room: HashMap<usize, usize, BuildAddrHasher>,
    /// Messages and operations in `segments`.
    queued: usize,
    messages: usize,
    /// When the oldest message in `segments` came: a batch is committed a window after it.
    since: Option<Instant>,
    /// A query, a delete or a close waits: stop gathering.
    urgent: bool,
    /// The writer waits for work: the first message or operation wakes it.
    idle: bool,
    /// The writer is gone: nothing more is taken.
    closed: bool,
    spare: Vec<Vec<u8>>,
    spare_bytes: usize,
}

impl Waiting {
    /// Makes sure the last segment takes appends (no operation closes it yet).
    fn last_open(&mut self) {
        if self.segments.last().is_none_or(|s| s.then.is_some()) {
            self.segments.push(Segment::default());
            // Where rooms are is about the last segment only.
            self.by_room.clear();
        }
    }
}

/// Why an append was not queued.
enum Refused {
    Full,
    Closed,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a message at the end of its room's buffer. Refused (and the delivery given back)
    /// past the bound, or once the writer is gone.
    fn append(
        &self,
        room: &Arc<str>,
        msg: &MessageRef<'_>,
        deliver: Option<Deliver>,
    ) -> Result<(), (Refused, Option<Deliver>)> {
        let mut guard = self.lock();
        let p = &mut *guard;
        if p.closed {
            return Err((Refused::Closed, deliver));
        }
        if p.queued >= QUEUE {
            return Err((Refused::Full, deliver));
        }
        let wake = std::mem::take(&mut p.idle);
        if p.since.is_none() {
            p.since = Some(Instant::now());
        }
        p.queued += 1;
        p.messages += 1;
        let full = p.messages == self.full;
        p.last_open();
        let key = Arc::as_ptr(room) as *const u8 as usize;
        let at = match p.by_room.get(&key) {
            Some(&at) => at,
            None => {
                let data = match p.spare.pop() {
                    Some(buf) => {
                        p.spare_bytes = p.spare_bytes.saturating_sub(buf.capacity());
                        buf
                    }
                    None => Vec::new(),
                };
                let n = p.segments.len();
                let rooms = &mut p.segments[n - 1].rooms;
                rooms.push(Appended {
                    room: room.clone(),
                    data,
                    count: 0,
                    first_ts: msg.ts.0,
                    last_id: 0,
                });
                p.by_room.insert(key, rooms.len() - 1);
                rooms.len() - 1
            }
        };
        let n = p.segments.len();
        let segment = &mut p.segments[n - 1];
        let buf = &mut segment.rooms[at];
        encode(msg, &mut buf.data);
        buf.count += 1;
        buf.last_id = msg.id;
        if let Some(deliver) = deliver {
            segment.delivers.push(deliver);
        }
        drop(guard);
        if wake || full {
            self.wake();
        }
        Ok(())
    }

    /// Queues an operation after everything queued so far. `bounded`: refused past the
    /// queue's bound (a close or a forget is not: rare, small, and must not be lost).
    fn push(&self, op: Op, bounded: bool) {
        let urgent = !matches!(op, Op::Forget(_));
        let mut p = self.lock();
        if p.closed || (bounded && p.queued >= QUEUE) {
            drop(p);
            op.refuse();
            return;
        }
        p.queued += 1;
        p.last_open();
        if let Some(last) = p.segments.last_mut() {
            last.then = Some(op);
        }
        // The next append starts a new segment.
        p.by_room.clear();
        let wake = std::mem::take(&mut p.idle) || urgent;
        p.urgent |= urgent;
        drop(p);
        if wake {
            self.wake();
        }
    }

    fn wake(&self) {
        if let Some(writer) = self.writer.get() {
            writer.unpark();
        }
    }

    /// The writer: waits up to `timeout` for something to do; true if there is.
    fn wait(&self, timeout: Duration) -> bool {
        {
            let mut p = self.lock();
            if !p.segments.is_empty() {
                return true;
            }
            p.idle = true;
        }
        std::thread::park_timeout(timeout);
        let mut p = self.lock();
        p.idle = false;
        !p.segments.is_empty()
    }

    /// The writer: lets a batch fill (asleep: the senders do not wake it for each message)
    /// until `window` after its oldest message, or until it is full or something urgent waits.
    fn gather(&self, window: Duration) {
        loop {
            let deadline = {
                let p = self.lock();
                if p.urgent || p.messages >= self.full {
                    return;
                }
                match p.since {
                    Some(since) => since + window,
                    None => return,
                }
            };
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            std::thread::park_timeout(deadline - now);
        }
    }

    /// The writer: takes everything queued, and when its oldest message came.
    fn take(&self) -> (Vec<Segment>, Option<Instant>) {
        let mut p = self.lock();
        p.by_room.clear();
        p.queued = 0;
        p.messages = 0;
        p.urgent = false;
        (std::mem::take(&mut p.segments), p.since.take())
    }

    /// The writer: gives written buffers back for the next batches (up to [`SPARE_BYTES`]).
    fn give_back(&self, bufs: impl Iterator<Item = Vec<u8>>) {
        let mut p = self.lock();
        for mut buf in bufs {
            if p.spare_bytes + buf.capacity() > SPARE_BYTES {
                continue;
            }
            buf.clear();
            p.spare_bytes += buf.capacity();
            p.spare.push(buf);
        }
    }

    /// The writer is gone: whatever is still queued is refused (its deliveries run).
    fn close(&self) -> Vec<Segment> {
        let mut p = self.lock();
        p.closed = true;
        p.by_room.clear();
        p.queued = 0;
        p.messages = 0;
        std::mem::take(&mut p.segments)
    }
}

/// Closes the queue when the writer's loop ends, however it ends.
struct CloseOnExit(Arc<Queue>);

impl Drop for CloseOnExit {
    fn drop(&mut self) {
        refuse_all(self.0.close().into_iter());
    }
}

/// What will never be written: its deliveries run (chat goes on), its queries are refused.
fn refuse_all(segments: impl Iterator<Item = Segment>) {
    for segment in segments {
        for deliver in segment.delivers {
            deliver();
        }
        if let Some(op) = segment.then {
            op.refuse();
        }
    }
}

/// Hashes an address (a `usize` key) with one multiplication: the keys are already unique.
#[derive(Default, Clone, Copy)]
struct BuildAddrHasher;

impl std::hash::BuildHasher for BuildAddrHasher {
    type Hasher = AddrHasher;
    fn build_hasher(&self) -> AddrHasher {
        AddrHasher(0)
    }
}

struct AddrHasher(u64);

impl std::hash::Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(26);
    }
}

/// The history database's file name in a data dir (registered names share it).
pub const FILE: &str = "history.db";

/// The `clean` mark a copy made by `machat backup` carries: the server it was taken from was
/// running, so a server started on the copy continues its ids after the crash gap (the ids
/// the original gave after the copy are never given again), and says why.
pub const BACKUP_MARK: &str = "backup";

/// After a crash, ids continue this far after the last stored one: ids handed out but lost
/// with the unwritten batch (at most the queue and one batch) are never given again.
const CRASH_GAP: u64 = QUEUE as u64 + 10_000;

/// History in a SQLite file, written by one thread in batches.
pub struct SqliteStore {
    ops: Arc<Queue>,
    /// Highest id handed over per room, so a room that empties and comes back continues after
    /// ids that are still queued. A room's entry goes when the room does and the writer has
    /// put its ids on disk (see [`Writer::forget`]).
    last_ids: LastIds,
    /// A read-only connection for `last_id` at room creation.
    reader: Mutex<Connection>,
    healthy: Arc<AtomicBool>,
    /// The last run did not close the store cleanly: skip ids (see [`CRASH_GAP`]).
    crashed: bool,
    /// `--durability sync`: deliver only what is committed and fsynced.
    sync: bool,
}

impl SqliteStore {
    /// Opens (or creates) `dir/history.db`. A corrupt or unwritable file is an error here,
    /// with the path and SQLite's reason, never later.
    pub fn open(
        dir: &Path,
        retention: Retention,
        batching: Batching,
        sync: bool,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE);
        let cannot_open = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let conn = open_writer(&path, sync).map_err(cannot_open)?;
        let crashed = mark_open(&conn).map_err(|source| StoreError::Write {
            path: path.clone(),
            source,
        })?;
        let crashed = match crashed {
            Prior::Clean => false,
            Prior::Crashed => {
                warn!(path = %path.display(), "the last run did not stop cleanly: the last batch of messages may be lost; ids continue after a gap");
                true
            }
            Prior::Restored => {
                warn!(path = %path.display(), "restored from a backup of a running server: ids continue after a gap");
                true
            }
        };
        let reader = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(cannot_open)?;
        reader
            .busy_timeout(Duration::from_secs(2))
            .map_err(cannot_open)?;
        let ops = Arc::new(Queue {
            pending: Mutex::default(),
            writer: std::sync::OnceLock::new(),
            full: batching.max_messages,
        });
        let healthy = Arc::new(AtomicBool::new(true));
        let last_ids = LastIds::default();
        let total_bytes = stored_bytes(&conn).map_err(|source| StoreError::Read {
            path: path.clone(),
            source,
        })?;
        let writer = Writer {
            last_ids: last_ids.clone(),
            crashed,
            total_bytes,
            conn,
            queue: ops.clone(),
            retention,
            batching,
            healthy: healthy.clone(),
            touched: HashMap::new(),
            rids: HashMap::new(),
            stored: HashMap::new(),
            last_prune: Instant::now(),
            path: path.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("machat-store".into())
            .spawn(move || {
                if !sync {
                    yield_to_delivery();
                }
                writer.run()
            })
            .map_err(StoreError::Writer)?;
        let _ = ops.writer.set(thread.thread().clone());
        info!(path = %path.display(), "history store open");
        Ok(SqliteStore {
            ops,
            last_ids,
            reader: Mutex::new(reader),
            healthy,
            crashed,
            sync,
        })
    }
}

pub(crate) fn open_writer(path: &Path, sync: bool) -> rusqlite::Result<Connection> {
    // One thread owns this connection: SQLite's own locking is not needed.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    // Another process on the same file (two servers started in one directory) makes SQLite
    // answer "busy": wait a moment for it rather than fail the batch at once.
    conn.busy_timeout(Duration::from_secs(2))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL in WAL mode survives a process crash but may lose the last commits in a power cut;
    // FULL fsyncs every commit.
    conn.pragma_update(None, "synchronous", if sync { "FULL" } else { "NORMAL" })?;
    // A checkpoint copies every page the WAL holds back into the file and (with NORMAL) syncs
    // both: the default, every 1,000 pages (4 MiB), cost a busy server one every few commits.
    // A larger WAL checkpoints less often, and a page rewritten by many commits meanwhile
    // (a room's last chunk, the `rooms` row) is copied once. The file stays at most this size.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_PAGES)?;
    // The writer's page cache: the tables' upper levels and the pages being written. SQLite's
    // default (2 MiB) was filled by the pages of big chunks that are never read again.
    conn.pragma_update(None, "cache_size", CACHE_KIB)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS rooms (
            rid INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            last_id INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    )?;
    create_chunks(&conn)?;
    // Reading every page once turns a corrupt file into an error now, not at the first query.
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(check),
        ));
    }
    Ok(conn)
}

/// Pages the WAL may hold before a checkpoint (SQLite's default is 1,000): 16 MiB of 4 KiB pages.
const WAL_PAGES: i64 = 4096;

/// The writer connection's page cache, in KiB (negative: SQLite's unit for KiB).
const CACHE_KIB: i64 = -512;

/// The `chunks` table, made (or brought up to date) on opening.
///
/// A chunk is a rowid row, found through the `chunks_by_room` index on `(rid, last_id)`. The
/// first layout kept the rows themselves in that order (`WITHOUT ROWID`), but there a big
/// chunk's blob lives in overflow pages that SQLite reads back, whole, each time an insert's
/// search compares against that row's key: a fast room's commit read the room's last chunks
/// (about 100 KiB each) again. A rowid table is searched by the integer alone, new chunks go
/// to its end, and the index's entries are a few bytes. A file in the old layout is copied
/// into the new one once, in one transaction.
fn create_chunks(conn: &Connection) -> rusqlite::Result<()> {
    let old: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'chunks'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let without_rowid = old.is_some_and(|sql| sql.to_ascii_uppercase().contains("WITHOUT ROWID"));
    let make = "CREATE TABLE IF NOT EXISTS chunks (
            rid INTEGER NOT NULL,
            last_id INTEGER NOT NULL,
            count INTEGER NOT NULL,
            first_ts INTEGER NOT NULL,
            data BLOB NOT NULL
        );
        CREATE UNIQUE INDEX IF NOT EXISTS chunks_by_room ON chunks (rid, last_id);
        CREATE INDEX IF NOT EXISTS chunks_by_age ON chunks (first_ts, rid, last_id);";
    if !without_rowid {
        return conn.execute_batch(make);
    }
    info!("history store: copying the chunks into the current layout (once; time in proportion to the history)");
    let copied = conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
        ALTER TABLE chunks RENAME TO chunks_without_rowid;
        DROP INDEX IF EXISTS chunks_by_age;
        {make}
        INSERT INTO chunks (rid, last_id, count, first_ts, data)
            SELECT rid, last_id, count, first_ts, data FROM chunks_without_rowid
            ORDER BY rid, last_id;
        DROP TABLE chunks_without_rowid;
        COMMIT;"
    ));
    if copied.is_err() && !conn.is_autocommit() {
        // The file stays in the old layout, as it was.
        let _ = conn.execute_batch("ROLLBACK");
    }
    copied
}

/// How the store was left by whoever had it before.
enum Prior {
    Clean,
    Crashed,
    /// A copy from `machat backup` (see [`BACKUP_MARK`]).
    Restored,
}

/// Records that the store is in use; says how the previous run left it.
fn mark_open(conn: &Connection) -> rusqlite::Result<Prior> {
    let clean: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'clean'", [], |r| {
            r.get(0)
        })
        .ok();
    let has_messages: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM rooms WHERE last_id > 0)",
        [],
        |r| r.get(0),
    )?;
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('clean', '0')",
        [],
    )?;
    Ok(match clean.as_deref() {
        _ if !has_messages => Prior::Clean,
        Some("1") => Prior::Clean,
        Some(BACKUP_MARK) => Prior::Restored,
        _ => Prior::Crashed,
    })
}

/// The bytes of history on disk (a chunk's length is in its record header: no blob is read).
fn stored_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    let n: i64 = conn.query_row(
        "SELECT COALESCE(SUM(length(data)), 0) FROM chunks",
        [],
        |r| r.get(0),
    )?;
    Ok(n.max(0) as u64)
}

/// A room's last id as stored. Kept in the rooms table, not taken from the messages:
/// retention may have deleted every message of a room, and its ids must still never come back.
fn last_id_on_disk(conn: &Connection, room: &str) -> rusqlite::Result<u64> {
    let mut stmt =
        conn.prepare_cached("SELECT COALESCE((SELECT last_id FROM rooms WHERE name = ?1), 0)")?;
    let id: i64 = stmt.query_row([room], |r| r.get(0))?;
    Ok(id.max(0) as u64)
}

/// Where a room's ids continue after a restart: its last stored id, after the crash gap if the
/// last run did not stop cleanly.
fn continued_id(stored: u64, crashed: bool) -> u64 {
    if crashed && stored > 0 {
        stored + CRASH_GAP
    } else {
        stored
    }
}

impl Store for SqliteStore {
    fn last_id(&self, room: &str) -> u64 {
        let mut ids = self.last_ids.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = ids.get(room) {
            return last.id;
        }
        let reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let id = match last_id_on_disk(&reader, room) {
            Ok(id) => continued_id(id, self.crashed),
            Err(e) => {
                warn!(room, "cannot read the last id: {e}");
                0
            }
        };
        let appended = false;
        ids.insert(room.to_owned(), LastId { id, appended });
        id
    }

    fn append(&self, room: &Arc<str>, msg: &MessageRef<'_>, deliver: Option<Deliver>) {
        note_last_id(&self.last_ids, room, msg.id);
        let Err((why, deliver)) = self.ops.append(room, msg, deliver) else {
            return;
        };
        match why {
            Refused::Full => {
                if self.healthy.swap(false, Ordering::AcqRel) {
                    error!("history store is not keeping up: messages are not being stored");
                }
            }
            Refused::Closed => self.healthy.store(false, Ordering::Release),
        }
        // Not stored, but chat goes on: deliver it anyway.
        if let Some(deliver) = deliver {
            deliver();
        }
    }

    fn durable(&self) -> bool {
        self.sync
    }

    fn query(&self, room: &str, after: Option<u64>, until: u64, limit: usize) -> Pending {
        let (reply, rx) = oneshot::channel();
        let op = Op::Query {
            room: room.to_owned(),
            after,
            until,
            limit,
            reply,
        };
        self.ops.push(op, true);
        rx
    }

    fn count(&self, room: &str, after: u64, until: u64) -> PendingCount {
        let (reply, rx) = oneshot::channel();
        let op = Op::Count {
            room: room.to_owned(),
            after,
            until,
            reply,
        };
        self.ops.push(op, true);
        rx
    }

    fn last_span(&self, room: &str, until: u64, limit: usize) -> PendingSpan {
        let (reply, rx) = oneshot::channel();
        let op = Op::Span {
            room: room.to_owned(),
            until,
            limit,
            reply,
        };
        self.ops.push(op, true);
        rx
    }

    fn delete(&self, room: &str, id: u64, only_by: Option<&str>) -> PendingDelete {
        let (reply, rx) = oneshot::channel();
        let op = Op::Delete {
            room: room.to_owned(),
            id,
            only_by: only_by.map(str::to_owned),
            reply,
        };
        // Also cuts a batch's gathering short: the appends before it are committed at once.
        self.ops.push(op, true);
        rx
    }

    fn available(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    fn close(&self) {
        let (tx, rx) = mpsc::channel();
        self.ops.push(Op::Close(tx), false);
        // Returns at once if the writer is already gone (the sender was dropped).
        let _ = rx.recv_timeout(Duration::from_secs(3));
    }

    fn forget(&self, room: &str) {
        {
            let mut ids = self.last_ids.lock().unwrap_or_else(|e| e.into_inner());
            if ids.get(room).is_some_and(|last| !last.appended) {
                // Nothing said since its id was read from disk: nothing to wait for (a room
                // joined and left without a word costs the writer nothing).
                ids.remove(room);
                if ids.capacity() > 4 * ids.len() + 1024 {
                    ids.shrink_to_fit();
                }
                return;
            }
        }
        // Past the queue's bound too: a lost forget would keep the room in memory for good.
        self.ops.push(Op::Forget(room.to_owned()), false);
    }
}

struct Writer {
    conn: Connection,
    queue: Arc<Queue>,
    retention: Retention,
    batching: Batching,
    healthy: Arc<AtomicBool>,
    /// Rooms written since the last prune, by their row id.
    touched: HashMap<i64, ()>,
    /// Room name to row id (keys are integers: cheaper to compare than names).
    rids: HashMap<String, i64>,
    /// Messages stored per room, once counted (see `Writer::stored`).
    stored: HashMap<i64, u64>,
    last_prune: Instant,
    path: PathBuf,
    /// Shared with the store: the writer removes a forgotten room's entry once its ids are on
    /// disk.
    last_ids: LastIds,
    crashed: bool,
    /// Bytes of history on disk, for `Retention::max_total_bytes`.
    total_bytes: u64,
}

/// With `--durability batch` the writer is background work: nobody waits for its commits, and
/// on a busy machine its commit (about 1 ms every 50 ms) pre-empting a room's thread is what
/// made F2's latency tail (BENCHMARKS.md, issue 16). Nice 10 lets the rooms' threads go first
/// and still gives the writer its share of a busy core (a tenth of a competing thread's); a
/// writer that runs late only makes bigger batches, under the queue's bound. With `sync` every
/// delivery waits for it, so it keeps the rooms' priority.
fn yield_to_delivery() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on this thread's own id; a failure only leaves the
        // priority as it was.
        let done = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10)
        };
        if done != 0 {
            warn!(
                "history writer: cannot lower its priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

impl Writer {
    fn run(mut self) {
        // However this ends, the queue refuses what comes after (and runs its deliveries).
        let _closing = CloseOnExit(self.queue.clone());
        let mut batch: Vec<Appended> = Vec::new();
        let mut delivers: Vec<Deliver> = Vec::new();
        loop {
            // Wait for work; then let the batch fill until the window closes, it is full or a
            // query or close waits. Wake at least once a second, so retention runs even when
            // nothing is said.
            if !self.queue.wait(Duration::from_secs(1)) {
                if self.last_prune.elapsed() > Duration::from_secs(1) {
                    self.prune();
                }
                continue;
            }
            self.queue.gather(self.batching.window);
            let (segments, since) = self.queue.take();
            let mut forgotten = Vec::new();
            let mut segments = segments.into_iter();
            while let Some(segment) = segments.next() {
                batch.extend(segment.rooms);
                delivers.extend(segment.delivers);
                match segment.then {
                    None => {}
                    // After the batch: the room's last appends came before its forget.
                    Some(Op::Forget(room)) => forgotten.push(room),
                    Some(Op::Close(done)) => {
                        self.commit(&mut batch, &mut delivers);
                        for room in forgotten.drain(..) {
                            self.forget(&room);
                        }
                        let r = self.conn.execute(
                            "INSERT OR REPLACE INTO meta (key, value) VALUES ('clean', '1')",
                            [],
                        );
                        if let Err(e) = r {
                            warn!("cannot mark the history store closed: {e}");
                        }
                        let _ = done.send(());
                        refuse_all(segments);
                        return;
                    }
                    // A query (or a delete) answers after everything queued before it is
                    // committed, and before anything queued after it.
                    Some(op) => {
                        self.commit(&mut batch, &mut delivers);
                        for room in forgotten.drain(..) {
                            self.forget(&room);
                        }
                        self.answer(op);
                    }
                }
            }
            self.commit(&mut batch, &mut delivers);
            if let Some(since) = since {
                // The wait of the batch's oldest message: what a sync-durability sender waits.
                crate::metrics::store_append(since.elapsed());
            }
            for room in forgotten {
                self.forget(&room);
            }
            if self.last_prune.elapsed() > Duration::from_secs(1) {
                self.prune();
            }
        }
    }

    fn answer(&mut self, op: Op) {
        match op {
            Op::Query {
                room,
                after,
                until,
                limit,
                reply,
            } => {
                let _ = reply.send(self.read(&room, after, until, limit));
            }
            Op::Count {
                room,
                after,
                until,
                reply,
            } => {
                let _ = reply.send(self.count_between(&room, after, until));
            }
            Op::Span {
                room,
                until,
                limit,
                reply,
            } => {
                let _ = reply.send(self.span_of_last(&room, until, limit));
            }
            Op::Delete {
                room,
                id,
                only_by,
                reply,
            } => {
                let _ = reply.send(self.delete(&room, id, only_by.as_deref()));
            }
            Op::Close(_) | Op::Forget(_) => {}
        }
    }

    /// Writes a batch in one transaction, then delivers what waited for it (sync durability).
    fn commit(&mut self, batch: &mut Vec<Appended>, delivers: &mut Vec<Deliver>) {
        if !batch.is_empty() {
            self.write(batch);
            self.queue.give_back(batch.drain(..).map(|a| a.data));
        }
        // Delivered even if the write failed: live chat goes on without history.
        for deliver in delivers.drain(..) {
            deliver();
        }
    }

    /// One row per room per commit: a busy room's batch is one insert, not a thousand. A
    /// room's messages come in id order (handed over under its lock), already encoded back to
    /// back as its chunk holds them.
    fn write(&mut self, batch: &[Appended]) {
        let rids = &mut self.rids;
        let touched = &mut self.touched;
        let mut added: Vec<(i64, u64)> = Vec::new();
        let mut added_bytes = 0u64;
        let result = in_transaction(&self.conn, |tx| {
            {
                // A room is once in a batch (twice only if it was dropped and made again).
                let mut chunks: Vec<(i64, Vec<&Appended>)> = Vec::new();
                let mut at: HashMap<i64, usize> = HashMap::new();
                for a in batch {
                    let rid = match rids.get(&*a.room) {
                        Some(rid) => *rid,
                        None => {
                            let rid = room_id(tx, &a.room)?;
                            rids.insert(a.room.to_string(), rid);
                            rid
                        }
                    };
                    match at.get(&rid) {
                        Some(&i) => chunks[i].1.push(a),
                        None => {
                            at.insert(rid, chunks.len());
                            chunks.push((rid, vec![a]));
                        }
                    }
                }
                let mut stmt = tx.prepare_cached(
                    "INSERT OR REPLACE INTO chunks (rid, last_id, count, first_ts, data)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                let mut last_ids = tx
                    .prepare_cached("UPDATE rooms SET last_id = MAX(last_id, ?2) WHERE rid = ?1")?;
                let mut joined = Vec::new();
                for (rid, parts) in &chunks {
                    let data: &[u8] = match parts.as_slice() {
                        [one] => &one.data,
                        _ => {
                            joined.clear();
                            for p in parts {
                                joined.extend_from_slice(&p.data);
                            }
                            &joined
                        }
                    };
                    let count: usize = parts.iter().map(|p| p.count).sum();
                    let last = parts.last().map_or(0, |p| sql_id(p.last_id));
                    let first_ts = parts.first().map_or(0, |p| p.first_ts as i64);
                    touched.insert(*rid, ());
                    added.push((*rid, count as u64));
                    stmt.execute(params![rid, last, count as i64, first_ts, data])?;
                    added_bytes += data.len() as u64;
                    last_ids.execute(params![rid, last])?;
                }
            }
            Ok(())
        });
        if result.is_err() {
            // A rolled-back transaction may have taken new rooms' rows with it.
            rids.clear();
        } else {
            self.total_bytes += added_bytes;
            for (rid, n) in added {
                if let Some(stored) = self.stored.get_mut(&rid) {
                    *stored += n;
                }
            }
        }
        match result {
            Ok(()) => {
                if !self.healthy.swap(true, Ordering::AcqRel) {
                    info!(path = %self.path.display(), "history store writes again");
                }
            }
            Err(e) => {
                // Logged once per outage; chat goes on without history meanwhile.
                if self.healthy.swap(false, Ordering::AcqRel) {
                    error!(path = %self.path.display(), "history store cannot write: {e}");
                }
            }
        }
    }

    /// The row id of a room that has stored messages, if it has.
    fn known_rid(&self, room: &str) -> Option<i64> {
        match self.rids.get(room) {
            Some(rid) => Some(*rid),
            None => self
                .conn
                .query_row("SELECT rid FROM rooms WHERE name = ?1", [room], |r| {
                    r.get(0)
                })
                .ok(),
        }
    }

    fn read(&mut self, room: &str, after: Option<u64>, until: u64, limit: usize) -> History {
        let rid = self.known_rid(room);
        let Some(rid) = rid else {
            return Ok(Vec::new());
        };
        let result = match after {
            Some(after) => self.read_after(rid, after, until, limit),
            None => self.read_last(rid, until, limit),
        };
        result.map_err(|e| {
            warn!("history query failed: {e}");
            Refusal::HistoryUnavailable.to_string()
        })
    }

    /// How many stored messages have ids in `after + 1 ..= until`: whole chunks by their
    /// counts, the (at most two) chunks on the edges by reading them.
    fn count_between(&mut self, room: &str, after: u64, until: u64) -> Result<usize, StoreError> {
        let rid = self.known_rid(room);
        let Some(rid) = rid else { return Ok(0) };
        let result = (|| -> rusqlite::Result<usize> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT last_id, count, data FROM chunks WHERE rid = ?1 AND last_id > ?2
                 ORDER BY last_id",
            )?;
            let mut rows = stmt.query(params![rid, sql_id(after)])?;
            let mut n = 0usize;
            let mut first = true;
            while let Some(row) = rows.next()? {
                let last_id = row.get::<_, i64>(0)?.max(0) as u64;
                let count = row.get::<_, i64>(1)?.max(0) as usize;
                if first || last_id > until {
                    // An edge chunk: count its messages one by one.
                    let data: Vec<u8> = row.get(2)?;
                    n += decode(&data)
                        .iter()
                        .filter(|m| m.id > after && m.id <= until)
                        .count();
                } else {
                    n += count;
                }
                first = false;
                if last_id >= until {
                    break;
                }
            }
            Ok(n)
        })();
        result.map_err(|e| {
            warn!("history count failed: {e}");
            StoreError::Query(e)
        })
    }

    /// Where the last `limit` messages up to `until` start: chunks newest first, one decoded
    /// at a time, only their ids kept.
    fn span_of_last(&mut self, room: &str, until: u64, limit: usize) -> Result<Span, StoreError> {
        let empty = Span {
            after: until,
            count: 0,
        };
        let Some(rid) = self.known_rid(room) else {
            return Ok(empty);
        };
        let result = (|| -> rusqlite::Result<Span> {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT data FROM chunks WHERE rid = ?1 ORDER BY last_id DESC")?;
            let mut rows = stmt.query([rid])?;
            let mut span = empty;
            while span.count < limit {
                let Some(row) = rows.next()? else { break };
                let mut ids = Vec::new();
                decode_where(row.get_ref(0)?.as_blob()?, |id| {
                    ids.push(id);
                    Want::Skip
                });
                let part = span_of_newest(ids.into_iter().rev(), until, limit - span.count);
                if part.count > 0 {
                    span.after = part.after;
                    span.count += part.count;
                }
            }
            Ok(span)
        })();
        result.map_err(|e| {
            warn!("history query failed: {e}");
            StoreError::Query(e)
        })
    }

    /// Deletes message `id` of `room`: its chunk (the first whose last id is at or above it)
    /// is rewritten without it, in one transaction, or deleted with it if it was the chunk's
    /// only message. Every read, count and span then skips it with no filter of their own, and
    /// retention's counts stay true: the chunk's `count` and `first_ts` are rewritten with it,
    /// and its `last_id` follows its new last message (so a chunk's key stays its last id).
    /// The room's last id (in `rooms`) is left alone: the id is never given again.
    fn delete(
        &mut self,
        room: &str,
        id: u64,
        only_by: Option<&str>,
    ) -> Result<Deleted, StoreError> {
        let Some(rid) = self.known_rid(room) else {
            return Ok(Deleted::NotFound);
        };
        let result = (|| -> rusqlite::Result<(Deleted, u64)> {
            let tx = self.conn.transaction()?;
            let chunk: Option<(i64, Vec<u8>)> = tx
                .query_row(
                    "SELECT last_id, data FROM chunks WHERE rid = ?1 AND last_id >= ?2
                     ORDER BY last_id LIMIT 1",
                    params![rid, sql_id(id)],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((last_id, data)) = chunk else {
                return Ok((Deleted::NotFound, 0));
            };
            let mut msgs = decode(&data);
            let Some(at) = msgs.iter().position(|m| m.id == id) else {
                return Ok((Deleted::NotFound, 0));
            };
            if only_by.is_some_and(|name| msgs[at].name != name) {
                return Ok((Deleted::NotYours, 0));
            }
            let gone = msgs.remove(at);
            let old_len = data.len() as u64;
            let freed = match (msgs.first(), msgs.last()) {
                (Some(first), Some(last)) => {
                    let mut data = Vec::with_capacity(data.len());
                    for m in &msgs {
                        encode(&m.as_ref(), &mut data);
                    }
                    let freed = old_len.saturating_sub(data.len() as u64);
                    tx.execute(
                        "UPDATE chunks SET last_id = ?3, count = ?4, first_ts = ?5, data = ?6
                         WHERE rid = ?1 AND last_id = ?2",
                        params![
                            rid,
                            last_id,
                            sql_id(last.id),
                            msgs.len() as i64,
                            first.ts.0 as i64,
                            data
                        ],
                    )?;
                    freed
                }
                _ => {
                    tx.execute(
                        "DELETE FROM chunks WHERE rid = ?1 AND last_id = ?2",
                        params![rid, last_id],
                    )?;
                    old_len
                }
            };
            tx.commit()?;
            Ok((Deleted::Done { name: gone.name }, freed))
        })();
        match result {
            Ok((deleted, freed)) => {
                if matches!(deleted, Deleted::Done { .. }) {
                    self.total_bytes = self.total_bytes.saturating_sub(freed);
                    if let Some(stored) = self.stored.get_mut(&rid) {
                        *stored = stored.saturating_sub(1);
                    }
                }
                Ok(deleted)
            }
            Err(e) => {
                warn!(room, id, "history delete failed: {e}");
                Err(StoreError::Query(e))
            }
        }
    }

    /// The first `limit` messages after `after`, oldest first.
    fn read_after(
        &self,
        rid: i64,
        after: u64,
        until: u64,
        limit: usize,
    ) -> rusqlite::Result<Vec<StoredMessage>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT data FROM chunks WHERE rid = ?1 AND last_id > ?2 ORDER BY last_id",
        )?;
        let mut rows = stmt.query(params![rid, sql_id(after)])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let data = row.get_ref(0)?.as_blob()?;
            let (mut kept, mut done) = (out.len(), false);
            let page = decode_where(data, |id| {
                if id > until || kept == limit {
                    done = true;
                    Want::Stop
                } else if id > after {
                    kept += 1;
                    Want::Keep
                } else {
                    Want::Skip
                }
            });
            out.extend(page);
            if done || out.len() == limit {
                return Ok(out);
            }
        }
        Ok(out)
    }

    /// The last `limit` messages, oldest first.
    fn read_last(
        &self,
        rid: i64,
        until: u64,
        limit: usize,
    ) -> rusqlite::Result<Vec<StoredMessage>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT data FROM chunks WHERE rid = ?1 ORDER BY last_id DESC")?;
        let mut rows = stmt.query([rid])?;
        let mut newest_first = Vec::new();
        while newest_first.len() < limit {
            let Some(row) = rows.next()? else { break };
            let data: Vec<u8> = row.get(0)?;
            let chunk = decode(&data);
            let room_left = limit - newest_first.len();
            newest_first.extend(
                chunk
                    .into_iter()
                    .rev()
                    .filter(|m| m.id <= until)
                    .take(room_left),
            );
        }
        newest_first.reverse();
        Ok(newest_first)
    }

    /// Retention runs here, in the background, at most once a second, for the rooms written
    /// since: whole chunks past the limits are deleted, and the chunk on the boundary is
    /// rewritten without its expired messages.
    fn prune(&mut self) {
        self.last_prune = Instant::now();
        let rids: Vec<i64> = self.touched.drain().map(|(r, _)| r).collect();
        let oldest = self.oldest();
        for rid in rids {
            if let Err(e) = self.prune_room(rid, oldest) {
                warn!(rid, "pruning failed: {e}");
            }
        }
        if let Err(e) = self.prune_total() {
            warn!("pruning to --history-max-bytes failed: {e}");
        }
    }

    /// The oldest time a message may have under `--history-max-age`.
    fn oldest(&self) -> Option<u64> {
        self.retention
            .max_age
            .map(|age| Timestamp::now().0.saturating_sub(age.as_millis() as u64))
    }

    /// Deletes the oldest chunks of any room while the history is over its total bound (in
    /// the order of the `chunks_by_age` index: a few rows read per chunk deleted).
    fn prune_total(&mut self) -> rusqlite::Result<()> {
        let max = self.retention.max_total_bytes;
        while max > 0 && self.total_bytes > max {
            let tx = self.conn.transaction()?;
            let mut freed = 0u64;
            let mut gone: Vec<(i64, u64)> = Vec::new();
            {
                let mut oldest = tx.prepare_cached(
                    "SELECT rid, last_id, count, length(data) FROM chunks
                     ORDER BY first_ts, rid, last_id LIMIT 64",
                )?;
                let chunks: Vec<(i64, i64, u64, u64)> = oldest
                    .query_map([], |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get::<_, i64>(2)?.max(0) as u64,
                            r.get::<_, i64>(3)?.max(0) as u64,
                        ))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                if chunks.is_empty() {
                    // Nothing left to delete: the count was off; start again from the file.
                    drop(oldest);
                    tx.commit()?;
                    self.total_bytes = stored_bytes(&self.conn)?;
                    return Ok(());
                }
                let mut delete =
                    tx.prepare_cached("DELETE FROM chunks WHERE rid = ?1 AND last_id = ?2")?;
                for (rid, last_id, count, len) in chunks {
                    if self.total_bytes.saturating_sub(freed) <= max {
                        break;
                    }
                    delete.execute(params![rid, last_id])?;
                    freed += len;
                    gone.push((rid, count));
                }
            }
            tx.commit()?;
            self.total_bytes = self.total_bytes.saturating_sub(freed);
            for (rid, count) in gone {
                if let Some(stored) = self.stored.get_mut(&rid) {
                    *stored = stored.saturating_sub(count);
                }
            }
        }
        Ok(())
    }

    /// A room the hub dropped: its retention is applied now (nothing will touch it later), its
    /// row id and count leave memory, and so does its last id once it is the one on disk (an
    /// append queued since, by the room come back, keeps it until the next forget).
    fn forget(&mut self, room: &str) {
        if let Some(rid) = self.rids.remove(room) {
            if self.touched.remove(&rid).is_some() {
                let oldest = self.oldest();
                if let Err(e) = self.prune_room(rid, oldest) {
                    warn!(rid, "pruning failed: {e}");
                }
            }
            self.stored.remove(&rid);
        }
        let Ok(on_disk) = last_id_on_disk(&self.conn, room) else {
            return; // kept: the next forget tries again
        };
        let continued = continued_id(on_disk, self.crashed);
        let mut ids = self.last_ids.lock().unwrap_or_else(|e| e.into_inner());
        if ids.get(room).is_some_and(|last| last.id <= continued) {
            ids.remove(room);
        }
        // A burst of rooms (many joined while the writer was behind) leaves a large table:
        // give it back once it is mostly empty.
        if ids.capacity() > 4 * ids.len() + 1024 {
            ids.shrink_to_fit();
        }
    }

    /// How many messages a room has stored (counted once, then kept up to date).
    fn stored(&mut self, rid: i64) -> rusqlite::Result<u64> {
        if let Some(n) = self.stored.get(&rid) {
            return Ok(*n);
        }
        let n: i64 = self.conn.query_row(
            "SELECT COALESCE(SUM(count), 0) FROM chunks WHERE rid = ?1",
            [rid],
            |r| r.get(0),
        )?;
        let n = n.max(0) as u64;
        self.stored.insert(rid, n);
        Ok(n)
    }

    /// Removes a room's expired messages, oldest first: whole chunks while what remains is
    /// still enough (or they are too old), then the chunk on the boundary rewritten without its
    /// expired messages. It reads only the chunks it removes, so a room at its limit costs a
    /// few rows a second, not its whole history.
    fn prune_room(&mut self, rid: i64, oldest: Option<u64>) -> rusqlite::Result<()> {
        let keep = self.retention.max_messages;
        let mut count = self.stored(rid)?;
        let first_ts: Option<i64> = self
            .conn
            .query_row(
                "SELECT first_ts FROM chunks WHERE rid = ?1 ORDER BY last_id LIMIT 1",
                [rid],
                |r| r.get(0),
            )
            .ok();
        let too_old_somewhere =
            matches!((oldest, first_ts), (Some(o), Some(f)) if (f.max(0) as u64) < o);
        if count <= keep && !too_old_somewhere {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        let mut freed = 0u64;
        {
            let mut stmt = tx.prepare_cached(
                "SELECT last_id, count, first_ts, length(data) FROM chunks
                 WHERE rid = ?1 AND last_id > ?2 ORDER BY last_id LIMIT 2",
            )?;
            let mut after = -1i64;
            loop {
                let pair: Vec<(i64, u64, u64, u64)> = stmt
                    .query_map(params![rid, after], |r| {
                        Ok((
                            r.get(0)?,
                            r.get::<_, i64>(1)?.max(0) as u64,
                            r.get::<_, i64>(2)?.max(0) as u64,
                            r.get::<_, i64>(3)?.max(0) as u64,
                        ))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                let Some(&(last_id, n, _, len)) = pair.first() else {
                    break;
                };
                // Every message of a chunk is no newer than the next chunk's first one.
                let wholly_old =
                    matches!((oldest, pair.get(1)), (Some(o), Some(next)) if next.2 < o);
                if count.saturating_sub(n) >= keep || wholly_old {
                    tx.execute(
                        "DELETE FROM chunks WHERE rid = ?1 AND last_id = ?2",
                        params![rid, last_id],
                    )?;
                    count -= n;
                    freed += len;
                    after = last_id;
                    continue;
                }
                // The boundary: drop its oldest messages over the limit, and any too old.
                let data: Vec<u8> = tx.query_row(
                    "SELECT data FROM chunks WHERE rid = ?1 AND last_id = ?2",
                    params![rid, last_id],
                    |r| r.get(0),
                )?;
                let msgs = decode(&data);
                let over = count.saturating_sub(keep) as usize;
                let survivors: Vec<&StoredMessage> = msgs
                    .iter()
                    .skip(over)
                    .filter(|m| oldest.is_none_or(|o| m.ts.0 >= o))
                    .collect();
                if survivors.is_empty() {
                    tx.execute(
                        "DELETE FROM chunks WHERE rid = ?1 AND last_id = ?2",
                        params![rid, last_id],
                    )?;
                    freed += len;
                } else if survivors.len() < msgs.len() {
                    let mut data = Vec::new();
                    for m in &survivors {
                        encode(&m.as_ref(), &mut data);
                    }
                    freed += len.saturating_sub(data.len() as u64);
                    tx.execute(
                        "UPDATE chunks SET count = ?3, first_ts = ?4, data = ?5
                         WHERE rid = ?1 AND last_id = ?2",
                        params![
                            rid,
                            last_id,
                            survivors.len() as i64,
                            survivors[0].ts.0 as i64,
                            data
                        ],
                    )?;
                }
                count -= (msgs.len() - survivors.len()) as u64;
                // If the whole chunk went, the next one may be too old as well.
                if survivors.is_empty() && oldest.is_some() {
                    after = last_id;
                    continue;
                }
                break;
            }
        }
        let result = tx.commit();
        if result.is_ok() {
            self.total_bytes = self.total_bytes.saturating_sub(freed);
            self.stored.insert(rid, count);
        } else {
            self.stored.remove(&rid);
        }
        result
    }
}

/// Runs `f` in one transaction, begun and committed by cached statements: rusqlite's
/// `transaction()` and `commit()` parse `BEGIN` and `COMMIT` again each time, which showed in
/// the writer's profile at 20 commits a second. Rolled back if anything fails.
fn in_transaction<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached("BEGIN")?.execute([])?;
    let done = f(conn).and_then(|v| {
        conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(v)
    });
    if done.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    done
}

/// A chunk holds its messages back to back: id, time (ms), action flag, name length (u16),
/// name, text length (u32), text; numbers little-endian.
pub(crate) fn encode(m: &MessageRef<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(&m.id.to_le_bytes());
    out.extend_from_slice(&m.ts.0.to_le_bytes());
    out.push(u8::from(m.action));
    out.extend_from_slice(&(m.name.len() as u16).to_le_bytes());
    out.extend_from_slice(m.name.as_bytes());
    out.extend_from_slice(&(m.text.len() as u32).to_le_bytes());
    out.extend_from_slice(m.text.as_bytes());
}

/// An id as SQLite's signed integer. A client may name any u64 as `since`; cast as it is, the
/// largest would turn negative and make a query read the whole room to return nothing.
fn sql_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// What to do with a message of a chunk, by its id.
enum Want {
    Keep,
    /// Skipped without copying its name and text (a page of a replay needs a few of a chunk).
    Skip,
    Stop,
}

/// Decodes a chunk; a damaged tail is dropped, never a panic.
pub(crate) fn decode(data: &[u8]) -> Vec<StoredMessage> {
    decode_where(data, |_| Want::Keep)
}

/// Decodes the messages of a chunk that `want` keeps, until it says stop.
fn decode_where(mut data: &[u8], mut want: impl FnMut(u64) -> Want) -> Vec<StoredMessage> {
    fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if data.len() < n {
            return None;
        }
        let (head, rest) = data.split_at(n);
        *data = rest;
        Some(head)
    }
    fn u64_at(data: &mut &[u8]) -> Option<u64> {
        take(data, 8)?.try_into().ok().map(u64::from_le_bytes)
    }
    let mut out = Vec::new();
    while !data.is_empty() {
        let one = (|| {
            let id = u64_at(&mut data)?;
            let ts = u64_at(&mut data)?;
            let action = take(&mut data, 1)?[0] != 0;
            let name_len = u16::from_le_bytes(take(&mut data, 2)?.try_into().ok()?) as usize;
            let name = take(&mut data, name_len)?;
            let text_len = u32::from_le_bytes(take(&mut data, 4)?.try_into().ok()?) as usize;
            let text = take(&mut data, text_len)?;
            Some((id, ts, action, name, text))
        })();
        let Some((id, ts, action, name, text)) = one else {
            break;
        };
        match want(id) {
            Want::Keep => out.push(StoredMessage {
                id,
                name: String::from_utf8_lossy(name).into_owned(),
                text: String::from_utf8_lossy(text).into_owned(),
                ts: Timestamp(ts),
                action,
            }),
            Want::Skip => {}
            Want::Stop => break,
        }
    }
    out
}

/// The row id of a room's name, created on first use.
fn room_id(conn: &Connection, room: &str) -> rusqlite::Result<i64> {
    conn.execute("INSERT OR IGNORE INTO rooms (name) VALUES (?1)", [room])?;
    conn.query_row("SELECT rid FROM rooms WHERE name = ?1", [room], |r| {
        r.get(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a client is told when history cannot be read is one text, whatever the store and
    /// the cause: no file path, no SQLite or NATS error reaches it (they go to the log).
    #[test]
    fn a_failed_read_tells_the_client_only_that_history_is_unavailable() {
        let unavailable = Refusal::HistoryUnavailable.to_string();
        let stream = async_nats::Error::from(std::io::Error::other("nats: stream not found"));
        for e in [
            StoreError::Unavailable,
            StoreError::Query(rusqlite::Error::InvalidQuery),
            StoreError::Stream(stream),
            StoreError::ReadTimedOut,
        ] {
            assert_eq!(e.to_string(), unavailable, "{e:?}");
        }
        assert_eq!(StoreError::Off.to_string(), Refusal::HistoryOff.to_string());
    }

    fn msg(id: u64) -> StoredMessage {
        StoredMessage {
            id,
            name: "a".into(),
            text: format!("m{id}"),
            ts: Timestamp(id),
            action: false,
        }
    }

    fn ids(h: History) -> Vec<u64> {
        h.unwrap().iter().map(|m| m.id).collect()
    }

    fn check(store: &dyn Store) {
        assert_eq!(store.last_id("r"), 0);
        for id in 1..=30 {
            store.append(&Arc::from("r"), &msg(id).as_ref(), None);
        }
        store.append(&Arc::from("other"), &msg(1).as_ref(), None);
        assert_eq!(store.last_id("r"), 30);
        let last = store.query("r", None, u64::MAX, 5).blocking_recv().unwrap();
        assert_eq!(ids(last), vec![26, 27, 28, 29, 30]);
        let after = store
            .query("r", Some(27), u64::MAX, 100)
            .blocking_recv()
            .unwrap();
        assert_eq!(ids(after), vec![28, 29, 30]);
        let upto = store.query("r", None, 29, 2).blocking_recv().unwrap();
        assert_eq!(ids(upto), vec![28, 29]);
        let after = store.query("r", Some(27), 29, 100).blocking_recv().unwrap();
        assert_eq!(ids(after), vec![28, 29]);
        let after = store
            .query("r", Some(27), u64::MAX, 100)
            .blocking_recv()
            .unwrap();
        assert_eq!(ids(after), vec![28, 29, 30]);
        let none = store
            .query("nobody", None, u64::MAX, 5)
            .blocking_recv()
            .unwrap();
        assert!(none.unwrap().is_empty());
        // Where the last N start, without reading them: the span a paged replay reads after.
        let span = |room: &str, until: u64, n: usize| {
            store
                .last_span(room, until, n)
                .blocking_recv()
                .unwrap()
                .unwrap()
        };
        assert_eq!(
            span("r", u64::MAX, 5),
            Span {
                after: 25,
                count: 5
            }
        );
        assert_eq!(
            span("r", 29, 2),
            Span {
                after: 27,
                count: 2
            }
        );
        assert_eq!(
            span("r", u64::MAX, 100),
            Span {
                after: 0,
                count: 30
            }
        );
        assert_eq!(span("nobody", 7, 5), Span { after: 7, count: 0 });
        // Pages of a few, in order, up to `until`, never past a limit.
        let page = store.query("r", Some(25), 29, 3).blocking_recv().unwrap();
        assert_eq!(ids(page), vec![26, 27, 28]);
        let page = store.query("r", Some(28), 29, 3).blocking_recv().unwrap();
        assert_eq!(ids(page), vec![29]);
    }

    /// Waits for a store's answer to a delete.
    fn delete(store: &dyn Store, room: &str, id: u64, only_by: Option<&str>) -> Deleted {
        store
            .delete(room, id, only_by)
            .blocking_recv()
            .unwrap()
            .unwrap()
    }

    /// Deletes from a room of 10 messages in three chunks (in SQLite: a count between the
    /// groups commits each as one): in the middle of a chunk, at its start, a whole chunk, the
    /// room's newest. Every read skips what went; ids are not given again. Leaves the room
    /// with 1, 2, 3, 7, 8, 9, 11.
    fn check_delete(store: &dyn Store) {
        let room: Arc<str> = Arc::from("d");
        for group in [1..=3, 4..=6, 7..=10] {
            for id in group {
                let name = if id == 4 { "b" } else { "a" };
                let m = StoredMessage {
                    name: name.into(),
                    ..msg(id)
                };
                store.append(&room, &m.as_ref(), None);
            }
            let _ = store.count("d", 0, 0).blocking_recv();
        }
        let all = || {
            ids(store
                .query("d", None, u64::MAX, 100)
                .blocking_recv()
                .unwrap())
        };
        let count = |after, until| store.count("d", after, until).blocking_recv().unwrap();
        let span = |until, limit| store.last_span("d", until, limit).blocking_recv().unwrap();
        let done = |name: &str| Deleted::Done { name: name.into() };
        // In the middle of a chunk; a second time it is not found.
        assert_eq!(delete(store, "d", 5, None), done("a"));
        assert_eq!(delete(store, "d", 5, None), Deleted::NotFound);
        for (room, id) in [
            ("d", 99),
            ("d", 0),
            ("d", u64::MAX),
            ("nobody", 1),
            ("other", 5),
        ] {
            assert_eq!(
                delete(store, room, id, None),
                Deleted::NotFound,
                "{room} {id}"
            );
        }
        // Only its author's, by the exact name.
        assert_eq!(delete(store, "d", 4, Some("a")), Deleted::NotYours);
        assert_eq!(delete(store, "d", 4, Some("B")), Deleted::NotYours);
        assert_eq!(all(), vec![1, 2, 3, 4, 6, 7, 8, 9, 10]);
        assert_eq!(delete(store, "d", 4, Some("b")), done("b"));
        assert_eq!(all(), vec![1, 2, 3, 6, 7, 8, 9, 10]);
        assert_eq!(count(0, u64::MAX).unwrap(), 8);
        assert_eq!(count(3, 6).unwrap(), 1);
        assert_eq!(count(3, 5).unwrap(), 0);
        assert_eq!(span(u64::MAX, 7).unwrap(), Span { after: 1, count: 7 });
        assert_eq!(span(6, 2).unwrap(), Span { after: 2, count: 2 });
        let page = store.query("d", Some(2), 8, 2).blocking_recv().unwrap();
        assert_eq!(ids(page), vec![3, 6]);
        let page = store.query("d", Some(3), 8, 2).blocking_recv().unwrap();
        assert_eq!(ids(page), vec![6, 7]);
        // The last of what was a chunk of its own, then the room's newest.
        assert_eq!(delete(store, "d", 6, None), done("a"));
        assert_eq!(count(0, u64::MAX).unwrap(), 7);
        assert_eq!(count(2, 7).unwrap(), 2);
        assert_eq!(delete(store, "d", 10, Some("a")), done("a"));
        assert_eq!(all(), vec![1, 2, 3, 7, 8, 9]);
        assert_eq!(span(u64::MAX, 3).unwrap(), Span { after: 6, count: 3 });
        // The id of the deleted newest message is not given again.
        assert_eq!(store.last_id("d"), 10);
        store.append(&room, &msg(11).as_ref(), None);
        assert_eq!(store.last_id("d"), 11);
        let last = store.query("d", None, u64::MAX, 3).blocking_recv().unwrap();
        assert_eq!(ids(last), vec![8, 9, 11]);
        let after = store
            .query("d", Some(9), u64::MAX, 3)
            .blocking_recv()
            .unwrap();
        assert_eq!(ids(after), vec![11]);
        assert_eq!(count(0, u64::MAX).unwrap(), 7);
    }

    #[test]
    fn no_store_refuses_to_delete() {
        let deleted = NoStore.delete("r", 1, None).blocking_recv().unwrap();
        assert!(matches!(deleted, Err(StoreError::Off)), "{deleted:?}");
    }

    #[test]
    fn the_memory_store_deletes_one_message() {
        let store = MemoryStore::new(Retention {
            max_messages: 100,
            max_age: None,
            max_total_bytes: 0,
        });
        check_delete(&store);
        // A room's only message: its id still outlives it.
        store.append(&Arc::from("one"), &msg(1).as_ref(), None);
        assert_eq!(
            delete(&store, "one", 1, None),
            Deleted::Done { name: "a".into() }
        );
        assert_eq!(store.last_id("one"), 1);
        assert_eq!(
            store
                .count("one", 0, u64::MAX)
                .blocking_recv()
                .unwrap()
                .unwrap(),
            0
        );
    }

    /// The total bound drops the oldest messages in the order they came: a deleted one in the
    /// middle of that order is skipped when met, and its cost was given back at once.
    #[test]
    fn the_memory_total_bound_skips_a_deleted_message() {
        let cost = memory_cost(&msg(1));
        let store = MemoryStore::new(Retention {
            max_messages: 100,
            max_age: None,
            max_total_bytes: 5 * cost,
        });
        let room: Arc<str> = Arc::from("r");
        for id in 1..=5 {
            store.append(&room, &msg(id).as_ref(), None);
        }
        assert_eq!(
            delete(&store, "r", 3, None),
            Deleted::Done { name: "a".into() }
        );
        store.append(&room, &msg(6).as_ref(), None);
        let kept = || {
            ids(store
                .query("r", None, u64::MAX, 100)
                .blocking_recv()
                .unwrap())
        };
        assert_eq!(kept(), vec![1, 2, 4, 5, 6]);
        for id in 7..=9 {
            store.append(&room, &msg(id).as_ref(), None);
        }
        assert_eq!(kept(), vec![5, 6, 7, 8, 9]);
        let inner = store.lock();
        assert_eq!((inner.count, inner.bytes), (5, 5 * cost));
    }

    fn sqlite_dir_store(dir: &Path, max_messages: u64) -> SqliteStore {
        let retention = Retention {
            max_messages,
            max_age: None,
            max_total_bytes: 0,
        };
        SqliteStore::open(dir, retention, Batching::default(), false).unwrap()
    }

    #[test]
    fn the_sqlite_store_deletes_one_message_for_good() {
        let dir = fresh_dir("delete-");
        {
            let store = sqlite_dir_store(&dir, 100);
            check_delete(&store);
            store.close();
        }
        // On disk: still deleted after a restart, and the ids go on after the deleted newest.
        let store = sqlite_dir_store(&dir, 100);
        let all = ids(store
            .query("d", None, u64::MAX, 100)
            .blocking_recv()
            .unwrap());
        assert_eq!(all, vec![1, 2, 3, 7, 8, 9, 11]);
        assert_eq!(delete(&store, "d", 5, None), Deleted::NotFound);
        assert_eq!(store.last_id("d"), 11);
        assert_eq!(
            store
                .count("d", 0, u64::MAX)
                .blocking_recv()
                .unwrap()
                .unwrap(),
            7
        );
        // A room's only message: its id still outlives it, also across a restart.
        store.append(&Arc::from("one"), &msg(1).as_ref(), None);
        assert_eq!(
            delete(&store, "one", 1, None),
            Deleted::Done { name: "a".into() }
        );
        store.close();
        drop(store);
        let store = sqlite_dir_store(&dir, 100);
        assert_eq!(store.last_id("one"), 1);
        store.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A delete waits for the appends queued before it, and cuts their batch's gathering
    /// short: a message appended and deleted at once ends deleted, and soon.
    #[test]
    fn a_message_deleted_while_its_batch_gathers_ends_deleted() {
        let dir = fresh_dir("delete-queued-");
        let retention = Retention {
            max_messages: 100,
            max_age: None,
            max_total_bytes: 0,
        };
        let batching = Batching {
            window: Duration::from_secs(30),
            max_messages: 1000,
        };
        let store = SqliteStore::open(&dir, retention, batching, false).unwrap();
        let room: Arc<str> = Arc::from("r");
        let started = Instant::now();
        for id in 1..=3 {
            store.append(&room, &msg(id).as_ref(), None);
        }
        assert_eq!(
            delete(&store, "r", 3, None),
            Deleted::Done { name: "a".into() }
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        let kept = ids(store
            .query("r", None, u64::MAX, 100)
            .blocking_recv()
            .unwrap());
        assert_eq!(kept, vec![1, 2]);
        store.close();
        drop(store);
        let store = SqliteStore::open(&dir, retention, batching, false).unwrap();
        let kept = ids(store
            .query("r", None, u64::MAX, 100)
            .blocking_recv()
            .unwrap());
        assert_eq!(kept, vec![1, 2]);
        assert_eq!(store.last_id("r"), 3);
        store.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Retention counts a room's messages from its chunks' counts (summed on open, then kept
    /// up to date): deletes keep both true, so it still keeps exactly the newest.
    #[test]
    fn retention_after_deletes_keeps_exactly_the_newest() {
        let dir = fresh_dir("delete-prune-");
        let room: Arc<str> = Arc::from("r");
        let kept = |store: &SqliteStore| {
            ids(store
                .query("r", None, u64::MAX, 1000)
                .blocking_recv()
                .unwrap())
        };
        {
            let store = sqlite_dir_store(&dir, 1000);
            for id in 1..=20 {
                store.append(&room, &msg(id).as_ref(), None);
                if id % 5 == 0 {
                    flush(&store);
                }
            }
            for id in [12, 18] {
                assert_eq!(
                    delete(&store, "r", id, None),
                    Deleted::Done { name: "a".into() }
                );
            }
            store.close();
        }
        // Counted from the file: 19 messages, 10 kept.
        let store = sqlite_dir_store(&dir, 10);
        store.append(&room, &msg(21).as_ref(), None);
        flush(&store);
        std::thread::sleep(Duration::from_millis(2500));
        assert_eq!(kept(&store), vec![10, 11, 13, 14, 15, 16, 17, 19, 20, 21]);
        // Counted in memory: two deleted and two new make 10 again, and nothing more goes.
        for id in [15, 20] {
            assert_eq!(
                delete(&store, "r", id, None),
                Deleted::Done { name: "a".into() }
            );
        }
        for id in 22..=23 {
            store.append(&room, &msg(id).as_ref(), None);
        }
        flush(&store);
        std::thread::sleep(Duration::from_millis(2500));
        assert_eq!(kept(&store), vec![10, 11, 13, 14, 16, 17, 19, 21, 22, 23]);
        // And one more over the bound drops exactly the oldest.
        store.append(&room, &msg(24).as_ref(), None);
        flush(&store);
        std::thread::sleep(Duration::from_millis(2500));
        assert_eq!(kept(&store), vec![11, 13, 14, 16, 17, 19, 21, 22, 23, 24]);
        store.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn chunks_round_trip_and_survive_damage() {
        let msgs: Vec<StoredMessage> = (1..=3).map(msg).collect();
        let mut data = Vec::new();
        for m in &msgs {
            encode(&m.as_ref(), &mut data);
        }
        assert_eq!(decode(&data), msgs);
        assert_eq!(decode(&data[..data.len() - 3]), msgs[..2]);
        assert!(decode(&[1, 2, 3]).is_empty());
    }

    #[test]
    fn memory_store() {
        let retention = Retention {
            max_messages: 100,
            max_age: None,
            max_total_bytes: 0,
        };
        check(&MemoryStore::new(retention));
        let small = MemoryStore::new(Retention {
            max_messages: 3,
            max_age: None,
            max_total_bytes: 0,
        });
        for id in 1..=10 {
            small.append(&Arc::from("r"), &msg(id).as_ref(), None);
        }
        assert_eq!(
            ids(small
                .query("r", None, u64::MAX, 10)
                .blocking_recv()
                .unwrap()),
            vec![8, 9, 10]
        );
    }

    #[test]
    fn sqlite_store_keeps_ids_across_reopen() {
        let dir = fresh_dir("test-");
        let retention = Retention {
            max_messages: 100,
            max_age: None,
            max_total_bytes: 0,
        };
        {
            let store = SqliteStore::open(&dir, retention, Batching::default(), false).unwrap();
            check(&store);
            store.close();
        }
        let store = SqliteStore::open(&dir, retention, Batching::default(), false).unwrap();
        assert_eq!(store.last_id("r"), 30);
        assert_eq!(
            ids(store
                .query("r", Some(28), u64::MAX, 10)
                .blocking_recv()
                .unwrap()),
            vec![29, 30]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn retention_over_many_chunks_keeps_exactly_the_newest() {
        let dir = fresh_dir("prune-");
        let retention = Retention {
            max_messages: 50,
            max_age: None,
            max_total_bytes: 0,
        };
        // No gathering window: almost every append is its own chunk.
        let store =
            SqliteStore::open(&dir, retention, Batching::for_durability(true), false).unwrap();
        let room: Arc<str> = Arc::from("r");
        for id in 1..=200 {
            store.append(&room, &msg(id).as_ref(), None);
            if id % 10 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        // Pruning runs on the writer at most once a second, also when idle.
        std::thread::sleep(Duration::from_millis(2500));
        let kept = ids(store
            .query("r", None, u64::MAX, 1000)
            .blocking_recv()
            .unwrap());
        assert_eq!(kept, (151..=200).collect::<Vec<u64>>());
        store.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_corrupt_file_is_a_clear_error() {
        let dir = fresh_dir("corrupt-");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("history.db"), vec![0x42u8; 8192]).unwrap();
        let retention = Retention {
            max_messages: 100,
            max_age: None,
            max_total_bytes: 0,
        };
        let err = SqliteStore::open(&dir, retention, Batching::default(), false)
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains("history.db"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An empty directory of this test process's own, named after the test.
    fn fresh_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("machat-store-{tag}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// A file written in the first layout (`chunks` WITHOUT ROWID) is copied into the rowid
    /// layout at open, with every message, and keeps its ids.
    #[test]
    fn a_file_in_the_old_layout_is_brought_up_to_date() {
        let dir = fresh_dir("old-layout-");
        std::fs::create_dir_all(&dir).unwrap();
        {
            let conn = Connection::open(dir.join(FILE)).unwrap();
            conn.execute_batch(
                "CREATE TABLE rooms (rid INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
                    last_id INTEGER NOT NULL DEFAULT 0);
                CREATE TABLE chunks (rid INTEGER NOT NULL, last_id INTEGER NOT NULL,
                    count INTEGER NOT NULL, first_ts INTEGER NOT NULL, data BLOB NOT NULL,
                    PRIMARY KEY (rid, last_id)) WITHOUT ROWID;
                CREATE INDEX chunks_by_age ON chunks (first_ts);
                CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                INSERT INTO meta VALUES ('clean', '1');
                INSERT INTO rooms VALUES (1, 'old', 3);",
            )
            .unwrap();
            for (last, ids) in [(2i64, 1..=2u64), (3, 3..=3)] {
                let mut data = Vec::new();
                for id in ids.clone() {
                    encode(&msg(id).as_ref(), &mut data);
                }
                conn.execute(
                    "INSERT INTO chunks VALUES (1, ?1, ?2, 0, ?3)",
                    params![last, ids.count() as i64, data],
                )
                .unwrap();
            }
        }
        let store = sqlite_dir_store(&dir, 100);
        assert_eq!(store.last_id("old"), 3);
        store.append(&Arc::from("old"), &msg(4).as_ref(), None);
        let all = ids(store
            .query("old", None, u64::MAX, 100)
            .blocking_recv()
            .unwrap());
        assert_eq!(all, vec![1, 2, 3, 4]);
        store.close();
        drop(store);
        let conn = Connection::open(dir.join(FILE)).unwrap();
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'chunks'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(!sql.to_ascii_uppercase().contains("WITHOUT ROWID"), "{sql}");
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Appends gather by room, but a query queued between two of a room's messages answers
    /// with the first and not the second, and both are stored, in order.
    #[test]
    fn a_query_between_a_rooms_appends_sees_exactly_those_before_it() {
        let dir = fresh_dir("segments-");
        let batching = Batching {
            window: Duration::from_secs(30),
            max_messages: 1000,
        };
        let store = SqliteStore::open(&dir, Retention::default(), batching, false).unwrap();
        let (a, b) = (Arc::from("a"), Arc::from("b"));
        store.append(&a, &msg(1).as_ref(), None);
        store.append(&b, &msg(1).as_ref(), None);
        store.append(&a, &msg(2).as_ref(), None);
        let first = store.query("a", None, u64::MAX, 100);
        store.append(&a, &msg(3).as_ref(), None);
        store.append(&b, &msg(2).as_ref(), None);
        let second = store.query("a", None, u64::MAX, 100);
        assert_eq!(ids(first.blocking_recv().unwrap()), vec![1, 2]);
        assert_eq!(ids(second.blocking_recv().unwrap()), vec![1, 2, 3]);
        let b_all = store.query("b", None, u64::MAX, 100).blocking_recv();
        assert_eq!(ids(b_all.unwrap()), vec![1, 2]);
        store.close();
        drop(store);
        // One room's messages from two batches are two chunks; after a restart they read as one
        // sequence.
        let store = sqlite_dir_store(&dir, 100);
        let all = ids(store
            .query("a", None, u64::MAX, 100)
            .blocking_recv()
            .unwrap());
        assert_eq!(all, vec![1, 2, 3]);
        store.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn cached_rooms(store: &SqliteStore) -> usize {
        store.last_ids.lock().unwrap().len()
    }

    /// Waits (bounded) for the writer to have handled everything queued before.
    fn flush(store: &SqliteStore) {
        let _ = store.count("flush", 0, 0).blocking_recv();
    }

    #[test]
    fn forgotten_rooms_leave_memory_and_keep_their_ids() {
        let dir = fresh_dir("forget-");
        let retention = Retention {
            max_messages: 100,
            max_age: None,
            max_total_bytes: 0,
        };
        let store = SqliteStore::open(&dir, retention, Batching::default(), false).unwrap();
        // Rooms joined and left without a word: nothing stays.
        for i in 0..1000 {
            let room = format!("quiet{i}");
            assert_eq!(store.last_id(&room), 0);
            store.forget(&room);
        }
        flush(&store);
        assert_eq!(cached_rooms(&store), 0);
        // A room with messages: forgotten once they are on disk, and its ids go on from there.
        for id in 1..=5 {
            store.append(&Arc::from("busy"), &msg(id).as_ref(), None);
        }
        store.forget("busy");
        flush(&store);
        assert_eq!(cached_rooms(&store), 0);
        assert_eq!(store.ops.lock().queued, 0);
        assert_eq!(store.last_id("busy"), 5);
        // Come back before the forget is handled: an append queued after it keeps the entry.
        store.forget("busy");
        store.append(&Arc::from("busy"), &msg(6).as_ref(), None);
        flush(&store);
        assert_eq!(store.last_id("busy"), 6);
        store.forget("busy");
        flush(&store);
        assert_eq!(cached_rooms(&store), 0);
        assert_eq!(store.last_id("busy"), 6);
        store.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_total_bound_drops_the_oldest_chunks_first() {
        let dir = fresh_dir("total-");
        let retention = Retention {
            max_messages: 1000,
            max_age: None,
            max_total_bytes: 21_000,
        };
        let store = SqliteStore::open(&dir, retention, Batching::default(), false).unwrap();
        let big = |id: u64| StoredMessage {
            text: "z".repeat(1000),
            ..msg(id)
        };
        for room in ["a", "b", "c"] {
            for id in 1..=10 {
                store.append(&Arc::from(room), &big(id).as_ref(), None);
            }
            // One chunk per room, committed in this order (so oldest first by time too).
            flush(&store);
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(2500));
        let len = |room: &str| {
            store
                .query(room, None, u64::MAX, 100)
                .blocking_recv()
                .unwrap()
                .unwrap()
                .len()
        };
        // 30 KB over a 21 KB bound: room a's chunk went, b and c stayed.
        assert_eq!((len("a"), len("b"), len("c")), (0, 10, 10));
        // The ids of a room whose history went are still not reused.
        assert_eq!(store.last_id("a"), 10);
        store.close();
        drop(store);
        // The bound is counted from the file on reopen.
        let store = SqliteStore::open(&dir, retention, Batching::default(), false).unwrap();
        for id in 11..=20 {
            store.append(&Arc::from("c"), &big(id).as_ref(), None);
        }
        flush(&store);
        std::thread::sleep(Duration::from_millis(2500));
        let b = store
            .query("b", None, u64::MAX, 100)
            .blocking_recv()
            .unwrap();
        assert!(ids(b).is_empty());
        store.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_memory_store_keeps_only_rooms_with_history_under_its_bound() {
        let store = MemoryStore::new(Retention {
            max_messages: 5,
            max_age: None,
            max_total_bytes: 10 * memory_cost(&msg(1)) + 100,
        });
        for room in 0..100 {
            for id in 1..=3 {
                store.append(&Arc::from(format!("r{room}")), &msg(id).as_ref(), None);
            }
        }
        let inner = store.lock();
        assert!(inner.count <= 11, "{} messages kept", inner.count);
        assert!(inner.rooms.len() <= 5, "{} rooms kept", inner.rooms.len());
        assert!(inner.order.len() <= 2 * inner.count + 1024);
        assert!(inner.rooms.contains_key("r99"));
        drop(inner);
        assert_eq!(store.last_id("r99"), 3);
        // One room at its own limit for a long time: the order does not grow without end.
        for id in 4..=20_000 {
            store.append(&Arc::from("r99"), &msg(id).as_ref(), None);
        }
        let inner = store.lock();
        assert!(inner.order.len() <= 2 * inner.count + 1024);
    }
}
