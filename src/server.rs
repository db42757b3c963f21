//! The listener: binds, accepts within the connection limits, spawns a task per connection, and
//! shuts everything down on one signal.
//!
//! Accepting is where a server under attack or out of descriptors tends to fall over: a full
//! descriptor table makes `accept` fail at once, forever, so the loop backs off instead of
//! spinning, keeps serving the clients it has, and picks up again when descriptors free up.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::connection::{finish, serve, serve_greeted, serve_tls, set_runtime_index};
use crate::context::{Handoff, Inbox, Shared};
use crate::limits::{raise_fd_limit, Admission, Ticket};
use crate::listen::listen_all;
use crate::log_gate::LogGate;
use crate::metrics::Transport;
use crate::protocol::{Format, Reply};
use crate::proxy::header;
use crate::reload::Live;
use crate::settings::{ProxySettings, Settings};
use crate::web::{Web, WebState};
use metrics_exporter_prometheus::PrometheusHandle;

/// How long shutdown waits for connections to flush their last lines.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(4500);

/// A bound server, not yet accepting.
pub struct Server {
    listeners: Vec<TcpListener>,
    /// The chat protocol over TLS (`--tls-addr`).
    tls_listeners: Vec<TcpListener>,
    ctx: Arc<Shared>,
    admission: Arc<Admission>,
    /// The web side (`--http`), unless it is off.
    web: Option<Web>,
    metrics: Option<PrometheusHandle>,
    /// Whether queued bytes have a bound over all rooms (`--max-queued-total` is not 0).
    budgeted: bool,
    /// What a reload (SIGHUP) changes while running.
    live: Live,
    /// The data dir's lock (none in cluster mode; two if history and names were given two
    /// dirs), let go only after `run` closed the stores.
    _data_lock: Vec<crate::data_lock::DataLock>,
    /// Trusted proxies, and whether they send a PROXY header (`--proxy-protocol`).
    proxy: Arc<ProxySettings>,
}

