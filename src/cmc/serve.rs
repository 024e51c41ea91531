//! `cmc serve`: the web console. One page with its script and styles embedded in the binary
//! (no CDN), served with a proxy to the daemon's admin API under `/api/`: the token stays in
//! this process and never reaches the browser.
//!
//! It binds to loopback by default. Beyond loopback it serves only HTTPS with the operator's
//! certificate and key (`--tls-cert`, `--tls-key`, PEM): plain HTTP there is refused, since
//! anyone on the path could read the console or act through it.
//!
//! Events: `/api/v1/events` relays the daemon's event stream (server-sent events) to the
//! page, which refreshes at once on a role, health or peer change instead of waiting for its
//! next one-second poll; the polls remain for the rate charts, which need samples anyway.
//!
//! Browser-side protections: every request must carry the `Host` the console listens on
//! (a DNS-rebinding page cannot reach it under another name), and a change (POST) must carry
//! the header `x-cmc-console: 1`, which a cross-site form cannot set without a CORS
//! preflight that this server never grants.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;

use crate::admin::client::{Client, ClientError};

/// The page, its script and styles (one file).
const INDEX: &str = include_str!("console/index.html");

/// Largest request body the console forwards.
const MAX_BODY: usize = 16 * 1024;

/// Where and how to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

struct Console {
    daemon: Client,
    /// Accepted `Host` header values.
    hosts: Vec<String>,
}

/// Runs the console until the process is stopped.
pub async fn serve(daemon: Client, opts: ServeOptions) -> anyhow::Result<()> {
    let tls = match (&opts.tls_cert, &opts.tls_key) {
        (Some(c), Some(k)) => Some(tls_acceptor(c, k)?),
        (None, None) if opts.listen.ip().is_loopback() => None,
        (None, None) => bail!(
            "refusing to serve the console on {} over plain HTTP: beyond loopback it needs --tls-cert and --tls-key (the operator's certificate), or listen on 127.0.0.1",
            opts.listen
        ),
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    let local = listener.local_addr()?;
    let mut hosts = vec![local.to_string(), format!("localhost:{}", local.port())];
    if local.ip().is_unspecified() {
        hosts.clear();
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("cmc console on {scheme}://{local}/ (daemon {})", daemon.addr);
    let state = Arc::new(Console { daemon, hosts });
    let app = Router::new()
        .route("/", get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX) }))
        .route("/api/v1/events", get(events))
        .fallback(proxy)
        .with_state(state);
    loop {
        let (stream, _) = listener.accept().await?;
        let svc = TowerToHyperService::new(app.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let http = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .clone();
            match tls {
                Some(acceptor) => {
                    if let Ok(s) = acceptor.accept(stream).await {
                        let _ = http.serve_connection(TokioIo::new(s), svc).await;
                    }
                }
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                }
            }
        });
    }
}

fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read the certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad PEM in {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read the key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not fit together")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

fn text(code: StatusCode, msg: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": msg.into() }).to_string();
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Events relayed to one page while it listens, at most this many waiting (a page that does
/// not read loses the oldest news, never this process's memory).
const EVENTS_QUEUED: usize = 256;

/// `/api/v1/events`: the daemon's event stream, one unnamed SSE message per event (its JSON
/// carries the kind), for as long as the page listens and the daemon answers.
async fn events(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !c.hosts.is_empty() && !c.hosts.iter().any(|h| h == host) {
        return text(StatusCode::FORBIDDEN, format!("unexpected Host {host:?}"));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(EVENTS_QUEUED);
    let daemon = c.daemon.clone();
    tokio::spawn(async move {
        // Ends when the page goes (the channel closes) or the daemon's stream ends.
        let _ = daemon
            .events(|ev| {
                let sent = tx.try_send(serde_json::to_string(&ev).unwrap_or_default());
                !matches!(sent, Err(tokio::sync::mpsc::error::TrySendError::Closed(_)))
            })
            .await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let data = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(SseEvent::default().data(data)), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(10))).into_response()
}

/// `/api/PATH` → the daemon's `PATH`.
async fn proxy(State(c): State<Arc<Console>>, req: Request) -> Response {
    let headers: HeaderMap = req.headers().clone();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !c.hosts.is_empty() && !c.hosts.iter().any(|h| h == host) {
        return text(StatusCode::FORBIDDEN, format!("unexpected Host {host:?}"));
    }
    let method = req.method().clone();
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    let Some(target) = path.strip_prefix("/api") else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    let target = target.to_string();
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
    };
    let r = match method {
        Method::GET => c.daemon.request("GET", &target, None).await,
        Method::POST => {
            if headers.get("x-cmc-console").is_none_or(|v| v != "1") {
                return text(StatusCode::FORBIDDEN, "changes need the x-cmc-console header");
            }
            let b: Option<String> = (!body.is_empty()).then(|| String::from_utf8_lossy(&body).into_owned());
            c.daemon.request("POST", &target, b.as_deref()).await
        }
        _ => return text(StatusCode::METHOD_NOT_ALLOWED, "GET or POST"),
    };
    match r {
        Ok(reply) => {
            let code = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
            (code, [(header::CONTENT_TYPE, "application/json")], reply.body).into_response()
        }
        Err(
            e @ (ClientError::Down { .. } | ClientError::RefusedByAcl { .. } | ClientError::Timeout { .. }),
        ) => text(StatusCode::BAD_GATEWAY, e.to_string()),
        Err(e) => text(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}
