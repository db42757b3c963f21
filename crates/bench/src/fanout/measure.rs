//! Driving a run's connections through its phases: start them, wait until every one is ready,
//! then the measurement window (server and generator samples at its edges, the pacer in
//! between, and the decision when it is over), and collect what they report.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::conn::{conn_task, ConnResult, Phase};
use super::plan::{Plan, Spec};
use super::report::Window;
use super::schedule::Pacer;
use super::send::EchoShared;
use super::Ctx;
use crate::procstat;

/// The run's connection tasks and the phase they follow.
pub(super) struct Connections {
    handles: Vec<JoinHandle<ConnResult>>,
    phase: watch::Sender<Phase>,
}

impl Connections {
    /// Starts one task per connection, in the `Ready` phase (connect, then readiness).
    pub(super) fn spawn(ctx: &Arc<Ctx>, specs: Vec<Spec>) -> Connections {
        let (phase, phase_rx) = watch::channel(Phase::Ready);
        let handles = (specs.into_iter())
            .map(|s| tokio::spawn(conn_task(ctx.clone(), s, phase_rx.clone())))
            .collect();
        Connections { handles, phase }
    }

    /// Waits until every connection is connected and every member saw its own marker come back
    /// (Redis: its subscribe confirmation), so that no measured message meets a member still
    /// joining. On the first failure, or after `timeout`, stops them all and says why.
    pub(super) async fn wait_ready(&mut self, ctx: &Ctx, timeout: Duration) -> Result<(), String> {
        let connections = self.handles.len();
        let deadline = Instant::now() + timeout;
        loop {
            let ready = ctx.ready.load(Relaxed);
            if ready == connections {
                return Ok(());
            }
            let failed = ctx.failed.load(Relaxed);
            if failed > 0 || Instant::now() > deadline {
                let _ = self.phase.send(Phase::Stop);
                let mut first = None;
                for h in std::mem::take(&mut self.handles) {
                    if let Ok(r) = h.await {
                        if first.is_none() {
                            first = r.error;
                        }
                    }
                }
                return Err(format!(
                    "readiness failed: {ready}/{connections} ready, {failed} failed{}",
                    first
                        .map(|e| format!(" (first error: {e})"))
                        .unwrap_or_default()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The measurement: samples the server processes and the generator's CPU, lets the senders
    /// go (with the pacer for a paced schedule) until [`EndWatch`] says it is over, samples
    /// again and stops every connection.
    pub(super) async fn measure(
        &self,
        ctx: &Ctx,
        plan: &Plan,
        drain: Duration,
        server_pids: &[u32],
        pace_targets: Vec<Arc<EchoShared>>,
    ) -> Result<Window, String> {
        let servers_before = procstat::sample_all(server_pids)?;
        let cpu0 = procstat::self_cpu_s();
        let start_ns = ctx.now_ns();
        let _ = self.phase.send(Phase::Run { start_ns });
        let pacer_stop = Arc::new(AtomicBool::new(false));
        let pacer = Pacer {
            epoch: ctx.epoch,
            start_ns,
            schedule: ctx.schedule,
            targets: pace_targets,
            stop: pacer_stop.clone(),
        }
        .spawn();
        let end = self.wait_for_end(ctx, plan, drain).await;
        let servers_after = procstat::sample_all(server_pids)?;
        let cpu1 = procstat::self_cpu_s();
        let _ = self.phase.send(Phase::Stop);
        pacer_stop.store(true, Relaxed);
        if let Some(p) = pacer {
            let _ = p.join();
        }
        Ok(Window {
            start_ns,
            servers_before,
            servers_after,
            gen_cpu_s: cpu1 - cpu0,
            stalled: end == End::Stalled,
        })
    }

    /// Looks at the run's progress every 5 ms until the window is over.
    async fn wait_for_end(&self, ctx: &Ctx, plan: &Plan, drain: Duration) -> End {
        let connections = self.handles.len();
        let interval_ns = plan.schedule.interval_ns;
        let mut watch = EndWatch::new(drain, interval_ns, plan.total_senders, connections);
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let progress = Progress {
                received: ctx.received.load(Relaxed),
                senders_done: ctx.senders_done.load(Relaxed),
                expected: ctx.expected.load(Relaxed),
                failed: ctx.failed.load(Relaxed),
            };
            if let Some(end) = watch.check(Instant::now(), progress) {
                return end;
            }
        }
    }

    /// What every connection reported (after `measure` stopped them), in spec order.
    pub(super) async fn join(self) -> Result<Vec<ConnResult>, String> {
        let mut results = Vec::with_capacity(self.handles.len());
        for h in self.handles {
            results.push(h.await.map_err(|e| format!("task failed: {e}"))?);
        }
        Ok(results)
    }
}

/// The run's counters, as the window's watch reads them.
#[derive(Clone, Copy, Debug)]
struct Progress {
    received: u64,
    senders_done: usize,
    expected: u64,
    failed: usize,
}

/// How a measurement window ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Every sender finished, and every expected delivery arrived or the drain time passed.
    Done,
    /// Senders could not finish and nothing arrived for too long (or every connection failed):
    /// the server stalled.
    Stalled,
}

/// Decides when the measurement window is over. After the last send the bench waits until
/// every expected delivery arrived or `--drain-timeout` passed; while senders are still at it
/// (e.g. blocked on their window), no delivery for the longer of the drain time and 1 s (plus
/// two send intervals) means the server stalled.
struct EndWatch {
    drain: Duration,
    stall_after: Duration,
    senders: usize,
    connections: usize,
    /// When every sender was seen done.
    sends_done_at: Option<Instant>,
    /// Deliveries last seen, and when they last changed.
    last_progress: (u64, Instant),
}

impl EndWatch {
    fn new(drain: Duration, interval_ns: u64, senders: usize, connections: usize) -> EndWatch {
        EndWatch {
            drain,
            stall_after: drain.max(Duration::from_secs(1)) + Duration::from_nanos(interval_ns * 2),
            senders,
            connections,
            sends_done_at: None,
            last_progress: (0, Instant::now()),
        }
    }

    fn check(&mut self, now: Instant, p: Progress) -> Option<End> {
        if p.received != self.last_progress.0 {
            self.last_progress = (p.received, now);
        }
        if p.senders_done == self.senders {
            let t = *self.sends_done_at.get_or_insert(now);
            if p.received >= p.expected || now - t > self.drain {
                return Some(End::Done);
            }
        } else if p.failed == self.connections || now - self.last_progress.1 > self.stall_after {
            return Some(End::Stalled);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::schedule::Schedule;
    use crate::fanout::testing::{test_ctx, test_spec};
    use crate::proto::Target;

    fn progress(received: u64, senders_done: usize, expected: u64, failed: usize) -> Progress {
        Progress {
            received,
            senders_done,
            expected,
            failed,
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_window_ends_when_everything_arrived() {
        let mut w = EndWatch::new(5 * SECOND, 0, 2, 10);
        let t0 = Instant::now();
        assert_eq!(w.check(t0, progress(10, 1, 0, 0)), None);
        assert_eq!(w.check(t0, progress(20, 2, 30, 0)), None);
        assert_eq!(
            w.check(t0 + SECOND, progress(30, 2, 30, 0)),
            Some(End::Done)
        );
    }

    #[test]
    fn the_window_ends_after_the_drain_time_without_the_rest() {
        let mut w = EndWatch::new(2 * SECOND, 0, 1, 10);
        let t0 = Instant::now();
        assert_eq!(w.check(t0, progress(5, 1, 10, 0)), None);
        assert_eq!(w.check(t0 + 2 * SECOND, progress(5, 1, 10, 0)), None);
        let late = t0 + 2 * SECOND + Duration::from_millis(1);
        assert_eq!(w.check(late, progress(6, 1, 10, 0)), Some(End::Done));
    }

    #[test]
    fn no_deliveries_while_senders_are_blocked_is_a_stall() {
        // Stall after max(drain, 1 s) + 2 intervals = 1 s + 2 x 0.25 s.
        let mut w = EndWatch::new(Duration::from_millis(100), 250_000_000, 1, 10);
        let t0 = w.last_progress.1;
        assert_eq!(w.check(t0 + SECOND, progress(7, 0, 0, 0)), None);
        let quiet = t0 + SECOND + Duration::from_millis(1500);
        assert_eq!(w.check(quiet, progress(7, 0, 0, 0)), None);
        let too_quiet = quiet + Duration::from_millis(1);
        assert_eq!(w.check(too_quiet, progress(7, 0, 0, 0)), Some(End::Stalled));
    }

    #[test]
    fn every_connection_failing_is_a_stall() {
        let mut w = EndWatch::new(5 * SECOND, 0, 1, 3);
        let t0 = Instant::now();
        assert_eq!(w.check(t0, progress(0, 0, 0, 2)), None);
        assert_eq!(w.check(t0, progress(0, 0, 0, 3)), Some(End::Stalled));
    }

    #[test]
    fn readiness_fails_with_the_first_connection_error() {
        // test_ctx's only node is 127.0.0.1:1, where nothing listens.
        let schedule = Schedule {
            interval_ns: 0,
            messages: Some(1),
            duration_ns: None,
        };
        let ctx = Arc::new(test_ctx(Target::Machat, schedule, 100, vec![2]));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt.block_on(async {
            let mut conns = Connections::spawn(&ctx, vec![test_spec(0), test_spec(0)]);
            conns.wait_ready(&ctx, 10 * SECOND).await.unwrap_err()
        });
        assert!(
            err.starts_with("readiness failed: 0/2 ready, ")
                && err.contains(" failed (first error: connect 127.0.0.1:1: "),
            "{err}"
        );
    }
}
