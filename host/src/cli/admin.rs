//! The admin endpoint (`--admin`, on 127.0.0.1:9901 unless told otherwise):
//! plain HTTP/1.1 for operators, probes and scrapers.
//!
//! - `GET /healthz`: 200 while the process runs (liveness).
//! - `GET /readyz`: 200 while it accepts connections; 503 once draining
//!   after SIGTERM (readiness). It binds only once every listener is bound,
//!   so a probe that cannot connect means "starting".
//! - `GET /metrics`: every metric in the Prometheus text format.
//! - `GET /versions`: each plugin's loaded versions (file, SHA-256, loaded
//!   at, connections and requests in flight each, compile time) and its
//!   last reload error, as JSON.
//! - `POST /reload`: reload every plugin file and certificate now; 200 with
//!   `reloaded` or `unchanged`, 422 with the error when a new file is
//!   refused.
//!
//! It binds to localhost by default because it can change what the server
//! runs. Bound anywhere else it needs a token, and with a token every
//! request but the probes and `/metrics` (read-only, and what kubelets and
//! Prometheus ask for) must carry it (`Authorization: Bearer TOKEN`). It
//! refuses what a web page could send it: any request with an `Origin` (a
//! browser's cross-site request; scripts send none) and, without a token, a
//! `Host` that is not an IP address or `localhost` (DNS rebinding).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, info};

use std::sync::atomic::{AtomicBool, Ordering};

use crate::metrics::PrometheusMetrics;
use crate::plugin::{LivePlugin, Reloaded};

/// Admin connections open at once; more are closed as they come (the
/// endpoint may face the network, for kubelets and Prometheus).
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request head.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long one admin connection may stay open (a reload takes seconds).
const CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// What the endpoint reports on and acts on.
pub(super) struct AdminState {
    /// Each listener's plugin, by listener name.
    pub(super) plugins: Vec<(String, LivePlugin)>,
    pub(super) reloader: super::serve::Reloader,
    pub(super) metrics: PrometheusMetrics,
    /// Whether the server accepts connections.
    pub(super) ready: Arc<AtomicBool>,
    pub(super) token: Option<Arc<str>>,
}

/// Serves the endpoint until dropped; each client connection is a task of
/// this one.
pub(super) async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((_, peer)) if conns.len() >= MAX_CONNECTIONS => {
                    debug!(%peer, "admin endpoint at its connection cap; closing the newcomer");
                }
                Ok((stream, peer)) => {
                    let state = state.clone();
                    conns.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let state = state.clone();
                            async move {
                                let resp = match refusal(&req, state.token.as_deref()) {
                                    None => route(req, &state).await,
                                    Some(refused) => refused,
                                };
                                Ok::<_, Infallible>(resp)
                            }
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(HEADER_TIMEOUT)
                            .serve_connection(TokioIo::new(stream), service);
                        // An idle keep-alive connection ends too.
                        if let Err(e) = tokio::time::timeout(CONNECTION_TIMEOUT, conn)
                            .await
                            .unwrap_or_else(|_| Ok(()))
                        {
                            debug!(%peer, error = %e, "admin connection ended with an error");
                        }
                    });
                }
                Err(e) => debug!(error = %e, "admin accept failed"),
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// The admin token for an endpoint bound to `addr`: read from `file`, or
/// `TQ_ADMIN_TOKEN`; required unless `addr` is a loopback address.
pub(super) fn token(addr: SocketAddr, file: Option<&Path>) -> anyhow::Result<Option<Arc<str>>> {
    let token = match file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the admin token file {}", f.display()))?,
        ),
        None => std::env::var("TQ_ADMIN_TOKEN").ok(),
    };
    let token = token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
    if let Some(t) = &token {
        if t.len() < 16 {
            bail!(
                "the admin token is {} characters long; use at least 16",
                t.len()
            );
        }
    }
    if token.is_none() && !addr.ip().is_loopback() {
        bail!(
            "--admin {addr} is reachable from other hosts and would let them reload the \
             plugin: give it a token (--admin-token-file FILE or TQ_ADMIN_TOKEN), or bind \
             a loopback address (the default, 127.0.0.1:9901)"
        );
    }
    Ok(token.map(Arc::from))
}

