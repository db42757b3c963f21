//! Registered names in cluster mode, the same on every node.
//!
//! On one machine `machat user add` writes the argon2 hash into the data directory. In a
//! cluster that would register a name on one node only, and anyone could take it on another.
//! So with `--nats`, `machat user add|remove|admin|list` work on the key-value bucket
//! `machat-users` (key: the name in hex, value: its [`Record`]), and every node reads the whole
//! bucket before it accepts a client and then follows it, so a registration, a removal or a
//! change of role counts on every node within moments.

use std::sync::MutexGuard;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::{hex, open_bucket, parse_servers, unhex, with_credentials, ClusterError};
use crate::auth::{Listed, Registration};

/// The bucket of registered names.
pub const USERS: &str = "machat-users";

/// The names and argon2 hashes the bucket holds (the type is `auth`'s, which reads it).
pub use crate::auth::Registered;

fn lock(r: &Registered) -> MutexGuard<'_, crate::auth::ByKey> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) async fn open(
    js: &async_nats::jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    open_bucket(js, USERS, Duration::ZERO, replicas).await
}

/// What the bucket holds for a name. Before server admins the value was the bare PHC hash, and
/// a name that is no admin is still written so: such a record reads as `admin: false`, and nodes
/// of an older machat still read the records of every name but an admin's during a rolling
/// upgrade. An admin's record is JSON (a PHC string starts with `$`, never `{`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    hash: String,
    #[serde(default)]
    admin: bool,
}

impl Record {
    /// A well-formed value: JSON, or a UTF-8 bare hash. Anything else is not a registration.
    fn parse(value: &[u8]) -> Option<Record> {
        if value.first() == Some(&b'{') {
            return serde_json::from_slice(value).ok();
        }
        let hash = std::str::from_utf8(value).ok()?;
        Some(Record {
            hash: hash.to_owned(),
            admin: false,
        })
    }

    fn encode(&self) -> Result<Bytes, ClusterError> {
        if !self.admin {
            return Ok(Bytes::from(self.hash.clone()));
        }
        serde_json::to_vec(self)
            .map(Bytes::from)
            .map_err(ClusterError::Encode)
    }
}

/// Everything the bucket holds now, by name key.
pub(super) async fn load(kv: &kv::Store) -> Result<crate::auth::ByKey, ClusterError> {
    load_names(kv).await.map(|mut names| {
        names.sort_by(|a, b| a.name.cmp(&b.name));
        crate::auth::by_key(names)
    })
}

async fn load_names(kv: &kv::Store) -> Result<Vec<Registration>, ClusterError> {
    let mut keys = kv.keys().await.map_err(|e| ClusterError::entry(USERS, e))?;
    let mut out = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| ClusterError::entry(USERS, e))?;
        let value = kv
            .get(&key)
            .await
            .map_err(|e| ClusterError::entry(USERS, e))?;
        if let Some(named) = value.and_then(|v| entry(&key, &v)) {
            out.push(named);
        }
    }
    Ok(out)
}

/// A well-formed entry: a hex name and a [`Record`]. Anything else is not a registration.
fn entry(key: &str, value: &[u8]) -> Option<Registration> {
    let name = unhex(key)?;
    let Record { hash, admin } = Record::parse(value)?;
    Some(Registration { name, hash, admin })
}

/// The record the bucket holds for `key` now, with its revision (to write it back only if
/// nobody changed it meanwhile); None if there is none, or it was removed.
async fn current(kv: &kv::Store, key: &str) -> Result<Option<(Record, u64)>, ClusterError> {
    let entry = kv
        .entry(key)
        .await
        .map_err(|e| ClusterError::entry(USERS, e))?;
    Ok(entry.and_then(|e| match e.operation {
        Operation::Put => Record::parse(&e.value).map(|r| (r, e.revision)),
        Operation::Delete | Operation::Purge => None,
    }))
}

/// Follows the bucket for ever. After a reconnect the watch starts over with the bucket's
/// current state; the names already known stay in force meanwhile.
pub(super) async fn follow(
    kv: kv::Store,
    registered: Registered,
    connections: tokio::sync::watch::Receiver<u64>,
) {
    let apply = |entry: kv::Entry| {
        let mut registered = lock(&registered);
        match entry.operation {
            Operation::Put => {
                if let Some(registration) = self::entry(&entry.key, &entry.value) {
                    // A look-alike of a name already there (machat user add refuses those)
                    // does not replace it.
                    registered.insert(registration);
                }
            }
            Operation::Delete | Operation::Purge => {
                if let Some(name) = unhex(&entry.key) {
                    registered.remove(&name);
                }
            }
        }
    };
    super::follow_bucket(kv, connections, "the registered names", || {}, apply).await;
}

/// Runs one piece of work on the bucket from the command line (`machat user ... --nats URL`).
fn with_bucket<T, F, Fut>(url: &str, replicas: usize, work: F) -> Result<T, ClusterError>
where
    F: FnOnce(kv::Store) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClusterError>>,
{
    with_kv(url, |js| async move {
        let kv = open(&js, replicas).await?;
        work(kv).await
    })
}

