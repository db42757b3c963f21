//! Marks: the rooms a person keeps, how far they have read in each, and how much noise each
//! may make (`docs/PROTOCOL.md`, section 19). A person is a registered name proved at the
//! handshake; their marks follow them to every device: every change is pushed at once to each
//! of their version-2 sessions, on every node.
//!
//! Three parts:
//! - [`Mark`] and [`Edit`]: a change travels as an edit (add if absent, remove, read forward,
//!   set the level), never as the list it made, so the store applies it to the list as stored
//!   and two nodes changing one person's marks at once both count (the cluster's writes are
//!   read, edit, write-if-unchanged).
//! - [`Keeper`]: where marks are kept, behind the [`Backend`] seam: `marks.db` in the data dir
//!   ([`SqliteBackend`], its own file, as `moderation.db`), memory ([`MemoryBackend`],
//!   `--history memory|off`), or the cluster's bucket `machat-marks` (`crate::cluster::marks`).
//!   One thread of its own writes, so no request waits for a disk or NATS; it writes one
//!   person's edits at most once a second ([`COALESCE`]) unless one of them is urgent (a mark
//!   added or removed, a level): a client reporting its read position on every message, or an
//!   attacker sending a million `read`s, costs one write a second. Loading a person goes through
//!   the same thread, after that person's queued edits, so a device that connects right after
//!   another left reads what the first one did.
//! - [`Marks`]: the marks of the persons with a session on this node, in memory while they
//!   are here, and each session's [`Inbox`]: the pushes waiting for it, bounded
//!   ([`INBOX_MAX`]); past the bound the queue is dropped and the session gets one fresh
//!   `marks` line instead. Every change and every push happens under one lock, so each device
//!   sees a person's changes in one order.
//!
//! Nothing here knows rooms or the hub: the caller hands in each room's last id.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{error, warn};

use crate::protocol::push_json;
use crate::request::{Level, ReqId};

/// Most marks one person keeps: a join past it still works but keeps no mark, and nobody's
/// marks are ever evicted by someone else (a `dm` to a full person adds nothing to theirs).
pub const MAX_MARKS: usize = 300;
/// Bytes of pushes waiting for one session; past this, one fresh `marks` line instead.
pub const INBOX_MAX: usize = 64 * 1024;
/// The file in the data dir.
pub const FILE: &str = "marks.db";
/// How often at most one person's marks are written when no change is urgent.
pub const COALESCE: Duration = Duration::from_secs(1);
/// Edits queued for one person beyond which they are written at once whatever the time.
const PENDING_MAX: usize = 1000;
/// How long a load waits for the keeper (the disk or NATS) before the session starts without
/// marks.
pub const LOAD_WAIT: Duration = Duration::from_secs(5);

/// One room a person keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub room: String,
    /// The last message id read (0: nothing).
    #[serde(default)]
    pub read: u64,
    #[serde(default)]
    pub notify: Level,
    /// A direct conversation: the other party's registered name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with: Option<String>,
    /// When it last changed (milliseconds since the epoch): a `marks` line lists the newest
    /// change first.
    #[serde(default)]
    pub at: u64,
}

/// A person's marks as stored (JSON in the file and the bucket).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Book {
    #[serde(default)]
    pub marks: Vec<Mark>,
}

impl Book {
    /// Reads a stored book; an unreadable one is empty (and logged), never a failure.
    pub fn parse(person: &str, bytes: &[u8]) -> Book {
        let mut book: Book = serde_json::from_slice(bytes)
            .map_err(|e| warn!(person, "an unreadable marks record is ignored: {e}"))
            .unwrap_or_default();
        book.marks.truncate(MAX_MARKS);
        book
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| b"{\"marks\":[]}".to_vec())
    }
}

/// A change to one person's marks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Adds a mark for `room` if there is none and the person keeps fewer than [`MAX_MARKS`].
    Add {
        room: String,
        read: u64,
        with: Option<String>,
        at: u64,
    },
    Remove {
        room: String,
    },
    /// Moves `read` forward to `id` (never back).
    Read {
        room: String,
        id: u64,
        at: u64,
    },
    Notify {
        room: String,
        level: Level,
        at: u64,
    },
}

/// What an edit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The mark at this index (0: they are newest first) changed or was added.
    Changed,
    /// The mark was removed.
    Removed,
    /// Nothing to do (already there, not forward, the same level).
    Same,
    /// An add past [`MAX_MARKS`].
    Full,
    /// A read or level for a room with no mark.
    NoMark,
}

impl Edit {
    pub fn room(&self) -> &str {
        match self {
            Edit::Add { room, .. }
            | Edit::Remove { room }
            | Edit::Read { room, .. }
            | Edit::Notify { room, .. } => room,
        }
    }