/// Refuses what a web page could send, and requests without the token:
/// the refusal to send, or `None` to go on.
fn refusal<B>(req: &Request<B>, token: Option<&str>) -> Option<Response<Full<Bytes>>> {
    if req.headers().contains_key(hyper::header::ORIGIN) {
        return Some(text(
            StatusCode::FORBIDDEN,
            "requests from web pages are refused\n",
        ));
    }
    // DNS rebinding gets a page's script no further than a token would, so
    // with a token any Host (a proxy's, a Service name) is fine.
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if token.is_none() && !host_is_local_name(host) {
        return Some(text(
            StatusCode::FORBIDDEN,
            "Host must be an IP address or localhost\n",
        ));
    }
    let read_only_open = req.method() == Method::GET
        && matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics");
    if let (Some(token), false) = (token, read_only_open) {
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, t)| t.trim());
        // Constant time: the comparison must not tell how much matched.
        if given.len() != token.len() || !boring::memcmp::eq(given.as_bytes(), token.as_bytes()) {
            let mut r = text(StatusCode::UNAUTHORIZED, "a valid admin token is needed\n");
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
            return Some(r);
        }
    }
    None
}

/// Whether a `Host` header names an address rather than a domain a page
/// could point here by DNS rebinding: an IP literal or `localhost`, with or
/// without a port.
fn host_is_local_name(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return match rest.split_once(']') {
            Some((v6, port)) => {
                v6.parse::<std::net::Ipv6Addr>().is_ok()
                    && (port.is_empty()
                        || port
                            .strip_prefix(':')
                            .is_some_and(|p| p.parse::<u16>().is_ok()))
            }
            None => false,
        };
    } else {
        host.rsplit_once(':').map_or(host, |(n, _)| n)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

const ROUTES: &str =
    "routes: GET /healthz, GET /readyz, GET /metrics, GET /versions, POST /reload\n";

async fn route(req: Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => match state.ready.load(Ordering::Relaxed) {
            true => text(StatusCode::OK, "ready\n"),
            false => text(StatusCode::SERVICE_UNAVAILABLE, "not ready: draining\n"),
        },
        (&Method::GET, "/metrics") => {
            state.metrics.set_plugin_versions(
                state
                    .plugins
                    .iter()
                    .flat_map(|(_, live)| live.versions())
                    .map(|v| {
                        (
                            crate::plugin::version_label(&v.sha256).to_string(),
                            v.connections as u64,
                        )
                    }),
            );
            respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                state.metrics.render().into_bytes(),
            )
        }
        (&Method::GET, "/versions") => json(StatusCode::OK, versions_all(&state.plugins)),
        (&Method::POST, "/reload") => {
            info!("reload asked for through the admin endpoint");
            reload(state).await
        }
        (_, "/versions" | "/reload" | "/healthz" | "/readyz" | "/metrics") => {
            text(StatusCode::METHOD_NOT_ALLOWED, ROUTES)
        }
        _ => text(StatusCode::NOT_FOUND, ROUTES),
    }
}

/// Reloads certificates and every plugin. With one plugin the answer
/// describes it alone (`result`, `sha256`); with several, `result` is the
/// worst of theirs and `listeners` has each one's.
async fn reload(state: &AdminState) -> Response<Full<Bytes>> {
    let tls_error = state.reloader.reload_certificates();
    let mut results = Vec::new();
    let mut refused = false;
    let mut any_new = false;
    for (name, live) in &state.plugins {
        let v = match live.reload().await {
            Ok(Reloaded::New(p)) => {
                any_new = true;
                serde_json::json!({
                    "listener": name,
                    "result": "reloaded",
                    "sha256": p.hash(),
                    "compile_ms": p.compile_time().as_secs_f64() * 1e3,
                })
            }
            Ok(Reloaded::Unchanged) => serde_json::json!({
                "listener": name, "result": "unchanged", "sha256": live.current().hash()
            }),
            Err(e) => {
                refused = true;
                serde_json::json!({ "listener": name, "result": "refused", "error": format!("{e:#}") })
            }
        };
        results.push(v);
    }
    let status = if refused || tls_error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let mut body = match results.len() {
        1 => results.remove(0),
        _ => serde_json::json!({
            "result": if refused { "refused" } else if any_new { "reloaded" } else { "unchanged" },
            "listeners": results,
        }),
    };
    if let Some(e) = tls_error {
        body["certificate_error"] = serde_json::Value::String(e);
        if results.is_empty() && !refused {
            body["result"] = serde_json::Value::String("refused".into());
        }
    }
    json(status, body)
}

