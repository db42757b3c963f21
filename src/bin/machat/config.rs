//! The flags: one struct, filled from the command line and `MACHAT_*` environment variables,
//! checked, then turned into the library's plain [`Settings`] ([`Config::settings`]). Only the
//! binary knows about flags; every default here is the matching `Settings` default (a test
//! holds them together), and suits a public server.
//!
//! MaChat's docs write flags Go-style (`-a ADDR`, `-client Mina`), so [`go_style_args`] lets a
//! single dash introduce any long flag, as in the terminal client (which has its own copy).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

#[cfg(test)]
use clap::CommandFactory;
use clap::Parser;
use machat::proxy::{Trusted, TrustedNet};
use machat::settings::{
    self, AuthSettings, ClusterSettings, HistorySettings, Limits, ModerationSettings, NetSettings,
    ProxySettings, Retention, RoomCreation, Settings, TlsSettings, WebSettings,
};

/// machat: a MaChat-compatible chat server. Connect with `nc`, `machat-client` or any MaChat
/// client; flags may be written with one dash or two (`-a ADDR`, `--addr ADDR`).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "machat",
    version,
    after_help = "Flags may be written Go-style: `-a ADDR`, `-addr ADDR`, `--addr ADDR` and \
                  `--addr=ADDR` all work. Every flag has a MACHAT_* variable and a key in the \
                  --config file (its table is the flag's heading: `machat config default` \
                  prints a complete file); a flag wins over its variable, a variable over the \
                  file, the file over the default."
)]
pub struct Config {
    /// Address to listen on for the TCP chat protocol (every address a host name resolves to).
    #[arg(
        help_heading = "Chat",
        short = 'a',
        long = "addr",
        alias = "a",
        env = "MACHAT_ADDR",
        default_value = "localhost:8989"
    )]
    pub addr: String,

    /// Address for the chat protocol over TLS (needs --tls-cert and --tls-key); off unless
    /// given.
    #[arg(help_heading = "Chat", long, env = "MACHAT_TLS_ADDR")]
    pub tls_addr: Option<String>,

    /// Certificate chain (PEM) for --tls-addr and for HTTPS/WSS on --http.
    #[arg(help_heading = "TLS", long, env = "MACHAT_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(help_heading = "TLS", long, env = "MACHAT_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Address for the web side (chat page, WebSocket at /ws, HTTP API, /metrics); `off`
    /// disables it.
    #[arg(
        help_heading = "Web",
        long,
        env = "MACHAT_HTTP",
        default_value = "localhost:8080"
    )]
    pub http: String,

    /// Web origins whose pages may open WebSockets here, comma-separated (`https://chat.example`),
    /// or `*` for any. Pages served by this server (same host) and clients that send no Origin
    /// (not browsers) are always allowed.
    #[arg(
        help_heading = "Web",
        long,
        env = "MACHAT_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Host names the web side answers to, comma-separated (`chat.example.org`), besides IP
    /// addresses, `localhost` and the host of --http, which are always accepted; a request for
    /// any other `Host` gets 421 (DNS rebinding). `*` accepts any host: then a page on any site
    /// whose name is made to resolve to this server can use it as its own.
    #[arg(
        help_heading = "Web",
        long,
        env = "MACHAT_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,

    /// Serve /metrics on this address only (e.g. `127.0.0.1:9090`; plain HTTP even with a
    /// certificate), and no longer on --http. Default: /metrics on --http.
    #[arg(help_heading = "Web", long, env = "MACHAT_METRICS_ADDR")]
    pub metrics_addr: Option<String>,

    /// A file whose first line is a token that /metrics then requires, wherever it is served
    /// (`Authorization: Bearer TOKEN`). A missing or empty file stops the start.
    #[arg(help_heading = "Web", long, env = "MACHAT_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,

    /// Seconds between WebSocket pings, which keep idle browser connections (and the proxies in
    /// front of them) alive; 0 = no pings.
    #[arg(
        help_heading = "Web",
        long,
        env = "MACHAT_WS_PING",
        default_value_t = 30.0
    )]
    pub ws_ping: f64,

    /// Seconds a client may send nothing before it is disconnected; 0 = no limit. WebSocket
    /// clients answer the server's pings (--ws-ping), which counts as sending.
    #[arg(
        help_heading = "Limits",
        long,
        env = "MACHAT_IDLE_TIMEOUT",
        default_value_t = 0.0
    )]
    pub idle_timeout: f64,

    /// Most connections at once; 0 = the descriptor limit minus a reserve of 64.
    #[arg(
        help_heading = "Limits",
        long,
        env = "MACHAT_MAX_CONNECTIONS",
        default_value_t = 0
    )]
    pub max_connections: usize,

    /// Most connections from one IP address; 0 = no limit.
    #[arg(
        help_heading = "Limits",
        long,
        env = "MACHAT_MAX_PER_IP",
        default_value_t = 4096
    )]
    pub max_per_ip: usize,

    /// Most rooms at once; joining a new room beyond this is refused.
    #[arg(
        help_heading = "Limits",
        long,
        env = "MACHAT_MAX_ROOMS",
        default_value_t = 10_000
    )]
    pub max_rooms: usize,

    /// Most members in one room; joining a full room is refused.
    #[arg(
        help_heading = "Limits",
        long,
        env = "MACHAT_MAX_ROOM_MEMBERS",
        default_value_t = 10_000
    )]
    pub max_room_members: usize,

    /// Most rooms one connection may be in at once (version-2 JSON clients, which may be in
    /// many); a join beyond it is refused and the connection stays.
    #[arg(
        help_heading = "Limits",
        long,
        env = "MACHAT_MAX_ROOMS_PER_SESSION",
        default_value_t = 100
    )]
    pub max_rooms_per_session: usize,

    /// Seconds a member whose connection closed or dropped stays in its rooms (listed, its
    /// name held) before they are told it left; back within it (a reload, a reconnect), nobody
    /// sees it leave or join. 0 = off: the room is told at once.
    #[arg(
        help_heading = "Limits",
        long,
        env = "MACHAT_LEAVE_GRACE",
        default_value_t = 10.0
    )]
    pub leave_grace: f64,

    /// Lines per second a connection may send, sustained; a faster sender is read more slowly
    /// (nothing is dropped). 0 = no limit.
    #[arg(
        help_heading = "Limits",
        long,
        env = "MACHAT_MAX_LINE_RATE",
        default_value_t = 50.0
    )]
    pub max_line_rate: f64,

    /// Lines a connection may send in a burst above the sustained rate.
    #[arg(
        help_heading = "Limits",
        long,
        env = "MACHAT_LINE_BURST",
        default_value_t = 100
    )]
    pub line_burst: u32,

    /// Bytes a client may fall behind (its outbound queue) before it is disconnected as a slow
    /// consumer.
    #[arg(help_heading = "Limits", long, env = "MACHAT_MAX_PENDING", default_value_t = 1024 * 1024)]
    pub max_pending: usize,

    /// Bytes queued for clients in all rooms together; above it, the clients with the most
    /// unread bytes are cut off first, until it is met again. 0 = no limit.
    #[arg(help_heading = "Limits", long, env = "MACHAT_MAX_QUEUED_TOTAL", default_value_t = 256 * 1024 * 1024)]
    pub max_queued_total: usize,

    /// Longest line a client may send, in bytes; longer lines are refused and discarded.
    #[arg(
        help_heading = "Limits",
        long,
        env = "MACHAT_MAX_LINE",
        default_value_t = 8192
    )]
    pub max_line: usize,

    /// Largest handshake object, in bytes.
    #[arg(
        help_heading = "Limits",
        long,
        env = "MACHAT_MAX_HANDSHAKE",
        default_value_t = 4096
    )]
    pub max_handshake: usize,

    /// Seconds a new connection has to complete its handshake.
    #[arg(
        help_heading = "Limits",
        long,
        env = "MACHAT_HANDSHAKE_TIMEOUT",
        default_value_t = 60.0
    )]
    pub handshake_timeout: f64,

    /// Listen backlog: connects the kernel queues before accept (a burst of thousands of
    /// clients overflows a small one, and each dropped connect waits a second to retry).
    #[arg(
        help_heading = "Chat",
        long,
        env = "MACHAT_BACKLOG",
        default_value_t = 4096
    )]
    pub backlog: u32,

    /// Worker threads; 0 = one per CPU core.
    #[arg(
        help_heading = "Chat",
        long,
        env = "MACHAT_THREADS",
        default_value_t = 0
    )]
    pub threads: usize,

    /// Where message history is kept: `sqlite` (a file in --data-dir, survives restarts),
    /// `memory` (until the server stops) or `off`.
    #[arg(
        help_heading = "History",
        long,
        env = "MACHAT_HISTORY",
        value_enum,
        default_value = "sqlite"
    )]
    pub history: HistoryMode,

    /// Directory for the database of history and registered names (created if missing).
    #[arg(
        help_heading = "Data",
        long,
        env = "MACHAT_DATA_DIR",
        default_value = "machat-data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Only registered names (`machat user add`) may join, each with its password.
    #[arg(help_heading = "Accounts", long, env = "MACHAT_REQUIRE_AUTH")]
    pub require_auth: bool,

    /// Days a session token from `POST /api/login` (the web page's login) lasts; fractions
    /// allowed (`0.5` is twelve hours).
    #[arg(
        help_heading = "Accounts",
        long,
        env = "MACHAT_LOGIN_TTL",
        default_value_t = 30.0
    )]
    pub login_ttl: f64,

    /// Who may create a room that does not exist yet: `anyone`, `registered` (names logged in
    /// with their password) or `admins` (server admins). A room created by a registered name
    /// is owned by it.
    #[arg(
        help_heading = "Moderation",
        long,
        env = "MACHAT_ROOM_CREATION",
        value_enum,
        default_value = "anyone"
    )]
    pub room_creation: RoomCreationArg,

    /// Enables the admin API (`/api/admin/...` on the web side): the file's first line is the
    /// bearer token it requires.
    #[arg(help_heading = "Moderation", long, env = "MACHAT_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,

    /// Messages replayed on join to clients that do not ask (`"history": N` in the handshake
    /// asks); 0 keeps old MaChat clients seeing exactly what they used to.
    #[arg(
        help_heading = "History",
        long,
        env = "MACHAT_HISTORY_ON_JOIN",
        default_value_t = 0
    )]
    pub history_on_join: u64,

    /// Most messages kept per room; older ones are pruned in the background.
    #[arg(
        help_heading = "History",
        long,
        env = "MACHAT_HISTORY_MAX",
        default_value_t = 10_000
    )]
    pub history_max: u64,

    /// Prune messages older than this (`90s`, `30m`, `12h`, `7d`; a bare number is seconds).
    /// Default: kept until --history-max pushes them out.
    #[arg(help_heading = "History", long, env = "MACHAT_HISTORY_MAX_AGE", value_parser = parse_age)]
    pub history_max_age: Option<Duration>,

    /// Most bytes of history kept over all rooms together (0: no bound); past it the oldest
    /// messages are pruned first, whatever their room.
    #[arg(help_heading = "History", long, env = "MACHAT_HISTORY_MAX_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub history_max_bytes: u64,

    /// `batch`: commit at least every 50 ms or 1,000 messages (a power cut may lose that
    /// window); `sync`: a message is delivered only once committed and fsynced.
    #[arg(
        help_heading = "History",
        long,
        env = "MACHAT_DURABILITY",
        value_enum,
        default_value = "batch"
    )]
    pub durability: Durability,

    /// Cluster mode: the NATS server(s) with JetStream to share rooms, history and names with
    /// other machat nodes (`nats://host:4222`, several separated by commas). History then
    /// lives in JetStream and --history and --durability do not apply. Default: one machine.
    #[arg(help_heading = "Cluster", long, env = "MACHAT_NATS", global = true)]
    pub nats: Option<String>,

    /// Cluster mode: copies JetStream keeps of the history and the names (1, or 3 on a
    /// three-server NATS cluster). Used when this node is the first to create them.
    #[arg(
        help_heading = "Cluster",
        long,
        env = "MACHAT_NATS_REPLICAS",
        default_value_t = 1,
        global = true
    )]
    pub nats_replicas: usize,

    /// Cluster mode: seconds after which the names of a node that died are free again and its
    /// members are announced as left. Its names are rewritten every third of this.
    #[arg(
        help_heading = "Cluster",
        long,
        env = "MACHAT_PRESENCE_TTL",
        default_value_t = 15.0
    )]
    pub presence_ttl: f64,
    /// A TOML file with any of these settings, grouped in tables by the headings below
    /// (`machat config default` prints one). A flag or a MACHAT_* variable overrides the file;
    /// SIGHUP re-reads it. Relative paths in it are relative to the file's directory.
    #[arg(long, env = "MACHAT_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Connections from one IP address that may be in their handshake at once (chat and TLS
    /// ports); more are refused at once. Bounds slow-loris clients under the long handshake
    /// timeout. 0 = no limit.
    #[arg(
        long,
        help_heading = "Limits",
        env = "MACHAT_MAX_HANDSHAKES_PER_IP",
        default_value_t = 64
    )]
    pub max_handshakes_per_ip: usize,

    /// The fewest characters a new password may have (`machat user add`, `machat user
    /// passwd`); passwords already registered keep working.
    #[arg(
        long,
        env = "MACHAT_MIN_PASSWORD_LENGTH",
        default_value_t = settings::DEFAULT_MIN_PASSWORD_LENGTH,
        help_heading = "Accounts",
        global = true
    )]
    pub min_password_length: usize,

    /// Reverse proxies whose word on the client's address is taken, comma-separated networks
    /// or addresses (`127.0.0.1,10.0.0.0/8,fd00::/8`): from them, the web side reads the
    /// client from `Forwarded` / `X-Forwarded-For` and, with --proxy-protocol, the chat and
    /// TLS ports from a PROXY header. From anyone else these are ignored. Default: nobody.
    #[arg(
        long,
        env = "MACHAT_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_name = "CIDR,...",
        help_heading = "Proxy"
    )]
    pub trusted_proxies: Vec<TrustedNet>,

    /// Connections from --trusted-proxies to the chat and TLS ports start with a PROXY
    /// protocol header (v1 or v2, as nginx's `proxy_protocol on` or HAProxy's `send-proxy`
    /// send), which names the client; one without a valid header is closed.
    #[arg(long, env = "MACHAT_PROXY_PROTOCOL", help_heading = "Proxy")]
    pub proxy_protocol: bool,
}

