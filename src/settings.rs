//! What the server follows, as plain values: no flags, no environment, no parsing. The binary
//! fills a [`Settings`] from its flags; the in-process test harness (and, later, a settings
//! file) fills one directly. Each group belongs to the layer that reads it, and a value two
//! layers need (the longest line, how far behind a client may fall, how much history is kept)
//! is given once here and handed to each of them by [`Settings`]' methods at start-up, so no
//! layer reads another's settings and no two copies can disagree.
//!
//! Every `Default` is the flag's default: a server started from `Settings::default()` behaves
//! as `machat` with no flags.

use std::path::PathBuf;
use std::time::Duration;

/// Everything a server is started from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Settings {
    pub net: NetSettings,
    /// The certificate for the TLS chat port and for HTTPS/WSS; none: plain text only.
    pub tls: Option<TlsSettings>,
    pub web: WebSettings,
    pub limits: Limits,
    pub history: HistorySettings,
    pub auth: AuthSettings,
    pub moderation: ModerationSettings,
    /// Cluster mode: rooms, history and names shared over NATS JetStream; none: one machine.
    pub cluster: Option<ClusterSettings>,
    /// Behind a reverse proxy: whose word on the client's address is taken.
    pub proxy: ProxySettings,
}

/// Behind a reverse proxy (see `proxy`): the peers whose `Forwarded` / `X-Forwarded-For`
/// headers (web side) and PROXY protocol header (chat and TLS ports) name the client.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProxySettings {
    /// The trusted proxies (`--trusted-proxies`); empty: every peer is the client.
    pub trusted: crate::proxy::Trusted,
    /// Connections from trusted proxies to the chat and TLS ports start with a PROXY protocol
    /// header (`--proxy-protocol`); needs `trusted`.
    pub protocol: bool,
}

/// Where the chat ports listen, and the threads that serve them.
#[derive(Debug, Clone, PartialEq)]
pub struct NetSettings {
    /// The TCP chat protocol: every address this `host:port` resolves to (`--addr`).
    pub addr: String,
    /// The chat protocol over TLS (`--tls-addr`); needs [`Settings::tls`].
    pub tls_addr: Option<String>,
    /// Connects the kernel queues before accept (`--backlog`), for the web side's listeners
    /// too: a burst of thousands of clients overflows a small one, and each dropped connect
    /// waits a second to retry.
    pub backlog: u32,
    /// Worker threads, one runtime each (`--threads`); 0 = one per CPU core.
    pub threads: usize,
}

/// The server's certificate chain and key, PEM files (`--tls-cert`, `--tls-key`).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The web side: the page, WebSockets, the API and `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct WebSettings {
    /// Where the web side listens (`--http`); none: off (unless `metrics_addr` is set).
    pub http: Option<String>,
    /// `/metrics` alone, on this address and no longer on `http` (`--metrics-addr`).
    pub metrics_addr: Option<String>,
    /// A file whose first line is the bearer token `/metrics` requires
    /// (`--metrics-token-file`).
    pub metrics_token_file: Option<PathBuf>,
    /// Host names served besides IP addresses, `localhost` and the hosts of `http` and
    /// `metrics_addr` (`--allowed-hosts`; `*` for any): a guard against DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// Origins whose pages may open WebSockets here besides the server's own
    /// (`--allowed-origins`; `*` for any).
    pub allowed_origins: Vec<String>,
    /// Seconds between WebSocket pings, which keep idle browsers and their proxies connected
    /// (`--ws-ping`); 0 = none.
    pub ws_ping: f64,
}

