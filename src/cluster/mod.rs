//! Cluster mode (`--nats URL`): rooms that span machat nodes, on NATS JetStream.
//!
//! We do not replicate anything ourselves: JetStream is the log, and every node reads it.
//! - Every room event (message, action, join, leave, rename) is published to one stream, on the
//!   subject `machat.room.<room in hex>.m` (messages and actions, the history) or `.e` (the
//!   rest). The stream's sequence is the order and the message ids: one order per room, the same
//!   on every node.
//! - Each node reads the whole stream from where it started, with one ordered consumer (the
//!   feed), and appends each event to its local room of that name, if it has one. A room that a
//!   node creates later starts its history where the feed is, so nothing is both replayed and
//!   delivered live. Every node sees every room's traffic: simple, and cheap next to fanning it
//!   out to members (see docs/CLUSTER.md for the limits of that choice).
//! - History and resume are queries on the stream, so any node answers them for any room.
//! - Names are claimed in a key-value bucket with create-only writes; the bucket's TTL frees the
//!   names of a node that died (see `presence`), and the other nodes then tell its rooms that
//!   those members left (see `departures`).
//!
//! All NATS work runs on a thread of its own (`machat-cluster`), so the chat runtimes never wait
//! on the network: they hand events over through a channel and get answers through oneshots.

mod departures;
mod error;
mod history;
pub mod logins;
mod marks;
mod presence;
mod rules;
pub mod users;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

use crate::bus::{Envelope, Outbound, PrivateNote};
use crate::hub::{Delivery, Hub};
use crate::log_gate::LogGate;
use crate::names::{ClaimError, Names, PendingClaim};
use crate::protocol::RoomEvent;
use crate::refusal::Refusal;
use crate::sequencer::{Placed, Refuse, Sequencer};
use crate::settings::{ClusterSettings, Retention};
use crate::store::Store;

pub use error::ClusterError;
pub use history::ClusterStore;

/// The stream that holds every room's events.
pub const STREAM: &str = "MACHAT";
/// The key-value bucket of claimed names.
pub const BUCKET: &str = "machat-presence";
const SUBJECTS: &str = "machat.room.>";

/// How long a message that was sent but not confirmed is retried (with the same message id, so
/// JetStream keeps one copy) before its sender is told it failed.
const RETRY_FOR: Duration = Duration::from_secs(10);
/// The first pause between two rounds of retries.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Events waiting to be published; beyond this a sender is told the cluster is busy.
const QUEUE: usize = 65_536;
/// Events the feed hands the rooms at once, at most (what the stream has ready).
const FEED_BATCH: usize = 256;
/// Events published and not yet confirmed (or being retried), at most.
const IN_FLIGHT: usize = 4_096;
/// Payload bytes published and not yet confirmed (or being retried), at most.
const IN_FLIGHT_BYTES: usize = 8 << 20;

/// A node's connection to the cluster. Cheap to share.
pub struct Cluster {
    /// This node's name in the cluster (random per start), in presence entries and message ids.
    node: String,
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    presence: presence::Presence,
    /// The stream sequence up to which this node has delivered every event to its rooms.
    seen: Arc<AtomicU64>,
    /// The cluster thread's runtime, where every NATS call runs.
    runtime: tokio::runtime::Handle,
    outgoing: mpsc::Sender<Outgoing>,
    /// Events handed over and not yet confirmed or refused (shutdown waits for them).
    unsettled: AtomicUsize,
    next_msg: AtomicU64,
    /// The hub to deliver to, set once the server has built it.
    hub: OnceLock<Arc<Hub>>,
    /// Changes on every (re)connection to NATS.
    connections: tokio::sync::watch::Receiver<u64>,
    users_kv: jetstream::kv::Store,
    /// The cluster's registered names, kept up to date from `users_kv`.
    registered: users::Registered,
    /// The moderation records (see [`rules`]), and what they were at start.
    rules_kv: jetstream::kv::Store,
    rules_loaded: std::sync::Mutex<Vec<(String, crate::moderation::record::RoomRecord)>>,
    /// The session tokens (see [`logins`]).
    logins_kv: jetstream::kv::Store,
    /// The persons' marks (see [`marks`]).
    marks_kv: jetstream::kv::Store,
}

