//! One reconcile: snapshot -> [`plan`] -> [`execute`]. The loop in `controller` calls this.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client};
use wgmesh_api::{MeshConfig, WireGuardPeer};

use crate::execute::{execute, ExecuteError};
use crate::metrics::Metrics;
use crate::plan::plan;

/// Everything a reconcile needs besides the observed objects.
pub struct Context {
    /// Cluster-scoped `WireGuardPeer` API.
    pub peers: Api<WireGuardPeer>,
    /// Event publisher.
    pub recorder: Recorder,
    /// Metrics handles.
    pub metrics: Metrics,
    /// Validation settings.
    pub mesh: MeshConfig,
    /// Node problems already reported with an Event.
    pub reported_node_problems: BTreeMap<String, String>,
}

impl Context {
    /// A context writing through `client`; `instance` identifies this replica in Events.
    pub fn new(
        client: Client,
        mesh: MeshConfig,
        metrics: Metrics,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: "wgmesh-operator".into(),
            instance,
        };
        Context {
            peers: Api::all(client.clone()),
            recorder: Recorder::new(client, reporter),
            metrics,
            mesh,
            reported_node_problems: BTreeMap::new(),
        }
    }
}

/// Plans and executes one reconcile over the given snapshot. Returns when the next reconcile
/// is due without any watch event (a handshake going stale), if ever.
pub async fn reconcile_once(
    ctx: &mut Context,
    nodes: &[Arc<Node>],
    peers: &[Arc<WireGuardPeer>],
    now: Timestamp,
    still_leader: &(dyn Fn() -> bool + Sync),
) -> Result<Option<Duration>, ExecuteError> {
    let started = Instant::now();
    let node_refs: Vec<&Node> = nodes.iter().map(AsRef::as_ref).collect();
    let peer_refs: Vec<&WireGuardPeer> = peers.iter().map(AsRef::as_ref).collect();
    let p = plan(
        &node_refs,
        &peer_refs,
        &ctx.mesh,
        now,
        &ctx.reported_node_problems,
    );
    ctx.metrics.members(p.valid_members, p.invalid_members);
    tracing::debug!(
        applies = p.applies.len(),
        repairs = p.repairs.len(),
        deletes = p.deletes.len(),
        statuses = p.statuses.len(),
        events = p.events.len(),
        valid = p.valid_members,
        invalid = p.invalid_members,
        "planned"
    );
    let result = if p.is_noop() {
        Ok(())
    } else {
        execute(&p, &ctx.peers, &ctx.recorder, &ctx.metrics, still_leader).await
    };
    if result.is_ok() {
        ctx.reported_node_problems = p.reported_node_problems;
    }
    ctx.metrics
        .reconciled(result.is_ok(), started.elapsed().as_secs_f64());
    result.map(|()| p.requeue_after)
}
