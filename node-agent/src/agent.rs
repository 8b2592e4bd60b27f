//! The control loop: read the desired state, then make the engine, the interface, the routes
//! and the readiness file match it, every tick. Decisions are made by the pure functions in
//! `mesh_input`, `plan` and `routes`; this module only observes, calls them and applies.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use wgmesh_api::constants::MTU_OVERHEAD;
use wgmesh_api::{IpCidr, MeshConfig, PublicKey};

use crate::config::{AgentConfig, Source};
use crate::engine::{Engine, EngineError};
use crate::guard::{Guard, GuardError};
use crate::http::Health;
use crate::key::{self, KeyError, PrivateKey};
use crate::mesh_input::{desired_peers, local_facts, mesh_input, MeshInput};
use crate::metrics::Metrics;
use crate::netlink::{Link, Netlink};
use crate::plan::{plan, DesiredDevice};
use crate::readiness::Readiness;
use crate::resolve::{engine_peers, system_lookup, EnginePeer};
use crate::routes::{
    desired_routes, desired_rules, diff_routes, diff_rules, RouteKind, RoutingInputs,
};
use crate::source_file::{FileSource, SourceError};
use crate::source_kube::{KubeError, KubeSource};
use crate::uapi_client::{DeviceState, UapiError};

/// DNS endpoints are looked up again this often.
const RESOLVE_EVERY: Duration = Duration::from_secs(60);
/// The underlay MTU is re-read this often.
const UNDERLAY_EVERY: Duration = Duration::from_secs(5);
/// A peer without a session is nudged into a handshake at most this often.
const KICK_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Uapi(#[from] UapiError),
    #[error("netlink: {what}: {source}")]
    Netlink {
        what: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("underlay guard: {0}")]
    Guard(#[from] GuardError),
    #[error("not ready: {0}")]
    NotReady(String),
}

fn nl_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Netlink { what, source }
}

/// The local node as the routes need it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct LocalNode {
    pod_cidrs: Vec<IpCidr>,
    tunnel_addresses: Vec<IpAddr>,
    public_key: Option<PublicKey>,
}

/// Where the desired state comes from.
enum DesiredSource {
    File(FileSource),
    Kube(KubeSource),
}

impl DesiredSource {
    fn poll(&mut self) -> Result<Option<MeshInput>, AgentError> {
        match self {
            DesiredSource::File(f) => Ok(f.poll()?.map(|docs| mesh_input(&docs))),
            DesiredSource::Kube(k) => Ok(k.poll()),
        }
    }

    fn publish_key(&self, key: PublicKey) {
        if let DesiredSource::Kube(k) = self {
            k.set_public_key(key);
        }
    }

    fn set_ready(&self, ready: bool) {
        if let DesiredSource::Kube(k) = self {
            k.set_ready(ready);
        }
    }

    /// Handshakes for `status.latestHandshake`; the reporter decides which are worth a write.
    fn report(&self, handshakes: Vec<(String, SystemTime)>) {
        if let DesiredSource::Kube(k) = self {
            if !handshakes.is_empty() {
                k.report(handshakes);
            }
        }
    }
}

/// The nodes' prefixes no cluster CIDR contains (the guard's drops cover only those).
pub fn outside_cluster<'a>(
    cluster: &[IpCidr],
    nodes: impl IntoIterator<Item = (&'a str, &'a [IpCidr])>,
) -> Vec<(&'a str, IpCidr)> {
    let inside = |c: &IpCidr| cluster.iter().any(|k| k.covers(c));
    nodes.into_iter().flat_map(|(n, cs)| cs.iter().filter(|c| !inside(c)).map(move |c| (n, *c))).collect()
}

/// (peer name, latest handshake) of every desired peer the engine has shaken hands with.
pub fn handshakes(peers: &[EnginePeer], observed: &DeviceState) -> Vec<(String, SystemTime)> {
    peers
        .iter()
        .filter_map(|p| Some((p.name.clone(), observed.peers.get(&p.public_key)?.last_handshake?)))
        .collect()
}

