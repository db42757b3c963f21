//! Where the fanout scenario keeps its latencies while it runs, and how they come together at
//! the end.
//!
//! Every delivery's latency is recorded (not a sample), so recording must cost next to
//! nothing: each generator thread has its own aggregates (one per server, so cross-node latency
//! can be told apart), shared by that thread's connections so they stay in the cache, and
//! registered in the run's [`LatRegistry`] on first use; the run merges them into HDR histograms
//! once the measurement is over.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use hdrhistogram::Histogram;

/// Latencies below this many us are counted in a flat array (one increment, cache-hot: the
/// values of a run cluster) and go into the HDR histogram, exactly, at the end; larger ones are
/// recorded directly.
const LAT_FLAT: usize = 1 << 16;

/// Latencies (us) of the deliveries read by one generator thread from one server. Connections
/// share their thread's aggregate, so recording stays in the cache (a histogram per connection,
/// ~190 KB each, would miss it on every record).
pub(super) struct LatAgg {
    /// u32 counts keep the cluster of a run's latencies in the L1 cache; a count that wraps
    /// moves 2^32 into `hist`.
    flat: Vec<u32>,
    hist: Histogram<u64>,
}

impl LatAgg {
    pub(super) fn new() -> LatAgg {
        LatAgg {
            flat: vec![0; LAT_FLAT],
            hist: new_hist(),
        }
    }

    #[inline(always)]
    pub(super) fn record(&mut self, us: u64) {
        match self.flat.get_mut(us as usize) {
            Some(c) => {
                *c = c.wrapping_add(1);
                if *c == 0 {
                    self.hist.saturating_record_n(us, 1 << 32);
                }
            }
            None => self.hist.saturating_record(us),
        }
    }

    /// Everything recorded, as a histogram.
    #[cfg(test)]
    pub(super) fn histogram(&self) -> Histogram<u64> {
        let mut h = new_hist();
        self.merge_into(&mut h);
        h
    }

    /// Adds everything recorded to `h`.
    fn merge_into(&self, h: &mut Histogram<u64>) {
        let _ = h.add(&self.hist); // same bounds: cannot fail
        for (v, &n) in self.flat.iter().enumerate() {
            if n > 0 {
                h.saturating_record_n(v as u64, u64::from(n));
            }
        }
    }
}

/// One generator thread's latency aggregates, one per node (server).
pub(super) type ThreadLat = Arc<Mutex<Vec<LatAgg>>>;

/// The latency aggregates of one run: each generator thread's, registered on first use (see
/// [`with_thread_state`]) and merged per node by [`LatRegistry::per_node`] at the end.
pub(super) struct LatRegistry {
    /// Identifies this run to the per-thread state, which outlives a run.
    run_id: usize,
    /// Servers of the run: aggregates per thread.
    nodes: usize,
    aggs: Mutex<Vec<ThreadLat>>,
}

impl LatRegistry {
    pub(super) fn new(nodes: usize) -> LatRegistry {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        LatRegistry {
            run_id: RUNS.fetch_add(1, Relaxed),
            nodes,
            aggs: Mutex::new(Vec::new()),
        }
    }

    /// This thread's aggregates for this run (made and registered on first use); `lat` is the
    /// thread's cache of them.
    fn thread_lat<'a>(&self, lat: &'a mut Option<(usize, ThreadLat)>) -> &'a ThreadLat {
        let id = self.run_id;
        if lat.as_ref().is_some_and(|(i, _)| *i != id) {
            *lat = None; // left from an earlier run
        }
        &lat.get_or_insert_with(|| {
            let per_node = (0..self.nodes).map(|_| LatAgg::new()).collect();
            let agg = Arc::new(Mutex::new(per_node));
            lock(&self.aggs).push(agg.clone());
            (id, agg)
        })
        .1
    }

    /// Every thread's deliveries, one histogram per node. Called once the connections are done.
    pub(super) fn per_node(&self) -> Vec<Histogram<u64>> {
        let mut hists: Vec<Histogram<u64>> = (0..self.nodes).map(|_| new_hist()).collect();
        for aggs in lock(&self.aggs).iter() {
            for (agg, h) in lock(aggs).iter().zip(hists.iter_mut()) {
                agg.merge_into(h);
            }
        }
        hists
    }
}

/// Per generator thread: the read buffer (see `FanoutArgs::read_buf`) and the latency
/// aggregates of the current run.
struct ThreadState {
    buf: Vec<u8>,
    lat: Option<(usize, ThreadLat)>,
}

