//! Prometheus metrics: per peer with Calico's names and labels
//! (`wireguard_latest_handshake_seconds`, `wireguard_bytes_sent`, `wireguard_bytes_rcvd`), plus
//! the agent's own (`wgmesh_agent_*`). Values are copied from each tick's `get=1`.

use std::sync::atomic::AtomicU64;
use std::time::UNIX_EPOCH;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use wgmesh_api::PublicKey;

use crate::uapi_client::DeviceState;

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    handshake: Family<Labels, FloatGauge>,
    sent: Family<Labels, FloatGauge>,
    rcvd: Family<Labels, FloatGauge>,
    pub peers: Gauge,
    pub ready: Gauge,
    pub reconcile_errors: Counter,
    pub engine_starts: Counter,
    guard_drops: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let handshake = Family::<Labels, FloatGauge>::default();
        let sent = Family::<Labels, FloatGauge>::default();
        let rcvd = Family::<Labels, FloatGauge>::default();
        let peers = Gauge::default();
        let ready = Gauge::default();
        let reconcile_errors = Counter::default();
        let engine_starts = Counter::default();
        let guard_drops = Family::<Labels, Counter>::default();
        registry.register(
            "wireguard_latest_handshake_seconds",
            "Unix time of the latest handshake with the peer (0: never)",
            handshake.clone(),
        );
        registry.register(
            "wireguard_bytes_sent",
            "Bytes sent to the peer",
            sent.clone(),
        );
        registry.register(
            "wireguard_bytes_rcvd",
            "Bytes received from the peer",
            rcvd.clone(),
        );
        registry.register(
            "wgmesh_agent_peers",
            "Peers configured on the engine",
            peers.clone(),
        );
        registry.register(
            "wgmesh_agent_ready",
            "1 while engine, interface and routes are in place",
            ready.clone(),
        );
        registry.register(
            "wgmesh_agent_reconcile_errors",
            "Reconcile passes that failed",
            reconcile_errors.clone(),
        );
        registry.register(
            "wgmesh_agent_engine_starts",
            "Times the agent started the engine",
            engine_starts.clone(),
        );
        registry.register(
            "wgmesh_agent_guard_drops",
            "Packets the underlay guard dropped: to remote pods leaving outside the tunnel (direction=leaving), from remote-pod addresses arriving outside it (direction=arriving)",
            guard_drops.clone(),
        );
        Metrics {
            registry,
            handshake,
            sent,
            rcvd,
            peers,
            ready,
            reconcile_errors,
            engine_starts,
            guard_drops,
        }
    }
}

impl Metrics {
    /// Adds the underlay guard's new drops, by direction.
    pub fn guard_dropped(&self, d: crate::guard::Drops) {
        for (direction, n) in [("leaving", d.leaving), ("arriving", d.arriving)] {
            self.guard_drops.get_or_create(&vec![("direction".to_string(), direction.to_string())]).inc_by(n);
        }
    }

    /// Replaces the per-peer series with what the engine reports now.
    pub fn observe(&self, hostname: &str, own: &PublicKey, dev: &DeviceState) {
        self.handshake.clear();
        self.sent.clear();
        self.rcvd.clear();
        for p in dev.peers.values() {
            let labels: Labels = vec![
                ("hostname".into(), hostname.into()),
                ("public_key".into(), own.to_string()),
                ("peer_key".into(), p.public_key.to_string()),
                (
                    "peer_endpoint".into(),
                    p.endpoint.map(|e| e.to_string()).unwrap_or_default(),
                ),
            ];
            let hs = p
                .last_handshake
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0.0, |d| d.as_secs_f64());
            self.handshake.get_or_create(&labels).set(hs);
            self.sent.get_or_create(&labels).set(p.tx_bytes as f64);
            self.rcvd.get_or_create(&labels).set(p.rx_bytes as f64);
        }
        self.peers.set(dev.peers.len() as i64);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        if prometheus_client::encoding::text::encode(&mut s, &self.registry).is_err() {
            s.clear();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uapi_client::parse_get;

    #[test]
    fn calico_names_and_labels_per_peer() {
        let m = Metrics::default();
        let pk = "01".repeat(32);
        let text = format!("public_key={pk}\nendpoint=192.0.2.1:51820\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=0\ntx_bytes=10\nrx_bytes=20\nerrno=0\n\n");
        let dev = parse_get(&text).expect("parse");
        m.observe("n1", &PublicKey::from_bytes([9; 32]), &dev);
        let out = m.encode();
        assert!(
            out.contains("wireguard_latest_handshake_seconds{hostname=\"n1\""),
            "{out}"
        );
        assert!(
            out.contains("peer_endpoint=\"192.0.2.1:51820\"} 1700000000"),
            "{out}"
        );
        assert!(
            out.contains("wireguard_bytes_sent{") && out.contains("} 10.0"),
            "{out}"
        );
        assert!(
            out.contains("wireguard_bytes_rcvd{") && out.contains("} 20.0"),
            "{out}"
        );
        assert!(out.contains("wgmesh_agent_peers 1"), "{out}");
        // a removed peer's series disappears
        m.observe(
            "n1",
            &PublicKey::from_bytes([9; 32]),
            &DeviceState::default(),
        );
        assert!(!m.encode().contains("wireguard_bytes_sent{"));
    }

    #[test]
    fn guard_drops_add_up_per_direction() {
        let m = Metrics::default();
        m.guard_dropped(crate::guard::Drops { leaving: 3, arriving: 0 });
        m.guard_dropped(crate::guard::Drops { leaving: 2, arriving: 7 });
        let out = m.encode();
        assert!(out.contains("wgmesh_agent_guard_drops_total{direction=\"leaving\"} 5"), "{out}");
        assert!(out.contains("wgmesh_agent_guard_drops_total{direction=\"arriving\"} 7"), "{out}");
    }
}
