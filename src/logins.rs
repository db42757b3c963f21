//! Session tokens of registered names (`POST /api/login`): the web page logs in once with the
//! password and keeps a token instead, so the password is never kept in the browser.
//!
//! A token is 32 random bytes from the system's generator (`ring::rand::SystemRandom`), sent
//! as 43 characters of base64url. The server keeps only its SHA-256, with the registered name
//! it was issued to and its expiry: a copy of the store does not give working tokens. A plain
//! hash suffices (argon2 is for passwords, which are guessable): a token has 256 bits of
//! entropy, so no guess or dictionary gets anywhere near its hash, and a fast hash lets every
//! handshake with a token be checked without the argon2 queue.
//!
//! Where they are kept is a seam like [`crate::moderation::keep`]: one server keeps them in a
//! SQLite file of their own in `--data-dir` (`logins.db`; not `history.db`, where a second
//! writer makes the history's writer fail with "database is locked"); a cluster keeps them in
//! the key-value bucket `machat-logins` (`crate::cluster::logins`). Both are **read through**
//! on every check, never cached: `machat user logout NAME` (another process) revokes at once,
//! and on every node. The file is read and written synchronously inside `spawn_blocking` (one
//! connection behind a mutex): logins are rare, a write must be on disk before its token is
//! handed out (a token that a restart forgets would log the page out), and the caller waits
//! for the answer anyway; a writer thread would add a queue and gain nothing.
//!
//! A token is refused once its expiry has passed, by comparing it with the clock on every
//! check (so on every node alike); expired rows are swept whenever a token is issued. A name
//! keeps at most [`MAX_PER_NAME`] live tokens, the oldest going first, so one password cannot
//! fill the disk. Revoking a token (logout, `machat user logout`, `machat user remove`) does
//! not close connections already open with it: it stops new ones.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ring::rand::SecureRandom;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::protocol::name_key;

/// The file in the data dir.
pub const FILE: &str = "logins.db";
/// Most live tokens of one name; a new one beyond it replaces the oldest.
pub const MAX_PER_NAME: usize = 100;
/// How long a token lasts by default (`--login-ttl`).
pub use crate::settings::DEFAULT_LOGIN_TTL as DEFAULT_TTL;
/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;

/// What is kept for a token (besides its hash, the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// The registered spelling of the name it was issued to.
    pub name: String,
    /// When it stops working, in milliseconds since the epoch.
    pub expires: u64,
}

/// A new token (base64url, no padding) and the hash to keep of it; None only if the system's
/// generator fails.
pub fn new_token() -> Option<(String, String)> {
    let mut bytes = [0u8; TOKEN_BYTES];
    ring::rand::SystemRandom::new().fill(&mut bytes).ok()?;
    let token = base64url(&bytes);
    let hash = hash_of(&token);
    Some((token, hash))
}

/// The SHA-256 of a token, in lowercase hex: how it is found in the store.
pub fn hash_of(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Base64url without padding (RFC 4648 §5): 32 bytes make 43 characters.
fn base64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ABC[(n >> (18 - 6 * i)) as usize & 63]));
        }
    }
    out
}

/// Why the tokens cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LoginsError {
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
    #[error("{0}")]
    Cluster(String),
    #[error("the login store did not answer")]
    Gone,
}

/// An answer of a [`SharedLogins`] store, on its way.
pub type Answer<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, LoginsError>> + Send + 'a>>;

/// Tokens kept where every node of a cluster finds them (`crate::cluster::logins`): a seam, so
/// that this module (which `auth` uses) does not depend on the cluster (which uses `auth`).
pub trait SharedLogins: Send + Sync {
    fn issue(&self, hash: String, issued: Issued, now: u64) -> Answer<'_, ()>;
    fn find(&self, hash: String) -> Answer<'_, Option<Issued>>;
    fn revoke(&self, hash: String) -> Answer<'_, ()>;
}

/// Where tokens are kept.
pub enum Keeper {
    Sqlite(SqliteLogins),
    Cluster(Box<dyn SharedLogins>),
}

/// The server's tokens: where they are kept, and how long a new one lasts.
pub struct Logins {
    keeper: Keeper,
    ttl: Duration,
}

/// A token just issued.
#[derive(Debug)]
pub struct NewLogin {
    pub token: String,
    pub name: String,
    pub expires: u64,
}