    /// Must reach the store (and the person's other nodes) soon: anything but a read.
    pub fn urgent(&self) -> bool {
        !matches!(self, Edit::Read { .. })
    }

    /// Applies the edit to a list kept newest change first.
    pub fn apply(&self, marks: &mut Vec<Mark>) -> Applied {
        let found = marks.iter().position(|m| m.room == self.room());
        match (self, found) {
            (Edit::Add { .. }, Some(_)) => Applied::Same,
            (Edit::Add { .. }, None) if marks.len() >= MAX_MARKS => Applied::Full,
            (
                Edit::Add {
                    room,
                    read,
                    with,
                    at,
                },
                None,
            ) => {
                marks.insert(
                    0,
                    Mark {
                        room: room.clone(),
                        read: *read,
                        notify: Level::All,
                        with: with.clone(),
                        at: *at,
                    },
                );
                Applied::Changed
            }
            (Edit::Remove { .. }, Some(i)) => {
                marks.remove(i);
                Applied::Removed
            }
            (Edit::Remove { .. }, None) => Applied::Same,
            (Edit::Read { .. } | Edit::Notify { .. }, None) => Applied::NoMark,
            (Edit::Read { id, at, .. }, Some(i)) => {
                if *id <= marks[i].read {
                    return Applied::Same;
                }
                let mut mark = marks.remove(i);
                mark.read = *id;
                mark.at = *at;
                marks.insert(0, mark);
                Applied::Changed
            }
            (Edit::Notify { level, at, .. }, Some(i)) => {
                if marks[i].notify == *level {
                    return Applied::Same;
                }
                let mut mark = marks.remove(i);
                mark.notify = *level;
                mark.at = *at;
                marks.insert(0, mark);
                Applied::Changed
            }
        }
    }
}

/// Applies edits to a stored list (the keeper's side): the same rules as at the edit.
pub fn apply_all(marks: &mut Vec<Mark>, edits: &[Edit]) {
    for edit in edits {
        edit.apply(marks);
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    crate::protocol::Timestamp::now().0
}

// ---------------------------------------------------------------------------------------------
// Rendering

fn mark_json(mark: &Mark, last: u64) -> Value {
    let mut v = json!({
        "room": mark.room,
        "read": mark.read,
        "last": last,
        "notify": mark.notify.as_str(),
    });
    if let (Some(with), Value::Object(map)) = (&mark.with, &mut v) {
        map.insert("with".into(), Value::String(with.clone()));
    }
    v
}

/// `{"type":"mark","room":R,"read":N,"last":M,"notify":L[,"with":W]}`
pub fn render_mark(mark: &Mark, last: u64, out: &mut Vec<u8>) {
    let mut v = json!({ "type": "mark" });
    if let (Value::Object(map), Value::Object(fields)) = (&mut v, mark_json(mark, last)) {
        map.extend(fields);
    }
    push_json(out, &v);
}

/// `{"type":"unmark","room":R}`
pub fn render_unmark(room: &str, out: &mut Vec<u8>) {
    push_json(out, &json!({ "type": "unmark", "room": room }));
}

/// `{"type":"marks"[,"req":X],"marks":[MARK,...]}`, newest change first.
pub fn render_marks(
    marks: &[Mark],
    req: Option<&ReqId>,
    last: &dyn Fn(&str) -> u64,
    out: &mut Vec<u8>,
) {
    let list: Vec<Value> = marks.iter().map(|m| mark_json(m, last(&m.room))).collect();
    let mut v = json!({ "type": "marks" });
    if let Value::Object(map) = &mut v {
        if let Some(id) = req.and_then(|r| serde_json::from_str::<Value>(r.as_json()).ok()) {
            map.insert("req".into(), id);
        }
        map.insert("marks".into(), Value::Array(list));
    }
    push_json(out, &v);
}

// ---------------------------------------------------------------------------------------------
// Where marks are kept

/// Why marks could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MarksError {
    #[error("{path}: {source}")]
    Database {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the bucket machat-marks: {0}")]
    Cluster(String),
}

/// The seam between the marks and their storage; called from the keeper's thread only, so a
/// backend may block (a disk, a round trip to NATS).
pub trait Backend: Send + 'static {
    /// A person's stored marks (none: empty).
    fn read(&mut self, person: &str) -> Result<Vec<Mark>, MarksError>;
    /// Applies `edits`, in order, to the person's stored marks; returns the revision written
    /// where the store has revisions that a follower sees (the cluster's bucket), else 0.
    fn write(&mut self, person: &str, edits: &[Edit]) -> Result<u64, MarksError>;
}

