//! When the senders send: the schedule every sender follows, and the pacer thread that wakes
//! paced senders (`--rate > 0`) on time.
//!
//! Each sender has an absolute schedule (no drift), staggered across senders within one
//! interval; a message is stamped with its *intended* send time, so a late generator or a
//! stalled server shows as latency (no coordinated omission).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::send::EchoShared;

/// The run's sending schedule; times are ns since the bench's epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Schedule {
    /// Per-sender interval between messages, ns (0 = as fast as possible).
    pub interval_ns: u64,
    /// Messages per sender (`--messages`), if limited.
    pub messages: Option<u64>,
    /// Sending time (`--duration`), if limited.
    pub duration_ns: Option<u64>,
}

impl Schedule {
    /// Whether senders follow a timetable (`--rate > 0`) rather than send as fast as they can.
    #[inline(always)]
    pub(super) fn paced(&self) -> bool {
        self.interval_ns > 0
    }

    /// Where the sender `sid` of `senders` starts within one interval (the stagger).
    pub(super) fn offset_ns(&self, sid: u64, senders: u64) -> u64 {
        self.interval_ns * sid / senders
    }

    /// When message `seq` of a paced sender staggered by `offset_ns` is due.
    #[inline(always)]
    fn paced_at(&self, start_ns: u64, offset_ns: u64, seq: u64) -> u64 {
        start_ns + offset_ns + seq * self.interval_ns
    }

    /// When message `seq` of the sender staggered by `offset_ns` is due: its time in the
    /// timetable, or, as fast as possible, now.
    #[inline(always)]
    pub(super) fn due_ns(&self, start_ns: u64, offset_ns: u64, seq: u64, now_ns: u64) -> u64 {
        if self.paced() {
            self.paced_at(start_ns, offset_ns, seq)
        } else {
            now_ns
        }
    }

    /// Whether message `seq`, due at `due_ns`, is past the end of sending (`--messages` sent,
    /// or `--duration` over).
    #[inline(always)]
    pub(super) fn is_over(&self, start_ns: u64, seq: u64, due_ns: u64) -> bool {
        self.messages.is_some_and(|n| seq >= n)
            || self.duration_ns.is_some_and(|d| due_ns >= start_ns + d)
    }

    /// As fast as possible with a `--duration`: when sending ends. A sender blocked on its
    /// window must wake up then to see that it is done.
    pub(super) fn unpaced_end_ns(&self, start_ns: u64) -> Option<u64> {
        if self.paced() {
            None
        } else {
            self.duration_ns.map(|d| start_ns + d)
        }
    }

    /// Every message's due time over all `senders`, in time order, as (sender id, ns).
    pub(super) fn slots(&self, start_ns: u64, senders: u64) -> Slots {
        Slots {
            schedule: *self,
            start_ns,
            senders,
            next: 0,
        }
    }
}

/// The paced schedule as one sequence: message 0 of every sender (staggered), then message 1
/// of every sender, ... until the end of sending. See [`Schedule::slots`].
pub(super) struct Slots {
    schedule: Schedule,
    start_ns: u64,
    senders: u64,
    /// The next slot: sender `next % senders`, message `next / senders`.
    next: u64,
}

impl Iterator for Slots {
    type Item = (usize, u64);

    fn next(&mut self) -> Option<(usize, u64)> {
        if self.senders == 0 {
            return None;
        }
        let (sid, seq) = (self.next % self.senders, self.next / self.senders);
        let s = &self.schedule;
        let t = s.paced_at(self.start_ns, s.offset_ns(sid, self.senders), seq);
        if s.is_over(self.start_ns, seq, t) {
            return None; // times only grow: every later slot is over too
        }
        self.next += 1;
        Some((sid as usize, t))
    }
}

/// Paces senders for `--rate > 0`: tokio's timer has 1 ms ticks, which would add ~1 ms of
/// generator lag to every latency; a plain thread sleeping with the kernel's timer (slack set
/// to 1 ns) wakes each sender within tens of microseconds of its scheduled time. Senders still
/// decide from the clock what is due, so a late wake-up only shows as latency.
pub(super) struct Pacer {
    pub epoch: Instant,
    pub start_ns: u64,
    pub schedule: Schedule,
    /// Sender notifies, indexed by sender id.
    pub targets: Vec<Arc<EchoShared>>,
    pub stop: Arc<AtomicBool>,
}

impl Pacer {
    /// Starts the pacer thread when the schedule is paced; it ends at the end of sending or
    /// when `stop` is set.
    pub(super) fn spawn(self) -> Option<std::thread::JoinHandle<()>> {
        self.schedule
            .paced()
            .then(|| std::thread::spawn(move || self.run()))
    }

