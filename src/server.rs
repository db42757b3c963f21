//! The listener: binds, accepts within the connection limits, spawns a task per connection, and
//! shuts everything down on one signal.
//!
//! Accepting is where a server under attack or out of descriptors tends to fall over: a full
//! descriptor table makes `accept` fail at once, forever, so the loop backs off instead of
//! spinning, keeps serving the clients it has, and picks up again when descriptors free up.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::Config;
use crate::connection::{finish, serve, Shared};
use crate::protocol::{Format, Reply};

/// How long shutdown waits for connections to flush their last lines.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(4500);

/// Counts connections in total and per IP; a [`Ticket`] gives its place back when dropped.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.total.fetch_sub(1, Ordering::AcqRel);
        let mut map = self
            .admission
            .per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Admission {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: Mutex::default(),
        }
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, &'static str> {
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if self.total.load(Ordering::Acquire) >= self.max_total {
            return Err("server full: too many connections");
        }
        let n = map.entry(ip).or_insert(0);
        if self.max_per_ip > 0 && *n >= self.max_per_ip {
            if *n == 0 {
                map.remove(&ip);
            }
            return Err("too many connections from your address");
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::AcqRel);
        Ok(Ticket {
            admission: self.clone(),
            ip,
        })
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// Raises the soft descriptor limit to the hard one (each client is a descriptor) and returns
/// (soft, hard) as they now are.
pub fn raise_fd_limit() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return (0, 0);
        }
        let before = lim.rlim_cur;
        if lim.rlim_cur < lim.rlim_max {
            let mut raised = lim;
            raised.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
        info!(
            soft_before = before,
            soft = lim.rlim_cur,
            hard = lim.rlim_max,
            "descriptor limit"
        );
    }
    (lim.rlim_cur, lim.rlim_max)
}

/// A bound server, not yet accepting.
pub struct Server {
    listeners: Vec<TcpListener>,
    ctx: Arc<Shared>,
    admission: Arc<Admission>,
}

