//! Where moderation records are kept: the seam between the policy (one server or a cluster
//! node, the same code) and its storage. One server keeps them in a SQLite file of their own
//! in `--data-dir` (`moderation.db`: in `history.db` a moderation write would make the
//! history's writer wait, or fail with "database is locked"); a cluster keeps them in a
//! NATS key-value bucket every node watches (`crate::cluster::rules`).
//!
//! A change travels as an edit (a function on a record), not as the record it made: the
//! keeper applies it to the record as stored, so two nodes changing one room at once both
//! count.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tracing::{error, warn};

use super::record::RoomRecord;

/// A change to a record.
pub type Edit = Arc<dyn Fn(&mut RoomRecord) + Send + Sync>;

/// The key of the server's own record (bans and log of `/sban`, `/wall`): no room is called
/// this, as no room name is empty.
pub const SERVER: &str = "";

#[derive(Debug, thiserror::Error)]
pub enum KeepError {
    #[error("cannot read the moderation records in {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot read the moderation records: {0}")]
    Cluster(String),
}

pub trait Keeper: Send + Sync {
    /// Every record kept, at start.
    fn load(&self) -> Result<Vec<(String, RoomRecord)>, KeepError>;
    /// Applies `edit` to the kept record of `key` (a room's name, or [`SERVER`]), in the
    /// background and in the order the edits were given.
    fn update(&self, key: &str, edit: Edit);
    /// Waits (a few seconds at most) until every change given so far is stored: at shutdown.
    fn close(&self) {}
}

/// How long [`Keeper::close`] waits for changes still on their way.
pub const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Keeps nothing (tests of the rules alone).
pub struct Forget;

impl Keeper for Forget {
    fn load(&self) -> Result<Vec<(String, RoomRecord)>, KeepError> {
        Ok(Vec::new())
    }
    fn update(&self, _key: &str, _edit: Edit) {}
}

/// Records in `moderation.db` in the data dir, written by a thread of its own so that a
/// command never waits for the disk.
pub struct SqliteKeeper {
    path: PathBuf,
    writer: mpsc::Sender<Job>,
}

/// What the writer thread is handed: a change, or a request to say when all before it are done.
enum Job {
    Change(String, Edit),
    Flush(mpsc::Sender<()>),
}

/// The file in the data dir.
pub const FILE: &str = "moderation.db";

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS moderation (
    scope TEXT PRIMARY KEY,
    record TEXT NOT NULL
)";

fn open(path: &Path, create: bool) -> rusqlite::Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags)?;
    // The writer thread and a start-up read never overlap, but a backup tool may hold it.
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    Ok(conn)
}

impl SqliteKeeper {
    pub fn new(data_dir: &Path) -> Self {
        let path = data_dir.join(FILE);
        let (tx, rx) = mpsc::channel::<Job>();
        let (dir, file) = (data_dir.to_owned(), path.clone());
        let spawned = std::thread::Builder::new()
            .name("machat-moderation".into())
            .spawn(move || {
                let mut conn = None;
                while let Ok(job) = rx.recv() {
                    let (key, edit) = match job {
                        Job::Change(key, edit) => (key, edit),
                        Job::Flush(done) => {
                            let _ = done.send(());
                            continue;
                        }
                    };
                    if conn.is_none() {
                        conn = std::fs::create_dir_all(&dir)
                            .map_err(|e| error!("cannot create {}: {e}", dir.display()))
                            .ok()
                            .and_then(|()| {
                                open(&file, true)
                                    .and_then(|c| c.execute(SCHEMA, []).map(|_| c))
                                    .map_err(|e| error!("cannot open {}: {e}", file.display()))
                                    .ok()
                            });
                    }
                    let Some(c) = conn.as_mut() else {
                        error!(room = %key, "a moderation change was not stored");
                        continue;
                    };
                    if let Err(e) = write(c, &key, &edit) {
                        error!(room = %key, "cannot store a moderation change: {e}");
                    }
                }
            });
        if let Err(e) = spawned {
            error!("cannot start the moderation writer: {e}");
        }
        SqliteKeeper { path, writer: tx }
    }
}

/// Read, change, write, in one transaction.
fn write(conn: &mut Connection, key: &str, edit: &Edit) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let stored: Option<String> = tx
        .query_row(
            "SELECT record FROM moderation WHERE scope = ?1",
            params![key],
            |r| r.get(0),
        )
        .optional()?;
    let mut record: RoomRecord = stored
        .and_then(|s| {
            serde_json::from_str(&s)
                .map_err(|e| warn!(room = %key, "a stored moderation record is unreadable: {e}"))
                .ok()
        })
        .unwrap_or_default();
    edit(&mut record);
    if record.is_empty() {
        tx.execute("DELETE FROM moderation WHERE scope = ?1", params![key])?;
    } else {
        let json = serde_json::to_string(&record).unwrap_or_default();
        tx.execute(
            "INSERT INTO moderation (scope, record) VALUES (?1, ?2)
             ON CONFLICT(scope) DO UPDATE SET record = excluded.record",
            params![key, json],
        )?;
    }
    tx.commit()
}

impl Keeper for SqliteKeeper {
    fn load(&self) -> Result<Vec<(String, RoomRecord)>, KeepError> {
        if !self.path.exists() {
            return Ok(Vec::new());
        }
        let read = |source| KeepError::Read {
            path: self.path.clone(),
            source,
        };
        let conn = open(&self.path, false).map_err(read)?;
        conn.execute(SCHEMA, []).map_err(read)?;
        let mut stmt = conn
            .prepare("SELECT scope, record FROM moderation")
            .map_err(read)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(read)?;
        let mut out = Vec::new();
        for row in rows {
            let (key, json) = row.map_err(read)?;
            match serde_json::from_str(&json) {
                Ok(record) => out.push((key, record)),
                Err(e) => warn!(room = %key, "skipping an unreadable moderation record: {e}"),
            }
        }
        Ok(out)
    }

    fn update(&self, key: &str, edit: Edit) {
        if self.writer.send(Job::Change(key.to_owned(), edit)).is_err() {
            error!(room = %key, "the moderation writer is gone: a change was not stored");
        }
    }

    fn close(&self) {
        let (tx, rx) = mpsc::channel();
        if self.writer.send(Job::Flush(tx)).is_ok() && rx.recv_timeout(CLOSE_WAIT).is_err() {
            warn!("moderation changes may not all be stored: the writer did not finish in time");
        }
    }
}
