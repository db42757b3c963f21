//! The sending side of a connection: generating a sender's measured messages into the output
//! buffer on schedule and within its window, and accounting for them once they are written.
//!
//! Flow control: a sender never has more than `--window` of its own messages written but not
//! yet seen echoed back on its member connection (`EchoShared::echoed`). "As fast as possible"
//! thus measures delivery, not the growth of a queue in the kernel or the server.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use hdrhistogram::Histogram;
use tokio::sync::Notify;

use super::lat::new_hist;
use super::{Ctx, SenderSpec, Spec};
use crate::proto;

/// A sender's echo progress, shared between the connection that sends and the member
/// connection that sees its messages come back (the same one, except for Redis, whose
/// subscribed connection cannot publish); the pacer wakes paced senders through `notify` too.
pub(super) struct EchoShared {
    /// The sender's messages seen back so far (the highest sequence number + 1).
    pub echoed: AtomicU64,
    /// Wakes the sender: an echo from another task (Redis) or the pacer's tick.
    pub notify: Notify,
}

impl EchoShared {
    pub(super) fn new() -> Arc<EchoShared> {
        Arc::new(EchoShared {
            echoed: AtomicU64::new(0),
            notify: Notify::new(),
        })
    }
}

/// What the sender's generator did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Fill {
    /// Nothing to send before this time (ns since epoch).
    At(u64),
    /// The window is full: wait for echoes.
    Blocked,
    /// The output batch is full: write, then fill again.
    Full,
    /// All messages generated.
    Done,
}

/// Output bytes a sender generates before they are written (many messages per `write`).
pub(super) const BATCH: usize = 64 * 1024;

/// A sender's progress through its schedule.
pub(super) struct SendState {
    pub spec: SenderSpec,
    /// Messages generated so far (the next one's sequence number).
    pub next_seq: u64,
    /// The schedule is over: nothing more to generate.
    pub done_gen: bool,
    /// The run has been told this sender is done (`Ctx::senders_done`, `Ctx::expected`).
    announced: bool,
    /// Absolute output-byte offsets where each not yet fully written message ends.
    pub ends: VecDeque<u64>,
    /// The text of the message being generated (reused).
    text: Vec<u8>,
    /// When the last of this sender's messages was fully written, ns since the epoch.
    pub last_send_ns: u64,
    /// How late (us) each message was generated relative to its schedule (rate > 0).
    pub lag: Histogram<u64>,
}

impl SendState {
    pub(super) fn new(spec: SenderSpec, payload: usize) -> SendState {
        SendState {
            spec,
            next_seq: 0,
            done_gen: false,
            announced: false,
            ends: VecDeque::new(),
            text: Vec::with_capacity(payload + 64),
            last_send_ns: 0,
            lag: new_hist(),
        }
    }

    /// Appends to `out` (whose first byte is at absolute offset `out_base`) every message that
    /// is due by `now_ns`, as far as the window and the batch allow; says why it stopped.
    pub(super) fn fill(
        &mut self,
        ctx: &Ctx,
        spec: &Spec,
        start_ns: u64,
        now_ns: u64,
        out: &mut Vec<u8>,
        out_base: u64,
    ) -> Fill {
        loop {
            if self.done_gen {
                return Fill::Done;
            }
            let sched = ctx
                .schedule
                .due_ns(start_ns, self.spec.offset_ns, self.next_seq, now_ns);
            if ctx.schedule.is_over(start_ns, self.next_seq, sched) {
                self.done_gen = true;
                continue;
            }
            let echoed = self.spec.shared.echoed.load(Relaxed);
            if self.next_seq.saturating_sub(echoed) >= ctx.window {
                return Fill::Blocked;
            }
            if sched > now_ns {
                return Fill::At(sched);
            }
            if out.len() >= BATCH {
                return Fill::Full;
            }
            self.lag
                .saturating_record(now_ns.saturating_sub(sched) / 1000);
            proto::measured_text(
                self.spec.sid,
                self.next_seq,
                sched,
                ctx.payload,
                &mut self.text,
            );
            proto::message(ctx.target, &spec.name, &spec.room_name, &self.text, out);
            self.ends.push_back(out_base + out.len() as u64);
            self.next_seq += 1;
        }
    }

