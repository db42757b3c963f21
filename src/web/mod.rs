//! The web side, on its own port (`--http`): the chat page, the WebSocket endpoint, a small
//! read-only HTTP API and the Prometheus metrics, served by axum.
//!
//! WebSocket clients are one more transport at the edge: they join the same rooms through the
//! same hub and read the same JSON log as JSON-over-TCP clients (see [`ws`]). The page is
//! static HTML, CSS and JS compiled into the binary: nothing to build, nothing fetched from
//! elsewhere, so it works offline.

mod api;
mod ws;

pub use ws::handshake_frame;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::connection::Shared;
use crate::limits::Admission;

/// What every web request can reach.
pub struct WebState {
    pub ctx: Arc<Shared>,
    pub admission: Arc<Admission>,
    pub metrics: Option<PrometheusHandle>,
    pub shutdown: watch::Receiver<bool>,
    /// With a certificate the web side speaks HTTPS (and WSS).
    pub tls: Option<TlsAcceptor>,
}

/// The web side's listeners, bound at start-up so a taken port stops the start with a clear
/// error, like the chat port.
pub struct Web {
    listeners: Vec<TcpListener>,
}

impl Web {
    /// Binds every address `addr` resolves to.
    pub async fn bind(addr: &str) -> io::Result<Web> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("cannot resolve {addr}: {e}")))?
            .collect();
        let mut listeners = Vec::new();
        let mut last_err = None;
        for a in addrs {
            match TcpListener::bind(a).await {
                Ok(l) => listeners.push(l),
                Err(e) => {
                    warn!(addr = %a, "http: cannot listen: {e}");
                    last_err = Some(io::Error::new(
                        e.kind(),
                        format!("cannot listen on {a} (--http): {e}"),
                    ));
                }
            }
        }
        if listeners.is_empty() {
            return Err(last_err.unwrap_or_else(|| {
                io::Error::new(
                    io::ErrorKind::AddrNotAvailable,
                    "--http resolved to nothing",
                )
            }));
        }
        Ok(Web { listeners })
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
        let app = router(state.clone());
        let mut tasks = Vec::new();
        for listener in self.listeners {
            let app = app
                .clone()
                .into_make_service_with_connect_info::<SocketAddr>();
            let mut shutdown = state.shutdown.clone();
            let stop = async move {
                let _ = shutdown.wait_for(|&stop| stop).await;
            };
            let served = match &state.tls {
                // tap_io gives the TLS listener axum's SocketAddr connect info.
                Some(tls) => {
                    let listener = TlsListener::start(listener, tls.clone(), &state);
                    let serve = axum::serve(listener.tap_io(|_| {}), app);
                    tokio::spawn(async move { serve.with_graceful_shutdown(stop).await })
                }
                None => {
                    let serve = axum::serve(listener, app);
                    tokio::spawn(async move { serve.with_graceful_shutdown(stop).await })
                }
            };
            tasks.push(tokio::spawn(async move {
                if let Ok(Err(e)) = served.await {
                    warn!("http server stopped: {e}");
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Accepts TCP and completes TLS handshakes in tasks of their own, so a client that stalls its
/// handshake holds up no one else; axum gets only finished TLS streams.
struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: io::Result<SocketAddr>,
}

impl TlsListener {
    fn start(listener: TcpListener, tls: TlsAcceptor, state: &WebState) -> Self {
        let (tx, ready) = mpsc::channel(64);
        let local = listener.local_addr();
        let within = state.ctx.config.handshake_timeout();
        tokio::spawn(async move {
            loop {
                let (stream, addr) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors, say: wait rather than spin.
                        warn!("https accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (tls, done) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(within, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let _ = done.send((stream, addr)).await;
                        }
                        Ok(Err(e)) => info!(%addr, "https: tls handshake failed: {e}"),
                        Err(_) => info!(%addr, "https: tls handshake timeout"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        TlsListener { ready, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The acceptor stopped: nothing will come again.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.local {
            Ok(addr) => Ok(*addr),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        }
    }
}

fn router(state: Arc<WebState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/style.css", get(style_css))
        .route("/ws", get(ws::upgrade))
        .route("/healthz", get(api::healthz))
        .route("/api/rooms", get(api::rooms))
        .route("/api/rooms/{room}/messages", get(api::messages))
        .route("/metrics", get(api::metrics))
        .fallback(not_found)
        .with_state(state)
}

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");

/// The page may run only its own script and style, and talk only to this server: even if
/// user text ever reached the DOM as markup, an injected script would not run.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn page(body: &'static str, content_type: &'static str) -> Response {
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
    (headers, body).into_response()
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

async fn not_found() -> Response {
    api::error(StatusCode::NOT_FOUND, "not found")
}
