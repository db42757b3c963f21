//! `machat export` and `machat import`: the history as JSON lines, one message a line, and back
//! into an empty data dir with every id kept.
//!
//! A room's messages come in id order, after a line that gives the room's last id: ids are
//! never given twice, and the last given may be above the last kept (a deleted message, or
//! retention), so an import must know it to continue where the original would have. Export
//! reads the database while a server runs (SQLite gives it one consistent state per room);
//! import writes one transaction into a directory nothing else uses (it takes the data dir's
//! lock), after checking every line: a bad line is an error with its number, and nothing of
//! the file is written.

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use crate::protocol::Timestamp;
use crate::store::{self, MessageRef};

/// Longest line import reads: far above any message a server accepts (`--max-line`), so a
/// line beyond it is not an export's.
pub const MAX_IMPORT_LINE: u64 = 1024 * 1024;
/// Longest room name import accepts, in bytes (a direct conversation's room holds two names).
const MAX_ROOM_BYTES: usize = 1024;
/// Messages per stored chunk when importing (the server writes one per room per commit).
const CHUNK: usize = 1000;

/// A line of an export: a room's last id, or one of its messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Line {
    Room(RoomLine),
    Message(MessageLine),
}

/// The highest id `room` ever gave (its messages' ids are at most this).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomLine {
    pub room: String,
    pub last_id: u64,
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageLine {
    pub room: String,
    pub id: u64,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    pub name: String,
    pub text: String,
    /// A `/me` action.
    pub action: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{} holds no history ({} is missing)", dir.display(), store::FILE)]
    NoHistory { dir: PathBuf },
    #[error("{}: {source}", path.display())]
    Database {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot write the export: {0}")]
    Write(#[source] std::io::Error),
    #[error("cannot read line {line}: {source}")]
    Read {
        line: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("line {line}: {why}")]
    BadLine { line: usize, why: String },
    #[error("{} is not empty ({} is there): import only into an empty data dir", dir.display(), file)]
    NotEmpty { dir: PathBuf, file: &'static str },
    #[error("{0}")]
    Lock(#[from] crate::data_lock::LockError),
}

/// What an import or export went through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counted {
    pub rooms: usize,
    pub messages: usize,
}

/// Writes the history of `data_dir` as JSON lines to `out`: every room (or only `room`), each
/// room's last-id line, then its messages with ids above `since`, oldest first.
pub fn export(
    data_dir: &Path,
    room: Option<&str>,
    since: u64,
    out: &mut impl Write,
) -> Result<Counted, ExportError> {
    let path = data_dir.join(store::FILE);
    if !path.is_file() {
        return Err(ExportError::NoHistory {
            dir: data_dir.to_owned(),
        });
    }
    let db = |source| ExportError::Database {
        path: path.clone(),
        source,
    };
    let mut conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(db)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(db)?;
    // One read transaction: the rooms and their chunks as of one moment.
    let tx = conn.transaction().map_err(db)?;
    let has_rooms: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'rooms')",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    let mut counted = Counted::default();
    if !has_rooms {
        return Ok(counted);
    }
    let rooms: Vec<(i64, String, i64)> = {
        let mut stmt = tx
            .prepare("SELECT rid, name, last_id FROM rooms ORDER BY name")
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(db)?;
        rows
    };
    let mut stmt = tx
        .prepare("SELECT data FROM chunks WHERE rid = ?1 AND last_id > ?2 ORDER BY last_id")
        .map_err(db)?;
    let since_sql = i64::try_from(since).unwrap_or(i64::MAX);
    let mut line = Vec::new();
    for (rid, name, last_id) in rooms {
        if room.is_some_and(|r| r != name) {
            continue;
        }
        counted.rooms += 1;
        let head = Line::Room(RoomLine {
            room: name.clone(),
            last_id: last_id.max(0) as u64,
        });
        write_line(out, &mut line, &head)?;
        let mut rows = stmt.query(params![rid, since_sql]).map_err(db)?;
        while let Some(row) = rows.next().map_err(db)? {
            let data: Vec<u8> = row.get(0).map_err(db)?;
            for m in store::decode(&data).into_iter().filter(|m| m.id > since) {
                let msg = Line::Message(MessageLine {
                    room: name.clone(),
                    id: m.id,
                    ts: m.ts.0,
                    name: m.name,
                    text: m.text,
                    action: m.action,
                });
                write_line(out, &mut line, &msg)?;
                counted.messages += 1;
            }
        }
    }
    out.flush().map_err(ExportError::Write)?;
    Ok(counted)
}

fn write_line(out: &mut impl Write, buf: &mut Vec<u8>, line: &Line) -> Result<(), ExportError> {
    buf.clear();
    serde_json::to_writer(&mut *buf, line).map_err(|e| ExportError::Write(e.into()))?;
    buf.push(b'\n');
    out.write_all(buf).map_err(ExportError::Write)
}

/// One room as an import gathers it.
#[derive(Default)]
struct Room {
    last_id: u64,
    messages: Vec<Message>,
}

struct Message {
    id: u64,
    ts: u64,
    name: String,
    text: String,
    action: bool,
}

/// Reads an export from `input` into `data_dir`, which must hold no database yet. Every line
/// is checked before anything is written; the write is one transaction.
pub fn import(data_dir: &Path, input: impl BufRead) -> Result<Counted, ExportError> {
    let _lock = crate::data_lock::DataLock::acquire(data_dir)?;
    if let Some(file) = crate::backup::FILES
        .iter()
        .find(|f| data_dir.join(f).exists())
    {
        return Err(ExportError::NotEmpty {
            dir: data_dir.to_owned(),
            file,
        });
    }
    let rooms = read_lines(input)?;
    let path = data_dir.join(store::FILE);
    let db = |source| ExportError::Database {
        path: path.clone(),
        source,
    };
    let written = (|| -> rusqlite::Result<Counted> {
        let mut conn = store::open_writer(&path, false)?;
        let tx = conn.transaction()?;
        let mut counted = Counted::default();
        for (name, room) in &rooms {
            tx.execute(
                "INSERT INTO rooms (name, last_id) VALUES (?1, ?2)",
                params![name, room.last_id as i64],
            )?;
            let rid = tx.last_insert_rowid();
            for chunk in room.messages.chunks(CHUNK) {
                let mut data = Vec::new();
                for m in chunk {
                    store::encode(
                        &MessageRef {
                            id: m.id,
                            name: &m.name,
                            text: &m.text,
                            ts: Timestamp(m.ts),
                            action: m.action,
                        },
                        &mut data,
                    );
                }
                let (Some(first), Some(last)) = (chunk.first(), chunk.last()) else {
                    continue;
                };
                tx.execute(
                    "INSERT INTO chunks (rid, last_id, count, first_ts, data)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        rid,
                        last.id as i64,
                        chunk.len() as i64,
                        first.ts as i64,
                        data
                    ],
                )?;
            }
            counted.rooms += 1;
            counted.messages += room.messages.len();
        }
        // Closed cleanly: a server on it continues right after each room's last id.
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('clean', '1')",
            [],
        )?;
        tx.commit()?;
        Ok(counted)
    })();
    match written {
        Ok(counted) => Ok(counted),
        Err(e) => {
            // Nothing half-imported: the transaction rolled back; the empty file goes too.
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            Err(db(e))
        }
    }
}