    fn run(self) {
        // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
        }
        let senders = self.targets.len() as u64;
        for (sid, t) in self.schedule.slots(self.start_ns, senders) {
            loop {
                if self.stop.load(Relaxed) {
                    return;
                }
                let now = self.epoch.elapsed().as_nanos() as u64;
                if t <= now {
                    break;
                }
                // Sleep in slices so that a stop is noticed.
                std::thread::sleep(Duration::from_nanos((t - now).min(50_000_000)));
            }
            self.targets[sid].notify.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paced(interval_ns: u64, messages: Option<u64>, duration_ns: Option<u64>) -> Schedule {
        Schedule {
            interval_ns,
            messages,
            duration_ns,
        }
    }

    #[test]
    fn paced_messages_are_due_on_a_staggered_timetable() {
        let s = paced(1000, None, None);
        assert!(s.paced());
        assert_eq!(s.offset_ns(0, 4), 0);
        assert_eq!(s.offset_ns(3, 4), 750);
        // Due times do not depend on the clock.
        assert_eq!(s.due_ns(10, 750, 0, 99_999), 760);
        assert_eq!(s.due_ns(10, 750, 2, 0), 2760);
        assert_eq!(s.unpaced_end_ns(10), None);
    }

    #[test]
    fn unpaced_messages_are_due_now() {
        let s = paced(0, None, Some(5_000));
        assert!(!s.paced());
        assert_eq!(s.offset_ns(3, 4), 0);
        assert_eq!(s.due_ns(10, 0, 7, 1234), 1234);
        assert_eq!(s.unpaced_end_ns(10), Some(5_010));
    }

    #[test]
    fn sending_ends_at_the_message_count_or_the_duration() {
        let by_count = paced(0, Some(3), None);
        assert!(!by_count.is_over(0, 2, u64::MAX / 2));
        assert!(by_count.is_over(0, 3, 0));
        let by_time = paced(100, None, Some(1_000));
        assert!(!by_time.is_over(50, 1_000_000, 1_049));
        assert!(by_time.is_over(50, 0, 1_050));
        let both = paced(100, Some(2), Some(1_000));
        assert!(both.is_over(0, 2, 10));
        assert!(both.is_over(0, 0, 1_000));
        let endless = paced(0, None, None);
        assert!(!endless.is_over(0, u64::MAX / 2, u64::MAX / 2));
    }

    #[test]
    fn slots_go_round_the_senders_in_time_order_until_the_count() {
        let slots: Vec<_> = paced(1000, Some(2), None).slots(10, 2).collect();
        assert_eq!(slots, [(0, 10), (1, 510), (0, 1010), (1, 1510)]);
    }

    #[test]
    fn slots_end_with_the_duration() {
        let slots: Vec<_> = paced(1000, None, Some(1500)).slots(10, 2).collect();
        assert_eq!(slots, [(0, 10), (1, 510), (0, 1010)]);
        let three: Vec<_> = paced(900, None, Some(900)).slots(0, 3).collect();
        assert_eq!(three, [(0, 0), (1, 300), (2, 600)]);
    }

    #[test]
    fn no_senders_no_slots() {
        assert_eq!(paced(1000, None, Some(1500)).slots(0, 0).count(), 0);
    }

    #[test]
    fn the_pacer_wakes_each_sender_once_per_message() {
        use std::sync::atomic::AtomicU64;
        use tokio::sync::Notify;
        let targets: Vec<_> = (0..3)
            .map(|_| {
                Arc::new(EchoShared {
                    echoed: AtomicU64::new(0),
                    notify: Notify::new(),
                })
            })
            .collect();
        let epoch = Instant::now();
        let pacer = Pacer {
            epoch,
            start_ns: epoch.elapsed().as_nanos() as u64,
            schedule: paced(1_000_000, Some(2), None),
            targets: targets.clone(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        pacer.spawn().unwrap().join().unwrap();
        // notify_one stores one permit: each sender has been woken (at least once).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        for t in &targets {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(1), t.notify.notified())
                    .await
                    .unwrap()
            });
        }
        assert!(epoch.elapsed() >= Duration::from_millis(1));
    }

    #[test]
    fn an_unpaced_schedule_needs_no_pacer() {
        let pacer = Pacer {
            epoch: Instant::now(),
            start_ns: 0,
            schedule: paced(0, None, Some(1)),
            targets: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        assert!(pacer.spawn().is_none());
    }
}
