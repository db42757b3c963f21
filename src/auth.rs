//! Registered names: argon2 password hashes in the data directory's SQLite file, checked at the
//! handshake.
//!
//! A registered name can be used only with its password; `--require-auth` closes the server to
//! unregistered names. Every failure answers the same `authentication failed` after the same
//! delay (measured from the start of the check, which covers the hash's own time), so a guesser
//! learns neither whether the name exists nor which part was wrong. Failures are counted per IP
//! address, and past the limit an address is refused without hashing at all, so guessing costs
//! the server nothing. At most two hashes are computed at once (argon2 is made to be costly in
//! CPU and memory). `machat user add` writes the table; a running server sees the change within
//! two seconds. In cluster mode the names registered for the whole cluster (see
//! [`crate::cluster::users`]) count too, and take precedence over the data directory's.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use rusqlite::{params, Connection, OpenFlags};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::protocol::{validate_name, Handshake};

/// The one answer to every failed check.
pub const FAILED: &str = "authentication failed";
/// What an address past the failure limit is told (without any hashing).
pub const TOO_MANY: &str = "too many failed logins from your address; try again later";
/// A failed check answers no sooner than this after it began.
const FAIL_DELAY: Duration = Duration::from_secs(1);
/// Failed checks an address may have in `FAIL_WINDOW`.
const MAX_FAILS: u32 = 5;
const FAIL_WINDOW: Duration = Duration::from_secs(60);
/// How often a running server looks for new or removed users.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The database file of a data directory (shared with the message history).
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("history.db")
}

fn open(path: &Path, create: bool) -> rusqlite::Result<Connection> {
    let flags = if create {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(2))?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, hash TEXT NOT NULL)",
    )?;
    Ok(conn)
}