pub struct Agent {
    cfg: AgentConfig,
    key: PrivateKey,
    public_key: PublicKey,
    key_stamp: Option<key::FileStamp>,
    /// Peer name → key last applied, so a peer's key rotation becomes a rename.
    applied_names: BTreeMap<String, PublicKey>,
    engine: Engine,
    nl: Netlink,
    guard: Guard,
    /// The guard table was removed once because the configuration turns it off.
    guard_off_done: bool,
    source: DesiredSource,
    input: Option<MeshInput>,
    peers: Vec<EnginePeer>,
    /// Every prefix of a desired peer, configured or left out: the guard keeps pods' packets
    /// to those outside the pod network off the underlay.
    desired_prefixes: Vec<IpCidr>,
    /// The other nodes' pod CIDRs: the guard keeps those outside the cluster CIDRs off the
    /// underlay for local pods both ways.
    node_prefixes: Vec<IpCidr>,
    local: LocalNode,
    applied_endpoints: BTreeMap<PublicKey, SocketAddr>,
    kicked: BTreeMap<PublicKey, Instant>,
    readiness: Readiness,
    resolved_at: Option<Instant>,
    underlay: Option<(Instant, Option<u32>)>,
    last_warnings: Vec<String>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl Agent {
    /// Loads (or creates) the key, publishes the public key and opens netlink.
    pub fn new(cfg: AgentConfig) -> Result<Self, AgentError> {
        let (key, created) = key::load_or_create(&cfg.private_key_path)?;
        let public_key = key.public_key();
        tracing::info!(
            path = %cfg.private_key_path.display(),
            created,
            public_key = %public_key,
            "node key loaded"
        );
        write_public_key_file(&cfg, public_key)?;
        let nl = Netlink::new().map_err(nl_err("open socket"))?;
        let source = match &cfg.source {
            Source::File { dir } => DesiredSource::File(FileSource::new(dir.clone())),
            Source::Kubernetes => {
                DesiredSource::Kube(KubeSource::start(&cfg.node_name, public_key)?)
            }
        };
        let metrics = Arc::new(Metrics::default());
        let health = Arc::new(Health::default());
        if let Some(addr) = cfg.http_addr {
            // health and metrics are for observers; the node works without them
            let stale = (cfg.interval * 20).max(Duration::from_secs(10));
            match crate::http::serve(addr, health.clone(), metrics.clone(), stale) {
                Ok(bound) => tracing::info!(%bound, "serving /healthz /readyz /metrics"),
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "cannot serve /healthz /readyz /metrics")
                }
            }
        }
        Ok(Agent {
            engine: Engine::new(&cfg.interface, &cfg.engine_binary, cfg.engine_mode),
            readiness: Readiness::new(&cfg.readiness_path),
            key_stamp: key::FileStamp::of(&cfg.private_key_path),
            applied_names: BTreeMap::new(),
            cfg,
            key,
            public_key,
            nl,
            guard: Guard::new("nft".into()),
            guard_off_done: false,
            source,
            input: None,
            peers: Vec::new(),
            desired_prefixes: Vec::new(),
            node_prefixes: Vec::new(),
            local: LocalNode::default(),
            applied_endpoints: BTreeMap::new(),
            kicked: BTreeMap::new(),
            resolved_at: None,
            underlay: None,
            last_warnings: Vec::new(),
            metrics,
            health,
        })
    }

    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    /// Runs until `stop` is set. On the way out only the readiness file goes: the engine,
    /// its configuration and the routes stay, so traffic continues while no agent runs.
    pub fn run(&mut self, stop: &AtomicBool) {
        let mut last_error: Option<String> = None;
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let result = self.tick();
            let ready = result.is_ok();
            match &result {
                Ok(()) if last_error.is_some() => {
                    tracing::info!("recovered: engine, interface and routes in place")
                }
                Err(e) => {
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(msg.as_str()) {
                        tracing::warn!(error = %msg, "reconcile failed; will retry");
                    }
                }
                _ => {}
            }
            last_error = result.err().map(|e| e.to_string());
            if !ready {
                self.metrics.reconcile_errors.inc();
            }
            self.metrics.ready.set(i64::from(ready));
            self.source.set_ready(ready);
            self.health.tick(ready);
            match self.readiness.set(ready) {
                Ok(true) => {
                    tracing::info!(ready, path = %self.readiness.path().display(), "readiness changed")
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot update the readiness file"),
            }
            let left = self.cfg.interval.saturating_sub(started.elapsed());
            sleep_unless(stop, left);
        }
        if let Err(e) = self.readiness.set(false) {
            tracing::warn!(error = %e, "cannot remove the readiness file");
        }
        tracing::info!("stopped; engine, peers and routes left in place");
    }

    /// One reconcile pass.
    pub fn tick(&mut self) -> Result<(), AgentError> {
        if let Err(e) = self.reload_key() {
            // the old key keeps working; everything else still gets reconciled
            tracing::warn!(error = %e, "cannot load the rotated private key; keeping the current one");
        }
        let source_result = self.refresh_desired();
        if self.input.is_none() {
            // never reconcile peers against an unread source: that would remove them all
            self.ensure_drops_only()?;
            source_result?;
            return Err(AgentError::NotReady("desired state not read yet".into()));
        }

        let started = self.engine.ensure();
        if let Ok(true) = started {
            tracing::info!(interface = %self.cfg.interface, binary = %self.cfg.engine_binary.display(), "started engine");
            self.metrics.engine_starts.inc();
            self.applied_endpoints.clear();
        }
        let link = self
            .nl
            .link(&self.cfg.interface)
            .map_err(nl_err("list links"))?;
        let link_result = match &link {
            Some(l) => self.sync_link(l),
            None => Ok(()),
        };
        // Routes and the rule before the engine's UAPI calls, so a hung engine (10 s per
        // call) never delays their repair; a route with no peer in the engine yet only drops.
        let routes_result = self.sync_routes(link.as_ref().map(|l| l.index), true);
        let guard_result = self.sync_guard();
        let engine_result = match (&started, &link) {
            (Ok(_), Some(_)) => self.sync_engine(),
            _ => Ok(()),
        };

        routes_result?;
        guard_result?;
        started?;
        source_result?;
        link_result?;
        engine_result?;
        if link.is_none() {
            return Err(AgentError::NotReady(format!(
                "interface {} does not exist",
                self.cfg.interface
            )));
        }
        if self.cfg.fail_closed
            && !self.cfg.cluster_cidrs.is_empty()
            && self.local.pod_cidrs.is_empty()
        {
            return Err(AgentError::NotReady(format!(
                "pod CIDRs of node {} unknown (no node peer for it and no --pod-cidr): host-to-local-pod traffic would hit the drops",
                self.cfg.node_name
            )));
        }
        Ok(())
    }

    /// Picks up a key rotated on disk (`wgmesh-node-agent rotate-key`): the engine moves to
    /// it on this tick, keeping live sessions, and the new public key is published.
    fn reload_key(&mut self) -> Result<(), AgentError> {
        let path = &self.cfg.private_key_path;
        let stamp = key::FileStamp::of(path);
        if stamp == self.key_stamp {
            return Ok(());
        }
        if stamp.is_none() {
            // deleted under us: keep the identity rather than mint a new one on restart
            tracing::warn!(path = %path.display(), "private key file vanished; writing it back");
            key::store(path, &self.key)?;
            self.key_stamp = key::FileStamp::of(path);
            return Ok(());
        }
        let k = match key::load(path) {
            // said once per version of the file: the next tick finds the same stamp
            Err(e @ key::KeyError::Malformed(_)) => {
                self.key_stamp = stamp;
                return Err(e.into());
            }
            r => r?,
        };
        if k != self.key {
            let public_key = k.public_key();
            tracing::info!(old = %self.public_key, new = %public_key, "node key rotated; moving the engine to it");
            // published first: the engine follows on this tick, the peers must learn it too
            self.source.publish_key(public_key);
            self.key = k;
            self.public_key = public_key;
            self.resolved_at = None;
        }
        write_public_key_file(&self.cfg, self.public_key)?;
        // only now: a failed step above is retried on the next tick
        self.key_stamp = stamp;
        Ok(())
    }

    fn refresh_desired(&mut self) -> Result<(), AgentError> {
        let changed = match self.source.poll()? {
            Some(input) => {
                self.input = Some(input);
                true
            }
            None => false,
        };
        let stale = self
            .resolved_at
            .is_none_or(|t| t.elapsed() >= RESOLVE_EVERY);
        let Some(input) = self.input.as_ref().filter(|_| changed || stale) else {
            return Ok(());
        };
        let mesh_cfg = MeshConfig {
            cluster_cidrs: self.cfg.cluster_cidrs.clone(),
        };
        let desired = desired_peers(input, &mesh_cfg, &self.cfg.node_name);
        let (peers, mut warnings) =
            engine_peers(&desired, system_lookup, |r| input.preshared_keys.lookup(r));
        let facts = local_facts(input, &self.cfg.node_name);
        let mut local = LocalNode {
            pod_cidrs: facts
                .as_ref()
                .map(|f| f.pod_cidrs.clone())
                .unwrap_or_default(),
            tunnel_addresses: facts
                .as_ref()
                .map(|f| f.tunnel_addresses.clone())
                .unwrap_or_default(),
            public_key: facts.as_ref().and_then(|f| f.public_key),
        };
        if !self.cfg.pod_cidrs.is_empty() {
            local.pod_cidrs = self.cfg.pod_cidrs.clone();
            local.tunnel_addresses = local.pod_cidrs.iter().filter_map(|c| c.nth(1)).collect();
        }
        if !self.cfg.tunnel_addresses.is_empty() {
            local.tunnel_addresses = self.cfg.tunnel_addresses.clone();
        }
        if self.cfg.fail_closed && !self.cfg.cluster_cidrs.is_empty() {
            let nodes = desired.iter().filter_map(|d| Some((d.node_name.as_deref()?, d.allowed_ips.as_slice())));
            for (node, c) in outside_cluster(&self.cfg.cluster_cidrs, nodes.chain([(self.cfg.node_name.as_str(), local.pod_cidrs.as_slice())])) {
                warnings.push(format!(
                    "{c} of node {node} lies outside --cluster-cidr: it gets no unreachable route{}; add it to the cluster CIDRs",
                    if self.cfg.nft_guard {
                        ", and the underlay guard covers only packets from pods to it and from it to this node's pods"
                    } else {
                        " and, with --no-nft-guard, no drop either: a flushed policy rule could send its pods' packets in plaintext"
                    }
                ));
            }
        }
        if let Some(k) = local.public_key.filter(|k| *k != self.public_key) {
            warnings.push(format!(
                "the node peer of {} carries public key {k}, but this node's key is {}: other nodes cannot reach it until that is fixed",
                self.cfg.node_name, self.public_key
            ));
        }
        if warnings != self.last_warnings {
            for w in &warnings {
                tracing::warn!("{w}");
            }
            self.last_warnings = warnings;
        }
        if peers != self.peers || local != self.local {
            let names: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
            tracing::info!(peers = ?names, pod_cidrs = ?local.pod_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(), "desired state changed");
        }
        self.peers = peers;
        self.desired_prefixes = desired.iter().flat_map(|d| d.allowed_ips.iter().copied()).collect();
        // every other Node's, taking part or not: a node that left the mesh may still run pods
        let others = input.nodes.iter().filter(|n| n.metadata.name.as_deref() != Some(self.cfg.node_name.as_str()));
        self.node_prefixes = others.flat_map(|n| wgmesh_api::node::node_facts(n).pod_cidrs).collect();
        self.local = local;
        self.resolved_at = Some(Instant::now());
        Ok(())
    }

    fn desired_mtu(&mut self, own: &Link) -> Result<u32, AgentError> {
        if let Some(m) = self.cfg.mtu {
            return Ok(m);
        }
        let fresh = self.underlay.filter(|(t, _)| t.elapsed() < UNDERLAY_EVERY);
        let underlay = match fresh {
            Some((_, m)) => m,
            None => {
                let m = match &self.cfg.underlay_interface {
                    Some(name) => self
                        .nl
                        .link_mtu(name)
                        .map_err(nl_err("read underlay MTU"))?,
                    None => self
                        .nl
                        .underlay_mtu(Some(own.index))
                        .map_err(nl_err("read underlay MTU"))?,
                };
                self.underlay = Some((Instant::now(), m));
                m
            }
        };
        match underlay {
            Some(m) if m > MTU_OVERHEAD + 576 => Ok(m - MTU_OVERHEAD),
            Some(m) => Err(AgentError::NotReady(format!("underlay MTU {m} is too small for a tunnel"))),
            None => Err(AgentError::NotReady(
                "cannot tell the underlay MTU (no default route); pass --mtu or --underlay-interface".into(),
            )),
        }
    }

    fn sync_link(&mut self, l: &Link) -> Result<(), AgentError> {
        let mtu = self.desired_mtu(l);
        let want_mtu = mtu.as_ref().ok().copied().filter(|m| *m != l.mtu);
        if want_mtu.is_some() || !l.up {
            tracing::info!(interface = %l.name, mtu = ?want_mtu, "setting link up / MTU");
            self.nl
                .set_link(l.index, want_mtu, true)
                .map_err(nl_err(format!("set {} up", l.name)))?;
        }
        let have = self
            .nl
            .addresses(l.index)
            .map_err(nl_err("list addresses"))?;
        let want: Vec<(IpAddr, u8)> = self
            .local
            .tunnel_addresses
            .iter()
            .map(|ip| (*ip, if ip.is_ipv4() { 32 } else { 128 }))
            .collect();
        for (ip, len) in &have {
            let link_local = matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
            // none wanted means not known yet (no pod CIDR): keep what a known one put there
            if !link_local && !want.is_empty() && !want.contains(&(*ip, *len)) {
                tracing::info!(address = %ip, prefix = len, "removing address");
                self.nl
                    .delete_address(l.index, *ip, *len)
                    .map_err(nl_err("delete address"))?;
            }
        }
        for (ip, len) in &want {
            if !have.contains(&(*ip, *len)) {
                tracing::info!(address = %ip, prefix = len, "adding tunnel address");
                self.nl
                    .add_address(l.index, *ip, *len)
                    .map_err(nl_err("add address"))?;
            }
        }
        mtu.map(drop)
    }

    fn sync_engine(&mut self) -> Result<(), AgentError> {
        let client = self.engine.client().clone();
        let observed = client.get()?;
        self.metrics
            .observe(&self.cfg.node_name, &self.public_key, &observed);
        self.source.report(handshakes(&self.peers, &observed));
        let desired = DesiredDevice {
            public_key: self.public_key,
            listen_port: self.cfg.listen_port,
            fwmark: self.cfg.fwmark,
            peers: crate::resolve::with_engine_psks(&self.peers, &observed),
        };
        let now = Instant::now();
        let may_kick: BTreeSet<PublicKey> = self
            .peers
            .iter()
            .map(|p| p.public_key)
            .filter(|k| {
                self.kicked
                    .get(k)
                    .is_none_or(|t| now.duration_since(*t) >= KICK_EVERY)
            })
            .collect();
        let plan_with = |names: &BTreeMap<String, PublicKey>| {
            plan(
                &observed,
                &desired,
                &self.applied_endpoints,
                &may_kick,
                names,
            )
        };
        let mut p = plan_with(&self.applied_names);
        let names = self
            .peers
            .iter()
            .map(|p| (p.name.clone(), p.public_key))
            .collect();
        if p.is_empty() {
            self.applied_names = names;
            return Ok(());
        }
        let changes = !(p.update.is_empty()
            && p.remove.is_empty()
            && !p.set_private_key
            && p.listen_port.is_none()
            && p.fwmark.is_none());
        if changes {
            tracing::info!(
                private_key = p.set_private_key,
                listen_port = ?p.listen_port,
                fwmark = ?p.fwmark,
                added = p.update.iter().filter(|u| u.create).count(),
                updated = p.update.iter().filter(|u| !u.create).count(),
                removed = p.remove.len(),
                renamed = p.update.iter().filter(|u| u.rename_from.is_some()).count(),
                "configuring engine"
            );
        }
        match client.set(&p.render(&self.key)) {
            // not a wgmesh engine (say wireguard-go): no rotation extensions, plain replace
            Err(UapiError::Errno(-22)) if p.uses_extensions() => {
                tracing::warn!("the engine refused the key-rotation extensions; replacing peers instead (one handshake each)");
                p = plan_with(&BTreeMap::new());
                p.keep_sessions = false;
                client.set(&p.render(&self.key))?;
            }
            r => r?,
        }
        self.applied_names = names;
        for u in &p.update {
            if let (Some(old), Some(new)) = (u.rename_from, u.public_key) {
                if let Some(ep) = self.applied_endpoints.remove(&old) {
                    self.applied_endpoints.insert(new, ep);
                }
                self.kicked.remove(&old);
            }
            if let (Some(k), Some(ep)) = (u.public_key, u.endpoint) {
                self.applied_endpoints.insert(k, ep);
            }
        }
        for k in &p.remove {
            self.applied_endpoints.remove(k);
            self.kicked.remove(k);
        }
        for k in &p.kick {
            self.kicked.insert(*k, now);
        }
        Ok(())
    }

    fn routing_inputs(&self, link: Option<u32>, local_pod_cidrs: Vec<IpCidr>) -> RoutingInputs {
        RoutingInputs {
            table: self.cfg.table,
            link,
            tunnel_addresses: self.local.tunnel_addresses.clone(),
            peer_prefixes: self
                .peers
                .iter()
                .flat_map(|p| p.allowed_ips.iter().copied())
                .collect(),
            cluster_cidrs: self.cfg.cluster_cidrs.clone(),
            local_pod_cidrs,
            fail_closed: self.cfg.fail_closed,
        }
    }

    /// The local pod CIDRs, the `throw`s in the drops. While they are unknown: the prefixes
    /// strictly inside a cluster CIDR that `main` reaches on a bridge or veth of this host that
    /// is neither the underlay nor ours (the pod bridge, a pod's veth), so the host still
    /// reaches its pods; an overlay that puts the whole cluster network on one link (as Weave
    /// does) is not strictly inside, so stays dropped. A failed read exempts nothing (the drops
    /// never wait for it).
    fn local_or_attached(&mut self) -> Vec<IpCidr> {
        if !self.local.pod_cidrs.is_empty() {
            return self.local.pod_cidrs.clone();
        }
        let exclude: Vec<&str> = [Some(self.cfg.interface.as_str()), self.cfg.underlay_interface.as_deref()].into_iter().flatten().collect();
        match self.nl.attached_prefixes(&exclude) {
            Ok(attached) => attached
                .into_iter()
                .filter_map(|(ip, len)| IpCidr::new(ip, len).ok())
                .filter(|a| self.cfg.cluster_cidrs.iter().any(|c| c.prefix() < a.prefix() && c.contains(a.addr())))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the host's own links; every pod address stays dropped");
                Vec::new()
            }
        }
    }

    fn sync_routes(&mut self, link: Option<u32>, allow_delete: bool) -> Result<(), AgentError> {
        let local = self.local_or_attached();
        let want = desired_routes(&self.routing_inputs(link, local));
        let have = self
            .nl
            .routes(self.cfg.table)
            .map_err(nl_err("list routes"))?;
        let diff = diff_routes(&have, &want);
        // drops go in before the routes that punch holes in them, and before the rule
        let mut replace = diff.replace.clone();
        replace.sort_by_key(|r| !matches!(r.kind, RouteKind::Unreachable));
        // Each route on its own: one that keeps failing (say IPv6 off on the link) must not
        // hold back the others or the rule's repair. The first error is reported.
        let mut first_error = None;
        for r in &replace {
            tracing::info!(dst = %r.dst, kind = ?r.kind, table = r.table, "route");
            if let Err(e) = self.nl.replace_route(r) {
                first_error.get_or_insert(nl_err(format!("add route {}", r.dst))(e));
            }
        }
        if allow_delete {
            for r in &diff.delete {
                tracing::info!(dst = %r.dst, kind = ?r.kind, table = r.table, "removing route");
                if let Err(e) = self.nl.delete_route(r) {
                    first_error.get_or_insert(nl_err(format!("delete route {}", r.dst))(e));
                }
            }
        }
        let rules = self.sync_rules(&want, allow_delete);
        first_error.map_or(rules, Err)
    }

    /// The underlay guard (`guard.rs`) for the current local pod CIDRs. While they are unknown
    /// (the node is not ready then) a table left by an earlier run stays as it is: written
    /// without them it would cut host-to-local-pod traffic.
    fn sync_guard(&mut self) -> Result<(), AgentError> {
        if !(self.cfg.fail_closed && self.cfg.nft_guard) {
            if !self.guard_off_done {
                // once, and never a reason to be unready: hosts without nft are why it is off
                match self.guard.remove() {
                    Ok(true) => tracing::info!(table = crate::guard::TABLE, "underlay guard removed (turned off by --no-nft-guard or --no-fail-closed)"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot remove the underlay guard table"),
                }
                self.guard_off_done = true;
            }
            return Ok(());
        }
        if self.local.pod_cidrs.is_empty() {
            return Ok(());
        }
        let script = crate::guard::ruleset(&self.cfg.interface, &self.cfg.cluster_cidrs, &self.local.pod_cidrs, &self.desired_prefixes, &self.node_prefixes)?;
        let dropped = self.guard.sync(&script)?;
        self.metrics.guard_dropped(dropped);
        Ok(())
    }

    // before the first read of the source: add the drops and the rule, remove nothing
    fn ensure_drops_only(&mut self) -> Result<(), AgentError> {
        let link = self
            .nl
            .link(&self.cfg.interface)
            .map_err(nl_err("list links"))?;
        let keep: Vec<_> = self
            .nl
            .routes(self.cfg.table)
            .map_err(nl_err("list routes"))?;
        let local = self.local_or_attached();
        let want = desired_routes(&self.routing_inputs(link.map(|l| l.index), local));
        // the drops first, then the holes in them
        let mut add: Vec<_> = want.values().filter(|r| matches!(r.kind, RouteKind::Unreachable | RouteKind::Throw)).collect();
        add.sort_by_key(|r| !matches!(r.kind, RouteKind::Unreachable));
        for r in add {
            if !keep.iter().any(|k| k.dst == r.dst) {
                self.nl
                    .replace_route(r)
                    .map_err(nl_err(format!("add route {}", r.dst)))?;
            }
        }
        self.sync_rules(&want, false)
    }

    /// The policy rule that selects our table: added when missing, removed when stale and
    /// `allow_delete` says removing is safe.
    fn sync_rules(
        &mut self,
        want: &BTreeMap<IpCidr, crate::routes::Route>,
        allow_delete: bool,
    ) -> Result<(), AgentError> {
        let rules = desired_rules(
            want,
            self.cfg.rule_priority,
            self.cfg.table,
            self.cfg.fwmark,
        );
        let have_rules = self
            .nl
            .rules(self.cfg.table, self.cfg.rule_priority)
            .map_err(nl_err("list rules"))?;
        let (add, del) = diff_rules(&have_rules, &rules);
        for r in &add {
            tracing::info!(
                priority = r.priority,
                table = r.table,
                ipv6 = r.v6,
                "adding policy rule"
            );
            self.nl.add_rule(r).map_err(nl_err("add rule"))?;
        }
        if allow_delete {
            for r in &del {
                tracing::info!(
                    priority = r.priority,
                    table = r.table,
                    ipv6 = r.v6,
                    "removing policy rule"
                );
                self.nl.delete_rule(r).map_err(nl_err("delete rule"))?;
            }
        }
        Ok(())
    }
}

