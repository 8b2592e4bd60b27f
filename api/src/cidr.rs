//! IPv4/IPv6 CIDR prefixes. Host bits must be zero: `10.1.2.3/16` is rejected rather than
//! silently masked, because it usually means the author meant a different prefix; the CRD's
//! CEL rule (`cidr(self) == cidr(self).masked()`) enforces the same rule in the API server.

use std::cmp::Ordering;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::error::CidrError;

/// Loose pattern used in the CRD so offline JSON-schema checks catch gross mistakes; the exact
/// check is the CEL `isCIDR` rule and this parser.
pub const CIDR_PATTERN: &str = "^[0-9A-Fa-f:.]+/[0-9]{1,3}$";

/// Longest textual CIDR: a full IPv6 address (39 chars) plus `/128`.
pub const CIDR_MAX_LEN: usize = 43;

/// An IP prefix with all host bits zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpCidr {
    addr: IpAddr,
    prefix: u8,
}

/// Address family, used to keep IPv4 and IPv6 ranges apart in interval checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4
    V4,
    /// IPv6
    V6,
}

impl IpCidr {
    /// Builds a prefix, rejecting an out-of-range length or set host bits.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, CidrError> {
        let max = max_prefix(addr);
        if prefix > max {
            return Err(CidrError::PrefixTooLong { prefix, max });
        }
        let cidr = IpCidr { addr, prefix };
        if cidr.network_bits() != addr_bits(addr) {
            return Err(CidrError::HostBitsSet {
                masked: IpCidr {
                    addr: from_bits(addr, cidr.network_bits()),
                    prefix,
                }
                .to_string(),
            });
        }
        Ok(cidr)
    }

    /// A single-address prefix (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        IpCidr {
            addr,
            prefix: max_prefix(addr),
        }
    }

    /// Network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// Prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// IPv4 or IPv6.
    pub fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// First and last address as integers (IPv4 in the low 32 bits).
    pub fn range(&self) -> (u128, u128) {
        let start = self.network_bits();
        let host_bits = u32::from(max_prefix(self.addr) - self.prefix);
        let span = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        (start, start | span)
    }

    /// True if the two prefixes share at least one address (one then contains the other).
    pub fn overlaps(&self, other: &IpCidr) -> bool {
        if self.family() != other.family() {
            return false;
        }
        let (a0, a1) = self.range();
        let (b0, b1) = other.range();
        a0 <= b1 && b0 <= a1
    }

    /// True if every address of `other` lies inside this prefix.
    pub fn covers(&self, other: &IpCidr) -> bool {
        let ((a0, a1), (b0, b1)) = (self.range(), other.range());
        self.family() == other.family() && a0 <= b0 && b1 <= a1
    }

    /// True if `ip` lies inside this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.overlaps(&IpCidr::host(ip))
    }

    /// The `n`-th address of the prefix (0 = network address), if it exists.
    pub fn nth(&self, n: u128) -> Option<IpAddr> {
        let (start, end) = self.range();
        let bits = start.checked_add(n)?;
        (bits <= end).then(|| from_bits(self.addr, bits))
    }

    fn network_bits(&self) -> u128 {
        let bits = addr_bits(self.addr);
        let host_bits = u32::from(max_prefix(self.addr) - self.prefix);
        if host_bits >= 128 {
            0
        } else {
            (bits >> host_bits) << host_bits
        }
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn addr_bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_bits(family_of: IpAddr, bits: u128) -> IpAddr {
    match family_of {
        // truncation is intended: IPv4 ranges live in the low 32 bits
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(bits as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(bits)),
    }
}

/// Parses an IP address the way the Kubernetes CEL `ip`/`cidr` library does: no zones, no
/// IPv4-mapped IPv6, no leading zeros (Rust's parser already refuses those).
pub fn parse_ip(s: &str) -> Result<IpAddr, CidrError> {
    if s.contains('%') {
        return Err(CidrError::Address(s.to_owned()));
    }
    let ip: IpAddr = s.parse().map_err(|_| CidrError::Address(s.to_owned()))?;
    if let IpAddr::V6(v6) = ip {
        if v6.to_ipv4_mapped().is_some() {
            return Err(CidrError::Ipv4Mapped(s.to_owned()));
        }
    }
    Ok(ip)
}

impl FromStr for IpCidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| CidrError::MissingPrefix(s.to_owned()))?;
        let addr = parse_ip(addr)?;
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CidrError::Prefix(prefix.to_owned()));
        }
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| CidrError::Prefix(prefix.to_owned()))?;
        IpCidr::new(addr, prefix)
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl fmt::Debug for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IpCidr({self})")
    }
}

