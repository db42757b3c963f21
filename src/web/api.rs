//! The read-only HTTP API: health, rooms, a room's history, and the metrics. Every answer is
//! JSON (the metrics excepted), errors included: `{"error": "..."}` with a fitting status.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::guard::Token;
use super::WebState;
use crate::protocol::{validate_room, RoomEvent};
use crate::refusal::Refusal;
use crate::replay::PageSize;
use crate::store::MAX_REPLAY;

/// How long the API waits for the history store (and the admin API for a command's answer).
pub(super) const STORE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) fn error(status: StatusCode, reason: &str) -> Response {
    (status, axum::Json(json!({ "error": reason }))).into_response()
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
    if state.ctx.clustered {
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

/// `GET /api/info`: what the page must know before its form is filled: whether only
/// registered names may join (`--require-auth`), so it can say the server needs an account.
/// Nothing a handshake would not tell anyone anyway.
pub(super) async fn info(State(state): State<Arc<WebState>>) -> Response {
    let require_auth = state.ctx.hub.users.required();
    axum::Json(json!({ "require_auth": require_auth })).into_response()
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
    before: Option<u64>,
}

/// `GET /api/rooms/{room}/messages?since=ID&limit=N`: stored messages, oldest first: the first
/// `limit` after `since`, or without `since` the last `limit` (default 100, at most 1000).
/// `last_id` is the id to pass as `since` for the next page. With `before=ID`, only messages
/// with ids below it (older history: pass the first id you have).
pub(super) async fn messages(
    State(state): State<Arc<WebState>>,
    Path(room): Path<String>,
    query: Result<Query<MessagesQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "since, before and limit must be whole numbers",
        );
    };
    if q.before == Some(0) {
        return error(
            StatusCode::BAD_REQUEST,
            "before must be a whole number >= 1",
        );
    }
    // The last id the answer may hold.
    let until = q.before.map_or(u64::MAX, |b| b - 1);
    if let Err(e) = validate_room(&room) {
        return error(StatusCode::BAD_REQUEST, &e);
    }
    // A direct conversation is its two parties' alone: not even its existence is told.
    if crate::marks::is_conversation(&room) {
        return error(StatusCode::NOT_FOUND, "no such room");
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_REPLAY).contains(&limit) {
        return error(StatusCode::BAD_REQUEST, "limit must be from 1 to 1000");
    }
    let store = &state.ctx.store;
    if !store.keeps() {
        return error(StatusCode::NOT_FOUND, "history is off on this server");
    }
    // Where the answer starts and how long it may be; then its first page, so that a store
    // that cannot answer still gets a proper status.
    let (after, total) = match q.since {
        Some(since) => (since, limit),
        None => match wait(store.last_span(&room, until, limit)).await {
            Ok(span) => (span.after, span.count),
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e),
        },
    };
    let mut paging = Paging {
        store: store.clone(),
        room,
        after,
        until,
        left: total,
        last_id: q.since.unwrap_or(0),
        size: PageSize::new(
            API_PAGE_BYTES,
            4 * API_PAGE_BYTES,
            state.ctx.transport().max_line,
        ),
        state: PagingState::Done,
    };
    let first = match paging.fetch().await {
        Ok(first) => first,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e),
    };
    paging.state = PagingState::Page(first);
    let body = if paging.left == 0 {
        // All of it is here: one body with its length, as any client expects.
        match paging.next_chunk().await {
            Some(Ok(bytes)) => axum::body::Body::from(bytes),
            _ => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &Refusal::HistoryUnavailable.to_string(),
                )
            }
        }
    } else {
        let pages = futures_util::stream::unfold(paging, |mut paging| async move {
            let chunk = paging.next_chunk().await?;
            Some((chunk, paging))
        });
        axum::body::Body::from_stream(pages)
    };
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// About how much of an answer is rendered at once: a long answer is read from the store a
/// page at a time, as the client takes it, so an answer nobody reads holds a page, not all of it.
const API_PAGE_BYTES: usize = 32 * 1024;

async fn wait<T, E: std::fmt::Display>(
    pending: tokio::sync::oneshot::Receiver<Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(STORE_WAIT, pending).await {
        Ok(Ok(answer)) => answer.map_err(|e| e.to_string()),
        _ => Err("history unavailable".into()),
    }
}

/// A `messages` answer being written: `{"room":...,"messages":[` then the pages, then
/// `],"last_id":N}`.
struct Paging {
    store: Arc<dyn crate::store::Store>,
    room: String,
    after: u64,
    /// The last id the answer may hold (`before` - 1).
    until: u64,
    left: usize,
    last_id: u64,
    size: PageSize,
    state: PagingState,
}

enum PagingState {
    /// The first page, fetched before the status was sent.
    Page(Vec<crate::store::StoredMessage>),
    /// Fetch the next page; `first` if no message was written yet.
    More {
        first: bool,
    },
    Done,
}

impl Paging {
    async fn fetch(&mut self) -> Result<Vec<crate::store::StoredMessage>, String> {
        let want = self.left.min(self.size.next());
        if want == 0 {
            return Ok(Vec::new());
        }
        let page = wait(
            self.store
                .query(&self.room, Some(self.after), self.until, want),
        )
        .await?;
        self.size.observe(&page);
        match page.last() {
            Some(last) if page.len() == want => {
                self.after = last.id;
                self.left -= want;
            }
            // Fewer than asked for: that was all.
            _ => self.left = 0,
        }
        Ok(page)
    }

    /// The next piece of the body; an error mid-way ends the connection (the status is sent).
    async fn next_chunk(&mut self) -> Option<Result<bytes::Bytes, std::io::Error>> {
        let mut body = Vec::new();
        let (page, first) = match std::mem::replace(&mut self.state, PagingState::Done) {
            PagingState::Done => return None,
            PagingState::Page(page) => {
                body.extend_from_slice(b"{\"room\":");
                crate::protocol::push_json(&mut body, &self.room);
                body.pop(); // push_json's newline
                body.extend_from_slice(b",\"messages\":[");
                (page, true)
            }
            PagingState::More { first } => match self.fetch().await {
                Ok(page) => (page, first),
                Err(e) => return Some(Err(std::io::Error::other(e))),
            },
        };
        for (i, m) in page.iter().enumerate() {
            if i > 0 || !first {
                body.push(b',');
            }
            let (id, name, text) = (m.id, m.name.as_str(), m.text.as_str());
            let event = if m.action {
                RoomEvent::Action { id, name, text }
            } else {
                RoomEvent::Message { id, name, text }
            };
            event.render_json(&self.room, m.ts, &mut body);
            body.pop();
        }
        if let Some(last) = page.last() {
            self.last_id = last.id;
        }
        if self.left == 0 {
            body.extend_from_slice(format!("],\"last_id\":{}}}", self.last_id).as_bytes());
        } else {
            self.state = PagingState::More {
                first: first && page.is_empty(),
            };
        }
        Some(Ok(body.into()))
    }
}

/// `GET /metrics`: Prometheus text format; with a token (`--metrics-token-file`), only for
/// requests that carry it.
pub(super) fn metrics(state: &WebState, headers: &HeaderMap, token: Option<&Token>) -> Response {
    if token.is_some_and(|token| !token.admits(headers)) {
        let mut refused = error(
            StatusCode::UNAUTHORIZED,
            "the metrics need their token: Authorization: Bearer TOKEN (see --metrics-token-file)",
        );
        refused.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"machat metrics\""),
        );
        return refused;
    }
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
