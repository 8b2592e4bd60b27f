//! `/healthz` (the loop is turning), `/readyz` (engine, interface and routes in place) and
//! `/metrics`, served by hyper on a small runtime thread. The port is open to every pod on a
//! hostNetwork node, so each connection gets its own task, a request head of at most
//! `HEAD_LIMIT` bytes and `HEAD_TIMEOUT` to send it and `CONNECTION_TIMEOUT` in all, and one
//! source address may hold `MAX_PER_SOURCE` of them: a pod cannot hold up the kubelet's probes.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::metrics::Metrics;

/// Room for a GET's request line and headers (hyper's smallest buffer).
const HEAD_LIMIT: usize = 8192;
/// A probe sends its request at once; a client still sending after this is cut off.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once, and from one source address: more are closed on accept, so
/// neither a flood nor one pod can take the agent's file descriptors or every slot.
const MAX_CONNECTIONS: usize = 256;
const MAX_PER_SOURCE: usize = 8;
/// A connection ends after this however it stands (a client that never reads its answer).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

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
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let listener = {
        let _in = rt.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || rt.block_on(accept(listener, health, metrics, stale)))?;
    Ok(bound)
}

/// Open connections per source address; a slot is given back when its guard drops.
#[derive(Clone, Default)]
struct Sources(Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>);

struct SourceSlot(Sources, IpAddr);

impl Sources {
    fn take(&self, ip: IpAddr) -> Option<SourceSlot> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= MAX_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(SourceSlot(self.clone(), ip))
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut m = (self.0).0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

async fn accept(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    stale: Duration,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let sources = Sources::default();
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // out of file descriptors, most likely: do not spin
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Dropping the stream closes it.
        let Some(source) = sources.take(from.ip()) else {
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let (health, metrics) = (health.clone(), metrics.clone());
        tokio::spawn(async move {
            let _slots = (slot, source);
            let svc = service_fn(move |req: Request<Incoming>| {
                let (status, ctype, body) = route(req.uri().path(), &health, &metrics, stale);
                let mut resp = Response::new(Full::new(Bytes::from(body)));
                *resp.status_mut() = status;
                resp.headers_mut()
                    .insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(ctype));
                async move { Ok::<_, Infallible>(resp) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(HEAD_LIMIT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), svc);
            match tokio::time::timeout(CONNECTION_TIMEOUT, served).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "http connection ended with an error"),
                Err(_) => tracing::debug!("http connection cut off after {CONNECTION_TIMEOUT:?}"),
            }
        });
    }
}

fn route(
    path: &str,
    health: &Health,
    metrics: &Metrics,
    stale: Duration,
) -> (StatusCode, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let age =
        Duration::from_millis(now_ms().saturating_sub(health.last_tick_ms.load(Ordering::Relaxed)));
    match path {
        "/healthz" if age <= stale => (StatusCode::OK, TEXT, "ok\n".into()),
        "/healthz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            format!("no reconcile pass for {} ms\n", age.as_millis()),
        ),
        "/readyz" if health.ready.load(Ordering::Relaxed) && age <= stale => {
            (StatusCode::OK, TEXT, "ready\n".into())
        }
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n".into()),
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => (StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn get(addr: SocketAddr, path: &str) -> String {
        ask(TcpStream::connect(addr).expect("connect"), path).unwrap_or_default()
    }

    /// One GET on an open connection; what came back, or why nothing did within 5 s.
    fn ask(mut s: TcpStream, path: &str) -> std::io::Result<String> {
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
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

    fn server() -> SocketAddr {
        let health = Arc::new(Health::default());
        health.tick(true);
        serve(
            "127.0.0.1:0".parse().expect("addr"),
            health,
            Arc::new(Metrics::default()),
            Duration::from_secs(60),
        )
        .expect("serve")
    }

    #[test]
    fn a_client_that_never_finishes_its_request_does_not_hold_up_the_probes() {
        // Any pod can reach the port: one dribbling connection must not make the kubelet's
        // probes time out (and the agent be restarted).
        let addr = server();
        let mut slow = TcpStream::connect(addr).expect("connect");
        write!(slow, "GET /healthz HTTP/1.1\r\n").expect("write");
        let stop = Arc::new(AtomicBool::new(false));
        let dribble = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) && slow.write_all(b"X").is_ok() {
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        let answer = ask(TcpStream::connect(addr).expect("connect"), "/healthz");
        stop.store(true, Ordering::Relaxed);
        let _ = dribble.join();
        assert!(
            answer.as_ref().is_ok_and(|a| a.starts_with("HTTP/1.1 200")),
            "{answer:?}"
        );
    }

    /// A connection from `source` (any 127/8 address reaches a loopback server).
    fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let s = tokio::net::TcpSocket::new_v4().expect("socket");
            s.bind(format!("{source}:0").parse().expect("source"))
                .expect("bind");
            let stream = s.connect(addr).await.expect("connect");
            let std = stream.into_std().expect("std");
            std.set_nonblocking(false).expect("blocking");
            std
        })
    }

    #[test]
    fn one_source_cannot_take_every_slot() {
        let addr = server();
        let idle: Vec<TcpStream> = (0..MAX_PER_SOURCE)
            .map(|_| connect_from("127.0.0.1", addr))
            .collect();
        // Accepts are in order: the next one from the same address is over its share.
        let mut extra = connect_from("127.0.0.1", addr);
        extra
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 16];
        assert!(
            matches!(extra.read(&mut buf), Ok(0)),
            "a connection over the source's share was kept"
        );
        // Another address (the kubelet's, say) is served at once.
        let answer = ask(connect_from("127.0.0.2", addr), "/healthz");
        assert!(
            answer.as_ref().is_ok_and(|a| a.starts_with("HTTP/1.1 200")),
            "{answer:?}"
        );
        drop(idle);
    }

    #[test]
    fn an_endless_request_head_is_cut_off() {
        // The server keeps at most a few KiB of a request head, not whatever a client sends.
        let addr = server();
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let chunk = [b'a'; 64 * 1024];
        let mut sent = 0usize;
        while sent < 64 << 20 {
            match s.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        assert!(
            sent < 64 << 20,
            "the server took {sent} bytes of one request line"
        );
        assert!(get(addr, "/healthz").starts_with("HTTP/1.1 200"));
    }
}
