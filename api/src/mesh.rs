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

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
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

/// Disjoint prefixes with the member that holds each, for O(log n) overlap queries.
#[derive(Default)]
struct Claims {
    map: BTreeMap<(Family, u128), (u128, IpCidr, String)>,
}

impl Claims {
    fn find(&self, c: &IpCidr) -> Option<(IpCidr, &str)> {
        let (start, end) = c.range();
        // claims are disjoint, so only the last one starting at or before `end` can reach `start`
        let ((fam, _), (claim_end, cidr, owner)) =
            self.map.range(..=(c.family(), end)).next_back()?;
        (*fam == c.family() && *claim_end >= start).then_some((*cidr, owner.as_str()))
    }

    fn insert(&mut self, c: IpCidr, owner: &str) {
        let (start, end) = c.range();
        self.map
            .insert((c.family(), start), (end, c, owner.to_owned()));
    }
}

type RankKey = (bool, Option<Time>, String);

fn rank_key(created: Option<&Time>, name: &str) -> RankKey {
    (created.is_none(), created.cloned(), name.to_owned())
}

struct Candidate {
    rank: RankKey,
    member: Member,
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
        let mut reserved_cidrs: Vec<(IpCidr, String)> = Vec::new();
        let mut local_keepalive = HashMap::new();
        let mut node_problems = BTreeMap::new();

        for node in nodes {
            let facts = node_facts(node);
            for c in &facts.pod_cidrs {
                reserved_cidrs.push((*c, format!("pod CIDR {c} of node {}", facts.name)));
            }
            if let Some(k) = facts.local_keepalive {
                local_keepalive.insert(facts.name.clone(), k);
            }
            if let Some(p) = &facts.problem {
                node_problems.insert(facts.name.clone(), p.clone());
            }
            // a node without a published key has not joined (or has left) the mesh
            if facts.public_key.is_none() && facts.problem.is_none() {
                continue;
            }
            let allowed_ips = facts.allowed_ips();
            let verdict = match facts.problem.clone() {
                Some(p) => Err(p),
                None if allowed_ips.is_empty() => Err(Problem::new(
                    Reason::InvalidAllowedIPs,
                    "node has no spec.podCIDRs and no tunnel address yet",
                )),
                None => Ok(()),
            };
            node_candidates.push(Candidate {
                rank: rank_key(node.metadata.creation_timestamp.as_ref(), &facts.name),
                member: Member {
                    name: node_peer_name(&facts.name),
                    kind: MemberKind::Node {
                        node_name: facts.name.clone(),
                    },
                    public_key: facts.public_key,
                    endpoint: facts.endpoint.clone(),
                    allowed_ips,
                    persistent_keepalive: None,
                    preshared_key_secret_ref: None,
                    verdict,
                },
            });
        }

        let mut external_candidates: Vec<Candidate> = peers
            .into_iter()
            .filter(|p| !is_managed_node_peer(p) && p.metadata.deletion_timestamp.is_none())
            .map(|p| Candidate {
                rank: rank_key(p.metadata.creation_timestamp.as_ref(), &p.name_any()),
                member: external_member(p),
            })
            .collect();

        node_candidates.sort_by(|a, b| a.rank.cmp(&b.rank));
        external_candidates.sort_by(|a, b| a.rank.cmp(&b.rank));

        // the pod network: bigger prefixes first, so a contained one is safely skipped
        let mut reserved = Claims::default();
        let mut all_reserved: Vec<(IpCidr, String)> = config
            .cluster_cidrs
            .iter()
            .map(|c| (*c, format!("the cluster pod network {c}")))
            .collect();
        all_reserved.extend(reserved_cidrs);
        all_reserved.sort_by(|a, b| (a.0.prefix(), a.0).cmp(&(b.0.prefix(), b.0)));
        for (c, owner) in &all_reserved {
            if reserved.find(c).is_none() {
                reserved.insert(*c, owner);
            }
        }

        let mut keys: HashMap<PublicKey, String> = HashMap::new();
        let mut claims = Claims::default();
        let mut members = Vec::with_capacity(node_candidates.len() + external_candidates.len());
        for (is_external, cand) in node_candidates
            .into_iter()
            .map(|c| (false, c))
            .chain(external_candidates.into_iter().map(|c| (true, c)))
        {
            let mut m = cand.member;
            if m.verdict.is_ok() {
                m.verdict = check_conflicts(&m, is_external, &keys, &claims, &reserved);
            }
            if m.verdict.is_ok() {
                if let Some(k) = m.public_key {
                    keys.insert(k, m.name.clone());
                }
                for c in &m.allowed_ips {
                    claims.insert(*c, &m.name);
                }
            }
            members.push(m);
        }
        // names are unique: node peers carry the reserved `node-` prefix, externals may not
        members.sort_by(|a, b| a.name.cmp(&b.name));
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
            "spec.nodeName is reserved for the peers wgmesh-operator keeps for Nodes; remove it".into(),
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

fn check_conflicts(
    m: &Member,
    is_external: bool,
    keys: &HashMap<PublicKey, String>,
    claims: &Claims,
    reserved: &Claims,
) -> Result<(), Problem> {
    if let Some(owner) = m.public_key.and_then(|k| keys.get(&k)) {
        return Err(Problem::new(
            Reason::DuplicatePublicKey,
            format!("public key is already used by peer {owner}"),
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
                return Err(Problem::new(
                    Reason::PodCIDROverlap,
                    format!("allowed IP {c} overlaps {owner} ({other})"),
                ));
            }
        }
        if let Some((other, owner)) = claims.find(c) {
            return Err(Problem::new(
                Reason::AllowedIPsOverlap,
                format!("allowed IP {c} overlaps {other} of peer {owner}"),
            ));
        }
    }
    Ok(())
}
