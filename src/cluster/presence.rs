//! Who is in which room, across the cluster, in a JetStream key-value bucket.
//!
//! A name is claimed with a create-only write of the key `<room hex>.<name hex>`, which fails if
//! anyone holds it: the cluster's one place that decides. The bucket's `max_age` is the TTL, and
//! the node that holds a name rewrites it every third of the TTL, so when a node dies its names
//! free up within the TTL, with nobody having to notice. NATS 2.9 removes expired keys without
//! telling watchers, so each node's view of the bucket (for `/who` and `/rooms`) also drops
//! entries not rewritten within the TTL, and hands them to [`super::departures`], which tells
//! the room they left.
//!
//! A person (a registered name, logged in with its password) claims nothing exclusive: the
//! password guards the name, and the person may be connected on several nodes at once. Each
//! node where the person has connections in a room writes `<room hex>.<name hex>.<node hex>`
//! (a plain write, held and rewritten like a claim as long as one of them is there), so `/who`
//! and `/rooms` see the person wherever it is, a room a node creates learns where the person is
//! already, and a node that dies has its persons' presence lapse like its names. Nodes that do
//! not know these keys skip them (their name part does not parse).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;
use tokio::runtime::Handle;
use tracing::warn;

use super::{hex, unhex, ClusterError, Settings, BUCKET};
use crate::names::ClaimError;

#[derive(Clone)]
pub struct Presence {
    kv: kv::Store,
    node: Arc<str>,
    ttl: Duration,
    /// The names this node holds, by key.
    held: Arc<Mutex<HashMap<String, Claim>>>,
    /// The whole bucket as last seen: key → entry.
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    /// Changes on every (re)connection to NATS: the watch starts over.
    connections: tokio::sync::watch::Receiver<u64>,
}

struct Claim {
    /// The connections that hold it: one for a name, any number of a person's.
    owners: Vec<u64>,
    state: ClaimState,
}

#[derive(Clone, Copy)]
enum ClaimState {
    /// The create is on its way; `release` says the owner gave up meanwhile.
    Claiming {
        release: bool,
    },
    Held {
        revision: u64,
    },
}

struct Seen {
    room: String,
    name: String,
    /// A person's presence on this node (see the module's doc); None for a claimed name.
    person_node: Option<String>,
    at: Instant,
    revision: u64,
    /// The node that wrote it.
    node: String,
    /// The connection to NATS it came through: after a reconnect, what was seen before says
    /// nothing about who lapsed (nobody could write during the outage).
    connection: u64,
}

/// What a node writes as a name's value: who holds it.
#[derive(serde::Deserialize)]
struct Holder {
    node: String,
}

/// A name another node held and stopped rewriting: that node died or lost NATS.
pub struct Lapsed {
    pub room: String,
    pub name: String,
    /// A person's presence that lapsed: the node it was on.
    pub person_node: Option<String>,
    pub key: String,
    pub revision: u64,
    /// How long since it was last written, as this node saw it.
    pub age: Duration,
}

fn key(room: &str, name: &str) -> String {
    format!("{}.{}", hex(room), hex(name))
}

/// A person's presence in a room on a node.
fn person_key(room: &str, name: &str, node: &str) -> String {
    format!("{}.{}.{}", hex(room), hex(name), hex(node))
}

