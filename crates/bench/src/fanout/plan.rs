//! What a fanout run will do, worked out from the flags before anything connects: the checked
//! settings and their consequences (`Plan`), the servers (`Nodes`), and every connection
//! (`Spec`). All of it is plain computation, so it is tested without a server.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use super::schedule::Schedule;
use super::send::EchoShared;
use super::FanoutArgs;
use crate::net;
use crate::proto::{self, Target};

/// The run's settings, checked, with what follows from them.
#[derive(Debug, PartialEq)]
pub(super) struct Plan {
    /// Sending time, s: `--duration`, or 10 when neither it nor `--messages` is given.
    pub duration_s: Option<f64>,
    /// Senders over all rooms.
    pub total_senders: usize,
    pub schedule: Schedule,
    /// Members of each room (clients go round-robin over the rooms).
    pub room_members: Vec<u64>,
}

impl Plan {
    /// Checks the flags that must agree with each other and derives the schedule.
    pub(super) fn new(args: &FanoutArgs) -> Result<Plan, String> {
        if args.rooms == 0 || args.clients < args.rooms {
            return Err("need --rooms >= 1 and --clients >= --rooms".into());
        }
        let min_members = args.clients / args.rooms;
        if args.senders == 0 || args.senders > min_members {
            return Err(format!(
                "--senders must be 1..={min_members} (the smallest room's member count)"
            ));
        }
        if args.window == 0 {
            return Err("--window must be >= 1".into());
        }
        if !(args.rate >= 0.0 && args.rate.is_finite()) {
            return Err("--rate must be >= 0".into());
        }
        let duration_s = match (args.duration, args.messages) {
            (None, None) => Some(10.0),
            (d, _) => d,
        };
        let total_senders = args.rooms * args.senders;
        let interval_ns = if args.rate > 0.0 {
            ((total_senders as f64) * 1e9 / args.rate).max(1.0) as u64
        } else {
            0
        };
        if interval_ns > 0 && interval_ns < 1000 {
            return Err(
                "--rate is too high for paced sending (use 0 for as fast as possible)".into(),
            );
        }
        let mut room_members = vec![0u64; args.rooms];
        for c in 0..args.clients {
            room_members[c % args.rooms] += 1;
        }
        Ok(Plan {
            duration_s,
            total_senders,
            schedule: Schedule {
                interval_ns,
                messages: args.messages,
                duration_ns: duration_s.map(|d| (d * 1e9) as u64),
            },
            room_members,
        })
    }
}

/// The servers of the run, and which of them each reader goes to.
#[derive(Debug, PartialEq)]
pub(super) struct Nodes {
    /// `--addr` first (the senders'), then each further `--reader-addr` once.
    pub addrs: Vec<SocketAddr>,
    /// The readers' round-robin over `addrs`, as the reader addresses were given (one given
    /// twice gets twice the readers); only `--addr` without any.
    readers_at: Vec<usize>,
}

impl Nodes {
    /// Resolves the `--reader-addr`s; `addr` is `--addr`, resolved.
    pub(super) fn resolve(addr: SocketAddr, reader_addrs: &[String]) -> Result<Nodes, String> {
        let readers = reader_addrs
            .iter()
            .map(|a| crate::resolve("--reader-addr", a))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Nodes::new(addr, &readers))
    }

    fn new(addr: SocketAddr, readers: &[SocketAddr]) -> Nodes {
        let mut addrs = vec![addr];
        let mut readers_at = Vec::new();
        for &r in readers {
            let i = match addrs.iter().position(|n| *n == r) {
                Some(i) => i,
                None => {
                    addrs.push(r);
                    addrs.len() - 1
                }
            };
            readers_at.push(i);
        }
        if readers_at.is_empty() {
            readers_at.push(0);
        }
        Nodes { addrs, readers_at }
    }

    /// The node of a room's `reader`-th reader: round-robin within the room, so that every
    /// room has readers on every node.
    fn reader_node(&self, reader: usize) -> usize {
        self.readers_at[reader % self.readers_at.len()]
    }
}

/// A sender: its id, place in the schedule, and how it learns of its echoes.
pub(super) struct SenderSpec {
    pub sid: u64,
    /// Offset of this sender's schedule within one interval (staggering).
    pub offset_ns: u64,
    pub shared: Arc<EchoShared>,
    /// True when the echo comes from another task (Redis publisher connection).
    pub wait_notify: bool,
}

/// One connection to open.
pub(super) struct Spec {
    pub client: usize,
    /// Index of the server (in `Ctx::nodes`) this connection goes to.
    pub node: usize,
    pub name: String,
    pub room: usize,
    pub room_name: String,
    pub src: Option<Ipv4Addr>,
    /// Member connection (subscribes and receives).
    pub member: bool,
    /// Sender id whose echo this member reports, where, and whether to notify it.
    pub own_echo: Option<(u64, Arc<EchoShared>, bool)>,
    pub sender: Option<SenderSpec>,
}