/// An event on its way to the stream.
struct Outgoing {
    subject: async_nats::Subject,
    payload: Bytes,
    /// `Nats-Msg-Id`: a retry of the same event is stored once.
    msg_id: String,
    /// Who to tell if it cannot be published (a message's sender).
    sender: Option<Refuse>,
}

/// An event published and not yet settled, with its place in the in-flight bounds (given
/// back when it is dropped: confirmed, or refused).
struct Held {
    o: Outgoing,
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

/// The subject of a room's events: the room's name in hex, since a name may hold any character
/// and a subject may not.
pub fn subject(room: &str, message: bool) -> String {
    let mut s = String::with_capacity(16 + room.len() * 2);
    s.push_str("machat.room.");
    push_hex(&mut s, room);
    s.push_str(if message { ".m" } else { ".e" });
    s
}

fn push_hex(s: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in text.bytes() {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
}

fn hex(text: &str) -> String {
    let mut s = String::with_capacity(text.len() * 2);
    push_hex(&mut s, text);
    s
}

fn unhex(hex: &str) -> Option<String> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Private messages between nodes: core NATS, not the stream (they are never stored).
const PRIVATE: &str = "machat.private";

/// The room a private note's subject belongs to.
fn private_room_of(subject: &str) -> Option<String> {
    unhex(subject.strip_prefix("machat.private.")?)
}

/// The room a subject belongs to.
fn room_of(subject: &str) -> Option<String> {
    let rest = subject.strip_prefix("machat.room.")?;
    let (room, _kind) = rest.rsplit_once('.')?;
    unhex(room)
}

impl Cluster {
    /// Connects to NATS, creates the stream and the bucket if they are missing, and starts the
    /// cluster thread. An unreachable NATS stops the start, with the URL and the reason.
    ///
    /// `retention` is the history's: in cluster mode history lives in the stream, so it bounds
    /// the stream.
    pub async fn start(
        cluster: &ClusterSettings,
        retention: &Retention,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let url = cluster.url.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let settings = Settings::new(cluster, retention);
        std::thread::Builder::new()
            .name("machat-cluster".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(ClusterError::Runtime(e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let (outgoing, queue) = mpsc::channel(QUEUE);
                    match connect(&url, &settings, outgoing).await {
                        Ok(cluster) => {
                            if tx.send(Ok(cluster.clone())).is_ok() {
                                cluster.run(queue).await;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(ClusterError::Unusable {
                                at: redact_url(&url),
                                source: Box::new(e),
                            }));
                        }
                    }
                });
            })
            .map_err(ClusterError::Thread)?;
        rx.await.map_err(|_| ClusterError::Stopped)?
    }

    /// The history store: queries on the stream.
    pub fn store(self: &Arc<Self>) -> Arc<dyn Store> {
        Arc::new(ClusterStore::new(self.clone()))
    }

    /// Starts delivering the stream's events to the hub's rooms.
    pub fn attach(&self, hub: Arc<Hub>) {
        // The watch replays the bucket's current state first: started here, once the hub is
        // there to hand it to.
        self.runtime.spawn(rules::follow(
            self.rules_kv.clone(),
            hub.clone(),
            self.connections.clone(),
        ));
        self.runtime.spawn(marks::follow(
            self.marks_kv.clone(),
            hub.clone(),
            self.connections.clone(),
        ));
        let _ = self.hub.set(hub);
    }

    /// Where moderation records are kept in the cluster (see [`rules`]).
    pub fn rules_keeper(&self) -> Arc<dyn crate::moderation::keep::Keeper> {
        let loaded =
            std::mem::take(&mut *self.rules_loaded.lock().unwrap_or_else(|e| e.into_inner()));
        Arc::new(rules::ClusterKeeper::new(
            self.rules_kv.clone(),
            self.runtime.clone(),
            loaded,
        ))
    }

    /// Where session tokens are kept in the cluster (see [`logins`]).
    pub fn logins_keeper(&self) -> logins::ClusterLogins {
        logins::ClusterLogins::new(self.logins_kv.clone(), self.runtime.clone())
    }

    /// Where the persons' marks are kept in the cluster (see [`marks`]).
    pub fn marks_backend(&self) -> Box<dyn crate::marks::Backend> {
        Box::new(marks::ClusterMarks::new(
            self.marks_kv.clone(),
            self.runtime.clone(),
        ))
    }

    /// The registered names of the whole cluster (see [`users`]).
    pub fn registered(&self) -> users::Registered {
        self.registered.clone()
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Publishes what the rooms hand over, in order, and never loses one silently: an event
    /// that cannot be sent is refused to its sender at once; one sent but not confirmed is
    /// retried (with the same message id) and refused if it still is not after `RETRY_FOR`.
    ///
    /// Publishing does not wait for the acks: they are awaited by [`Cluster::confirm`], in
    /// order, while more events go out, so that several batches are in flight at once (at
    /// most [`IN_FLIGHT`] events and [`IN_FLIGHT_BYTES`] of payload; then this loop waits for
    /// acks, the rooms' queue fills, and past [`QUEUE`] a sender is refused). Waiting for each
    /// batch's acks before sending the next capped a node at one batch per round trip to NATS.
    async fn run(self: Arc<Self>, mut queue: mpsc::Receiver<Outgoing>) {
        self.runtime.spawn(self.clone().feed());
        self.runtime.spawn(self.clone().privately());
        self.runtime.spawn(self.presence.clone().watch());
        self.runtime.spawn(self.presence.clone().refresh());
        self.runtime.spawn(departures::run(self.clone()));
        self.runtime.spawn(users::follow(
            self.users_kv.clone(),
            self.registered.clone(),
            self.connections.clone(),
        ));
        let events = Arc::new(Semaphore::new(IN_FLIGHT));
        let bytes = Arc::new(Semaphore::new(IN_FLIGHT_BYTES));
        let (failed_tx, failed) = mpsc::unbounded_channel();
        let (sent_tx, sent) = mpsc::unbounded_channel();
        self.runtime
            .spawn(self.clone().confirm(sent, failed_tx.clone()));
        self.runtime.spawn(self.clone().retry(failed));
        let mut batch = Vec::with_capacity(256);
        while queue.recv_many(&mut batch, 256).await > 0 {
            if !self.connected() {
                let settled = batch.len();
                for o in batch.drain(..) {
                    refuse(o, Refusal::ClusterNotSent);
                }
                self.unsettled.fetch_sub(settled, Ordering::AcqRel);
                continue;
            }
            for o in batch.drain(..) {
                // Neither semaphore is ever closed.
                let Ok(event) = events.clone().acquire_owned().await else {
                    return;
                };
                let cost = o.payload.len().clamp(1, IN_FLIGHT_BYTES) as u32;
                let Ok(bytes) = bytes.clone().acquire_many_owned(cost).await else {
                    return;
                };
                let held = Held {
                    o,
                    _permits: (event, bytes),
                };
                let ack = self
                    .send(&held.o.subject, &held.o.payload, &held.o.msg_id)
                    .await;
                // Both receivers live as long as the runtime; were one gone, the sender is
                // told rather than left waiting.
                let unheard = match ack {
                    Some(ack) => sent_tx.send((held, ack)).err().map(|e| e.0 .0),
                    None => failed_tx.send(held).err().map(|e| e.0),
                };
                if let Some(held) = unheard {
                    refuse(held.o, Refusal::ClusterNotSent);
                    self.unsettled.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }

    /// Awaits the acks of what [`Cluster::run`] published, in the order it was sent (acks
    /// come back in that order, so each is there or nearly by the time it is looked at); an
    /// event not confirmed goes to [`Cluster::retry`], the others are settled.
    async fn confirm(
        self: Arc<Self>,
        mut sent: mpsc::UnboundedReceiver<(Held, jetstream::context::PublishAckFuture)>,
        failed: mpsc::UnboundedSender<Held>,
    ) {
        while let Some((held, ack)) = sent.recv().await {
            if ack.await.is_ok() {
                self.unsettled.fetch_sub(1, Ordering::AcqRel);
            } else if let Err(e) = failed.send(held) {
                // The retrier lives as long as the runtime; were it gone, the sender is told.
                refuse(e.0.o, Refusal::ClusterUnconfirmed);
                self.unsettled.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Sends again, with the same message ids, what was not sent or not confirmed, all of it
    /// at once each round (only while NATS is connected; rounds 50 ms apart, twice as far each
    /// time nothing was confirmed, up to 1 s), until it is confirmed or, `RETRY_FOR` after its
    /// first failure, refused to its sender.
    async fn retry(self: Arc<Self>, mut failed: mpsc::UnboundedReceiver<Held>) {
        let mut waiting: Vec<(Held, Instant)> = Vec::new();
        let mut pause = RETRY_PAUSE;
        loop {
            if waiting.is_empty() {
                match failed.recv().await {
                    Some(held) => waiting.push((held, Instant::now() + RETRY_FOR)),
                    None => return,
                }
            }
            while let Ok(held) = failed.try_recv() {
                waiting.push((held, Instant::now() + RETRY_FOR));
            }
            let now = Instant::now();
            let (late, rest): (Vec<_>, Vec<_>) = waiting.drain(..).partition(|(_, d)| *d <= now);
            waiting = rest;
            for (held, _) in late {
                static UNCONFIRMED: LogGate = LogGate::new();
                if let Some(held_back) = UNCONFIRMED.admit() {
                    let subject = &held.o.subject;
                    warn!(%subject, held_back, "event not confirmed by the cluster: told its sender");
                }
                refuse(held.o, Refusal::ClusterUnconfirmed);
                self.unsettled.fetch_sub(1, Ordering::AcqRel);
            }
            if waiting.is_empty() {
                continue;
            }
            let mut confirmed_any = false;
            if self.connected() {
                let mut acks = Vec::with_capacity(waiting.len());
                for (held, deadline) in waiting.drain(..) {
                    let ack = self
                        .send(&held.o.subject, &held.o.payload, &held.o.msg_id)
                        .await;
                    acks.push((held, deadline, ack));
                }
                for (held, deadline, ack) in acks {
                    let confirmed = match ack {
                        Some(ack) => matches!(
                            tokio::time::timeout(Duration::from_secs(2), ack).await,
                            Ok(Ok(_))
                        ),
                        None => false,
                    };
                    if confirmed {
                        confirmed_any = true;
                        self.unsettled.fetch_sub(1, Ordering::AcqRel);
                    } else {
                        waiting.push((held, deadline));
                    }
                }
            }
            pause = match confirmed_any {
                true => RETRY_PAUSE,
                false => (pause * 2).min(Duration::from_secs(1)),
            };
            if !waiting.is_empty() {
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// Publishes an event; its ack to await, or `None` if it could not be sent. Takes the
    /// parts it sends, not the `Outgoing` (whose `Refuse` may not be shared across threads).
    async fn send(
        &self,
        subject: &async_nats::Subject,
        payload: &Bytes,
        msg_id: &str,
    ) -> Option<jetstream::context::PublishAckFuture> {
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .message_id(msg_id);
        static CANNOT: LogGate = LogGate::new();
        self.js
            .send_publish(subject.clone(), publish)
            .await
            .inspect_err(|e| {
                if let Some(held_back) = CANNOT.admit() {
                    warn!(error = %e, held_back, "cannot publish to the cluster");
                }
            })
            .ok()
    }

    /// Reads the stream from where this node started, for ever, and hands each event to the
    /// hub. The ordered consumer restarts itself after a gap or a reconnect; if it fails for
    /// good, a new one starts where the last left off.
    async fn feed(self: Arc<Self>) {
        let hub = loop {
            if let Some(hub) = self.hub.get() {
                break hub.clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let mut rooms = RoomNames::default();
        loop {
            let from = self.seen.load(Ordering::Acquire) + 1;
            let config = consumer::pull::OrderedConfig {
                filter_subject: SUBJECTS.into(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ..Default::default()
            };
            let messages = match self.stream.create_consumer(config).await {
                Ok(c) => c
                    .messages()
                    .await
                    .map_err(|e| ClusterError::stream(STREAM, e)),
                Err(e) => Err(ClusterError::stream(STREAM, e)),
            };
            let messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    warn!(error = %e, "cannot read the cluster's stream; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            // Whatever the stream has ready, up to FEED_BATCH events, is delivered at once.
            let mut messages = messages.ready_chunks(FEED_BATCH);
            let mut connections = self.connections.clone();
            connections.mark_unchanged();
            let mut batch = Vec::with_capacity(FEED_BATCH);
            loop {
                let chunk = tokio::select! {
                    m = messages.next() => m,
                    // NATS came back (maybe a new server, maybe restarted): start over now.
                    _ = connections.changed() => break,
                };
                let Some(chunk) = chunk else { break };
                let mut failed = false;
                for message in chunk {
                    let message = match message {
                        Ok(m) => m,
                        Err(e) => {
                            warn!(error = %e, "reading the cluster's stream failed; resuming");
                            failed = true;
                            break;
                        }
                    };
                    if let Some(d) = self.read_event(&message, &mut rooms) {
                        batch.push(d);
                    }
                }
                hub.deliver_batch(&batch, &self.seen);
                batch.clear();
                if failed {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Cluster {
    /// What the feed makes of one message of the stream: a delivery (`None` for one this node
    /// has delivered already, before its consumer restarted). Not a machat event: delivered as
    /// nothing, so that it counts as seen.
    fn read_event(&self, message: &jetstream::Message, rooms: &mut RoomNames) -> Option<Delivery> {
        let seq = message.info().ok()?.stream_sequence;
        if seq <= self.seen.load(Ordering::Acquire) {
            return None; // already delivered, before a restart of the consumer
        }
        let room = rooms.of(&message.subject);
        let envelope = serde_json::from_slice::<Envelope>(&message.payload);
        let (room, envelope) = match (room, envelope) {
            (Some(room), Ok(envelope)) if envelope.is_clean() => (room, Some(envelope)),
            _ => {
                warn!(subject = %message.subject, seq, "not a machat event: skipped");
                (Arc::from(""), None)
            }
        };
        let ours = envelope
            .as_ref()
            .is_some_and(|e| e.person_node() == Some(self.node.as_str()));
        Some(Delivery {
            room,
            seq,
            envelope,
            ours,
        })
    }
}

/// The feed's names of rooms by subject: a room's name is decoded from its subject once, not
/// per event, and every event of the room shares one `Arc`. Forgotten all at once when it
/// holds [`ROOM_NAMES`] (a node that sees that many rooms decodes again).
#[derive(Default)]
struct RoomNames(std::collections::HashMap<String, Arc<str>>);

const ROOM_NAMES: usize = 4_096;

impl RoomNames {
    fn of(&mut self, subject: &async_nats::Subject) -> Option<Arc<str>> {
        if let Some(room) = self.0.get(subject.as_str()) {
            return Some(room.clone());
        }
        let room: Arc<str> = room_of(subject.as_str())?.into();
        if self.0.len() >= ROOM_NAMES {
            self.0.clear();
        }
        self.0.insert(subject.as_str().to_owned(), room.clone());
        Some(room)
    }
}

impl Cluster {
    /// Hands the other nodes' private messages to this node's rooms, for as long as the node
    /// runs (the client resubscribes by itself after a reconnect).
    async fn privately(self: Arc<Self>) {
        let hub = loop {
            if let Some(hub) = self.hub.get() {
                break hub.clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        loop {
            let mut notes = match self.client.subscribe(format!("{PRIVATE}.>")).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot receive private messages from other nodes; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            while let Some(message) = notes.next().await {
                let room = private_room_of(message.subject.as_str());
                let note = serde_json::from_slice::<PrivateNote>(&message.payload);
                match (room, note) {
                    (Some(room), Ok(note)) if note.is_clean() => {
                        if note.node != self.node {
                            hub.deliver_private(&room, &note);
                        }
                    }
                    _ => warn!(subject = %message.subject, "not a machat private message: skipped"),
                }
            }
        }
    }
}

/// Waits (briefly) until this node's feed has delivered everything the stream held when asked,
/// so a room created now starts its history after what its member already saw elsewhere.
async fn catch_up(js: &jetstream::Context, seen: &AtomicU64) {
    {
        let last = match js.get_stream(STREAM).await {
            Ok(stream) => stream.cached_info().state.last_sequence,
            Err(e) => {
                warn!(error = %e, "cannot read the stream's position");
                return;
            }
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        while seen.load(Ordering::Acquire) < last && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Cluster {
    /// At shutdown: waits (briefly) until what the rooms handed over is published (the
    /// goodbyes of this node's members among it), then gives back every name this node holds.
    pub fn close(&self) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.unsettled.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let presence = self.presence.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        self.runtime.spawn(async move {
            presence.release_all().await;
            let _ = tx.send(());
        });
        let _ = rx.recv_timeout(Duration::from_secs(2));
    }
}

fn refuse(o: Outgoing, why: Refusal) {
    if let Some(tell) = o.sender {
        tell(&why.to_string());
    }
}

/// What the cluster's thread takes along: its own settings and the history's bounds.
#[derive(Clone)]
struct Settings {
    history_max: u64,
    history_max_age: Option<Duration>,
    history_max_bytes: u64,
    replicas: usize,
    presence_ttl: Duration,
}

impl Settings {
    fn new(cluster: &ClusterSettings, retention: &Retention) -> Self {
        Settings {
            history_max: retention.max_messages,
            history_max_age: retention.max_age,
            history_max_bytes: retention.max_total_bytes,
            replicas: cluster.replicas,
            presence_ttl: cluster.presence_ttl,
        }
    }
}

async fn connect(
    url: &str,
    settings: &Settings,
    outgoing: mpsc::Sender<Outgoing>,
) -> Result<Arc<Cluster>, ClusterError> {
    let node = format!("{:016x}", random_u64());
    let servers = parse_servers(url)?;
    // Counts connections to NATS, so the feed and the presence watcher start over at once
    // after a reconnect instead of waiting for their consumers to miss heartbeats.
    let (connections_tx, connections) = tokio::sync::watch::channel(0u64);
    let connections_tx = Arc::new(connections_tx);
    let client = with_credentials(async_nats::ConnectOptions::new(), &servers)
        .name(format!("machat {node}"))
        .connection_timeout(Duration::from_secs(5))
        // Back soon after NATS is: the default waits up to 8 s between attempts.
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis(50 * (attempt as u64).min(40)).max(Duration::from_millis(50))
        })
        .event_callback(move |event| {
            let connections = connections_tx.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        info!("cluster: connected to NATS");
                        connections.send_modify(|n| *n += 1);
                    }
                    async_nats::Event::Disconnected => {
                        warn!("cluster: lost NATS, reconnecting")
                    }
                    other => info!(event = %other, "cluster"),
                }
            }
        })
        .connect(servers)
        .await
        .map_err(ClusterError::Connect)?;
    let js = jetstream::new(client.clone());
    let stream_config = stream::Config {
        name: STREAM.into(),
        subjects: vec![SUBJECTS.into()],
        max_messages_per_subject: i64::try_from(settings.history_max).unwrap_or(i64::MAX),
        max_age: settings.history_max_age.unwrap_or_default(),
        // The stream drops its oldest messages past this (JetStream's discard policy "old").
        max_bytes: match settings.history_max_bytes {
            0 => -1,
            n => i64::try_from(n).unwrap_or(i64::MAX),
        },
        storage: stream::StorageType::File,
        num_replicas: settings.replicas,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    let mut stream = js
        .get_or_create_stream(stream_config)
        .await
        .map_err(|e| ClusterError::stream(STREAM, e))?;
    let last = stream
        .info()
        .await
        .map_err(|e| ClusterError::stream(STREAM, e))?
        .state
        .last_sequence;
    let presence = presence::Presence::open(&js, &node, settings, connections.clone()).await?;
    // Every registered name is known before the first client is let in.
    let users_kv = users::open(&js, settings.replicas).await?;
    let registered = users::load(&users_kv).await?;
    info!(registered = registered.len(), "cluster: registered names");
    let registered = Arc::new(std::sync::Mutex::new(registered));
    // So is every ban.
    let rules_kv = rules::open(&js, settings.replicas).await?;
    let rules_loaded = rules::load(&rules_kv).await?;
    info!(records = rules_loaded.len(), "cluster: moderation records");
    let logins_kv = logins::open(&js, settings.replicas).await?;
    let marks_kv = marks::open(&js, settings.replicas).await?;
    info!(node, stream = STREAM, last, "cluster mode: joined");
    Ok(Arc::new(Cluster {
        node,
        client,
        js,
        stream,
        presence,
        seen: Arc::new(AtomicU64::new(last)),
        runtime: tokio::runtime::Handle::current(),
        outgoing,
        unsettled: AtomicUsize::new(0),
        next_msg: AtomicU64::new(1),
        hub: OnceLock::new(),
        connections,
        users_kv,
        registered,
        rules_kv,
        rules_loaded: std::sync::Mutex::new(rules_loaded),
        logins_kv,
        marks_kv,
    }))
}

/// The servers of a `--nats` value (several separated by commas).
fn parse_servers(url: &str) -> Result<Vec<async_nats::ServerAddr>, ClusterError> {
    url.split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(ClusterError::BadUrl)
}

/// Credentials in the URL (`nats://user:password@host`, `nats://token@host`) are the server's
/// to check; async-nats does not take them from the URL by itself.
fn with_credentials(
    options: async_nats::ConnectOptions,
    servers: &[async_nats::ServerAddr],
) -> async_nats::ConnectOptions {
    let Some(server) = servers.iter().find(|s| s.has_user_pass()) else {
        return options;
    };
    match (server.username(), server.password()) {
        (Some(user), Some(pass)) => options.user_and_password(user.into(), pass.into()),
        (Some(token), None) => options.token(token.into()),
        _ => options,
    }
}

/// Opens a key-value bucket, creating its stream by hand as the key-value spec lays it out:
/// `create_key_value` first asks for the account's info, which async-nats cannot read from a
/// NATS 2.9 server. `max_age` zero keeps entries for ever.
async fn open_bucket(
    js: &jetstream::Context,
    bucket: &'static str,
    max_age: Duration,
    replicas: usize,
) -> Result<jetstream::kv::Store, ClusterError> {
    let failed = |e: async_nats::Error| ClusterError::Bucket { bucket, source: e };
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map_err(|e| failed(e.into()))?;
    js.get_key_value(bucket).await.map_err(|e| failed(e.into()))
}

/// Follows a key-value bucket for ever: `start` each time a watch (re)starts, `apply` for each
/// entry, from the bucket's current state on. The watch starts over at once after a reconnect
/// to NATS (instead of waiting for its consumer to miss heartbeats), and after a failure.
async fn follow_bucket(
    kv: jetstream::kv::Store,
    connections: tokio::sync::watch::Receiver<u64>,
    what: &str,
    mut start: impl FnMut(),
    mut apply: impl FnMut(jetstream::kv::Entry),
) {
    loop {
        match kv.watch_with_history(">").await {
            Ok(mut entries) => {
                start();
                let mut connections = connections.clone();
                connections.mark_unchanged();
                loop {
                    let entry = tokio::select! {
                        e = entries.next() => e,
                        _ = connections.changed() => break,
                    };
                    let Some(Ok(entry)) = entry else { break };
                    apply(entry);
                }
            }
            Err(e) => warn!(error = %e, "cannot follow {what}; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The URL(s) with any user, password or token replaced by `***`, for the logs.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &u[..scheme + 3], &u[at..])
            }
            _ => u.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A random number for the node's name (no crate for this: the standard hasher is seeded
/// randomly per process).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

impl Cluster {
    /// Queues an event for the stream, for [`Cluster::run`] to publish. Never blocks: when the
    /// queue is full (NATS slower than the rooms for long), the event is refused at once.
    /// `node`: a person's join or leave names this node (see [`crate::bus::Event::Join`]).
    fn publish(
        &self,
        room: &str,
        event: &RoomEvent<'_>,
        node: Option<&str>,
        sender: Option<Refuse>,
    ) -> Placed {
        let outbound = Outbound {
            event,
            node,
            ts: crate::protocol::Timestamp::now().0,
        };
        let payload = match outbound.to_vec() {
            Ok(p) => Bytes::from(p),
            Err(e) => {
                // Cannot happen (strings and numbers), but nobody would get it.
                warn!(room, error = %ClusterError::Encode(e), "event refused");
                return Placed::Refused(Refusal::ClusterNotSent);
            }
        };
        let message = matches!(event, RoomEvent::Message { .. } | RoomEvent::Action { .. });
        let n = self.next_msg.fetch_add(1, Ordering::Relaxed);
        let o = Outgoing {
            subject: subject(room, message).into(),
            payload,
            msg_id: msg_id(&self.node, n),
            sender,
        };
        self.unsettled.fetch_add(1, Ordering::AcqRel);
        match self.outgoing.try_send(o) {
            Ok(()) => Placed::Away,
            Err(_) => {
                self.unsettled.fetch_sub(1, Ordering::AcqRel);
                static FULL: LogGate = LogGate::new();
                if let Some(held_back) = FULL.admit() {
                    warn!(room, held_back, "cluster queue full: event refused");
                }
                Placed::Refused(Refusal::ClusterBusy)
            }
        }
    }
}

/// An event's `Nats-Msg-Id`: the node and the event's number on it (one string, no
/// formatting machinery).
fn msg_id(node: &str, n: u64) -> String {
    use std::fmt::Write;
    let mut id = String::with_capacity(node.len() + 21);
    id.push_str(node);
    id.push('-');
    let _ = write!(id, "{n}");
    id
}

/// The stream orders every room's events: an event is published, and every node's room
/// (this one's too) appends it when the feed brings it back. The publish is also the message's
/// append to the history, since the stream is the store ([`ClusterStore`]).
impl Sequencer for Cluster {
    fn message(&self, room: &str, event: &RoomEvent<'_>, sender: &dyn Fn() -> Refuse) -> Placed {
        self.publish(room, event, None, Some(sender()))
    }

    fn announce(&self, room: &str, event: &RoomEvent<'_>, person: bool) -> Placed {
        let node = person.then_some(self.node.as_str());
        self.publish(room, event, node, None)
    }

    /// On core NATS, not the stream (never stored, not ordered with the room's events, as a
    /// private message is never in the history either). Refused while NATS is known to be
    /// unreachable, so that the sender learns it did not go; one lost in the moment NATS goes
    /// away is logged.
    fn private(&self, room: &str, from: &str, to: &str, text: &str) -> Placed {
        if !self.connected() {
            return Placed::Refused(Refusal::ClusterNotSent);
        }
        let note = PrivateNote {
            from: from.to_owned(),
            to: to.to_owned(),
            text: text.to_owned(),
            node: self.node.clone(),
        };
        let Ok(payload) = serde_json::to_vec(&note) else {
            // Cannot happen (strings only), but nobody elsewhere would get it.
            return Placed::Refused(Refusal::ClusterNotSent);
        };
        let subject = format!("{PRIVATE}.{}", hex(room));
        let client = self.client.clone();
        self.runtime.spawn(async move {
            if let Err(e) = client.publish(subject, Bytes::from(payload)).await {
                static LOST: LogGate = LogGate::new();
                if let Some(held_back) = LOST.admit() {
                    warn!(error = %e, held_back, "a private message did not reach the other nodes");
                }
            }
        });
        Placed::Away
    }
}

impl Names for Cluster {
    fn claim(&self, room: &str, name: &str, owner: u64, person: bool) -> PendingClaim {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if !self.connected() {
            let _ = tx.send(Err(ClaimError::Unavailable("not connected to NATS".into())));
            return rx;
        }
        let (presence, js, seen) = (self.presence.clone(), self.js.clone(), self.seen.clone());
        let (room, name, rt) = (room.to_owned(), name.to_owned(), self.runtime.clone());
        self.runtime.spawn(async move {
            let result = presence.claim(&room, &name, owner, person).await;
            if result.is_ok() {
                // A join's replay should hold every message the cluster had when it came.
                catch_up(&js, &seen).await;
            }
            if tx.send(result.clone()).is_err() && result.is_ok() {
                // Nobody waits any more: give the name back.
                presence.release(&rt, &room, &name, owner, person);
            }
        });
        rx
    }

    fn release(&self, room: &str, name: &str, owner: u64, person: bool) {
        self.presence
            .release(&self.runtime, room, name, owner, person);
    }

    fn persons(&self, room: &str) -> Vec<(String, String)> {
        self.presence.persons(room)
    }

    fn members(&self, room: &str) -> Vec<String> {
        self.presence.members(room)
    }

    fn rooms(&self) -> Vec<(String, usize)> {
        self.presence.rooms()
    }

    fn shared(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_carry_any_room_name() {
        for room in ["devroom", "a.b", "*>", "salle à manger"] {
            let s = subject(room, true);
            assert!(s.starts_with("machat.room.") && s.ends_with(".m"));
            assert!(!s["machat.room.".len()..s.len() - 2].contains(['.', '*', '>', ' ']));
            assert_eq!(room_of(&s).as_deref(), Some(room));
            assert_eq!(room_of(&subject(room, false)).as_deref(), Some(room));
        }
        assert_eq!(room_of("machat.room.zz.m"), None);
        assert_eq!(room_of("machat.room.6.m"), None);
        assert_eq!(room_of("other.subject"), None);
        assert_eq!(unhex(&hex("ü")).as_deref(), Some("ü"));
    }

    #[test]
    fn credentials_never_reach_the_log() {
        assert_eq!(
            redact_url("nats://u:secret@h:4222, tls://tok@h2,nats://h3:4222"),
            "nats://***@h:4222, tls://***@h2,nats://h3:4222"
        );
    }
}
