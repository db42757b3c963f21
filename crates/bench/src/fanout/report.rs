//! The fanout report: the connections' results added up into the figures of one run, as one
//! JSON line (`--json`) or a table. Field names and meanings are what bench/compare.sh and
//! BENCHMARKS.md ("How machat-bench measures") rely on.

use std::fmt::Write as _;
use std::net::SocketAddr;

use hdrhistogram::Histogram;

use super::conn::ConnResult;
use super::lat::{add_hist, new_hist};
use super::plan::Plan;
use super::FanoutArgs;
use crate::procstat::{self, ProcSample};
use crate::proto::Target;
use crate::Common;

/// The result of one fanout run (one JSON line).
#[derive(serde::Serialize, Debug)]
pub struct FanoutReport {
    pub scenario: &'static str,
    pub label: Option<String>,
    pub target: Target,
    pub addr: String,
    pub clients: usize,
    pub rooms: usize,
    pub senders_per_room: usize,
    pub rate: f64,
    pub messages_per_sender: Option<u64>,
    pub duration_s: Option<f64>,
    pub payload: usize,
    pub window: u64,
    pub threads: usize,
    pub connections: usize,
    pub sent: u64,
    pub send_secs: f64,
    pub offered_per_s: f64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub out_of_order: u64,
    pub foreign: u64,
    pub elapsed_secs: f64,
    pub delivered_per_s: f64,
    /// Deliveries whose latency is in the percentiles (all measured ones: equals `received`).
    pub latency_samples: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
    pub send_lag_p50_us: u64,
    pub send_lag_p99_us: u64,
    pub send_lag_max_us: u64,
    pub server_peak_rss_kib: Option<u64>,
    pub server_rss_kib: Option<u64>,
    pub server_cpu_s: Option<f64>,
    pub gen_cpu_s: f64,
    pub disconnects: usize,
    pub first_error: Option<String>,
    pub stalled: bool,
    /// The readers' addresses (`--reader-addr`), when given.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reader_addrs: Vec<String>,
    /// Per server when connections went to more than one (`--reader-addr`): node 0 is
    /// `--addr`, the senders' server.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeReport>,
    /// The deliveries read from servers other than the senders': the cross-node latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_node: Option<Latency>,
    /// Each server process, when several `--server-pid`s were given (in their order); the
    /// `server_*` figures above are then their sums.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<ServerReport>,
}

/// Latency percentiles of a set of deliveries, us.
#[derive(serde::Serialize, Debug)]
pub struct Latency {
    pub deliveries: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            deliveries: h.len(),
            p50_us: crate::quantile(h, 0.5),
            p99_us: crate::quantile(h, 0.99),
            p999_us: crate::quantile(h, 0.999),
            max_us: if h.is_empty() { 0 } else { h.max() },
            mean_us: if h.is_empty() { 0.0 } else { h.mean() },
        }
    }
}

/// What the members connected to one server received.
#[derive(serde::Serialize, Debug)]
pub struct NodeReport {
    pub addr: String,
    /// Member connections to this server (senders included).
    pub members: usize,
    pub senders: usize,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub latency: Latency,
}

/// One server process's figures over the measurement.
#[derive(serde::Serialize, Debug)]
pub struct ServerReport {
    pub pid: u32,
    pub peak_rss_kib: u64,
    pub rss_kib: u64,
    pub cpu_s: f64,
}

/// What the measurement window saw: when it started, the server processes at its start and
/// end (one sample per `--server-pid`, in order), the generator's CPU, and whether it ended
/// because the server stalled.
pub(super) struct Window {
    /// The start of sending, ns since the epoch.
    pub start_ns: u64,
    pub servers_before: Vec<ProcSample>,
    pub servers_after: Vec<ProcSample>,
    pub gen_cpu_s: f64,
    pub stalled: bool,
}

