//! The receiver-index table (whitepaper §5.4.1): random 32-bit local indices, unique across
//! all pending handshakes and live keypairs, mapping incoming messages to their peer.

use rand_core::RngCore;
use std::collections::HashMap;

pub type PeerId = usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    Handshake(PeerId),
    Keypair(PeerId),
}

impl Entry {
    pub fn peer(self) -> PeerId {
        match self {
            Entry::Handshake(p) | Entry::Keypair(p) => p,
        }
    }
}

#[derive(Default)]
pub struct IndexTable {
    map: HashMap<u32, Entry>,
}

impl IndexTable {
    /// A fresh random index; random rather than sequential so indices reveal nothing.
    pub fn insert(&mut self, entry: Entry, rng: &mut impl RngCore) -> u32 {
        loop {
            let i = rng.next_u32();
            if let std::collections::hash_map::Entry::Vacant(v) = self.map.entry(i) {
                v.insert(entry);
                return i;
            }
        }
    }
    pub fn get(&self, index: u32) -> Option<Entry> {
        self.map.get(&index).copied()
    }
    pub fn set(&mut self, index: u32, entry: Entry) {
        self.map.insert(index, entry);
    }
    pub fn remove(&mut self, index: u32) {
        self.map.remove(&index);
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
