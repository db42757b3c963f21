//! The receiving side of a connection: what each decoded event means for the measurement
//! (a delivery's latency and order, the readiness marker, a sender's echo, a server error).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::lat::LatAgg;
use super::send::EchoShared;
use super::{ConnResult, Ctx, Spec};
use crate::proto::{self, Event, Target, Text};

/// A connection's receiving state.
pub(super) struct RecvState {
    target: Target,
    /// The connection's server: which of the thread's latency aggregates it records into.
    pub node: usize,
    own_client: u64,
    /// The sender (id) whose echo this member reports, where, and whether to notify it.
    own_echo: Option<(u64, Arc<EchoShared>, bool)>,
    /// The sender id of the room's first sender (the room's senders are consecutive).
    room_first_sid: u64,
    pub received: u64,
    /// Deliveries decoded since the last `take_batch`.
    pub batch: u64,
    /// Per sender of the room: the sequence number expected next.
    last_seq: Vec<u64>,
    pub out_of_order: u64,
    pub foreign: u64,
    /// The connection is ready: its own marker came back (Redis: subscribed).
    pub ready: bool,
    /// NATS `PING`s to answer.
    pub pongs: usize,
    pub server_errors: Vec<String>,
    /// When the last read was decoded, ns since the epoch.
    pub read_ns: u64,
}

impl RecvState {
    /// The receiving state of the connection `spec` (taking its `own_echo`). A connection that
    /// is no member (Redis publisher) receives nothing and is ready at once.
    pub(super) fn new(ctx: &Ctx, spec: &mut Spec) -> RecvState {
        RecvState {
            target: ctx.target,
            node: spec.node,
            own_client: spec.client as u64,
            own_echo: spec.own_echo.take(),
            room_first_sid: (spec.room * ctx.senders_per_room) as u64,
            received: 0,
            batch: 0,
            last_seq: vec![0; ctx.senders_per_room],
            out_of_order: 0,
            foreign: 0,
            ready: !spec.member,
            pongs: 0,
            server_errors: Vec::new(),
            read_ns: 0,
        }
    }

    #[inline(always)]
    pub(super) fn on_event(&mut self, ev: Event<'_>, now_ns: u64, lat: &mut LatAgg) {
        match ev {
            Event::Payload(p) => self.on_text(proto::parse_payload(p), now_ns, lat),
            Event::Text(t) => self.on_text(proto::parse_text(t), now_ns, lat),
            Event::Subscribed => {
                if self.target == Target::Redis {
                    self.ready = true;
                }
            }
            Event::Ping => self.pongs += 1,
            Event::Error(e) => self.server_error(String::from_utf8_lossy(e).into_owned()),
            Event::Notice(_) | Event::Pong | Event::Other => {}
        }
    }

    /// Keeps the first few errors the server reported.
    #[cold]
    pub(super) fn server_error(&mut self, e: String) {
        if self.server_errors.len() < 3 {
            self.server_errors.push(e);
        }
    }

    #[inline(always)]
    fn on_text(&mut self, text: Text, now_ns: u64, lat: &mut LatAgg) {
        match text {
            Text::Measured {
                sender,
                seq,
                sent_ns,
            } => {
                self.batch += 1;
                let us = now_ns.saturating_sub(sent_ns) / 1000;
                lat.record(us);
                let local = sender.wrapping_sub(self.room_first_sid) as usize;
                match self.last_seq.get_mut(local) {
                    Some(last) => {
                        if seq < *last {
                            self.out_of_order += 1;
                        }
                        *last = seq + 1;
                    }
                    None => self.foreign += 1,
                }
                if let Some((sid, shared, notify)) = &self.own_echo {
                    if *sid == sender {
                        shared.echoed.fetch_max(seq + 1, Relaxed);
                        if *notify {
                            shared.notify.notify_one();
                        }
                    }
                }
            }
            Text::Ready { client } => {
                if client == self.own_client && self.target != Target::Redis {
                    self.ready = true;
                }
            }
            Text::Foreign => self.foreign += 1,
        }
    }

    /// Counts the deliveries decoded since the last call (once per read, not per message):
    /// in this connection, in the run's progress, and as its last delivery time.
    pub(super) fn take_batch(&mut self, ctx: &Ctx, res: &mut ConnResult) {
        if self.batch > 0 {
            self.received += self.batch;
            ctx.received.fetch_add(self.batch, Relaxed);
            self.batch = 0;
            res.last_delivery_ns = self.read_ns;
        }
    }

