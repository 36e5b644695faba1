//! `--health-listen`: a tiny HTTP/1.1 endpoint for Kubernetes probes, on the exporter's tokio
//! runtime. `GET /readyz` answers 200 once the probes are attached; `GET /healthz` answers 200
//! while the capture loop keeps making progress (it beats at least every poll interval, 20 ms);
//! `GET /metrics` gives the agent's own counters (published each second) in the Prometheus text
//! format, followed by whatever [`Health::set_extra_metrics`] renders (the span metrics).
//! The same server code serves `--metrics-listen`, which answers only `/metrics`
//! ([`Routes::MetricsOnly`]).
//! Its sockets belong to the agent, which the kernel programs never trace.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::Published;

/// The capture loop counts as stalled when it has not beaten for this long.
pub const STALL_AFTER: Duration = Duration::from_secs(10);

/// Renders more Prometheus text for `/metrics`.
pub type ExtraMetrics = Arc<dyn Fn() -> String + Send + Sync>;

/// Liveness and readiness shared by the capture thread (which beats) and the endpoint.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
    metrics: Published,
    extra: Arc<std::sync::OnceLock<ExtraMetrics>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("inner", &self.inner)
            .finish()
    }
}

/// Which paths a server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routes {
    /// `/healthz`, `/readyz` and `/metrics` (`--health-listen`).
    All,
    /// `/metrics` only (`--metrics-listen`).
    MetricsOnly,
}

