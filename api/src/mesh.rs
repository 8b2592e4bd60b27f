//! The pure desired-state function: observed Nodes and `WireGuardPeer`s in, the validated set of
//! mesh members out, and from it the peers one node must configure.
//!
//! Node members are derived from the Node objects themselves (key annotation, addresses, pod
//! CIDRs), not from the operator's node `WireGuardPeer`s, so a key change reaches the agents even
//! while the operator is down or lagging; the node peers the operator writes are a projection of
//! the same members, made by [`Member::node_peer_spec`]. External members come from
//! `WireGuardPeer`s without `spec.nodeName`.
//!
//! Conflicts are settled by rank, never by arrival order: node members first, then external
//! ones, each by creation time then name. The first claimant of a key or prefix keeps it; a
//! later one is invalid and excluded, so a new bad peer can never knock out a working one.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::annotations::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::cidr::{Family, IpCidr};
use crate::conditions::Reason;
use crate::constants::NODE_PEER_PREFIX;
use crate::desired::DesiredPeer;
use crate::endpoint::Endpoint;
use crate::key::PublicKey;
use crate::naming::node_peer_name;
use crate::node::{node_facts, Problem};
use crate::peer::{SecretKeyRef, WireGuardPeer, WireGuardPeerSpec};

/// Cluster-wide settings of the validation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshConfig {
    /// The cluster's pod network (e.g. the controller-manager's `--cluster-cidr`); external peers
    /// may not claim any of it. Node pod CIDRs are always reserved, with or without this.
    pub cluster_cidrs: Vec<IpCidr>,
}

/// Where a member comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberKind {
    /// A cluster node.
    Node {
        /// Node name.
        node_name: String,
    },
    /// A user-created `WireGuardPeer`.
    External,
}

/// One peer of the mesh, valid or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Name of the `WireGuardPeer` that represents it.
    pub name: String,
    /// Node or external.
    pub kind: MemberKind,
    /// Parsed key, if it parsed.
    pub public_key: Option<PublicKey>,
    /// Parsed endpoint, if any.
    pub endpoint: Option<Endpoint>,
    /// Parsed prefixes, sorted.
    pub allowed_ips: Vec<IpCidr>,
    /// Keepalive the nodes use toward this member.
    pub persistent_keepalive: Option<u16>,
    /// Preshared key location.
    pub preshared_key_secret_ref: Option<SecretKeyRef>,
    /// `Ok` if distributed, otherwise why not.
    pub verdict: Result<(), Problem>,
}

impl Member {
    /// True if the member is distributed to the nodes.
    pub fn is_valid(&self) -> bool {
        self.verdict.is_ok()
    }

    /// Node name for node members.
    pub fn node_name(&self) -> Option<&str> {
        match &self.kind {
            MemberKind::Node { node_name } => Some(node_name),
            MemberKind::External => None,
        }
    }

    /// Spec of the `WireGuardPeer` the operator keeps for a node member; `None` for external
    /// members and for nodes whose annotations do not parse (their last good spec is kept).
    pub fn node_peer_spec(&self) -> Option<WireGuardPeerSpec> {
        let node_name = self.node_name()?;
        let parse_problem = matches!(&self.verdict, Err(p) if !is_global(p.reason));
        if parse_problem || self.allowed_ips.is_empty() {
            return None;
        }
        Some(WireGuardPeerSpec {
            public_key: self.public_key?.to_string(),
            endpoint: self.endpoint.as_ref().map(ToString::to_string),
            allowed_ips: self.allowed_ips.iter().map(ToString::to_string).collect(),
            persistent_keepalive: self.persistent_keepalive,
            preshared_key_secret_ref: None,
            node_name: Some(node_name.to_owned()),
        })
    }

    fn desired(&self, local_keepalive: Option<u16>) -> Option<DesiredPeer> {
        Some(DesiredPeer {
            name: self.name.clone(),
            public_key: self.public_key?,
            endpoint: self.endpoint.clone(),
            allowed_ips: self.allowed_ips.clone(),
            persistent_keepalive: min_nonzero(self.persistent_keepalive, local_keepalive),
            preshared_key_secret_ref: self.preshared_key_secret_ref.clone(),
            node_name: self.node_name().map(str::to_owned),
        })
    }
}

