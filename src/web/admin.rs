//! The admin API (`--admin-token-file`): `/api/admin/...` on the web side, for the holder of
//! the bearer token. It reads every room (members with their addresses, bans, the key), the
//! registered names and the moderation log, and carries out moderation commands as a server
//! admin, through the same [`Moderator`] as a chat command: only how the command is read
//! (a JSON body instead of a line) and how the answer is rendered (JSON) differ.
//!
//! **The gate** ([`gate`]) is a layer on the whole router: every request whose path is under
//! `/api/admin/` is checked before it is routed, so an unknown admin path, a wrong method or a
//! body over the bound gets `401` without the token like any other, and nothing of the path or
//! the body is looked at first. The token is compared in constant time, and every request
//! without it counts towards its address's failed-login limit ([`Users::token_attempt`]):
//! after a few, the address is held back (`429`), the right token included.
//!
//! Actions are shown in rooms, and logged, as done by `admin` ([`ACTOR`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::info;

use super::api::{error, STORE_WAIT};
use super::guard::Token;
use super::WebState;
use crate::auth::{TokenRefused, Users};
use crate::hub::Hub;
use crate::moderation::command::{looks_like_net, Command, MAX_TEXT};
use crate::moderation::keep::SERVER;
use crate::moderation::net::{parse_duration, Net};
use crate::moderation::policy::now_ms;
use crate::moderation::record::{Ban, LogEntry, Target, MAX_LOG};
use crate::moderator::{Answer, Moderator, Via};
use crate::protocol::{clean_line, validate_name, validate_room, Timestamp};
use crate::refusal::Refusal;

/// Where the admin API is: this path and everything under it.
const PREFIX: &str = "/api/admin";

/// The name the API's actions are shown and logged under (a valid name: the room's lines and
/// events carry it as an actor's).
pub const ACTOR: &str = "admin";

/// The room `/sban`, `/unsban` and `/wall` are run "in": [`Moderator::run`] takes a room for
/// every command, and these use it only to check the actor's rank there (and a target's, which
/// must be below an admin's anyway), and the API's actor is a server admin in every room. Any
/// valid room name does; this one is never joined nor written.
const NO_ROOM: &str = "admin-api";

/// The largest request body.
pub const MAX_BODY: usize = 16 * 1024;

/// Most log entries one answer gives, and how many without `limit`.
const LOG_DEFAULT: usize = 100;

/// What the gate needs: the token, and the failed-login limit (the registered names').
#[derive(Clone)]
pub(super) struct Gate {
    pub token: Arc<Token>,
    pub users: Arc<Users>,
}

/// Whether `path` is the admin API's.
fn guarded(path: &str) -> bool {
    path.strip_prefix(PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The layer in front of every route: a request for an admin path passes only with the token,
/// and only while its address is not held back after failures. Others pass untouched.
pub(super) async fn gate(State(gate): State<Gate>, req: Request, next: Next) -> Response {
    if !guarded(req.uri().path()) {
        return next.run(req).await;
    }
    let Some(addr) = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
    else {
        return unauthorized();
    };
    let right = gate.token.admits(req.headers());
    match gate.users.token_attempt(addr.ip(), right).await {
        Ok(()) => {
            let mut response = next.run(req).await;
            // Addresses, bans, keys: for the one who asked, not for a cache on the way.
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(TokenRefused::Wrong) => {
            info!(%addr, "admin api: refused, no or wrong token");
            unauthorized()
        }
        Err(TokenRefused::HeldBack) => {
            info!(%addr, "admin api: refused, too many failed attempts");
            error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed attempts from your address; try again later",
            )
        }
    }
}

/// The one answer to a request without the token: it says nothing of the path or the body.
fn unauthorized() -> Response {
    let mut refused = error(StatusCode::UNAUTHORIZED, "unauthorized");
    refused.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"machat admin\""),
    );
    refused
}

