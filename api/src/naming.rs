//! Name of the `WireGuardPeer` the operator keeps for a Node.

use crate::constants::NODE_PEER_PREFIX;

/// Longest Kubernetes object name (DNS-1123 subdomain).
const MAX_NAME: usize = 253;

/// `node-<node name>`; names that would exceed 253 characters are truncated and suffixed with a
/// hash of the full name, so distinct nodes never share a peer.
pub fn node_peer_name(node_name: &str) -> String {
    let full = format!("{NODE_PEER_PREFIX}{node_name}");
    if full.len() <= MAX_NAME {
        return full;
    }
    let suffix = format!("-{:08x}", fnv1a32(node_name.as_bytes()));
    let keep = MAX_NAME - suffix.len();
    // node names are ASCII (DNS-1123), so byte slicing cannot split a character
    let head = full.get(..keep).unwrap_or(&full);
    let head = head.trim_end_matches(['-', '.']);
    format!("{head}{suffix}")
}

// a stable hash (unlike std's RandomState) so every replica and agent derives the same name
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_get_the_prefix() {
        assert_eq!(node_peer_name("worker-1"), "node-worker-1");
    }

    #[test]
    fn long_names_are_bounded_distinct_and_stable() {
        let a = format!("{}a", "x.".repeat(126));
        let b = format!("{}b", "x.".repeat(126));
        let (na, nb) = (node_peer_name(&a), node_peer_name(&b));
        assert!(na.len() <= 253 && nb.len() <= 253);
        assert_ne!(na, nb);
        assert_eq!(na, node_peer_name(&a));
        assert!(!na.contains(".-"));
    }
}