/// What one client, one address, one room or all of them together may take: the bounds that
/// keep a public server up under load and abuse.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Connections at once (`--max-connections`); 0 = the descriptor limit minus a reserve of
    /// 64, so the server can still open its files.
    pub max_connections: usize,
    /// Connections from one IP address (`--max-per-ip`); 0 = no limit.
    pub max_per_ip: usize,
    /// Time a new connection has to send its handshake (`--handshake-timeout`): long enough
    /// for a person typing it into `nc`; silent connections cannot pile up beyond
    /// `max_handshakes_per_ip` from one address.
    pub handshake_timeout: Duration,
    /// The largest handshake, in bytes (`--max-handshake`).
    pub max_handshake: usize,
    /// The longest line a client may send, in bytes (`--max-line`).
    pub max_line: usize,
    /// Lines per second a client may send, sustained (`--max-line-rate`); a faster sender is
    /// read more slowly, nothing is dropped. 0 = no limit.
    pub line_rate: f64,
    /// Lines a client may send in a burst above the rate (`--line-burst`).
    pub line_burst: u32,
    /// Seconds a client may send nothing before it is disconnected (`--idle-timeout`);
    /// 0 = no limit.
    pub idle_timeout: f64,
    /// Bytes a client may fall behind before it is cut as a slow consumer (`--max-pending`),
    /// so one slow reader never slows its room or grows memory.
    pub max_pending: usize,
    /// Bytes queued for clients in all rooms together (`--max-queued-total`); above it the
    /// largest queues are cut first. 0 = no limit.
    pub max_queued_total: usize,
    /// Rooms at once (`--max-rooms`), so one client cannot fill the server with rooms.
    pub max_rooms: usize,
    /// Members in one room (`--max-room-members`).
    pub max_room_members: usize,
    /// Rooms one version-2 connection may be in at once (`--max-rooms-per-session`).
    pub max_rooms_per_session: usize,
    /// How long a member whose connection closed or dropped stays in its rooms before they
    /// are told it left (`--leave-grace`; zero: they are told at once). A reload or a
    /// reconnect within it shows nobody a `left` and a `joined`.
    pub leave_grace: Duration,
    /// Connections from one IP address still in their handshake, chat and TLS ports
    /// (`--max-handshakes-per-ip`); past it a new one is refused at once. It bounds what a
    /// slow-loris address holds for the long handshake timeout (each may buffer
    /// `max_handshake` bytes). 0 = no limit.
    pub max_handshakes_per_ip: usize,
}

/// Message history on one machine (in cluster mode, history lives in JetStream and only
/// `retention` and `on_join` apply).
#[derive(Debug, Clone, PartialEq)]
pub struct HistorySettings {
    /// Where history is kept (`--history`).
    pub mode: HistoryMode,
    /// The directory of the history database (`--data-dir`; created if missing).
    pub data_dir: PathBuf,
    /// When a stored message counts as safe (`--durability`).
    pub durability: Durability,
    /// How much is kept (`--history-max`, `--history-max-age`, `--history-max-bytes`); also
    /// the most a join replays.
    pub retention: Retention,
    /// Messages replayed on join to clients that do not ask (`--history-on-join`); 0 keeps
    /// old MaChat clients seeing exactly what they used to.
    pub on_join: u64,
}

/// Where history lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryMode {
    /// A SQLite file in the data directory: survives restarts.
    Sqlite,
    /// Until the server stops.
    Memory,
    /// None: nothing is replayed.
    Off,
}

/// When a stored message counts as safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Committed at least every 50 ms or 1,000 messages: a power cut may lose that window.
    Batch,
    /// Delivered only once committed and fsynced.
    Sync,
}

/// Registered names.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthSettings {
    /// The directory of the names' database (`--data-dir`, the history's by default).
    pub data_dir: PathBuf,
    /// Only registered names may join, each with its password (`--require-auth`).
    pub require_auth: bool,
    /// How long a session token from `POST /api/login` lasts (`--login-ttl`).
    pub login_ttl: Duration,
    /// The fewest characters a new password may have (`--min-password-length`): what
    /// `machat user add` and `machat user passwd` accept.
    pub min_password_length: usize,
}

/// Cluster mode on NATS JetStream.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    /// The NATS server(s), comma-separated (`--nats`); may hold credentials, so it is shown
    /// only through [`crate::cluster::redact_url`].
    pub url: String,
    /// Copies JetStream keeps of the history and the names, when this node creates them
    /// (`--nats-replicas`).
    pub replicas: usize,
    /// After this, a dead node's names are free and its members announced as left
    /// (`--presence-ttl`); a live node rewrites its names every third of it.
    pub presence_ttl: Duration,
}

