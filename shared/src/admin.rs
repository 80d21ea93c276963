//! The admin HTTP listener both binaries serve beside their RESP port: `/live` (the process
//! answers), `/ready` (it should get traffic) and `/metrics` (Prometheus text format).
//!
//! Kept off the data path: its own listener, its own small tasks, bounded requests (hyper's
//! limits plus a header read timeout), and every connection closed on shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

/// What the admin endpoints report; implemented by each binary.
pub trait AdminState: Send + Sync + 'static {
    /// Ok when the process should receive traffic; Err says why not (shown in the body).
    fn ready(&self) -> Result<(), String>;
    /// The metrics in Prometheus text exposition format.
    fn metrics(&self) -> Vec<u8>;
}

/// Encodes a registry's metrics in the text format (what `AdminState::metrics` usually
/// returns).
pub fn encode_registry(registry: &prometheus::Registry) -> Vec<u8> {
    use prometheus::Encoder;
    let mut out = Vec::with_capacity(16 * 1024);
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode(&registry.gather(), &mut out) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    out
}

/// Serves the admin endpoints on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, state: Arc<dyn AdminState>, mut shutdown: Shutdown) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let state = state.clone();
                    let mut stop = shutdown.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let state = state.clone();
                            async move { Ok::<_, Infallible>(respond(&*state, &req)) }
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(Duration::from_secs(5))
                            .max_buf_size(64 * 1024)
                            .serve_connection(TokioIo::new(stream), service);
                        tokio::pin!(conn);
                        tokio::select! {
                            _ = conn.as_mut() => {}
                            _ = stop.wait() => conn.as_mut().graceful_shutdown(),
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.wait() => break,
        }
    }
    connections.abort_all();
}

fn respond(state: &dyn AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/live" | "/livez" | "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/ready" | "/readyz" => match state.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(state.metrics())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /live, /ready or /metrics\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct State {
        ready: AtomicBool,
        registry: prometheus::Registry,
    }

    impl AdminState for State {
        fn ready(&self) -> Result<(), String> {
            if self.ready.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("topology unknown".into())
            }
        }
        fn metrics(&self) -> Vec<u8> {
            encode_registry(&self.registry)
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn live_ready_and_metrics() {
        let registry = prometheus::Registry::new();
        let c = prometheus::IntCounter::new("test_requests_total", "Requests.").expect("counter");
        registry.register(Box::new(c.clone())).expect("register");
        c.inc_by(7);
        let state = Arc::new(State {
            ready: AtomicBool::new(false),
            registry,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (trigger, shutdown) = crate::shutdown::channel();
        let server = tokio::spawn(serve(listener, state.clone(), shutdown));
        assert!(get(addr, "/live").await.starts_with("HTTP/1.1 200"));
        let r = get(addr, "/ready").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.contains("topology unknown"), "{r}");
        state.ready.store(true, Ordering::Relaxed);
        assert!(get(addr, "/ready").await.starts_with("HTTP/1.1 200"));
        let m = get(addr, "/metrics").await;
        assert!(m.contains("test_requests_total 7"), "{m}");
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        trigger.fire();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("stops on shutdown")
            .expect("no panic");
    }
}
