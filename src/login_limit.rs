//! The failed-login limit: who may have a password checked now, and who must wait.
//!
//! Three rules, each against one way of guessing:
//! - **Turns per address.** A client address (an IPv6 address's /64; an IPv4-mapped IPv6
//!   address counts as the IPv4 one) has at most [`IN_FLIGHT`] checks under way and
//!   [`QUEUED`] more waiting their turn, in order; beyond that an attempt is refused without a
//!   check. So a thousand concurrent guesses from one address cost two checks at a time, and a
//!   login from elsewhere queues behind at most two hashes per busy address, not behind a
//!   thousand.
//! - **Reserved before the check.** An attempt counts as a failure the moment it is let in,
//!   before its hash; a success takes it back. No number of concurrent attempts can pass the
//!   limit before the failures are counted.
//! - **A delay that grows, per address and name.** After [`NAME_FREE`] failures for one
//!   (address, name), that name is held back from that address for 2 s, then 4, 8, ... up to
//!   [`MAX_WAIT`], counted from the moment the last failure was answered. A success clears only
//!   its own (address, name). Per address, across names, the same from [`ADDR_FREE`] failures,
//!   so one address cannot spray guesses over many names either. There is no hard lockout: a
//!   name is never held back longer than [`MAX_WAIT`] after the last failure.
//!
//! Both tables are bounded: an entry is forgotten [`FORGET`] after its last failure, and at
//! [`MAX_ENTRIES`] the older half goes, so a million names or addresses cost a bounded map.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Checks one address may have under way at once.
pub const IN_FLIGHT: usize = 2;
/// Attempts of one address that may wait for a turn; more are refused at once.
pub const QUEUED: usize = 4;
/// Failures for one (address, name) before it is held back.
pub const NAME_FREE: u32 = 4;
/// Failures for one address, over all names, before it is held back.
pub const ADDR_FREE: u32 = 16;
/// The longest hold: a name is never held back longer than this after its last failure.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// An entry without a new failure for this long is forgotten.
pub const FORGET: Duration = Duration::from_secs(15 * 60);
/// Entries in each table, at most.
pub const MAX_ENTRIES: usize = 65_536;

/// Where failures are counted: an IPv4 address, or the /64 of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    V4(u32),
    V6Net(u64),
}

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(u32::from(v4)),
                None => Source::V6Net((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Failures of one (address, name) or one address.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    fails: u32,
    /// When the last failure was let in.
    last: Instant,
}

/// How long after its answer the `fails`-th failure holds back the next attempt.
fn hold(fails: u32, free: u32) -> Duration {
    if fails < free {
        return Duration::ZERO;
    }
    let doublings = (fails - free + 1).min(16);
    Duration::from_secs(1u64 << doublings).min(MAX_WAIT)
}

impl Backoff {
    /// Held back at `now`? `answer` is how long after being let in a failure is answered.
    fn held(&self, now: Instant, free: u32, answer: Duration) -> bool {
        let hold = hold(self.fails, free);
        !hold.is_zero() && now < self.last + answer + hold
    }
}

/// Adds one failure to `key`'s entry (forgetting a stale one, and the older half of the table
/// when it is full).
fn count<K: Hash + Eq + Clone>(table: &mut HashMap<K, Backoff>, key: &K, now: Instant) {
    if !table.contains_key(key) && table.len() >= MAX_ENTRIES {
        table.retain(|_, b| now.saturating_duration_since(b.last) < FORGET);
        if table.len() >= MAX_ENTRIES {
            let mut lasts: Vec<Instant> = table.values().map(|b| b.last).collect();
            let mid = lasts.len() / 2;
            let (_, median, _) = lasts.select_nth_unstable(mid);
            let median = *median;
            table.retain(|_, b| b.last > median);
        }
    }
    let entry = table.entry(key.clone()).or_insert(Backoff {
        fails: 0,
        last: now,
    });
    if now.saturating_duration_since(entry.last) >= FORGET {
        entry.fails = 0;
    }
    entry.fails = entry.fails.saturating_add(1);
    entry.last = now;
}

fn held<K: Hash + Eq>(
    table: &HashMap<K, Backoff>,
    key: &K,
    now: Instant,
    free: u32,
    answer: Duration,
) -> bool {
    table.get(key).is_some_and(|b| {
        now.saturating_duration_since(b.last) < FORGET && b.held(now, free, answer)
    })
}

/// One address's turns: its permits, and how many attempts hold or wait for one.
struct Queue {
    permits: Arc<Semaphore>,
    users: usize,
}

#[derive(Default)]
struct State {
    names: HashMap<(Source, String), Backoff>,
    sources: HashMap<Source, Backoff>,
    queues: HashMap<Source, Queue>,
}

/// The limit of a server (or a node, in cluster mode).
pub struct LoginLimit {
    state: Mutex<State>,
    /// How long after it began a failure is answered (the failure's delay).
    answer: Duration,
}

/// Why an attempt is not checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The address already has its checks under way and its queue full.
    Busy,
    /// The (address, name) or the address is held back after its failures.
    HeldBack,
}

