//! `/healthz` (the loop is turning), `/readyz` (engine, interface and routes in place) and
//! `/metrics`, on a small blocking HTTP/1.1 server thread: three GETs need no framework.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metrics::Metrics;

/// What the endpoints report; written by the agent loop.
#[derive(Default)]
pub struct Health {
    pub ready: AtomicBool,
    /// Unix milliseconds of the last finished tick.
    pub last_tick_ms: AtomicU64,
}

impl Health {
    pub fn tick(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        self.last_tick_ms.store(now_ms(), Ordering::Relaxed);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts the server on `addr`; `stale` is how long without a tick makes /healthz fail.
pub fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    stale: Duration,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                // one slow client must not stall the others for long
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
                let _ = handle(stream, &health, &metrics, stale);
            }
        })?;
    Ok(bound)
}

fn handle(
    stream: TcpStream,
    health: &Health,
    metrics: &Metrics,
    stale: Duration,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // drain the headers; bodies are not expected
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let (status, ctype, body) = route(path, health, metrics, stale);
    let mut w = stream;
    write!(w, "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    w.flush()
}

fn route(
    path: &str,
    health: &Health,
    metrics: &Metrics,
    stale: Duration,
) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let age =
        Duration::from_millis(now_ms().saturating_sub(health.last_tick_ms.load(Ordering::Relaxed)));
    match path.split('?').next().unwrap_or("") {
        "/healthz" if age <= stale => ("200 OK", TEXT, "ok\n".into()),
        "/healthz" => (
            "503 Service Unavailable",
            TEXT,
            format!("no reconcile pass for {} ms\n", age.as_millis()),
        ),
        "/readyz" if health.ready.load(Ordering::Relaxed) && age <= stale => {
            ("200 OK", TEXT, "ready\n".into())
        }
        "/readyz" => ("503 Service Unavailable", TEXT, "not ready\n".into()),
        "/metrics" => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => ("404 Not Found", TEXT, "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }

    #[test]
    fn health_ready_and_metrics() {
        let health = Arc::new(Health::default());
        let metrics = Arc::new(Metrics::default());
        let addr = serve(
            "127.0.0.1:0".parse().expect("addr"),
            health.clone(),
            metrics,
            Duration::from_secs(5),
        )
        .expect("serve");
        assert!(get(addr, "/healthz").starts_with("HTTP/1.1 503"));
        health.tick(false);
        assert!(get(addr, "/healthz").starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").starts_with("HTTP/1.1 503"));
        health.tick(true);
        assert!(get(addr, "/readyz").starts_with("HTTP/1.1 200"));
        let m = get(addr, "/metrics");
        assert!(
            m.starts_with("HTTP/1.1 200") && m.contains("wgmesh_agent_ready"),
            "{m}"
        );
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
    }
}
