//! The admin endpoint (`--admin`, on 127.0.0.1:9901 unless told otherwise):
//! plain HTTP/1.1 for operators and scripts.
//!
//! - `GET /versions`: the loaded versions (file, SHA-256, loaded at,
//!   connections and requests in flight each, compile time) and the last
//!   reload error, as JSON.
//! - `POST /reload`: reload the plugin file now; 200 with `reloaded` or
//!   `unchanged`, 422 with the error when the new file is refused.
//!
//! It binds to localhost by default because it can change what the server
//! runs; it has no authentication of its own.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, info};

use crate::plugin::{LivePlugin, Reloaded};

/// Serves the endpoint until dropped; each client connection is a task of
/// this one.
pub(super) async fn serve(listener: TcpListener, live: LivePlugin) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let live = live.clone();
                    conns.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let live = live.clone();
                            async move { Ok::<_, Infallible>(route(req, &live).await) }
                        });
                        if let Err(e) = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await
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

async fn route(req: Request<Incoming>, live: &LivePlugin) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/versions") => json(StatusCode::OK, versions(live)),
        (&Method::POST, "/reload") => {
            info!("reload asked for through the admin endpoint");
            match live.reload().await {
                Ok(Reloaded::New(p)) => json(
                    StatusCode::OK,
                    serde_json::json!({
                        "result": "reloaded",
                        "sha256": p.hash(),
                        "compile_ms": p.compile_time().as_secs_f64() * 1e3,
                    }),
                ),
                Ok(Reloaded::Unchanged) => json(
                    StatusCode::OK,
                    serde_json::json!({ "result": "unchanged", "sha256": live.current().hash() }),
                ),
                Err(e) => json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    serde_json::json!({ "result": "refused", "error": format!("{e:#}") }),
                ),
            }
        }
        (_, "/versions" | "/reload") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET /versions or POST /reload\n",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "routes: GET /versions, POST /reload\n",
        ),
    }
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
