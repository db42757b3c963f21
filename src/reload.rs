//! A reload (SIGHUP): what of the new settings can change while the server runs, applied, and
//! what cannot, named. The binary reads the file again (keeping its flags and variables over
//! it) and hands over the new [`Settings`]; nothing here reads a file but the certificate.
//!
//! Live: the connection limits, the transports' limits (handshake timeout, line rate and
//! burst, idle timeout, WebSocket pings), the room limits (rooms, members, rooms per
//! session), the allowed origins and hosts, and the certificate
//! (read again on every reload, so a renewed file under the same name is picked up). Each is
//! swapped whole, and read by a connection when it starts or by an accept, never per line.
//! Everything else (listen addresses, the data, history, cluster, sizes that rooms and
//! sessions were built with) needs a restart, and the log says which changed.
//!
//! Everything that can fail is done before anything changes: a failed reload changes nothing.

use std::sync::Arc;

use tracing::info;

use crate::context::Shared;
use crate::limits::Admission;
use crate::settings::{Settings, WebSettings};
use crate::tls::Certificates;
use crate::web::guard::{Hosts, LiveHosts};

/// The parts of a running server a reload changes.
#[derive(Clone)]
pub struct Live {
    pub(crate) ctx: Arc<Shared>,
    pub(crate) admission: Arc<Admission>,
    pub(crate) http_admission: Arc<Admission>,
    /// The certificate in use, with TLS on.
    pub(crate) certificates: Option<Arc<Certificates>>,
    /// The web side's host names, with the web side on.
    pub(crate) hosts: Option<Arc<LiveHosts>>,
    /// The soft descriptor limit, which `--max-connections 0` follows.
    pub(crate) fd_soft: u64,
}

