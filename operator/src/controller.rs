//! The watch loop: two reflectors (Nodes, WireGuardPeers) fill local caches from watches, any
//! relevant change wakes the reconciler, and the reconciler recomputes the whole mesh from the
//! caches. Validation is global (duplicate keys, overlaps), so one recompute over all objects
//! replaces per-object queues; wake-ups that arrive during a reconcile coalesce into one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wgmesh_api::WireGuardPeer;

use crate::execute::ExecuteError;
use crate::leader::Leadership;
use crate::reconcile::{reconcile_once, Context};
use crate::trim;

/// Upper bound between recomputes from the cache (not the API), a safety net against a missed
/// wake-up; it writes nothing when nothing changed.
const RESYNC: Duration = Duration::from_secs(300);

/// Retry delays after a failed reconcile.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Runs until `shutdown`: watches, caches, reconciles while leader. `ready` turns true once
/// both caches hold a full list.
pub async fn run(
    client: Client,
    mut ctx: Context,
    mut leadership: Leadership,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let wake = Arc::new(Notify::new());
    let (nodes, node_writer) = reflector::store::<Node>();
    let (peers, peer_writer) = reflector::store::<WireGuardPeer>();

    let node_events = watcher(Api::<Node>::all(client.clone()))
        .modify(trim::node)
        .reflect(node_writer);
    let peer_events = watcher(Api::<WireGuardPeer>::all(client))
        .modify(trim::peer)
        .reflect(peer_writer);

    let node_task = tokio::spawn(drive_nodes(node_events, wake.clone()));
    let peer_task = tokio::spawn(drive_peers(peer_events, wake.clone()));

    let synced = tokio::select! {
        () = shutdown.cancelled() => Ok(false),
        r = async {
            nodes.wait_until_ready().await?;
            peers.wait_until_ready().await?;
            anyhow::Ok(true)
        } => r,
    };
    let result = match synced {
        Ok(true) => {
            ready.store(true, Ordering::Release);
            tracing::info!(nodes = nodes.len(), peers = peers.len(), "caches synced");
            // returns at the next loop turn after shutdown, so a running reconcile is not torn
            // in half; writes still stop at once because the lease term ends with the elector
            reconcile_loop(&mut ctx, &nodes, &peers, &wake, &mut leadership, &shutdown).await;
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(e) => Err(e),
    };
    ready.store(false, Ordering::Release);
    node_task.abort();
    peer_task.abort();
    result
}

fn watcher<K>(api: Api<K>) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    watcher::watcher(api, watcher::Config::default()).default_backoff()
}

async fn drive_nodes(
    events: impl Stream<Item = Result<Event<Node>, watcher::Error>>,
    wake: Arc<Notify>,
) {
    let mut seen = NodePrints::default();
    let mut events = std::pin::pin!(events);
    while let Some(ev) = events.next().await {
        match ev {
            Ok(ev) => {
                if seen.wakes(&ev) {
                    wake.notify_one();
                }
            }
            Err(e) => tracing::warn!(error = %e, "node watch error; retrying with backoff"),
        }
    }
}

/// The fingerprint of every Node the watch reported, so a Node update that changes nothing
/// the mesh reads (status heartbeats, every 10 s per node) does not wake the reconciler.
#[derive(Default)]
struct NodePrints {
    seen: HashMap<String, u64>,
    /// Filled during a relist and then replacing `seen`: a Node deleted while the watch was
    /// down gets no Delete event, and its entry would stay forever.
    relist: Option<HashMap<String, u64>>,
}

