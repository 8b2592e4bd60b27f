//! Cryptokey routing (whitepaper §2): longest-prefix match from inner addresses to peers, one
//! binary trie per family. Each prefix has exactly one owner; inserting moves it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const NONE: u32 = u32::MAX;

#[derive(Clone)]
struct Node<T> {
    child: [u32; 2],
    value: Option<T>,
    /// When the value was set: `wg show` lists a peer's prefixes in that order, as the kernel.
    order: u64,
}

/// A binary trie over the top `bits` bits of a u128 key, nodes in one arena.
#[derive(Clone)]
struct Trie<T> {
    nodes: Vec<Node<T>>,
    free: Vec<u32>,
    bits: u8,
}

fn bit(key: u128, depth: u8, bits: u8) -> usize {
    ((key >> (bits - 1 - depth)) & 1) as usize
}

impl<T: Copy + PartialEq> Trie<T> {
    fn new(bits: u8) -> Self {
        Self { nodes: vec![Node { child: [NONE; 2], value: None, order: 0 }], free: Vec::new(), bits }
    }

    fn alloc(&mut self) -> u32 {
        let n = Node { child: [NONE; 2], value: None, order: 0 };
        if let Some(i) = self.free.pop() {
            self.nodes[i as usize] = n;
            return i;
        }
        self.nodes.push(n);
        (self.nodes.len() - 1) as u32
    }

    fn insert(&mut self, key: u128, len: u8, value: T, order: u64) -> Option<T> {
        let mut at = 0u32;
        for d in 0..len {
            let b = bit(key, d, self.bits);
            let next = self.nodes[at as usize].child[b];
            at = if next == NONE {
                let n = self.alloc();
                self.nodes[at as usize].child[b] = n;
                n
            } else {
                next
            };
        }
        self.nodes[at as usize].order = order;
        self.nodes[at as usize].value.replace(value)
    }

    /// Path from the root to the prefix's node, if it exists.
    fn path(&self, key: u128, len: u8) -> Option<Vec<u32>> {
        let mut path = Vec::with_capacity(len as usize + 1);
        let mut at = 0u32;
        path.push(at);
        for d in 0..len {
            at = self.nodes[at as usize].child[bit(key, d, self.bits)];
            if at == NONE {
                return None;
            }
            path.push(at);
        }
        Some(path)
    }

    /// Removes the prefix if `owner` (when given) owns it; prunes emptied branches.
    fn remove(&mut self, key: u128, len: u8, owner: Option<T>) -> bool {
        let Some(path) = self.path(key, len) else { return false };
        let leaf = path[path.len() - 1] as usize;
        match self.nodes[leaf].value {
            Some(v) if owner.is_none_or(|o| o == v) => self.nodes[leaf].value = None,
            _ => return false,
        }
        for d in (1..path.len()).rev() {
            let n = path[d] as usize;
            if self.nodes[n].value.is_some() || self.nodes[n].child != [NONE; 2] {
                break;
            }
            let parent = path[d - 1] as usize;
            self.nodes[parent].child[bit(key, (d - 1) as u8, self.bits)] = NONE;
            self.free.push(n as u32);
        }
        true
    }

    fn lookup(&self, key: u128) -> Option<T> {
        let mut at = 0u32;
        let mut best = self.nodes[0].value;
        for d in 0..self.bits {
            at = self.nodes[at as usize].child[bit(key, d, self.bits)];
            if at == NONE {
                break;
            }
            if let Some(v) = self.nodes[at as usize].value {
                best = Some(v);
            }
        }
        best
    }

    /// Visits every (prefix, len, value, order) in address order.
    fn walk(&self, f: &mut impl FnMut(u128, u8, T, u64)) {
        let mut stack = vec![(0u32, 0u128, 0u8)];
        while let Some((n, key, depth)) = stack.pop() {
            let node = &self.nodes[n as usize];
            if let Some(v) = node.value {
                f(key, depth, v, node.order);
            }
            for b in [1usize, 0] {
                if node.child[b] != NONE {
                    let k = key | ((b as u128) << (self.bits - 1 - depth));
                    stack.push((node.child[b], k, depth + 1));
                }
            }
        }
    }

