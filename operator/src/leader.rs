//! Leader election on a coordination.k8s.io/v1 Lease, so two replicas never both write.
//!
//! A small implementation rather than a crate: the writer must stop on its own once a renewal
//! cannot be confirmed, which needs a local deadline (like client-go's renewDeadline) that the
//! crates checked (kube-lease-manager 0.13 keeps reporting "leader" while renewals fail).
//! Renewals are server-side applies with a resourceVersion precondition; the first acquisition
//! of a missing Lease is a create, so two replicas racing get one 409 between them. Expiry is
//! judged on this replica's monotonic clock (time since the record last changed), never by
//! comparing wall clocks across nodes.

use crate::execute::within;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wgmesh_api::constants::OPERATOR_FIELD_MANAGER;

/// Timing of the election.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// Lease object name.
    pub lease_name: String,
    /// Namespace of the Lease.
    pub namespace: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// How long a record stays valid after its last change.
    pub lease_duration: Duration,
    /// How long after starting a successful renewal this replica still acts as leader; shorter
    /// than `lease_duration` so it stops before anyone else may start.
    pub renew_deadline: Duration,
    /// Pause between attempts.
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// Client-go's usual 15 s / 10 s / 2 s timing.
    pub fn new(lease_name: &str, namespace: &str, identity: &str) -> Self {
        LeaderConfig {
            lease_name: lease_name.to_owned(),
            namespace: namespace.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What to do after reading the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Take the Lease (free, released or expired); `transitions` is the new count.
    Acquire {
        /// Value for `leaseTransitions`.
        transitions: i32,
    },
    /// We hold it: renew.
    Renew,
    /// Someone else holds a live Lease.
    Follow {
        /// Current holder.
        holder: String,
    },
}

/// Pure election step. `unchanged_for` is how long this replica has seen the same record.
pub fn decide(
    spec: Option<&LeaseSpec>,
    me: &str,
    unchanged_for: Duration,
    default_duration: Duration,
) -> Decision {
    let transitions = spec.and_then(|s| s.lease_transitions).unwrap_or(0);
    let holder = spec
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty());
    match holder {
        None => Decision::Acquire {
            transitions: transitions.saturating_add(1),
        },
        Some(h) if h == me => Decision::Renew,
        Some(h) => {
            let duration = spec
                .and_then(|s| s.lease_duration_seconds)
                .and_then(|s| u64::try_from(s).ok())
                .map_or(default_duration, Duration::from_secs);
            if unchanged_for > duration {
                Decision::Acquire {
                    transitions: transitions.saturating_add(1),
                }
            } else {
                Decision::Follow {
                    holder: h.to_owned(),
                }
            }
        }
    }
}

/// Read side of the election: true while this replica may write.
#[derive(Clone, Debug)]
pub struct Leadership {
    until: watch::Receiver<Option<Instant>>,
    // keeps the channel of `always()` open; the elector owns the sender otherwise
    _constant: Option<std::sync::Arc<watch::Sender<Option<Instant>>>>,
}

impl Leadership {
    /// Always leader (single replica, `--no-leader-election`).
    pub fn always() -> Self {
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let (tx, rx) = watch::channel(Some(far));
        Leadership {
            until: rx,
            _constant: Some(std::sync::Arc::new(tx)),
        }
    }

    /// True if the last confirmed renewal is still within its deadline.
    pub fn is_leader(&self) -> bool {
        matches!(*self.until.borrow(), Some(t) if Instant::now() < t)
    }

    /// Waits until leadership may have changed (acquired, renewed or lost).
    pub async fn changed(&mut self) {
        if self.until.changed().await.is_err() {
            // the elector stopped (shutdown); nothing will change any more
            std::future::pending::<()>().await;
        }
    }

    /// Instant the current term ends, if leading.
    pub fn deadline(&self) -> Option<Instant> {
        *self.until.borrow()
    }
}

/// Holder, renew time and resourceVersion: any change means the holder is alive.
type Fingerprint = Option<(Option<String>, Option<MicroTime>, Option<String>)>;