impl Live {
    /// Applies `new` over `running` (the settings of the last reload; `started`, those the
    /// server started with, decide what needs a restart). Logs what changed; an error (a
    /// certificate that does not load, a bad host) changes nothing.
    pub fn apply(
        &self,
        started: &Settings,
        running: &Settings,
        new: &Settings,
    ) -> Result<(), String> {
        let restart = needs_restart(started, new);
        // The fallible parts first.
        let hosts = match &self.hosts {
            Some(_) => {
                let web = WebSettings {
                    allowed_hosts: new.web.allowed_hosts.clone(),
                    ..started.web.clone()
                };
                Some(Hosts::new(&web).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        let mut changed = Vec::new();
        if let (Some(certificates), Some(tls)) = (&self.certificates, &new.tls) {
            certificates
                .reload(&tls.cert, &tls.key)
                .map_err(|e| e.to_string())?;
            changed.push("certificate (reloaded)");
        }
        let (old, l) = (&running.limits, &new.limits);
        let max_total = match l.max_connections {
            0 => (self.fd_soft.saturating_sub(64) as usize).max(1),
            n => n,
        };
        self.admission.set_limits(max_total, l.max_per_ip);
        self.http_admission.set_limits(max_total, l.max_per_ip);
        let mut transport = new.transport();
        // Sizes the rooms and sessions were built with stay as they started.
        let first = started.transport();
        transport.max_line = first.max_line;
        transport.max_handshake = first.max_handshake;
        transport.max_pending = first.max_pending;
        self.ctx.set_transport(transport);
        self.ctx
            .hub
            .set_room_limits(l.max_rooms, l.max_room_members);
        let mut rules = started.session();
        rules.max_rooms = l.max_rooms_per_session;
        self.ctx.set_rules(rules);
        if let (Some(live), Some(hosts)) = (&self.hosts, hosts) {
            live.set(hosts);
        }
        let differ = [
            ("max_connections", old.max_connections != l.max_connections),
            ("max_per_ip", old.max_per_ip != l.max_per_ip),
            (
                "handshake_timeout",
                old.handshake_timeout != l.handshake_timeout,
            ),
            ("max_line_rate", old.line_rate != l.line_rate),
            ("line_burst", old.line_burst != l.line_burst),
            ("idle_timeout", old.idle_timeout != l.idle_timeout),
            ("max_rooms", old.max_rooms != l.max_rooms),
            (
                "max_room_members",
                old.max_room_members != l.max_room_members,
            ),
            (
                "max_rooms_per_session",
                old.max_rooms_per_session != l.max_rooms_per_session,
            ),
            ("ws_ping", running.web.ws_ping != new.web.ws_ping),
            (
                "allowed_origins",
                running.web.allowed_origins != new.web.allowed_origins,
            ),
            (
                "allowed_hosts",
                running.web.allowed_hosts != new.web.allowed_hosts,
            ),
        ];
        changed.extend(differ.iter().filter(|(_, d)| *d).map(|(name, _)| *name));
        if !restart.is_empty() {
            info!("reload: {} changed; restart to apply", restart.join(", "));
        }
        let changed = match changed.is_empty() {
            true => "nothing".to_owned(),
            false => changed.join(", "),
        };
        info!("reload: applied (changed: {changed})");
        Ok(())
    }
}

/// The settings (by their key in the file) that differ from those the server started with and
/// apply only at the next start.
fn needs_restart(started: &Settings, new: &Settings) -> Vec<&'static str> {
    let (a, b) = (started, new);
    let (al, bl) = (&a.limits, &b.limits);
    let (ah, bh) = (&a.history, &b.history);
    let cluster = |s: &Settings| s.cluster.as_ref().map(|c| c.url.clone());
    let field = |s: &Settings, f: fn(&crate::settings::ClusterSettings) -> String| {
        s.cluster.as_ref().map(f)
    };
    let differ = [
        ("addr", a.net.addr != b.net.addr),
        ("tls_addr", a.net.tls_addr != b.net.tls_addr),
        ("backlog", a.net.backlog != b.net.backlog),
        ("threads", a.net.threads != b.net.threads),
        ("tls_cert", a.tls.is_some() != b.tls.is_some()),
        ("http", a.web.http != b.web.http),
        ("metrics_addr", a.web.metrics_addr != b.web.metrics_addr),
        (
            "metrics_token_file",
            a.web.metrics_token_file != b.web.metrics_token_file,
        ),
        ("max_line", al.max_line != bl.max_line),
        ("max_handshake", al.max_handshake != bl.max_handshake),
        ("max_pending", al.max_pending != bl.max_pending),
        (
            "max_queued_total",
            al.max_queued_total != bl.max_queued_total,
        ),
        ("max_rooms", al.max_rooms != bl.max_rooms),
        (
            "max_room_members",
            al.max_room_members != bl.max_room_members,
        ),
        (
            "max_rooms_per_session",
            al.max_rooms_per_session != bl.max_rooms_per_session,
        ),
        ("leave_grace", al.leave_grace != bl.leave_grace),
        ("history", ah.mode != bh.mode),
        ("data_dir", ah.data_dir != bh.data_dir),
        ("durability", ah.durability != bh.durability),
        (
            "history_max",
            ah.retention.max_messages != bh.retention.max_messages,
        ),
        (
            "history_max_age",
            ah.retention.max_age != bh.retention.max_age,
        ),
        (
            "history_max_bytes",
            ah.retention.max_total_bytes != bh.retention.max_total_bytes,
        ),
        ("history_on_join", ah.on_join != bh.on_join),
        ("require_auth", a.auth.require_auth != b.auth.require_auth),
        ("login_ttl", a.auth.login_ttl != b.auth.login_ttl),
        (
            "room_creation",
            a.moderation.room_creation != b.moderation.room_creation,
        ),
        (
            "admin_token_file",
            a.moderation.admin_token_file != b.moderation.admin_token_file,
        ),
        ("nats", cluster(a) != cluster(b)),
        (
            "nats_replicas",
            field(a, |c| c.replicas.to_string()) != field(b, |c| c.replicas.to_string()),
        ),
        (
            "presence_ttl",
            field(a, |c| format!("{:?}", c.presence_ttl))
                != field(b, |c| format!("{:?}", c.presence_ttl)),
        ),
    ];
    let mut names: Vec<&'static str> = differ
        .iter()
        .filter(|(_, d)| *d)
        .map(|(name, _)| *name)
        .collect();
    // A setting added later and not named above is still caught: all but the live ones.
    let mut masked = new.clone();
    let (ml, sl) = (&mut masked.limits, &started.limits);
    ml.max_connections = sl.max_connections;
    ml.max_per_ip = sl.max_per_ip;
    ml.handshake_timeout = sl.handshake_timeout;
    ml.line_rate = sl.line_rate;
    ml.line_burst = sl.line_burst;
    ml.idle_timeout = sl.idle_timeout;
    ml.max_rooms = sl.max_rooms;
    ml.max_room_members = sl.max_room_members;
    ml.max_rooms_per_session = sl.max_rooms_per_session;
    masked.web.ws_ping = started.web.ws_ping;
    masked.web.allowed_origins = started.web.allowed_origins.clone();
    masked.web.allowed_hosts = started.web.allowed_hosts.clone();
    if masked.tls.is_some() && started.tls.is_some() {
        masked.tls = started.tls.clone();
    }
    if names.is_empty() && masked != *started {
        names.push("a setting");
    }
    names
}
