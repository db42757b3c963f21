//! The web side, on its own port (`--http`): the chat page, the WebSocket endpoint, a small
//! read-only HTTP API, the admin API (`--admin-token-file`) and the Prometheus metrics, served
//! by axum.
//!
//! WebSocket clients are one more transport at the edge: they join the same rooms through the
//! same hub and read the same JSON log as JSON-over-TCP clients (see [`ws`]). The page is
//! static HTML, CSS and JS compiled into the binary: nothing to build, nothing fetched from
//! elsewhere, so it works offline.

mod admin;
mod api;
mod deadline;
mod frames;
pub mod guard;
mod login;
mod ws;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{info, warn};

use crate::context::Shared;
use crate::limits::Admission;
use crate::metrics::Transport;
use crate::proxy::{forwarded, Trusted};
use crate::settings::WebSettings;
use deadline::{WriteDeadline, WRITE_DEADLINE};
use guard::{Hosts, LiveHosts, Token};

/// What every web request can reach.
pub struct WebState {
    pub ctx: Arc<Shared>,
    pub admission: Arc<Admission>,
    pub metrics: Option<PrometheusHandle>,
    pub shutdown: watch::Receiver<bool>,
    /// With a certificate the web side speaks HTTPS (and WSS).
    pub tls: Option<TlsAcceptor>,
    /// HTTP connections, counted apart from chat connections with the same limits (a reload
    /// changes both).
    pub http_admission: Arc<Admission>,
}

/// The web side's listeners, bound at start-up so a taken port stops the start with a clear
/// error, like the chat port.
pub struct Web {
    listeners: Vec<TcpListener>,
    /// `--metrics-addr`: /metrics alone, here and not on `listeners`.
    metrics_listeners: Vec<TcpListener>,
    /// The host names requests may be for.
    hosts: Arc<LiveHosts>,
    /// `--metrics-token-file`: what /metrics requires.
    metrics_token: Option<Arc<Token>>,
    /// `--admin-token-file`: what the admin API requires; none: no admin API.
    admin_token: Option<Arc<Token>>,
    /// `--trusted-proxies`: whose `Forwarded` / `X-Forwarded-For` name the client.
    proxies: Arc<Trusted>,
}

