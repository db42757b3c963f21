//! Registered names in cluster mode, the same on every node.
//!
//! On one machine `machat user add` writes the argon2 hash into the data directory. In a
//! cluster that would register a name on one node only, and anyone could take it on another.
//! So with `--nats`, `machat user add|remove|list` work on the key-value bucket `machat-users`
//! (key: the name in hex, value: the PHC hash string), and every node reads the whole bucket
//! before it accepts a client and then follows it, so a registration or a removal counts on
//! every node within moments.

use std::sync::MutexGuard;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;
use futures_util::StreamExt;

use super::{hex, open_bucket, parse_servers, unhex, with_credentials, ClusterError};

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

/// Everything the bucket holds now, by name key.
pub(super) async fn load(kv: &kv::Store) -> Result<crate::auth::ByKey, ClusterError> {
    load_names(kv).await.map(|mut names| {
        names.sort();
        crate::auth::by_key(names)
    })
}

async fn load_names(kv: &kv::Store) -> Result<Vec<(String, String)>, ClusterError> {
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

/// A well-formed entry: a hex name and a UTF-8 hash. Anything else is not a registration.
fn entry(key: &str, value: &[u8]) -> Option<(String, String)> {
    let name = unhex(key)?;
    let hash = std::str::from_utf8(value).ok()?;
    Some((name, hash.to_owned()))
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
                if let Some((name, hash)) = self::entry(&entry.key, &entry.value) {
                    // A look-alike of a name already there (machat user add refuses those)
                    // does not replace it.
                    registered.insert(name, hash);
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
        let kv = open(&js, replicas).await?;
        let result = work(kv).await;
        let _ = client.flush().await;
        result
    })
}

/// `machat user add NAME --nats URL`: registers NAME (or sets its new hash) for the cluster,
/// unless it is too much like another registered name.
pub fn add(url: &str, replicas: usize, name: &str, hash: &str) -> Result<(), ClusterError> {
    let (key, hash) = (hex(name), Bytes::from(hash.to_owned()));
    with_bucket(url, replicas, |kv| async move {
        let names = load_names(&kv).await?.into_iter().map(|(n, _)| n);
        if let Some(like) = crate::auth::lookalike(name, names) {
            return Err(ClusterError::LooksLike {
                name: name.to_owned(),
                like,
            });
        }
        kv.put(key, hash)
            .await
            .map(|_| ())
            .map_err(|e| ClusterError::entry(USERS, e))
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
pub fn list(url: &str, replicas: usize) -> Result<Vec<String>, ClusterError> {
    with_bucket(url, replicas, |kv| async move {
        let mut names: Vec<String> = load_names(&kv).await?.into_iter().map(|(n, _)| n).collect();
        names.sort();
        Ok(names)
    })
}