// duplicate keys and overlaps depend on other peers; everything else is a property of the peer
fn is_global(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::DuplicatePublicKey | Reason::AllowedIPsOverlap | Reason::PodCIDROverlap
    )
}

// the more frequent keepalive satisfies both the peer's and the local node's NAT
fn min_nonzero(a: Option<u16>, b: Option<u16>) -> Option<u16> {
    match (a.filter(|v| *v > 0), b.filter(|v| *v > 0)) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

/// True for the `WireGuardPeer`s the operator keeps for Nodes; they are outputs, never inputs.
pub fn is_managed_node_peer(peer: &WireGuardPeer) -> bool {
    peer.spec.node_name.is_some()
        && peer.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE)
}

/// The validated mesh.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mesh {
    members: Vec<Member>,
    local_keepalive: HashMap<String, u16>,
    node_problems: BTreeMap<String, Problem>,
}

/// Who holds a prefix; names are only looked up when a conflict is reported.
#[derive(Clone, Copy, Debug)]
enum Owner {
    /// An accepted member, by index into the list being built.
    Member(usize),
    /// A node's pod CIDR, by index into the node-name list.
    PodCidr(usize),
    /// An address of a node (host prefix), by index into the node-name list.
    NodeAddress(usize),
    /// The configured cluster pod network.
    Cluster,
}

/// Disjoint prefixes with their holder, for O(log n) overlap queries.
#[derive(Default)]
struct Claims {
    map: BTreeMap<(Family, u128), (u128, IpCidr, Owner)>,
}

impl Claims {
    fn find(&self, c: &IpCidr) -> Option<(IpCidr, Owner)> {
        let (start, end) = c.range();
        // claims are disjoint, so only the last one starting at or before `end` can reach `start`
        let ((fam, _), (claim_end, cidr, owner)) =
            self.map.range(..=(c.family(), end)).next_back()?;
        (*fam == c.family() && *claim_end >= start).then_some((*cidr, *owner))
    }

    /// The prefixes in order, each unless an earlier one overlaps it.
    fn first_of<'a>(list: impl IntoIterator<Item = &'a (IpCidr, Owner)>) -> Claims {
        let mut claims = Claims::default();
        for (c, owner) in list {
            if claims.find(c).is_none() {
                claims.insert(*c, *owner);
            }
        }
        claims
    }

    fn insert(&mut self, c: IpCidr, owner: Owner) {
        let (start, end) = c.range();
        self.map.insert((c.family(), start), (end, c, owner));
    }
}

/// A member waiting for the conflict checks, with its creation time for ranking.
struct Candidate {
    created: Option<Timestamp>,
    member: Member,
    /// A node's tunnel addresses outside its own pod CIDRs (host routes of the override).
    tunnel_routes: Vec<IpCidr>,
}

// older first, objects without a creation time last, then by name: a total, stable order
fn by_rank(a: &Candidate, b: &Candidate) -> Ordering {
    (a.created.is_none(), a.created)
        .cmp(&(b.created.is_none(), b.created))
        .then_with(|| a.member.name.cmp(&b.member.name))
}

// sorts through an index so large elements move once instead of O(n log n) times
fn sort_large<T>(items: Vec<T>, mut cmp: impl FnMut(&T, &T) -> Ordering) -> Vec<T> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| match (items.get(a), items.get(b)) {
        (Some(x), Some(y)) => cmp(x, y),
        _ => Ordering::Equal,
    });
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    order
        .into_iter()
        .filter_map(|i| slots.get_mut(i).and_then(Option::take))
        .collect()
}