/// What `machat` does instead of serving.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Registered names: `machat user add NAME [--admin]` (the password is read from stdin),
    /// `machat user remove NAME`, `machat user admin NAME on|off`, `machat user list`,
    /// `machat user logout NAME` (revokes its web logins), `machat user passwd NAME`. Uses
    /// --data-dir, or with --nats the cluster's names.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Copies every database of --data-dir into DIR (created; refused if it holds files,
    /// unless --force) while a server may be running. Restore: stop the server, copy DIR's
    /// files into an empty data dir, start it.
    Backup {
        dir: PathBuf,
        /// Writes over the files of the same names in DIR.
        #[arg(long)]
        force: bool,
    },
    /// Writes the history of --data-dir to stdout as JSON lines (a server may be running).
    Export {
        /// Only this room.
        #[arg(long)]
        room: Option<String>,
        /// Only messages with ids above this.
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// Reads `machat export`'s JSON lines from stdin into an empty --data-dir, keeping ids;
    /// a bad line stops it with its number and writes nothing.
    Import,
    /// The configuration file: `machat config default` prints one with every setting and its
    /// default; `machat config check FILE` checks one and prints the settings it makes.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum ConfigAction {
    /// Prints a complete configuration file: every setting, what it does, its default.
    Default,
    /// Checks FILE (or the --config file) as `machat --config FILE` would (exit 2 on an
    /// error, naming its line) and prints the settings it makes, flags and MACHAT_* variables
    /// applied.
    Check { file: Option<PathBuf> },
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum UserAction {
    /// Registers NAME, or sets a new password for it; the password is read from stdin. With
    /// --nats, for every node of the cluster; otherwise in --data-dir.
    Add {
        name: String,
        /// Makes NAME a server admin too (a new password keeps the role a name has).
        #[arg(long)]
        admin: bool,
    },
    /// Removes NAME's registration.
    Remove { name: String },
    /// Gives (`on`) or takes (`off`) the server admin role of a registered NAME.
    Admin { name: String, role: OnOff },
    /// Lists the registered names, an admin's followed by ` (admin)`.
    List,
    /// Revokes every session token of NAME (the web page's logins); connections already open
    /// stay.
    Logout { name: String },
    /// Sets a new password for a registered NAME (read from stdin, as for `add`); its role
    /// stays.
    Passwd { name: String },
}

/// `--room-creation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoomCreationArg {
    Anyone,
    Registered,
    Admins,
}

