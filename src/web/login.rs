//! Logging in on the web page (`crate::logins`): `POST /api/login` trades a registered name's
//! password for a session token, `POST /api/logout` revokes one, `GET /api/me` says whose a
//! token is and until when. Every answer carries `Cache-Control: no-store`; neither the body
//! nor the token is ever logged.
//!
//! The password is checked by [`crate::auth::Users::log_in`], exactly as at a handshake: the
//! same failed-login limiter per address, the same fixed delay and `authentication failed`.
//! `/api/me` and `/api/logout` do not count towards the limiter: a token is 256 random bits,
//! which no number of guesses finds.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::api::error;
use super::WebState;
use crate::logins::Logins;
use crate::protocol::{Timestamp, MAX_PASSWORD};
use crate::refusal::Refusal;

/// The largest request body.
pub const MAX_BODY: usize = 4 * 1024;

pub(super) fn routes() -> Router<Arc<WebState>> {
    Router::new()
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/me", get(me))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(no_store))
}

/// Tokens and names: for the one who asked, not for a cache on the way.
async fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Deserialize)]
struct LoginBody {
    name: String,
    password: String,
}

fn time(ms: u64) -> Value {
    Value::String(Timestamp(ms).to_string())
}

fn failed() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        &Refusal::AuthenticationFailed.to_string(),
    )
}

fn unavailable() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "logins are unavailable; try again later",
    )
}

fn logins(state: &WebState) -> Option<&Logins> {
    state.ctx.hub.users.logins()
}

/// `POST /api/login` with `{"name":NAME,"password":PASSWORD}`: `200
/// {"token":...,"name":REGISTERED,"expires":TIME}`, `401 authentication failed`, or `429` while
/// the address is held back.
async fn login(
    State(state): State<Arc<WebState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    bytes: Result<Bytes, BytesRejection>,
) -> Response {
    let bytes = match bytes {
        Ok(bytes) => bytes,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is larger than {MAX_BODY} bytes"),
            )
        }
        Err(_) => return error(StatusCode::BAD_REQUEST, "cannot read the body"),
    };
    // Not serde's message: it could quote the password.
    let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
        return error(StatusCode::BAD_REQUEST, "the body must be a JSON object");
    };
    if !value.is_object() {
        return error(StatusCode::BAD_REQUEST, "the body must be a JSON object");
    }
    let Ok(body) = serde_json::from_value::<LoginBody>(value) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body needs \"name\" and \"password\", both strings",
        );
    };
    if body.password.len() > MAX_PASSWORD {
        return failed_after_delay(&state, addr, &body).await;
    }
    let Some(logins) = logins(&state) else {
        return unavailable();
    };
    let users = &state.ctx.hub.users;
    let name = match users.log_in(addr.ip(), &body.name, &body.password).await {
        Ok(name) => name,
        Err(Refusal::TooManyFailedLogins) => {
            info!(%addr, "login: refused, too many failed logins");
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                &Refusal::TooManyFailedLogins.to_string(),
            );
        }
        Err(_) => {
            info!(%addr, "login: authentication failed");
            return failed();
        }
    };
    match logins.issue(&name).await {
        Ok(issued) => {
            info!(%addr, name = %issued.name, "login: token issued");
            axum::Json(json!({
                "token": issued.token,
                "name": issued.name,
                "expires": time(issued.expires),
            }))
            .into_response()
        }
        Err(e) => {
            warn!(%addr, name = %name, "login: cannot store the token: {e}");
            unavailable()
        }
    }
}

/// A password too long to be anyone's is checked as a wrong one (the same delay and limiter).
async fn failed_after_delay(state: &WebState, addr: SocketAddr, body: &LoginBody) -> Response {
    let users = &state.ctx.hub.users;
    match users.log_in(addr.ip(), &body.name, "").await {
        Err(Refusal::TooManyFailedLogins) => error(
            StatusCode::TOO_MANY_REQUESTS,
            &Refusal::TooManyFailedLogins.to_string(),
        ),
        _ => failed(),
    }
}

/// The token of `Authorization: Bearer TOKEN` (the scheme in any case).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= MAX_PASSWORD)
        .then_some(token)
}

/// `POST /api/logout` with `Authorization: Bearer TOKEN`: revokes the token. `200 {"ok":true}`
/// whether or not it was one, so the answer tells nothing.
async fn logout(State(state): State<Arc<WebState>>, headers: HeaderMap) -> Response {
    let Some(logins) = logins(&state) else {
        return unavailable();
    };
    if let Some(token) = bearer(&headers) {
        if let Err(e) = logins.revoke(token).await {
            warn!("logout: cannot revoke a token: {e}");
            return unavailable();
        }
    }
    axum::Json(json!({ "ok": true })).into_response()
}

/// `GET /api/me` with `Authorization: Bearer TOKEN`: `200 {"name":...,"admin":...,"expires":...}`
/// for a live token of a registered name, else `401`.
async fn me(State(state): State<Arc<WebState>>, headers: HeaderMap) -> Response {
    let Some(logins) = logins(&state) else {
        return unavailable();
    };
    let Some(token) = bearer(&headers) else {
        return failed();
    };
    let issued = match logins.find(token).await {
        Ok(Some(issued)) => issued,
        Ok(None) => return failed(),
        Err(e) => {
            warn!("cannot check a session token: {e}");
            return unavailable();
        }
    };
    let users = &state.ctx.hub.users;
    // A name no longer registered (or registered anew under another spelling) has no login.
    if users.registered_name(&issued.name).as_deref() != Some(issued.name.as_str()) {
        return failed();
    }
    axum::Json(json!({
        "name": issued.name,
        "admin": users.is_admin(&issued.name),
        "expires": time(issued.expires),
    }))
    .into_response()
}
