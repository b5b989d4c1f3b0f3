//! The HTTP endpoint of `pipe run --http-addr`: `/metrics`, `/health` and `/ready`, through
//! hyper (HTTP/1.1 with keep-alive, as Prometheus scrapes).
//!
//! It listens only where it is told (`127.0.0.1:9898`, say); nothing it answers carries a
//! secret, but a metrics port is still best kept off public interfaces.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use slog::{debug, info};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Format, Telemetry};

/// A bound listener, ready to serve.
pub struct Server {
    listener: TcpListener,
}

impl Server {
    /// Binds `addr`; the error says which address could not be had.
    pub async fn bind(addr: &str) -> Result<Self, String> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("--http-addr {addr}: cannot listen there: {e}"))?;
        Ok(Self { listener })
    }

    /// The address it listens on (with the port the system chose, for port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `stop` fires. Connections still open then are dropped.
    pub async fn serve(self, telemetry: Telemetry, stop: CancellationToken, logger: slog::Logger) {
        if let Some(addr) = self.local_addr() {
            info!(logger, "serving /metrics, /health and /ready"; "address" => %addr);
        }
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = stop.cancelled() => break,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    debug!(logger, "accept failed"; "error" => %e);
                    // Out of file descriptors, say: try again shortly rather than spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let telemetry = telemetry.clone();
            connections.spawn(async move {
                let service = service_fn(move |request| {
                    let telemetry = telemetry.clone();
                    async move { Ok::<_, Infallible>(respond(&telemetry, &request).await) }
                });
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
            // Reap finished connections as we go.
            while connections.try_join_next().is_some() {}
        }
        connections.abort_all();
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

async fn respond(telemetry: &Telemetry, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET and HEAD\n",
        );
    }
    match request.uri().path() {
        "/metrics" => {
            let accept = request
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let format = Format::from_accept(accept);
            // Thousands of per-target series take a while to write: off the runtime's threads.
            let telemetry = telemetry.clone();
            let body = tokio::task::spawn_blocking(move || telemetry.encode(format))
                .await
                .unwrap_or_default();
            text(StatusCode::OK, format.content_type(), body)
        }
        "/health" => {
            if telemetry.health().is_live() {
                text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    "not running: starting or shutting down\n",
                )
            }
        }
        "/ready" => {
            let readiness = telemetry.health().readiness();
            let status = if readiness.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let mut body = serde_json::to_vec(&readiness).unwrap_or_default();
            body.push(b'\n');
            text(status, "application/json", body)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: /metrics, /health or /ready\n",
        ),
    }
}