/// `machat user admin NAME on|off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

impl OnOff {
    pub fn on(self) -> bool {
        self == OnOff::On
    }
}

/// `--durability`: the flag's spelling of [`settings::Durability`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    Batch,
    Sync,
}

/// `--history`: the flag's spelling of [`settings::HistoryMode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HistoryMode {
    Sqlite,
    Memory,
    Off,
}

/// Why flags cannot make a configuration. A [`Config::validate`] failure is a usage error, like
/// clap's own: each names the flags to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--tls-cert and --tls-key go together")]
    TlsPair,
    #[error("--tls-addr needs --tls-cert and --tls-key")]
    TlsAddrAlone,
    #[error("--idle-timeout must be a number of seconds >= 0")]
    IdleTimeout,
    #[error("--ws-ping must be a number of seconds >= 0")]
    WsPing,
    #[error("--max-line-rate must be a number >= 0")]
    MaxLineRate,
    #[error("--line-burst must be at least 1")]
    LineBurst,
    #[error("--handshake-timeout must be > 0")]
    HandshakeTimeout,
    #[error("--presence-ttl must be from 1 to 86400 seconds")]
    PresenceTtl,
    #[error("--nats-replicas must be from 1 to 5")]
    NatsReplicas,
    #[error("--history-max must be > 0 (use --history off for no history)")]
    HistoryMax,
    #[error("--leave-grace must be a number of seconds from 0 to 3600")]
    LeaveGrace,
    #[error("--max-rooms, --max-room-members and --max-rooms-per-session must be > 0")]
    RoomLimits,
    #[error("--max-line, --max-handshake and --max-pending must be > 0")]
    SizeLimits,
    #[error("--login-ttl must be a number of days > 0 (at most 36500)")]
    LoginTtl,
    #[error("--proxy-protocol needs --trusted-proxies: the PROXY header is read only from them")]
    ProxyProtocolAlone,
}

