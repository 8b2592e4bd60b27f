//! Carries out a [`Plan`] against the API server: server-side apply for node peers and
//! statuses, merge patches for repairs, deletes, Events. Thin on purpose; every decision was made in `plan`.

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

/// The longest one API call may take. kube's client has no read timeout outside watches, so
/// a half-open connection would hold the leader, still renewing its Lease, forever.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs one API call with `limit`; running out of time is an error like any other.
pub async fn within<T>(
    limit: std::time::Duration,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(kube::Error::Service(format!("no answer from the API server within {limit:?}").into()))
    })
}

/// events.k8s.io/v1 refuses a note over 1024 bytes (and a refused Event was retried forever).
const NOTE_MAX: usize = 1000;

/// The Event for `ev`. Its action carries a digest of the note: kube's recorder merges Events
/// with the same type, action and reason into a series that keeps the first note, so a
/// changed message would never be shown.
pub fn event_of(ev: &crate::plan::PlannedEvent) -> Event {
    use std::hash::{Hash, Hasher};
    let mut note = ev.note.clone();
    if note.len() > NOTE_MAX {
        let mut cut = NOTE_MAX;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str(" [...]");
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    note.hash(&mut h);
    Event {
        type_: match ev.severity {
            Severity::Normal => EventType::Normal,
            Severity::Warning => EventType::Warning,
        },
        reason: ev.reason.clone(),
        note: Some(note),
        action: format!("Validate-{:08x}", h.finish() as u32),
        secondary: None,
    }
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
        match within(CALL_TIMEOUT, peers.patch(&name, &params, &Patch::Apply(peer))).await {
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

    let merge = PatchParams { field_manager: Some(OPERATOR_FIELD_MANAGER.into()), ..PatchParams::default() };
    for (name, patch) in &plan.repairs {
        total += 1;
        if !still_leader() {
            return Err(ExecuteError::NotLeader { done: total - 1 });
        }
        match within(CALL_TIMEOUT, peers.patch(name, &merge, &Patch::Merge(patch))).await {
            Ok(_) => {
                metrics.write("repair");
                tracing::info!(peer = %name, "took back fields another manager added to a node peer");
            }
            Err(e) => {
                tracing::warn!(peer = %name, error = %e, "repair failed");
                errors.push(e);
            }
        }
    }

    for name in &plan.deletes {
        total += 1;
        if !still_leader() {
            return Err(ExecuteError::NotLeader { done: total - 1 });
        }
        match within(CALL_TIMEOUT, peers.delete(name, &DeleteParams::background())).await {
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
        match within(CALL_TIMEOUT, peers.patch_status(name, &params, &Patch::Apply(&body))).await {
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
        let event = event_of(ev);
        match within(CALL_TIMEOUT, recorder.publish(&event, &ev.regarding)).await {
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
            // Events are best effort: one the API refuses (a name past its length limit, a
            // quota in "default") must not fail the turn and hold back every change behind it.
            Err(e) => {
                tracing::warn!(reason = %ev.reason, error = %e, "event publish failed");
                metrics.event_failed();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlannedEvent;

    fn planned(note: &str) -> PlannedEvent {
        PlannedEvent {
            regarding: Default::default(),
            severity: Severity::Warning,
            reason: "InvalidEndpoint".into(),
            note: note.into(),
        }
    }

    #[test]
    fn event_notes_fit_the_api_and_a_new_note_is_a_new_event() {
        // A long annotation quoted in a note, with multi-byte characters at the cut.
        let long = format!("node excluded: annotation {}", "é".repeat(1500));
        let e = event_of(&planned(&long));
        let note = e.note.unwrap_or_default();
        assert!(note.len() <= 1024 && note.ends_with("[...]"), "{} bytes", note.len());
        let (a, b) = (event_of(&planned("no InternalIP")), event_of(&planned("bad endpoint")));
        assert_ne!(a.action, b.action, "the recorder would fold the second into the first");
        assert_eq!(a.action, event_of(&planned("no InternalIP")).action, "the same note is the same series");
        assert!(a.action.len() <= 128);
    }

    #[tokio::test]
    async fn a_call_that_never_answers_is_an_error() {
        let r = within(std::time::Duration::from_millis(50), std::future::pending::<Result<(), kube::Error>>()).await;
        assert!(matches!(r, Err(kube::Error::Service(_))), "{r:?}");
    }
}