impl Server {
    /// Binds every address the chat ports' settings name, with their backlog.
    pub async fn bind(settings: Settings) -> io::Result<Server> {
        if settings.proxy.protocol && settings.proxy.trusted.is_empty() {
            return Err(io::Error::other(
                "--proxy-protocol needs --trusted-proxies: the PROXY header is read only from them",
            ));
        }
        let (soft, _) = raise_fd_limit();
        let limits = &settings.limits;
        let max_total = match limits.max_connections {
            0 => (soft.saturating_sub(64) as usize).max(1),
            n => n,
        };
        // Whether the data directory is new: someone who started the server elsewhere sees an
        // empty one, and the log should tell them before they miss their history.
        let data_dir_existed = settings.auth.data_dir.exists();
        let admission = Arc::new(
            Admission::new(max_total, limits.max_per_ip)
                .with_max_waiting(limits.max_handshakes_per_ip),
        );
        let http_admission = Arc::new(Admission::new(max_total, limits.max_per_ip));
        // One data dir, one server: a second one stops here, before it opens a database or
        // listens. A cluster node keeps what it writes in NATS; the data dir is only read (its
        // registered names), so it takes no lock.
        let mut data_lock = Vec::new();
        if settings.cluster.is_none() {
            let (history, auth) = (&settings.history.data_dir, &settings.auth.data_dir);
            for dir in std::iter::once(history).chain((auth != history).then_some(auth)) {
                let lock = crate::data_lock::DataLock::acquire(dir).map_err(io::Error::other)?;
                data_lock.push(lock);
            }
        }
        // A history database that cannot be opened stops the start, with its path and reason.
        // Cluster mode: NATS must be reachable at start; history then lives in JetStream.
        let cluster = match &settings.cluster {
            Some(cluster) => Some(
                crate::cluster::Cluster::start(cluster, &settings.history.retention)
                    .await
                    .map_err(io::Error::other)?,
            ),
            None => None,
        };
        let store = match &cluster {
            Some(cluster) => cluster.store(),
            None => crate::store::open(&settings.history).map_err(io::Error::other)?,
        };
        // A certificate that cannot be loaded stops the start, with the file and the reason.
        let (tls, certificates) = match &settings.tls {
            Some(tls) => {
                let (acceptor, certificates) =
                    crate::tls::acceptor(&tls.cert, &tls.key).map_err(io::Error::other)?;
                (Some(acceptor), Some(certificates))
            }
            None => (None, None),
        };
        let users = crate::auth::Users::load(&settings.auth).map_err(io::Error::other)?;
        if let Some(cluster) = &cluster {
            users.share_with(cluster.registered());
        }
        // Session tokens (`POST /api/login`): the cluster's bucket, or a file of their own.
        let logins = match &cluster {
            Some(cluster) => crate::logins::Keeper::Cluster(Box::new(cluster.logins_keeper())),
            None => crate::logins::Keeper::Sqlite(crate::logins::SqliteLogins::new(
                &settings.auth.data_dir,
            )),
        };
        users.use_logins(crate::logins::Logins::new(logins, settings.auth.login_ttl));
        if settings.auth.require_auth && !users.any() {
            warn!(
                "--require-auth with no registered names: nobody can join (machat user add NAME)"
            );
        }
        // Moderation records that cannot be read stop the start: serving without the bans
        // that were made would let everyone banned back in.
        let keeper: Arc<dyn crate::moderation::keep::Keeper> = match &cluster {
            Some(cluster) => cluster.rules_keeper(),
            None => Arc::new(crate::moderation::keep::SqliteKeeper::new(
                &settings.auth.data_dir,
            )),
        };
        let policy = crate::moderation::Policy::new(keeper, settings.moderation.room_creation)
            .map_err(io::Error::other)?;
        // Marks (issue 14): the cluster's bucket, `marks.db` beside the history, or memory when
        // the history is kept in memory or not at all.
        let marks_backend: Box<dyn crate::marks::Backend> = match &cluster {
            Some(cluster) => cluster.marks_backend(),
            None => match settings.history.mode {
                crate::settings::HistoryMode::Sqlite => {
                    Box::new(crate::marks::SqliteBackend::new(&settings.history.data_dir))
                }
                _ => Box::<crate::marks::MemoryBackend>::default(),
            },
        };
        let marks = crate::marks::Marks::new(marks_backend);
        if settings.cluster.is_none() {
            let dir = &settings.auth.data_dir;
            let shown = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            match data_dir_existed {
                true => info!("data dir: {}", shown.display()),
                false if dir.exists() => info!("data dir: {} (new: just created)", shown.display()),
                false => info!(
                    "data dir: {} (not created: nothing kept on disk)",
                    shown.display()
                ),
            }
        }
        let net = &settings.net;
        let listeners = listen_all(&net.addr, net.backlog).await?;
        let tls_listeners = match &net.tls_addr {
            Some(addr) => listen_all(addr, net.backlog).await?,
            None => Vec::new(),
        };
        let admin_token_file = settings.moderation.admin_token_file.as_deref();
        let web = Web::bind(
            &settings.web,
            &settings.proxy.trusted,
            admin_token_file,
            net.backlog,
        )
        .await?;
        // The metrics are served on the web side (--http or --metrics-addr); without it,
        // counting would be for nobody.
        let metrics = web.as_ref().and_then(|_| crate::metrics::install());
        let mut shown = settings.clone();
        if let Some(cluster) = &mut shown.cluster {
            cluster.url = crate::cluster::redact_url(&cluster.url);
        }
        info!(settings = ?shown, max_connections = max_total, "configuration");
        let mut ctx = Shared::new(
            settings.transport(),
            settings.hub(),
            settings.session(),
            store,
            tls,
            (users, Arc::new(policy), marks),
            cluster,
        );
        ctx.web_addrs = web.as_ref().map(Web::local_addrs).unwrap_or_default();
        let ctx = Arc::new(ctx);
        let live = Live {
            ctx: ctx.clone(),
            admission: admission.clone(),
            http_admission,
            certificates,
            hosts: web.as_ref().map(Web::hosts),
            fd_soft: soft,
        };
        Ok(Server {
            live,
            listeners,
            tls_listeners,
            ctx,
            admission,
            web,
            metrics,
            budgeted: settings.limits.max_queued_total > 0,
            _data_lock: data_lock,
            proxy: Arc::new(settings.proxy),
        })
    }