impl ConfigError {
    /// The flags (their ids, as in the file) the error is about, the first the one to blame.
    pub fn flags(&self) -> &'static [&'static str] {
        use ConfigError::*;
        match self {
            TlsPair => &["tls_cert", "tls_key"],
            TlsAddrAlone => &["tls_addr", "tls_cert"],
            IdleTimeout => &["idle_timeout"],
            WsPing => &["ws_ping"],
            MaxLineRate => &["max_line_rate"],
            LineBurst => &["line_burst", "max_line_rate"],
            HandshakeTimeout => &["handshake_timeout"],
            PresenceTtl => &["presence_ttl"],
            NatsReplicas => &["nats_replicas"],
            HistoryMax => &["history_max"],
            LeaveGrace => &["leave_grace"],
            RoomLimits => &["max_rooms", "max_room_members", "max_rooms_per_session"],
            SizeLimits => &["max_line", "max_handshake", "max_pending"],
            LoginTtl => &["login_ttl"],
            ProxyProtocolAlone => &["proxy_protocol", "trusted_proxies"],
        }
    }
}

/// Parses `90s`, `30m`, `12h`, `7d` or a number of seconds.
fn parse_age(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (try 7d, 12h, 30m, 90s)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("unknown unit in {s:?} (use s, m, h or d)")),
    };
    if secs == 0 {
        return Err("the age must be more than 0".into());
    }
    Ok(Duration::from_secs(secs))
}