/// Hashes a password with argon2id and a random salt (PHC string format).
pub fn hash(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

fn verify(password: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// The hash to register `name` with, once the name and the password pass the rules.
pub fn new_hash(name: &str, password: &str) -> Result<String, String> {
    validate_name(name)?;
    if password.is_empty() {
        return Err("the password must not be empty".into());
    }
    if password.len() > crate::protocol::MAX_PASSWORD {
        return Err(format!(
            "the password is longer than {} bytes",
            crate::protocol::MAX_PASSWORD
        ));
    }
    hash(password)
}

/// `machat user add NAME`: registers (or re-registers) a name.
pub fn add_user(data_dir: &Path, name: &str, password: &str) -> Result<(), String> {
    let hash = new_hash(name, password)?;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let path = db_path(data_dir);
    let conn = open(&path, true).map_err(|e| format!("{}: {e}", path.display()))?;
    conn.execute(
        "INSERT OR REPLACE INTO users (name, hash) VALUES (?1, ?2)",
        params![name, hash],
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}

/// `machat user remove NAME`. False if there was no such user.
pub fn remove_user(data_dir: &Path, name: &str) -> Result<bool, String> {
    let path = db_path(data_dir);
    let conn = open(&path, false).map_err(|e| format!("{}: {e}", path.display()))?;
    conn.execute("DELETE FROM users WHERE name = ?1", [name])
        .map(|n| n > 0)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// `machat user list`: the registered names, sorted.
pub fn list_users(data_dir: &Path) -> Result<Vec<String>, String> {
    let path = db_path(data_dir);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let conn = open(&path, false).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut stmt = conn
        .prepare("SELECT name FROM users ORDER BY name")
        .map_err(|e| e.to_string())?;
    let names = stmt
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<String>>>())
        .map_err(|e| e.to_string())?;
    Ok(names)
}

/// The server's view of the registered names.
pub struct Users {
    hashes: Mutex<HashMap<String, String>>,
    /// Cluster mode: the names registered for every node.
    cluster: std::sync::OnceLock<crate::cluster::users::Registered>,
    require: bool,
    fails: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    hashing: Semaphore,
}

impl Users {
    /// Loads the registered names of `data_dir` (none if it has no database yet) and keeps
    /// them up to date from a thread of its own.
    pub fn load(data_dir: &Path, require: bool) -> Result<Arc<Users>, String> {
        let path = db_path(data_dir);
        let users = Arc::new(Users {
            hashes: Mutex::new(HashMap::new()),
            cluster: std::sync::OnceLock::new(),
            require,
            fails: Mutex::new(HashMap::new()),
            hashing: Semaphore::new(2),
        });
        let mut version = None;
        users.reload(&path, &mut version)?;
        let count = users.lock().len();
        info!(
            registered = count,
            require_auth = require,
            "registered names"
        );
        let watcher = Arc::downgrade(&users);
        let spawned = std::thread::Builder::new()
            .name("machat-users".into())
            .spawn(move || loop {
                std::thread::sleep(RELOAD_EVERY);
                let Some(users) = watcher.upgrade() else {
                    return;
                };
                if let Err(e) = users.reload(&path, &mut version) {
                    warn!("cannot read the registered names: {e}");
                }
            });
        if let Err(e) = spawned {
            warn!("cannot watch for new registered names: {e}");
        }
        Ok(users)
    }

    /// No registered names, nothing required (tests, or a server without a data dir).
    pub fn none() -> Arc<Users> {
        Arc::new(Users {
            hashes: Mutex::new(HashMap::new()),
            cluster: std::sync::OnceLock::new(),
            require: false,
            fails: Mutex::new(HashMap::new()),
            hashing: Semaphore::new(2),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.hashes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the table when the file changed (by its size and modification time).
    fn reload(
        &self,
        path: &Path,
        seen: &mut Option<(u64, std::time::SystemTime)>,
    ) -> Result<(), String> {
        let Ok(meta) = std::fs::metadata(path) else {
            self.lock().clear();
            return Ok(());
        };
        // WAL mode writes the -wal file first: look at both.
        let wal = std::fs::metadata(path.with_extension("db-wal")).ok();
        let stamp = (
            meta.len() + wal.as_ref().map_or(0, |w| w.len()),
            wal.and_then(|w| w.modified().ok())
                .into_iter()
                .chain(meta.modified().ok())
                .max()
                .unwrap_or(std::time::UNIX_EPOCH),
        );
        if *seen == Some(stamp) {
            return Ok(());
        }
        let conn = open(path, false).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut stmt = conn
            .prepare("SELECT name, hash FROM users")
            .map_err(|e| e.to_string())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .and_then(|rows| rows.collect::<rusqlite::Result<HashMap<_, _>>>())
            .map_err(|e| e.to_string())?;
        *self.lock() = rows;
        *seen = Some(stamp);
        Ok(())
    }

    /// Cluster mode: the cluster's registered names count too.
    pub fn share_with(&self, registered: crate::cluster::users::Registered) {
        let _ = self.cluster.set(registered);
    }

    fn cluster_lock(&self) -> Option<MutexGuard<'_, HashMap<String, String>>> {
        let registered = self.cluster.get()?;
        Some(registered.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether any names are registered, here or for the cluster.
    pub fn any(&self) -> bool {
        !self.lock().is_empty() || self.cluster_lock().is_some_and(|r| !r.is_empty())
    }

    /// The hash `name` is registered with: the cluster's, else the data directory's.
    fn hash_of(&self, name: &str) -> Option<String> {
        let in_cluster = self.cluster_lock().and_then(|r| r.get(name).cloned());
        in_cluster.or_else(|| self.lock().get(name).cloned())
    }

    pub fn is_registered(&self, name: &str) -> bool {
        self.hash_of(name).is_some()
    }

    /// Checks a handshake's name and password. Ok for an unregistered name (unless
    /// `--require-auth`) and for a registered one with its password; otherwise, after the fixed
    /// delay, the reason to send.
    pub async fn check(&self, ip: IpAddr, hs: &Handshake) -> Result<(), &'static str> {
        let stored = self.hash_of(&hs.name);
        if stored.is_none() && !self.require {
            return Ok(());
        }
        let started = Instant::now();
        if self.too_many_fails(ip) {
            tokio::time::sleep_until((started + FAIL_DELAY).into()).await;
            return Err(TOO_MANY);
        }
        let password = hs.password.as_ref().map(|p| p.0.clone());
        let ok = match (stored, password) {
            (Some(hash), Some(password)) => {
                // The permit bounds the CPU and memory spent hashing at once.
                let Ok(_permit) = self.hashing.acquire().await else {
                    return Err(FAILED);
                };
                tokio::task::spawn_blocking(move || verify(&password, &hash))
                    .await
                    .unwrap_or(false)
            }
            _ => false,
        };
        if ok {
            self.fails_lock().remove(&ip);
            return Ok(());
        }
        self.record_fail(ip);
        tokio::time::sleep_until((started + FAIL_DELAY).into()).await;
        Err(FAILED)
    }

    fn fails_lock(&self) -> MutexGuard<'_, HashMap<IpAddr, (u32, Instant)>> {
        self.fails.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn too_many_fails(&self, ip: IpAddr) -> bool {
        let fails = self.fails_lock();
        fails
            .get(&ip)
            .is_some_and(|(n, since)| *n >= MAX_FAILS && since.elapsed() < FAIL_WINDOW)
    }

    fn record_fail(&self, ip: IpAddr) {
        let mut fails = self.fails_lock();
        // Forget old windows now and then, so the map stays small under a spray of addresses.
        if fails.len() > 10_000 {
            fails.retain(|_, (_, since)| since.elapsed() < FAIL_WINDOW);
        }
        let entry = fails.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FAIL_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }
}

/// Reads a password from stdin: at a terminal, asked twice with the echo off; otherwise the
/// first line. Never from the command line, where every user of the machine could see it.
pub fn read_password(name: &str) -> Result<String, String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_owned());
    }
    let ask = |prompt: &str| -> Result<String, String> {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        let _echo_off = EchoOff::new();
        let mut line = String::new();
        let read = std::io::stdin().lock().read_line(&mut line);
        eprintln!();
        read.map_err(|e| format!("cannot read the password: {e}"))?;
        Ok(line.trim_end_matches(['\n', '\r']).to_owned())
    };
    let first = ask(&format!("Password for {name}: "))?;
    let again = ask("Again: ")?;
    if first != again {
        return Err("the passwords do not match".into());
    }
    Ok(first)
}

/// Turns the terminal's echo off until dropped.
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> Self {
        // SAFETY: tcgetattr/tcsetattr on stdin with a zeroed termios they fill in; failure
        // (not a terminal) leaves everything as it was.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut t) != 0 {
                return EchoOff(None);
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t);
            EchoOff(Some(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: restores the settings read in `new`.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_are_salted() {
        let a = hash("pw").unwrap();
        let b = hash("pw").unwrap();
        assert_ne!(a, b, "a fresh salt each time");
        assert!(a.starts_with("$argon2id$"));
        assert!(verify("pw", &a) && verify("pw", &b));
        assert!(!verify("pW", &a));
        assert!(!verify("pw", "not a hash"));
    }

    #[test]
    fn users_are_added_listed_and_removed() {
        let dir = std::env::temp_dir().join(format!("machat-auth-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        add_user(&dir, "Mina", "secret").unwrap();
        add_user(&dir, "Bob", "other").unwrap();
        assert!(add_user(&dir, "bad name", "x").is_err());
        assert!(add_user(&dir, "Empty", "").is_err());
        assert_eq!(list_users(&dir).unwrap(), ["Bob", "Mina"]);
        assert!(remove_user(&dir, "Bob").unwrap());
        assert!(!remove_user(&dir, "Bob").unwrap());
        assert_eq!(list_users(&dir).unwrap(), ["Mina"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