impl Ord for IpCidr {
    // IPv4 before IPv6, then by network address, then shorter prefix first: a stable wire order
    fn cmp(&self, other: &Self) -> Ordering {
        (self.family(), self.network_bits(), self.prefix).cmp(&(
            other.family(),
            other.network_bits(),
            other.prefix,
        ))
    }
}

impl PartialOrd for IpCidr {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> IpCidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_v4_and_v6() {
        assert_eq!(c("10.244.1.0/24").to_string(), "10.244.1.0/24");
        assert_eq!(c("fd00:10:244:1::/64").to_string(), "fd00:10:244:1::/64");
        assert_eq!(c("0.0.0.0/0").range(), (0, u128::from(u32::MAX)));
        assert_eq!(c("::/0").range(), (0, u128::MAX));
        assert_eq!(c("192.0.2.7/32").range().0, c("192.0.2.7/32").range().1);
    }

    #[test]
    fn rejects_host_bits_with_the_masked_suggestion() {
        let err = "10.1.2.3/16".parse::<IpCidr>().unwrap_err();
        assert_eq!(
            err,
            CidrError::HostBitsSet {
                masked: "10.1.0.0/16".into()
            }
        );
        assert!(err.to_string().contains("10.1.0.0/16"));
    }

    #[test]
    fn rejects_malformed_input() {
        for bad in [
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0.0/+8",
            "10.0.0.0/0008",
            "010.0.0.0/8",
            "fe80::%eth0/64",
            "::ffff:10.0.0.0/104",
            "example.com/24",
            "",
        ] {
            assert!(bad.parse::<IpCidr>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn overlap_is_family_aware_and_symmetric() {
        assert!(c("10.0.0.0/8").overlaps(&c("10.1.0.0/16")));
        assert!(c("10.1.0.0/16").overlaps(&c("10.0.0.0/8")));
        assert!(!c("10.0.0.0/24").overlaps(&c("10.0.1.0/24")));
        assert!(!c("0.0.0.0/0").overlaps(&c("::/0")));
        // covers: the whole of the other, of the same family
        assert!(c("10.0.0.0/8").covers(&c("10.1.0.0/16")) && c("10.0.0.0/8").covers(&c("10.0.0.0/8")));
        assert!(!c("10.1.0.0/16").covers(&c("10.0.0.0/8")) && !c("10.0.0.0/24").covers(&c("10.0.1.0/24")));
        assert!(!c("0.0.0.0/0").covers(&c("::/0")) && c("::/0").covers(&c("fd00::/64")));
        assert!(c("10.0.0.0/24").contains("10.0.0.255".parse().unwrap()));
    }

    #[test]
    fn nth_address_stays_inside() {
        assert_eq!(
            c("10.244.1.0/24").nth(1),
            Some("10.244.1.1".parse().unwrap())
        );
        assert_eq!(c("10.244.1.7/32").nth(1), None);
        assert_eq!(c("fd00::/64").nth(1), Some("fd00::1".parse().unwrap()));
    }

    #[test]
    fn order_is_v4_first_then_address_then_prefix() {
        let mut v = [
            c("fd00::/64"),
            c("10.0.1.0/24"),
            c("10.0.0.0/24"),
            c("10.0.0.0/16"),
        ];
        v.sort();
        let s: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(
            s,
            ["10.0.0.0/16", "10.0.0.0/24", "10.0.1.0/24", "fd00::/64"]
        );
    }
}
