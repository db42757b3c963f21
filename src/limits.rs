//! Connection limits: how many connections in total and per IP address, how many of an
//! address's are still in their handshake, and the descriptor limit they depend on. Counting
//! happens at accept, at the handshake's end and at close, never per message.
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
    /// Both limits change on a reload (SIGHUP); connections already in stay.
    max_total: AtomicUsize,
    max_per_ip: AtomicUsize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// `--max-handshakes-per-ip` (0: no limit), and each address's connections in their
    /// handshake.
    max_waiting_per_ip: usize,
    waiting: Mutex<HashMap<IpAddr, usize>>,
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
            max_total: AtomicUsize::new(max_total),
            max_per_ip: AtomicUsize::new(max_per_ip),
            total: AtomicUsize::new(0),
            per_ip: Mutex::default(),
            max_waiting_per_ip: 0,
            waiting: Mutex::default(),
        }
    }

    /// The same, with at most `max` connections of one address in their handshake at once
    /// (see [`Ticket::start_handshake`]); 0 = no limit.
    pub fn with_max_waiting(mut self, max: usize) -> Self {
        self.max_waiting_per_ip = max;
        self
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr, transport: Transport) -> Result<Ticket, Refusal> {
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if self.total.load(Ordering::Acquire) >= self.max_total() {
            return Err(Refusal::ServerFull);
        }
        let n = map.entry(ip).or_insert(0);
        let max_per_ip = self.max_per_ip();
        if max_per_ip > 0 && *n >= max_per_ip {
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
        if self.total.load(Ordering::Acquire) >= self.max_total() {
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
        if self.total.load(Ordering::Acquire) >= self.max_total() {
            return Err(Refusal::ServerFullOfSeats);
        }
        let Some(ip) = ip else {
            self.total.fetch_add(1, Ordering::AcqRel);
            return Ok(());
        };
        let n = map.entry(ip).or_insert(0);
        let max_per_ip = self.max_per_ip();
        if max_per_ip > 0 && *n >= max_per_ip {
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
        self.max_total.load(Ordering::Relaxed)
    }

    pub fn max_per_ip(&self) -> usize {
        self.max_per_ip.load(Ordering::Relaxed)
    }

    /// New limits (a reload): they apply to the next connection or room taken.
    pub fn set_limits(&self, max_total: usize, max_per_ip: usize) {
        self.max_total.store(max_total, Ordering::Relaxed);
        self.max_per_ip.store(max_per_ip, Ordering::Relaxed);
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl Ticket {
    /// Counts the connection as one of its address's in their handshake until the returned
    /// [`Waiting`] is dropped, or refuses it when the address has `--max-handshakes-per-ip`
    /// already. With the handshake timeout long enough for a person typing into `nc`, this is
    /// what keeps one address from holding many silent connections (slow loris).
    pub fn start_handshake(&self) -> Result<Waiting, Refusal> {
        let admission = &self.admission;
        // A trusted proxy's own connection (no client address known) is not counted: its
        // clients are, once its PROXY header names them.
        let (Some(ip), 1..) = (self.ip, admission.max_waiting_per_ip) else {
            return Ok(Waiting { counted: None });
        };
        let mut map = admission.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= admission.max_waiting_per_ip {
            return Err(Refusal::TooManyWaiting);
        }
        *n += 1;
        Ok(Waiting {
            counted: Some((admission.clone(), ip)),
        })
    }

    /// What the connection's session counts its extra rooms with.
    pub fn seat_pass(&self) -> SeatPass {
        SeatPass {
            admission: self.admission.clone(),
            ip: self.ip,
            held: 0,
        }
    }
}

/// A connection in its handshake, counted against `--max-handshakes-per-ip` until dropped.
#[derive(Debug)]
pub struct Waiting {
    /// None when there is no limit (nothing counted).
    counted: Option<(Arc<Admission>, IpAddr)>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some((admission, ip)) = self.counted.take() else {
            return;
        };
        let mut map = admission.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_waiting_are_bounded_per_address_and_given_back() {
        let admission = Arc::new(Admission::new(100, 0).with_max_waiting(2));
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let tickets: Vec<Ticket> = (0..3)
            .map(|_| admission.admit(a, Transport::Tcp).unwrap())
            .collect();
        let first = tickets[0].start_handshake().unwrap();
        let second = tickets[1].start_handshake().unwrap();
        assert_eq!(
            tickets[2].start_handshake().unwrap_err(),
            Refusal::TooManyWaiting
        );
        // Another address is not held back by this one.
        let other = admission.admit(b, Transport::Tcp).unwrap();
        let _other_waiting = other.start_handshake().unwrap();
        // A handshake that ends gives its place back.
        drop(first);
        let _third = tickets[2].start_handshake().unwrap();
        drop(second);
        assert_eq!(admission.waiting.lock().unwrap().get(&a), Some(&1));
        // No limit: nothing is counted.
        let free = Arc::new(Admission::new(100, 0));
        let t = free.admit(a, Transport::Tcp).unwrap();
        let all: Vec<Waiting> = (0..10).map(|_| t.start_handshake().unwrap()).collect();
        assert!(free.waiting.lock().unwrap().is_empty());
        drop(all);
    }
}
