//! What the core produces while the device lock is held, sent once it is released. One arena
//! reused across iterations: no allocation per packet once warm.

use super::TUN_OFFSET;
use crate::crypto::Aead;
use crate::device::{Output, SealJob};
use crate::keypair::seal_data;
use crate::messages::{Kind, DATA_HEADER_LEN, DATA_OVERHEAD};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;

/// Below this much data a batch is sealed on the calling thread: handing off costs more.
pub const PARALLEL_MIN_BYTES: usize = 32 * 1024;

/// Whether big batches are sealed and opened on several cores. On this project's 2-core test
/// machine, where both engines and the traffic share the cores, it measured slower (PERF.md),
/// so it is on only with more than 2 cores, or when WGMESH_CRYPTO_THREADS asks for it.
pub fn parallel_crypto() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = std::env::var("WGMESH_CRYPTO_THREADS").ok().and_then(|v| v.parse::<usize>().ok());
        let threads = threads.unwrap_or(if cores > 2 { cores } else { 1 });
        threads > 1 && rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().is_ok()
    })
}

/// Where a datagram lies: in the batch's own bytes, or in the TUN reader's segment arena,
/// where a segment was cut with room around it to be sealed in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Buf {
    Own,
    Arena,
}

/// A data message laid out in a buffer, waiting to be sealed outside the device lock.
struct Unsealed {
    buf: Buf,
    start: usize,
    key: Arc<Aead>,
    receiver: u32,
    counter: u64,
    padded: usize,
}

/// Destination, the source address if the send must leave from one, where it lies, and the
/// outer TOS byte (a data message's ECN field, a handshake's DSCP).
type Send = (SocketAddr, Option<IpAddr>, Buf, Range<usize>, u8);

#[derive(Default)]
pub struct Batch {
    bytes: Vec<u8>,
    sends: Vec<Send>,
    /// The local address the datagram being handled arrived at: where replies leave from.
    pub reply_from: Option<IpAddr>,
    /// Remotes whose learned source address the core asked to forget.
    pub forget: Vec<SocketAddr>,
    /// Packets for the TUN, each behind the virtio header's headroom: written (and coalesced)
    /// from here, with no second copy. Reused; `delivered` of them are live.
    tun: Vec<Vec<u8>>,
    delivered: usize,
    unsealed: Vec<Unsealed>,
}

impl Output for Batch {
    fn send(&mut self, to: SocketAddr, datagram: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(datagram);
        // As the kernel: initiations and responses go out as AF41 (HANDSHAKE_DSCP), the rest as 0.
        let handshake = matches!(crate::messages::classify(datagram), Some(Kind::Initiation | Kind::Response));
        self.sends.push((to, None, Buf::Own, start..self.bytes.len(), if handshake { 0x88 } else { 0 }));
    }
    fn reply(&mut self, to: SocketAddr, datagram: &[u8]) {
        self.send(to, datagram);
        if let Some(last) = self.sends.last_mut() {
            last.1 = self.reply_from;
        }
    }
    fn forget_source(&mut self, to: SocketAddr) {
        self.forget.push(to);
    }
    fn deliver(&mut self, packet: &[u8]) {
        if self.tun.len() == self.delivered {
            self.tun.push(Vec::new());
        }
        let b = &mut self.tun[self.delivered];
        b.clear();
        b.resize(TUN_OFFSET, 0);
        b.extend_from_slice(packet);
        self.delivered += 1;
    }
    fn send_data(&mut self, to: SocketAddr, job: SealJob<'_>) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&[0u8; DATA_HEADER_LEN]);
        self.bytes.extend_from_slice(job.plaintext);
        // Zero padding, then room for the tag.
        self.bytes.resize(start + DATA_OVERHEAD + job.padded, 0);
        self.queue(to, Buf::Own, start..self.bytes.len(), &job);
    }
}