/// The admin API's routes (behind [`gate`], which the caller puts in front of the router).
pub(super) fn routes() -> Router<Arc<WebState>> {
    Router::new()
        .route("/api/admin/rooms", get(rooms))
        .route("/api/admin/rooms/{room}", get(room))
        .route("/api/admin/rooms/{room}/{action}", post(room_action))
        .route("/api/admin/users", get(users))
        .route("/api/admin/log", get(log))
        .route("/api/admin/sban", post(server_action::<true>))
        .route("/api/admin/unsban", post(server_action::<false>))
        .route("/api/admin/wall", post(wall))
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// A time as the protocol writes it (`2026-12-07T10:00:00.000Z`).
fn time(ms: u64) -> Value {
    Value::String(Timestamp(ms).to_string())
}

fn ban_json(b: &Ban) -> Value {
    let kind = match b.target {
        Target::Name(_) => "name",
        Target::Net(_) => "address",
    };
    json!({
        "target": b.target.shown(),
        "kind": kind,
        "by": b.by,
        "reason": b.reason,
        "at": time(b.at),
        "until": b.until.map(time),
    })
}

fn log_json(e: &LogEntry) -> Value {
    json!({
        "at": time(e.at),
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "reason": e.reason,
        "until": e.until.map(time),
    })
}

/// A room as the admin sees it: its kept settings (bans and mutes in force), and its members,
/// with the addresses of their connections to this node (a member on another node of a
/// cluster is named, without an address: that is its node's to know).
fn room_json(hub: &Hub, room: &str, now: u64) -> Value {
    let record = hub.policy.record(room).unwrap_or_default();
    let mut members: BTreeMap<String, (Vec<String>, Option<bool>)> = hub
        .members_of(room)
        .into_iter()
        .map(|name| (name, (Vec::new(), None)))
        .collect();
    for (name, addr, person) in hub.room(room).map(|r| r.members()).unwrap_or_default() {
        let entry = members.entry(name).or_default();
        entry.0.push(addr.to_string());
        entry.1 = Some(entry.1.unwrap_or(false) || person);
    }
    let members: Vec<Value> = members
        .into_iter()
        .map(|(name, (mut addrs, person))| {
            addrs.sort_unstable();
            match person {
                Some(person) => json!({ "name": name, "person": person, "addrs": addrs }),
                None => json!({ "name": name, "addrs": addrs }),
            }
        })
        .collect();
    let active = |list: &[Ban]| -> Vec<Value> {
        list.iter()
            .filter(|b| b.active(now))
            .map(ban_json)
            .collect()
    };
    json!({
        "room": room,
        "members": members,
        "owner": record.owner,
        "ops": record.ops,
        "voiced": record.voiced,
        "invites": record.invites,
        "topic": record.topic.as_ref().map(|t| json!({
            "text": t.text,
            "by": t.by,
            "at": time(t.at),
        })),
        "modes": {
            "closed": record.closed,
            "key": record.key,
            "moderated": record.moderated,
        },
        "bans": active(&record.bans),
        "mutes": active(&record.mutes),
    })
}

/// `GET /api/admin/rooms`: every room with members (on any node) or kept settings, by name.
async fn rooms(State(state): State<Arc<WebState>>) -> Response {
    let hub = &state.ctx.hub;
    let (live, _) = hub.rooms(usize::MAX);
    let mut names: Vec<String> = live.into_iter().map(|(name, _)| name).collect();
    names.extend(hub.policy.rooms());
    names.sort_unstable();
    names.dedup();
    let now = now_ms();
    let rooms: Vec<Value> = names.iter().map(|r| room_json(hub, r, now)).collect();
    axum::Json(json!({ "rooms": rooms })).into_response()
}

/// `GET /api/admin/rooms/{room}`
async fn room(State(state): State<Arc<WebState>>, Path(room): Path<String>) -> Response {
    if let Err(e) = validate_room(&room) {
        return error(StatusCode::BAD_REQUEST, &e);
    }
    let hub = &state.ctx.hub;
    if !hub.exists(&room) {
        return error(StatusCode::NOT_FOUND, &format!("no room called {room}"));
    }
    axum::Json(room_json(hub, &room, now_ms())).into_response()
}

/// `GET /api/admin/users`
async fn users(State(state): State<Arc<WebState>>) -> Response {
    let users: Vec<Value> = state
        .ctx
        .hub
        .users
        .listed()
        .into_iter()
        .map(|u| json!({ "name": u.name, "admin": u.admin }))
        .collect();
    axum::Json(json!({ "users": users })).into_response()
}

#[derive(Deserialize)]
struct LogQuery {
    room: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/admin/log[?room=ROOM][&limit=N]`: the last N entries, newest last.
async fn log(
    State(state): State<Arc<WebState>>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(StatusCode::BAD_REQUEST, "limit must be a whole number");
    };
    let limit = q.limit.unwrap_or(LOG_DEFAULT);
    if !(1..=MAX_LOG).contains(&limit) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("limit must be from 1 to {MAX_LOG}"),
        );
    }
    if let Some(room) = &q.room {
        if let Err(e) = validate_room(room) {
            return error(StatusCode::BAD_REQUEST, &e);
        }
    }
    let key = q.room.as_deref().unwrap_or(SERVER);
    let record = state.ctx.hub.policy.record(key).unwrap_or_default();
    let skip = record.log.len().saturating_sub(limit);
    let log: Vec<Value> = record.log.iter().skip(skip).map(log_json).collect();
    axum::Json(json!({ "room": q.room, "log": log })).into_response()
}

/// Why a request is refused before its command runs: a status and the reason.
#[derive(Debug)]
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        error(self.0, &self.1)
    }
}

/// A request's body, read as the JSON object a command needs (unknown keys ignored).
fn body<T: DeserializeOwned>(bytes: Result<Bytes, BytesRejection>) -> Result<T, Refused> {
    let bytes = bytes.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_BODY} bytes"),
        ),
        _ => bad("cannot read the body"),
    })?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("the body must be a JSON object: {e}")))?;
    if !value.is_object() {
        return Err(bad("the body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| bad(format!("invalid body: {e}")))
}

fn bad(reason: impl std::fmt::Display) -> Refused {
    Refused(StatusCode::BAD_REQUEST, reason.to_string())
}

/// A NAME, by the name rules.
fn name(field: &str, s: &str) -> Result<String, Refused> {
    validate_name(s).map_err(|e| bad(format!("\"{field}\": {e}")))?;
    Ok(s.to_owned())
}

/// A ban's target: an address or network if it reads as one (as for `/ban`), else a name.
fn target(s: &str) -> Result<Target, Refused> {
    if looks_like_net(s) {
        return s
            .parse::<Net>()
            .map(Target::Net)
            .map_err(|e| bad(format!("\"target\": {e}")));
    }
    name("target", s).map(Target::Name)
}

fn duration(s: Option<&str>) -> Result<Option<Duration>, Refused> {
    s.map(|s| parse_duration(s).map_err(|e| bad(format!("\"duration\": {e}"))))
        .transpose()
}

/// A reason, topic or notice: cleaned as a chat line is (no control characters, no line
/// breaks: it is shown on one line in the room), at most [`MAX_TEXT`] bytes, trimmed.
fn text(s: Option<&str>) -> Result<String, Refused> {
    let cleaned = clean_line(s.unwrap_or_default().as_bytes());
    if cleaned.len() > MAX_TEXT {
        return Err(bad(Refusal::TextTooLong(MAX_TEXT)));
    }
    Ok(cleaned.trim().to_owned())
}

#[derive(Deserialize)]
struct KickBody {
    name: String,
    reason: Option<String>,
}

#[derive(Deserialize)]
struct BanBody {
    target: String,
    duration: Option<String>,
    reason: Option<String>,
}

#[derive(Deserialize)]
struct TargetBody {
    target: String,
}

#[derive(Deserialize)]
struct MuteBody {
    name: String,
    duration: Option<String>,
    reason: Option<String>,
}

#[derive(Deserialize)]
struct NameBody {
    name: String,
}

#[derive(Deserialize)]
struct TextBody {
    text: String,
}

#[derive(Deserialize)]
struct IdBody {
    id: u64,
}

/// The command a room's action asks for, read from its body with the chat command's rules.
fn room_command(action: &str, bytes: Result<Bytes, BytesRejection>) -> Result<Command, Refused> {
    Ok(match action {
        "kick" => {
            let b: KickBody = body(bytes)?;
            Command::Kick {
                name: name("name", &b.name)?,
                reason: text(b.reason.as_deref())?,
            }
        }
        "ban" => {
            let b: BanBody = body(bytes)?;
            Command::Ban {
                target: target(&b.target)?,
                time: duration(b.duration.as_deref())?,
                reason: text(b.reason.as_deref())?,
            }
        }
        "unban" => Command::Unban(target(&body::<TargetBody>(bytes)?.target)?),
        "mute" => {
            let b: MuteBody = body(bytes)?;
            Command::Mute {
                name: name("name", &b.name)?,
                time: duration(b.duration.as_deref())?,
                reason: text(b.reason.as_deref())?,
            }
        }
        "unmute" => Command::Unmute(name("name", &body::<NameBody>(bytes)?.name)?),
        "op" => Command::Op(name("name", &body::<NameBody>(bytes)?.name)?),
        "deop" => Command::Deop(name("name", &body::<NameBody>(bytes)?.name)?),
        "topic" => Command::Topic(Some(text(Some(&body::<TextBody>(bytes)?.text))?)),
        "delete" => match body::<IdBody>(bytes)?.id {
            0 => return Err(bad("\"id\" must be a message id (1 or more)")),
            id => Command::Delete(id),
        },
        _ => return Err(Refused(StatusCode::NOT_FOUND, "not found".into())),
    })
}

/// `POST /api/admin/rooms/{room}/{action}`: kick, ban, unban, mute, unmute, op, deop, topic,
/// delete.
async fn room_action(
    State(state): State<Arc<WebState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path((room, action)): Path<(String, String)>,
    bytes: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(e) = validate_room(&room) {
        return bad(e).into_response();
    }
    match room_command(&action, bytes) {
        Ok(cmd) => run(&state, addr, &room, &action, cmd).await,
        Err(refused) => refused.into_response(),
    }
}

/// `POST /api/admin/sban` (`BAN`) and `POST /api/admin/unsban`.
async fn server_action<const BAN: bool>(
    State(state): State<Arc<WebState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    bytes: Result<Bytes, BytesRejection>,
) -> Response {
    let cmd = if BAN {
        body::<BanBody>(bytes).and_then(|b| {
            Ok(Command::Sban {
                target: target(&b.target)?,
                time: duration(b.duration.as_deref())?,
                reason: text(b.reason.as_deref())?,
            })
        })
    } else {
        body::<TargetBody>(bytes).and_then(|b| Ok(Command::Unsban(target(&b.target)?)))
    };
    match cmd {
        Ok(cmd) => {
            let action = if BAN { "sban" } else { "unsban" };
            run(&state, addr, NO_ROOM, action, cmd).await
        }
        Err(refused) => refused.into_response(),
    }
}

/// `POST /api/admin/wall`
async fn wall(
    State(state): State<Arc<WebState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    bytes: Result<Bytes, BytesRejection>,
) -> Response {
    let text = match body::<TextBody>(bytes).and_then(|b| text(Some(&b.text))) {
        Ok(text) => text,
        Err(refused) => return refused.into_response(),
    };
    if text.is_empty() {
        return bad("\"text\" must not be empty").into_response();
    }
    run(&state, addr, NO_ROOM, "wall", Command::Wall(text)).await
}

/// The status a refusal is answered with: `404` when what it names is not there, `503` when
/// the store or the cluster did not answer, else `400`.
fn status_of(refusal: &Refusal) -> StatusCode {
    match refusal {
        Refusal::NoSuchMember(_)
        | Refusal::NoSuchMessage { .. }
        | Refusal::NotListed { .. }
        | Refusal::NotRegistered(_)
        | Refusal::HistoryOff => StatusCode::NOT_FOUND,
        Refusal::HistoryUnavailable | Refusal::ClusterUnavailable => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::BAD_REQUEST,
    }
}

/// Carries out `cmd` in `room` as the API's admin, and answers with what the Moderator says.
async fn run(
    state: &WebState,
    addr: SocketAddr,
    room: &str,
    action: &str,
    cmd: Command,
) -> Response {
    info!(%addr, room, action, "admin api");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let answer: Answer = Box::new(move |result| {
        let _ = tx.send(result);
    });
    Moderator::new(state.ctx.hub.clone(), ACTOR.into(), Via::AdminApi).run(room, cmd, answer);
    match tokio::time::timeout(STORE_WAIT, rx).await {
        Ok(Ok(Ok(lines))) => axum::Json(json!({ "ok": true, "lines": lines })).into_response(),
        Ok(Ok(Err(refusal))) => error(status_of(&refusal), &refusal.to_string()),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "no answer in time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_covers_the_prefix_and_everything_under_it() {
        for yes in [
            "/api/admin",
            "/api/admin/",
            "/api/admin/rooms",
            "/api/admin/nothing/here",
            "/api/admin//x",
        ] {
            assert!(guarded(yes), "{yes}");
        }
        for no in ["/api/adminx", "/api/rooms", "/", "/api/Admin/rooms", "/api"] {
            assert!(!guarded(no), "{no}");
        }
    }

    #[test]
    fn bodies_are_read_with_the_chat_commands_rules() {
        let read = |action: &str, json: &str| {
            room_command(action, Ok(Bytes::from(json.to_owned()))).map_err(|r| r.0)
        };
        assert_eq!(
            read("kick", r#"{"name":"Bob","reason":" spam ","extra":1}"#),
            Ok(Command::Kick {
                name: "Bob".into(),
                reason: "spam".into()
            })
        );
        assert_eq!(
            read("ban", r#"{"target":"203.0.113.9/24","duration":"10m"}"#),
            Ok(Command::Ban {
                target: Target::Net("203.0.113.0/24".parse().unwrap_or_else(|_| unreachable!())),
                time: Some(Duration::from_secs(600)),
                reason: String::new()
            })
        );
        assert_eq!(
            read("topic", r#"{"text":"a\nb\u001b[2Jc"}"#),
            Ok(Command::Topic(Some("abc".into()))),
            "one line, no escapes"
        );
        assert_eq!(
            read("topic", r#"{"text":""}"#),
            Ok(Command::Topic(Some(String::new())))
        );
        for (action, json) in [
            ("kick", r#"{"name":5}"#),
            ("kick", r#"{"reason":"x"}"#),
            ("kick", r#"{"name":"bad name"}"#),
            ("kick", r#"["Bob"]"#),
            ("kick", ""),
            ("ban", r#"{"target":"10.0.0.0/33"}"#),
            ("ban", r#"{"target":"Bob","duration":"5x"}"#),
            ("mute", r#"{"name":"Bob","duration":10}"#),
            ("delete", r#"{"id":0}"#),
            ("delete", r#"{"id":"7"}"#),
            ("delete", r#"{"id":-1}"#),
        ] {
            assert_eq!(
                read(action, json),
                Err(StatusCode::BAD_REQUEST),
                "{action} {json}"
            );
        }
        let long = format!(
            r#"{{"name":"Bob","reason":"{}"}}"#,
            "x".repeat(MAX_TEXT + 1)
        );
        assert_eq!(read("kick", &long), Err(StatusCode::BAD_REQUEST));
        assert_eq!(read("nope", "{}"), Err(StatusCode::NOT_FOUND));
    }
}