fn write_public_key_file(cfg: &AgentConfig, key: PublicKey) -> Result<(), AgentError> {
    let Some(p) = &cfg.public_key_file else {
        return Ok(());
    };
    crate::atomic::write(p, format!("{key}\n").as_bytes(), 0o644).map_err(|source| {
        AgentError::File {
            path: p.clone(),
            source,
        }
    })
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uapi_client::PeerState;

    fn peer(name: &str, key: u8) -> EnginePeer {
        EnginePeer {
            name: name.into(),
            public_key: PublicKey::from_bytes([key; 32]),
            endpoint: None,
            allowed_ips: Vec::new(),
            persistent_keepalive: 0,
            preshared_key: None,
            keep_engine_psk: false,
        }
    }

    #[test]
    fn prefixes_outside_the_cluster_cidrs_are_named_with_their_node() {
        let c = |s: &str| s.parse::<IpCidr>().unwrap_or_else(|e| panic!("{e}"));
        let cluster = [c("10.244.0.0/16")];
        let a = [c("10.244.1.0/24"), c("fd00:244:0:1::/64")];
        let b = [c("10.244.2.0/24")];
        let k3s = [c("10.42.0.0/24")];
        let found = outside_cluster(&cluster, [("a", &a[..]), ("b", &b[..]), ("c", &k3s[..])]);
        // a dual-stack node with only the IPv4 range given, and a node from another range
        assert_eq!(found, vec![("a", c("fd00:244:0:1::/64")), ("c", c("10.42.0.0/24"))]);
        // a cluster CIDR narrower than the node's prefix does not cover it
        assert_eq!(outside_cluster(&[c("10.244.1.0/25")], [("a", &a[..1])]), vec![("a", c("10.244.1.0/24"))]);
    }

    #[test]
    fn handshakes_are_reported_by_peer_name_only_for_desired_peers_that_had_one() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let state = |key: u8, hs: Option<SystemTime>| PeerState {
            public_key: PublicKey::from_bytes([key; 32]),
            preshared_key: None,
            endpoint: None,
            last_handshake: hs,
            tx_bytes: 0,
            rx_bytes: 0,
            persistent_keepalive: 0,
            allowed_ips: Vec::new(),
        };
        let mut observed = DeviceState::default();
        for (k, hs) in [(1, Some(at)), (2, None), (9, Some(at))] {
            observed.peers.insert(PublicKey::from_bytes([k; 32]), state(k, hs));
        }
        // peer 2 never shook hands, peer 3 is not in the engine yet, key 9 is not desired
        let desired = [peer("node-a", 1), peer("node-b", 2), peer("laptop", 3)];
        assert_eq!(handshakes(&desired, &observed), vec![("node-a".to_owned(), at)]);
    }
}
