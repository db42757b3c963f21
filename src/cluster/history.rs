//! History in cluster mode: the stream is the store. Appending is publishing (the cluster's
//! [`crate::sequencer::Sequencer`] does it, for every event a room hands it), so this side only
//! answers queries, on the subject that holds a room's messages, and any node answers for any
//! room.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::stream::RawMessageErrorKind;
use futures_util::StreamExt;
use tokio::sync::oneshot;

use super::{subject, Cluster};
use crate::bus::{Envelope, Event};
use crate::protocol::Timestamp;
use crate::store::{
    span_of_newest, Deleted, Deliver, MessageRef, Pending, PendingCount, PendingDelete,
    PendingSpan, Span, Store, StoreError, StoredMessage,
};

/// How long one message of a query may take to arrive before the query gives up.
const READ_WAIT: Duration = Duration::from_secs(5);

pub struct ClusterStore {
    cluster: Arc<Cluster>,
}

impl ClusterStore {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        ClusterStore { cluster }
    }
}

/// An ephemeral consumer of one room's messages from `from`, and how many it has to read.
async fn open(
    cluster: &Cluster,
    room: &str,
    from: Option<u64>,
) -> Result<
    (
        async_nats::jetstream::consumer::Consumer<pull::OrderedConfig>,
        u64,
    ),
    StoreError,