    /// The error for a connection the server closed: with the last thing it said, if any.
    pub(super) fn closed_error(&self) -> String {
        match self.server_errors.first() {
            Some(e) => format!("connection closed by the server after: {e}"),
            None => "connection closed by the server".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::schedule::Schedule;
    use crate::fanout::testing::{test_ctx, test_spec};

    const SCHEDULE: Schedule = Schedule {
        interval_ns: 0,
        messages: None,
        duration_ns: None,
    };

    fn measured(sender: u64, seq: u64, sent_ns: u64) -> Vec<u8> {
        let mut t = Vec::new();
        proto::measured_text(sender, seq, sent_ns, 64, &mut t);
        let mut p = b"c0:".to_vec();
        p.extend_from_slice(&t);
        p
    }

    #[test]
    fn deliveries_are_counted_timed_and_checked_for_order() {
        let mut ctx = test_ctx(Target::Machat, SCHEDULE, 100, vec![4, 4]);
        ctx.senders_per_room = 2;
        // Room 1: senders 2 and 3.
        let mut spec = test_spec(1);
        let mut recv = RecvState::new(&ctx, &mut spec);
        let mut lat = LatAgg::new();
        for (sender, seq) in [(2, 0), (3, 0), (2, 1), (2, 3), (2, 2), (0, 0), (4, 0)] {
            recv.on_event(
                Event::Payload(&measured(sender, seq, 1_000_000)),
                3_500_000,
                &mut lat,
            );
        }
        recv.on_event(Event::Payload(b"c9:hello"), 3_500_000, &mut lat);
        assert_eq!(recv.batch, 7);
        assert_eq!(recv.out_of_order, 1);
        assert_eq!(recv.foreign, 3); // senders 0 and 4 are not of this room; "hello" is no bench text
        let mut res = ConnResult::default();
        recv.read_ns = 42;
        recv.take_batch(&ctx, &mut res);
        assert_eq!((recv.received, recv.batch), (7, 0));
        assert_eq!(ctx.received.load(Relaxed), 7);
        assert_eq!(res.last_delivery_ns, 42);
        recv.read_ns = 43;
        recv.take_batch(&ctx, &mut res);
        assert_eq!(
            res.last_delivery_ns, 42,
            "no deliveries, no new delivery time"
        );
        let h = lat.histogram();
        assert_eq!((h.len(), h.count_at(2_500)), (7, 7));
    }

    #[test]
    fn own_echoes_advance_the_senders_window() {
        let ctx = test_ctx(Target::Redis, SCHEDULE, 100, vec![2]);
        let mut spec = test_spec(0);
        let shared = EchoShared::new();
        spec.own_echo = Some((0, shared.clone(), true));
        let mut recv = RecvState::new(&ctx, &mut spec);
        let mut lat = LatAgg::new();
        recv.on_event(Event::Payload(&measured(0, 4, 0)), 0, &mut lat);
        recv.on_event(Event::Payload(&measured(0, 2, 0)), 0, &mut lat);
        assert_eq!(shared.echoed.load(Relaxed), 5);
        // The notify stored a permit for the publishing task.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(1), shared.notify.notified())
                .await
                .unwrap()
        });
    }

    #[test]
    fn readiness_is_the_own_marker_or_for_redis_the_subscription() {
        let ctx = test_ctx(Target::Machat, SCHEDULE, 100, vec![2]);
        let mut spec = test_spec(0);
        spec.client = 7;
        let mut recv = RecvState::new(&ctx, &mut spec);
        let mut lat = LatAgg::new();
        assert!(!recv.ready);
        recv.on_event(Event::Subscribed, 0, &mut lat);
        recv.on_event(Event::Payload(b"c6:r 6"), 0, &mut lat);
        assert!(!recv.ready);
        recv.on_event(Event::Payload(b"c7:r 7"), 0, &mut lat);
        assert!(recv.ready);

        let redis = test_ctx(Target::Redis, SCHEDULE, 100, vec![2]);
        let mut spec = test_spec(0);
        let mut recv = RecvState::new(&redis, &mut spec);
        recv.on_event(Event::Payload(b"c0:r 0"), 0, &mut lat);
        assert!(!recv.ready);
        recv.on_event(Event::Subscribed, 0, &mut lat);
        assert!(recv.ready);

        spec.member = false;
        assert!(
            RecvState::new(&redis, &mut spec).ready,
            "a publisher is ready at once"
        );
    }

    #[test]
    fn pings_errors_and_closing() {
        let ctx = test_ctx(Target::Nats, SCHEDULE, 100, vec![2]);
        let mut spec = test_spec(0);
        let mut recv = RecvState::new(&ctx, &mut spec);
        let mut lat = LatAgg::new();
        assert_eq!(recv.closed_error(), "connection closed by the server");
        recv.on_event(Event::Ping, 0, &mut lat);
        recv.on_event(Event::Ping, 0, &mut lat);
        assert_eq!(recv.pongs, 2);
        for e in ["a", "b", "c", "d"] {
            recv.on_event(Event::Error(e.as_bytes()), 0, &mut lat);
        }
        assert_eq!(recv.server_errors, ["a", "b", "c"]);
        assert_eq!(
            recv.closed_error(),
            "connection closed by the server after: a"
        );
    }
}
