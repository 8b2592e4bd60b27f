//! What the core produces while the device lock is held, sent once it is released. One arena
//! reused across iterations: no allocation per packet once warm.

use crate::device::Output;
use std::net::SocketAddr;
use std::ops::Range;

#[derive(Default)]
pub struct Batch {
    bytes: Vec<u8>,
    sends: Vec<(SocketAddr, Range<usize>)>,
    delivers: Vec<Range<usize>>,
}

impl Output for Batch {
    fn send(&mut self, to: SocketAddr, datagram: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(datagram);
        self.sends.push((to, start..self.bytes.len()));
    }
    fn deliver(&mut self, packet: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(packet);
        self.delivers.push(start..self.bytes.len());
    }
}

impl Batch {
    pub fn sends(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.sends.iter().map(|(a, r)| (*a, &self.bytes[r.clone()]))
    }
    pub fn delivers(&self) -> impl Iterator<Item = &[u8]> {
        self.delivers.iter().map(|r| &self.bytes[r.clone()])
    }
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty() && self.delivers.is_empty()
    }
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.sends.clear();
        self.delivers.clear();
    }
}