> {
    let config = pull::OrderedConfig {
        filter_subject: subject(room, true),
        deliver_policy: match from {
            Some(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
            None => DeliverPolicy::All,
        },
        ..Default::default()
    };
    let consumer = cluster
        .stream
        .create_consumer(config)
        .await
        .map_err(|e| StoreError::Stream(e.into()))?;
    let pending = consumer.cached_info().num_pending;
    Ok((consumer, pending))
}

/// Deletes a query's consumer now rather than when the server notices it is idle.
async fn close(
    cluster: &Cluster,
    consumer: &async_nats::jetstream::consumer::Consumer<pull::OrderedConfig>,
) {
    let name = consumer.cached_info().name.clone();
    let _ = cluster.stream.delete_consumer(&name).await;
}

/// How many of `room`'s messages have sequences from `from` on.
async fn pending_from(cluster: &Cluster, room: &str, from: u64) -> Result<u64, StoreError> {
    let (consumer, pending) = open(cluster, room, Some(from)).await?;
    close(cluster, &consumer).await;
    Ok(pending)
}

/// Where the last `limit` messages up to `until` start, when the room keeps many more than
/// that: JetStream cannot read a subject backwards, but a consumer's pending count says how many
/// messages lie at or after a sequence, so a binary search over sequences finds the start with
/// about two requests per halving, instead of reading the whole retained history. None when
/// reading it all is cheaper.
async fn start_of_last(
    cluster: &Cluster,
    room: &str,
    until: u64,
    limit: usize,
) -> Result<Option<u64>, StoreError> {
    let limit = limit as u64;
    // `until` may be "no bound" (u64::MAX, from the HTTP API): the stream's last sequence bounds
    // both the count of later messages and the search.
    let last = cluster
        .stream
        .get_info()
        .await
        .map_err(|e| StoreError::Stream(e.into()))?
        .state
        .last_sequence;
    let until = until.min(last);
    let later = pending_from(cluster, room, until + 1).await?;
    let count = |pending: u64| pending.saturating_sub(later);
    if count(pending_from(cluster, room, 1).await?) <= limit.saturating_mul(4) + 1_000 {
        return Ok(None);
    }
    // count(lo) >= limit > count(hi): the start is the last sequence that keeps `limit`.
    let (mut lo, mut hi) = (1, until + 1);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if count(pending_from(cluster, room, mid).await?) >= limit {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(Some(lo))
}

/// The messages of `room` after `after` (or from the start) up to `until`: the first `limit`
/// after `after`, or the last `limit` without it.
async fn query(
    cluster: &Cluster,
    room: &str,
    after: Option<u64>,
    until: u64,
    limit: usize,
) -> Result<Vec<StoredMessage>, StoreError> {
    let from = match after {
        Some(a) => Some(a.saturating_add(1)),
        None if limit > 0 => start_of_last(cluster, room, until, limit).await?,
        None => None,
    };
    let (consumer, pending) = open(cluster, room, from).await?;
    let name = consumer.cached_info().name.clone();
    let mut out: VecDeque<StoredMessage> = VecDeque::new();
    if pending > 0 && limit > 0 {
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| StoreError::Stream(e.into()))?;
        loop {
            let message = match tokio::time::timeout(READ_WAIT, messages.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(StoreError::Stream(e.into())),
                Ok(None) | Err(_) => return Err(StoreError::ReadTimedOut),
            };
            let Ok((seq, left)) = message.info().map(|i| (i.stream_sequence, i.pending)) else {
                continue;
            };
            if seq > until {
                break;
            }
            if let Ok(envelope) = serde_json::from_slice::<Envelope>(&message.payload) {
                if let Some(m) = envelope.is_clean().then(|| stored(seq, envelope)).flatten() {
                    out.push_back(m);
                }
            }
            if after.is_some() && out.len() >= limit {
                break;
            }
            if after.is_none() && out.len() > limit {
                out.pop_front();
            }
            if left == 0 {
                break;
            }
        }
    }
    let _ = cluster.stream.delete_consumer(&name).await;
    Ok(out.into())
}

fn stored(id: u64, envelope: Envelope) -> Option<StoredMessage> {
    let (name, text, action) = match envelope.event {
        Event::Message { name, text } => (name, text, false),
        Event::Action { name, text } => (name, text, true),
        _ => return None,
    };
    Some(StoredMessage {
        id,
        name,
        text,
        ts: Timestamp(envelope.ts),
        action,
    })
}

/// How many of `room`'s messages have ids in `after + 1 ..= until`.
/// Logs why a history read failed, with the stream's own words: the client is told only that
/// history is unavailable (see `StoreError::Stream`).
fn logged<T>(room: &str, answer: Result<T, StoreError>) -> Result<T, StoreError> {
    if let Err(e) = &answer {
        // Every reader's every page fails while the stream is away: one line a second.
        static FAILED: crate::log_gate::LogGate = crate::log_gate::LogGate::new();
        if let Some(held_back) = FAILED.admit() {
            tracing::warn!(room, error = ?e, held_back, "history read failed");
        }
    }
    answer
}

async fn count(cluster: &Cluster, room: &str, after: u64, until: u64) -> Result<usize, StoreError> {
    let total = pending_from(cluster, room, after.saturating_add(1)).await?;
    let later = match until.checked_add(1) {
        Some(next) => pending_from(cluster, room, next).await?,
        None => 0,
    };
    Ok(total.saturating_sub(later) as usize)
}

/// Where the last `limit` messages of `room` up to `until` start, and how many there are: by
/// the pending-count search for a long room, else by reading the (short) room's ids once.
async fn last_span(
    cluster: &Cluster,
    room: &str,
    until: u64,
    limit: usize,
) -> Result<Span, StoreError> {
    if limit == 0 {
        return Ok(Span {
            after: until,
            count: 0,
        });
    }
    if let Some(start) = start_of_last(cluster, room, until, limit).await? {
        let after = start.saturating_sub(1);
        let count = count(cluster, room, after, until).await?.min(limit);
        return Ok(Span { after, count });
    }
    let messages = query(cluster, room, None, until, limit).await?;
    let ids = messages.iter().rev().map(|m| m.id);
    Ok(span_of_newest(ids, until, limit))
}

/// A stream request, bounded like every read of a query.
async fn within<T>(request: impl std::future::Future<Output = T>) -> Result<T, StoreError> {
    tokio::time::timeout(READ_WAIT, request)
        .await
        .map_err(|_| StoreError::ReadTimedOut)
}

/// The history message of `room` at sequence `id`, as a query would show it; None if the
/// stream has no message there, or one that is not a (clean) message of that room: another
/// room's, a join or a leave, or a forged line that queries skip anyway.
async fn stored_at(
    cluster: &Cluster,
    room: &str,
    id: u64,
) -> Result<Option<StoredMessage>, StoreError> {
    if id == 0 {
        return Ok(None); // sequences start at 1
    }
    let raw = match within(cluster.stream.get_raw_message(id)).await? {
        Ok(raw) => raw,
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(e) => return Err(StoreError::Stream(e.into())),
    };
    if raw.subject.as_str() != subject(room, true) {
        return Ok(None);
    }
    let Ok(envelope) = serde_json::from_slice::<Envelope>(&raw.payload) else {
        return Ok(None);
    };
    Ok(envelope.is_clean().then(|| stored(id, envelope)).flatten())
}

/// Deletes message `id` of `room` from the stream. The stream keeps its sequence numbers, so
/// the id is never given again; consumers skip the gap, and with them every query, count and
/// span (the pending counts they are built on count only the messages that are there).
async fn delete(
    cluster: &Cluster,
    room: &str,
    id: u64,
    only_by: Option<&str>,
) -> Result<Deleted, StoreError> {
    let Some(message) = stored_at(cluster, room, id).await? else {
        return Ok(Deleted::NotFound);
    };
    if only_by.is_some_and(|name| message.name != name) {
        return Ok(Deleted::NotYours);
    }
    let failed: async_nats::Error = match within(cluster.stream.delete_message(id)).await? {
        Ok(true) => return Ok(Deleted::Done { name: message.name }),
        Ok(false) => "the stream did not delete the message".into(),
        Err(e) => e.into(),
    };
    // Gone meanwhile (another node's delete, or the stream's retention): not ours to report
    // as a failure.
    match stored_at(cluster, room, id).await? {
        None => Ok(Deleted::NotFound),
        Some(_) => Err(StoreError::Stream(failed)),
    }
}

impl Store for ClusterStore {
    /// Where this node's feed is: a room created now has seen nothing after it.
    fn last_id(&self, _room: &str) -> u64 {
        self.cluster.seen.load(Ordering::Acquire)
    }

    /// Never called: a room hands its store only the messages it ordered itself
    /// ([`crate::sequencer::Placed::Local`]), and the cluster's sequencer never answers that,
    /// since its publish to the stream is the append. Were a message handed here anyway, it
    /// would be in no stream: logged as lost rather than dropped without a word.
    fn append(&self, room: &Arc<str>, msg: &MessageRef<'_>, _deliver: Option<Deliver>) {
        tracing::error!(
            room = %room,
            id = msg.id,
            "a message was handed to the cluster's store instead of its stream: not kept"
        );
    }

    fn query(&self, room: &str, after: Option<u64>, until: u64, limit: usize) -> Pending {
        let (tx, rx) = oneshot::channel();
        let cluster = self.cluster.clone();
        let room = room.to_owned();
        self.cluster.runtime.spawn(async move {
            let page = logged(&room, query(&cluster, &room, after, until, limit).await);
            // `History` is the protocol crate's type, its error the text a client is told.
            let _ = tx.send(page.map_err(|e| e.to_string()));
        });
        rx
    }

    fn count(&self, room: &str, after: u64, until: u64) -> PendingCount {
        let (tx, rx) = oneshot::channel();
        let cluster = self.cluster.clone();
        let room = room.to_owned();
        self.cluster.runtime.spawn(async move {
            let _ = tx.send(logged(&room, count(&cluster, &room, after, until).await));
        });
        rx
    }

    fn last_span(&self, room: &str, until: u64, limit: usize) -> PendingSpan {
        let (tx, rx) = oneshot::channel();
        let cluster = self.cluster.clone();
        let room = room.to_owned();
        self.cluster.runtime.spawn(async move {
            let _ = tx.send(logged(
                &room,
                last_span(&cluster, &room, until, limit).await,
            ));
        });
        rx
    }

    fn delete(&self, room: &str, id: u64, only_by: Option<&str>) -> PendingDelete {
        let (tx, rx) = oneshot::channel();
        let cluster = self.cluster.clone();
        let room = room.to_owned();
        let only_by = only_by.map(str::to_owned);
        self.cluster.runtime.spawn(async move {
            let deleted = delete(&cluster, &room, id, only_by.as_deref()).await;
            if let Err(e) = &deleted {
                tracing::warn!(room, id, error = ?e, "history delete failed");
            }
            let _ = tx.send(deleted);
        });
        rx
    }

    fn available(&self) -> bool {
        self.cluster.connected()
    }

    fn close(&self) {
        self.cluster.close();
    }
}

/// With a real `nats-server -js` (as tests/cluster.rs runs it; scripts/test.sh installs it).
#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};

    use super::*;
    use crate::settings::{ClusterSettings, Retention};

    /// A JetStream server on an ephemeral loopback port; killed, and its store removed, when
    /// dropped.
    struct Nats {
        child: Child,
        dir: PathBuf,
        url: String,
    }

    impl Nats {
        fn start() -> Nats {
            let dir =
                std::env::temp_dir().join(format!("machat-history-nats-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
                .into_iter()
                .find(|p| std::path::Path::new(p).exists())
                .unwrap_or("nats-server");
            let mut child = Command::new(bin)
                .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-m", "0", "-sd"])
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start nats-server (apt-get install nats-server)");
            let stderr = child.stderr.take().expect("stderr");
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut port = None;
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some((_, at)) = line.split_once("Listening for client connections on ") {
                        port = at.trim().rsplit(':').next().and_then(|p| p.parse().ok());
                    }
                    if line.contains("Server is ready") {
                        let _ = tx.send(port);
                    }
                }
            });
            let port: u16 = rx
                .recv_timeout(Duration::from_secs(10))
                .ok()
                .flatten()
                .expect("nats-server did not start");
            Nats {
                child,
                dir,
                url: format!("nats://127.0.0.1:{port}"),
            }
        }
    }

    impl Drop for Nats {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A deleted message leaves a gap in the sequence: every read skips it (the short room's
    /// read of its ids, and the long room's search by pending counts alike), and only a
    /// message of that room, by that author if asked, is deleted.
    #[test]
    fn a_deleted_message_is_a_gap_every_read_skips() {
        let nats = Nats::start();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let settings = ClusterSettings {
            url: nats.url.clone(),
            replicas: 1,
            presence_ttl: Duration::from_secs(30),
        };
        let retention = Retention {
            max_messages: 10_000,
            max_age: None,
            max_total_bytes: 0,
        };
        let cluster = rt.block_on(Cluster::start(&settings, &retention)).unwrap();
        let store = cluster.store();
        // Published as the nodes do, acknowledged in order: the sequences, which are the ids.
        let publish = |events: Vec<(&str, bool, Event)>| -> Vec<u64> {
            rt.block_on(async {
                let mut acks = Vec::new();
                for (room, message, event) in events {
                    let payload = serde_json::to_vec(&Envelope::new(event)).unwrap();
                    let ack = cluster.js.publish(subject(room, message), payload.into());
                    acks.push(ack.await.unwrap());
                }
                let mut seqs = Vec::new();
                for ack in acks {
                    seqs.push(ack.await.unwrap().sequence);
                }
                seqs
            })
        };
        let says = |name: &str, text: &str| Event::Message {
            name: name.into(),
            text: text.into(),
        };
        let seqs = publish(vec![
            ("r", true, says("Ann", "one")),
            ("r", true, says("Bob", "two")),
            (
                "r",
                false,
                Event::Join {
                    name: "Ann".into(),
                    node: None,
                },
            ),
            ("other", true, says("Ann", "elsewhere")),
            ("r", true, says("Ann", "five")),
            (
                "r",
                true,
                Event::Action {
                    name: "Ann".into(),
                    text: "waves".into(),
                },
            ),
            ("r", true, says("Ann", "seven")),
        ]);
        let [one, two, join, elsewhere, five, six, seven] = seqs[..] else {
            panic!("{seqs:?}");
        };
        let delete = |room: &str, id: u64, only_by: Option<&str>| {
            store
                .delete(room, id, only_by)
                .blocking_recv()
                .unwrap()
                .unwrap()
        };
        let done = |name: &str| Deleted::Done { name: name.into() };
        for (room, id) in [("r", join), ("r", elsewhere), ("r", 0), ("r", seven + 100)] {
            assert_eq!(delete(room, id, None), Deleted::NotFound, "{room} {id}");
        }
        assert_eq!(delete("r", two, Some("Ann")), Deleted::NotYours);
        assert_eq!(delete("r", five, None), done("Ann"));
        assert_eq!(delete("r", five, None), Deleted::NotFound);
        let ids = |room: &str, after: Option<u64>, limit: usize| -> Vec<u64> {
            let page = store.query(room, after, u64::MAX, limit).blocking_recv();
            page.unwrap().unwrap().iter().map(|m| m.id).collect()
        };
        let count = |room: &str, after: u64| {
            let n = store.count(room, after, u64::MAX).blocking_recv();
            n.unwrap().unwrap()
        };
        let span = |room: &str, limit: usize| {
            let span = store.last_span(room, u64::MAX, limit).blocking_recv();
            span.unwrap().unwrap()
        };
        assert_eq!(ids("r", None, 100), vec![one, two, six, seven]);
        assert_eq!(ids("r", Some(two), 100), vec![six, seven]);
        assert_eq!(count("r", 0), 4);
        assert_eq!(count("r", two), 2);
        let after = two - 1;
        assert_eq!(span("r", 3), Span { after, count: 3 });
        assert_eq!(delete("r", two, Some("Bob")), done("Bob"));
        assert_eq!(delete("r", seven, None), done("Ann"));
        assert_eq!(ids("r", None, 100), vec![one, six]);
        assert_eq!(ids("other", None, 100), vec![elsewhere]);
        // A room long enough for the search by pending counts: gaps among its last ten.
        let long: Vec<(&str, bool, Event)> = (0..1100)
            .map(|i| ("long", true, says("Ann", &format!("m{i}"))))
            .collect();
        let seqs = publish(long);
        for i in [1095, 1098] {
            assert_eq!(delete("long", seqs[i], None), done("Ann"));
        }
        let last: Vec<u64> = (1088..1100)
            .filter(|i| ![1095, 1098].contains(i))
            .map(|i| seqs[i])
            .collect();
        let after = seqs[1088] - 1;
        assert_eq!(span("long", 10), Span { after, count: 10 });
        assert_eq!(count("long", after), 10);
        assert_eq!(ids("long", None, 10), last);
        assert_eq!(ids("long", Some(after), 10), last);
        drop(nats);
    }
}