/// Marks until the server stops (`--history memory|off`).
#[derive(Default)]
pub struct MemoryBackend {
    people: HashMap<String, Vec<Mark>>,
}

impl Backend for MemoryBackend {
    fn read(&mut self, person: &str) -> Result<Vec<Mark>, MarksError> {
        Ok(self.people.get(person).cloned().unwrap_or_default())
    }

    fn write(&mut self, person: &str, edits: &[Edit]) -> Result<u64, MarksError> {
        let marks = self.people.entry(person.to_owned()).or_default();
        apply_all(marks, edits);
        if marks.is_empty() {
            self.people.remove(person);
        }
        Ok(0)
    }
}

/// Marks in `marks.db` in the data dir: one row per person, the person's [`Book`] as JSON.
/// The file is created at the first write (a server nobody logs in to makes none).
pub struct SqliteBackend {
    path: PathBuf,
    conn: Option<Connection>,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS marks (
    person TEXT PRIMARY KEY,
    book TEXT NOT NULL
)";

impl SqliteBackend {
    pub fn new(data_dir: &Path) -> Self {
        SqliteBackend {
            path: data_dir.join(FILE),
            conn: None,
        }
    }

    fn database(&self) -> impl FnOnce(rusqlite::Error) -> MarksError + '_ {
        |source| MarksError::Database {
            path: self.path.clone(),
            source,
        }
    }

    /// The connection, opened (and the file created) if needed; None when there is no file
    /// and `create` is false.
    fn conn(&mut self, create: bool) -> Result<Option<&mut Connection>, MarksError> {
        if self.conn.is_none() {
            if !create && !self.path.exists() {
                return Ok(None);
            }
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir).map_err(|source| MarksError::CreateDir {
                    path: dir.to_owned(),
                    source,
                })?;
            }
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = Connection::open_with_flags(&self.path, flags)
                .and_then(|c| {
                    c.busy_timeout(Duration::from_secs(5))?;
                    c.pragma_update(None, "journal_mode", "WAL")?;
                    c.execute(SCHEMA, [])?;
                    Ok(c)
                })
                .map_err(self.database())?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut())
    }
}

impl Backend for SqliteBackend {
    fn read(&mut self, person: &str) -> Result<Vec<Mark>, MarksError> {
        let path = self.path.clone();
        let Some(conn) = self.conn(false)? else {
            return Ok(Vec::new());
        };
        let stored: Option<String> = conn
            .query_row(
                "SELECT book FROM marks WHERE person = ?1",
                params![person],
                |r| r.get(0),
            )
            .optional()
            .map_err(|source| MarksError::Database { path, source })?;
        Ok(stored
            .map(|s| Book::parse(person, s.as_bytes()).marks)
            .unwrap_or_default())
    }

    fn write(&mut self, person: &str, edits: &[Edit]) -> Result<u64, MarksError> {
        let path = self.path.clone();
        let database = |source| MarksError::Database {
            path: path.clone(),
            source,
        };
        let Some(conn) = self.conn(true)? else {
            return Ok(0);
        };
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(database)?;
        let stored: Option<String> = tx
            .query_row(
                "SELECT book FROM marks WHERE person = ?1",
                params![person],
                |r| r.get(0),
            )
            .optional()
            .map_err(database)?;
        let mut book = stored
            .map(|s| Book::parse(person, s.as_bytes()))
            .unwrap_or_default();
        apply_all(&mut book.marks, edits);
        if book.marks.is_empty() {
            tx.execute("DELETE FROM marks WHERE person = ?1", params![person])
                .map_err(database)?;
        } else {
            let json = String::from_utf8(book.to_json()).unwrap_or_default();
            tx.execute(
                "INSERT INTO marks (person, book) VALUES (?1, ?2)
                 ON CONFLICT(person) DO UPDATE SET book = excluded.book",
                params![person, json],
            )
            .map_err(database)?;
        }
        tx.commit().map_err(database)?;
        Ok(0)
    }
}

/// What the keeper's thread is handed.
enum Job {
    /// An edit, with its number (see [`Written`]).
    Edit(String, Edit, u64),
    Load(
        String,
        tokio::sync::oneshot::Sender<Result<Vec<Mark>, MarksError>>,
    ),
    Flush(mpsc::Sender<()>),
}

/// The keeper: a thread of its own in front of a [`Backend`], writing each person's edits at
/// most once per [`COALESCE`] unless one is urgent.
pub struct Keeper {
    jobs: mpsc::Sender<Job>,
}

/// Told after each write: the person, the number of the last edit written, and the revision
/// the backend wrote (0: a store nobody follows).
pub type Written = Box<dyn Fn(&str, u64, u64) + Send>;

