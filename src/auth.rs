//! Registered names: argon2 password hashes in the data directory's SQLite file, checked at the
//! handshake.
//!
//! A registered name can be used only with its password; `--require-auth` closes the server to
//! unregistered names. Names are looked up by their canonical key
//! ([`crate::protocol::name_key`]), so a look-alike of a registered name (`mina`, Cyrillic
//! `Мina`) is that name: it needs its password. A registered name sent with no password at
//! all is told so (`name NAME is registered: send its password`) on a server without
//! `--require-auth`, where `/nick` already says which names are registered. Every other
//! failure answers the same `authentication failed` after the same delay (measured from the start of the check, which covers the hash's
//! own time), so a guesser learns neither whether the name exists nor which part was wrong; an
//! unknown name (under `--require-auth`) or a missing password is checked against a stand-in
//! hash, so it costs the same and waits in the same queue as a wrong password. How often an
//! address may try is `login_limit`'s: turns per address, failures counted before the
//! hash, a delay that grows per (address, name). At most two hashes are computed at once
//! (argon2 is made to be costly in CPU and memory). `machat user add` writes the table; a
//! running server sees the change within two seconds. In cluster mode the names registered for
//! the whole cluster (see [`crate::cluster::users`]) count too, and take precedence over the
//! data directory's.
//!
//! A registered name may also be a server admin (`machat user add NAME --admin`, `machat user
//! admin NAME on|off`), stored with it (the `admin` column; the cluster's record). Only someone
//! who can write the data directory (or the cluster's bucket) can make one: no client command
//! grants it. [`Users::is_admin`] is what the moderation commands will ask.
//!
//! A handshake may prove a registered name with a session token from `POST /api/login`
//! ([`crate::logins`]) instead of its password: the same limiter, delay and refusal, and the
//! same person.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use rusqlite::{params, Connection, OpenFlags};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::login_limit::{LoginLimit, Refused, Source};
use crate::protocol::{name_key, validate_name, Handshake, NameKey};
use crate::refusal::Refusal;
use crate::settings::AuthSettings;

/// The one answer to every failed check.
const FAILED: Refusal = Refusal::AuthenticationFailed;
/// A failed check answers no sooner than this after it began.
const FAIL_DELAY: Duration = Duration::from_secs(1);
/// Argon2 hashes computed at once, over all clients.
const HASHING: usize = 2;
/// How often a running server looks for new or removed users.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Why registered names cannot be read or written, or a name or password cannot be registered.
/// The file and the database's reason are kept, so a missing file can be told from a corrupt
/// one; a rule that is broken says which.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A name rule's own text (the same a client is told at the handshake).
    #[error("{reason}")]
    BadName { name: String, reason: String },
    #[error("the password must not be empty")]
    EmptyPassword,
    #[error("password too short: at least {min} characters")]
    ShortPassword { min: usize },
    #[error("the password is longer than {max} bytes")]
    LongPassword { max: usize },
    #[error("cannot hash the password: {0}")]
    Hash(#[source] argon2::password_hash::Error),
    #[error("name {name} is too much like {like}, already registered")]
    Lookalike { name: String, like: String },
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Database {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The text is SQLite's alone (what `machat user list` prints); the path is for callers.
    #[error("{source}")]
    Read {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot read the password from stdin: {0}")]
    ReadStdin(#[source] std::io::Error),
    #[error("cannot read the password: {0}")]
    ReadTerminal(#[source] std::io::Error),
    #[error("the passwords do not match")]
    PasswordsDiffer,
}

impl AuthError {
    fn database(path: &Path) -> impl FnOnce(rusqlite::Error) -> AuthError + '_ {
        |source| AuthError::Database {
            path: path.to_owned(),
            source,
        }
    }

    fn read(path: &Path) -> impl FnOnce(rusqlite::Error) -> AuthError + '_ {
        |source| AuthError::Read {
            path: path.to_owned(),
            source,
        }
    }
}

/// The rules a name must pass at the handshake: a name registered against them could never
/// be used.
fn check_name(name: &str) -> Result<(), AuthError> {
    validate_name(name).map_err(|reason| AuthError::BadName {
        name: name.to_owned(),
        reason,
    })
}

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
    let mut conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(2))?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS users (
            name TEXT PRIMARY KEY,
            hash TEXT NOT NULL,
            admin INTEGER NOT NULL DEFAULT 0
        )",
    )?;
    add_admin_column(&mut conn)?;
    Ok(conn)
}

fn has_admin_column(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare("SELECT 1 FROM pragma_table_info('users') WHERE name = 'admin'")?
        .exists([])
}

