//! What every connection shares, whatever its transport: the settings it follows, the hub, the
//! store, the TLS acceptor, connection ids, the shutdown flag, and the runtimes connections
//! move between. The application's context: the transports (`connection`, `web`) and the
//! lifecycle depend on it, and it on none of them.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::auth::Users;
use crate::cluster::Cluster;
use crate::hub::Hub;
use crate::limits::Ticket;
use crate::protocol::Handshake;
use crate::settings::{HubSettings, SessionRules, TransportSettings};
use crate::store::Store;

/// A runtime's inbox, for connections handed over from another thread.
pub type Inbox = mpsc::UnboundedSender<Handoff>;

/// A connection moving to another runtime: accepted ones to spread the load, greeted ones to
/// live with the rest of their room.
pub enum Handoff {
    New {
        stream: std::net::TcpStream,
        addr: SocketAddr,
        ticket: Ticket,
        /// Accepted on the TLS port: the TLS handshake is still to do.
        tls: bool,
    },
    Greeted(Box<Greeted>),
}

/// A connection that sent a valid handshake, on its way to join its room.
pub struct Greeted {
    pub stream: std::net::TcpStream,
    pub rest: Greeting,
}

/// What a greeted connection carries besides its socket.
pub struct Greeting {
    pub addr: SocketAddr,
    pub(crate) ticket: Ticket,
    pub(crate) id: u64,
    pub(crate) hs: Handshake,
    pub(crate) leftover: Vec<u8>,
}

/// What every connection shares.
pub struct Shared {
    /// What the transports follow; a reload (SIGHUP) swaps it, and a connection reads it when
    /// it starts (never per line).
    transport: RwLock<Arc<TransportSettings>>,
    /// Whether the server runs in a cluster (the health check says whether NATS is reached).
    pub clustered: bool,
    pub hub: Arc<Hub>,
    next_id: AtomicU64,
    shutting_down: AtomicBool,
    /// Every runtime's inbox, by index (set once at start-up; empty means one runtime).
    runtimes: OnceLock<Vec<Inbox>>,
    pub store: Arc<dyn Store>,
    /// The TLS side's certificate and key, when `--tls-addr` is given.
    pub tls: Option<TlsAcceptor>,
    /// What every session follows, shared by all of them.
    /// A reload swaps it; a session takes it when it starts.
    rules: RwLock<Arc<SessionRules>>,
    /// Where the web side listens (empty when it is off): a browser that came to a chat port
    /// is told where the page is.
    pub web_addrs: Vec<SocketAddr>,
}

impl Shared {
    /// The context of a server whose transports follow `transport`, rooms `hub` and sessions
    /// `rules`, with its registered names and moderation rules; `cluster` is there in cluster
    /// mode.
    pub fn new(
        transport: TransportSettings,
        hub: HubSettings,
        rules: SessionRules,
        store: Arc<dyn Store>,
        tls: Option<TlsAcceptor>,
        (users, policy, marks): (
            Arc<Users>,
            Arc<crate::moderation::Policy>,
            Arc<crate::marks::Marks>,
        ),
        cluster: Option<Arc<Cluster>>,
    ) -> Self {
        let mut hub = Hub::with_settings(hub, store.clone())
            .with_users(users)
            .with_policy(policy)
            .with_marks(marks);
        if let Some(cluster) = &cluster {
            hub = hub.with_cluster(cluster.clone(), cluster.clone());
        }
        let hub = Arc::new(hub);
        if let Some(cluster) = &cluster {
            // From here on the cluster's events reach this hub's rooms.
            cluster.attach(hub.clone());
        }
        Shared {
            rules: RwLock::new(Arc::new(rules)),
            transport: RwLock::new(Arc::new(transport)),
            clustered: cluster.is_some(),
            hub,
            next_id: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            runtimes: OnceLock::new(),
            store,
            tls,
            web_addrs: Vec::new(),
        }
    }

    /// What a session starting now follows.
    pub fn rules(&self) -> Arc<SessionRules> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// From now on, new sessions follow `rules` (a reload).
    pub fn set_rules(&self, rules: SessionRules) {
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
    }

    /// What the transports follow now.
    pub fn transport(&self) -> Arc<TransportSettings> {
        self.transport
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// From now on, new connections follow `transport` (a reload).
    pub fn set_transport(&self, transport: TransportSettings) {
        *self.transport.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(transport);
    }

    pub fn set_runtimes(&self, inboxes: Vec<Inbox>) {
        let _ = self.runtimes.set(inboxes);
    }

    pub fn runtime_count(&self) -> usize {
        self.runtimes.get().map_or(1, |r| r.len().max(1))
    }

    pub fn hand_over(&self, runtime: usize, handoff: Handoff) {
        if let Some(inbox) = self.runtimes.get().and_then(|r| r.get(runtime)) {
            // Fails only when that runtime stopped at shutdown; the connection then just closes.
            let _ = inbox.send(handoff);
        }
    }

    /// The runtime that serves a room's members. Keeping a room's members on one thread means
    /// a message wakes only tasks of that thread: no cross-thread wake-ups, no contention on
    /// the room's lock. Different rooms spread over the threads.
    pub(crate) fn home_of(&self, room: &str) -> usize {
        let n = self.runtime_count();
        if n == 1 {
            return 0;
        }
        let mut h = std::hash::DefaultHasher::new();
        room.hash(&mut h);
        (h.finish() % n as u64) as usize
    }

    /// Tells every connection in a room to say goodbye (connections still in their handshake
    /// watch the shutdown channel instead).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        // Members within their leave grace go now, as everyone does.
        self.hub.end_graces();
        self.hub.wake_everyone();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}
