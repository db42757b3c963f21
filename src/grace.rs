//! The leave grace (`--leave-grace`): a member whose last connection to a room closed or
//! dropped stays in the room, unseen as gone, for a few seconds, so that a reload or a
//! reconnect shows nobody a `left` and a `joined`.
//!
//! While it waits, the member is a *ghost* in its room (`Room`'s `ghosts`): listed by `/who`,
//! holding its name, counted against `--max-room-members`. If it comes back within the grace
//! (a person: any connection proving the name; a guest: the same name from the same address),
//! it takes its place back silently; otherwise its `left` is shown when the grace ends.
//!
//! This module keeps the deadlines: one queue for the whole server, in the order the ghosts
//! were made (the grace is the same for all, so that is also the order they end in), read by
//! one task (`Hub::run_graces`). A ghost costs its room an entry and this queue an entry;
//! both are bounded ([`MAX_GHOSTS`] in all, [`MAX_PER_ADDRESS`] per address): past a bound the
//! member leaves at once, as without a grace. Nothing here touches rooms: the hub does, when
//! a deadline comes.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Most ghosts the whole server holds at once (each holds a name and a room's place).
pub const MAX_GHOSTS: usize = 10_000;
/// Most ghosts of members from one address: a client that connects and drops in a loop
/// cannot hold more names than this beyond its open connections.
pub const MAX_PER_ADDRESS: u32 = 64;

/// A ghost's deadline: when it ends, and what the hub needs to end it.
#[derive(Debug, Clone)]
pub struct Due {
    pub room: Arc<str>,
    /// The connection that left (its id is the ghost's, and its name's claim is held by it).
    pub owner: u64,
    pub name: String,
    pub person: bool,
    addr: IpAddr,
    at: Instant,
}

/// The server's ghosts' deadlines (see the module's doc).
#[derive(Debug)]
pub struct Graces {
    grace: Duration,
    /// Guests get a grace too (one server); in a cluster only persons do.
    guests: bool,
    state: Mutex<State>,
    /// Rung when the queue gets its first entry, for the task that waits for deadlines.
    rung: Notify,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Due>,
    per_address: HashMap<IpAddr, u32>,
    /// At shutdown: no more ghosts.
    closed: bool,
}

impl Graces {
    /// Ghosts last `grace` (zero: no ghosts); `guests`: guests get one too, not only persons.
    pub fn new(grace: Duration, guests: bool) -> Self {
        Graces {
            grace,
            guests,
            state: Mutex::default(),
            rung: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a member leaving `room` as `name` may stay as a ghost, and if so its deadline
    /// is queued: false when the grace is off, does not cover guests and this is one, the
    /// server is shutting down, or a bound is reached (the member then leaves at once).
    pub fn admit(
        &self,
        room: &Arc<str>,
        owner: u64,
        name: &str,
        person: bool,
        addr: IpAddr,
    ) -> bool {
        if self.grace.is_zero() || (!person && !self.guests) {
            return false;
        }
        let addr = addr.to_canonical();
        let mut state = self.state();
        if state.closed || state.queue.len() >= MAX_GHOSTS {
            return false;
        }
        let n = state.per_address.entry(addr).or_insert(0);
        if *n >= MAX_PER_ADDRESS {
            return false;
        }
        *n += 1;
        let first = state.queue.is_empty();
        // Taken under the lock: the queue stays in deadline order.
        let at = Instant::now() + self.grace;
        state.queue.push_back(Due {
            room: room.clone(),
            owner,
            name: name.to_owned(),
            person,
            addr,
            at,
        });
        drop(state);
        if first {
            self.rung.notify_one();
        }
        true
    }

    /// The next deadline, once it has come (for the one task that ends ghosts).
    pub async fn next(&self) -> Due {
        loop {
            let front = self.state().queue.front().map(|d| d.at);
            match front {
                None => self.rung.notified().await,
                Some(at) if at > Instant::now() => tokio::time::sleep_until(at).await,
                Some(_) => {
                    if let Some(due) = self.pop() {
                        return due;
                    }
                }
            }
        }
    }

    fn pop(&self) -> Option<Due> {
        let mut state = self.state();
        let due = state.queue.pop_front()?;
        if let Some(n) = state.per_address.get_mut(&due.addr) {
            *n -= 1;
            if *n == 0 {
                state.per_address.remove(&due.addr);
            }
        }
        Some(due)
    }

    /// At shutdown: no more ghosts; the ones waiting are handed back, to end now.
    pub fn close(&self) -> Vec<Due> {
        let mut state = self.state();
        state.closed = true;
        state.per_address.clear();
        state.queue.drain(..).collect()
    }

    /// Ghosts waiting (for the tests and the log).
    pub fn waiting(&self) -> usize {
        self.state().queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn off_or_guests_uncovered_means_no_ghost() {
        let room: Arc<str> = "r".into();
        assert!(!Graces::new(Duration::ZERO, true).admit(&room, 1, "a", true, HOME));
        let persons_only = Graces::new(Duration::from_secs(1), false);
        assert!(!persons_only.admit(&room, 1, "guest", false, HOME));
        assert!(persons_only.admit(&room, 2, "Mina", true, HOME));
    }

    #[test]
    fn ghosts_are_bounded_per_address_and_end_at_shutdown() {
        let room: Arc<str> = "r".into();
        let g = Graces::new(Duration::from_secs(60), true);
        for i in 0..MAX_PER_ADDRESS {
            assert!(g.admit(&room, u64::from(i), &format!("n{i}"), false, HOME));
        }
        assert!(!g.admit(&room, 999, "one-more", false, HOME));
        let other = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
        assert!(g.admit(&room, 1000, "elsewhere", false, other));
        assert_eq!(g.close().len(), MAX_PER_ADDRESS as usize + 1);
        assert!(!g.admit(&room, 1001, "late", false, other));
        assert_eq!(g.waiting(), 0);
    }

    #[tokio::test]
    async fn deadlines_come_in_order() {
        let room: Arc<str> = "r".into();
        let g = Graces::new(Duration::from_millis(100), true);
        let start = Instant::now();
        assert!(g.admit(&room, 1, "a", false, HOME));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(g.admit(&room, 2, "b", false, HOME));
        assert_eq!(g.next().await.owner, 1);
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert_eq!(g.next().await.owner, 2);
        assert!(start.elapsed() >= Duration::from_millis(120));
        assert_eq!(g.waiting(), 0);
    }
}