/// A data directory made before server admins has a users table without the `admin` column:
/// it gets one (nobody an admin), so an old data dir keeps working. Checked again inside an
/// immediate transaction, so a server and `machat user` migrating at once do not both add it.
fn add_admin_column(conn: &mut Connection) -> rusqlite::Result<()> {
    if has_admin_column(conn)? {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if !has_admin_column(&tx)? {
        tx.execute_batch("ALTER TABLE users ADD COLUMN admin INTEGER NOT NULL DEFAULT 0")?;
    }
    tx.commit()
}

/// Hashes a password with argon2id and a random salt (PHC string format).
pub fn hash(password: &str) -> Result<String, AuthError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(AuthError::Hash)
}

fn verify(password: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// The hash to register `name` with, once the name and the password pass the rules: not
/// empty, at least `min_chars` characters (counted as a person counts them, not in bytes), at
/// most [`crate::protocol::MAX_PASSWORD`] bytes.
pub fn new_hash(name: &str, password: &str, min_chars: usize) -> Result<String, AuthError> {
    check_name(name)?;
    if password.is_empty() {
        return Err(AuthError::EmptyPassword);
    }
    if password.chars().count() < min_chars {
        return Err(AuthError::ShortPassword { min: min_chars });
    }
    if password.len() > crate::protocol::MAX_PASSWORD {
        return Err(AuthError::LongPassword {
            max: crate::protocol::MAX_PASSWORD,
        });
    }
    hash(password)
}

/// `machat user add NAME [--admin]`: registers (or re-registers) a name. Refused if the name is
/// too much like another registered name (the same [`name_key`]). A new password keeps the
/// admin role the name had: taking it is `machat user admin NAME off`, never a side effect.
pub fn add_user(
    auth: &AuthSettings,
    name: &str,
    password: &str,
    admin: bool,
) -> Result<(), AuthError> {
    let data_dir = auth.data_dir.as_path();
    check_name(name)?;
    let names = list_users(data_dir)?.into_iter().map(|l| l.name);
    if let Some(like) = lookalike(name, names) {
        return Err(AuthError::Lookalike {
            name: name.to_owned(),
            like,
        });
    }
    let hash = new_hash(name, password, auth.min_password_length)?;
    std::fs::create_dir_all(data_dir).map_err(|source| AuthError::CreateDir {
        path: data_dir.to_owned(),
        source,
    })?;
    let path = db_path(data_dir);
    let conn = open(&path, true).map_err(AuthError::database(&path))?;
    conn.execute(
        "INSERT INTO users (name, hash, admin) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET hash = excluded.hash, admin = admin OR excluded.admin",
        params![name, hash, admin],
    )
    .map_err(AuthError::database(&path))?;
    Ok(())
}

/// Another name of `registered` with `name`'s key (the name itself does not count: that is a
/// new password for it).
pub fn lookalike(name: &str, registered: impl IntoIterator<Item = String>) -> Option<String> {
    let key = name_key(name);
    registered
        .into_iter()
        .find(|other| other != name && name_key(other).clashes(&key))
}

/// `machat user passwd NAME`: a new password for a registered NAME (exactly as registered),
/// which keeps its role. False, and nothing written, if NAME is not registered. The password
/// must pass the same rules as `machat user add`'s.
pub fn set_password(auth: &AuthSettings, name: &str, password: &str) -> Result<bool, AuthError> {
    let path = db_path(&auth.data_dir);
    if !path.exists() {
        return Ok(false);
    }
    let conn = open(&path, false).map_err(AuthError::database(&path))?;
    let known: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM users WHERE name = ?1)",
            [name],
            |r| r.get(0),
        )
        .map_err(AuthError::read(&path))?;
    if !known {
        return Ok(false);
    }
    let hash = new_hash(name, password, auth.min_password_length)?;
    conn.execute(
        "UPDATE users SET hash = ?2 WHERE name = ?1",
        params![name, hash],
    )
    .map(|n| n > 0)
    .map_err(AuthError::database(&path))
}

/// `machat user remove NAME`. False if there was no such user.
pub fn remove_user(data_dir: &Path, name: &str) -> Result<bool, AuthError> {
    let path = db_path(data_dir);
    let conn = open(&path, false).map_err(AuthError::database(&path))?;
    conn.execute("DELETE FROM users WHERE name = ?1", [name])
        .map(|n| n > 0)
        .map_err(AuthError::database(&path))
}

/// `machat user admin NAME on|off`: gives or takes the server admin role. False, and nothing
/// written, if NAME (exactly as registered) is not registered: only registered names hold roles.
pub fn set_admin(data_dir: &Path, name: &str, admin: bool) -> Result<bool, AuthError> {
    let path = db_path(data_dir);
    if !path.exists() {
        return Ok(false);
    }
    let conn = open(&path, false).map_err(AuthError::database(&path))?;
    conn.execute(
        "UPDATE users SET admin = ?2 WHERE name = ?1",
        params![name, admin],
    )
    .map(|n| n > 0)
    .map_err(AuthError::database(&path))
}

