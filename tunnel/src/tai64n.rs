//! TAI64N timestamps for handshake initiations (whitepaper §5.1): replay protection that
//! survives restarts, because it is wall-clock based.

use std::time::Duration;

pub type Timestamp = [u8; 12];

/// TAI64 label of the Unix epoch: 2^62 + 10 (the TAI−UTC offset of 1970).
const BASE: u64 = 0x4000_0000_0000_000a;
/// Nanoseconds are rounded down to 2^24 ns (≈16.8 ms, the largest power of two below
/// 1 s / 50) so the timestamp does not leak a fine-grained clock; the kernel does the same.
const NANO_MASK: u32 = !((1 << 24) - 1);

/// TAI64N of a wall-clock time given as the duration since the Unix epoch.
pub fn from_unix(wall: Duration) -> Timestamp {
    let mut t = [0u8; 12];
    t[..8].copy_from_slice(&(BASE + wall.as_secs()).to_be_bytes());
    t[8..].copy_from_slice(&(wall.subsec_nanos() & NANO_MASK).to_be_bytes());
    t
}

/// Big-endian fields make bytewise order equal to time order.
pub fn is_after(a: &Timestamp, b: &Timestamp) -> bool {
    a > b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_and_rounding() {
        let t = from_unix(Duration::new(0, (1 << 24) + 5));
        assert_eq!(&t[..8], &BASE.to_be_bytes());
        assert_eq!(&t[8..], &(1u32 << 24).to_be_bytes());
        // Two times within one 2^24 ns bucket give the same stamp: not "after".
        let a = from_unix(Duration::new(100, 1));
        let b = from_unix(Duration::new(100, (1 << 24) - 1));
        assert_eq!(a, b);
        assert!(!is_after(&b, &a));
        assert!(is_after(&from_unix(Duration::new(100, 1 << 24)), &a));
        assert!(is_after(&from_unix(Duration::new(101, 0)), &from_unix(Duration::new(100, 999_999_999))));
    }
}