impl Server {
    /// Binds every address `config.addr` resolves to, with the configured backlog.
    pub async fn bind(config: Config) -> io::Result<Server> {
        let (soft, _) = raise_fd_limit();
        let max_total = match config.max_connections {
            0 => (soft.saturating_sub(64) as usize).max(1),
            n => n,
        };
        let admission = Arc::new(Admission::new(max_total, config.max_per_ip));
        let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host(&config.addr).await?.collect();
        addrs.dedup();
        let mut listeners = Vec::new();
        let mut last_err = None;
        for addr in addrs {
            match listen(addr, config.backlog) {
                Ok(l) => listeners.push(l),
                Err(e) => {
                    warn!(%addr, "cannot listen: {e}");
                    last_err = Some(e);
                }
            }
        }
        if listeners.is_empty() {
            return Err(last_err.unwrap_or_else(|| {
                io::Error::new(
                    io::ErrorKind::AddrNotAvailable,
                    "address resolved to nothing",
                )
            }));
        }
        info!(?config, max_connections = max_total, "configuration");
        Ok(Server {
            listeners,
            ctx: Arc::new(Shared::new(config)),
            admission,
        })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` flips to true, then tells every client and waits (bounded) for
    /// them to flush. New connections are served on this runtime and the `workers`' in turn.
    pub async fn run(self, shutdown: watch::Receiver<bool>, workers: Vec<Worker>) {
        for addr in self.local_addrs() {
            info!("listening on {addr}");
        }
        let dispatch = Arc::new(Dispatch {
            workers,
            next: AtomicUsize::new(0),
        });
        let mut tasks = Vec::new();
        for listener in self.listeners {
            let ctx = self.ctx.clone();
            let admission = self.admission.clone();
            let shutdown = shutdown.clone();
            let dispatch = dispatch.clone();
            tasks.push(tokio::spawn(accept_loop(
                listener, ctx, admission, shutdown, dispatch,
            )));
        }
        for t in tasks {
            let _ = t.await;
        }
        // The workers' channels close with the last `Dispatch`: they stop taking connections.
        drop(dispatch);
        self.ctx.begin_shutdown();
        drain(&self.admission).await;
        info!(still_open = self.admission.open(), "stopped");
    }
}

/// Waits (bounded) until every connection, on every runtime, has said goodbye.
async fn drain(admission: &Admission) {
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while admission.open() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connection accepted on one runtime, to be served on another.
pub struct Handoff {
    stream: std::net::TcpStream,
    addr: SocketAddr,
    ticket: Ticket,
}

/// Where an accepted connection goes: another runtime's channel.
pub type Worker = mpsc::UnboundedSender<Handoff>;

/// Spreads connections over the runtimes, in turn (index 0 is the accepting runtime itself).
struct Dispatch {
    workers: Vec<Worker>,
    next: AtomicUsize,
}

impl Dispatch {
    fn send(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        ticket: Ticket,
        ctx: &Arc<Shared>,
        shutdown: &watch::Receiver<bool>,
    ) {
        let n = self.workers.len() + 1;
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % n;
        if turn > 0 {
            match stream.into_std() {
                Ok(stream) => {
                    let _ = self.workers[turn - 1].send(Handoff {
                        stream,
                        addr,
                        ticket,
                    });
                }
                Err(e) => warn!(%addr, "cannot hand over a connection: {e}"),
            }
            return;
        }
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        tokio::spawn(async move {
            serve(stream, addr, ctx, shutdown).await;
            drop(ticket);
        });
    }
}

/// A worker runtime's loop: serve the connections handed over, until the accept loops stop.
async fn worker(
    mut handoffs: mpsc::UnboundedReceiver<Handoff>,
    ctx: Arc<Shared>,
    admission: Arc<Admission>,
    shutdown: watch::Receiver<bool>,
) {
    while let Some(Handoff {
        stream,
        addr,
        ticket,
    }) = handoffs.recv().await
    {
        match TcpStream::from_std(stream) {
            Ok(stream) => {
                let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
                tokio::spawn(async move {
                    serve(stream, addr, ctx, shutdown).await;
                    drop(ticket);
                });
            }
            Err(e) => warn!(%addr, "cannot take over a connection: {e}"),
        }
    }
    // Tasks on a single-threaded runtime only run while it is driven: keep driving until this
    // runtime's connections (and everyone else's) have said goodbye.
    drain(&admission).await;
}

fn listen(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Shared>,
    admission: Arc<Admission>,
    mut shutdown: watch::Receiver<bool>,
    dispatch: Arc<Dispatch>,
) {
    let mut last_warn: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                match admission.admit(addr.ip()) {
                    Ok(ticket) => dispatch.send(stream, addr, ticket, &ctx, &shutdown),
                    Err(reason) => {
                        info!(%addr, reason, "disconnect: refused");
                        tokio::spawn(refuse(stream, reason));
                    }
                }
            }
            Err(e) => {
                // Out of descriptors (or kernel memory): accept fails at once until something
                // closes, so wait instead of spinning, and say so at most once a second.
                if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                    warn!("accept failed: {e}; backing off");
                    last_warn = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Refuses a connection over a limit: the reason, then a close that does not reset (see
/// [`crate::connection::finish`]). Bounded in time, so refusals cannot pile up.
async fn refuse(stream: TcpStream, reason: &'static str) {
    let mut line = Vec::new();
    Reply::Error(reason).render(Format::Text, &mut line);
    finish(stream, line, Duration::from_secs(1), true).await;
}

/// Runs a server until SIGINT or SIGTERM: the whole of the `machat` binary.
///
/// One single-threaded runtime per worker thread (`--threads`, default one per core), each
/// serving its share of the connections: a connection's task never moves between threads, and
/// no thread steals work from another, which on a busy server costs more than it saves. Rooms
/// are shared by all; a message to a member on another thread wakes that thread.
pub fn run(config: Config) -> io::Result<()> {
    let threads = match config.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let main = runtime()?;
    let server = main.block_on(Server::bind(config))?;
    let (tx, rx) = watch::channel(false);
    let mut workers = Vec::new();
    let mut threads_done = Vec::new();
    for i in 1..threads {
        let (handoff, handoffs) = mpsc::unbounded_channel();
        workers.push(handoff);
        let (ctx, admission, shutdown) = (server.ctx.clone(), server.admission.clone(), rx.clone());
        let rt = runtime()?;
        threads_done.push(
            std::thread::Builder::new()
                .name(format!("machat-{i}"))
                .spawn(move || {
                    rt.block_on(worker(handoffs, ctx, admission, shutdown));
                    rt.shutdown_timeout(Duration::from_millis(100));
                })?,
        );
    }
    main.block_on(async move {
        tokio::spawn(async move {
            wait_for_signal().await;
            info!("signal received: shutting down");
            let _ = tx.send(true);
        });
        server.run(rx, workers).await;
    });
    for t in threads_done {
        let _ = t.join();
    }
    // Connections that did not finish within the grace period are dropped here.
    main.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers the process still stops on a signal, just not gracefully.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}