impl Logins {
    pub fn new(keeper: Keeper, ttl: Duration) -> Logins {
        Logins { keeper, ttl }
    }

    /// Issues a token to `name` (its registered spelling), stored before it is returned.
    pub async fn issue(&self, name: &str) -> Result<NewLogin, LoginsError> {
        let (token, hash) = new_token().ok_or(LoginsError::Gone)?;
        let now = crate::protocol::Timestamp::now().0;
        let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let issued = Issued {
            name: name.to_owned(),
            expires: now.saturating_add(ttl),
        };
        match &self.keeper {
            Keeper::Sqlite(s) => s.issue(hash, issued.clone(), now).await?,
            Keeper::Cluster(c) => c.issue(hash, issued.clone(), now).await?,
        }
        Ok(NewLogin {
            token,
            name: issued.name,
            expires: issued.expires,
        })
    }

    /// The live (unexpired, unrevoked) token `token`, if it is one.
    pub async fn find(&self, token: &str) -> Result<Option<Issued>, LoginsError> {
        let hash = hash_of(token);
        let now = crate::protocol::Timestamp::now().0;
        let found = match &self.keeper {
            Keeper::Sqlite(s) => s.find(hash).await?,
            Keeper::Cluster(c) => c.find(hash).await?,
        };
        Ok(found.filter(|i| i.expires > now))
    }

    /// Revokes `token` (nothing if it is none).
    pub async fn revoke(&self, token: &str) -> Result<(), LoginsError> {
        let hash = hash_of(token);
        match &self.keeper {
            Keeper::Sqlite(s) => s.revoke(hash).await,
            Keeper::Cluster(c) => c.revoke(hash).await,
        }
    }
}

/// Whether a token issued to `issued` belongs to `name` or a look-alike of it.
pub fn same_name(issued: &str, name: &str) -> bool {
    name_key(issued).clashes(&name_key(name))
}