#[derive(Debug)]
struct Inner {
    start: Instant,
    last_beat_ms: AtomicU64,
    ready: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                start: Instant::now(),
                last_beat_ms: AtomicU64::new(0),
                ready: AtomicBool::new(false),
            }),
            metrics: Published::default(),
            extra: Arc::default(),
        }
    }

    /// Adds `render`'s text to every `/metrics` answer (set once; later calls are ignored).
    pub fn set_extra_metrics(&self, render: ExtraMetrics) {
        let _ = self.extra.set(render);
    }

    /// The text of `/metrics`: the agent's counters, then the extra metrics.
    pub fn metrics_text(&self) -> String {
        let mut text = self.metrics.latest().prometheus();
        if let Some(extra) = self.extra.get() {
            text.push_str(&extra());
        }
        text
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The agent's counters as the capture thread last published them.
    pub fn metrics(&self) -> &Published {
        &self.metrics
    }

    /// Records progress of the capture loop.
    pub fn beat(&self) {
        self.inner
            .last_beat_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    /// The probes are attached and the capture loop is starting.
    pub fn set_ready(&self) {
        self.beat();
        self.inner.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// Time since the last beat, `None` before the agent is ready (loading is bounded and fails
    /// loudly on its own, so a starting agent counts as alive).
    pub fn since_beat(&self) -> Option<Duration> {
        self.is_ready().then(|| {
            Duration::from_millis(
                self.now_ms()
                    .saturating_sub(self.inner.last_beat_ms.load(Ordering::Relaxed)),
            )
        })
    }
}

/// The response to one request head (request line and headers): status line, headers, body.
/// Pure, so the routing is unit-tested without sockets.
pub fn respond(head: &[u8], health: &Health) -> Vec<u8> {
    respond_on(head, health, Routes::All)
}

/// [`respond`] for a server answering `routes`.
pub fn respond_on(head: &[u8], health: &Health, routes: Routes) -> Vec<u8> {
    let line = head
        .split(|&b| b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim_end().to_owned())
        .unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let (Some(method), Some(target), Some(version)) = (method, target, version) else {
        return reply(400, "Bad Request", "bad request\n", false);
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return reply(400, "Bad Request", "bad request\n", false);
    }
    let path = target.split('?').next().unwrap_or(target);
    let head_only = method == "HEAD";
    let path = match (routes, path) {
        (Routes::MetricsOnly, "/healthz" | "/readyz") => "",
        _ => path,
    };
    let known = matches!(path, "/healthz" | "/readyz" | "/metrics");
    if known && method != "GET" && !head_only {
        return reply(405, "Method Not Allowed", "use GET\n", false);
    }
    match path {
        "/healthz" => match health.since_beat() {
            None => reply(200, "OK", "ok: starting\n", head_only),
            Some(d) if d <= STALL_AFTER => reply(200, "OK", "ok\n", head_only),
            Some(d) => reply(
                503,
                "Service Unavailable",
                &format!("capture loop stalled for {}s\n", d.as_secs()),
                head_only,
            ),
        },
        "/readyz" if health.is_ready() => reply(200, "OK", "ready\n", head_only),
        "/readyz" => reply(
            503,
            "Service Unavailable",
            "probes not attached yet\n",
            head_only,
        ),
        "/metrics" => reply(200, "OK", &health.metrics_text(), head_only),
        _ => reply(404, "Not Found", "not found\n", head_only),
    }
}

fn reply(code: u16, reason: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if code == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(body);
    }
    out.into_bytes()
}

/// Binds the endpoint; call inside the runtime (`Runtime::enter`).
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// Serves probes until the runtime stops: one request per connection, heads up to 8 KiB, read
/// within 5 s.
pub async fn serve(listener: tokio::net::TcpListener, health: Health) {
    serve_routes(listener, health, Routes::All).await;
}

/// [`serve`] answering only `routes`.
pub async fn serve_routes(listener: tokio::net::TcpListener, health: Health, routes: Routes) {
    serve_with(listener, "health endpoint", move |head| {
        respond_on(head, &health, routes)
    })
    .await;
}

/// Serves `respond`'s answer to each request head until the runtime stops: one request per
/// connection, heads up to 8 KiB, read within 5 s. `what` names the server in warnings. The
/// health endpoint, `--metrics-listen` and the viewer (`--ui`) all run on it.
pub async fn serve_with<F>(listener: tokio::net::TcpListener, what: &'static str, respond: F)
where
    F: Fn(&[u8]) -> Vec<u8> + Clone + Send + Sync + 'static,
{
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("{what}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let respond = respond.clone();
        tokio::spawn(async move {
            let mut head = Vec::with_capacity(512);
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                true
            })
            .await;
            if read != Ok(true) {
                return;
            }
            let _ = stream.write_all(&respond(&head)).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(resp: &[u8]) -> String {
        let s = String::from_utf8_lossy(resp);
        s.lines().next().unwrap_or_default().to_owned()
    }

    #[test]
    fn readiness_follows_attachment() {
        let h = Health::new();
        let get = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            status(&respond(get, &h)),
            "HTTP/1.1 503 Service Unavailable"
        );
        h.set_ready();
        let r = respond(get, &h);
        assert_eq!(status(&r), "HTTP/1.1 200 OK");
        assert!(String::from_utf8_lossy(&r).ends_with("\r\n\r\nready\n"));
    }

    #[test]
    fn metrics_serve_the_published_counters() {
        let h = Health::new();
        let get = b"GET /metrics HTTP/1.1\r\n\r\n";
        let empty = String::from_utf8_lossy(&respond(get, &h)).into_owned();
        assert!(
            empty.starts_with("HTTP/1.1 200 OK") && empty.ends_with("\r\n\r\n"),
            "{empty}"
        );
        let mut s = crate::telemetry::Snapshot::default();
        s.counter("conns", "opened", "Connections opened.", 3);
        h.metrics().publish(s);
        let r = String::from_utf8_lossy(&respond(get, &h)).into_owned();
        assert!(r.ends_with("\r\n\r\n# HELP socktrace_conns_opened_total Connections opened.\n# TYPE socktrace_conns_opened_total counter\nsocktrace_conns_opened_total 3\n"), "{r}");
        let post = b"POST /metrics HTTP/1.1\r\n\r\n";
        assert_eq!(
            status(&respond(post, &h)),
            "HTTP/1.1 405 Method Not Allowed"
        );
    }

    #[test]
    fn metrics_only_routes_and_extra_text() {
        let h = Health::new();
        h.set_ready();
        let mut s = crate::telemetry::Snapshot::default();
        s.gauge("export", "pending", "Spans pending.", 2);
        h.metrics().publish(s);
        h.set_extra_metrics(Arc::new(|| "red_total 7\n".to_owned()));
        let get = b"GET /metrics HTTP/1.1\r\n\r\n";
        for routes in [Routes::All, Routes::MetricsOnly] {
            let r = String::from_utf8_lossy(&respond_on(get, &h, routes)).into_owned();
            assert!(
                r.ends_with("\r\n\r\n# HELP socktrace_export_pending Spans pending.\n# TYPE socktrace_export_pending gauge\nsocktrace_export_pending 2\nred_total 7\n"),
                "{r}"
            );
        }
        let probe = b"GET /healthz HTTP/1.1\r\n\r\n";
        assert_eq!(
            status(&respond_on(probe, &h, Routes::MetricsOnly)),
            "HTTP/1.1 404 Not Found"
        );
        assert_eq!(
            status(&respond_on(probe, &h, Routes::All)),
            "HTTP/1.1 200 OK"
        );
    }

    #[test]
    fn liveness_needs_recent_beats_once_ready() {
        let h = Health::new();
        let get = b"GET /healthz HTTP/1.1\r\n\r\n";
        assert_eq!(status(&respond(get, &h)), "HTTP/1.1 200 OK", "starting");
        h.set_ready();
        assert_eq!(status(&respond(get, &h)), "HTTP/1.1 200 OK");
        // An agent whose last beat was 15 s ago.
        let stalled = Health {
            inner: Arc::new(Inner {
                start: Instant::now()
                    .checked_sub(STALL_AFTER + Duration::from_secs(5))
                    .expect("machine up for more than 15 s"),
                last_beat_ms: AtomicU64::new(0),
                ready: AtomicBool::new(true),
            }),
            metrics: Published::default(),
            extra: Arc::default(),
        };
        let r = respond(get, &stalled);
        assert_eq!(status(&r), "HTTP/1.1 503 Service Unavailable");
        assert!(String::from_utf8_lossy(&r).contains("stalled for 15s"));
        stalled.beat();
        assert_eq!(status(&respond(get, &stalled)), "HTTP/1.1 200 OK");
    }

    #[test]
    fn other_paths_methods_and_garbage() {
        let h = Health::new();
        h.set_ready();
        assert_eq!(
            status(&respond(b"GET /stats HTTP/1.1\r\n\r\n", &h)),
            "HTTP/1.1 404 Not Found"
        );
        assert_eq!(
            status(&respond(b"GET /readyz?verbose HTTP/1.0\r\n\r\n", &h)),
            "HTTP/1.1 200 OK"
        );
        let head = respond(b"HEAD /healthz HTTP/1.1\r\n\r\n", &h);
        assert!(String::from_utf8_lossy(&head).ends_with("Connection: close\r\n\r\n"));
        let post = respond(b"POST /healthz HTTP/1.1\r\n\r\n", &h);
        assert_eq!(status(&post), "HTTP/1.1 405 Method Not Allowed");
        assert!(String::from_utf8_lossy(&post).contains("Allow: GET, HEAD\r\n"));
        for garbage in [
            &b""[..],
            b"\x16\x03\x01\x02\x00",
            b"GET /healthz\r\n\r\n",
            b"GET / SPDY/3\r\n",
        ] {
            assert_eq!(
                status(&respond(garbage, &h)),
                "HTTP/1.1 400 Bad Request",
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn serves_over_tcp() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let h = Health::new();
            let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(serve(listener, h.clone()));
            h.set_ready();
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            // The head arrives in two pieces.
            s.write_all(b"GET /readyz HTTP/1.1\r\n")
                .await
                .expect("write");
            s.write_all(b"Host: x\r\n\r\n").await.expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
            assert!(out.ends_with("ready\n"), "{out}");
        });
    }
}