/// Every connection of the run, client by client. Clients go round-robin over the rooms; the
/// first `--senders` of each room send. Senders are on node 0, readers spread by `nodes`.
/// Where a member cannot publish (Redis), a sender's publishing connection follows its
/// member connection. Source addresses go round-robin over the connections.
pub(super) fn connection_specs(
    args: &FanoutArgs,
    plan: &Plan,
    nodes: &Nodes,
    target: Target,
    src_addrs: u8,
) -> Vec<Spec> {
    let srcs: Vec<Vec<Ipv4Addr>> = (nodes.addrs.iter())
        .map(|n| net::source_addrs(*n, src_addrs))
        .collect();
    let src_of = |node: usize, i: usize| {
        let srcs = &srcs[node];
        (!srcs.is_empty()).then(|| srcs[i % srcs.len()])
    };
    let separate_pub = !target.member_can_publish();
    let mut specs = Vec::new();
    for c in 0..args.clients {
        let (room, in_room) = (c % args.rooms, c / args.rooms);
        let node = match in_room.checked_sub(args.senders) {
            Some(reader) => nodes.reader_node(reader),
            None => 0,
        };
        let sender = (in_room < args.senders).then(|| {
            let sid = (room * args.senders + in_room) as u64;
            SenderSpec {
                sid,
                offset_ns: plan.schedule.offset_ns(sid, plan.total_senders as u64),
                shared: EchoShared::new(),
                wait_notify: separate_pub,
            }
        });
        let own_echo = (sender.as_ref()).map(|s| (s.sid, s.shared.clone(), separate_pub));
        let (member_sends, publisher) = match sender {
            Some(s) if separate_pub => (None, Some(s)),
            s => (s, None),
        };
        let spec = |src, member, own_echo, sender| Spec {
            client: c,
            node,
            name: proto::client_name(c),
            room,
            room_name: proto::room_name(room),
            src,
            member,
            own_echo,
            sender,
        };
        specs.push(spec(
            src_of(node, specs.len()),
            true,
            own_echo,
            member_sends,
        ));
        if let Some(s) = publisher {
            specs.push(spec(src_of(node, specs.len()), false, None, Some(s)));
        }
    }
    specs
}

