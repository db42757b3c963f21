//! machat-bench: a load generator for machat, with Redis pub/sub and NATS as yardsticks.
//!
//! - `fanout`: clients in rooms, senders at a fixed total rate or as fast as the sockets take it;
//!   reports offered and delivered messages/s, loss, end-to-end latency percentiles.
//! - `idle`: many quiet connections; reports the time to open them and the server's RSS per
//!   connection.
//!
//! Targets: machat over TCP (`machat`, `--addr` = its chat port), machat's WebSocket endpoint
//! (`machat-ws`, `--addr` = its `--http` address), Redis and NATS.
//!
//! Several servers sharing rooms (a machat cluster): `fanout --reader-addr ADDR`, repeated,
//! keeps the senders on `--addr` and spreads the readers over those addresses; latency is then
//! also reported per server, and for the servers other than the senders' (cross-node latency).
//!
//! With `--server-pid` the server's peak RSS and CPU time are read from /proc (repeat it for a
//! server made of several processes: a cluster's nodes and its NATS server). With `--json`
//! exactly one JSON line per run is printed on stdout (errors go to stderr, exit code 1).

mod fanout;
mod idle;
mod net;
mod procstat;
mod proto;
mod ws;

use std::net::{SocketAddr, ToSocketAddrs};

use clap::{Parser, Subcommand};

use proto::Target;

#[derive(Parser, Debug)]
#[command(
    name = "machat-bench",
    version,
    about = "Load generator for machat (and Redis/NATS pub/sub for comparison)"
)]
struct Cli {
    /// Server under test.
    #[arg(long, value_enum, default_value_t = Target::Machat, global = true)]
    target: Target,
    /// Server address (for machat-ws: the server's --http address; the bench connects to
    /// ws://ADDR/ws).
    #[arg(long, default_value = "127.0.0.1:8989", global = true)]
    addr: String,
    /// Server process id: report its peak RSS and CPU time (from /proc). Repeat it for a
    /// server made of several processes (a cluster's nodes and its NATS server): the figures
    /// are then their sums, and fanout also reports each process (`servers`).
    #[arg(long, global = true)]
    server_pid: Vec<u32>,
    /// Worker threads of the generator (1 = a single-threaded runtime).
    #[arg(long, default_value_t = 1, global = true)]
    threads: usize,
    /// Print exactly one JSON line per run instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Free-form label copied into the report (e.g. the scenario name).
    #[arg(long, global = true)]
    label: Option<String>,
    /// Spread client sockets over this many loopback source addresses (127.0.0.2, ...);
    /// 0 = let the kernel choose.
    #[arg(long, default_value_t = 32, global = true)]
    src_addrs: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Fan-out throughput and latency: clients in rooms, some of them sending.
    Fanout(fanout::FanoutArgs),
    /// Idle connections: open time and server memory per connection.
    Idle(idle::IdleArgs),
}

/// Settings every scenario uses.
pub struct Common {
    pub target: Target,
    pub addr: SocketAddr,
    pub server_pids: Vec<u32>,
    pub threads: usize,
    pub label: Option<String>,
    pub src_addrs: u8,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = real_main(cli) {
        eprintln!("machat-bench: {e}");
        std::process::exit(1);
    }
}

fn real_main(cli: Cli) -> Result<(), String> {
    let addr = resolve("--addr", &cli.addr)?;
    procstat::raise_nofile();
    let threads = cli.threads.max(1);
    let common = Common {
        target: cli.target,
        addr,
        server_pids: cli.server_pid,
        threads,
        label: cli.label,
        src_addrs: cli.src_addrs,
    };
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .map_err(|e| format!("tokio runtime: {e}"))?;
    let json = cli.json;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Fanout(args) => {
                let r = fanout::run(&common, &args).await?;
                if json {
                    println!("{}", to_json(&r)?);
                } else {
                    fanout::print_table(&r);
                }
            }
            Cmd::Idle(args) => {
                let r = idle::run(&common, &args).await?;
                if json {
                    println!("{}", to_json(&r)?);
                } else {
                    idle::print_table(&r);
                }
            }
        }
        Ok(())
    })
}

/// The first socket address `addr` (given as `flag`) resolves to.
pub fn resolve(flag: &str, addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("bad {flag} {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{flag} {addr} resolves to nothing"))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, String> {
    serde_json::to_string(v).map_err(|e| format!("json: {e}"))
}

/// A quantile of a latency histogram, 0 when nothing was recorded.
fn quantile(hist: &hdrhistogram::Histogram<u64>, p: f64) -> u64 {
    if hist.is_empty() {
        0
    } else {
        hist.value_at_quantile(p)
    }
}
