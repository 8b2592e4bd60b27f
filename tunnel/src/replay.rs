//! The receive replay window: the kernel's 8192-bit ring of which 8128 counters are usable
//! (RFC 6479 style), so late packets within the window are accepted exactly once.

const WORD_BITS: u64 = 64;
const WORDS: usize = 128;
const TOTAL_BITS: u64 = WORD_BITS * WORDS as u64;
/// One word is always being recycled, so the usable window is 8192 − 64.
pub const WINDOW: u64 = TOTAL_BITS - WORD_BITS;
/// After this many messages a keypair is dead (whitepaper §6.1); the kernel's value,
/// 2^64 − 1 − WINDOW − 1, keeps the window arithmetic from overflowing.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - WINDOW - 1;

#[derive(Clone)]
pub struct Replay {
    /// One past the greatest counter accepted so far.
    next: u64,
    ring: [u64; WORDS],
}

impl Default for Replay {
    fn default() -> Self {
        Self { next: 0, ring: [0; WORDS] }
    }
}

impl Replay {
    /// True when no more packets may be decrypted under this keypair.
    pub fn exhausted(&self) -> bool {
        self.next >= REJECT_AFTER_MESSAGES
    }

    /// Would `counter` be accepted? Read-only, so it may run before the MAC is checked.
    pub fn would_accept(&self, counter: u64) -> bool {
        if self.next > REJECT_AFTER_MESSAGES || counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        let c = counter + 1;
        if c + WINDOW < self.next {
            return false;
        }
        if c > self.next {
            return true;
        }
        let word = ((c / WORD_BITS) as usize) % WORDS;
        self.ring[word] & (1 << (c % WORD_BITS)) == 0
    }

    /// Accepts `counter` once; call only after the packet authenticated.
    pub fn accept(&mut self, counter: u64) -> bool {
        if !self.would_accept(counter) {
            return false;
        }
        let c = counter + 1;
        let index = c / WORD_BITS;
        if c > self.next {
            let current = self.next / WORD_BITS;
            // Clear the words the window slides over, at most the whole ring.
            let top = (index - current).min(WORDS as u64);
            for i in 1..=top {
                self.ring[((current + i) as usize) % WORDS] = 0;
            }
            self.next = c;
        }
        self.ring[(index as usize) % WORDS] |= 1 << (c % WORD_BITS);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The kernel's selftest sequence (counter.c), re-expressed: (counter, expected).
    #[test]
    fn kernel_selftest_sequence() {
        let mut r = Replay::default();
        let w = WINDOW + 1;
        let r_ = REJECT_AFTER_MESSAGES;
        let steps: Vec<(u64, bool)> = vec![
            (0, true),
            (1, true),
            (1, false),
            (9, true),
            (8, true),
            (7, true),
            (7, false),
            (w, true),
            (w - 1, true),
            (w - 1, false),
            (w - 2, true),
            (2, true),
            (2, false),
            (w + 16, true),
            (3, false),
            (w + 16, false),
            (w * 4, true),
            (w * 4 - (w - 1), true),
            (10, false),
            (w * 4 - w, false),
            (w * 4 - (w + 1), false),
            (w * 4 - (w - 2), true),
            (w * 4 + 1 - w, false),
            (0, false),
            (r_, false),
            (r_ - 1, true),
            (r_, false),
            (r_ - 1, false),
            (r_ - 2, true),
            (r_ + 1, false),
            (r_ + 2, false),
            (r_ - 2, false),
            (r_ - 3, true),
            (0, false),
        ];
        for (i, (c, want)) in steps.into_iter().enumerate() {
            assert_eq!(r.accept(c), want, "step {i}: counter {c}");
        }
    }

    #[test]
    fn whole_window_in_reverse_then_slide() {
        let mut r = Replay::default();
        for i in (1..=WINDOW).rev() {
            assert!(r.accept(i), "{i}");
        }
        assert!(r.accept(0), "exactly WINDOW behind the highest is still inside");
        assert!(!r.accept(0));
        let mut r = Replay::default();
        for i in (2..=WINDOW + 1).rev() {
            assert!(r.accept(i));
        }
        assert!(r.accept(1));
        assert!(!r.accept(0), "WINDOW + 1 behind is outside");
    }
}
