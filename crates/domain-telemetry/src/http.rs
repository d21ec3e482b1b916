//! The operator's HTTP endpoint of a manager or a node (`--metrics ADDR`): `GET /metrics`
//! (the [`Metrics`] in the OpenMetrics text format), `GET /healthz` (200 while the process
//! serves) and `GET /readyz` (200 once [`Readiness`] says so, else 503), for Prometheus,
//! service managers and load balancers.
//!
//! It is bounded as every listener here is: [`MAX_CONNECTIONS`] at once (more wait in the
//! kernel's backlog), [`REQUEST_TIMEOUT`] to read a request's head and [`CONNECTION_TIMEOUT`]
//! in all, one request per connection, no request body read.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Metrics;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 32;
/// The longest a client may take to send a request's head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection lives.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The content type of `/metrics`.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether the process is ready for work (a node: joined its manager; a manager: it leads
/// or knows who does). Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Sets the flag.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    /// The flag.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for metrics")]
pub struct EndpointError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// The operating system's error.
    #[source]
    pub source: std::io::Error,
}

/// A running endpoint; it stops when [`Endpoint::shutdown`] is called or it is dropped.
#[derive(Debug)]
pub struct Endpoint {
    local_addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Endpoint {
    /// Listens on `addr` (port 0: one the system picks) and serves `metrics` and
    /// `readiness` there until shut down.
    ///
    /// # Errors
    /// [`EndpointError`] when the address cannot be bound.
    pub async fn start(
        addr: SocketAddr,
        metrics: Metrics,
        readiness: Readiness,
    ) -> Result<Self, EndpointError> {
        let error = |source| EndpointError { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(error)?;
        let local_addr = listener.local_addr().map_err(error)?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, metrics, readiness, stop.clone()));
        Ok(Self {
            local_addr,
            stop,
            task: Some(task),
        })
    }

    /// The address it listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops listening and waits for the connections being served.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    metrics: Metrics,
    readiness: Readiness,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::debug!(%error, "metrics endpoint: accept failed");
                    continue;
                }
            },
        };
        // Reap the finished ones so that the set stays as small as the permits.
        while connections.try_join_next().is_some() {}
        let (metrics, readiness) = (metrics.clone(), readiness.clone());
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&request, &metrics, &readiness);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            drop(permit);
        });
    }
    connections.shutdown().await;
}

fn respond(
    request: &Request<Incoming>,
    metrics: &Metrics,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(metrics.encode())));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if readiness.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz, /readyz\n",
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    fn request(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    }

    #[tokio::test]
    async fn it_serves_metrics_health_and_readiness_as_the_flag_says() {
        let metrics = Metrics::new("test");
        let readiness = Readiness::default();
        let endpoint = Endpoint::start(
            "127.0.0.1:0".parse().unwrap(),
            metrics.clone(),
            readiness.clone(),
        )
        .await
        .unwrap();
        let addr = endpoint.local_addr();

        let scraped = get(addr, &request("/metrics")).await;
        assert!(scraped.starts_with("HTTP/1.1 200"), "{scraped}");
        assert!(scraped.contains(OPENMETRICS), "{scraped}");
        assert!(scraped.contains("domain_build_info{"), "{scraped}");
        assert!(
            get(addr, &request("/healthz"))
                .await
                .starts_with("HTTP/1.1 200")
        );
        assert!(
            get(addr, &request("/readyz"))
                .await
                .starts_with("HTTP/1.1 503")
        );
        readiness.set(true);
        assert!(
            get(addr, &request("/readyz"))
                .await
                .starts_with("HTTP/1.1 200")
        );
        assert!(
            get(addr, &request("/other"))
                .await
                .starts_with("HTTP/1.1 404")
        );
        let post = "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
        assert!(get(addr, post).await.starts_with("HTTP/1.1 405"));
        endpoint.shutdown().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn garbage_gets_an_error_not_a_crash_and_the_endpoint_goes_on() {
        let endpoint = Endpoint::start(
            "127.0.0.1:0".parse().unwrap(),
            Metrics::new("test"),
            Readiness::default(),
        )
        .await
        .unwrap();
        let addr = endpoint.local_addr();
        let answer = get(addr, "\x00\x01 not http at all\r\n\r\n").await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
            "{answer:?}"
        );
        assert!(
            get(addr, &request("/healthz"))
                .await
                .starts_with("HTTP/1.1 200")
        );
    }
}