fn fingerprint(lease: Option<&Lease>) -> Fingerprint {
    lease.map(|l| {
        let spec = l.spec.as_ref();
        (
            spec.and_then(|s| s.holder_identity.clone()),
            spec.and_then(|s| s.renew_time.clone()),
            l.metadata.resource_version.clone(),
        )
    })
}

fn record(
    acquire: Option<MicroTime>,
    transitions: i32,
    holder: &str,
    duration_secs: i32,
) -> LeaseSpec {
    let now = MicroTime(Timestamp::now());
    LeaseSpec {
        holder_identity: Some(holder.to_owned()),
        lease_duration_seconds: Some(duration_secs),
        acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
        renew_time: Some(now),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

fn lease_object(cfg: &LeaderConfig, resource_version: Option<String>, spec: LeaseSpec) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(cfg.lease_name.clone()),
            namespace: Some(cfg.namespace.clone()),
            resource_version,
            ..ObjectMeta::default()
        },
        spec: Some(spec),
    }
}

fn duration_secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

/// Runs the election until `shutdown`, publishing the end of the current term on the returned
/// [`Leadership`]; releases the Lease on the way out if held.
pub fn spawn(
    api: Api<Lease>,
    cfg: LeaderConfig,
    shutdown: CancellationToken,
) -> (Leadership, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let handle = tokio::spawn(elect(api, cfg, tx, shutdown));
    (
        Leadership {
            until: rx,
            _constant: None,
        },
        handle,
    )
}

// updates the deadline; wakes the controller only when leadership flips, not on every renewal.
// A term that lapsed during a slow renewal counts as lost: the controller stopped writing then
// and must hear that the renewal brought it back.
fn set_term(tx: &watch::Sender<Option<Instant>>, term: Option<Instant>) {
    let now = Instant::now();
    let leading = |t: Option<Instant>| t.is_some_and(|t| now < t);
    tx.send_if_modified(|v| {
        let flipped = leading(*v) != leading(term) || v.is_some() != term.is_some();
        *v = term;
        flipped
    });
}

