//! Carries out a [`Plan`] against the API server: server-side apply for node peers and
//! statuses, deletes, Events. Thin on purpose; every decision was made in `plan`.

use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, ResourceExt};
use serde_json::json;
use wgmesh_api::constants::OPERATOR_FIELD_MANAGER;
use wgmesh_api::WireGuardPeer;

use crate::metrics::Metrics;
use crate::plan::{Plan, Severity};

/// Why a plan was not fully carried out.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// Some writes failed (the rest were still attempted).
    #[error("{failed} of {total} writes failed; first error: {first}")]
    Failed {
        /// Number of failed writes.
        failed: usize,
        /// Number of attempted writes.
        total: usize,
        /// The first failure.
        first: kube::Error,
    },
    /// Leadership ended mid-plan; the new leader recomputes from its own cache.
    #[error("leadership lost; stopped after {done} writes")]
    NotLeader {
        /// Writes done before stopping.
        done: usize,
    },
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Performs every write of `plan`, continuing past failures so one bad object cannot block the
/// others; a failure is returned so the caller retries with backoff. `still_leader` is checked
/// before every write so a replica whose lease term ended stops at once.
pub async fn execute(
    plan: &Plan,
    peers: &Api<WireGuardPeer>,
    recorder: &Recorder,
    metrics: &Metrics,
    still_leader: &(dyn Fn() -> bool + Sync),
) -> Result<(), ExecuteError> {
    let params = PatchParams::apply(OPERATOR_FIELD_MANAGER).force();
    let mut errors: Vec<kube::Error> = Vec::new();
    let mut total = 0usize;

    for peer in &plan.applies {
        total += 1;
        if !still_leader() {
            return Err(ExecuteError::NotLeader { done: total - 1 });
        }
        let name = peer.name_any();
        match peers.patch(&name, &params, &Patch::Apply(peer)).await {
            Ok(_) => {
                metrics.write("apply");
                tracing::info!(peer = %name, "applied node peer");
            }
            Err(e) => {
                tracing::warn!(peer = %name, error = %e, "apply failed");
                errors.push(e);
            }
        }
    }

    for name in &plan.deletes {
        total += 1;
        if !still_leader() {
            return Err(ExecuteError::NotLeader { done: total - 1 });
        }
        match peers.delete(name, &DeleteParams::background()).await {
            Ok(_) => {
                metrics.write("delete");
                tracing::info!(peer = %name, "deleted node peer");
            }
            // already gone, e.g. garbage-collected through the owner reference
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                tracing::warn!(peer = %name, error = %e, "delete failed");
                errors.push(e);
            }
        }
    }

    for (name, status) in &plan.statuses {
        total += 1;
        if !still_leader() {
            return Err(ExecuteError::NotLeader { done: total - 1 });
        }
        let body = json!({
            "apiVersion": "wgmesh.io/v1alpha1",
            "kind": "WireGuardPeer",
            "status": status,
        });
        match peers
            .patch_status(name, &params, &Patch::Apply(&body))
            .await
        {
            Ok(_) => {
                metrics.write("status");
                tracing::debug!(peer = %name, "applied status");
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                tracing::warn!(peer = %name, error = %e, "status apply failed");
                errors.push(e);
            }
        }
    }

    for ev in &plan.events {
        total += 1;
        if !still_leader() {
            return Err(ExecuteError::NotLeader { done: total - 1 });
        }
        let event = Event {
            type_: match ev.severity {
                Severity::Normal => EventType::Normal,
                Severity::Warning => EventType::Warning,
            },
            reason: ev.reason.clone(),
            note: Some(ev.note.clone()),
            action: "Validate".into(),
            secondary: None,
        };
        match recorder.publish(&event, &ev.regarding).await {
            Ok(()) => {
                metrics.write("event");
                tracing::info!(
                    object = ev.regarding.name.as_deref().unwrap_or_default(),
                    kind = ev.regarding.kind.as_deref().unwrap_or_default(),
                    reason = %ev.reason,
                    note = %ev.note,
                    "event"
                );
            }
            Err(e) => {
                tracing::warn!(reason = %ev.reason, error = %e, "event publish failed");
                errors.push(e);
            }
        }
    }

    let failed = errors.len();
    match errors.into_iter().next() {
        None => Ok(()),
        Some(first) => Err(ExecuteError::Failed {
            failed,
            total,
            first,
        }),
    }
}