/// Edits of one person waiting for the keeper's thread to write them.
struct Queued {
    edits: Vec<Edit>,
    due: Instant,
    /// The number of the last of them.
    last: u64,
}

impl Keeper {
    pub fn start(backend: Box<dyn Backend>, written: Written) -> Keeper {
        let (jobs, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("machat-marks".into())
            .spawn(move || keep(backend, rx, written));
        if let Err(e) = spawned {
            error!("cannot start the marks writer: {e}");
        }
        Keeper { jobs }
    }

    /// Queues edit number `seq` of `person`'s stored marks.
    pub fn edit(&self, person: &str, edit: Edit, seq: u64) {
        if self
            .jobs
            .send(Job::Edit(person.to_owned(), edit, seq))
            .is_err()
        {
            error!(person, "the marks writer is gone: a change was not stored");
        }
    }

    /// `person`'s stored marks, after every edit queued before.
    pub async fn load(&self, person: &str) -> Result<Vec<Mark>, MarksError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let gone = || MarksError::Cluster("the marks writer is gone".into());
        self.jobs
            .send(Job::Load(person.to_owned(), tx))
            .map_err(|_| gone())?;
        match tokio::time::timeout(LOAD_WAIT, rx).await {
            Ok(Ok(answer)) => answer,
            _ => Err(gone()),
        }
    }

    /// Writes everything queued (at shutdown), waiting a few seconds at most.
    pub fn close(&self) {
        let (tx, rx) = mpsc::channel();
        if self.jobs.send(Job::Flush(tx)).is_ok() && rx.recv_timeout(LOAD_WAIT).is_err() {
            warn!("marks may not all be stored: the writer did not finish in time");
        }
    }
}

/// The keeper thread's state besides its queue.
struct Writer {
    backend: Box<dyn Backend>,
    /// When each person was last written, for as long as it matters (one COALESCE).
    when: HashMap<String, Instant>,
    told: Written,
}

impl Writer {
    /// Writes one person's queued edits, notes when, and says so.
    fn write(&mut self, person: &str, q: Queued) {
        let revision = match self.backend.write(person, &q.edits) {
            Ok(revision) => revision,
            Err(e) => {
                error!(person, "cannot store marks: {e}");
                0
            }
        };
        self.when.insert(person.to_owned(), Instant::now());
        (self.told)(person, q.last, revision);
    }
}

/// The keeper's thread.
fn keep(backend: Box<dyn Backend>, rx: mpsc::Receiver<Job>, told: Written) {
    let mut queued: HashMap<String, Queued> = HashMap::new();
    let mut w = Writer {
        backend,
        when: HashMap::new(),
        told,
    };
    loop {
        let now = Instant::now();
        let wait = queued
            .values()
            .map(|q| q.due.saturating_duration_since(now))
            .min()
            .unwrap_or(COALESCE);
        let job = match rx.recv_timeout(wait) {
            Ok(job) => Some(job),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                for (person, q) in queued.drain() {
                    w.write(&person, q);
                }
                return;
            }
        };
        let now = Instant::now();
        match job {
            Some(Job::Edit(person, edit, seq)) => {
                let urgent = edit.urgent();
                let q = queued.entry(person.clone()).or_insert_with(|| Queued {
                    edits: Vec::new(),
                    due: w.when.get(&person).map_or(now, |t| *t + COALESCE),
                    last: seq,
                });
                q.last = seq;
                // Reads of one room in a row make one (the latest is the furthest).
                let merged = match (q.edits.last_mut(), &edit) {
                    (
                        Some(Edit::Read {
                            room: r1,
                            id: i1,
                            at: a1,
                        }),
                        Edit::Read { room, id, at },
                    ) if r1 == room => {
                        *i1 = (*i1).max(*id);
                        *a1 = *at;
                        true
                    }
                    _ => false,
                };
                if !merged {
                    q.edits.push(edit);
                }
                if urgent || q.edits.len() >= PENDING_MAX {
                    q.due = now;
                }
            }
            Some(Job::Load(person, answer)) => {
                if let Some(q) = queued.remove(&person) {
                    w.write(&person, q);
                }
                let _ = answer.send(w.backend.read(&person));
            }
            Some(Job::Flush(done)) => {
                for (person, q) in queued.drain() {
                    w.write(&person, q);
                }
                let _ = done.send(());
            }
            None => {}
        }
        let due: Vec<String> = queued
            .iter()
            .filter(|(_, q)| q.due <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for person in due {
            if let Some(q) = queued.remove(&person) {
                w.write(&person, q);
            }
        }
        w.when.retain(|_, t| now.duration_since(*t) < COALESCE);
    }
}