    fn remove_value(&mut self, value: T) {
        let mut doomed = Vec::new();
        self.walk(&mut |k, l, v, _| {
            if v == value {
                doomed.push((k, l));
            }
        });
        for (k, l) in doomed {
            self.remove(k, l, Some(value));
        }
    }
}

/// Masks host bits: the canonical network address is what `wg show` prints.
pub fn canonical(ip: IpAddr, cidr: u8) -> Option<(IpAddr, u8)> {
    // A shift by the full width leaves no bits: /0 masks everything.
    let net = match ip {
        IpAddr::V4(a) if cidr <= 32 => IpAddr::V4((a.to_bits() & u32::MAX.unbounded_shl(32 - cidr as u32)).into()),
        IpAddr::V6(a) if cidr <= 128 => IpAddr::V6((a.to_bits() & u128::MAX.unbounded_shl(128 - cidr as u32)).into()),
        _ => return None,
    };
    Some((net, cidr))
}

pub struct AllowedIps<T> {
    v4: Trie<T>,
    v6: Trie<T>,
    /// The last lookup: a batch is mostly one flow, so most lookups repeat it.
    last: std::cell::Cell<Option<(IpAddr, Option<T>)>>,
    inserted: u64,
}

impl<T: Copy + PartialEq> Default for AllowedIps<T> {
    fn default() -> Self {
        Self { v4: Trie::new(32), v6: Trie::new(128), last: std::cell::Cell::new(None), inserted: 0 }
    }
}

impl<T: Copy + PartialEq> AllowedIps<T> {
    /// The family's trie, the key, and `cidr` clamped to the address length.
    fn trie(&mut self, ip: IpAddr, cidr: u8) -> (&mut Trie<T>, u128, u8) {
        // Every mutation goes through here: forget the cached lookup.
        self.last.set(None);
        let (trie, key) = match ip {
            IpAddr::V4(a) => (&mut self.v4, u32::from(a) as u128),
            IpAddr::V6(a) => (&mut self.v6, u128::from(a)),
        };
        let len = cidr.min(trie.bits);
        (trie, key, len)
    }

    /// Adds `ip/cidr` for `value`, taking it from any other owner; returns the previous owner.
    /// A `cidr` longer than the address is clamped to it.
    pub fn insert(&mut self, ip: IpAddr, cidr: u8, value: T) -> Option<T> {
        self.inserted += 1;
        let order = self.inserted;
        let (trie, key, len) = self.trie(ip, cidr);
        trie.insert(key, len, value, order)
    }

    /// Removes `ip/cidr` only if `value` owns it (UAPI `allowed_ip=-…`).
    pub fn remove(&mut self, ip: IpAddr, cidr: u8, value: T) -> bool {
        // Only the top `len` bits are walked, so host bits need no masking.
        let (trie, key, len) = self.trie(ip, cidr);
        trie.remove(key, len, Some(value))
    }

    /// Removes every prefix owned by `value`.
    pub fn remove_all(&mut self, value: T) {
        self.last.set(None);
        self.v4.remove_value(value);
        self.v6.remove_value(value);
    }

    /// Longest-prefix match.
    pub fn lookup(&self, ip: IpAddr) -> Option<T> {
        if let Some((_, v)) = self.last.get().filter(|(last, _)| *last == ip) {
            return v;
        }
        let v = match ip {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a) as u128),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a)),
        };
        self.last.set(Some((ip, v)));
        v
    }

    /// Every prefix with its owner, in the order they were inserted (a prefix inserted again
    /// moves to the end), as the kernel's per-peer lists: `wg showconf` gives back what was set.
    pub fn for_each(&self, mut f: impl FnMut(IpAddr, u8, T)) {
        let mut all = Vec::new();
        self.v4.walk(&mut |k, l, v, o| all.push((o, IpAddr::V4(Ipv4Addr::from(k as u32)), l, v)));
        self.v6.walk(&mut |k, l, v, o| all.push((o, IpAddr::V6(Ipv6Addr::from(k)), l, v)));
        all.sort_unstable_by_key(|e| e.0);
        all.into_iter().for_each(|(_, ip, l, v)| f(ip, l, v));
    }
}