impl Default for NetSettings {
    fn default() -> Self {
        NetSettings {
            addr: "localhost:8989".into(),
            tls_addr: None,
            backlog: 4096,
            threads: 0,
        }
    }
}

impl Default for WebSettings {
    fn default() -> Self {
        WebSettings {
            http: Some("localhost:8080".into()),
            metrics_addr: None,
            metrics_token_file: None,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            ws_ping: 30.0,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 0,
            max_per_ip: 4096,
            handshake_timeout: Duration::from_secs(60),
            max_handshake: 4096,
            max_line: 8192,
            line_rate: 50.0,
            line_burst: 100,
            idle_timeout: 0.0,
            max_pending: 1024 * 1024,
            max_queued_total: 256 * 1024 * 1024,
            max_rooms: 10_000,
            max_room_members: 10_000,
            max_rooms_per_session: 100,
            leave_grace: Duration::from_secs(10),
            max_handshakes_per_ip: 64,
        }
    }
}

/// The directory of the history and the registered names unless told otherwise.
pub const DEFAULT_DATA_DIR: &str = "machat-data";

/// How long a session token from `POST /api/login` lasts (`--login-ttl`, 30 days).
pub const DEFAULT_LOGIN_TTL: Duration = Duration::from_secs(30 * 86_400);

/// The fewest characters of a new password (`--min-password-length`).
pub const DEFAULT_MIN_PASSWORD_LENGTH: usize = 8;

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_messages: 10_000,
            max_age: None,
            max_total_bytes: 1024 * 1024 * 1024,
        }
    }
}

impl Default for HistorySettings {
    fn default() -> Self {
        HistorySettings {
            mode: HistoryMode::Sqlite,
            data_dir: DEFAULT_DATA_DIR.into(),
            durability: Durability::Batch,
            retention: Retention::default(),
            on_join: 0,
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            data_dir: DEFAULT_DATA_DIR.into(),
            require_auth: false,
            login_ttl: DEFAULT_LOGIN_TTL,
            min_password_length: DEFAULT_MIN_PASSWORD_LENGTH,
        }
    }
}

/// Who may do what beyond chatting: creating rooms, and the admin API.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModerationSettings {
    /// Who may create a room that does not exist yet (`--room-creation`).
    pub room_creation: RoomCreation,
    /// A file whose first line is the bearer token of `/api/admin/...`
    /// (`--admin-token-file`); none: no admin API.
    pub admin_token_file: Option<PathBuf>,
}

/// Who may create rooms (`--room-creation`). A room exists while someone is in it, or while
/// it has kept settings (an owner, a topic, a ban, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoomCreation {
    #[default]
    Anyone,
    /// Registered names, logged in with their password.
    Registered,
    /// Server admins.
    Admins,
}

impl ClusterSettings {
    /// The cluster at `url`, with the default replicas and presence TTL.
    pub fn new(url: impl Into<String>) -> Self {
        ClusterSettings {
            url: url.into(),
            replicas: 1,
            presence_ttl: Duration::from_secs(15),
        }
    }
}

// What each layer is handed at start-up (by the methods below): defined here, at the bottom,
// so that settings depend on no layer and every layer on settings alone.

/// What the transports (TCP, TLS, WebSocket) follow, made once at start from the
/// [`crate::settings::Settings`]: a transport reads these and no other settings, so a transport
/// to come (IRC) needs nothing else.
#[derive(Debug, Clone)]
pub struct TransportSettings {
    /// The handshake must be complete within this (`--handshake-timeout`).
    pub handshake_timeout: Duration,
    /// The longest handshake (`--max-handshake`).
    pub max_handshake: usize,
    /// The longest line or frame (`--max-line`).
    pub max_line: usize,
    /// How far behind a client may fall (`--max-pending`): what a transport may buffer.
    pub max_pending: usize,
    /// Lines per second and burst (`--max-line-rate`, `--line-burst`).
    pub line_rate: f64,
    pub line_burst: u32,
    /// Seconds of silence before a connection is closed (`--idle-timeout`; 0 is off).
    pub idle_timeout: f64,
    /// Seconds between WebSocket pings (`--ws-ping`; 0 is off).
    pub ws_ping: f64,
    /// Origins a browser's WebSocket may come from besides the server's own.
    pub allowed_origins: Vec<String>,
}