impl Batch {
    /// A data message whose plaintext already lies in the TUN reader's arena, in `slot` of it
    /// (header room, plaintext, zero padding, tag room): sealed there, not copied.
    pub fn send_data_in_arena(&mut self, to: SocketAddr, slot: Range<usize>, job: SealJob<'_>) {
        debug_assert_eq!(slot.len(), DATA_OVERHEAD + job.padded);
        self.queue(to, Buf::Arena, slot, &job);
    }
    /// Records a data message laid out at `at` in `buf`, to be sealed and then sent.
    fn queue(&mut self, to: SocketAddr, buf: Buf, at: Range<usize>, job: &SealJob<'_>) {
        let (key, receiver, counter, padded) = (job.key.clone(), job.receiver, job.counter, job.padded);
        self.unsealed.push(Unsealed { buf, start: at.start, key, receiver, counter, padded });
        self.sends.push((to, None, buf, at, crate::ip::outer_ecn(job.plaintext)));
    }
    /// Seals every data message the core numbered; call after releasing the device lock.
    /// Counters are already fixed and the datagrams keep their order in the arena, so the
    /// sealing itself may run on every core (the kernel's scheme).
    pub fn seal_pending(&mut self, arena: &mut [u8]) {
        // Each buffer is walked once: its messages are in order in it.
        let (mut own, mut arena) = ((&mut self.bytes[..], 0), (arena, 0));
        let mut work: Vec<(&mut [u8], &Unsealed)> = Vec::with_capacity(self.unsealed.len());
        for u in &self.unsealed {
            let (rest, at) = if u.buf == Buf::Own { &mut own } else { &mut arena };
            let (_, tail) = std::mem::take(rest).split_at_mut(u.start - *at);
            let (msg, tail) = tail.split_at_mut(DATA_OVERHEAD + u.padded);
            work.push((msg, u));
            *rest = tail;
            *at = u.start + DATA_OVERHEAD + u.padded;
        }
        let seal = |(buf, u): &mut (&mut [u8], &Unsealed)| {
            seal_data(&u.key, u.receiver, u.counter, buf, u.padded);
        };
        let bytes: usize = work.iter().map(|(b, _)| b.len()).sum();
        if bytes >= PARALLEL_MIN_BYTES && parallel_crypto() {
            use rayon::prelude::*;
            work.par_iter_mut().with_min_len(4).for_each(seal);
        } else {
            work.iter_mut().for_each(seal);
        }
        drop(work);
        self.unsealed.clear();
    }
    /// Runs of consecutive datagrams to one destination, from one given source (or none), with
    /// one size (the last may be shorter) and one outer ECN field, adjacent in one buffer (ours
    /// or `arena`): each run is one UDP GSO send of `segment` bytes each.
    pub fn send_runs<'a>(
        &'a self,
        arena: &'a [u8],
        max_segments: usize,
        max_bytes: usize,
    ) -> impl Iterator<Item = (SocketAddr, Option<IpAddr>, &'a [u8], usize, u8)> {
        let mut i = 0;
        std::iter::from_fn(move || {
            let (to, src, buf, first, ecn) = self.sends.get(i)?.clone();
            let seg = first.len();
            let (mut end, mut n) = (first.end, 1);
            i += 1;
            while let Some((t, s, b, r, e)) = self.sends.get(i) {
                let fits = *t == to
                    && *s == src
                    && *e == ecn
                    && *b == buf
                    && r.start == end
                    && r.len() <= seg
                    && n < max_segments
                    && r.end - first.start <= max_bytes;
                if !fits {
                    break;
                }
                end = r.end;
                n += 1;
                i += 1;
                // A shorter datagram can only end a run.
                if r.len() < seg {
                    break;
                }
            }
            let bytes = if buf == Buf::Own { &self.bytes[..] } else { arena };
            Some((to, src, &bytes[first.start..end], seg, ecn))
        })
    }
    pub fn delivers(&self) -> impl Iterator<Item = &[u8]> {
        self.tun[..self.delivered].iter().map(|b| &b[TUN_OFFSET..])
    }
    /// The packets for the TUN with `TUN_OFFSET` bytes of headroom each, for a GRO write.
    pub fn tun_packets(&mut self) -> &mut [Vec<u8>] {
        &mut self.tun[..self.delivered]
    }
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty() && self.delivered == 0 && self.forget.is_empty()
    }
    pub fn clear(&mut self) {
        self.unsealed.clear();
        self.bytes.clear();
        self.sends.clear();
        self.forget.clear();
        self.delivered = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_runs_group_same_destination_and_size() {
        let (a, b): (SocketAddr, SocketAddr) = ("10.0.0.1:1".parse().unwrap(), "10.0.0.2:1".parse().unwrap());
        let mut batch = Batch::default();
        for (to, len) in [(a, 100), (a, 100), (a, 60), (a, 100), (b, 100), (b, 100), (a, 100)] {
            batch.send(to, &vec![len as u8; len]);
        }
        batch.deliver(&[1, 2, 3]);
        batch.send(a, &[9; 100]);
        batch.send(a, &[9; 100]);
        let runs: Vec<_> = batch.send_runs(&[], 64, 65000).map(|(to, _, d, seg, _)| (to, d.len(), seg)).collect();
        assert_eq!(
            runs,
            vec![(a, 260, 100), (a, 100, 100), (b, 200, 100), (a, 300, 100)],
            "a shorter datagram ends a run, a destination change splits, deliveries do not"
        );
        // Segment and byte limits split long runs.
        assert_eq!(batch.send_runs(&[], 2, 65000).count(), 6);
        assert_eq!(batch.send_runs(&[], 64, 150).count(), 9, "every datagram alone");
        assert_eq!(batch.delivers().collect::<Vec<_>>(), vec![&[1u8, 2, 3][..]]);
        // TUN packets carry zeroed room for the virtio header, and are reused after clear().
        assert_eq!(batch.tun_packets()[0], [&[0u8; TUN_OFFSET][..], &[1, 2, 3]].concat());
        batch.clear();
        batch.deliver(&[7; 5]);
        assert_eq!(batch.tun_packets().len(), 1);
        assert_eq!(batch.delivers().collect::<Vec<_>>(), vec![&[7u8; 5][..]]);
    }

    #[test]
    fn a_run_keeps_one_outer_ecn_field() {
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let key = std::sync::Arc::new(crate::crypto::cipher(&[1; 32]));
        let mut batch = Batch::default();
        // ECT(0), ECT(0), not-ECT, CE (sent as ECT(0)): one GSO send per ECN field.
        for tos in [2u8, 2, 0, 3] {
            let p = [0x45, tos, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
            batch.send_data(a, SealJob { key: &key, receiver: 1, counter: 0, plaintext: &p, padded: 32 });
        }
        let runs: Vec<_> = batch.send_runs(&[], 64, 65000).map(|(_, _, d, seg, ecn)| (d.len() / seg, ecn)).collect();
        assert_eq!(runs, vec![(2, 2), (1, 0), (1, 2)]);
    }

    #[test]
    fn replies_carry_their_source_and_forgets_are_kept_until_flushed() {
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let local: IpAddr = "10.0.0.11".parse().unwrap();
        let mut batch = Batch::default();
        batch.send(a, &[1; 64]);
        batch.reply_from = Some(local);
        batch.reply(a, &[3; 64]);
        batch.reply_from = None;
        batch.reply(a, &[3; 64]);
        batch.send(a, &[1; 64]);
        let runs: Vec<_> = batch.send_runs(&[], 64, 65000).map(|(to, src, d, _, _)| (to, src, d[0], d.len())).collect();
        assert_eq!(
            runs,
            vec![(a, None, 1, 64), (a, Some(local), 3, 64), (a, None, 3, 128)],
            "a reply leaves from where its request arrived, and never shares a send with others"
        );
        batch.clear();
        assert!(batch.is_empty());
        batch.forget_source(a);
        assert!(!batch.is_empty(), "a forget alone is still work for the flush");
        assert_eq!(batch.forget, vec![a]);
        batch.clear();
        assert!(batch.forget.is_empty());
    }
}