    /// What a reload changes while this server runs.
    pub fn live(&self) -> Live {
        self.live.clone()
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` flips to true, then tells every client and waits (bounded) for
    /// them to flush. New connections are spread over the runtimes in turn.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        for addr in self.local_addrs() {
            info!("listening on {addr}");
        }
        for addr in self
            .tls_listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
        {
            info!("tls listening on {addr}");
        }
        // Where to go, with the addresses as bound.
        for addr in self.local_addrs() {
            info!("chat: nc {} {}", addr.ip(), addr.port());
        }
        for addr in self
            .tls_listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
        {
            info!("chat over tls: openssl s_client -quiet -connect {addr}");
        }
        if let Some(web) = &self.web {
            let scheme = if self.ctx.tls.is_some() {
                "https"
            } else {
                "http"
            };
            for addr in web.local_addrs() {
                info!("web: {scheme}://{addr}/");
            }
        }
        let dispatch = Arc::new(Dispatch {
            next: AtomicUsize::new(0),
        });
        let mut tasks = Vec::new();
        if let Some(web) = self.web {
            let state = Arc::new(WebState {
                ctx: self.ctx.clone(),
                admission: self.admission.clone(),
                metrics: self.metrics,
                shutdown: shutdown.clone(),
                tls: self.ctx.tls.clone(),
                http_admission: self.live.http_admission.clone(),
            });
            tasks.push(tokio::spawn(web.run(state)));
        }
        // Ends the leave grace of members whose connection dropped (`--leave-grace`).
        tokio::spawn(self.ctx.hub.clone().run_graces());
        if self.budgeted {
            if let Err(e) = start_budget_enforcer(self.ctx.clone()) {
                warn!("cannot start the --max-queued-total thread: {e}");
            }
        }
        let plain = self.listeners.into_iter().map(|l| (l, false));
        let tls = self.tls_listeners.into_iter().map(|l| (l, true));
        let hand = Arc::new(Hand {
            ctx: self.ctx.clone(),
            admission: self.admission.clone(),
            shutdown: shutdown.clone(),
            dispatch,
        });
        for (listener, tls) in plain.chain(tls) {
            let listener = Listener {
                listener,
                tls,
                proxy: self.proxy.clone(),
            };
            tasks.push(tokio::spawn(accept_loop(listener, hand.clone())));
        }
        for t in tasks {
            let _ = t.await;
        }
        self.ctx.begin_shutdown();
        drain(&self.admission).await;
        // Everything said is written before the process ends.
        let store = self.ctx.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
        let policy = self.ctx.hub.policy.clone();
        let _ = tokio::task::spawn_blocking(move || policy.close()).await;
        let marks = self.ctx.hub.marks.clone();
        let _ = tokio::task::spawn_blocking(move || marks.close()).await;
        info!(still_open = self.admission.open(), "stopped");
    }
}

/// Keeps the bytes queued in all rooms under `--max-queued-total`: every member's queue is
/// bounded by `--max-pending`, but many members just under it could still exhaust memory. Runs
/// on a thread of its own, woken by the budget the moment it is exceeded.
fn start_budget_enforcer(ctx: Arc<Shared>) -> io::Result<()> {
    let budget = ctx.hub.budget.clone();
    let enforcer_budget = budget.clone();
    let thread = std::thread::Builder::new()
        .name("machat-budget".into())
        .spawn(move || loop {
            std::thread::park_timeout(Duration::from_secs(1));
            if ctx.is_shutting_down() {
                return;
            }
            let used = budget.used();
            if used > budget.max() {
                let cut = ctx.hub.enforce_budget();
                let max = budget.max();
                warn!(
                    used,
                    max, cut, "queued bytes over --max-queued-total: cut off the largest queues"
                );
            }
        })?;
    enforcer_budget.set_enforcer(thread.thread().clone());
    Ok(())
}

/// Waits (bounded) until every connection, on every runtime, has said goodbye.
async fn drain(admission: &Admission) {
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while admission.open() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Spreads new connections over the runtimes, in turn.
struct Dispatch {
    next: AtomicUsize,
}

impl Dispatch {
    fn send(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        ticket: Ticket,
        tls: bool,
        ctx: &Arc<Shared>,
        shutdown: &watch::Receiver<bool>,
    ) {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % ctx.runtime_count();
        if turn == 0 {
            spawn_serve(stream, addr, ticket, tls, ctx.clone(), shutdown.clone());
            return;
        }
        match stream.into_std() {
            Ok(stream) => ctx.hand_over(
                turn,
                Handoff::New {
                    stream,
                    addr,
                    ticket,
                    tls,
                },
            ),
            Err(e) => warn!(%addr, "cannot hand over a connection: {e}"),
        }
    }
}

/// A runtime's inbox: serve the connections handed over to it, until shutdown.
async fn receive(
    mut inbox: mpsc::UnboundedReceiver<Handoff>,
    ctx: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let handoff = tokio::select! {
            _ = shutdown.changed() => return,
            h = inbox.recv() => match h {
                Some(h) => h,
                None => return,
            },
        };
        let (ctx, sd) = (ctx.clone(), shutdown.clone());
        match handoff {
            Handoff::New {
                stream,
                addr,
                ticket,
                tls,
            } => match TcpStream::from_std(stream) {
                Ok(stream) => spawn_serve(stream, addr, ticket, tls, ctx, sd),
                Err(e) => warn!(%addr, "cannot take over a connection: {e}"),
            },
            Handoff::Greeted(greeted) => match TcpStream::from_std(greeted.stream) {
                Ok(stream) => {
                    tokio::spawn(serve_greeted(stream, greeted.rest, ctx));
                }
                Err(e) => warn!(addr = %greeted.rest.addr, "cannot take over a connection: {e}"),
            },
        }
    }
}

/// Serves a new connection on this runtime: TLS first when it came to the TLS port.
fn spawn_serve(
    stream: TcpStream,
    addr: SocketAddr,
    ticket: Ticket,
    tls: bool,
    ctx: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    if tls {
        tokio::spawn(serve_tls(stream, addr, ctx, shutdown, ticket));
    } else {
        tokio::spawn(serve(stream, addr, ctx, shutdown, ticket));
    }
}

/// A chat or TLS listener, and what its connections start with.
struct Listener {
    listener: TcpListener,
    tls: bool,
    proxy: Arc<ProxySettings>,
}

/// What every accept loop hands its connections to.
struct Hand {
    ctx: Arc<Shared>,
    admission: Arc<Admission>,
    shutdown: watch::Receiver<bool>,
    dispatch: Arc<Dispatch>,
}

async fn accept_loop(listener: Listener, hand: Arc<Hand>) {
    let Listener {
        listener,
        tls,
        proxy,
    } = listener;
    let mut shutdown = hand.shutdown.clone();
    let failing = LogGate::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                if proxy.protocol && proxy.trusted.contains(addr.ip()) {
                    proxied(stream, addr, tls, &hand);
                } else {
                    admit(stream, addr, tls, &hand);
                }
            }
            Err(e) => {
                // Out of descriptors (or kernel memory): accept fails at once until something
                // closes, so wait instead of spinning, and say so at most once a second.
                if let Some(held_back) = failing.admit() {
                    warn!(held_back, "accept failed: {e}; backing off");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Admits a connection from `addr` (the client's address) within the limits and hands it to
/// a runtime, or refuses it.
fn admit(stream: TcpStream, addr: SocketAddr, tls: bool, hand: &Hand) {
    let transport = if tls { Transport::Tls } else { Transport::Tcp };
    match hand.admission.admit(addr.ip(), transport) {
        Ok(ticket) => hand
            .dispatch
            .send(stream, addr, ticket, tls, &hand.ctx, &hand.shutdown),
        Err(refusal) => {
            let reason = refusal.to_string();
            info!(%addr, reason, "disconnect: refused");
            crate::metrics::handshake_rejected(crate::metrics::rejection_reason(&reason));
            if tls {
                // No TLS session yet to say why in: just close.
                return;
            }
            // Each refusal holds its socket for up to 1.5 s; under a flood of
            // connects, past a few dozen at once the rest are closed without a word.
            if REFUSING.fetch_add(1, Ordering::AcqRel) < MAX_REFUSING {
                tokio::spawn(async move {
                    refuse(stream, reason).await;
                    REFUSING.fetch_sub(1, Ordering::AcqRel);
                });
            } else {
                REFUSING.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// A connection from a trusted proxy with `--proxy-protocol`: its PROXY header names the
/// client, within the handshake timeout, before anything else is read (for TLS, before the
/// ClientHello). Until then it counts in the total only, so waiting headers stay bounded
/// by `--max-connections`; then it is admitted as the client's. A missing or bad header
/// closes it without a word: the proxy, not a person, is at the other end.
fn proxied(mut stream: TcpStream, peer: SocketAddr, tls: bool, hand: &Arc<Hand>) {
    let transport = if tls { Transport::Tls } else { Transport::Tcp };
    let held = match hand.admission.admit_proxy(transport) {
        Ok(held) => held,
        Err(refusal) => {
            info!(%peer, reason = %refusal, "disconnect: refused");
            return;
        }
    };
    let hand = hand.clone();
    tokio::spawn(async move {
        let within = hand.ctx.transport().handshake_timeout;
        let mut shutdown = hand.shutdown.clone();
        let read = tokio::select! {
            _ = shutdown.changed() => return,
            read = tokio::time::timeout(within, header::read(&mut stream)) => read,
        };
        let client = match read {
            Ok(Ok(client)) => client.unwrap_or(peer),
            Ok(Err(e)) => {
                info!(%peer, reason = %e, "disconnect: bad PROXY header");
                crate::metrics::handshake_rejected("proxy_header");
                return;
            }
            Err(_) => {
                info!(%peer, "disconnect: no PROXY header within the handshake timeout");
                crate::metrics::handshake_rejected("proxy_header");
                return;
            }
        };
        debug!(%peer, %client, "PROXY header read");
        drop(held);
        admit(stream, client, tls, &hand);
    });
}

/// Refusals being written at once (see `accept_loop`).
static REFUSING: AtomicUsize = AtomicUsize::new(0);
const MAX_REFUSING: usize = 64;

/// Refuses a connection over a limit: the reason, then a close that does not reset (see
/// [`crate::connection::finish`]). Bounded in time.
async fn refuse(stream: TcpStream, reason: String) {
    let mut line = Vec::new();
    Reply::Error(&reason).render(Format::Text, &mut line);
    finish(stream, line, Duration::from_secs(1), true).await;
}

/// Reads the configuration again (SIGHUP): the new settings, or why there are none, naming
/// the file, the line and the key.
pub type Reload = Box<dyn FnMut() -> Result<Settings, String> + Send>;

/// Runs a server until SIGINT or SIGTERM: the whole of the `machat` binary. The calling
/// thread serves the first runtime's share (see [`start`]). SIGHUP calls `reload` and applies
/// what can change while running (see [`crate::reload`]); without it, SIGHUP only says so.
pub fn run(settings: Settings, reload: Option<Reload>) -> io::Result<()> {
    let started = settings.clone();
    let (running, first) = launch(settings)?;
    let stop = running.shutdown.clone();
    // The handlers are in place before the first "listening on": a SIGHUP right after the
    // start must not end the server (SIGHUP's default action).
    let signals = {
        let _in = first.runtime.enter();
        Signals::new()
    };
    let live = first.server.live();
    first.serve(async move {
        signals.serve(reload, live, started).await;
        info!("signal received: shutting down");
        let _ = stop.send(true);
    });
    running.stop();
    Ok(())
}

/// A server started with [`start`]: where it listens, and how to stop it.
pub struct Running {
    /// The chat protocol's addresses (`-a`), as bound (port 0 becomes the real port).
    pub addrs: Vec<SocketAddr>,
    /// The chat protocol over TLS (`--tls-addr`).
    pub tls_addrs: Vec<SocketAddr>,
    /// The web side (`--http`), if on.
    pub http_addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Shuts down as on a signal: tells every client, waits (bounded) for them to flush, and
    /// returns once every thread has ended.
    pub fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Binds and serves on threads of its own until [`Running::stop`]: how the in-process test
/// harness runs a server (the binary uses [`run`]).
pub fn start(settings: Settings) -> io::Result<Running> {
    let (mut running, first) = launch(settings)?;
    running.threads.push(
        std::thread::Builder::new()
            .name("machat-0".into())
            .spawn(move || first.serve(std::future::pending()))?,
    );
    Ok(running)
}

/// The first runtime, which bound the listeners and runs them, the web side and its own share
/// of the connections, on whichever thread calls [`First::serve`].
struct First {
    runtime: tokio::runtime::Runtime,
    server: Server,
    inbox: mpsc::UnboundedReceiver<Handoff>,
    shutdown: watch::Receiver<bool>,
}

impl First {
    /// Serves until shutdown, with `beside` (the signal handler) running next to it.
    fn serve(self, beside: impl Future<Output = ()> + Send + 'static) {
        let First {
            runtime,
            server,
            inbox,
            shutdown,
        } = self;
        set_runtime_index(0);
        runtime.block_on(async move {
            tokio::spawn(beside);
            tokio::spawn(receive(inbox, server.ctx.clone(), shutdown.clone()));
            server.run(shutdown).await;
        });
        // Connections that did not finish within the grace period are dropped here.
        runtime.shutdown_timeout(Duration::from_millis(100));
    }
}

/// Binds, and starts every runtime but the first on a thread of its own.
///
/// One single-threaded runtime per worker thread (`--threads`, default one per core), each
/// serving its share of the connections: a connection's task never moves between threads, and
/// no thread steals work from another, which on a busy server costs more than it saves. Rooms
/// are shared by all; a message to a member on another thread wakes that thread.
fn launch(settings: Settings) -> io::Result<(Running, First)> {
    let threads = match settings.net.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let main = runtime()?;
    let server = main.block_on(Server::bind(settings))?;
    let addrs = server.local_addrs();
    let tls_addrs = server
        .tls_listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let http_addrs = server
        .web
        .as_ref()
        .map(Web::local_addrs)
        .unwrap_or_default();
    let (tx, rx) = watch::channel(false);
    let (inboxes, mut receivers): (Vec<Inbox>, Vec<_>) =
        (0..threads).map(|_| mpsc::unbounded_channel()).unzip();
    server.ctx.set_runtimes(inboxes);
    let own_inbox = receivers.remove(0);
    let mut handles = Vec::new();
    for (i, inbox) in receivers.into_iter().enumerate() {
        let (ctx, admission, shutdown) = (server.ctx.clone(), server.admission.clone(), rx.clone());
        let rt = runtime()?;
        handles.push(
            std::thread::Builder::new()
                .name(format!("machat-{}", i + 1))
                .spawn(move || {
                    set_runtime_index(i + 1);
                    rt.block_on(async {
                        receive(inbox, ctx, shutdown).await;
                        // A single-threaded runtime runs its tasks only while driven: keep
                        // driving until this runtime's connections have said goodbye too.
                        drain(&admission).await;
                    });
                    rt.shutdown_timeout(Duration::from_millis(100));
                })?,
        );
    }
    let running = Running {
        addrs,
        tls_addrs,
        http_addrs,
        shutdown: tx,
        threads: handles,
    };
    let first = First {
        runtime: main,
        server,
        inbox: own_inbox,
        shutdown: rx,
    };
    Ok((running, first))
}

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// The signals the server answers: SIGINT and SIGTERM stop it, SIGHUP reloads.
struct Signals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Needs the runtime that will serve them.
    fn new() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
            hup: signal(SignalKind::hangup()).ok(),
        }
    }

    /// Reloads on each SIGHUP; returns on SIGINT or SIGTERM. Without handlers the process
    /// still stops on a signal, just not gracefully.
    async fn serve(mut self, mut reload: Option<Reload>, live: Live, started: Settings) {
        async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    if s.recv().await.is_none() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        }
        let mut running = started.clone();
        loop {
            tokio::select! {
                _ = next(&mut self.int) => return,
                _ = next(&mut self.term) => return,
                _ = next(&mut self.hup) => {
                    let Some(reload) = reload.as_mut() else {
                        info!("reload: SIGHUP received, but there is no --config file to reload; nothing changed");
                        continue;
                    };
                    match reload() {
                        Ok(new) => match live.apply(&started, &running, &new) {
                            Ok(()) => running = new,
                            Err(why) => warn!("reload failed: {why}; keeping the running configuration"),
                        },
                        Err(why) => warn!("reload failed: {why}; keeping the running configuration"),
                    }
                }
            }
        }
    }
}
