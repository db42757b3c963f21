//! The line rate limit: a token bucket.

use std::time::{Duration, Instant};

/// A token bucket: `rate` lines a second sustained, `burst` at once.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    pub fn new(rate: f64, burst: u32) -> Option<Self> {
        (rate > 0.0).then(|| RateLimit {
            rate,
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
        })
    }

    fn refill(&mut self, now: Instant) {
        let earned = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.last = now;
    }

    /// Spends one line. Returns when the next line may be read, if not right away.
    pub fn spend(&mut self, now: Instant) -> Option<Instant> {
        self.refill(now);
        self.tokens -= 1.0;
        if self.tokens >= 1.0 {
            return None;
        }
        let wait = (1.0 - self.tokens) / self.rate;
        Some(now + Duration::from_secs_f64(wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_a_burst_then_paces() {
        let start = Instant::now();
        let mut l = RateLimit::new(10.0, 3).unwrap();
        assert_eq!(l.spend(start), None);
        assert_eq!(l.spend(start), None);
        let until = l.spend(start).unwrap();
        assert!(until > start && until <= start + Duration::from_millis(101));
        // After a second the bucket is full again, but never above the burst.
        let later = start + Duration::from_secs(5);
        assert_eq!(l.spend(later), None);
        assert_eq!(l.spend(later), None);
        assert!(l.spend(later).is_some());
        assert!(RateLimit::new(0.0, 10).is_none());
    }
}