/// The first plugin's versions at the top level (what a single-plugin
/// server has always answered), and every plugin's under `plugins`.
fn versions_all(plugins: &[(String, LivePlugin)]) -> serde_json::Value {
    let mut top = plugins
        .first()
        .map_or_else(|| serde_json::json!({}), |(_, l)| versions(l));
    top["plugins"] = serde_json::Value::Array(
        plugins
            .iter()
            .map(|(name, l)| {
                let mut v = versions(l);
                v["listener"] = serde_json::Value::String(name.clone());
                v
            })
            .collect(),
    );
    top
}

fn versions(live: &LivePlugin) -> serde_json::Value {
    let last_error = live.last_error().map(|(at, msg)| {
        serde_json::json!({
            "at": humantime_serde::re::humantime::format_rfc3339_millis(at).to_string(),
            "error": msg,
        })
    });
    serde_json::json!({
        "file": live.path(),
        "versions": live.versions(),
        "last_error": last_error,
    })
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(&v).unwrap_or_default();
    body.push(b'\n');
    respond(status, "application/json", body)
}

fn text(status: StatusCode, s: &'static str) -> Response<Full<Bytes>> {
    respond(status, "text/plain", s.as_bytes().to_vec())
}

fn respond(status: StatusCode, ty: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ty),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method("POST").uri("/reload");
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn only_local_hosts_without_origin_and_with_the_token_pass() {
        let tok = Some("0123456789abcdef");
        let ok = req(&[
            ("host", "127.0.0.1:9901"),
            ("authorization", "Bearer 0123456789abcdef"),
        ]);
        assert!(refusal(&ok, tok).is_none());
        assert!(refusal(&req(&[("host", "localhost:9901")]), None).is_none());
        assert!(refusal(&req(&[("host", "[::1]:9901")]), None).is_none());
        let status = |r: Request<()>, t| refusal(&r, t).expect("refused").status();
        // DNS rebinding: a page's own domain pointed at 127.0.0.1.
        assert_eq!(
            status(req(&[("host", "evil.example:9901")]), None),
            StatusCode::FORBIDDEN
        );
        assert_eq!(status(req(&[]), None), StatusCode::FORBIDDEN);
        // A browser's cross-site POST.
        assert_eq!(
            status(
                req(&[
                    ("host", "127.0.0.1:9901"),
                    ("origin", "https://evil.example")
                ]),
                None
            ),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status(req(&[("host", "127.0.0.1")]), tok),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(
                req(&[
                    ("host", "127.0.0.1"),
                    ("authorization", "Bearer 0123456789abcdeX")
                ]),
                tok
            ),
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn a_non_loopback_endpoint_needs_a_token() {
        let dir = std::env::temp_dir().join(format!("tq-admin-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        let public: SocketAddr = "0.0.0.0:9901".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:9901".parse().unwrap();
        std::fs::write(&file, "short\n").unwrap();
        assert!(token(public, Some(&file))
            .unwrap_err()
            .to_string()
            .contains("at least 16"));
        std::fs::write(&file, "0123456789abcdef0123\n").unwrap();
        assert_eq!(
            token(public, Some(&file)).unwrap().as_deref(),
            Some("0123456789abcdef0123")
        );
        std::fs::write(&file, "").unwrap();
        assert!(token(public, Some(&file))
            .unwrap_err()
            .to_string()
            .contains("reachable from other hosts"));
        assert!(token(local, Some(&file)).unwrap().is_none());
        let _ = std::fs::remove_dir_all(dir);
    }
}