/// The limits the rooms follow, read from the flags once at start.
#[derive(Debug, Clone, Copy)]
pub struct HubSettings {
    /// How far behind a member may fall (`--max-pending`).
    pub max_pending: usize,
    /// Rooms at once (`--max-rooms`): a new room beyond is refused.
    pub max_rooms: usize,
    /// Members in one room (`--max-room-members`).
    pub max_members: usize,
    /// Bytes queued in all rooms together (`--max-queued-total`).
    pub max_queued_total: usize,
    /// How long a member whose connection dropped stays (`--leave-grace`; zero: not at all).
    pub leave_grace: Duration,
}

impl HubSettings {
    /// No limit but `max_pending`.
    pub fn unbounded(max_pending: usize) -> Self {
        HubSettings {
            max_pending,
            max_rooms: usize::MAX,
            max_members: usize::MAX,
            max_queued_total: usize::MAX,
            leave_grace: Duration::ZERO,
        }
    }
}

/// The rules every session follows, from the server's settings (one copy, shared).
#[derive(Debug, Clone)]
pub struct SessionRules {
    /// The longest line a client may send (`--max-line`): what sizes a replay's pages.
    pub max_line: usize,
    /// Rooms one version-2 connection may be in at once (`--max-rooms-per-session`).
    pub max_rooms: usize,
    /// Messages replayed on joining when the client asks for none (`--history-on-join`).
    pub history_on_join: u64,
    /// Most messages replayed on joining (`--history-max`).
    pub history_max: u64,
}

/// Retention: how much history each room keeps, and all rooms together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    pub max_messages: u64,
    pub max_age: Option<Duration>,
    /// Most bytes of history kept over all rooms (0: no bound); the oldest go first. Without
    /// it, writers spread over many rooms fill the disk (or, in memory, the RAM).
    pub max_total_bytes: u64,
}

impl Settings {
    /// Keeps both the history and the registered names in `dir`, as `--data-dir` does.
    pub fn set_data_dir(&mut self, dir: impl Into<PathBuf>) {
        let dir = dir.into();
        self.history.data_dir = dir.clone();
        self.auth.data_dir = dir;
    }

    /// What the transports (TCP, TLS, WebSocket) follow.
    pub fn transport(&self) -> TransportSettings {
        let l = &self.limits;
        TransportSettings {
            handshake_timeout: l.handshake_timeout,
            max_handshake: l.max_handshake,
            max_line: l.max_line,
            max_pending: l.max_pending,
            line_rate: l.line_rate,
            line_burst: l.line_burst,
            idle_timeout: l.idle_timeout,
            ws_ping: self.web.ws_ping,
            allowed_origins: self.web.allowed_origins.clone(),
        }
    }

    /// The limits the rooms follow.
    pub fn hub(&self) -> HubSettings {
        let l = &self.limits;
        HubSettings {
            max_pending: l.max_pending,
            max_rooms: l.max_rooms,
            max_members: l.max_room_members,
            max_queued_total: match l.max_queued_total {
                0 => usize::MAX,
                n => n,
            },
            leave_grace: l.leave_grace,
        }
    }

    /// What every session follows.
    pub fn session(&self) -> SessionRules {
        SessionRules {
            max_line: self.limits.max_line,
            max_rooms: self.limits.max_rooms_per_session,
            history_on_join: self.history.on_join,
            history_max: self.history.retention.max_messages,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_values_reach_every_layer_from_one_place() {
        let mut s = Settings::default();
        s.limits.max_line = 2048;
        s.limits.max_pending = 77;
        s.limits.max_queued_total = 0;
        s.history.retention.max_messages = 5;
        s.set_data_dir("elsewhere");
        assert_eq!((s.transport().max_line, s.session().max_line), (2048, 2048));
        assert_eq!((s.transport().max_pending, s.hub().max_pending), (77, 77));
        assert_eq!(s.hub().max_queued_total, usize::MAX);
        assert_eq!(s.session().history_max, 5);
        assert_eq!(s.history.data_dir, s.auth.data_dir);
    }
}