impl Mesh {
    /// Builds and validates the mesh from everything observed. Deterministic: the same objects in
    /// any order give the same result.
    pub fn build<'a>(
        nodes: impl IntoIterator<Item = &'a Node>,
        peers: impl IntoIterator<Item = &'a WireGuardPeer>,
        config: &MeshConfig,
    ) -> Mesh {
        let mut node_candidates = Vec::new();
        let mut node_names: Vec<String> = Vec::new();
        let mut reserved_cidrs: Vec<(IpCidr, Owner)> = config
            .cluster_cidrs
            .iter()
            .map(|c| (*c, Owner::Cluster))
            .collect();
        let mut local_keepalive = HashMap::new();
        let mut node_problems = BTreeMap::new();

        for node in nodes {
            let facts = node_facts(node);
            if !facts.pod_cidrs.is_empty() || !facts.addresses.is_empty() {
                let idx = node_names.len();
                node_names.push(facts.name.clone());
                reserved_cidrs.extend(facts.pod_cidrs.iter().map(|c| (*c, Owner::PodCidr(idx))));
                reserved_cidrs.extend(facts.addresses.iter().map(|a| (IpCidr::host(*a), Owner::NodeAddress(idx))));
            }
            if let Some(k) = facts.local_keepalive {
                local_keepalive.insert(facts.name.clone(), k);
            }
            // a node without a published key has not joined (or has left) the mesh; its other
            // annotations do not matter yet, so their problems are not reported either
            if !facts.joined {
                continue;
            }
            if let Some(p) = &facts.problem {
                node_problems.insert(facts.name.clone(), p.clone());
            }
            let allowed_ips = facts.allowed_ips();
            let tunnel_routes = allowed_ips.iter().filter(|c| !facts.pod_cidrs.contains(c)).copied().collect();
            let verdict = match facts.problem {
                Some(p) => Err(p),
                None if allowed_ips.is_empty() => Err(Problem::new(
                    Reason::InvalidAllowedIPs,
                    "node has no spec.podCIDRs and no tunnel address yet",
                )),
                None => Ok(()),
            };
            node_candidates.push(Candidate {
                created: node.metadata.creation_timestamp.as_ref().map(|t| t.0),
                member: Member {
                    name: node_peer_name(&facts.name),
                    kind: MemberKind::Node {
                        node_name: facts.name,
                    },
                    public_key: facts.public_key,
                    endpoint: facts.endpoint,
                    allowed_ips,
                    persistent_keepalive: None,
                    preshared_key_secret_ref: None,
                    verdict,
                },
                tunnel_routes,
            });
        }

        let external_candidates: Vec<Candidate> = peers
            .into_iter()
            .filter(|p| !is_managed_node_peer(p) && p.metadata.deletion_timestamp.is_none())
            .map(|p| Candidate {
                created: p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                member: external_member(p),
                tunnel_routes: Vec::new(),
            })
            .collect();
        let node_candidates = sort_large(node_candidates, by_rank);
        let external_candidates = sort_large(external_candidates, by_rank);

        // the pod network: bigger prefixes first, so a contained one is safely skipped
        // a prefix reserved twice goes to the cluster, then to the node first by name: which
        // owner a conflict names must not depend on the order the Nodes were listed in
        let owner_rank = |o: &Owner| match o {
            Owner::Cluster => (0, ""),
            Owner::PodCidr(i) => (1, node_names.get(*i).map_or("", String::as_str)),
            Owner::NodeAddress(i) => (2, node_names.get(*i).map_or("", String::as_str)),
            Owner::Member(_) => (3, ""),
        };
        reserved_cidrs.sort_by(|(a, oa), (b, ob)| {
            (a.prefix(), *a)
                .cmp(&(b.prefix(), *b))
                .then_with(|| owner_rank(oa).cmp(&owner_rank(ob)))
        });
        // every node's pod CIDRs on their own (the cluster network above swallows them), so a
        // tunnel address another node's pods use is blamed on the override, whichever is older
        let pod_cidrs = Claims::first_of(reserved_cidrs.iter().filter(|(_, o)| matches!(o, Owner::PodCidr(_))));
        // every node's addresses on their own, for the nodes' prefixes (externals meet them in `reserved`)
        let addresses = Claims::first_of(reserved_cidrs.iter().filter(|(_, o)| matches!(o, Owner::NodeAddress(_))));
        let reserved = Claims::first_of(&reserved_cidrs);

        let mut keys: HashMap<PublicKey, usize> = HashMap::new();
        let mut claims = Claims::default();
        let mut members: Vec<Member> =
            Vec::with_capacity(node_candidates.len() + external_candidates.len());
        for (is_external, cand) in node_candidates
            .into_iter()
            .map(|c| (false, c))
            .chain(external_candidates.into_iter().map(|c| (true, c)))
        {
            let mut m = cand.member;
            let names = OwnerNames {
                members: &members,
                nodes: &node_names,
            };
            if let Some((ip, (other, owner))) = cand.tunnel_routes.iter().find_map(|c| Some((c, pod_cidrs.find(c)?))) {
                m.verdict = m.verdict.and(Err(Problem::new(
                    Reason::PodCIDROverlap,
                    format!("tunnel address {} lies in {}", ip.addr(), names.describe(owner, other)),
                )));
            }
            // a node's prefix over a node's address (pods and nodes numbered from one range)
            // would take that node's own traffic into the tunnel, as an external peer's would
            let over_node = m.allowed_ips.iter().filter(|_| !is_external).find_map(|c| Some((c, addresses.find(c)?)));
            if let Some((c, (other, owner))) = over_node {
                m.verdict = m.verdict.and(Err(Problem::new(
                    Reason::NodeAddressOverlap,
                    format!("{c} contains {}", names.describe(owner, other)),
                )));
            }
            if m.verdict.is_ok() {
                m.verdict = check_conflicts(&m, is_external, &keys, &claims, &reserved, &names);
            }
            if m.verdict.is_ok() {
                let idx = members.len();
                if let Some(k) = m.public_key {
                    keys.insert(k, idx);
                }
                for c in &m.allowed_ips {
                    claims.insert(*c, Owner::Member(idx));
                }
            }
            members.push(m);
        }
        // names are unique: node peers carry the reserved `node-` prefix, externals may not
        let members = sort_large(members, |a, b| a.name.cmp(&b.name));
        Mesh {
            members,
            local_keepalive,
            node_problems,
        }
    }

    /// All members, valid or not, sorted by name.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The member represented by the `WireGuardPeer` called `name`.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members
            .binary_search_by(|m| m.name.as_str().cmp(name))
            .ok()
            .and_then(|i| self.members.get(i))
    }

    /// Nodes whose annotations, addresses or pod CIDRs do not parse, by node name.
    pub fn node_problems(&self) -> &BTreeMap<String, Problem> {
        &self.node_problems
    }

    /// The peers node `node_name` must configure: every valid member but itself, sorted by name.
    pub fn peers_for_node(&self, node_name: &str) -> Vec<DesiredPeer> {
        let local = self.local_keepalive.get(node_name).copied();
        self.members
            .iter()
            .filter(|m| m.is_valid() && m.node_name() != Some(node_name))
            .filter_map(|m| m.desired(local))
            .collect()
    }
}

