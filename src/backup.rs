//! `machat backup DIR`: a consistent copy of every database of a data dir, taken while a server
//! may be writing to them, made of files that restore by being copied into an empty data dir.
//!
//! Each file is copied with SQLite's online backup in one step: the copy is the database as of
//! one committed transaction (a server writing meanwhile goes on writing to its WAL, and a
//! half-written batch is never in the copy). The files are copied one after another, so a
//! file copied later may hold a little more than one copied earlier; each is whole on its own,
//! and nothing ties their rows together but names. Each copy is written under a temporary name
//! and renamed once complete, so an interrupted backup never leaves a file that looks whole.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

/// The databases a data dir may hold, in the order they are copied. The lock file is not one.
pub const FILES: [&str; 4] = [
    crate::store::FILE,
    crate::logins::FILE,
    crate::marks::FILE,
    crate::moderation::keep::FILE,
];

/// How long a copy waits for a writer's lock before giving up.
const BUSY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{} already exists and is not empty (--force writes over the files in it)", .0.display())]
    Exists(PathBuf),
    #[error("{} is the data dir itself: back up into another directory", .0.display())]
    IntoDataDir(PathBuf),
    #[error("nothing to back up: {} holds no machat database", .0.display())]
    Nothing(PathBuf),
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot copy {} to {}: {source}", from.display(), to.display())]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot put {} in place: {source}", path.display())]
    Rename {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One database copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub from: PathBuf,
    pub to: PathBuf,
    pub bytes: u64,
}

/// Copies every database of `data_dir` into `out` (created; if it exists it must be empty,
/// unless `force`, which replaces the files of the same names in it).
pub fn backup(data_dir: &Path, out: &Path, force: bool) -> Result<Vec<Copied>, BackupError> {
    let sources: Vec<PathBuf> = FILES
        .iter()
        .map(|f| data_dir.join(f))
        .filter(|p| p.is_file())
        .collect();
    if sources.is_empty() {
        return Err(BackupError::Nothing(data_dir.to_owned()));
    }
    // Into the data dir itself, a copy would be renamed over the live file under the server.
    let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b);
    if same(out, data_dir) {
        return Err(BackupError::IntoDataDir(out.to_owned()));
    }
    let non_empty = std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some());
    if out.exists() && (!out.is_dir() || (non_empty && !force)) {
        return Err(BackupError::Exists(out.to_owned()));
    }
    std::fs::create_dir_all(out).map_err(|source| BackupError::Create {
        path: out.to_owned(),
        source,
    })?;
    let mut copied = Vec::new();
    for from in sources {
        let Some(name) = from.file_name() else {
            continue;
        };
        let to = out.join(name);
        let bytes = copy_one(&from, &to)?;
        copied.push(Copied { from, to, bytes });
    }
    Ok(copied)
}

/// Copies one database to `to` through a temporary file.
fn copy_one(from: &Path, to: &Path) -> Result<u64, BackupError> {
    let partial = to.with_extension("db.partial");
    let failed = |source| BackupError::Copy {
        from: from.to_owned(),
        to: to.to_owned(),
        source,
    };
    let _ = std::fs::remove_file(&partial);
    let result = (|| -> rusqlite::Result<()> {
        // Opened for writing, never created: a reader of a WAL database may need to write its
        // shared-memory index, and the data dir is the server's.
        let src = Connection::open_with_flags(
            from,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        src.busy_timeout(BUSY)?;
        let mut dst = Connection::open(&partial)?;
        {
            let backup = Backup::new(&src, &mut dst)?;
            // Every page in one step: one read transaction, so one consistent state.
            let deadline = std::time::Instant::now() + BUSY;
            loop {
                match backup.step(-1)? {
                    StepResult::Done => break,
                    StepResult::More | StepResult::Busy | StepResult::Locked
                        if std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        return Err(rusqlite::Error::SqliteFailure(
                            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                            Some("the database stayed busy".into()),
                        ))
                    }
                }
            }
        }
        if from.file_name().is_some_and(|n| n == crate::store::FILE) {
            // The server was (or may have been) running: a server on the copy must not give
            // again the ids the original gave after it (see `store::BACKUP_MARK`).
            let has_meta: bool = dst.query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'meta')",
                [],
                |r| r.get(0),
            )?;
            if has_meta {
                dst.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('clean', ?1)",
                    [crate::store::BACKUP_MARK],
                )?;
            }
        }
        // One file to copy back: the copy's pages all in the main file.
        dst.pragma_update(None, "journal_mode", "DELETE")?;
        dst.close().map_err(|(_, e)| e)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(failed(e));
    }
    std::fs::rename(&partial, to).map_err(|source| BackupError::Rename {
        path: to.to_owned(),
        source,
    })?;
    Ok(std::fs::metadata(to).map_or(0, |m| m.len()))
}