impl NodePrints {
    /// Records `ev`; true when the reconciler must run.
    fn wakes(&mut self, ev: &Event<Node>) -> bool {
        match ev {
            Event::Init => {
                self.relist = Some(HashMap::new());
                false
            }
            Event::InitApply(n) => {
                let fp = trim::node_fingerprint(n);
                self.relist.get_or_insert_default().insert(n.name_any(), fp);
                self.seen.get(&n.name_any()) != Some(&fp)
            }
            Event::InitDone => {
                self.seen = self.relist.take().unwrap_or_default();
                true
            }
            Event::Apply(n) => {
                let fp = trim::node_fingerprint(n);
                self.seen.insert(n.name_any(), fp) != Some(fp)
            }
            Event::Delete(n) => {
                self.seen.remove(&n.name_any());
                true
            }
        }
    }
}

async fn drive_peers(
    events: impl Stream<Item = Result<Event<WireGuardPeer>, watcher::Error>>,
    wake: Arc<Notify>,
) {
    let mut events = std::pin::pin!(events);
    while let Some(ev) = events.next().await {
        match ev {
            Ok(Event::Init) => {}
            // every peer change matters: spec (validation) and status (handshakes, our writes)
            Ok(_) => wake.notify_one(),
            Err(e) => tracing::warn!(error = %e, "peer watch error; retrying with backoff"),
        }
    }
}

async fn reconcile_loop(
    ctx: &mut Context,
    nodes: &Store<Node>,
    peers: &Store<WireGuardPeer>,
    wake: &Notify,
    leadership: &mut Leadership,
    shutdown: &CancellationToken,
) {
    let mut next = Instant::now();
    let mut backoff = BACKOFF_MIN;
    let mut was_leader = false;
    // after a failed turn, changes (often the echoes of that turn's own writes) do not cut
    // the backoff short: a write that keeps failing is retried at most once per backoff
    let mut backing_off = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified(), if !backing_off => {}
            () = tokio::time::sleep_until(next) => {}
            () = leadership.changed() => {}
        }
        let leading = leadership.is_leader();
        if leading != was_leader {
            tracing::info!(leading, "leadership changed");
            ctx.metrics.set_leader(leading);
            was_leader = leading;
        }
        if !leading {
            // followers keep their caches warm and wake up on the term deadline or a change
            next = Instant::now() + RESYNC;
            continue;
        }
        let guard = leadership.clone();
        let still_leader = move || guard.is_leader();
        let result = reconcile_once(
            ctx,
            &nodes.state(),
            &peers.state(),
            Timestamp::now(),
            &still_leader,
        )
        .await;
        match result {
            Ok(requeue) => {
                backoff = BACKOFF_MIN;
                backing_off = false;
                next = Instant::now() + requeue.map_or(RESYNC, |r| r.min(RESYNC));
            }
            Err(ExecuteError::NotLeader { done }) => {
                backing_off = false;
                tracing::warn!(done, "stopped writing: leadership lost");
                next = Instant::now() + RESYNC;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "reconcile failed");
                next = Instant::now() + backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                backing_off = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wgmesh_api::fixtures::{key, node};

    #[test]
    fn a_relist_forgets_nodes_deleted_while_the_watch_was_down() {
        let (a, b) = (node("a", Some(&key(1)), "192.168.0.1", &["10.244.0.0/24"]), node("b", Some(&key(2)), "192.168.0.2", &["10.244.1.0/24"]));
        let mut p = NodePrints::default();
        for ev in [Event::Init, Event::InitApply(a.clone()), Event::InitApply(b.clone()), Event::InitDone] {
            p.wakes(&ev);
        }
        assert_eq!(p.seen.len(), 2);
        assert!(!p.wakes(&Event::Apply(a.clone())), "an unchanged Node does not wake");
        // b was deleted while disconnected: the relist lists only a, and nothing of b is kept.
        assert!(!p.wakes(&Event::Init));
        assert!(!p.wakes(&Event::InitApply(a.clone())), "a is unchanged");
        assert!(p.wakes(&Event::InitDone), "the relist may have dropped a Node");
        assert_eq!(p.seen.keys().collect::<Vec<_>>(), ["a"]);
        assert!(p.wakes(&Event::Apply(b)), "b is new again");
    }
}