impl Web {
    /// Binds every address `--http` (and `--metrics-addr`) resolves to, with the chat ports'
    /// `backlog`; None when neither is on. A bad `--allowed-hosts` entry or a token file that
    /// gives no token (`--metrics-token-file`, `admin_token_file`: `--admin-token-file`) stops
    /// the start too.
    pub async fn bind(
        settings: &WebSettings,
        proxies: &Trusted,
        admin_token_file: Option<&Path>,
        backlog: u32,
    ) -> io::Result<Option<Web>> {
        let load = |flag, path: Option<&Path>| -> io::Result<Option<Arc<Token>>> {
            match path {
                Some(path) => Ok(Some(Arc::new(
                    Token::load(flag, path).map_err(io::Error::other)?,
                ))),
                None => Ok(None),
            }
        };
        let metrics_token = load(
            "--metrics-token-file",
            settings.metrics_token_file.as_deref(),
        )?;
        let admin_token = load("--admin-token-file", admin_token_file)?;
        let http = settings
            .http
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty());
        let metrics_addr = settings.metrics_addr.as_deref().map(str::trim);
        if http.is_none() && admin_token.is_some() {
            warn!("--admin-token-file does nothing without --http: the admin API is off");
        }
        if http.is_none() && metrics_addr.is_none() {
            return Ok(None);
        }
        let hosts = Hosts::new(settings).map_err(io::Error::other)?;
        let bind = |flag: &'static str, addr: Option<&str>| {
            let addr = addr.map(str::to_owned);
            async move {
                let Some(addr) = addr else {
                    return Ok(Vec::new());
                };
                crate::listen::listen_all(&addr, backlog)
                    .await
                    .map_err(|e| io::Error::new(e.kind(), format!("{flag}: {e}")))
            }
        };
        Ok(Some(Web {
            listeners: bind("--http", http).await?,
            metrics_listeners: bind("--metrics-addr", metrics_addr).await?,
            hosts: Arc::new(LiveHosts::new(hosts)),
            metrics_token,
            admin_token,
            proxies: Arc::new(proxies.clone()),
        }))
    }

    /// The host names requests may be for, as a reload changes them.
    pub fn hosts(&self) -> Arc<LiveHosts> {
        self.hosts.clone()
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serves until shutdown. Open WebSockets are told and closed by their own tasks.
    pub async fn run(self, state: Arc<WebState>) {
        let scheme = if state.tls.is_some() { "https" } else { "http" };
        for addr in self.local_addrs() {
            info!("http listening on {addr} ({scheme})");
        }
        for addr in self
            .metrics_listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
        {
            info!("metrics listening on {addr} (http)");
        }
        let metrics = metrics_route(self.metrics_token.clone());
        let admin = self.admin_token.clone().map(|token| admin::Gate {
            token,
            users: state.ctx.hub.users.clone(),
        });
        if admin.is_some() && !self.listeners.is_empty() {
            info!("admin api on /api/admin/");
        }
        let (app, metrics_app) = if self.metrics_listeners.is_empty() {
            (router(state.clone(), Some(metrics), admin), None)
        } else {
            let alone = Router::new()
                .route("/metrics", metrics)
                .fallback(not_found)
                .with_state(state.clone());
            (router(state.clone(), None, admin), Some(alone))
        };
        // HTTP connections are counted apart from chat connections (a WebSocket is counted
        // again as one when it upgrades), with the same limits.
        let admission = state.http_admission.clone();
        let edge = Arc::new(Edge {
            hosts: self.hosts.clone(),
            tls: state.tls.clone(),
            proxies: self.proxies.clone(),
        });
        // The metrics listener speaks plain HTTP: it is meant for a private address.
        let metrics_edge = Arc::new(Edge {
            hosts: self.hosts,
            tls: None,
            proxies: self.proxies,
        });
        let web = self.listeners.into_iter().map(|l| (l, &app, &edge));
        let metrics = self.metrics_listeners.into_iter().filter_map(|l| {
            let app = metrics_app.as_ref()?;
            Some((l, app, &metrics_edge))
        });
        let mut tasks = Vec::new();
        for (listener, app, edge) in web.chain(metrics) {
            let (app, state, admission) = (app.clone(), state.clone(), admission.clone());
            let edge = edge.clone();
            tasks.push(tokio::spawn(accept_loop(
                listener, app, state, admission, edge,
            )));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// How a listener's connections are served: the hosts they may ask for, and TLS.
struct Edge {
    hosts: Arc<LiveHosts>,
    tls: Option<TlsAcceptor>,
    /// Trusted proxies: a request from one is its forwarded client's.
    proxies: Arc<Trusted>,
}

/// Most bytes hyper buffers per connection, each way (its default is about 400 KiB): room
/// for any request head we accept and a page of a long answer.
const WEB_BUFFER: usize = 64 * 1024;

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    state: Arc<WebState>,
    admission: Arc<Admission>,
    edge: Arc<Edge>,
) {
    let mut shutdown = state.shutdown.clone();
    let failing = crate::log_gate::LogGate::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|&stop| stop) => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin, and say so at most once a
                // second.
                if let Some(held_back) = failing.admit() {
                    warn!(held_back, "http accept failed: {e}; backing off");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // A trusted proxy's connection carries many clients: it counts in the total only
        // (a WebSocket is then counted as its client's when it upgrades).
        let admitted = match edge.proxies.contains(addr.ip()) {
            true => admission.admit_proxy(Transport::Http),
            false => admission.admit(addr.ip(), Transport::Http),
        };
        let Ok(ticket) = admitted else {
            continue; // over the limits: closed without a word
        };
        let _ = stream.set_nodelay(true);
        let (app, state, edge) = (app.clone(), state.clone(), edge.clone());
        tokio::spawn(async move {
            match &edge.tls {
                None => serve_connection(stream, addr, app, &state, edge.clone()).await,
                Some(tls) => {
                    let within = state.ctx.transport().handshake_timeout;
                    match tokio::time::timeout(within, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, addr, app, &state, edge.clone()).await
                        }
                        Ok(Err(e)) => info!(%addr, "https: tls handshake failed: {e}"),
                        Err(_) => info!(%addr, "https: tls handshake timeout"),
                    }
                }
            }
            drop(ticket);
        });
    }
}

