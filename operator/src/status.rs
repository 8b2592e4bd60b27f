//! Pure computation of a peer's desired status from its mesh verdict, its observed status and
//! the current time. Messages are stable texts (no counts, no ages) so the status only changes,
//! and is only written, when the verdict or readiness really changes.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use wgmesh_api::conditions::{Reason, READY, VALID};
use wgmesh_api::constants::HANDSHAKE_FRESH_SECS;
use wgmesh_api::node::Problem;
use wgmesh_api::{Member, WireGuardPeer, WireGuardPeerStatus};

/// Desired status plus when it will change by itself (a recent handshake going stale).
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredStatus {
    /// What the operator applies; `latestHandshake` is never set here, the agents own it.
    pub status: WireGuardPeerStatus,
    /// Time after which `Ready` flips without any event.
    pub expires_in: Option<Duration>,
}

fn condition(
    type_: &str,
    ok: bool,
    reason: Reason,
    message: &str,
    generation: Option<i64>,
    observed: &[Condition],
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    // keep the transition time while the condition's status is unchanged
    let since = observed
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.as_str().to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// Status the operator wants on `peer`, whose mesh member is `member`.
pub fn desired_status(peer: &WireGuardPeer, member: &Member, now: Timestamp) -> DesiredStatus {
    let generation = peer.metadata.generation;
    let observed = peer.status.as_ref();
    let observed_conditions = observed
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();

    let valid = match &member.verdict {
        Ok(()) => condition(
            VALID,
            true,
            Reason::Accepted,
            "spec is valid and distributed to all nodes",
            generation,
            observed_conditions,
            now,
        ),
        Err(Problem { reason, message }) => condition(
            VALID,
            false,
            *reason,
            message,
            generation,
            observed_conditions,
            now,
        ),
    };

    let handshake = observed
        .and_then(|s| s.latest_handshake.as_ref())
        .map(|t| t.0);
    let fresh = i128::from(HANDSHAKE_FRESH_SECS) * 1_000_000_000;
    let age_ns = handshake.map(|h| now.duration_since(h).as_nanos());
    let (ready_ok, ready_reason, ready_msg, expires_in) = match (member.is_valid(), age_ns) {
        (false, _) => (false, Reason::NotValid, "peer is not valid, so no node configures it", None),
        (true, None) => (false, Reason::NoHandshake, "no node has reported a handshake with this peer yet", None),
        (true, Some(age)) if age <= fresh => (
            true,
            Reason::HandshakeRecent,
            "a node completed a handshake with this peer within the last 180s",
            u64::try_from(fresh - age).ok().map(Duration::from_nanos),
        ),
        (true, Some(_)) => (
            false,
            Reason::HandshakeStale,
            "no handshake within the last 180s; idle peers without persistentKeepalive only handshake when there is traffic",
            None,
        ),
    };
    let ready = condition(
        READY,
        ready_ok,
        ready_reason,
        ready_msg,
        generation,
        observed_conditions,
        now,
    );

    DesiredStatus {
        status: WireGuardPeerStatus {
            conditions: vec![valid, ready],
            observed_generation: generation,
            distributed_allowed_ips: if member.is_valid() {
                member.allowed_ips.iter().map(ToString::to_string).collect()
            } else {
                Vec::new()
            },
            latest_handshake: None,
        },
        expires_in,
    }
}

/// True if the observed status already says what `desired` says (ignoring the agents' fields
/// and any conditions other managers own).
pub fn status_matches(
    observed: Option<&WireGuardPeerStatus>,
    desired: &WireGuardPeerStatus,
) -> bool {
    let Some(obs) = observed else {
        return false;
    };
    let ours_match = desired.conditions.iter().all(|d| {
        obs.conditions.iter().any(|o| {
            o.type_ == d.type_
                && o.status == d.status
                && o.reason == d.reason
                && o.message == d.message
                && o.observed_generation == d.observed_generation
        })
    });
    ours_match
        && obs.observed_generation == desired.observed_generation
        && obs.distributed_allowed_ips == desired.distributed_allowed_ips
}

/// The observed `Valid` condition as (status, reason), to detect transitions worth an Event.
pub fn observed_validity(peer: &WireGuardPeer) -> Option<(bool, String)> {
    peer.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == VALID)
        .map(|c| (c.status == "True", c.reason.clone()))
}