async fn elect(
    api: Api<Lease>,
    cfg: LeaderConfig,
    tx: watch::Sender<Option<Instant>>,
    shutdown: CancellationToken,
) {
    let apply = PatchParams::apply(OPERATOR_FIELD_MANAGER).force();
    let mut seen: Option<(Fingerprint, Instant)> = None;
    let mut held: Option<Lease> = None;
    loop {
        let started = Instant::now();
        match within(cfg.renew_deadline, api.get_opt(&cfg.lease_name)).await {
            Err(e) => tracing::warn!(error = %e, "reading leader lease failed"),
            Ok(lease) => {
                let fp = fingerprint(lease.as_ref());
                let since = match &seen {
                    Some((old, at)) if *old == fp => *at,
                    _ => started,
                };
                seen = Some((fp, since));
                let spec = lease.as_ref().and_then(|l| l.spec.as_ref());
                let decision = decide(
                    spec,
                    &cfg.identity,
                    started.duration_since(since),
                    cfg.lease_duration,
                );
                let result = match (&decision, &lease) {
                    (Decision::Follow { holder }, _) => {
                        tracing::debug!(%holder, "following");
                        Ok(None)
                    }
                    (_, None) => {
                        let spec =
                            record(None, 0, &cfg.identity, duration_secs(cfg.lease_duration));
                        let body = lease_object(&cfg, None, spec);
                        within(cfg.renew_deadline, api.create(&PostParams::default(), &body))
                            .await
                            .map(Some)
                    }
                    (d, Some(existing)) => {
                        let (acquire, transitions) = match d {
                            Decision::Acquire { transitions } => (None, *transitions),
                            _ => (
                                spec.and_then(|s| s.acquire_time.clone()),
                                spec.and_then(|s| s.lease_transitions).unwrap_or(0),
                            ),
                        };
                        let spec = record(
                            acquire,
                            transitions,
                            &cfg.identity,
                            duration_secs(cfg.lease_duration),
                        );
                        let body =
                            lease_object(&cfg, existing.metadata.resource_version.clone(), spec);
                        within(cfg.renew_deadline, api.patch(&cfg.lease_name, &apply, &Patch::Apply(&body)))
                            .await
                            .map(Some)
                    }
                };
                match result {
                    Ok(Some(l)) => {
                        if matches!(decision, Decision::Acquire { .. }) {
                            tracing::info!(identity = %cfg.identity, "acquired leader lease");
                        }
                        held = Some(l);
                        set_term(&tx, Some(started + cfg.renew_deadline));
                    }
                    Ok(None) => {
                        held = None;
                        set_term(&tx, None);
                    }
                    // a 409 means another replica won the race; anything else ends our term at the deadline
                    Err(e) => tracing::info!(error = %e, "leader lease not renewed"),
                }
            }
        }
        if matches!(*tx.borrow(), Some(t) if Instant::now() >= t) {
            tracing::warn!("leader term expired without renewal; stopping writes");
            held = None;
            set_term(&tx, None);
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(cfg.retry_period) => {}
        }
    }
    set_term(&tx, None);
    if let Some(lease) = held {
        // hand over at once instead of making the next leader wait out the duration
        let spec = record(
            None,
            lease
                .spec
                .as_ref()
                .and_then(|s| s.lease_transitions)
                .unwrap_or(0),
            "",
            1,
        );
        let body = lease_object(&cfg, lease.metadata.resource_version.clone(), spec);
        match within(cfg.renew_deadline, api.patch(&cfg.lease_name, &apply, &Patch::Apply(&body))).await {
            Ok(_) => tracing::info!("released leader lease"),
            Err(e) => tracing::warn!(error = %e, "releasing leader lease failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(duration),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn free_or_released_lease_is_acquired() {
        assert_eq!(
            decide(None, "a", Duration::ZERO, D),
            Decision::Acquire { transitions: 1 }
        );
        assert_eq!(
            decide(Some(&spec("", 15)), "a", Duration::ZERO, D),
            Decision::Acquire { transitions: 4 }
        );
    }

    #[test]
    fn own_lease_is_renewed() {
        assert_eq!(
            decide(Some(&spec("a", 15)), "a", Duration::from_secs(100), D),
            Decision::Renew
        );
    }

    #[test]
    fn live_foreign_lease_is_followed_until_it_stops_changing_for_its_duration() {
        let s = spec("b", 15);
        assert_eq!(
            decide(Some(&s), "a", Duration::from_secs(15), D),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(
            decide(Some(&s), "a", Duration::from_secs(16), D),
            Decision::Acquire { transitions: 4 }
        );
    }

    #[test]
    fn a_renewal_after_the_term_lapsed_wakes_the_controller_a_plain_renewal_does_not() {
        let now = Instant::now();
        let (tx, mut rx) = watch::channel(Some(now + D));
        set_term(&tx, Some(now + 2 * D));
        assert!(!rx.has_changed().unwrap_or(true), "a renewal within the term is no news");
        tx.send_replace(Some(now - Duration::from_secs(1)));
        rx.mark_unchanged();
        set_term(&tx, Some(now + D));
        assert!(rx.has_changed().unwrap_or(false), "leading again after a lapsed term must wake the controller");
        rx.mark_unchanged();
        set_term(&tx, None);
        assert!(rx.has_changed().unwrap_or(false), "losing the lease wakes it too");
        // the term lapsed first (no renewal in time), then it is given up: still news
        tx.send_replace(Some(now - Duration::from_secs(1)));
        rx.mark_unchanged();
        set_term(&tx, None);
        assert!(rx.has_changed().unwrap_or(false), "ending a lapsed term wakes it");
    }

    #[test]
    fn renew_deadline_ends_before_anyone_may_take_over() {
        let cfg = LeaderConfig::new("l", "ns", "a");
        assert!(cfg.renew_deadline + cfg.retry_period < cfg.lease_duration);
    }
}
