//! One data dir, one server: an exclusive advisory lock (`flock`) on `DATA_DIR/lock`, held for
//! the life of the process that owns the directory.
//!
//! Two servers on one directory would each believe they hand out a room's ids, and each would
//! take the other's open database for a crash ("did not stop cleanly") and skip ids. The lock
//! makes the second one stop before it opens anything or listens, naming the first one's pid
//! (written into the file for people; the lock itself is the `flock`, not the file's text).
//! The kernel releases a `flock` when its process ends however it ends, `kill -9` included, so
//! a lock file left behind by a dead server never blocks the next one. Readers that SQLite
//! keeps consistent on their own (`machat user`, `backup`, `export`) do not take it; writers
//! that need the directory to themselves (a server, `machat import`) do.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name inside a data dir.
pub const FILE: &str = "lock";

/// Why the data dir could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{} is in use by another machat (pid {pid}); stop it or give another --data-dir", dir.display())]
    InUse { dir: PathBuf, pid: String },
    #[error("cannot create data dir {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The held lock: released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DataLock {
    _file: File,
}

impl DataLock {
    /// Takes the lock of `dir` (created if missing) without waiting: a directory another
    /// process holds is [`LockError::InUse`], with the pid that process wrote.
    pub fn acquire(dir: &Path) -> Result<DataLock, LockError> {
        std::fs::create_dir_all(dir).map_err(|source| LockError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE);
        let failed = |source| LockError::Lock {
            path: path.clone(),
            source,
        };
        // Not truncated on open: the holder's pid must still be there for the refusal.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(failed)?;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(LockError::InUse {
                    dir: dir.to_owned(),
                    pid: holder(&mut file),
                });
            }
            return Err(failed(err));
        }
        // The pid is for people (`cat DATA_DIR/lock`); a failure to write it costs nothing.
        let _ = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()));
        Ok(DataLock { _file: file })
    }
}

/// The pid the holder wrote, read from a small prefix (the file is not trusted to be small).
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = Read::by_ref(file).take(32).read_to_string(&mut text);
    let pid = text.trim();
    if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
        pid.to_owned()
    } else {
        "unknown".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("machat-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = DataLock::acquire(&dir).unwrap();
        let pid = std::process::id().to_string();
        assert_eq!(std::fs::read_to_string(dir.join(FILE)).unwrap().trim(), pid);
        // flock locks belong to the open file: a second open in the same process conflicts.
        let err = DataLock::acquire(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&format!("in use by another machat (pid {pid})")),
            "{err}"
        );
        drop(first);
        assert!(DataLock::acquire(&dir).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