/// A line of `machat user list`: a registered name and whether it is a server admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub admin: bool,
}

/// `machat user list`: the registered names, sorted.
pub fn list_users(data_dir: &Path) -> Result<Vec<Listed>, AuthError> {
    let path = db_path(data_dir);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let conn = open(&path, false).map_err(AuthError::database(&path))?;
    let mut stmt = conn
        .prepare("SELECT name, admin FROM users ORDER BY name")
        .map_err(AuthError::read(&path))?;
    let names = stmt
        .query_map([], |r| {
            Ok(Listed {
                name: r.get(0)?,
                admin: r.get(1)?,
            })
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<Listed>>>())
        .map_err(AuthError::read(&path))?;
    Ok(names)
}

/// A registered name as the server holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The name as registered (not its key): a look-alike finds this entry, but is not it.
    pub name: String,
    /// The argon2id hash, in the PHC string format.
    pub hash: String,
    pub admin: bool,
}

/// Registered names (their hashes and roles), found by either of a name's keys (see
/// [`crate::protocol::NameKey`]).
#[derive(Debug, Default)]
pub struct ByKey {
    /// `lower` key → the registration.
    entries: HashMap<String, Registration>,
    /// `upper` key → `lower` key.
    upper: HashMap<String, String>,
}

impl ByKey {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The registration too much like a name of `key`.
    pub fn get(&self, key: &NameKey) -> Option<&Registration> {
        self.entries.get(&key.lower).or_else(|| {
            let lower = self.upper.get(&key.upper)?;
            self.entries.get(lower)
        })
    }

    /// Registers a name (its new hash and role, if it is there); false, and nothing changed,
    /// if another name too much like it is there.
    pub fn insert(&mut self, registration: Registration) -> bool {
        let key = name_key(&registration.name);
        if self.get(&key).is_some_and(|r| r.name != registration.name) {
            return false;
        }
        self.upper.insert(key.upper, key.lower.clone());
        self.entries.insert(key.lower, registration);
        true
    }

    /// Every registration, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &Registration> {
        self.entries.values()
    }

    /// Removes `name` itself (not a look-alike of it).
    pub fn remove(&mut self, name: &str) {
        let key = name_key(name);
        if self.entries.get(&key.lower).is_some_and(|r| r.name == name) {
            self.entries.remove(&key.lower);
            self.upper.remove(&key.upper);
        }
    }
}

/// Who a handshake that passed [`Users::check`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    /// An unregistered name: it is this connection's alone in a room, as it always was.
    Guest,
    /// A registered name, with its password: a person, who may be connected several times at
    /// once (laptop, phone, tabs) and is one member of each room.
    Person,
}

impl Login {
    pub fn is_person(self) -> bool {
        self == Login::Person
    }
}

/// The server's view of the registered names.
pub struct Users {
    hashes: Mutex<ByKey>,
    /// Cluster mode: the names registered for every node.
    cluster: OnceLock<Registered>,
    require: bool,
    limit: Arc<LoginLimit>,
    hashing: Semaphore,
    /// Connections (by id) that proved a registered name's password and have not entered a
    /// room yet: `lifecycle` notes the proof here and takes it back on entering, so the
    /// transports in between carry nothing new. An entry whose connection ended in between is
    /// dropped after [`PROOF_KEPT`].
    proofs: Mutex<HashMap<u64, Instant>>,
    /// Session tokens (`POST /api/login`), which a handshake may carry instead of the
    /// password; set once at start.
    logins: OnceLock<crate::logins::Logins>,
}

/// What a login attempt offers as proof of a registered name.
enum Proof<'a> {
    Password(Option<&'a str>),
    Token(&'a str),
}

/// How long a proof waits for its connection to enter (the claim waits 5 s at most).
const PROOF_KEPT: Duration = Duration::from_secs(60);

/// A hash of no password: what an unknown name or a missing password is checked against, so
/// it costs what a wrong password costs.
fn stand_in() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash("machat: no such password").unwrap_or_default())
}

impl Users {
    fn new(require: bool) -> Users {
        Users {
            hashes: Mutex::new(ByKey::default()),
            cluster: OnceLock::new(),
            require,
            limit: LoginLimit::new(FAIL_DELAY),
            hashing: Semaphore::new(HASHING),
            proofs: Mutex::new(HashMap::new()),
            logins: OnceLock::new(),
        }
    }