/// Each sender's wake-up handle, by sender id: what the pacer notifies.
pub(super) fn pace_targets(specs: &[Spec]) -> Vec<Arc<EchoShared>> {
    specs
        .iter()
        .filter_map(|s| s.sender.as_ref().map(|x| (x.sid, x.shared.clone())))
        .collect::<BTreeMap<_, _>>()
        .into_values()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::testing::args;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn flags_that_cannot_work_together_are_refused() {
        let err = |flags: &[&str]| Plan::new(&args(flags)).unwrap_err();
        assert_eq!(
            err(&["--rooms", "0"]),
            "need --rooms >= 1 and --clients >= --rooms"
        );
        assert_eq!(
            err(&["--clients", "3", "--rooms", "4"]),
            "need --rooms >= 1 and --clients >= --rooms"
        );
        let senders = "--senders must be 1..=2 (the smallest room's member count)";
        assert_eq!(
            err(&["--clients", "5", "--rooms", "2", "--senders", "3"]),
            senders
        );
        assert_eq!(
            err(&["--clients", "5", "--rooms", "2", "--senders", "0"]),
            senders
        );
        assert_eq!(err(&["--window", "0"]), "--window must be >= 1");
        assert_eq!(err(&["--rate", "NaN"]), "--rate must be >= 0");
        assert_eq!(err(&["--rate", "inf"]), "--rate must be >= 0");
        assert_eq!(
            err(&["--rate", "1e12"]),
            "--rate is too high for paced sending (use 0 for as fast as possible)"
        );
    }

    #[test]
    fn the_defaults_send_as_fast_as_possible_for_ten_seconds() {
        let plan = Plan::new(&args(&[])).unwrap();
        assert_eq!(
            plan,
            Plan {
                duration_s: Some(10.0),
                total_senders: 1,
                schedule: Schedule {
                    interval_ns: 0,
                    messages: None,
                    duration_ns: Some(10_000_000_000),
                },
                room_members: vec![100],
            }
        );
    }

    #[test]
    fn the_rate_is_shared_by_all_senders() {
        // F2: 2,000 msgs/s over 100 senders: each sends every 50 ms.
        let f2 = ["--clients", "1000", "--rooms", "100", "--rate", "2000"];
        let plan = Plan::new(&args(&[&f2[..], &["--duration", "3"]].concat())).unwrap();
        assert_eq!(plan.total_senders, 100);
        assert_eq!(plan.schedule.interval_ns, 50_000_000);
        assert_eq!(plan.schedule.duration_ns, Some(3_000_000_000));
        assert_eq!(plan.duration_s, Some(3.0));
        assert_eq!(plan.room_members, vec![10; 100]);
    }

    #[test]
    fn a_message_count_alone_has_no_duration() {
        let f1 = ["--senders", "10", "--messages", "10000", "--rate", "0"];
        let plan = Plan::new(&args(&f1)).unwrap();
        assert_eq!(plan.duration_s, None);
        assert_eq!(plan.schedule.messages, Some(10_000));
        assert_eq!(plan.schedule.duration_ns, None);
        let uneven = Plan::new(&args(&["--clients", "10", "--rooms", "3"])).unwrap();
        assert_eq!(uneven.room_members, vec![4, 3, 3]);
    }

    #[test]
    fn reader_addresses_become_nodes_once_each() {
        let n = Nodes::new(addr(1), &[addr(1), addr(2), addr(2), addr(3)]);
        assert_eq!(n.addrs, [addr(1), addr(2), addr(3)]);
        assert_eq!(n.readers_at, [0, 1, 1, 2]);
        assert_eq!(
            (0..5).map(|r| n.reader_node(r)).collect::<Vec<_>>(),
            [0, 1, 1, 2, 0]
        );
        let alone = Nodes::new(addr(1), &[]);
        assert_eq!((alone.addrs.len(), alone.reader_node(7)), (1, 0));
        let resolved = Nodes::resolve(addr(1), &["127.0.0.1:2".into()]).unwrap();
        assert_eq!(resolved, Nodes::new(addr(1), &[addr(2)]));
        assert!(Nodes::resolve(addr(1), &["nowhere".into()]).is_err());
    }

    #[test]
    fn members_send_and_see_their_own_echo() {
        let a = args(&[
            "--clients",
            "6",
            "--rooms",
            "2",
            "--senders",
            "2",
            "--rate",
            "4000",
        ]);
        let plan = Plan::new(&a).unwrap();
        let specs = connection_specs(&a, &plan, &Nodes::new(addr(1), &[]), Target::Machat, 0);
        assert_eq!(specs.len(), 6);
        let senders: Vec<_> = (specs.iter())
            .map(|s| {
                s.sender
                    .as_ref()
                    .map(|x| (x.sid, x.offset_ns, x.wait_notify))
            })
            .collect();
        // Interval 4 senders / 4000 per s = 1 ms, staggered by 0.25 ms.
        assert_eq!(
            senders,
            [
                Some((0, 0, false)),
                Some((2, 500_000, false)),
                Some((1, 250_000, false)),
                Some((3, 750_000, false)),
                None,
                None
            ]
        );
        for s in &specs {
            assert!(s.member);
            assert_eq!(
                (s.room, &s.name[..]),
                (s.client % 2, &*format!("c{}", s.client))
            );
            assert_eq!(s.room_name, format!("room{}", s.room));
            assert_eq!(s.src, None);
            match (&s.sender, &s.own_echo) {
                (Some(x), Some((sid, shared, notify))) => {
                    assert_eq!(*sid, x.sid);
                    assert!(Arc::ptr_eq(shared, &x.shared));
                    assert!(!notify);
                }
                (None, None) => {}
                _ => panic!("a sender reports its own echo, a reader none"),
            }
        }
        let pace = pace_targets(&specs);
        assert_eq!(pace.len(), 4);
        assert!(Arc::ptr_eq(
            &pace[1],
            &specs[2].sender.as_ref().unwrap().shared
        ));
    }

    #[test]
    fn redis_senders_publish_on_a_second_connection() {
        let a = args(&["--clients", "3", "--rooms", "1", "--senders", "1"]);
        let plan = Plan::new(&a).unwrap();
        let specs = connection_specs(&a, &plan, &Nodes::new(addr(1), &[]), Target::Redis, 32);
        let shape: Vec<_> = (specs.iter())
            .map(|s| (s.client, s.member, s.sender.is_some(), s.src))
            .collect();
        let src = |i| Some(Ipv4Addr::new(127, 0, 0, i));
        assert_eq!(
            shape,
            [
                (0, true, false, src(2)),
                (0, false, true, src(3)),
                (1, true, false, src(4)),
                (2, true, false, src(5))
            ]
        );
        let (sid, shared, notify) = specs[0].own_echo.as_ref().unwrap();
        let publisher = specs[1].sender.as_ref().unwrap();
        assert_eq!(*sid, publisher.sid);
        assert!(Arc::ptr_eq(shared, &publisher.shared));
        assert!(*notify && publisher.wait_notify);
    }

    #[test]
    fn senders_stay_on_the_first_node_and_readers_spread() {
        let a = args(&["--clients", "10", "--rooms", "2", "--senders", "1"]);
        let plan = Plan::new(&a).unwrap();
        let nodes = Nodes::new(addr(1), &[addr(1), addr(2)]);
        let specs = connection_specs(&a, &plan, &nodes, Target::Machat, 0);
        let by_room = |room| {
            (specs.iter())
                .filter(|s| s.room == room)
                .map(|s| s.node)
                .collect::<Vec<_>>()
        };
        assert_eq!(by_room(0), [0, 0, 1, 0, 1]);
        assert_eq!(by_room(1), [0, 0, 1, 0, 1]);
    }
}
