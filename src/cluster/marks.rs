//! Marks in cluster mode ([`crate::marks`]): the key-value bucket `machat-marks` (key: `p` and
//! the person's registered name in hex; value: JSON `{"marks":[...]}`), so a person's rooms,
//! read positions and levels are the same on every node.
//!
//! A change is written as read, edit, write-if-unchanged (the entry's revision), retried when
//! another node wrote in between: a person reading on a phone on one node and opening a
//! conversation on another both count. Every node follows the bucket and pushes the
//! difference to its own sessions of the person whose record changed (only persons with a
//! session on the node are looked at).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;

use super::{hex, open_bucket, unhex, ClusterError};
use crate::hub::Hub;
use crate::marks::{apply_all, Backend, Book, Edit, Mark, MarksError};

pub const MARKS: &str = "machat-marks";

/// How often a write is tried again when other nodes keep changing the same record.
const TRIES: usize = 20;
/// How long one read or write may take before the keeper's thread goes on.
const WAIT: Duration = Duration::from_secs(10);

pub(super) async fn open(
    js: &async_nats::jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    open_bucket(js, MARKS, Duration::ZERO, replicas).await
}

fn key_of(person: &str) -> String {
    format!("p{}", hex(person))
}

fn person_of(key: &str) -> Option<String> {
    unhex(key.strip_prefix('p')?)
}

fn failed(e: impl std::fmt::Display) -> MarksError {
    MarksError::Cluster(e.to_string())
}

/// The bucket as the marks' [`Backend`]: each call runs on the cluster's runtime, and the
/// keeper's thread waits for it.
pub struct ClusterMarks {
    kv: kv::Store,
    runtime: tokio::runtime::Handle,
}

impl ClusterMarks {
    pub(super) fn new(kv: kv::Store, runtime: tokio::runtime::Handle) -> Self {
        ClusterMarks { kv, runtime }
    }

    fn run<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, MarksError>> + Send + 'static,
    ) -> Result<T, MarksError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.runtime.spawn(async move {
            let _ = tx.send(tokio::time::timeout(WAIT, work).await);
        });
        match rx.recv_timeout(WAIT + Duration::from_secs(1)) {
            Ok(Ok(answer)) => answer,
            _ => Err(failed("no answer in time")),
        }
    }
}

impl Backend for ClusterMarks {
    fn read(&mut self, person: &str) -> Result<Vec<Mark>, MarksError> {
        let (kv, key, person) = (self.kv.clone(), key_of(person), person.to_owned());
        self.run(async move {
            let entry = kv.entry(&key).await.map_err(failed)?;
            Ok(match entry {
                Some(e) if e.operation == Operation::Put => Book::parse(&person, &e.value).marks,
                _ => Vec::new(),
            })
        })
    }

    fn write(&mut self, person: &str, edits: &[Edit]) -> Result<u64, MarksError> {
        let (kv, key, person) = (self.kv.clone(), key_of(person), person.to_owned());
        let edits = edits.to_vec();
        self.run(async move {
            for _ in 0..TRIES {
                let entry = kv.entry(&key).await.map_err(failed)?;
                let (mut book, revision) = match entry {
                    Some(e) if e.operation == Operation::Put => {
                        (Book::parse(&person, &e.value), Some(e.revision))
                    }
                    Some(e) => (Book::default(), Some(e.revision)),
                    None => (Book::default(), None),
                };
                let before = book.marks.clone();
                apply_all(&mut book.marks, &edits);
                if book.marks == before {
                    // Nothing to write: what is stored (at this revision) holds the edits.
                    return Ok(revision.unwrap_or(0));
                }
                let value = Bytes::from(book.to_json());
                let written = match revision {
                    Some(rev) => kv.update(&key, value, rev).await.ok(),
                    None => kv.create(&key, value).await.ok(),
                };
                if let Some(revision) = written {
                    return Ok(revision);
                }
                // Another node wrote first: edit what it wrote.
            }
            Err(failed(format!("{person}'s record kept changing")))
        })
    }
}

/// Follows the bucket for ever: each record that changes, of a person with a session here,
/// is handed to the hub's marks, which push the difference to that person's sessions.
pub(super) async fn follow(
    kv: kv::Store,
    hub: Arc<Hub>,
    connections: tokio::sync::watch::Receiver<u64>,
) {
    let apply = |entry: kv::Entry| {
        let Some(person) = person_of(&entry.key) else {
            return;
        };
        if !hub.marks.is_here(&person) {
            return;
        }
        let marks = match entry.operation {
            Operation::Put => Book::parse(&person, &entry.value).marks,
            Operation::Delete | Operation::Purge => Vec::new(),
        };
        hub.marks
            .stored(&person, marks, entry.revision, &|room| hub.last_id(room));
    };
    super::follow_bucket(kv, connections, "the marks", || {}, apply).await;
}