impl Config {
    /// The settings these flags ask for. Meant for flags that passed [`Config::validate`];
    /// numbers it would refuse still give settings (the defaults, for durations), never a
    /// panic, since `machat user ...` does not validate the server's flags.
    pub fn settings(&self) -> Settings {
        let mut settings = Settings {
            net: NetSettings {
                addr: self.addr.clone(),
                tls_addr: self.tls_addr.clone(),
                backlog: self.backlog,
                threads: self.threads,
            },
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsSettings {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            web: WebSettings {
                http: self.http_addr().map(str::to_owned),
                metrics_addr: self.metrics_addr.clone(),
                metrics_token_file: self.metrics_token_file.clone(),
                allowed_hosts: self.allowed_hosts.clone(),
                allowed_origins: self.allowed_origins.clone(),
                ws_ping: self.ws_ping,
            },
            limits: Limits {
                max_connections: self.max_connections,
                max_per_ip: self.max_per_ip,
                handshake_timeout: self.handshake_timeout(),
                max_handshake: self.max_handshake,
                max_line: self.max_line,
                line_rate: self.max_line_rate,
                line_burst: self.line_burst,
                idle_timeout: self.idle_timeout,
                max_pending: self.max_pending,
                max_queued_total: self.max_queued_total,
                max_rooms: self.max_rooms,
                max_room_members: self.max_room_members,
                max_rooms_per_session: self.max_rooms_per_session,
                leave_grace: Duration::try_from_secs_f64(self.leave_grace)
                    .unwrap_or(Limits::default().leave_grace),
                max_handshakes_per_ip: self.max_handshakes_per_ip,
            },
            history: HistorySettings {
                mode: match self.history {
                    HistoryMode::Sqlite => settings::HistoryMode::Sqlite,
                    HistoryMode::Memory => settings::HistoryMode::Memory,
                    HistoryMode::Off => settings::HistoryMode::Off,
                },
                data_dir: PathBuf::new(),
                durability: match self.durability {
                    Durability::Batch => settings::Durability::Batch,
                    Durability::Sync => settings::Durability::Sync,
                },
                retention: Retention {
                    max_messages: self.history_max,
                    max_age: self.history_max_age,
                    max_total_bytes: self.history_max_bytes,
                },
                on_join: self.history_on_join,
            },
            auth: AuthSettings {
                data_dir: PathBuf::new(),
                require_auth: self.require_auth,
                login_ttl: self.login_ttl(),
                min_password_length: self.min_password_length,
            },
            moderation: ModerationSettings {
                room_creation: match self.room_creation {
                    RoomCreationArg::Anyone => RoomCreation::Anyone,
                    RoomCreationArg::Registered => RoomCreation::Registered,
                    RoomCreationArg::Admins => RoomCreation::Admins,
                },
                admin_token_file: self.admin_token_file.clone(),
            },
            cluster: self.nats.as_ref().map(|url| {
                let mut cluster = ClusterSettings::new(url.clone());
                cluster.replicas = self.nats_replicas;
                if let Ok(ttl) = Duration::try_from_secs_f64(self.presence_ttl) {
                    cluster.presence_ttl = ttl;
                }
                cluster
            }),
            proxy: ProxySettings {
                trusted: Trusted::new(self.trusted_proxies.clone()),
                protocol: self.proxy_protocol,
            },
        };
        settings.set_data_dir(&self.data_dir);
        settings
    }

    fn login_ttl(&self) -> Duration {
        Duration::try_from_secs_f64(self.login_ttl * 86_400.0)
            .ok()
            .filter(|d| !d.is_zero())
            .unwrap_or(AuthSettings::default().login_ttl)
    }

    fn handshake_timeout(&self) -> Duration {
        Duration::try_from_secs_f64(self.handshake_timeout)
            .unwrap_or(Limits::default().handshake_timeout)
    }

    /// The web side's address, unless it is off.
    fn http_addr(&self) -> Option<&str> {
        let a = self.http.trim();
        (!a.eq_ignore_ascii_case("off") && !a.is_empty()).then_some(a)
    }

    /// Checks what clap's types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::TlsPair);
        }
        if self.tls_addr.is_some() && self.tls_cert.is_none() {
            return Err(ConfigError::TlsAddrAlone);
        }
        if !(self.idle_timeout >= 0.0 && self.idle_timeout.is_finite()) {
            return Err(ConfigError::IdleTimeout);
        }
        if !(self.ws_ping >= 0.0 && self.ws_ping.is_finite()) {
            return Err(ConfigError::WsPing);
        }
        if !(self.max_line_rate >= 0.0 && self.max_line_rate.is_finite()) {
            return Err(ConfigError::MaxLineRate);
        }
        if self.line_burst == 0 && self.max_line_rate > 0.0 {
            return Err(ConfigError::LineBurst);
        }
        if !(self.handshake_timeout > 0.0 && self.handshake_timeout.is_finite()) {
            return Err(ConfigError::HandshakeTimeout);
        }
        if !(self.leave_grace >= 0.0 && self.leave_grace <= 3600.0) {
            return Err(ConfigError::LeaveGrace);
        }
        if !(self.presence_ttl >= 1.0 && self.presence_ttl <= 86_400.0) {
            return Err(ConfigError::PresenceTtl);
        }
        if !(1..=5).contains(&self.nats_replicas) {
            return Err(ConfigError::NatsReplicas);
        }
        if self.history_max == 0 {
            return Err(ConfigError::HistoryMax);
        }
        if self.max_rooms == 0 || self.max_room_members == 0 || self.max_rooms_per_session == 0 {
            return Err(ConfigError::RoomLimits);
        }
        if self.max_line == 0 || self.max_handshake == 0 || self.max_pending == 0 {
            return Err(ConfigError::SizeLimits);
        }
        if !(self.login_ttl > 0.0 && self.login_ttl <= 36_500.0) {
            return Err(ConfigError::LoginTtl);
        }
        if self.proxy_protocol && self.trusted_proxies.is_empty() {
            return Err(ConfigError::ProxyProtocolAlone);
        }
        Ok(())
    }
}

