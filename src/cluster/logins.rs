//! Session tokens in cluster mode ([`crate::logins`]): the key-value bucket `machat-logins`
//! (key: the token's SHA-256 in hex; value: JSON `{"name":...,"expires":MS}`), so a token
//! issued by one node works on every node. It is read through on every check (one `get`), so
//! a revocation counts everywhere at once; expiry is compared with each node's clock.
//!
//! A new token scans the bucket (logins are rare): it sweeps the expired tokens of every name
//! and drops the oldest of its own name's beyond [`MAX_PER_NAME`] (by the bucket's revision:
//! the order they were written in).

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;

use super::{open_bucket, ClusterError};
use crate::logins::{same_name, Answer, Issued, LoginsError, SharedLogins, MAX_PER_NAME};

/// The bucket of session tokens.
pub const LOGINS: &str = "machat-logins";

pub(super) async fn open(
    js: &async_nats::jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    open_bucket(js, LOGINS, Duration::ZERO, replicas).await
}

/// The bucket, used from the cluster's runtime (where every NATS call runs).
pub struct ClusterLogins {
    kv: kv::Store,
    runtime: tokio::runtime::Handle,
}

fn failed(e: impl std::fmt::Display) -> LoginsError {
    LoginsError::Cluster(format!("the bucket {LOGINS}: {e}"))
}

impl ClusterLogins {
    pub(super) fn new(kv: kv::Store, runtime: tokio::runtime::Handle) -> Self {
        ClusterLogins { kv, runtime }
    }

    async fn run<T, Fut>(&self, work: impl FnOnce(kv::Store) -> Fut) -> Result<T, LoginsError>
    where
        T: Send + 'static,
        Fut: std::future::Future<Output = Result<T, LoginsError>> + Send + 'static,
    {
        let job = work(self.kv.clone());
        self.runtime
            .spawn(async move { tokio::time::timeout(Duration::from_secs(10), job).await })
            .await
            .map_err(|_| LoginsError::Gone)?
            .map_err(|_| LoginsError::Gone)?
    }

    async fn issue(&self, hash: String, issued: Issued, now: u64) -> Result<(), LoginsError> {
        self.run(move |kv| async move {
            let value = serde_json::to_vec(&issued).map_err(failed)?;
            kv.put(&hash, Bytes::from(value)).await.map_err(failed)?;
            let mut own = Vec::new();
            for (key, revision, other) in scan(&kv).await? {
                if other.expires <= now {
                    let _ = kv.purge(&key).await;
                } else if other.name == issued.name {
                    own.push((revision, key));
                }
            }
            if own.len() > MAX_PER_NAME {
                own.sort_unstable();
                for (_, key) in &own[..own.len() - MAX_PER_NAME] {
                    let _ = kv.purge(key).await;
                }
            }
            Ok(())
        })
        .await
    }

    async fn find(&self, hash: String) -> Result<Option<Issued>, LoginsError> {
        self.run(move |kv| async move {
            let value = kv.get(&hash).await.map_err(failed)?;
            Ok(value.and_then(|v| serde_json::from_slice(&v).ok()))
        })
        .await
    }

    async fn revoke(&self, hash: String) -> Result<(), LoginsError> {
        self.run(move |kv| async move {
            if kv.get(&hash).await.map_err(failed)?.is_some() {
                kv.purge(&hash).await.map_err(failed)?;
            }
            Ok(())
        })
        .await
    }
}

impl SharedLogins for ClusterLogins {
    fn issue(&self, hash: String, issued: Issued, now: u64) -> Answer<'_, ()> {
        Box::pin(ClusterLogins::issue(self, hash, issued, now))
    }

    fn find(&self, hash: String) -> Answer<'_, Option<Issued>> {
        Box::pin(ClusterLogins::find(self, hash))
    }

    fn revoke(&self, hash: String) -> Answer<'_, ()> {
        Box::pin(ClusterLogins::revoke(self, hash))
    }
}

/// Every token in the bucket now: its key, revision and record.
async fn scan(kv: &kv::Store) -> Result<Vec<(String, u64, Issued)>, LoginsError> {
    let mut keys = kv.keys().await.map_err(failed)?;
    let mut out = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(failed)?;
        let Some(entry) = kv.entry(&key).await.map_err(failed)? else {
            continue;
        };
        if entry.operation != kv::Operation::Put {
            continue;
        }
        if let Ok(issued) = serde_json::from_slice::<Issued>(&entry.value) {
            out.push((key, entry.revision, issued));
        }
    }
    Ok(out)
}

/// `machat user logout NAME --nats URL` (and `machat user remove`): revokes every token of
/// NAME or a look-alike of it in the cluster; how many there were.
pub fn revoke_name(url: &str, replicas: usize, name: &str) -> Result<usize, ClusterError> {
    let name = name.to_owned();
    super::users::with_kv(url, |js| async move {
        let kv = open(&js, replicas).await?;
        let entry = |e: LoginsError| ClusterError::entry(LOGINS, e);
        let mut revoked = 0;
        for (key, _, issued) in scan(&kv).await.map_err(entry)? {
            if same_name(&issued.name, &name) {
                kv.purge(&key)
                    .await
                    .map_err(|e| ClusterError::entry(LOGINS, e))?;
                revoked += 1;
            }
        }
        Ok(revoked)
    })
}
