//! Per-source token bucket for handshakes under load (kernel ratelimiter.c): 20 per second,
//! burst 5, IPv6 sources grouped by /64 so one host cannot dodge it with many addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

const PACKET_COST: u64 = 1_000_000_000 / 20;
const TOKEN_MAX: u64 = PACKET_COST * 5;
const GC_INTERVAL: Duration = Duration::from_secs(1);
/// Bounds memory under a spoofed-source flood; new sources are refused when full.
const MAX_ENTRIES: usize = 1 << 16;

#[derive(Default)]
pub struct RateLimiter {
    buckets: HashMap<u128, (u64, Duration)>,
    last_gc: Duration,
}

fn key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => u32::from(v4) as u128,
            // The /64 prefix, tagged so it cannot collide with an IPv4 key.
            None => (u128::from(a) >> 64) | (1 << 127),
        },
    }
}

impl RateLimiter {
    pub fn allow(&mut self, ip: IpAddr, now: Duration) -> bool {
        if now >= self.last_gc + GC_INTERVAL {
            self.buckets.retain(|_, (_, last)| now < *last + GC_INTERVAL);
            self.last_gc = now;
        }
        let k = key(ip);
        if let Some((tokens, last)) = self.buckets.get_mut(&k) {
            let earned = now.saturating_sub(*last).as_nanos().min(TOKEN_MAX as u128) as u64;
            *tokens = (*tokens + earned).min(TOKEN_MAX);
            *last = now;
            if *tokens >= PACKET_COST {
                *tokens -= PACKET_COST;
                return true;
            }
            return false;
        }
        if self.buckets.len() >= MAX_ENTRIES {
            return false;
        }
        self.buckets.insert(k, (TOKEN_MAX - PACKET_COST, now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_twenty_per_second() {
        let mut r = RateLimiter::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t = Duration::from_secs(10);
        // A new source may send 5 at once, then must wait 50 ms per packet.
        for i in 0..5 {
            assert!(r.allow(ip, t), "burst {i}");
        }
        assert!(!r.allow(ip, t));
        assert!(!r.allow(ip, t + Duration::from_millis(49)));
        assert!(r.allow(ip, t + Duration::from_millis(99)));
        // Another source is independent; IPv6 neighbours in one /64 share a bucket.
        assert!(r.allow("192.0.2.2".parse().unwrap(), t));
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        for _ in 0..5 {
            assert!(r.allow(a, t));
        }
        assert!(!r.allow(b, t));
        assert!(r.allow("2001:db8:0:1::1".parse().unwrap(), t));
    }
}