/// Everything a run produced, for its report.
pub(super) struct Outcome {
    /// One per connection.
    pub results: Vec<ConnResult>,
    /// Every delivery's latency, one histogram per node (`Nodes::addrs`).
    pub node_hists: Vec<Histogram<u64>>,
    pub window: Window,
}

/// The connections' results added up.
#[derive(Debug)]
pub(super) struct Totals {
    /// Messages that left the generator (written whole).
    pub sent: u64,
    /// Deliveries due for them: each to every member of its room.
    pub expected: u64,
    pub received: u64,
    pub out_of_order: u64,
    pub foreign: u64,
    /// The last delivery and the last send, ns since the epoch (the start when none).
    pub last_delivery_ns: u64,
    pub last_send_ns: u64,
    /// Connections that failed.
    pub disconnects: usize,
    /// The first connection error, or else the first error a server reported.
    pub first_error: Option<String>,
    /// How late the senders generated their messages, us.
    pub lag: Histogram<u64>,
}

impl Totals {
    pub(super) fn of(
        results: &[ConnResult],
        room_members: &[u64],
        start_ns: u64,
    ) -> Result<Totals, String> {
        let mut t = Totals {
            sent: 0,
            expected: 0,
            received: 0,
            out_of_order: 0,
            foreign: 0,
            last_delivery_ns: start_ns,
            last_send_ns: start_ns,
            disconnects: 0,
            first_error: None,
            lag: new_hist(),
        };
        for r in results {
            if let Some(h) = &r.lag {
                add_hist(&mut t.lag, h)?;
            }
            if r.error.is_some() || !r.server_errors.is_empty() {
                if r.error.is_some() {
                    t.disconnects += 1;
                }
                if t.first_error.is_none() {
                    t.first_error = r.error.clone().or_else(|| r.server_errors.first().cloned());
                }
            }
            if r.is_sender {
                let delivered_sent = r.sent - r.unsent;
                t.sent += delivered_sent;
                t.expected += delivered_sent * room_members[r.room];
                t.last_send_ns = t.last_send_ns.max(r.last_send_ns);
            }
            t.received += r.received;
            t.out_of_order += r.out_of_order;
            t.foreign += r.foreign;
            if r.member && r.received > 0 {
                t.last_delivery_ns = t.last_delivery_ns.max(r.last_delivery_ns);
            }
        }
        Ok(t)
    }
}

/// Per node (server): its members and senders, what its members should have received (all
/// that their room's senders got out) and did, and their latency.
fn node_reports(
    addrs: &[SocketAddr],
    rooms: usize,
    results: &[ConnResult],
    node_hists: &[Histogram<u64>],
) -> Vec<NodeReport> {
    let mut room_sent = vec![0u64; rooms];
    for r in results.iter().filter(|r| r.is_sender) {
        room_sent[r.room] += r.sent - r.unsent;
    }
    let mut nodes: Vec<NodeReport> = (addrs.iter())
        .zip(node_hists)
        .map(|(addr, h)| NodeReport {
            addr: addr.to_string(),
            members: 0,
            senders: 0,
            expected: 0,
            received: 0,
            lost: 0,
            latency: Latency::of(h),
        })
        .collect();
    for r in results {
        if let Some(n) = nodes.get_mut(r.node) {
            if r.member {
                n.members += 1;
                n.expected += room_sent[r.room];
                n.received += r.received;
            }
            // Redis: the sender's publishing connection (not a member) counts.
            n.senders += usize::from(r.is_sender);
        }
    }
    for n in &mut nodes {
        n.lost = n.expected.saturating_sub(n.received);
    }
    nodes
}

/// All deliveries' latencies, and those read from servers other than the senders' (node 0):
/// the cross-node latency.
fn all_and_cross(
    node_hists: &[Histogram<u64>],
) -> Result<(Histogram<u64>, Histogram<u64>), String> {
    let mut all = new_hist();
    let mut cross = new_hist();
    for (i, h) in node_hists.iter().enumerate() {
        add_hist(&mut all, h)?;
        if i > 0 {
            add_hist(&mut cross, h)?;
        }
    }
    Ok((all, cross))
}