/// Rewrites `-name` and `-name=value` to `--name...` when `name` is a long flag of `cmd`, the
/// way Go's `flag` package reads them. Short flags (`-a`) and values are left alone.
pub fn go_style_args(
    args: impl IntoIterator<Item = OsString>,
    cmd: &clap::Command,
) -> Vec<OsString> {
    let longs: Vec<String> = cmd
        .get_arguments()
        .flat_map(|a| {
            a.get_long().into_iter().map(str::to_owned).chain(
                a.get_all_aliases()
                    .unwrap_or_default()
                    .into_iter()
                    .map(str::to_owned),
            )
        })
        .chain(["help".to_owned(), "version".to_owned()])
        .collect();
    let mut out = Vec::new();
    let mut rest_positional = false;
    for arg in args {
        if rest_positional {
            out.push(arg);
            continue;
        }
        let Some(s) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if s == "--" {
            rest_positional = true;
            out.push(arg);
            continue;
        }
        if let Some(body) = s.strip_prefix('-') {
            if !body.starts_with('-') && body.chars().count() > 1 {
                let name = body.split('=').next().unwrap_or(body);
                if longs.iter().any(|l| l == name) {
                    out.push(OsString::from(format!("-{s}")));
                    continue;
                }
            }
        }
        out.push(arg);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let args = args.iter().map(OsString::from);
        Config::try_parse_from(go_style_args(args, &Config::command())).unwrap()
    }

    #[test]
    fn flags_work_with_one_dash_or_two() {
        assert_eq!(parse(&["machat"]).addr, "localhost:8989");
        assert_eq!(parse(&["machat", "-a", "127.0.0.1:1"]).addr, "127.0.0.1:1");
        assert_eq!(parse(&["machat", "--a", "127.0.0.1:2"]).addr, "127.0.0.1:2");
        assert_eq!(
            parse(&["machat", "-addr", "127.0.0.1:3"]).addr,
            "127.0.0.1:3"
        );
        assert_eq!(parse(&["machat", "--addr=127.0.0.1:4"]).addr, "127.0.0.1:4");
        assert_eq!(parse(&["machat", "-addr=127.0.0.1:5"]).addr, "127.0.0.1:5");
        let c = parse(&["machat", "-max-line-rate", "0", "--max-pending", "10"]);
        assert_eq!(c.max_line_rate, 0.0);
        assert_eq!(c.max_pending, 10);
    }

    #[test]
    fn history_flags() {
        let c = parse(&["machat"]);
        assert_eq!(
            (c.history, c.history_on_join, c.history_max),
            (HistoryMode::Sqlite, 0, 10_000)
        );
        assert_eq!(c.data_dir, PathBuf::from("machat-data"));
        let c = parse(&["machat", "-history", "memory", "-history-max-age", "7d"]);
        assert_eq!(c.history, HistoryMode::Memory);
        assert_eq!(c.history_max_age, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age("90"), Ok(Duration::from_secs(90)));
        assert!(parse_age("3w").is_err() && parse_age("0s").is_err() && parse_age("").is_err());
    }

    #[test]
    fn user_subcommands() {
        let action = |args: &[&str]| match parse(args).command {
            Some(Command::User { action }) => action,
            _ => panic!("no user command in {args:?}"),
        };
        assert!(matches!(
            action(&["machat", "user", "add", "Mina", "--admin"]),
            UserAction::Add { name, admin: true } if name == "Mina"
        ));
        assert!(matches!(
            action(&["machat", "user", "add", "Mina"]),
            UserAction::Add { admin: false, .. }
        ));
        assert!(matches!(
            action(&["machat", "user", "admin", "Mina", "off"]),
            UserAction::Admin {
                role: OnOff::Off,
                ..
            }
        ));
        assert!(matches!(
            action(&["machat", "user", "logout", "Mina"]),
            UserAction::Logout { name } if name == "Mina"
        ));
        assert!(matches!(
            action(&["machat", "user", "passwd", "Mina"]),
            UserAction::Passwd { name } if name == "Mina"
        ));
        let c = parse(&[
            "machat",
            "user",
            "passwd",
            "Mina",
            "--min-password-length",
            "12",
        ]);
        assert_eq!(c.settings().auth.min_password_length, 12);
        let bad = ["machat", "user", "admin", "Mina", "yes"].map(OsString::from);
        assert!(Config::try_parse_from(bad).is_err());
    }

    #[test]
    fn data_subcommands() {
        assert!(matches!(
            parse(&["machat", "backup", "b", "--force", "--data-dir", "d"]).command,
            Some(Command::Backup { dir, force: true }) if dir == std::path::Path::new("b")
        ));
        assert!(matches!(
            parse(&["machat", "export", "--room", "r", "--since", "7"]).command,
            Some(Command::Export { room: Some(r), since: 7 }) if r == "r"
        ));
        assert!(matches!(
            parse(&["machat", "import"]).command,
            Some(Command::Import)
        ));
    }

    #[test]
    fn defaults_validate() {
        assert!(parse(&["machat"]).validate().is_ok());
        assert!(parse(&["machat", "--max-line-rate=-1"]).validate().is_err());
    }

    /// `machat` with no flags and a server from `Settings::default()` are the same server.
    #[test]
    fn default_flags_are_the_default_settings() {
        assert_eq!(parse(&["machat"]).settings(), Settings::default());
    }

    #[test]
    fn proxy_flags_reach_their_settings() {
        let s = parse(&[
            "machat",
            "--trusted-proxies",
            "127.0.0.1,10.0.0.0/8",
            "--trusted-proxies",
            "fd00::/8",
            "--proxy-protocol",
        ]);
        assert!(s.validate().is_ok());
        let proxy = s.settings().proxy;
        assert!(proxy.protocol);
        for ip in ["127.0.0.1", "10.2.3.4", "fd00::1"] {
            assert!(proxy.trusted.contains(ip.parse().unwrap()), "{ip}");
        }
        assert!(!proxy.trusted.contains("127.0.0.2".parse().unwrap()));
        // A bad entry stops the start, naming it.
        let bad = Config::try_parse_from(["machat", "--trusted-proxies", "10.0.0.1,bogus/8"]);
        let text = bad.map(|_| ()).unwrap_err().to_string();
        assert!(text.contains("bogus/8"), "{text}");
        // The PROXY header is read only from trusted proxies: alone, it is an error.
        let alone = parse(&["machat", "--proxy-protocol"]).validate();
        assert!(matches!(alone, Err(ConfigError::ProxyProtocolAlone)));
    }

    #[test]
    fn flags_reach_their_settings() {
        let s = parse(&["machat"]);
        assert_eq!(s.settings().cluster, None);
        let s = parse(&[
            "machat",
            "--http",
            " OFF ",
            "--data-dir",
            "d",
            "--nats",
            "nats://a:4222",
            "--presence-ttl",
            "2.5",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--history",
            "memory",
            "--durability",
            "sync",
            "--max-queued-total",
            "0",
            "--handshake-timeout",
            "0.5",
        ])
        .settings();
        assert_eq!(s.web.http, None);
        assert_eq!(s.history.data_dir, PathBuf::from("d"));
        assert_eq!(s.auth.data_dir, PathBuf::from("d"));
        let cluster = s.cluster.clone().unwrap();
        assert_eq!(cluster.url, "nats://a:4222");
        assert_eq!(cluster.presence_ttl, Duration::from_millis(2500));
        let tls = s.tls.clone().unwrap();
        assert_eq!((tls.cert, tls.key), ("c.pem".into(), "k.pem".into()));
        assert_eq!(s.history.mode, settings::HistoryMode::Memory);
        assert_eq!(s.history.durability, settings::Durability::Sync);
        assert_eq!(s.limits.max_queued_total, 0);
        assert_eq!(s.hub().max_queued_total, usize::MAX);
        assert_eq!(s.limits.handshake_timeout, Duration::from_millis(500));
        let s = parse(&["machat", "--leave-grace", "0"]).settings();
        assert_eq!(s.limits.leave_grace, Duration::ZERO);
        assert_eq!(s.hub().leave_grace, Duration::ZERO);
        let s = parse(&["machat", "--leave-grace", "1.5"]).settings();
        assert_eq!(s.hub().leave_grace, Duration::from_millis(1500));
        assert_eq!(
            Settings::default().limits.leave_grace,
            Duration::from_secs(10)
        );
        assert!(parse(&["machat", "--leave-grace", "7200"])
            .validate()
            .is_err());
        assert!(parse(&["machat", "--leave-grace", "NaN"])
            .validate()
            .is_err());
        let s = parse(&["machat", "--login-ttl", "0.5"]).settings();
        assert_eq!(s.auth.login_ttl, Duration::from_secs(43_200));
        assert!(parse(&["machat", "--login-ttl", "0"]).validate().is_err());
        let s = parse(&["machat", "--http", " 127.0.0.1:0 "]).settings();
        assert_eq!(s.web.http.as_deref(), Some("127.0.0.1:0"));
    }
}
