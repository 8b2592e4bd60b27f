//! A transport keypair (whitepaper §5.4.6) and the previous/current/next slots (§6.1).

use crate::crypto::{self, TAG_LEN};
use crate::messages::{self as msg, data};
use crate::noise::Session;
use crate::replay::{Replay, REJECT_AFTER_MESSAGES};
use std::sync::Arc;
use std::time::Duration;

pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);

pub struct Keypair {
    pub(crate) send: Arc<crypto::Aead>,
    pub(crate) recv: Arc<crypto::Aead>,
    pub send_counter: u64,
    /// Cleared when our private key changes or the counter runs out.
    pub send_valid: bool,
    pub replay: Replay,
    pub birth: Duration,
    pub is_initiator: bool,
    pub local_index: u32,
    pub remote_index: u32,
    /// Made under a static key since rotated (see `Keypairs::end_old_key`).
    pub old_key: bool,
}

impl Keypair {
    pub fn new(s: &Session, local_index: u32, now: Duration) -> Self {
        Self {
            send: Arc::new(crypto::cipher(&s.send)),
            recv: Arc::new(crypto::cipher(&s.recv)),
            send_counter: 0,
            send_valid: true,
            replay: Replay::default(),
            birth: now,
            is_initiator: s.is_initiator,
            local_index,
            remote_index: s.remote_index,
            old_key: false,
        }
    }

    pub fn can_send(&self, now: Duration) -> bool {
        self.send_valid && now < self.birth + REJECT_AFTER_TIME
    }

    pub fn can_receive(&self, now: Duration) -> bool {
        now < self.birth + REJECT_AFTER_TIME && !self.replay.exhausted()
    }

    /// Takes the next send counter, or `None` once it is exhausted (the keypair is then dead).
    pub fn next_counter(&mut self) -> Option<u64> {
        let counter = self.send_counter;
        if counter >= REJECT_AFTER_MESSAGES {
            self.send_valid = false;
            return None;
        }
        self.send_counter += 1;
        Some(counter)
    }

    /// Seals `buf[16..16 + padded_len]` in place behind a data header; returns the datagram
    /// length, or `None` when the counter is exhausted (the keypair is then unusable).
    pub fn seal(&mut self, buf: &mut [u8], padded_len: usize) -> Option<usize> {
        let counter = self.next_counter()?;
        Some(seal_data(&self.send, self.remote_index, counter, buf, padded_len))
    }

    /// Opens a data message in place; the caller updates the replay window afterwards.
    pub fn open(&self, datagram: &mut [u8], counter: u64) -> bool {
        open_data(&self.recv, counter, datagram)
    }
}

/// Writes the data header and seals `buf[16..16 + padded_len]` (whitepaper §5.4.6); returns the
/// datagram length. Needs no keypair state, so it can run outside any lock.
pub fn seal_data(key: &crypto::Aead, receiver: u32, counter: u64, buf: &mut [u8], padded_len: usize) -> usize {
    let end = msg::DATA_HEADER_LEN + padded_len + TAG_LEN;
    msg::put_u32(buf, 0, msg::DATA);
    msg::put_u32(buf, data::RECEIVER, receiver);
    buf[data::COUNTER..data::COUNTER + 8].copy_from_slice(&counter.to_le_bytes());
    crypto::seal_with(key, counter, &[], &mut buf[msg::DATA_HEADER_LEN..end]);
    end
}

/// Opens a whole data message in place: the plaintext is `datagram[16..len - 16]`.
pub fn open_data(key: &crypto::Aead, counter: u64, datagram: &mut [u8]) -> bool {
    crypto::open_with(key, counter, &[], &mut datagram[msg::DATA_HEADER_LEN..])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Previous,
    Current,
    Next,
}

#[derive(Default)]
pub struct Keypairs {
    pub previous: Option<Box<Keypair>>,
    pub current: Option<Box<Keypair>>,
    pub next: Option<Box<Keypair>>,
}

impl Keypairs {
    /// The keypair with this local index, read-only (the receive path's pre-checks).
    pub fn get(&self, local_index: u32) -> Option<&Keypair> {
        [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
            .map(|k| &**k)
            .find(|k| k.local_index == local_index)
    }

    pub fn find(&mut self, local_index: u32) -> Option<(Slot, &mut Keypair)> {
        let Self { previous, current, next } = self;
        [(Slot::Current, current), (Slot::Previous, previous), (Slot::Next, next)]
            .into_iter()
            .find_map(|(s, k)| k.as_deref_mut().filter(|k| k.local_index == local_index).map(|k| (s, k)))
    }

    /// Installs a new keypair (kernel add_new_keypair); returns the keypairs it displaced.
    pub fn insert(&mut self, kp: Box<Keypair>) -> [Option<Box<Keypair>>; 2] {
        if kp.is_initiator {
            // Confirmed by the response: usable at once. A pending next becomes previous.
            if let Some(next) = self.next.take() {
                [self.previous.replace(next), self.current.replace(kp)]
            } else {
                [std::mem::replace(&mut self.previous, self.current.replace(kp)), None]
            }
        } else {
            // Responder: unusable for sending until the initiator proves it has it.
            [self.next.replace(kp), self.previous.take()]
        }
    }

    /// Key confirmation: the first packet under `next` promotes it; returns the dropped one.
    pub fn promote_next(&mut self) -> Option<Box<Keypair>> {
        let next = self.next.take()?;
        std::mem::replace(&mut self.previous, self.current.replace(next))
    }

    /// After a key rotation: these sessions were made under a key that is gone.
    pub fn mark_old_key(&mut self) {
        for kp in [&mut self.previous, &mut self.current, &mut self.next].into_iter().flatten() {
            kp.old_key = true;
        }
    }

    /// Takes the previous keypair if it is an old-key session and `local` names a current
    /// one that is not: the peer has moved on, so the old session ends now.
    pub fn end_old_key(&mut self, local: u32) -> Option<Box<Keypair>> {
        let moved_on = self.current.as_ref().is_some_and(|k| k.local_index == local && !k.old_key);
        self.previous.take_if(|p| moved_on && p.old_key)
    }

    pub fn clear(&mut self) -> [Option<Box<Keypair>>; 3] {
        [self.previous.take(), self.current.take(), self.next.take()]
    }

    /// After a private-key change nothing may be sent under the old keys (kernel).
    pub fn expire_sending(&mut self) {
        for kp in [&mut self.current, &mut self.next].into_iter().flatten() {
            kp.send_valid = false;
        }
    }
}