/// Serves HTTP/1.1 on one connection (upgrades to WebSocket included), and lets it finish its
/// current request at shutdown. A client has `--handshake-timeout` to send a request's headers
/// (as a chat client has to send its handshake): a slowloris client is cut off there.
///
/// Every request passes the edge's checks here, before any route sees it: one place for the
/// page, the WebSocket, the API and the metrics alike.
async fn serve_connection<I>(
    io: I,
    addr: SocketAddr,
    app: Router,
    state: &WebState,
    edge: Arc<Edge>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let hosts = edge.hosts.get();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        // Every route takes the client's address from here: behind a trusted proxy, the one
        // its headers name (see `proxy::forwarded`).
        let addr = forwarded::client_addr(&edge.proxies, addr, req.headers());
        req.extensions_mut().insert(ConnectInfo(addr));
        let refused = hosts.check(&req);
        if refused.is_some() {
            // What the host was, so an operator can tell a name missing from --allowed-hosts.
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok());
            let host: String = host.unwrap_or_default().chars().take(100).collect();
            info!(%addr, host = ?host, "http refused: host not allowed or missing");
        }
        let (app, hsts) = (app.clone(), edge.tls.is_some());
        async move {
            let mut response = match refused {
                Some(refusal) => refusal,
                None => app.oneshot(req.map(axum::body::Body::new)).await?,
            };
            if hsts {
                // Over HTTPS: browsers are to come back only over HTTPS (a year; the other
                // names of the domain are the operator's to include).
                response.headers_mut().insert(
                    header::STRICT_TRANSPORT_SECURITY,
                    HeaderValue::from_static("max-age=31536000"),
                );
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.ctx.transport().handshake_timeout)
        // hyper's default lets a response gather ~400 KiB for a client that does not read.
        .max_buf_size(WEB_BUFFER);
    let conn = builder
        .serve_connection(
            TokioIo::new(WriteDeadline::new(io, WRITE_DEADLINE)),
            service,
        )
        .with_upgrades();
    tokio::pin!(conn);
    let mut shutdown = state.shutdown.clone();
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = shutdown.wait_for(|&stop| stop) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(3), conn).await;
}

/// The web side's routes; /metrics among them unless it has a listener of its own, and the
/// admin API with its token.
fn router(
    state: Arc<WebState>,
    metrics: Option<MethodRouter<Arc<WebState>>>,
    admin: Option<admin::Gate>,
) -> Router {
    let mut router = Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/style.css", get(style_css))
        .route("/manifest.webmanifest", get(manifest))
        .route("/icon.svg", get(icon_svg))
        .route("/icon-192.png", get(icon_192))
        .route("/icon-512.png", get(icon_512))
        .route("/ws", get(ws::upgrade))
        .route("/healthz", get(api::healthz))
        .route("/api/info", get(api::info))
        .route("/api/rooms", get(api::rooms))
        .route("/api/rooms/{room}/messages", get(api::messages))
        .merge(login::routes());
    if let Some(metrics) = metrics {
        router = router.route("/metrics", metrics);
    }
    let router = match &admin {
        Some(_) => router.merge(admin::routes()),
        None => router,
    };
    let router = router.fallback(not_found).with_state(state);
    match admin {
        // In front of every route and of the fallback: an admin path is checked before it is
        // routed, so an unknown one without the token gets 401 like a known one.
        Some(gate) => router.layer(axum::middleware::from_fn_with_state(gate, admin::gate)),
        None => router,
    }
}

/// `GET /metrics`, behind the token when there is one.
fn metrics_route(token: Option<Arc<Token>>) -> MethodRouter<Arc<WebState>> {
    get(
        move |State(state): State<Arc<WebState>>, headers: HeaderMap| {
            std::future::ready(api::metrics(&state, &headers, token.as_deref()))
        },
    )
}

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");
/// What a phone needs to add the page to its home screen.
const MANIFEST: &str = include_str!("page/manifest.webmanifest");
const ICON_SVG: &str = include_str!("page/icon.svg");
/// The same icon as PNG, for home screens that take no SVG (iOS, and Chrome's install check
/// asks for 192 and 512 pixels); rendered once from icon.svg by headless Chromium.
const ICON_192: &[u8] = include_bytes!("page/icon-192.png");
const ICON_512: &[u8] = include_bytes!("page/icon-512.png");

/// The page may run only its own script and style, and talk only to this server: even if
/// user text ever reached the DOM as markup, an injected script would not run.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   manifest-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn page(body: impl Into<axum::body::Body>, content_type: &'static str) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    (headers, body.into()).into_response()
}

async fn index() -> Response {
    page(INDEX_HTML, "text/html; charset=utf-8")
}

async fn app_js() -> Response {
    page(APP_JS, "text/javascript; charset=utf-8")
}

async fn style_css() -> Response {
    page(STYLE_CSS, "text/css; charset=utf-8")
}

async fn manifest() -> Response {
    page(MANIFEST, "application/manifest+json")
}

async fn icon_192() -> Response {
    page(ICON_192, "image/png")
}

async fn icon_512() -> Response {
    page(ICON_512, "image/png")
}

async fn icon_svg() -> Response {
    page(ICON_SVG, "image/svg+xml")
}

async fn not_found() -> Response {
    api::error(StatusCode::NOT_FOUND, "not found")
}