/// Parses and checks every line, gathering the rooms in the order they first appear.
fn read_lines(mut input: impl BufRead) -> Result<Vec<(String, Room)>, ExportError> {
    let mut rooms: Vec<(String, Room)> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    let mut buf = Vec::new();
    let mut number = 0;
    loop {
        number += 1;
        buf.clear();
        let read = Read::by_ref(&mut input)
            .take(MAX_IMPORT_LINE + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|source| ExportError::Read {
                line: number,
                source,
            })?;
        if read == 0 {
            break;
        }
        let bad = |why: String| ExportError::BadLine { line: number, why };
        if buf.len() as u64 > MAX_IMPORT_LINE {
            return Err(bad(format!("longer than {MAX_IMPORT_LINE} bytes")));
        }
        let text = std::str::from_utf8(&buf).map_err(|_| bad("not UTF-8".into()))?;
        let text = text.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        let line: Line = serde_json::from_str(text).map_err(|_| {
            bad(
                "not a line of machat export: want {\"room\",\"last_id\"} or \
                 {\"room\",\"id\",\"ts\",\"name\",\"text\",\"action\"}"
                    .into(),
            )
        })?;
        let name = match &line {
            Line::Room(RoomLine { room, .. }) | Line::Message(MessageLine { room, .. }) => room,
        };
        check_room(name).map_err(bad)?;
        let index = match at.get(name) {
            Some(i) => *i,
            None => {
                at.insert(name.clone(), rooms.len());
                rooms.push((name.clone(), Room::default()));
                rooms.len() - 1
            }
        };
        let room = &mut rooms[index].1;
        match line {
            Line::Room(RoomLine { last_id, .. }) => {
                check_id(last_id).map_err(bad)?;
                room.last_id = room.last_id.max(last_id);
            }
            Line::Message(MessageLine {
                id,
                ts,
                name,
                text,
                action,
                ..
            }) => {
                check_id(id).map_err(bad)?;
                if id == 0 {
                    return Err(bad("id 0: ids start at 1".into()));
                }
                if let Some(prev) = room.messages.last() {
                    if id <= prev.id {
                        return Err(bad(format!(
                            "id {id} after id {}: a room's ids must go up",
                            prev.id
                        )));
                    }
                }
                if i64::try_from(ts).is_err() {
                    return Err(bad(format!("ts {ts} is out of range")));
                }
                if name.is_empty() || name.len() > usize::from(u16::MAX) {
                    return Err(bad("a message needs a name (at most 65535 bytes)".into()));
                }
                room.last_id = room.last_id.max(id);
                room.messages.push(Message {
                    id,
                    ts,
                    name,
                    text,
                    action,
                });
            }
        }
    }
    Ok(rooms)
}

fn check_room(room: &str) -> Result<(), String> {
    if room.is_empty() || room.len() > MAX_ROOM_BYTES || room.chars().any(char::is_control) {
        return Err(format!(
            "room {room:?}: not a room name (1 to {MAX_ROOM_BYTES} bytes, no control characters)"
        ));
    }
    Ok(())
}

fn check_id(id: u64) -> Result<(), String> {
    match i64::try_from(id) {
        Ok(_) => Ok(()),
        Err(_) => Err(format!("id {id} is out of range")),
    }
}