/// Convenience for agents: build the mesh and return the peers of one node.
pub fn desired_peers_for_node<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    peers: impl IntoIterator<Item = &'a WireGuardPeer>,
    config: &MeshConfig,
    node_name: &str,
) -> Vec<DesiredPeer> {
    Mesh::build(nodes, peers, config).peers_for_node(node_name)
}

fn external_member(p: &WireGuardPeer) -> Member {
    let name = p.name_any();
    let spec = &p.spec;
    let mut problem: Option<Problem> = None;
    let mut note = |reason: Reason, message: String| {
        problem.get_or_insert(Problem::new(reason, message));
    };

    if spec.node_name.is_some() {
        note(
            Reason::NotManaged,
            "spec.nodeName is reserved for the peers wgmesh-operator keeps for Nodes; remove it"
                .into(),
        );
    }
    if name.starts_with(NODE_PEER_PREFIX) {
        note(
            Reason::NameReserved,
            format!("names starting with {NODE_PEER_PREFIX:?} are reserved for node peers; rename this peer"),
        );
    }
    let public_key = match spec.public_key.parse::<PublicKey>() {
        Ok(k) => Some(k),
        Err(e) => {
            note(Reason::InvalidPublicKey, e.to_string());
            None
        }
    };
    let endpoint = match spec.endpoint.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => match text.parse::<Endpoint>() {
            Ok(e) => Some(e),
            Err(e) => {
                note(Reason::InvalidEndpoint, e.to_string());
                None
            }
        },
    };
    let mut allowed_ips = Vec::with_capacity(spec.allowed_ips.len());
    for text in &spec.allowed_ips {
        match text.trim().parse::<IpCidr>() {
            Ok(c) => allowed_ips.push(c),
            Err(e) => note(
                Reason::InvalidAllowedIPs,
                format!("allowedIPs entry {text:?}: {e}"),
            ),
        }
    }
    if spec.allowed_ips.is_empty() {
        note(
            Reason::InvalidAllowedIPs,
            "allowedIPs must list at least one prefix".into(),
        );
    }
    allowed_ips.sort();

    Member {
        name,
        kind: MemberKind::External,
        public_key,
        endpoint,
        allowed_ips,
        persistent_keepalive: spec.persistent_keepalive.filter(|v| *v > 0),
        preshared_key_secret_ref: spec.preshared_key_secret_ref.clone(),
        verdict: problem.map_or(Ok(()), Err),
    }
}