// ---------------------------------------------------------------------------------------------
// The persons on this node, and their sessions' inboxes

/// Pushes waiting for one session of a person. The session's poll loop looks at one atomic
/// flag per take; only a version-2 person's session has an inbox at all.
pub struct Inbox {
    ready: AtomicBool,
    state: Mutex<InboxState>,
}

#[derive(Default)]
struct InboxState {
    bytes: Vec<u8>,
    /// Overflowed: the queue was dropped, a fresh `marks` line is owed instead.
    resync: bool,
    /// Wakes the session's task (its bell, see `session::seats`).
    waker: Option<Waker>,
}

impl Inbox {
    fn new() -> Self {
        Inbox {
            ready: AtomicBool::new(false),
            state: Mutex::new(InboxState::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where to ring when something arrives.
    pub fn set_waker(&self, waker: Waker) {
        self.state().waker = Some(waker);
    }

    /// True when something waits (one atomic load).
    pub fn has(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn push(&self, line: &[u8]) {
        let waker = {
            let mut s = self.state();
            if s.resync {
                return;
            }
            if s.bytes.len() + line.len() > INBOX_MAX {
                s.bytes = Vec::new();
                s.resync = true;
            } else {
                s.bytes.extend_from_slice(line);
            }
            self.ready.store(true, Ordering::Release);
            s.waker.clone()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn clear(&self, s: &mut InboxState) {
        s.bytes = Vec::new();
        s.resync = false;
        self.ready.store(false, Ordering::Release);
    }
}

/// The marks of the persons with a session on this node.
pub struct Marks {
    keeper: Keeper,
    people: Mutex<HashMap<String, Person>>,
    /// Numbers the edits, so the keeper can say which are written.
    next_edit: std::sync::atomic::AtomicU64,
}

struct Person {
    /// Newest change first.
    marks: Vec<Mark>,
    inboxes: Vec<Arc<Inbox>>,
    /// Edits made here that the followed store may not show yet (cluster mode): a record
    /// the bucket brings is shown with them applied, so a change made here is never shown
    /// undone and then redone. (number, the revision that holds it once written, edit)
    unconfirmed: Vec<(u64, Option<u64>, Edit)>,
}

/// Most edits a person keeps unconfirmed (a store that stopped answering).
const UNCONFIRMED_MAX: usize = 1000;

/// What a change did, for the one who asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Full,
    NoMark,
}

impl Marks {
    /// Marks kept by `backend`, written by a keeper thread of their own.
    pub fn new(backend: Box<dyn Backend>) -> Arc<Self> {
        Arc::new_cyclic(|me: &std::sync::Weak<Marks>| {
            let me = me.clone();
            let told: Written = Box::new(move |person, last, revision| {
                if let Some(marks) = me.upgrade() {
                    marks.written(person, last, revision);
                }
            });
            Marks {
                keeper: Keeper::start(backend, told),
                people: Mutex::new(HashMap::new()),
                next_edit: std::sync::atomic::AtomicU64::new(1),
            }
        })
    }

    /// In memory (tests, and `--history memory|off`).
    pub fn in_memory() -> Arc<Self> {
        Self::new(Box::<MemoryBackend>::default())
    }

    /// The keeper wrote `person`'s edits up to number `last`, as `revision` (0: a store
    /// nobody follows, so nothing will come back to confirm them).
    fn written(&self, person: &str, last: u64, revision: u64) {
        let mut people = self.people();
        let Some(p) = people.get_mut(person) else {
            return;
        };
        if revision == 0 {
            p.unconfirmed.retain(|(n, _, _)| *n > last);
            return;
        }
        for (n, rev, _) in &mut p.unconfirmed {
            if *n <= last && rev.is_none() {
                *rev = Some(revision);
            }
        }
    }

    fn people(&self) -> MutexGuard<'_, HashMap<String, Person>> {
        self.people.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session of `person`: its inbox, the person's marks loaded first if this is their
    /// first session here. A keeper that cannot answer starts the person with no marks (and
    /// is logged): the chat goes on.
    pub async fn attach(&self, person: &str) -> Arc<Inbox> {
        let inbox = Arc::new(Inbox::new());
        if let Some(p) = self.people().get_mut(person) {
            p.inboxes.push(inbox.clone());
            return inbox;
        }
        let loaded = match self.keeper.load(person).await {
            Ok(marks) => marks,
            Err(e) => {
                error!(person, "cannot read marks: {e}");
                Vec::new()
            }
        };
        // Another session of the person may have loaded them meanwhile: theirs is as new.
        self.people()
            .entry(person.to_owned())
            .or_insert_with(|| Person {
                marks: loaded,
                inboxes: Vec::new(),
                unconfirmed: Vec::new(),
            })
            .inboxes
            .push(inbox.clone());
        inbox
    }

    /// A session of `person` ended; their marks leave memory with their last session here.
    pub fn detach(&self, person: &str, inbox: &Arc<Inbox>) {
        let mut people = self.people();
        if let Some(p) = people.get_mut(person) {
            p.inboxes.retain(|i| !Arc::ptr_eq(i, inbox));
            if p.inboxes.is_empty() {
                people.remove(person);
            }
        }
    }

    /// The mark of `person` for `room`, if they are here and keep one.
    pub fn mark(&self, person: &str, room: &str) -> Option<Mark> {
        self.people()
            .get(person)?
            .marks
            .iter()
            .find(|m| m.room == room)
            .cloned()
    }

    /// Applies `edit` to `person`'s marks: here (pushed to each of their sessions on this
    /// node) if they are here, and in the store (and from there to their other nodes).
    pub fn change(&self, person: &str, edit: Edit, last: &dyn Fn(&str) -> u64) -> Outcome {
        let seq = self.next_edit.fetch_add(1, Ordering::Relaxed);
        let mut people = self.people();
        let Some(p) = people.get_mut(person) else {
            drop(people);
            self.keeper.edit(person, edit, seq);
            return Outcome::Done;
        };
        let applied = edit.apply(&mut p.marks);
        let mut line = Vec::new();
        match applied {
            Applied::Changed => {
                if let Some(mark) = p.marks.iter().find(|m| m.room == edit.room()) {
                    render_mark(mark, last(&mark.room), &mut line);
                }
            }
            Applied::Removed => render_unmark(edit.room(), &mut line),
            Applied::Same => return Outcome::Done,
            Applied::Full => return Outcome::Full,
            Applied::NoMark => return Outcome::NoMark,
        }
        for inbox in &p.inboxes {
            inbox.push(&line);
        }
        if p.unconfirmed.len() >= UNCONFIRMED_MAX {
            p.unconfirmed.remove(0);
        }
        p.unconfirmed.push((seq, None, edit.clone()));
        drop(people);
        self.keeper.edit(person, edit, seq);
        Outcome::Done
    }

    /// `person`'s marks as one `marks` line, for the session whose inbox is `inbox`: what
    /// waited in it is dropped (the line says it all, and is newer).
    pub fn snapshot(
        &self,
        person: &str,
        inbox: &Inbox,
        req: Option<&ReqId>,
        last: &dyn Fn(&str) -> u64,
        out: &mut Vec<u8>,
    ) {
        let people = self.people();
        let marks = people.get(person).map_or(&[][..], |p| &p.marks[..]);
        render_marks(marks, req, last, out);
        inbox.clear(&mut inbox.state());
    }

    /// Moves what waits in `inbox` to `out`: whole lines, at most about `max` bytes (the rest
    /// stays for the next take), or one fresh `marks` line if it overflowed.
    pub fn take(
        &self,
        person: &str,
        inbox: &Inbox,
        out: &mut Vec<u8>,
        max: usize,
        last: &dyn Fn(&str) -> u64,
    ) {
        let resync = {
            let mut s = inbox.state();
            if s.resync {
                true
            } else {
                let cut = if s.bytes.len() <= max {
                    s.bytes.len()
                } else {
                    // Up to the last line end within `max`; at least one line.
                    s.bytes[..max]
                        .iter()
                        .rposition(|&b| b == b'\n')
                        .or_else(|| s.bytes.iter().position(|&b| b == b'\n'))
                        .map_or(s.bytes.len(), |i| i + 1)
                };
                out.extend_from_slice(&s.bytes[..cut]);
                s.bytes.drain(..cut);
                if s.bytes.is_empty() {
                    inbox.clear(&mut s);
                }
                false
            }
        };
        if resync {
            self.snapshot(person, inbox, None, last, out);
        }
    }

    /// The persons of this node (the cluster follows only their records).
    pub fn is_here(&self, person: &str) -> bool {
        self.people().contains_key(person)
    }

    /// The person's marks as the store now holds them at `revision` (the cluster's bucket
    /// changed, maybe from another node): the difference is pushed to their sessions here.
    /// Edits made here that the record does not hold yet are applied to it first.
    pub fn stored(
        &self,
        person: &str,
        mut marks: Vec<Mark>,
        revision: u64,
        last: &dyn Fn(&str) -> u64,
    ) {
        marks.truncate(MAX_MARKS);
        let mut people = self.people();
        let Some(p) = people.get_mut(person) else {
            return;
        };
        p.unconfirmed
            .retain(|(_, rev, _)| rev.is_none_or(|r| r > revision));
        for (_, _, edit) in &p.unconfirmed {
            edit.apply(&mut marks);
        }
        let mut lines = Vec::new();
        for old in &p.marks {
            if !marks.iter().any(|m| m.room == old.room) {
                render_unmark(&old.room, &mut lines);
            }
        }
        // Oldest first, so that a client that keeps them in arrival order ends newest first.
        for new in marks.iter_mut().rev() {
            let same = p.marks.iter().find(|m| m.room == new.room);
            // A read position never goes back: one written here but not yet in the store
            // (reads are written once a second) stays.
            if let Some(old) = same {
                new.read = new.read.max(old.read);
            }
            if same.is_none_or(|m| (m.read, m.notify, &m.with) != (new.read, new.notify, &new.with))
            {
                render_mark(new, last(&new.room), &mut lines);
            }
        }
        p.marks = marks;
        if !lines.is_empty() {
            for inbox in &p.inboxes {
                inbox.push(&lines);
            }
        }
    }

    pub fn close(&self) {
        self.keeper.close();
    }
}

/// The room of the direct conversation between the registered names `a` and `b`: `@` and the
/// first 24 hex digits of SHA-256 of the smaller name, a newline and the larger.
pub fn conversation(a: &str, b: &str) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let text = format!("{lo}\n{hi}");
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut room = String::with_capacity(25);
    room.push('@');
    for b in &digest.as_ref()[..12] {
        room.push_str(&format!("{b:02x}"));
    }
    room
}

/// Whether `room` is a direct conversation's (reserved: see [`conversation`]).
pub fn is_conversation(room: &str) -> bool {
    room.starts_with('@')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(room: &str) -> Edit {
        Edit::Add {
            room: room.into(),
            read: 3,
            with: None,
            at: 1,
        }
    }

    #[test]
    fn edits_add_once_read_forward_and_stop_at_the_bound() {
        let mut marks = Vec::new();
        assert_eq!(add("a").apply(&mut marks), Applied::Changed);
        assert_eq!(add("a").apply(&mut marks), Applied::Same);
        let read = |id| Edit::Read {
            room: "a".into(),
            id,
            at: 2,
        };
        assert_eq!(read(2).apply(&mut marks), Applied::Same, "never back");
        assert_eq!(read(9).apply(&mut marks), Applied::Changed);
        assert_eq!(marks[0].read, 9);
        let level = Edit::Notify {
            room: "b".into(),
            level: Level::None,
            at: 3,
        };
        assert_eq!(level.apply(&mut marks), Applied::NoMark);
        for i in 1..MAX_MARKS {
            assert_eq!(add(&format!("r{i}")).apply(&mut marks), Applied::Changed);
        }
        assert_eq!(add("one-more").apply(&mut marks), Applied::Full);
        assert_eq!(marks.len(), MAX_MARKS);
        assert_eq!(
            Edit::Remove { room: "a".into() }.apply(&mut marks),
            Applied::Removed
        );
    }

    #[tokio::test]
    async fn a_session_that_does_not_read_gets_one_fresh_marks_line() {
        let marks = Marks::in_memory();
        let reader = marks.attach("Mina").await;
        let sleeper = marks.attach("Mina").await;
        let last = |_: &str| u64::MAX;
        assert_eq!(marks.change("Mina", add("a"), &last), Outcome::Done);
        let mut out = Vec::new();
        for id in 4..3000 {
            let read = Edit::Read {
                room: "a".into(),
                id,
                at: id,
            };
            assert_eq!(marks.change("Mina", read, &last), Outcome::Done);
            // One device reads as it goes; the other never does.
            marks.take("Mina", &reader, &mut out, usize::MAX, &last);
        }
        assert!(!reader.has());
        assert!(out.ends_with(b"\"read\":2999,\"last\":18446744073709551615,\"notify\":\"all\"}\n"));
        assert!(sleeper.state().bytes.len() <= INBOX_MAX);
        let mut out = Vec::new();
        marks.take("Mina", &sleeper, &mut out, usize::MAX, &last);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("{\"type\":\"marks\",\"marks\":[{\"room\":\"a\",\"read\":2999,"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1);
        assert!(!sleeper.has());
        // Their last session gone, the person's marks leave memory (kept by the keeper).
        marks.detach("Mina", &reader);
        marks.detach("Mina", &sleeper);
        assert!(!marks.is_here("Mina"));
        let again = marks.attach("Mina").await;
        assert_eq!(marks.mark("Mina", "a").map(|m| m.read), Some(2999));
        marks.detach("Mina", &again);
    }

    /// Counts the writes it is asked for.
    struct Counting(Arc<std::sync::atomic::AtomicUsize>, MemoryBackend);

    impl Backend for Counting {
        fn read(&mut self, person: &str) -> Result<Vec<Mark>, MarksError> {
            self.1.read(person)
        }
        fn write(&mut self, person: &str, edits: &[Edit]) -> Result<u64, MarksError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            self.1.write(person, edits)
        }
    }

    #[tokio::test]
    async fn a_flood_of_reads_is_written_once_a_second() {
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let backend = Box::new(Counting(writes.clone(), MemoryBackend::default()));
        let keeper = Keeper::start(backend, Box::new(|_, _, _| {}));
        keeper.edit("Mina", add("a"), 1);
        for id in 4..100_000 {
            let at = id;
            keeper.edit(
                "Mina",
                Edit::Read {
                    room: "a".into(),
                    id,
                    at,
                },
                id,
            );
        }
        let loaded = keeper.load("Mina").await.unwrap();
        assert_eq!(
            loaded[0].read, 99_999,
            "a load comes after the edits queued before it"
        );
        let n = writes.load(Ordering::SeqCst);
        assert!(n <= 3, "{n} writes");
    }

    /// Writes as a followed store does: each write a new revision.
    struct Revisions(u64, MemoryBackend);

    impl Backend for Revisions {
        fn read(&mut self, person: &str) -> Result<Vec<Mark>, MarksError> {
            self.1.read(person)
        }
        fn write(&mut self, person: &str, edits: &[Edit]) -> Result<u64, MarksError> {
            self.1.write(person, edits)?;
            self.0 += 1;
            Ok(self.0 + 10)
        }
    }

    #[tokio::test]
    async fn a_record_older_than_a_change_made_here_does_not_undo_it() {
        let marks = Marks::new(Box::new(Revisions(0, MemoryBackend::default())));
        let inbox = marks.attach("Mina").await;
        let last = |_: &str| 5;
        marks.change("Mina", add("a"), &last);
        // Written as revision 11 (the keeper's thread says so soon).
        for _ in 0..100 {
            let confirmed = marks
                .people()
                .get("Mina")
                .is_some_and(|p| p.unconfirmed.first().is_some_and(|u| u.1 == Some(11)));
            if confirmed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut out = Vec::new();
        marks.take("Mina", &inbox, &mut out, usize::MAX, &last);
        // The bucket brings an older record (another node's write before ours): nothing moves.
        marks.stored("Mina", Vec::new(), 10, &last);
        assert!(!inbox.has());
        assert!(marks.mark("Mina", "a").is_some());
        // Then a newer one without it (removed on another node): the removal is pushed.
        marks.stored("Mina", Vec::new(), 12, &last);
        let mut out = Vec::new();
        marks.take("Mina", &inbox, &mut out, usize::MAX, &last);
        assert_eq!(out, b"{\"type\":\"unmark\",\"room\":\"a\"}\n");
        marks.detach("Mina", &inbox);
    }

    #[test]
    fn conversations_are_named_alike_from_both_sides() {
        let room = conversation("Mina", "Ann");
        assert_eq!(room, conversation("Ann", "Mina"));
        assert_eq!(room.len(), 25);
        assert!(is_conversation(&room));
        // SHA-256("Ann\nMina")
        let digest = ring::digest::digest(&ring::digest::SHA256, b"Ann\nMina");
        let hex: String = digest.as_ref()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(room, format!("@{hex}"));
    }

    #[test]
    fn marks_render_as_documented() {
        let mark = Mark {
            room: "@ab".into(),
            read: 4,
            notify: Level::Mentions,
            with: Some("Ann".into()),
            at: 9,
        };
        let mut out = Vec::new();
        render_mark(&mark, 7, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"type\":\"mark\",\"room\":\"@ab\",\"read\":4,\"last\":7,\"notify\":\"mentions\",\"with\":\"Ann\"}\n"
        );
        let mut out = Vec::new();
        render_marks(&[], None, &|_| 0, &mut out);
        assert_eq!(out, b"{\"type\":\"marks\",\"marks\":[]}\n");
    }

    #[test]
    fn the_file_keeps_marks_and_applies_edits_to_what_it_holds() {
        let dir = std::env::temp_dir().join(format!("machat-marks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut b = SqliteBackend::new(&dir);
        assert!(b.read("Mina").unwrap().is_empty());
        assert!(!dir.join(FILE).exists(), "a read creates nothing");
        b.write("Mina", &[add("a"), add("b")]).unwrap();
        let mut again = SqliteBackend::new(&dir);
        let marks = again.read("Mina").unwrap();
        assert_eq!(
            marks.iter().map(|m| m.room.as_str()).collect::<Vec<_>>(),
            ["b", "a"]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