    /// Loads the registered names of the settings' data directory (none if it has no database
    /// yet) and keeps them up to date from a thread of its own.
    pub fn load(settings: &AuthSettings) -> Result<Arc<Users>, AuthError> {
        let require = settings.require_auth;
        let path = db_path(&settings.data_dir);
        let users = Arc::new(Users::new(require));
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
        Arc::new(Users::new(false))
    }

    fn lock(&self) -> MutexGuard<'_, ByKey> {
        self.hashes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the table when the file changed (by its size and modification time).
    fn reload(
        &self,
        path: &Path,
        seen: &mut Option<(u64, std::time::SystemTime)>,
    ) -> Result<(), AuthError> {
        let Ok(meta) = std::fs::metadata(path) else {
            *self.lock() = ByKey::default();
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
        let conn = open(path, false).map_err(AuthError::database(path))?;
        let mut stmt = conn
            .prepare("SELECT name, hash, admin FROM users ORDER BY name")
            .map_err(AuthError::read(path))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Registration {
                    name: r.get(0)?,
                    hash: r.get(1)?,
                    admin: r.get(2)?,
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(AuthError::read(path))?;
        *self.lock() = by_key(rows);
        *seen = Some(stamp);
        Ok(())
    }

    /// Where session tokens are kept, and how long they last (set once, at start).
    pub fn use_logins(&self, logins: crate::logins::Logins) {
        let _ = self.logins.set(logins);
    }

    /// Session tokens, if the server keeps them.
    pub fn logins(&self) -> Option<&crate::logins::Logins> {
        self.logins.get()
    }

    /// Cluster mode: the cluster's registered names count too.
    pub fn share_with(&self, registered: Registered) {
        let _ = self.cluster.set(registered);
    }

    fn cluster_lock(&self) -> Option<MutexGuard<'_, ByKey>> {
        let registered = self.cluster.get()?;
        Some(registered.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Notes that connection `id` proved a registered name's password (see [`Users::proved`]).
    pub fn prove(&self, id: u64) {
        let now = Instant::now();
        let mut proofs = self.proofs.lock().unwrap_or_else(|e| e.into_inner());
        proofs.retain(|_, at| now.duration_since(*at) < PROOF_KEPT);
        proofs.insert(id, now);
    }

    /// Whether connection `id` proved a registered name's password (once: the proof is taken).
    pub fn proved(&self, id: u64) -> bool {
        let mut proofs = self.proofs.lock().unwrap_or_else(|e| e.into_inner());
        proofs.remove(&id).is_some()
    }

    /// Whether any names are registered, here or for the cluster.
    pub fn any(&self) -> bool {
        !self.lock().is_empty() || self.cluster_lock().is_some_and(|r| !r.is_empty())
    }

    /// Whether only registered names are let in (`--require-auth`).
    pub fn required(&self) -> bool {
        self.require
    }

    /// The hash the name of `key` is registered with: the cluster's, else the data
    /// directory's.
    fn hash_of(&self, key: &NameKey) -> Option<String> {
        self.registration(key, |r| r.hash.clone())
    }

    /// What `read` makes of the registration of `key`: the cluster's, else the data
    /// directory's (the same precedence for the password and the role, so a name is never
    /// checked against one and given the role of the other).
    fn registration<T>(&self, key: &NameKey, read: impl Fn(&Registration) -> T) -> Option<T> {
        let in_cluster = self.cluster_lock().and_then(|r| r.get(key).map(&read));
        in_cluster.or_else(|| self.lock().get(key).map(&read))
    }

    /// Whether `name` is a server admin: the registration its key finds is an admin's, and
    /// `name` is that registration's name exactly, so a case variant or a look-alike of an
    /// admin's name (which can log in with the admin's password) is no admin. An unregistered
    /// name is none. The answer follows `machat user` within moments (the file watcher, or the
    /// cluster's bucket).
    ///
    /// It knows names, not connections: the caller asks only for a connection that proved the
    /// name's password (a session's `person`), since a guest who took a name before it was
    /// registered still carries it.
    pub fn is_admin(&self, name: &str) -> bool {
        self.registration(&name_key(name), |r| r.admin && r.name == name)
            .unwrap_or(false)
    }

    /// The registered spelling of `name` (or of the registered name it is too much like):
    /// roles are held by that spelling, whatever case or look-alike a command typed.
    pub fn registered_name(&self, name: &str) -> Option<String> {
        self.registration(&name_key(name), |r| r.name.clone())
    }

    /// Whether `name`, or a name it is too much like, is registered.
    pub fn is_registered(&self, name: &str) -> bool {
        self.hash_of(&name_key(name)).is_some()
    }

    /// Checks a handshake's name and password. Ok for an unregistered name (unless
    /// `--require-auth`) and for a registered one (or a look-alike of one) with its password;
    /// otherwise, after the fixed delay, the reason to send. What it admits is told apart
    /// ([`Login`]): only a connection that proved the password may share its name with the
    /// person's other connections.
    ///
    /// A handshake without a password may carry a session token instead (`"token"`, from
    /// `POST /api/login`): a live token issued to the registered name proves it as the
    /// password does, and a wrong or expired one fails as a wrong password does, counted by
    /// the same limiter and answered after the same delay.
    pub async fn check(&self, ip: IpAddr, hs: &Handshake) -> Result<Login, Refusal> {
        let key = name_key(&hs.name);
        let stored = self.registration(&key, |r| (r.name.clone(), r.hash.clone()));
        if stored.is_none() && !self.require {
            return Ok(Login::Guest);
        }
        let proof = match (&hs.password, &hs.token) {
            (None, Some(token)) => Proof::Token(&token.0),
            (password, _) => Proof::Password(password.as_ref().map(|p| p.0.as_str())),
        };
        // No password for a registered name on an open server: what is missing is said (the
        // name's being registered is no secret there), after the same delay as a failure, and
        // not counted as one (nothing was guessed). Under --require-auth every name needs a
        // password, so saying which ones are registered would tell: the one answer stays.
        if stored.is_some() && !self.require && matches!(proof, Proof::Password(None)) {
            tokio::time::sleep(FAIL_DELAY).await;
            return Err(Refusal::RegisteredSendPassword(hs.name.clone()));
        }
        self.verify_login(ip, &key, stored, proof).await?;
        Ok(Login::Person)
    }

    /// `POST /api/login`: checks a registered name's password exactly as a handshake does (the
    /// same limiter, delay and refusals; a look-alike is the registered name), except that an
    /// unregistered name fails: only registered names get tokens. Ok: the registered spelling.
    pub async fn log_in(&self, ip: IpAddr, name: &str, password: &str) -> Result<String, Refusal> {
        let key = name_key(name);
        let stored = self.registration(&key, |r| (r.name.clone(), r.hash.clone()));
        self.verify_login(ip, &key, stored, Proof::Password(Some(password)))
            .await
    }

    /// The check itself, for the name of `key` registered as `stored` (its spelling and
    /// hash; None: not registered, which fails). Ok: the registered spelling.
    async fn verify_login(
        &self,
        ip: IpAddr,
        key: &NameKey,
        stored: Option<(String, String)>,
        proof: Proof<'_>,
    ) -> Result<String, Refusal> {
        let started = Instant::now();
        let answer_at = tokio::time::Instant::from_std(started + FAIL_DELAY);
        // Wait for this address's turn; the turn is held until the answer, failures included.
        let turn = match self.limit.turn(Source::of(ip)).await {
            Ok(turn) => turn,
            Err(_) => {
                tokio::time::sleep_until(answer_at).await;
                return Err(FAILED);
            }
        };
        // Counted as a failure before the hash, so no number of concurrent attempts passes.
        if let Err(why) = self.limit.reserve(&turn, &key.lower, Instant::now()) {
            tokio::time::sleep_until(answer_at).await;
            return Err(match why {
                // What an address held back after its failures is told (without a hash).
                Refused::HeldBack => Refusal::TooManyFailedLogins,
                Refused::Busy => FAILED,
            });
        }
        let name = stored.as_ref().map(|(name, _)| name.clone());
        let proved = match proof {
            Proof::Password(password) => {
                let real = stored.is_some() && password.is_some();
                let hash = stored.map_or_else(|| stand_in().to_owned(), |(_, hash)| hash);
                let password = password.unwrap_or_default().to_owned();
                // The permit bounds the CPU and memory spent hashing at once.
                let verified = match self.hashing.acquire().await {
                    Ok(_permit) => tokio::task::spawn_blocking(move || verify(&password, &hash))
                        .await
                        .unwrap_or(false),
                    Err(_) => false,
                };
                real && verified
            }
            // A token is found by its hash; it must be the registered name's (the spelling
            // it was issued to is the one a look-alike finds now).
            Proof::Token(token) => match (&name, self.logins.get()) {
                (Some(name), Some(logins)) => logins
                    .find(token)
                    .await
                    .map_err(|e| warn!("cannot check a session token: {e}"))
                    .ok()
                    .flatten()
                    .is_some_and(|issued| &issued.name == name),
                _ => false,
            },
        };
        if let (true, Some(name)) = (proved, name) {
            self.limit.succeeded(&turn, &key.lower);
            return Ok(name);
        }
        tokio::time::sleep_until(answer_at).await;
        drop(turn);
        Err(FAILED)
    }

    /// Counts a request that must carry a bearer token (the admin API's) against the
    /// failed-login limit of its address, as a password is counted: `right` is whether it
    /// carries the token (compared by the caller, in constant time). The attempt is counted as
    /// a failure before anything else, under a name no registered name can have, so token
    /// guesses hold back the token from their address after [`crate::login_limit::NAME_FREE`]
    /// failures (2 s, then 4, 8, ... up to a minute after the last one) and count towards the
    /// address's failures over all names (and password guesses towards the token's address
    /// limit). A held-back address is refused whatever it sends, the right token included. A
    /// refusal is answered [`FAIL_DELAY`] after the attempt began, like a failed login; a right
    /// token passes at once.
    pub async fn token_attempt(&self, ip: IpAddr, right: bool) -> Result<(), TokenRefused> {
        let answer_at = tokio::time::Instant::now() + FAIL_DELAY;
        let refused = |why| async move {
            tokio::time::sleep_until(answer_at).await;
            Err(why)
        };
        let Ok(turn) = self.limit.turn(Source::of(ip)).await else {
            return refused(TokenRefused::HeldBack).await;
        };
        if self.limit.reserve(&turn, TOKEN, Instant::now()).is_err() {
            return refused(TokenRefused::HeldBack).await;
        }
        if right {
            self.limit.succeeded(&turn, TOKEN);
            return Ok(());
        }
        let refusal = refused(TokenRefused::Wrong).await;
        drop(turn);
        refusal
    }

    /// Every registered name and whether it is a server admin, sorted by name: the cluster's,
    /// and those of the data directory the cluster's do not hide (the registration
    /// [`Users::is_admin`] and the password check use).
    pub fn listed(&self) -> Vec<Listed> {
        let local: Vec<Registration> = self.lock().iter().cloned().collect();
        let mut out = Vec::new();
        if let Some(cluster) = self.cluster_lock() {
            out.extend(cluster.iter().map(|r| Listed {
                name: r.name.clone(),
                admin: r.admin,
            }));
            out.extend(
                local
                    .into_iter()
                    .filter(|r| cluster.get(&name_key(&r.name)).is_none())
                    .map(|r| Listed {
                        name: r.name,
                        admin: r.admin,
                    }),
            );
        } else {
            out.extend(local.into_iter().map(|r| Listed {
                name: r.name,
                admin: r.admin,
            }));
        }
        out.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// What token attempts are counted under in the failed-login limit: a name key no name has
/// (a name has no control characters, and neither has its key).
const TOKEN: &str = "\u{0}bearer token";

/// Why [`Users::token_attempt`] refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefused {
    /// No token, or another one.
    Wrong,
    /// The address is held back after its failures (or has too many attempts under way).
    HeldBack,
}

/// Names registered elsewhere (the cluster's, in its key-value bucket), found by their keys
/// ([`crate::protocol::name_key`]): kept up to date by whoever follows them, read here.
pub type Registered = Arc<Mutex<ByKey>>;

/// Registered names by key; of names with one key (registered before keys were compared), the
/// first in order wins, and the others are named in the log.
pub fn by_key(rows: impl IntoIterator<Item = Registration>) -> ByKey {
    let mut out = ByKey::default();
    for registration in rows {
        let name = registration.name.clone();
        if !out.insert(registration) {
            warn!(name, "a registered name is too much like another: ignored");
        }
    }
    out
}

/// Reads a password from stdin: at a terminal, asked twice with the echo off; otherwise the
/// first line. Never from the command line, where every user of the machine could see it.
pub fn read_password(name: &str) -> Result<String, AuthError> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(AuthError::ReadStdin)?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_owned());
    }
    let ask = |prompt: &str| -> Result<String, AuthError> {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        let _echo_off = EchoOff::new();
        let mut line = String::new();
        let read = std::io::stdin().lock().read_line(&mut line);
        eprintln!();
        read.map_err(AuthError::ReadTerminal)?;
        Ok(line.trim_end_matches(['\n', '\r']).to_owned())
    };
    let first = ask(&format!("Password for {name}: "))?;
    let again = ask("Again: ")?;
    if first != again {
        return Err(AuthError::PasswordsDiffer);
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

    fn reg(name: &str, hash: &str, admin: bool) -> Registration {
        Registration {
            name: name.into(),
            hash: hash.into(),
            admin,
        }
    }

    #[test]
    fn registered_names_are_found_by_their_lookalikes() {
        let mut r = ByKey::default();
        assert!(r.insert(reg("Mina", "h1", false)));
        assert!(
            r.insert(reg("Mina", "h2", false)),
            "a new hash for the same name"
        );
        assert!(!r.insert(reg("MINA", "h3", false)));
        for like in ["mina", "\u{41c}ina", "\u{ff2d}ina", "Mina"] {
            assert_eq!(
                r.get(&name_key(like)).map(|r| r.hash.as_str()),
                Some("h2"),
                "{like}"
            );
        }
        r.remove("mina");
        assert_eq!(r.len(), 1, "a look-alike does not remove the name");
        r.remove("Mina");
        assert!(r.is_empty());
    }

    /// The settings of `dir` with passwords of at least `min` characters.
    fn auth(dir: &Path, min: usize) -> AuthSettings {
        AuthSettings {
            data_dir: dir.to_owned(),
            min_password_length: min,
            ..AuthSettings::default()
        }
    }

    #[test]
    fn passwords_have_a_minimum_length_in_characters_and_passwd_keeps_the_role() {
        let dir = std::env::temp_dir().join(format!("machat-passwd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let strict = auth(&dir, 8);
        let err = add_user(&strict, "Mina", "seven77", false).unwrap_err();
        assert_eq!(err.to_string(), "password too short: at least 8 characters");
        // Eight characters of two bytes each: counted as eight, not sixteen or four.
        add_user(&strict, "Mina", "éééééééé", true).unwrap();
        assert!(
            !set_password(&strict, "Bob", "long enough").unwrap(),
            "not registered"
        );
        assert!(
            !set_password(&strict, "mina", "long enough").unwrap(),
            "a look-alike"
        );
        let err = set_password(&strict, "Mina", "short").unwrap_err();
        assert_eq!(err.to_string(), "password too short: at least 8 characters");
        let before = list_hash(&dir, "Mina");
        assert!(set_password(&strict, "Mina", "long enough").unwrap());
        let after = list_hash(&dir, "Mina");
        assert_ne!(before, after);
        assert!(verify("long enough", &after) && !verify("éééééééé", &after));
        assert_eq!(
            names(&dir),
            [("Mina".to_string(), true)],
            "the role is kept"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn list_hash(dir: &Path, name: &str) -> String {
        let conn = open(&db_path(dir), false).unwrap();
        conn.query_row("SELECT hash FROM users WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .unwrap()
    }

    fn names(dir: &Path) -> Vec<(String, bool)> {
        list_users(dir)
            .unwrap()
            .into_iter()
            .map(|l| (l.name, l.admin))
            .collect()
    }

    #[test]
    fn users_are_added_listed_and_removed() {
        let dir = std::env::temp_dir().join(format!("machat-auth-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        add_user(&auth(&dir, 1), "Mina", "secret", false).unwrap();
        add_user(&auth(&dir, 1), "Bob", "other", false).unwrap();
        assert!(add_user(&auth(&dir, 1), "bad name", "x", false).is_err());
        assert!(add_user(&auth(&dir, 1), "Empty", "", false).is_err());
        let err = add_user(&auth(&dir, 1), "BOB", "x", true).unwrap_err();
        assert!(matches!(err, AuthError::Lookalike { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "name BOB is too much like Bob, already registered"
        );
        add_user(&auth(&dir, 1), "Bob", "new password", false).unwrap();
        let plain = |n: &[&str]| n.iter().map(|n| (n.to_string(), false)).collect::<Vec<_>>();
        assert_eq!(names(&dir), plain(&["Bob", "Mina"]));
        assert!(remove_user(&dir, "Bob").unwrap());
        assert!(!remove_user(&dir, "Bob").unwrap());
        assert_eq!(names(&dir), plain(&["Mina"]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_admin_role_is_stored_kept_by_a_new_password_and_only_for_registered_names() {
        let dir = std::env::temp_dir().join(format!("machat-admin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!set_admin(&dir, "Root", true).unwrap(), "no database yet");
        add_user(&auth(&dir, 1), "Root", "pw", true).unwrap();
        add_user(&auth(&dir, 1), "Mina", "pw", false).unwrap();
        assert_eq!(
            names(&dir),
            [("Mina".to_string(), false), ("Root".to_string(), true)]
        );
        add_user(&auth(&dir, 1), "Root", "new pw", false).unwrap();
        assert_eq!(names(&dir)[1], ("Root".to_string(), true), "a new password");
        assert!(set_admin(&dir, "Root", false).unwrap());
        assert!(set_admin(&dir, "Mina", true).unwrap());
        assert_eq!(
            names(&dir),
            [("Mina".to_string(), true), ("Root".to_string(), false)]
        );
        assert!(!set_admin(&dir, "Ghost", true).unwrap());
        assert!(!set_admin(&dir, "MINA", false).unwrap(), "the name exactly");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_the_registered_name_of_an_admin_is_an_admin() {
        let users = Users::new(false);
        *users.lock() = by_key([
            reg("Admin", "h", true),
            reg("Mina", "h", false),
            reg("\u{41c}ax", "h", true),
        ]);
        assert!(users.is_admin("Admin"));
        assert!(users.is_admin("\u{41c}ax"));
        for not in [
            "ADMIN",
            "admin",
            "\u{410}dmin",  // Cyrillic А
            "\u{ff21}dmin", // fullwidth Ａ
            "Max",          // Latin look-alike of the Cyrillic admin
            "Mina",
            "Ghost",
            "",
        ] {
            assert!(!users.is_admin(not), "{not}");
        }
        assert!(!Users::none().is_admin("Admin"));
    }

    /// The cluster's registration is the one that counts, for the role as for the password.
    #[test]
    fn in_cluster_mode_the_clusters_role_counts() {
        let users = Users::new(false);
        *users.lock() = by_key([reg("Admin", "h", true), reg("Local", "h", true)]);
        let cluster: Registered = Arc::new(Mutex::new(by_key([
            reg("Admin", "h", false),
            reg("Root", "h", true),
        ])));
        users.share_with(cluster.clone());
        assert!(!users.is_admin("Admin"));
        assert!(users.is_admin("Root"));
        assert!(users.is_admin("Local"), "a name only the data dir has");
        cluster.lock().unwrap().insert(reg("Admin", "h", true));
        assert!(users.is_admin("Admin"), "followed from the bucket");
        cluster.lock().unwrap().remove("Root");
        assert!(!users.is_admin("Root"));
    }

    #[tokio::test]
    async fn token_attempts_count_towards_the_failed_login_limit() {
        let users = Arc::new(Users::new(false));
        let ip: IpAddr = [192, 0, 2, 1].into();
        for _ in 0..10 {
            assert_eq!(
                users.token_attempt(ip, true).await,
                Ok(()),
                "right costs nothing"
            );
        }
        // Wrong tokens are refused after the failures' delay (two at a time per address).
        let started = Instant::now();
        let wrong: Vec<_> = (0..crate::login_limit::NAME_FREE)
            .map(|_| {
                let users = users.clone();
                tokio::spawn(async move { users.token_attempt(ip, false).await })
            })
            .collect();
        for w in wrong {
            assert_eq!(w.await.unwrap(), Err(TokenRefused::Wrong));
        }
        assert!(started.elapsed() >= FAIL_DELAY);
        // Then the address is held back, the right token included; another is not.
        assert_eq!(
            users.token_attempt(ip, true).await,
            Err(TokenRefused::HeldBack)
        );
        assert_eq!(
            users.token_attempt([192, 0, 2, 2].into(), true).await,
            Ok(())
        );
        // The failures are the address's, in the same tables as failed logins.
        let (names, sources, _) = users.limit.sizes();
        assert_eq!((names, sources), (1, 2));
    }

    #[test]
    fn registered_names_are_listed_with_the_clusters_first() {
        let users = Users::new(false);
        *users.lock() = by_key([reg("Mina", "h", false), reg("Root", "h", true)]);
        let listed = |users: &Users| -> Vec<(String, bool)> {
            users
                .listed()
                .into_iter()
                .map(|l| (l.name, l.admin))
                .collect()
        };
        let own = |v: &[(&str, bool)]| -> Vec<(String, bool)> {
            v.iter().map(|(n, a)| (n.to_string(), *a)).collect()
        };
        assert_eq!(listed(&users), own(&[("Mina", false), ("Root", true)]));
        let cluster: Registered = Arc::new(Mutex::new(by_key([
            reg("ROOT", "h", false),
            reg("Ann", "h", true),
        ])));
        users.share_with(cluster);
        assert_eq!(
            listed(&users),
            own(&[("Ann", true), ("Mina", false), ("ROOT", false)]),
            "the cluster's ROOT hides the data dir's Root"
        );
    }

    /// A data dir from before server admins: its users table has no admin column.
    #[test]
    fn an_old_users_table_gets_the_admin_column() {
        let dir = std::env::temp_dir().join(format!("machat-old-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let old = Connection::open(db_path(&dir)).unwrap();
        let h = hash("pw").unwrap();
        old.execute_batch("CREATE TABLE users (name TEXT PRIMARY KEY, hash TEXT NOT NULL)")
            .unwrap();
        old.execute("INSERT INTO users VALUES ('Mina', ?1)", [&h])
            .unwrap();
        drop(old);
        let users = Users::new(false);
        users.reload(&db_path(&dir), &mut None).unwrap();
        assert!(users.is_registered("Mina") && !users.is_admin("Mina"));
        assert_eq!(names(&dir), [("Mina".to_string(), false)]);
        assert!(set_admin(&dir, "Mina", true).unwrap());
        users.reload(&db_path(&dir), &mut None).unwrap();
        assert!(users.is_admin("Mina"));
        assert_eq!(users.hash_of(&name_key("Mina")), Some(h), "the hash kept");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