/// Tokens in `logins.db`, read and written through one connection in `spawn_blocking`.
pub struct SqliteLogins {
    path: PathBuf,
    conn: Arc<Mutex<Option<Connection>>>,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS logins (
    hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS logins_by_name ON logins (name, created)";

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    // `machat user logout` may write it at the same time.
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

impl SqliteLogins {
    pub fn new(data_dir: &Path) -> SqliteLogins {
        SqliteLogins {
            path: data_dir.join(FILE),
            conn: Arc::new(Mutex::new(None)),
        }
    }

    /// Runs `work` on the connection, in `spawn_blocking`. `create`: a missing file (and data
    /// dir) is created; otherwise a missing file gives `absent` without creating it.
    async fn with<T: Send + 'static>(
        &self,
        create: bool,
        absent: T,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, LoginsError> {
        let (path, conn) = (self.path.clone(), self.conn.clone());
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            if conn.is_none() {
                if !create && !path.exists() {
                    return Ok(absent);
                }
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|source| LoginsError::CreateDir {
                        path: dir.to_owned(),
                        source,
                    })?;
                }
                *conn = Some(open(&path).map_err(database(&path))?);
            }
            let c = conn.as_mut().ok_or(LoginsError::Gone)?;
            let done = work(c).map_err(database(&path));
            if done.is_err() {
                // Opened again next time: the file may have been replaced.
                *conn = None;
            }
            done
        })
        .await
        .map_err(|_| LoginsError::Gone)?
    }

    async fn issue(&self, hash: String, issued: Issued, now: u64) -> Result<(), LoginsError> {
        self.with(true, (), move |c| insert(c, &hash, &issued, now))
            .await
    }

    async fn find(&self, hash: String) -> Result<Option<Issued>, LoginsError> {
        self.with(false, None, move |c| {
            c.query_row(
                "SELECT name, expires FROM logins WHERE hash = ?1",
                [&hash],
                |r| {
                    Ok(Issued {
                        name: r.get(0)?,
                        expires: r.get::<_, i64>(1)?.max(0) as u64,
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn revoke(&self, hash: String) -> Result<(), LoginsError> {
        self.with(false, (), move |c| {
            c.execute("DELETE FROM logins WHERE hash = ?1", [&hash])
                .map(|_| ())
        })
        .await
    }
}

fn database(path: &Path) -> impl FnOnce(rusqlite::Error) -> LoginsError + '_ {
    |source| LoginsError::Database {
        path: path.to_owned(),
        source,
    }
}

fn ms(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// Stores a token, sweeps the expired ones, and keeps the newest [`MAX_PER_NAME`] of its name.
fn insert(c: &mut Connection, hash: &str, issued: &Issued, now: u64) -> rusqlite::Result<()> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute("DELETE FROM logins WHERE expires <= ?1", [ms(now)])?;
    tx.execute(
        "INSERT INTO logins (hash, name, created, expires) VALUES (?1, ?2, ?3, ?4)",
        params![hash, issued.name, ms(now), ms(issued.expires)],
    )?;
    tx.execute(
        "DELETE FROM logins WHERE name = ?1 AND rowid NOT IN
           (SELECT rowid FROM logins WHERE name = ?1 ORDER BY created DESC, rowid DESC LIMIT ?2)",
        params![issued.name, MAX_PER_NAME as i64],
    )?;
    tx.commit()
}

/// `machat user logout NAME` (and `machat user remove NAME`) on one server: revokes every
/// token of NAME or a look-alike of it in `data_dir`; how many there were.
pub fn revoke_name(data_dir: &Path, name: &str) -> Result<usize, LoginsError> {
    let path = data_dir.join(FILE);
    if !path.exists() {
        return Ok(0);
    }
    let mut conn = open(&path).map_err(database(&path))?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(database(&path))?;
    let names: Vec<String> = tx
        .prepare("SELECT DISTINCT name FROM logins")
        .and_then(|mut s| {
            s.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        })
        .map_err(database(&path))?;
    let mut revoked = 0;
    for issued in names.iter().filter(|n| same_name(n, name)) {
        revoked += tx
            .execute("DELETE FROM logins WHERE name = ?1", [issued])
            .map_err(database(&path))?;
    }
    tx.commit().map_err(database(&path))?;
    Ok(revoked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_43_characters_of_base64url_and_differ() {
        let (a, ha) = new_token().unwrap();
        let (b, _) = new_token().unwrap();
        assert_eq!(a.len(), 43);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a, b);
        assert_eq!(ha, hash_of(&a));
        assert_eq!(ha.len(), 64);
        // RFC 4648 test vectors, unpadded.
        for (plain, want) in [("", ""), ("f", "Zg"), ("fo", "Zm8"), ("foo", "Zm9v")] {
            assert_eq!(base64url(plain.as_bytes()), want);
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(
            hash_of("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[tokio::test]
    async fn tokens_are_stored_hashed_bounded_and_revoked() {
        let dir = std::env::temp_dir().join(format!("machat-logins-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let logins = Logins::new(Keeper::Sqlite(SqliteLogins::new(&dir)), DEFAULT_TTL);
        assert_eq!(logins.find("nothing").await.unwrap(), None, "no file yet");
        assert!(!dir.join(FILE).exists(), "a lookup creates nothing");
        let first = logins.issue("Mina").await.unwrap();
        let found = logins.find(&first.token).await.unwrap().unwrap();
        assert_eq!(found.name, "Mina");
        let raw = std::fs::read(dir.join(FILE)).unwrap_or_default();
        let wal = std::fs::read(dir.join("logins.db-wal")).unwrap_or_default();
        let has =
            |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
        assert!(!has(&raw, &first.token) && !has(&wal, &first.token));
        // The 101st token pushes the first out.
        let mut last = None;
        for _ in 0..MAX_PER_NAME {
            last = Some(logins.issue("Mina").await.unwrap());
        }
        assert_eq!(logins.find(&first.token).await.unwrap(), None);
        let last = last.unwrap();
        assert!(logins.find(&last.token).await.unwrap().is_some());
        logins.revoke(&last.token).await.unwrap();
        assert_eq!(logins.find(&last.token).await.unwrap(), None);
        let other = logins.issue("Bob").await.unwrap();
        assert_eq!(revoke_name(&dir, "mina").unwrap(), MAX_PER_NAME - 1);
        assert!(logins.find(&other.token).await.unwrap().is_some());
        // An expired token is refused.
        let short = Logins::new(
            Keeper::Sqlite(SqliteLogins::new(&dir)),
            Duration::from_millis(1),
        );
        let gone = short.issue("Bob").await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(short.find(&gone.token).await.unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