/// An attempt's turn: a check may run while it is held. Dropping it ends the turn.
pub struct Turn {
    limit: Arc<LoginLimit>,
    source: Source,
    _permit: OwnedSemaphorePermit,
}

/// An attempt waiting for (or holding) a turn; gives its place back when dropped, also when
/// the waiting connection goes away.
struct Place {
    limit: Arc<LoginLimit>,
    source: Source,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut state = self.limit.lock();
        if let Some(q) = state.queues.get_mut(&self.source) {
            q.users = q.users.saturating_sub(1);
            if q.users == 0 {
                state.queues.remove(&self.source);
            }
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        // The permit goes back with the field; the place with this.
        drop(Place {
            limit: self.limit.clone(),
            source: self.source,
        });
    }
}

impl LoginLimit {
    /// `answer`: how long after it began a failure is answered.
    pub fn new(answer: Duration) -> Arc<LoginLimit> {
        Arc::new(LoginLimit {
            state: Mutex::new(State::default()),
            answer,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a turn of `source`'s (in order of arrival), or Busy at once when it has
    /// [`IN_FLIGHT`] under way and [`QUEUED`] waiting.
    pub async fn turn(self: &Arc<Self>, source: Source) -> Result<Turn, Refused> {
        let permits = {
            let mut state = self.lock();
            let q = state.queues.entry(source).or_insert_with(|| Queue {
                permits: Arc::new(Semaphore::new(IN_FLIGHT)),
                users: 0,
            });
            if q.users >= IN_FLIGHT + QUEUED {
                return Err(Refused::Busy);
            }
            q.users += 1;
            q.permits.clone()
        };
        let place = Place {
            limit: self.clone(),
            source,
        };
        let Ok(permit) = permits.acquire_owned().await else {
            return Err(Refused::Busy);
        };
        // The turn gives the place back instead.
        std::mem::forget(place);
        Ok(Turn {
            limit: self.clone(),
            source,
            _permit: permit,
        })
    }

    /// Counts a failure for (source, `name_key`) and for the source before the check, unless
    /// either is held back. [`LoginLimit::succeeded`] takes it back.
    pub fn reserve(&self, turn: &Turn, name_key: &str, now: Instant) -> Result<(), Refused> {
        let mut state = self.lock();
        let name = (turn.source, name_key.to_owned());
        if held(&state.names, &name, now, NAME_FREE, self.answer)
            || held(&state.sources, &turn.source, now, ADDR_FREE, self.answer)
        {
            return Err(Refused::HeldBack);
        }
        count(&mut state.names, &name, now);
        count(&mut state.sources, &turn.source, now);
        Ok(())
    }

    /// The check succeeded: clears its (source, name) and takes back the source's reserved
    /// failure (others' failures from the source stay).
    pub fn succeeded(&self, turn: &Turn, name_key: &str) {
        let mut state = self.lock();
        state.names.remove(&(turn.source, name_key.to_owned()));
        if let Some(b) = state.sources.get_mut(&turn.source) {
            b.fails = b.fails.saturating_sub(1);
        }
    }

    /// Entries in the two tables and queues (for tests and bounds).
    #[cfg(test)]
    pub fn sizes(&self) -> (usize, usize, usize) {
        let state = self.lock();
        (state.names.len(), state.sources.len(), state.queues.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: Duration = Duration::from_secs(1);

    fn src(s: &str) -> Source {
        Source::of(s.parse().unwrap())
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(src("2001:db8:1:2::1"), src("2001:db8:1:2:ffff::9"));
        assert_ne!(src("2001:db8:1:2::1"), src("2001:db8:1:3::1"));
        assert_eq!(src("::ffff:192.0.2.7"), src("192.0.2.7"));
        assert_ne!(src("192.0.2.7"), src("192.0.2.8"));
    }

    #[test]
    fn holds_grow_and_are_capped() {
        assert_eq!(hold(NAME_FREE - 1, NAME_FREE), Duration::ZERO);
        assert_eq!(hold(NAME_FREE, NAME_FREE), Duration::from_secs(2));
        assert_eq!(hold(NAME_FREE + 1, NAME_FREE), Duration::from_secs(4));
        assert_eq!(hold(NAME_FREE + 4, NAME_FREE), Duration::from_secs(32));
        assert_eq!(hold(NAME_FREE + 5, NAME_FREE), MAX_WAIT);
        assert_eq!(hold(u32::MAX, NAME_FREE), MAX_WAIT);
    }

    #[tokio::test]
    async fn reserved_before_the_check_and_cleared_per_name() {
        let limit = LoginLimit::new(ANSWER);
        let s = src("192.0.2.1");
        let now = Instant::now();
        let turn = limit.turn(s).await.unwrap();
        for _ in 0..NAME_FREE {
            limit.reserve(&turn, "alice", now).unwrap();
        }
        // Counted already, with no answer yet: held back at once.
        assert_eq!(limit.reserve(&turn, "alice", now), Err(Refused::HeldBack));
        // Another name from the same address is not; its success leaves alice's failures.
        limit.reserve(&turn, "bob", now).unwrap();
        limit.succeeded(&turn, "bob");
        assert_eq!(limit.reserve(&turn, "alice", now), Err(Refused::HeldBack));
        // Past the hold, one more try.
        let later = now + ANSWER + hold(NAME_FREE, NAME_FREE);
        limit.reserve(&turn, "alice", later).unwrap();
        assert_eq!(limit.reserve(&turn, "alice", later), Err(Refused::HeldBack));
        // Forgotten in the end.
        limit.reserve(&turn, "alice", later + FORGET).unwrap();
    }

    #[tokio::test]
    async fn an_address_spraying_names_is_held_back_too() {
        let limit = LoginLimit::new(ANSWER);
        let s = src("192.0.2.2");
        let now = Instant::now();
        let turn = limit.turn(s).await.unwrap();
        for i in 0..ADDR_FREE {
            limit.reserve(&turn, &format!("name{i}"), now).unwrap();
        }
        assert_eq!(limit.reserve(&turn, "fresh", now), Err(Refused::HeldBack));
        // Another address is not.
        let other = limit.turn(src("192.0.2.3")).await.unwrap();
        limit.reserve(&other, "fresh", now).unwrap();
    }

    #[tokio::test]
    async fn turns_are_bounded_per_address_and_given_back() {
        let limit = LoginLimit::new(ANSWER);
        let s = src("192.0.2.4");
        let held: Vec<Turn> = vec![limit.turn(s).await.unwrap(), limit.turn(s).await.unwrap()];
        // Two more wait in the queue...
        let waiting: Vec<_> = (0..QUEUED)
            .map(|_| {
                let limit = limit.clone();
                tokio::spawn(async move { limit.turn(s).await.map(drop) })
            })
            .collect();
        tokio::task::yield_now().await;
        while limit.lock().queues.get(&s).map_or(0, |q| q.users) < IN_FLIGHT + QUEUED {
            tokio::task::yield_now().await;
        }
        // ...and one more is refused at once, while another address gets its turn.
        assert!(matches!(limit.turn(s).await, Err(Refused::Busy)));
        drop(limit.turn(src("192.0.2.5")).await.unwrap());
        drop(held);
        for w in waiting {
            w.await.unwrap().unwrap();
        }
        assert_eq!(limit.sizes().2, 0, "no queue left behind");
    }

    #[test]
    fn tables_stay_bounded() {
        let mut table = HashMap::new();
        let now = Instant::now();
        for i in 0..(MAX_ENTRIES + 10) {
            count(&mut table, &i, now + Duration::from_nanos(i as u64));
        }
        assert!(table.len() <= MAX_ENTRIES);
        assert!(table.contains_key(&(MAX_ENTRIES + 9)), "the newest stays");
    }
}