/// Runs one piece of work on the cluster's JetStream from the command line.
pub(super) fn with_kv<T, F, Fut>(url: &str, work: F) -> Result<T, ClusterError>
where
    F: FnOnce(async_nats::jetstream::Context) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClusterError>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ClusterError::Runtime)?;
    runtime.block_on(async move {
        let servers = parse_servers(url)?;
        let client = with_credentials(async_nats::ConnectOptions::new(), &servers)
            .connection_timeout(Duration::from_secs(5))
            .connect(servers)
            .await
            .map_err(|e| ClusterError::Unusable {
                at: super::redact_url(url),
                source: Box::new(ClusterError::Connect(e)),
            })?;
        let js = async_nats::jetstream::new(client.clone());
        let result = work(js).await;
        let _ = client.flush().await;
        result
    })
}

/// `machat user add NAME [--admin] --nats URL`: registers NAME (or sets its new hash) for the
/// cluster, unless it is too much like another registered name. A new password keeps the role
/// NAME had (see [`crate::auth::add_user`]); a change of role made meanwhile fails the write
/// rather than being undone by it.
pub fn add(
    url: &str,
    replicas: usize,
    name: &str,
    hash: &str,
    admin: bool,
) -> Result<(), ClusterError> {
    let key = hex(name);
    with_bucket(url, replicas, |kv| async move {
        let names = load_names(&kv).await?.into_iter().map(|r| r.name);
        if let Some(like) = crate::auth::lookalike(name, names) {
            return Err(ClusterError::LooksLike {
                name: name.to_owned(),
                like,
            });
        }
        let now = current(&kv, &key).await?;
        let record = Record {
            hash: hash.to_owned(),
            admin: admin || now.as_ref().is_some_and(|(r, _)| r.admin),
        }
        .encode()?;
        let written = match now {
            Some((_, revision)) => kv.update(&key, record, revision).await.map_err(Into::into),
            None => kv.put(&key, record).await.map_err(Into::into),
        };
        written
            .map(|_| ())
            .map_err(|e: async_nats::Error| ClusterError::entry(USERS, e))
    })
}

/// `machat user admin NAME on|off --nats URL`: gives or takes the server admin role on every
/// node. False, and nothing written, if NAME (exactly) is not registered in the cluster.
pub fn set_admin(
    url: &str,
    replicas: usize,
    name: &str,
    admin: bool,
) -> Result<bool, ClusterError> {
    let key = hex(name);
    with_bucket(url, replicas, |kv| async move {
        let Some((record, revision)) = current(&kv, &key).await? else {
            return Ok(false);
        };
        let record = Record { admin, ..record }.encode()?;
        kv.update(&key, record, revision)
            .await
            .map_err(|e| ClusterError::entry(USERS, e))?;
        Ok(true)
    })
}

/// `machat user passwd NAME --nats URL`: a new hash for NAME (exactly as registered), keeping
/// its role. False, and nothing written, if NAME is not registered in the cluster; a change
/// made meanwhile fails the write rather than being undone by it.
pub fn set_hash(url: &str, replicas: usize, name: &str, hash: &str) -> Result<bool, ClusterError> {
    let key = hex(name);
    with_bucket(url, replicas, |kv| async move {
        let Some((record, revision)) = current(&kv, &key).await? else {
            return Ok(false);
        };
        let record = Record {
            hash: hash.to_owned(),
            ..record
        }
        .encode()?;
        kv.update(&key, record, revision)
            .await
            .map_err(|e| ClusterError::entry(USERS, e))?;
        Ok(true)
    })
}

/// `machat user remove NAME --nats URL`. False if there was no such name.
pub fn remove(url: &str, replicas: usize, name: &str) -> Result<bool, ClusterError> {
    let key = hex(name);
    with_bucket(url, replicas, |kv| async move {
        let there = kv
            .get(&key)
            .await
            .map_err(|e| ClusterError::entry(USERS, e))?
            .is_some();
        if there {
            kv.delete(&key)
                .await
                .map_err(|e| ClusterError::entry(USERS, e))?;
        }
        Ok(there)
    })
}

/// `machat user list --nats URL`: the registered names, sorted.
pub fn list(url: &str, replicas: usize) -> Result<Vec<Listed>, ClusterError> {
    with_bucket(url, replicas, |kv| async move {
        let mut names: Vec<Listed> = load_names(&kv)
            .await?
            .into_iter()
            .map(|r| Listed {
                name: r.name,
                admin: r.admin,
            })
            .collect();
        names.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(names)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_old_and_new_read_alike() {
        let bare = Record::parse(b"$argon2id$v=19$m=19456,t=2,p=1$salt$hash").unwrap();
        assert_eq!(bare.hash, "$argon2id$v=19$m=19456,t=2,p=1$salt$hash");
        assert!(!bare.admin);
        assert!(!Record::parse(br#"{"hash":"$h"}"#).unwrap().admin);
        assert!(
            Record::parse(br#"{"hash":"$h","admin":true}"#)
                .unwrap()
                .admin
        );
        assert_eq!(Record::parse(b"{not json"), None);
        assert_eq!(Record::parse(&[0xff, 0xfe]), None);
        for admin in [false, true] {
            let r = Record {
                hash: "$argon2id$x".into(),
                admin,
            };
            let bytes = r.encode().unwrap();
            assert_eq!(bytes.starts_with(b"$"), !admin, "only an admin's is JSON");
            assert_eq!(Record::parse(&bytes), Some(r));
        }
    }
}