thread_local! {
    static THREAD_STATE: RefCell<ThreadState> = const {
        RefCell::new(ThreadState {
            buf: Vec::new(),
            lat: None,
        })
    };
}

/// Runs `f` with this thread's read buffer and its latency aggregates for the run of `reg`.
/// Both are only borrowed within `f` (one poll), so the connections of a thread can share them.
#[inline(always)]
pub(super) fn with_thread_state<R>(
    reg: &LatRegistry,
    f: impl FnOnce(&mut Vec<u8>, &ThreadLat) -> R,
) -> R {
    THREAD_STATE.with(|cell| {
        let mut state = cell.borrow_mut();
        let ThreadState { buf, lat } = &mut *state;
        let agg = reg.thread_lat(lat);
        f(buf, agg)
    })
}

/// Locks, also after a panic elsewhere (the data are counters: still good).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// The aggregate of `node` among a thread's (one per node, so always there).
#[inline(always)]
pub(super) fn node_lat(aggs: &mut [LatAgg], node: usize) -> Result<&mut LatAgg, String> {
    aggs.get_mut(node)
        .ok_or_else(|| format!("no latency aggregate for node {node}"))
}

/// An empty latency histogram: 1 us .. 1 hour, 3 significant digits (all of the run's share
/// these bounds, so adding one to another cannot fail).
pub(super) fn new_hist() -> Histogram<u64> {
    // These bounds are valid constants.
    match Histogram::new_with_bounds(1, 3_600_000_000, 3) {
        Ok(h) => h,
        Err(e) => panic!("histogram bounds: {e:?}"),
    }
}

/// Adds `from` to `into`.
pub(super) fn add_hist(into: &mut Histogram<u64>, from: &Histogram<u64>) -> Result<(), String> {
    into.add(from)
        .map_err(|e| format!("histogram merge: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agg_merges_to_what_a_histogram_records_directly() {
        let values = [
            0,
            1,
            7,
            999,
            65_535,
            65_536,
            70_000,
            5_000_000,
            3_600_000_001,
        ];
        let mut agg = LatAgg::new();
        let mut direct = new_hist();
        for (i, &v) in values.iter().enumerate() {
            for _ in 0..=i {
                agg.record(v);
                direct.saturating_record(v);
            }
        }
        let mut merged = new_hist();
        agg.merge_into(&mut merged);
        assert_eq!(merged, direct);
        assert_eq!(merged.len(), 45);
    }

    #[test]
    fn agg_count_that_wraps_moves_to_the_histogram() {
        let mut agg = LatAgg::new();
        agg.flat[10] = u32::MAX;
        agg.record(10);
        assert_eq!(agg.flat[10], 0);
        agg.record(10);
        let mut merged = new_hist();
        agg.merge_into(&mut merged);
        assert_eq!(merged.len(), (1 << 32) + 1);
        assert_eq!(merged.count_at(10), (1 << 32) + 1);
    }

    fn record_here(reg: &LatRegistry, node: usize, us: u64) {
        with_thread_state(reg, |_, lat| {
            let mut aggs = lock(lat);
            node_lat(&mut aggs, node).unwrap().record(us);
        });
    }

    #[test]
    fn registry_merges_every_thread_per_node() {
        let reg = Arc::new(LatRegistry::new(2));
        record_here(&reg, 0, 100);
        record_here(&reg, 1, 200);
        let other = reg.clone();
        std::thread::spawn(move || {
            record_here(&other, 1, 300);
            record_here(&other, 1, 300);
        })
        .join()
        .unwrap();
        let hists = reg.per_node();
        assert_eq!(hists.len(), 2);
        assert_eq!(hists[0].len(), 1);
        assert_eq!(hists[1].len(), 3);
        assert_eq!(hists[1].max(), 300);
        assert_eq!(lock(&reg.aggs).len(), 2);
    }

    #[test]
    fn a_new_run_starts_from_empty_aggregates() {
        let first = LatRegistry::new(1);
        record_here(&first, 0, 5);
        let second = LatRegistry::new(1);
        record_here(&second, 0, 6);
        assert_eq!(first.per_node()[0].len(), 1);
        assert_eq!(second.per_node()[0].max(), 6);
        assert_eq!(second.per_node()[0].len(), 1);
    }

    #[test]
    fn node_lat_reports_a_missing_node() {
        let mut aggs = vec![LatAgg::new()];
        assert!(node_lat(&mut aggs, 0).is_ok());
        assert!(node_lat(&mut aggs, 1).is_err());
    }
}
