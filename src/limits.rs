//! Connection limits: how many connections in total and per IP address, and the descriptor
//! limit they depend on. Counting happens once at accept and once at close, never per message.
//!
//! A version-2 connection may sit in many rooms; each room beyond its first counts as one more
//! connection of its address ([`SeatPass`]), so one address cannot hold more seats than it
//! could hold connections, and a server more than `--max-connections`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tracing::info;

use crate::metrics::{OpenConnection, Transport};
use crate::refusal::Refusal;

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
    /// None: counted in the total only (see [`Admission::admit_proxy`]).
    ip: Option<IpAddr>,
    _open: OpenConnection,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.give_back(self.ip);
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

    pub fn admit(self: &Arc<Self>, ip: IpAddr, transport: Transport) -> Result<Ticket, Refusal> {
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if self.total.load(Ordering::Acquire) >= self.max_total {
            return Err(Refusal::ServerFull);
        }
        let n = map.entry(ip).or_insert(0);
        if self.max_per_ip > 0 && *n >= self.max_per_ip {
            if *n == 0 {
                map.remove(&ip);
            }
            return Err(Refusal::TooManyFromAddress);
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::AcqRel);
        Ok(Ticket {
            admission: self.clone(),
            ip: Some(ip),
            _open: OpenConnection::new(transport),
        })
    }

    /// Admits a connection from a trusted proxy (`--trusted-proxies`) within the total only:
    /// it carries many clients, whose own addresses are counted where they become known (a
    /// PROXY header read, a WebSocket's upgrade).
    pub fn admit_proxy(self: &Arc<Self>, transport: Transport) -> Result<Ticket, Refusal> {
        let _map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if self.total.load(Ordering::Acquire) >= self.max_total {
            return Err(Refusal::ServerFull);
        }
        self.total.fetch_add(1, Ordering::AcqRel);
        Ok(Ticket {
            admission: self.clone(),
            ip: None,
            _open: OpenConnection::new(transport),
        })
    }

    /// Counts one more seat of `ip` beyond its connections' first, within the limits.
    fn take_seat(&self, ip: Option<IpAddr>) -> Result<(), Refusal> {
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if self.total.load(Ordering::Acquire) >= self.max_total {
            return Err(Refusal::ServerFullOfSeats);
        }
        let Some(ip) = ip else {
            self.total.fetch_add(1, Ordering::AcqRel);
            return Ok(());
        };
        let n = map.entry(ip).or_insert(0);
        if self.max_per_ip > 0 && *n >= self.max_per_ip {
            return Err(Refusal::TooManySeatsFromAddress);
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn give_back(&self, ip: Option<IpAddr>) {
        self.total.fetch_sub(1, Ordering::AcqRel);
        let Some(ip) = ip else {
            return;
        };
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }

    pub fn max_total(&self) -> usize {
        self.max_total
    }

    pub fn max_per_ip(&self) -> usize {
        self.max_per_ip
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl Ticket {
    /// What the connection's session counts its extra rooms with.
    pub fn seat_pass(&self) -> SeatPass {
        SeatPass {
            admission: self.admission.clone(),
            ip: self.ip,
            held: 0,
        }
    }
}

/// A connection's rooms beyond its first, counted against its address's and the server's
/// connection limits; given back when dropped.
#[derive(Debug)]
pub struct SeatPass {
    admission: Arc<Admission>,
    ip: Option<IpAddr>,
    held: usize,
}

impl SeatPass {
    /// One more room.
    pub fn take(&mut self) -> Result<(), Refusal> {
        self.admission.take_seat(self.ip)?;
        self.held += 1;
        Ok(())
    }

    /// One room fewer.
    pub fn give_back(&mut self) {
        if self.held > 0 {
            self.held -= 1;
            self.admission.give_back(self.ip);
        }
    }

    /// Every room: the session left them all.
    pub fn give_back_all(&mut self) {
        while self.held > 0 {
            self.give_back();
        }
    }
}

impl Drop for SeatPass {
    fn drop(&mut self) {
        self.give_back_all();
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

/// Ends a connection that sent nothing for `--idle-timeout`. Reading only records the time
/// (`touch`); the timer is re-armed when it fires early, so a busy connection costs no timer
/// work per line.
pub struct IdleTimer {
    timeout: std::time::Duration,
    last: std::time::Instant,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl IdleTimer {
    /// None when the timeout is off (0 or not a valid duration).
    pub fn new(seconds: f64) -> Option<Self> {
        let timeout = std::time::Duration::try_from_secs_f64(seconds)
            .ok()
            .filter(|d| !d.is_zero())?;
        let last = std::time::Instant::now();
        Some(IdleTimer {
            timeout,
            last,
            sleep: Box::pin(tokio::time::sleep(timeout)),
        })
    }

    /// The client sent something.
    pub fn touch(&mut self) {
        self.last = std::time::Instant::now();
    }

    /// True once the client has been silent for the whole timeout; otherwise the task's waker
    /// is registered for the next moment it could be.
    pub fn poll_expired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        use std::future::Future;
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let due = self.last + self.timeout;
            if std::time::Instant::now() >= due {
                return true;
            }
            self.sleep.as_mut().reset(due.into());
        }
    }
}