/// Resolves [`Owner`]s to names for messages.
struct OwnerNames<'n> {
    members: &'n [Member],
    nodes: &'n [String],
}

impl OwnerNames<'_> {
    fn member(&self, idx: usize) -> &str {
        self.members.get(idx).map_or("?", |m| m.name.as_str())
    }

    fn describe(&self, owner: Owner, other: IpCidr) -> String {
        match owner {
            Owner::Member(i) => format!("{other} of peer {}", self.member(i)),
            Owner::PodCidr(i) => format!(
                "pod CIDR {other} of node {}",
                self.nodes.get(i).map_or("?", String::as_str)
            ),
            Owner::NodeAddress(i) => format!(
                "{}, an address of node {} (its own traffic would enter the tunnel)",
                other.addr(),
                self.nodes.get(i).map_or("?", String::as_str)
            ),
            Owner::Cluster => format!("the cluster pod network {other}"),
        }
    }
}

fn check_conflicts(
    m: &Member,
    is_external: bool,
    keys: &HashMap<PublicKey, usize>,
    claims: &Claims,
    reserved: &Claims,
    names: &OwnerNames<'_>,
) -> Result<(), Problem> {
    if let Some(owner) = m.public_key.and_then(|k| keys.get(&k)) {
        return Err(Problem::new(
            Reason::DuplicatePublicKey,
            format!(
                "public key is already used by peer {}",
                names.member(*owner)
            ),
        ));
    }
    // sorted, so any overlap inside the list shows between neighbours
    for pair in m.allowed_ips.windows(2) {
        if let [a, b] = pair {
            if a.overlaps(b) {
                return Err(Problem::new(
                    Reason::AllowedIPsOverlap,
                    format!("allowedIPs {a} and {b} of this peer overlap"),
                ));
            }
        }
    }
    for c in &m.allowed_ips {
        if is_external {
            if let Some((other, owner)) = reserved.find(c) {
                let reason = match owner {
                    Owner::NodeAddress(_) => Reason::NodeAddressOverlap,
                    _ => Reason::PodCIDROverlap,
                };
                return Err(Problem::new(
                    reason,
                    format!("allowed IP {c} overlaps {}", names.describe(owner, other)),
                ));
            }
        }
        if let Some((other, owner)) = claims.find(c) {
            return Err(Problem::new(
                Reason::AllowedIPsOverlap,
                format!("allowed IP {c} overlaps {}", names.describe(owner, other)),
            ));
        }
    }
    Ok(())
}
