//! Prometheus metrics of the operator (prometheus-client, OpenMetrics text on /metrics).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// All metrics, cheap to clone (handles share their values).
#[derive(Clone)]
pub struct Metrics {
    reconciles: Family<ResultLabel, Counter>,
    duration: Histogram,
    writes: Family<OpLabel, Counter>,
    peers: Family<StateLabel, Gauge>,
    leader: Gauge,
    event_failures: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them under the `wgmesh_operator` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            reconciles: Family::default(),
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            writes: Family::default(),
            peers: Family::default(),
            leader: Gauge::default(),
            event_failures: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("wgmesh_operator");
        r.register("reconciles", "Reconciles by result", m.reconciles.clone());
        r.register(
            "reconcile_duration_seconds",
            "Time to plan and execute one reconcile",
            m.duration.clone(),
        );
        r.register("writes", "API writes by operation", m.writes.clone());
        r.register("peers", "Mesh members by validity", m.peers.clone());
        r.register(
            "leader",
            "1 while this replica holds the leader lease",
            m.leader.clone(),
        );
        r.register(
            "event_failures",
            "Events that could not be published (best effort: the turn still succeeds)",
            m.event_failures.clone(),
        );
        m
    }

    /// Counts a finished reconcile.
    pub fn reconciled(&self, ok: bool, seconds: f64) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        self.duration.observe(seconds);
    }

    /// Counts one successful write (`apply`, `status`, `delete`, `event`).
    pub fn write(&self, op: &str) {
        self.writes.get_or_create(&OpLabel { op: op.into() }).inc();
    }

    /// Counts an Event the API server did not take.
    pub fn event_failed(&self) {
        self.event_failures.inc();
    }

    /// Records how many members are valid and invalid.
    pub fn members(&self, valid: usize, invalid: usize) {
        let set = |state: &str, v: usize| {
            self.peers
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set("valid", valid);
        set("invalid", invalid);
    }

    /// Records leadership.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }
}