/// (room, name, the node of a person's presence).
fn parse_key(key: &str) -> Option<(String, String, Option<String>)> {
    let (room, rest) = key.split_once('.')?;
    match rest.split_once('.') {
        None => Some((unhex(room)?, unhex(rest)?, None)),
        Some((name, node)) => Some((unhex(room)?, unhex(name)?, Some(unhex(node)?))),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Presence {
    pub async fn open(
        js: &jetstream::Context,
        node: &str,
        settings: &Settings,
        connections: tokio::sync::watch::Receiver<u64>,
    ) -> Result<Presence, ClusterError> {
        let kv = super::open_bucket(js, BUCKET, settings.presence_ttl, settings.replicas).await?;
        Ok(Presence {
            kv,
            node: node.into(),
            ttl: settings.presence_ttl,
            held: Arc::default(),
            seen: Arc::default(),
            connections,
        })
    }

    fn value(&self) -> Bytes {
        Bytes::from(format!("{{\"node\":\"{}\"}}", self.node))
    }

    pub async fn claim(
        &self,
        room: &str,
        name: &str,
        owner: u64,
        person: bool,
    ) -> Result<(), ClaimError> {
        let key = match person {
            true => person_key(room, name, &self.node),
            false => key(room, name),
        };
        {
            let mut held = lock(&self.held);
            if let Some(claim) = held.get_mut(&key) {
                if !person {
                    // Held (or being claimed) by another connection of this node.
                    return Err(ClaimError::Taken);
                }
                // Another of the person's connections here: it holds the presence too (a
                // write on its way that was to be given back no longer is).
                claim.owners.push(owner);
                if let ClaimState::Claiming { release } = &mut claim.state {
                    *release = false;
                }
                return Ok(());
            }
            held.insert(
                key.clone(),
                Claim {
                    owners: vec![owner],
                    state: ClaimState::Claiming { release: false },
                },
            );
        }
        let this = self;
        {
            let created: Result<u64, ClaimError> = match person {
                // Not exclusive: the key is this node's own.
                true => (this.kv.put(&key, this.value()).await)
                    .map_err(|e| ClaimError::Unavailable(e.to_string())),
                false => (this.kv.create(&key, this.value()).await).map_err(|e| {
                    if e.kind() == kv::CreateErrorKind::AlreadyExists {
                        ClaimError::Taken
                    } else {
                        ClaimError::Unavailable(e.to_string())
                    }
                }),
            };
            let mut gave_up = None;
            let result = {
                let mut held = lock(&this.held);
                match created {
                    Ok(revision) => {
                        let released = matches!(
                            held.get(&key).map(|c| c.state),
                            Some(ClaimState::Claiming { release: true })
                        );
                        if released {
                            held.remove(&key);
                            gave_up = Some(revision);
                        } else if let Some(c) = held.get_mut(&key) {
                            c.state = ClaimState::Held { revision };
                        }
                        Ok(())
                    }
                    Err(e) => {
                        held.remove(&key);
                        Err(e)
                    }
                }
            };
            if let Some(revision) = gave_up {
                this.delete(key.clone(), revision).await;
            }
            result
        }
    }

    pub fn release(&self, rt: &Handle, room: &str, name: &str, owner: u64, person: bool) {
        let key = match person {
            true => person_key(room, name, &self.node),
            false => key(room, name),
        };
        let mut held = lock(&self.held);
        let Some(claim) = held.get_mut(&key).filter(|c| c.owners.contains(&owner)) else {
            return;
        };
        claim.owners.retain(|o| *o != owner);
        if !claim.owners.is_empty() {
            return; // the person's other connections here hold it still
        }
        match claim.state {
            ClaimState::Claiming { .. } => claim.state = ClaimState::Claiming { release: true },
            ClaimState::Held { revision } => {
                held.remove(&key);
                drop(held);
                let this = self.clone();
                rt.spawn(async move { this.delete(key, revision).await });
            }
        }
    }

    /// Deletes a key if it is still ours (the revision we wrote): after an outage the key may
    /// have expired and been claimed by someone else.
    async fn delete(&self, key: String, revision: u64) {
        if let Err(e) = self.kv.delete_expect_revision(&key, Some(revision)).await {
            tracing::debug!(key, error = %e, "presence: not deleted");
        }
        lock(&self.seen).remove(&key);
    }

    /// At shutdown: gives back every name this node holds.
    pub async fn release_all(&self) {
        let keys: Vec<(String, u64)> = lock(&self.held)
            .drain()
            .filter_map(|(k, c)| match c.state {
                ClaimState::Held { revision } => Some((k, revision)),
                ClaimState::Claiming { .. } => None,
            })
            .collect();
        let deletes = keys.into_iter().map(|(k, r)| self.delete(k, r));
        futures_util::future::join_all(deletes).await;
    }

    /// Rewrites every name this node holds, every third of the TTL, so they do not expire.
    pub async fn refresh(self) {
        let period = self.ttl / 3;
        loop {
            tokio::time::sleep(period).await;
            let keys: Vec<(String, u64)> = lock(&self.held)
                .iter()
                .filter_map(|(k, c)| match c.state {
                    ClaimState::Held { revision } => Some((k.clone(), revision)),
                    ClaimState::Claiming { .. } => None,
                })
                .collect();
            for chunk in keys.chunks(256) {
                let this = &self;
                let updates = chunk.iter().map(|(key, revision)| async move {
                    let mut result = this.kv.update(key, this.value(), *revision).await;
                    if result.is_err() {
                        // Expired during an outage: take it again if nobody else did.
                        result = this.kv.create(key, this.value()).await.map_err(|e| {
                            kv::UpdateError::with_source(kv::UpdateErrorKind::Other, e)
                        });
                    }
                    (key, result)
                });
                let mut failed = 0;
                let mut last_error = None;
                for (key, result) in futures_util::future::join_all(updates).await {
                    let mut held = lock(&self.held);
                    let Some(claim) = held.get_mut(key) else {
                        continue; // released meanwhile
                    };
                    match result {
                        Ok(revision) => claim.state = ClaimState::Held { revision },
                        Err(e) => {
                            failed += 1;
                            last_error = Some(e);
                        }
                    }
                }
                // One line per round, not one per name, while NATS is away.
                if let Some(e) = last_error {
                    warn!(failed, error = %e, "presence: cannot keep names (retrying)");
                }
            }
        }
    }

    /// Follows the bucket for ever, keeping this node's view of who is where.
    pub async fn watch(self) {
        let (kv, connections) = (self.kv.clone(), self.connections.clone());
        let start = || lock(&self.seen).clear();
        let apply = |entry: kv::Entry| {
            let mut seen = lock(&self.seen);
            match entry.operation {
                Operation::Put => {
                    if let Some((room, name, person_node)) = parse_key(&entry.key) {
                        let node = serde_json::from_slice::<Holder>(&entry.value)
                            .map(|h| h.node)
                            .unwrap_or_default();
                        let seen_now = Seen {
                            room,
                            name,
                            person_node,
                            at: Instant::now(),
                            revision: entry.revision,
                            node,
                            connection: *self.connections.borrow(),
                        };
                        seen.insert(entry.key, seen_now);
                    }
                }
                Operation::Delete | Operation::Purge => {
                    seen.remove(&entry.key);
                }
            }
        };
        super::follow_bucket(kv, connections, "the presence bucket", start, apply).await;
    }

    /// The names other nodes held and have not rewritten within the TTL.
    pub fn lapsed(&self) -> Vec<Lapsed> {
        let connection = *self.connections.borrow();
        let held = lock(&self.held);
        let seen = lock(&self.seen);
        seen.iter()
            .filter(|(key, s)| {
                s.connection == connection
                    && s.node != *self.node
                    && !held.contains_key(*key)
                    && s.at.elapsed() >= self.ttl
            })
            .map(|(key, s)| Lapsed {
                room: s.room.clone(),
                name: s.name.clone(),
                person_node: s.person_node.clone(),
                key: key.clone(),
                revision: s.revision,
                age: s.at.elapsed(),
            })
            .collect()
    }

    /// Drops a lapsed name from this node's view, unless it was written again meanwhile.
    pub fn forget(&self, key: &str, revision: u64) {
        let mut seen = lock(&self.seen);
        if seen.get(key).is_some_and(|s| s.revision == revision) {
            seen.remove(key);
        }
    }

    /// The revision of `key` in the bucket now, if anyone holds it.
    pub async fn holder(&self, key: &str) -> Result<Option<u64>, ClusterError> {
        match self.kv.entry(key).await {
            Ok(Some(e)) if e.operation == Operation::Put => Ok(Some(e.revision)),
            Ok(_) => Ok(None),
            Err(e) => Err(ClusterError::entry(BUCKET, e)),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn live<'a>(&self, seen: &'a HashMap<String, Seen>) -> impl Iterator<Item = &'a Seen> {
        let ttl = self.ttl;
        seen.values().filter(move |s| s.at.elapsed() < ttl)
    }

    pub fn members(&self, room: &str) -> Vec<String> {
        let seen = lock(&self.seen);
        self.live(&seen)
            .filter(|s| s.room == room)
            .map(|s| s.name.clone())
            .collect()
    }

    /// Rooms and how many people are in each: a person present on several nodes counts once.
    pub fn rooms(&self) -> Vec<(String, usize)> {
        let seen = lock(&self.seen);
        let mut rooms: HashMap<&str, std::collections::HashSet<&str>> = HashMap::new();
        for s in self.live(&seen) {
            rooms.entry(&s.room).or_default().insert(&s.name);
        }
        rooms
            .into_iter()
            .map(|(r, names)| (r.to_owned(), names.len()))
            .collect()
    }

    /// The persons present in `room` on other nodes: (name, node).
    pub fn persons(&self, room: &str) -> Vec<(String, String)> {
        let seen = lock(&self.seen);
        self.live(&seen)
            .filter(|s| s.room == room)
            .filter_map(|s| Some((s.name.clone(), s.person_node.clone()?)))
            .filter(|(_, node)| *node != *self.node)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hold_any_room_and_name() {
        for (room, name) in [("devroom", "Mina"), ("a.b", "x.y"), ("é", "*>")] {
            let k = key(room, name);
            assert_eq!(k.matches('.').count(), 1);
            assert_eq!(
                parse_key(&k),
                Some((room.to_owned(), name.to_owned(), None))
            );
            let p = person_key(room, name, "n.1");
            assert_eq!(p.matches('.').count(), 2);
            let node = Some("n.1".to_owned());
            assert_eq!(
                parse_key(&p),
                Some((room.to_owned(), name.to_owned(), node))
            );
        }
        assert_eq!(parse_key("nodot"), None);
        // What a node of before persons made of a person's key: nothing (skipped).
        let p = person_key("r", "Mina", "n");
        let (_, rest) = p.split_once('.').unwrap();
        assert_eq!(unhex(rest), None);
    }
}