/// Each server process's figures over the window, when there are several (`pids` in the order
/// given); one process is reported by the totals alone.
fn server_reports(pids: &[u32], before: &[ProcSample], after: &[ProcSample]) -> Vec<ServerReport> {
    if after.len() <= 1 {
        return Vec::new();
    }
    (pids.iter())
        .zip(before.iter().zip(after))
        .map(|(&pid, (a, b))| ServerReport {
            pid,
            peak_rss_kib: b.hwm_kib,
            rss_kib: b.rss_kib,
            cpu_s: b.cpu_s - a.cpu_s,
        })
        .collect()
}

/// `n` per second over `secs` (0 over no time).
fn per_s(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

impl FanoutReport {
    /// The report of a run: its settings, then what it measured. Rates are over the time from
    /// the start to the last send (offered) and to the last delivery (delivered).
    pub(super) fn new(
        common: &Common,
        args: &FanoutArgs,
        plan: &Plan,
        addrs: &[SocketAddr],
        outcome: Outcome,
    ) -> Result<FanoutReport, String> {
        let Outcome {
            results,
            node_hists,
            window: w,
        } = outcome;
        let t = Totals::of(&results, &plan.room_members, w.start_ns)?;
        let (all, cross) = all_and_cross(&node_hists)?;
        let (lat, lag) = (Latency::of(&all), Latency::of(&t.lag));
        let multi_node = addrs.len() > 1;
        let (srv0, srv1) = (
            procstat::total(&w.servers_before),
            procstat::total(&w.servers_after),
        );
        let send_secs = (t.last_send_ns - w.start_ns) as f64 / 1e9;
        let elapsed_secs = (t.last_delivery_ns - w.start_ns) as f64 / 1e9;
        Ok(FanoutReport {
            scenario: "fanout",
            label: common.label.clone(),
            target: common.target,
            addr: common.addr.to_string(),
            clients: args.clients,
            rooms: args.rooms,
            senders_per_room: args.senders,
            rate: args.rate,
            messages_per_sender: args.messages,
            duration_s: plan.duration_s,
            payload: args.payload,
            window: args.window,
            threads: common.threads,
            connections: results.len(),
            sent: t.sent,
            send_secs,
            offered_per_s: per_s(t.sent, send_secs),
            expected: t.expected,
            received: t.received,
            lost: t.expected.saturating_sub(t.received),
            out_of_order: t.out_of_order,
            foreign: t.foreign,
            elapsed_secs,
            delivered_per_s: per_s(t.received, elapsed_secs),
            latency_samples: lat.deliveries,
            p50_us: lat.p50_us,
            p99_us: lat.p99_us,
            p999_us: lat.p999_us,
            max_us: lat.max_us,
            mean_us: lat.mean_us,
            send_lag_p50_us: lag.p50_us,
            send_lag_p99_us: lag.p99_us,
            send_lag_max_us: lag.max_us,
            server_peak_rss_kib: srv1.map(|s| s.hwm_kib),
            server_rss_kib: srv1.map(|s| s.rss_kib),
            server_cpu_s: match (srv0, srv1) {
                (Some(a), Some(b)) => Some(b.cpu_s - a.cpu_s),
                _ => None,
            },
            gen_cpu_s: w.gen_cpu_s,
            disconnects: t.disconnects,
            first_error: t.first_error,
            stalled: w.stalled,
            reader_addrs: args.reader_addr.clone(),
            nodes: if multi_node {
                node_reports(addrs, args.rooms, &results, &node_hists)
            } else {
                Vec::new()
            },
            cross_node: multi_node.then(|| Latency::of(&cross)),
            servers: server_reports(&common.server_pids, &w.servers_before, &w.servers_after),
        })
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>, unit: &str) -> String {
    v.map(|v| format!("{v}{unit}"))
        .unwrap_or_else(|| "-".into())
}

/// Prints the report as a table (without `--json`).
pub fn print_table(r: &FanoutReport) {
    print!("{}", table(r));
}

/// The report as a table, one figure group per line.
fn table(r: &FanoutReport) -> String {
    let mut t = String::new();
    write_figures(&mut t, r);
    write_breakdown(&mut t, r);
    t
}

/// The run's settings and figures.
fn write_figures(t: &mut String, r: &FanoutReport) {
    let _ = writeln!(
        t,
        "fanout  target={}  addr={}{}",
        r.target.name(),
        r.addr,
        r.label
            .as_ref()
            .map(|l| format!("  label={l}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        t,
        "  setup        {} clients, {} rooms, {} senders/room, rate {} msg/s, payload {} B, window {}, {} connections, {} generator thread(s)",
        r.clients,
        r.rooms,
        r.senders_per_room,
        if r.rate > 0.0 { format!("{}", r.rate) } else { "max".into() },
        r.payload,
        r.window,
        r.connections,
        r.threads
    );
    let _ = writeln!(
        t,
        "  sent         {} msgs in {:.3} s ({:.0} msgs/s offered)",
        r.sent, r.send_secs, r.offered_per_s
    );
    let _ = writeln!(
        t,
        "  deliveries   expected {}  received {}  lost {}  out-of-order {}  foreign {}",
        r.expected, r.received, r.lost, r.out_of_order, r.foreign
    );
    let _ = writeln!(
        t,
        "  delivered    {:.0} msgs/s over {:.3} s",
        r.delivered_per_s, r.elapsed_secs
    );
    let _ = writeln!(
        t,
        "  latency us   p50 {}  p99 {}  p99.9 {}  max {}  mean {:.0}  ({} deliveries)",
        r.p50_us, r.p99_us, r.p999_us, r.max_us, r.mean_us, r.latency_samples
    );
    let _ = writeln!(
        t,
        "  server       peak RSS {}  RSS {}  CPU {}",
        opt(r.server_peak_rss_kib, " KiB"),
        opt(r.server_rss_kib, " KiB"),
        opt(r.server_cpu_s.map(|c| format!("{c:.2}")), " s")
    );
    let _ = writeln!(
        t,
        "  generator    CPU {:.2} s; send lag behind schedule us: p50 {}  p99 {}  max {}",
        r.gen_cpu_s, r.send_lag_p50_us, r.send_lag_p99_us, r.send_lag_max_us
    );
}

/// Per server and per process, when there are several; problems, when there were any.
fn write_breakdown(t: &mut String, r: &FanoutReport) {
    for (i, n) in r.nodes.iter().enumerate() {
        let _ = writeln!(
            t,
            "  node {i}       {} ({}): {} members ({} senders), expected {}  received {}  lost {}; latency us p50 {}  p99 {}  p99.9 {}  max {}",
            n.addr,
            if i == 0 { "senders' node" } else { "readers only" },
            n.members,
            n.senders,
            n.expected,
            n.received,
            n.lost,
            n.latency.p50_us,
            n.latency.p99_us,
            n.latency.p999_us,
            n.latency.max_us
        );
    }
    if let Some(c) = &r.cross_node {
        let _ = writeln!(
            t,
            "  cross-node   latency us p50 {}  p99 {}  p99.9 {}  max {}  mean {:.0}  ({} deliveries)",
            c.p50_us, c.p99_us, c.p999_us, c.max_us, c.mean_us, c.deliveries
        );
    }
    for s in &r.servers {
        let _ = writeln!(
            t,
            "  process {}  peak RSS {} KiB  RSS {} KiB  CPU {:.2} s",
            s.pid, s.peak_rss_kib, s.rss_kib, s.cpu_s
        );
    }
    if r.disconnects > 0 || r.first_error.is_some() || r.stalled {
        let _ = writeln!(
            t,
            "  problems     disconnects {}  stalled {}  first error: {}",
            r.disconnects,
            r.stalled,
            r.first_error.as_deref().unwrap_or("-")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::testing::args;

    fn hist(values: &[u64]) -> Histogram<u64> {
        let mut h = new_hist();
        for &v in values {
            h.record(v).unwrap();
        }
        h
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn sample(hwm_kib: u64, rss_kib: u64, cpu_s: f64) -> ProcSample {
        ProcSample {
            rss_kib,
            hwm_kib,
            cpu_s,
        }
    }

    /// Room 0: a sender (10 generated, 2 never written whole) and a reader; room 1: a reader
    /// that failed and one that saw a server error.
    fn results() -> Vec<ConnResult> {
        vec![
            ConnResult {
                member: true,
                is_sender: true,
                sent: 10,
                unsent: 2,
                received: 16,
                last_delivery_ns: 900,
                last_send_ns: 500,
                lag: Some(hist(&[5, 7])),
                ..Default::default()
            },
            ConnResult {
                member: true,
                node: 1,
                received: 8,
                out_of_order: 1,
                foreign: 2,
                last_delivery_ns: 1_000,
                ..Default::default()
            },
            ConnResult {
                member: true,
                room: 1,
                last_delivery_ns: 5_000,
                error: Some("boom".into()),
                ..Default::default()
            },
            ConnResult {
                member: true,
                room: 1,
                node: 1,
                received: 3,
                last_delivery_ns: 700,
                server_errors: vec!["srv".into()],
                ..Default::default()
            },
        ]
    }

    #[test]
    fn totals_count_what_left_the_generator_and_arrived() {
        let t = Totals::of(&results(), &[2, 3], 100).unwrap();
        assert_eq!((t.sent, t.expected, t.received), (8, 16, 27));
        assert_eq!((t.out_of_order, t.foreign), (1, 2));
        // The failed connection received nothing: its last delivery time does not count.
        assert_eq!((t.last_delivery_ns, t.last_send_ns), (1_000, 500));
        assert_eq!(t.disconnects, 1);
        assert_eq!(t.first_error.as_deref(), Some("boom"));
        assert_eq!((t.lag.len(), t.lag.max()), (2, 7));

        let mut reversed = results();
        reversed.reverse();
        let t = Totals::of(&reversed, &[2, 3], 100).unwrap();
        assert_eq!(t.first_error.as_deref(), Some("srv"));
        let none = Totals::of(&[], &[2, 3], 100).unwrap();
        assert_eq!((none.last_delivery_ns, none.last_send_ns), (100, 100));
    }

    #[test]
    fn nodes_report_their_members_and_losses() {
        // Redis-like: the member connection and the publishing connection of one sender.
        let results = [
            ConnResult {
                member: true,
                received: 5,
                ..Default::default()
            },
            ConnResult {
                is_sender: true,
                sent: 5,
                ..Default::default()
            },
            ConnResult {
                member: true,
                node: 1,
                received: 4,
                ..Default::default()
            },
        ];
        let hists = [hist(&[10, 20]), hist(&[30])];
        let nodes = node_reports(&[addr(1), addr(2)], 1, &results, &hists);
        let shape: Vec<_> = (nodes.iter())
            .map(|n| {
                (
                    &n.addr[..],
                    n.members,
                    n.senders,
                    n.expected,
                    n.received,
                    n.lost,
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("127.0.0.1:1", 1, 1, 5, 5, 0),
                ("127.0.0.1:2", 1, 0, 5, 4, 1)
            ]
        );
        assert_eq!(nodes[0].latency.deliveries, 2);
        assert_eq!(nodes[1].latency.max_us, 30);
    }

    #[test]
    fn cross_node_latency_is_every_node_but_the_senders() {
        let (all, cross) = all_and_cross(&[hist(&[10]), hist(&[20, 20]), hist(&[40])]).unwrap();
        assert_eq!((all.len(), all.min(), all.max()), (4, 10, 40));
        assert_eq!((cross.len(), cross.min()), (3, 20));
    }

    #[test]
    fn latency_of_nothing_is_zero() {
        let l = Latency::of(&new_hist());
        assert_eq!((l.deliveries, l.p50_us, l.p99_us, l.max_us), (0, 0, 0, 0));
        assert_eq!(l.mean_us, 0.0);
        let l = Latency::of(&hist(&(1..=1000).collect::<Vec<_>>()));
        assert_eq!(
            (l.deliveries, l.p50_us, l.p99_us, l.p999_us),
            (1000, 500, 990, 999)
        );
        assert_eq!((l.max_us, l.mean_us), (1000, 500.5));
    }

    #[test]
    fn several_server_processes_are_reported_each() {
        let before = [sample(10, 10, 1.0), sample(20, 20, 2.0)];
        let after = [sample(11, 9, 1.5), sample(25, 21, 4.0)];
        assert!(server_reports(&[7], &before[..1], &after[..1]).is_empty());
        let s = server_reports(&[7, 8], &before, &after);
        let shape: Vec<_> = (s.iter())
            .map(|s| (s.pid, s.peak_rss_kib, s.rss_kib, s.cpu_s))
            .collect();
        assert_eq!(shape, [(7, 11, 9, 0.5), (8, 25, 21, 2.0)]);
    }

    fn common(server_pids: Vec<u32>) -> Common {
        Common {
            target: Target::Machat,
            addr: addr(1),
            server_pids,
            threads: 1,
            label: Some("F1".into()),
            src_addrs: 32,
        }
    }

    fn outcome(nodes: usize, servers: usize) -> Outcome {
        Outcome {
            results: results(),
            node_hists: (0..nodes).map(|i| hist(&[100 * (i as u64 + 1)])).collect(),
            window: Window {
                start_ns: 100,
                servers_before: vec![sample(1, 1, 1.0); servers],
                servers_after: vec![sample(2, 2, 1.25); servers],
                gen_cpu_s: 0.5,
                stalled: false,
            },
        }
    }

    fn keys(r: &FanoutReport) -> Vec<String> {
        match serde_json::to_value(r).unwrap() {
            serde_json::Value::Object(m) => m.keys().cloned().collect(),
            v => panic!("not an object: {v}"),
        }
    }

    /// The JSON fields bench/compare.sh and the tables read, as before the split.
    const FIELDS: [&str; 40] = [
        "scenario",
        "label",
        "target",
        "addr",
        "clients",
        "rooms",
        "senders_per_room",
        "rate",
        "messages_per_sender",
        "duration_s",
        "payload",
        "window",
        "threads",
        "connections",
        "sent",
        "send_secs",
        "offered_per_s",
        "expected",
        "received",
        "lost",
        "out_of_order",
        "foreign",
        "elapsed_secs",
        "delivered_per_s",
        "latency_samples",
        "p50_us",
        "p99_us",
        "p999_us",
        "max_us",
        "mean_us",
        "send_lag_p50_us",
        "send_lag_p99_us",
        "send_lag_max_us",
        "server_peak_rss_kib",
        "server_rss_kib",
        "server_cpu_s",
        "gen_cpu_s",
        "disconnects",
        "first_error",
        "stalled",
    ];

    #[test]
    fn one_server_reports_the_flat_fields() {
        let a = args(&["--clients", "4", "--rooms", "2", "--messages", "10"]);
        let plan = Plan::new(&a).unwrap();
        let r = FanoutReport::new(&common(vec![42]), &a, &plan, &[addr(1)], outcome(1, 1)).unwrap();
        let mut sorted_keys = keys(&r);
        let mut fields = FIELDS.map(String::from).to_vec();
        sorted_keys.sort();
        fields.sort();
        assert_eq!(sorted_keys, fields);
        assert_eq!((r.sent, r.expected, r.received, r.lost), (8, 16, 27, 0));
        assert_eq!((r.connections, r.latency_samples, r.p50_us), (4, 1, 100));
        assert_eq!((r.send_secs, r.elapsed_secs), (400e-9, 900e-9));
        assert_eq!(r.offered_per_s, 8.0 / 400e-9);
        assert_eq!(r.delivered_per_s, 27.0 / 900e-9);
        assert_eq!((r.send_lag_p50_us, r.send_lag_max_us), (5, 7));
        assert_eq!(
            (r.server_peak_rss_kib, r.server_cpu_s),
            (Some(2), Some(0.25))
        );
        assert_eq!((r.duration_s, r.messages_per_sender), (None, Some(10)));
        assert!(r.nodes.is_empty() && r.cross_node.is_none() && r.servers.is_empty());
    }

    #[test]
    fn several_servers_add_nodes_cross_node_and_processes() {
        let a = args(&[
            "--clients",
            "4",
            "--rooms",
            "2",
            "--reader-addr",
            "127.0.0.1:2",
        ]);
        let plan = Plan::new(&a).unwrap();
        let r = FanoutReport::new(
            &common(vec![42, 43]),
            &a,
            &plan,
            &[addr(1), addr(2)],
            outcome(2, 2),
        )
        .unwrap();
        let k = keys(&r);
        assert_eq!(k.len(), FIELDS.len() + 4);
        for extra in ["reader_addrs", "nodes", "cross_node", "servers"] {
            assert!(k.iter().any(|f| f == extra), "{extra}");
        }
        assert_eq!(r.nodes.len(), 2);
        assert_eq!(r.cross_node.as_ref().map(|c| c.p50_us), Some(200));
        assert_eq!((r.latency_samples, r.max_us), (2, 200));
        assert_eq!(r.servers.len(), 2);
        assert_eq!(
            (r.server_peak_rss_kib, r.server_cpu_s),
            (Some(4), Some(0.5))
        );
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""reader_addrs":["127.0.0.1:2"]"#), "{json}");
        assert!(json.contains(r#""target":"machat""#), "{json}");
        let table = table(&r);
        let lines: Vec<&str> = table.lines().skip(8).collect();
        assert_eq!(
            lines,
            [
                "  node 0       127.0.0.1:1 (senders' node): 2 members (1 senders), expected 8  received 16  lost 0; latency us p50 100  p99 100  p99.9 100  max 100",
                "  node 1       127.0.0.1:2 (readers only): 2 members (0 senders), expected 8  received 11  lost 0; latency us p50 200  p99 200  p99.9 200  max 200",
                "  cross-node   latency us p50 200  p99 200  p99.9 200  max 200  mean 200  (1 deliveries)",
                "  process 42  peak RSS 2 KiB  RSS 2 KiB  CPU 0.25 s",
                "  process 43  peak RSS 2 KiB  RSS 2 KiB  CPU 0.25 s",
                "  problems     disconnects 1  stalled false  first error: boom",
            ]
        );
    }

    #[test]
    fn the_table_has_a_line_per_figure_group() {
        let a = args(&["--clients", "4", "--rooms", "2", "--messages", "10"]);
        let plan = Plan::new(&a).unwrap();
        let r = FanoutReport::new(&common(vec![]), &a, &plan, &[addr(1)], outcome(1, 0)).unwrap();
        let expected = "\
fanout  target=machat  addr=127.0.0.1:1  label=F1
  setup        4 clients, 2 rooms, 1 senders/room, rate max msg/s, payload 64 B, window 100, 4 connections, 1 generator thread(s)
  sent         8 msgs in 0.000 s (20000000 msgs/s offered)
  deliveries   expected 16  received 27  lost 0  out-of-order 1  foreign 2
  delivered    30000000 msgs/s over 0.000 s
  latency us   p50 100  p99 100  p99.9 100  max 100  mean 100  (1 deliveries)
  server       peak RSS -  RSS -  CPU -
  generator    CPU 0.50 s; send lag behind schedule us: p50 5  p99 7  max 7
  problems     disconnects 1  stalled false  first error: boom
";
        assert_eq!(table(&r), expected);
    }
}
