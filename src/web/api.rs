//! The read-only HTTP API: health, rooms, a room's history, and the metrics. Every answer is
//! JSON (the metrics excepted), errors included: `{"error": "..."}` with a fitting status.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::WebState;
use crate::protocol::{validate_room, RoomEvent};
use crate::store::MAX_REPLAY;

/// How long the API waits for the history store.
const STORE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) fn error(status: StatusCode, reason: &str) -> Response {
    (status, axum::Json(json!({ "error": reason }))).into_response()
}

fn json_bytes(body: Vec<u8>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from(body),
    )
        .into_response()
}

/// `GET /healthz`: 200 while the server serves; says whether history is being stored (and, in
/// a cluster, whether NATS is reachable, so a load balancer can tell).
pub(super) async fn healthz(State(state): State<Arc<WebState>>) -> Response {
    let store = &state.ctx.store;
    let history = match (store.keeps(), store.available()) {
        (false, _) => "off",
        (true, true) => "ok",
        (true, false) => "unavailable",
    };
    let status = if state.ctx.is_shutting_down() {
        "shutting down"
    } else {
        "ok"
    };
    if state.ctx.hub.clustered() {
        // In a cluster, history is JetStream's: available exactly while NATS is reachable.
        let cluster = if store.available() {
            "connected"
        } else {
            "disconnected"
        };
        return axum::Json(json!({ "status": status, "history": history, "cluster": cluster }))
            .into_response();
    }
    axum::Json(json!({ "status": status, "history": history })).into_response()
}

#[derive(Deserialize)]
pub(super) struct RoomsQuery {
    limit: Option<usize>,
}

/// `GET /api/rooms[?limit=N]`: the busiest rooms first, with their member counts.
pub(super) async fn rooms(
    State(state): State<Arc<WebState>>,
    query: Result<Query<RoomsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(StatusCode::BAD_REQUEST, "limit must be a number");
    };
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let (rooms, more) = state.ctx.hub.rooms(limit);
    let list: Vec<_> = rooms
        .iter()
        .map(|(room, n)| json!({ "room": room, "members": n }))
        .collect();
    axum::Json(json!({ "rooms": list, "more": more })).into_response()
}

#[derive(Deserialize)]
pub(super) struct MessagesQuery {
    since: Option<u64>,
    limit: Option<usize>,
}

/// `GET /api/rooms/{room}/messages?since=ID&limit=N`: stored messages, oldest first: the first
/// `limit` after `since`, or without `since` the last `limit` (default 100, at most 1000).
/// `last_id` is the id to pass as `since` for the next page.
pub(super) async fn messages(
    State(state): State<Arc<WebState>>,
    Path(room): Path<String>,
    query: Result<Query<MessagesQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "since and limit must be whole numbers",
        );
    };
    if let Err(e) = validate_room(&room) {
        return error(StatusCode::BAD_REQUEST, &e);
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_REPLAY).contains(&limit) {
        return error(StatusCode::BAD_REQUEST, "limit must be from 1 to 1000");
    }
    let store = &state.ctx.store;
    if !store.keeps() {
        return error(StatusCode::NOT_FOUND, "history is off on this server");
    }
    let pending = store.query(&room, q.since, u64::MAX, limit);
    let found = match tokio::time::timeout(STORE_WAIT, pending).await {
        Ok(Ok(Ok(found))) => found,
        Ok(Ok(Err(e))) => return error(StatusCode::SERVICE_UNAVAILABLE, &e),
        _ => return error(StatusCode::SERVICE_UNAVAILABLE, "history unavailable"),
    };
    // Each message in the same shape as on the wire (the JSON format's message objects).
    let mut body = Vec::with_capacity(64 + found.len() * 128);
    body.extend_from_slice(b"{\"room\":");
    crate::protocol::push_json(&mut body, &room);
    body.pop(); // push_json's newline
    body.extend_from_slice(b",\"messages\":[");
    for (i, m) in found.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        let (id, name, text) = (m.id, m.name.as_str(), m.text.as_str());
        let event = if m.action {
            RoomEvent::Action { id, name, text }
        } else {
            RoomEvent::Message { id, name, text }
        };
        event.render_json(&room, m.ts, &mut body);
        body.pop();
    }
    let last_id = found.last().map(|m| m.id).or(q.since).unwrap_or(0);
    body.extend_from_slice(format!("],\"last_id\":{last_id}}}").as_bytes());
    json_bytes(body)
}

/// `GET /metrics`: Prometheus text format.
pub(super) async fn metrics(State(state): State<Arc<WebState>>) -> Response {
    let Some(handle) = &state.metrics else {
        return error(StatusCode::NOT_FOUND, "metrics are not enabled");
    };
    crate::metrics::rooms(state.ctx.hub.room_count());
    handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}
