//! Warnings that could come once per event, said at most once a second.
//!
//! A cluster node whose NATS is down or slow refuses every event its members send: one log
//! line each would let a room full of senders turn the log into the flood (disk, journald's
//! rate limit hiding other lines). A [`LogGate`] lets the first line through, then one a
//! second, each saying how many it held back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds between two lines of one gate.
const EVERY_MS: u64 = 1000;
/// "Never said": the first line always goes through.
const NEVER: u64 = u64::MAX;

/// One kind of warning's gate (a `static` or a field: it is shared between threads).
pub struct LogGate {
    /// When the last line went through, in ms since [`epoch`], or [`NEVER`].
    last: AtomicU64,
    /// Lines held back since it.
    held: AtomicU64,
}

impl LogGate {
    pub const fn new() -> Self {
        LogGate {
            last: AtomicU64::new(NEVER),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when this line is to be logged.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(epoch().elapsed().as_millis() as u64)
    }

    fn admit_at(&self, now: u64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        let due = last == NEVER || now.saturating_sub(last) >= EVERY_MS;
        // One thread of those that find it due says it.
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl Default for LogGate {
    fn default() -> Self {
        Self::new()
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

#[cfg(test)]
mod tests {
    use super::LogGate;

    #[test]
    fn the_first_line_goes_then_one_a_second_with_the_count_held_back() {
        let gate = LogGate::new();
        assert_eq!(gate.admit_at(5), Some(0));
        for ms in 6..1005 {
            assert_eq!(gate.admit_at(ms), None, "at {ms} ms");
        }
        assert_eq!(gate.admit_at(1005), Some(999));
        assert_eq!(gate.admit_at(1006), None);
        // A quiet spell: the next line goes at once and says what was held back before it.
        assert_eq!(gate.admit_at(60_000), Some(1));
        assert_eq!(gate.admit_at(60_001), None);
    }

    #[test]
    fn many_threads_at_once_let_one_line_through() {
        let gate = std::sync::Arc::new(LogGate::new());
        let said: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let gate = gate.clone();
                    s.spawn(move || (0..10_000).filter(|_| gate.admit_at(7).is_some()).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(said, 1);
        assert_eq!(gate.admit_at(1007), Some(39_999));
    }
}
