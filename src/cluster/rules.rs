//! Moderation records in cluster mode, the same on every node: the key-value bucket
//! `machat-rules` (key: `r` and the room's name in hex, or `server` for the server's own
//! record; value: the record's JSON). A node reads the whole bucket before it accepts a
//! client, then follows it: a ban, a mute or a role given on one node holds on every other as
//! soon as the bucket's watch brings it (milliseconds), and a server ban closes out the
//! connections it covers on every node.
//!
//! A change is written as read, edit, write-if-unchanged (the entry's revision), retried when
//! another node wrote in between: two operators acting on one room at once both count.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;
use futures_util::StreamExt;
use tracing::{error, warn};

use super::{hex, open_bucket, unhex, ClusterError};
use crate::hub::Hub;
use crate::moderation::keep::{Edit, KeepError, Keeper, SERVER};
use crate::moderation::record::RoomRecord;

pub const RULES: &str = "machat-rules";

/// How often a write is tried again when other nodes keep changing the same record.
const TRIES: usize = 20;

pub(super) async fn open(
    js: &async_nats::jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    open_bucket(js, RULES, Duration::ZERO, replicas).await
}

fn key_of(scope: &str) -> String {
    if scope == SERVER {
        "server".into()
    } else {
        format!("r{}", hex(scope))
    }
}

fn scope_of(key: &str) -> Option<String> {
    if key == "server" {
        return Some(SERVER.into());
    }
    unhex(key.strip_prefix('r')?)
}

fn parse(key: &str, value: &[u8]) -> Option<RoomRecord> {
    serde_json::from_slice(value)
        .map_err(|e| warn!(key, "skipping an unreadable moderation record: {e}"))
        .ok()
}

/// Every record the bucket holds now.
pub(super) async fn load(kv: &kv::Store) -> Result<Vec<(String, RoomRecord)>, ClusterError> {
    let mut keys = kv.keys().await.map_err(|e| ClusterError::entry(RULES, e))?;
    let mut out = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| ClusterError::entry(RULES, e))?;
        let value = kv
            .get(&key)
            .await
            .map_err(|e| ClusterError::entry(RULES, e))?;
        if let (Some(scope), Some(value)) = (scope_of(&key), value) {
            if let Some(record) = parse(&key, &value) {
                out.push((scope, record));
            }
        }
    }
    Ok(out)
}

/// The bucket as a [`Keeper`].
pub struct ClusterKeeper {
    kv: kv::Store,
    runtime: tokio::runtime::Handle,
    /// Changes on their way to the bucket (shutdown waits for them).
    unsettled: Arc<std::sync::atomic::AtomicUsize>,
    /// What the bucket held at start (handed over once).
    loaded: Mutex<Vec<(String, RoomRecord)>>,
}

impl ClusterKeeper {
    pub(super) fn new(
        kv: kv::Store,
        runtime: tokio::runtime::Handle,
        loaded: Vec<(String, RoomRecord)>,
    ) -> Self {
        ClusterKeeper {
            kv,
            runtime,
            unsettled: Arc::default(),
            loaded: Mutex::new(loaded),
        }
    }
}

impl Keeper for ClusterKeeper {
    fn load(&self) -> Result<Vec<(String, RoomRecord)>, KeepError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        Ok(std::mem::take(&mut *loaded))
    }

    fn update(&self, scope: &str, edit: Edit) {
        let (kv, key, scope) = (self.kv.clone(), key_of(scope), scope.to_owned());
        let unsettled = self.unsettled.clone();
        unsettled.fetch_add(1, Ordering::AcqRel);
        self.runtime.spawn(async move {
            if let Err(e) = write(&kv, &key, &edit).await {
                error!(room = %scope, error = %e, "a moderation change was not stored in the cluster");
            }
            unsettled.fetch_sub(1, Ordering::AcqRel);
        });
    }

    fn close(&self) {
        let deadline = std::time::Instant::now() + crate::moderation::keep::CLOSE_WAIT;
        while self.unsettled.load(Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

async fn write(kv: &kv::Store, key: &str, edit: &Edit) -> Result<(), ClusterError> {
    for _ in 0..TRIES {
        let entry = kv
            .entry(key)
            .await
            .map_err(|e| ClusterError::entry(RULES, e))?;
        let (mut record, revision) = match entry {
            Some(e) if e.operation == Operation::Put => {
                (parse(key, &e.value).unwrap_or_default(), Some(e.revision))
            }
            Some(e) => (RoomRecord::default(), Some(e.revision)),
            None => (RoomRecord::default(), None),
        };
        edit(&mut record);
        let value = Bytes::from(serde_json::to_vec(&record).map_err(ClusterError::Encode)?);
        let written = match revision {
            Some(rev) => kv
                .update(key, value, rev)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => kv
                .create(key, value)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        match written {
            Ok(()) => return Ok(()),
            // Another node wrote first: read its record and edit that.
            Err(e) => warn!(key, error = %e, "moderation record changed meanwhile; retrying"),
        }
    }
    Err(ClusterError::Contended(RULES))
}

/// Follows the bucket for ever, handing each record to the hub's policy as it is stored; a
/// change of the server's record (a server ban) closes out who it covers on this node.
pub(super) async fn follow(
    kv: kv::Store,
    hub: Arc<Hub>,
    connections: tokio::sync::watch::Receiver<u64>,
) {
    let apply = |entry: kv::Entry| {
        let Some(scope) = scope_of(&entry.key) else {
            return;
        };
        let record = match entry.operation {
            Operation::Put => parse(&entry.key, &entry.value),
            Operation::Delete | Operation::Purge => None,
        };
        hub.policy.replaced(&scope, record);
        if scope == SERVER {
            hub.enforce_server_bans();
        }
    };
    super::follow_bucket(kv, connections, "the moderation records", || {}, apply).await;
}
