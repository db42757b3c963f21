//! Goodbyes for the members of a node that died.
//!
//! A node that stops cleanly announces its members' leaves itself. One killed with `kill -9`
//! cannot: its names simply stop being rewritten and expire from the presence bucket. Every
//! surviving node notices (see [`super::presence::Presence::lapsed`]) and offers the room a
//! `leave` event for each such name, so the others read `*** Mina left` as they would had
//! Mina's connection dropped on a single server.
//!
//! Two rules keep that exactly once, and never wrong:
//! - Every node offers the same event under the same `Nats-Msg-Id` (the key and the revision of
//!   the lapsed claim), so JetStream keeps one however many nodes offer it.
//! - A name may be claimed again (the member reconnected elsewhere) just as it lapses. The node
//!   reads where the room's events stand *before* checking that nobody holds the name, and
//!   publishes with `Nats-Expected-Last-Subject-Sequence` at that position: a new claim comes
//!   before its join event, so either the check sees the claim, or the join moves the room's
//!   events on and the stream refuses the goodbye. A `left` can never follow the member's
//!   return.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use bytes::Bytes;
use tracing::debug;

use super::presence::Lapsed;
use super::{subject, Cluster, ClusterError};
use crate::bus::{Envelope, Event};

/// How many TTLs a lapsed name is tried for before this node stops caring (NATS unreachable, or
/// the stream refusing the goodbye every time).
const GIVE_UP_AFTER: u32 = 4;

/// Looks for lapsed names every fifth of the TTL, for ever.
pub(super) async fn run(cluster: Arc<Cluster>) {
    let ttl = cluster.presence.ttl();
    let tick = (ttl / 5).clamp(Duration::from_millis(200), Duration::from_secs(2));
    loop {
        tokio::time::sleep(tick).await;
        if !cluster.connected() {
            continue;
        }
        for lapsed in cluster.presence.lapsed() {
            let done = if lapsed.age > ttl * GIVE_UP_AFTER {
                true
            } else {
                match say_goodbye(&cluster, &lapsed).await {
                    Ok(done) => done,
                    Err(e) => {
                        debug!(room = %lapsed.room, name = %lapsed.name, error = %e,
                            "departures: retrying");
                        false
                    }
                }
            };
            if done {
                cluster.presence.forget(&lapsed.key, lapsed.revision);
            }
        }
    }
}

/// Offers the room a `leave` for a lapsed name. True when nothing is left to do: the goodbye is
/// in the stream, or the name is held again. False to try again later (the bucket has not
/// expired the name yet, or the room's events moved on meanwhile).
async fn say_goodbye(cluster: &Cluster, lapsed: &Lapsed) -> Result<bool, ClusterError> {
    let events = subject(&lapsed.room, false);
    // First where the room's events stand (see the module's doc for why first).
    let last = match cluster
        .stream
        .get_last_raw_message_by_subject(&events)
        .await
    {
        Ok(m) => {
            let gone = matches!(
                serde_json::from_slice::<Envelope>(&m.payload).map(|e| e.event),
                Ok(Event::Leave { name, node }) if name == lapsed.name && node == lapsed.person_node
            );
            if gone {
                return Ok(true); // another node said it already
            }
            m.sequence
        }
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => 0,
        Err(e) => {
            return Err(ClusterError::LastEvent {
                subject: events,
                source: e.into(),
            })
        }
    };
    match cluster.presence.holder(&lapsed.key).await? {
        Some(revision) if revision == lapsed.revision => return Ok(false), // not expired yet
        Some(_) => return Ok(true), // claimed again: the member is back
        None => {}
    }
    // A person's presence on the dead node goes as that node's leave: the person may be in
    // the room on other nodes still, and the rooms tell (see `Room::deliver`).
    let envelope = Envelope::new(Event::Leave {
        name: lapsed.name.clone(),
        node: lapsed.person_node.clone(),
    });
    let payload = serde_json::to_vec(&envelope).map_err(ClusterError::Encode)?;
    let publish = PublishMessage::build()
        .payload(Bytes::from(payload))
        .message_id(format!("gone-{}-{}", lapsed.key, lapsed.revision))
        .expected_last_subject_sequence(last);
    let failed = |e: async_nats::Error| ClusterError::Publish {
        subject: events.clone(),
        source: e,
    };
    let ack = cluster
        .js
        .send_publish(events.clone(), publish)
        .await
        .map_err(|e| failed(e.into()))?;
    match ack.await {
        Ok(_) => Ok(true),
        // Most likely the expected sequence: the room's events moved on. Look again.
        Err(e) => Err(failed(e.into())),
    }
}