    /// Notes that the output up to absolute offset `written` is on the wire: the messages it
    /// completes count as sent now. Once the schedule is over and everything is written, tells
    /// the run (once) that this sender is done and how many deliveries its room should see.
    pub(super) fn account_written(&mut self, ctx: &Ctx, room: usize, written: u64) {
        let mut popped = false;
        while self.ends.front().is_some_and(|&e| e <= written) {
            self.ends.pop_front();
            popped = true;
        }
        if popped {
            self.last_send_ns = ctx.now_ns();
        }
        if self.done_gen && self.ends.is_empty() && !self.announced {
            self.announced = true;
            let members = ctx.room_members[room];
            ctx.expected.fetch_add(self.next_seq * members, Relaxed);
            ctx.senders_done.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::schedule::Schedule;
    use crate::fanout::testing::{test_ctx, test_spec};
    use crate::proto::{Target, Text};

    fn sender(sid: u64, offset_ns: u64) -> SendState {
        SendState::new(
            SenderSpec {
                sid,
                offset_ns,
                shared: EchoShared::new(),
                wait_notify: false,
            },
            64,
        )
    }

    fn unpaced(messages: Option<u64>) -> Schedule {
        Schedule {
            interval_ns: 0,
            messages,
            duration_ns: None,
        }
    }

    /// The measured texts in machat lines.
    fn texts(out: &[u8]) -> Vec<(u64, u64, u64)> {
        out.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| match proto::parse_text(l) {
                Text::Measured {
                    sender,
                    seq,
                    sent_ns,
                } => (sender, seq, sent_ns),
                t => panic!("not a measured text: {t:?}"),
            })
            .collect()
    }

    #[test]
    fn as_fast_as_possible_stops_at_the_window() {
        let ctx = test_ctx(Target::Machat, unpaced(None), 3, vec![2]);
        let spec = test_spec(0);
        let mut s = sender(5, 0);
        let mut out = Vec::new();
        assert_eq!(s.fill(&ctx, &spec, 0, 1_000, &mut out, 100), Fill::Blocked);
        assert_eq!(texts(&out), [(5, 0, 1_000), (5, 1, 1_000), (5, 2, 1_000)]);
        let line = out.len() as u64 / 3;
        assert_eq!(s.ends, [100 + line, 100 + 2 * line, 100 + 3 * line]);
        assert_eq!(out.len(), 3 * (64 + 1));
        // Two echoes seen: two more fit.
        s.spec.shared.echoed.store(2, Relaxed);
        let mut more = Vec::new();
        assert_eq!(s.fill(&ctx, &spec, 0, 2_000, &mut more, 0), Fill::Blocked);
        assert_eq!(texts(&more), [(5, 3, 2_000), (5, 4, 2_000)]);
        assert_eq!(s.lag.len(), 5);
        assert_eq!(s.lag.max(), 0);
    }

    #[test]
    fn the_message_count_ends_generation() {
        let ctx = test_ctx(Target::Machat, unpaced(Some(2)), 100, vec![1]);
        let spec = test_spec(0);
        let mut s = sender(0, 0);
        let mut out = Vec::new();
        assert_eq!(s.fill(&ctx, &spec, 0, 0, &mut out, 0), Fill::Done);
        assert_eq!(s.next_seq, 2);
        assert!(s.done_gen);
        assert_eq!(s.fill(&ctx, &spec, 0, 0, &mut out, 0), Fill::Done);
        assert_eq!(s.next_seq, 2);
    }

    #[test]
    fn a_full_batch_stops_generation_until_written() {
        let ctx = test_ctx(Target::Machat, unpaced(None), u64::MAX, vec![1]);
        let spec = test_spec(0);
        let mut s = sender(0, 0);
        let mut out = Vec::new();
        assert_eq!(s.fill(&ctx, &spec, 0, 0, &mut out, 0), Fill::Full);
        assert!(out.len() >= BATCH && out.len() < BATCH + 65);
        assert_eq!(s.next_seq as usize, out.len() / 65);
    }

    #[test]
    fn paced_messages_wait_for_their_time_and_record_lateness() {
        let schedule = Schedule {
            interval_ns: 1_000_000,
            messages: None,
            duration_ns: Some(10_000_000),
        };
        let ctx = test_ctx(Target::Machat, schedule, 100, vec![1]);
        let spec = test_spec(0);
        let mut s = sender(1, 500_000);
        let mut out = Vec::new();
        // Start at 1 ms: message 0 is due at 1.5 ms.
        assert_eq!(
            s.fill(&ctx, &spec, 1_000_000, 1_000_000, &mut out, 0),
            Fill::At(1_500_000)
        );
        assert!(out.is_empty());
        // At 2.7 ms: messages 0 (1.2 ms late) and 1 (0.2 ms late), stamped with their due time.
        assert_eq!(
            s.fill(&ctx, &spec, 1_000_000, 2_700_000, &mut out, 0),
            Fill::At(3_500_000)
        );
        assert_eq!(texts(&out), [(1, 0, 1_500_000), (1, 1, 2_500_000)]);
        assert_eq!(s.lag.max(), 1_200);
        assert_eq!(s.lag.min(), 200);
        // The duration (10 ms) is over after message 9 (due at 10.5 ms from a 1 ms start).
        assert_eq!(
            s.fill(&ctx, &spec, 1_000_000, 20_000_000, &mut out, 0),
            Fill::Done
        );
        assert_eq!(s.next_seq, 10);
    }

    #[test]
    fn written_output_sends_messages_and_announces_the_end_once() {
        let ctx = test_ctx(Target::Machat, unpaced(Some(2)), 100, vec![7, 3]);
        let spec = test_spec(1);
        let mut s = sender(0, 0);
        let mut out = Vec::new();
        assert_eq!(s.fill(&ctx, &spec, 0, 0, &mut out, 0), Fill::Done);
        s.account_written(&ctx, 1, 64);
        assert_eq!(s.ends.len(), 2);
        assert_eq!(s.last_send_ns, 0);
        s.account_written(&ctx, 1, 65);
        assert_eq!(s.ends.len(), 1);
        assert!(s.last_send_ns > 0);
        assert_eq!(ctx.senders_done.load(Relaxed), 0);
        s.account_written(&ctx, 1, 130);
        assert!(s.ends.is_empty());
        assert_eq!(ctx.senders_done.load(Relaxed), 1);
        assert_eq!(ctx.expected.load(Relaxed), 2 * 3);
        s.account_written(&ctx, 1, 130);
        assert_eq!(ctx.senders_done.load(Relaxed), 1);
        assert_eq!(ctx.expected.load(Relaxed), 6);
    }
}
