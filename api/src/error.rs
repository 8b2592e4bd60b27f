//! Parse errors of the value types. Messages are shown to users in conditions and Events, so
//! they say what is wrong and what a valid value looks like.

use thiserror::Error;

/// Why a text is not a WireGuard public key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// Not 44 characters long.
    #[error("public key must be 44 base64 characters (as printed by `wg pubkey`), got {0}")]
    Length(usize),
    /// Not canonical base64 of 32 bytes.
    #[error("public key is not the standard base64 encoding of 32 bytes")]
    Base64,
    /// All zero bytes.
    #[error("public key is all zeros, which no real WireGuard device uses")]
    Zero,
}

/// Why a text is not an IP prefix.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CidrError {
    /// No `/len` part.
    #[error("{0:?} has no prefix length; write it as a CIDR such as 10.0.0.0/24 or fd00::/64")]
    MissingPrefix(String),
    /// Address part does not parse.
    #[error("{0:?} is not an IPv4 or IPv6 address")]
    Address(String),
    /// IPv4-mapped IPv6 addresses are ambiguous between families.
    #[error("{0:?} is an IPv4-mapped IPv6 address; use the plain IPv4 form")]
    Ipv4Mapped(String),
    /// Prefix length not a number.
    #[error("prefix length {0:?} is not a number")]
    Prefix(String),
    /// Prefix length larger than the family allows.
    #[error("prefix length /{prefix} is longer than /{max}")]
    PrefixTooLong {
        /// Given length.
        prefix: u8,
        /// Family maximum.
        max: u8,
    },
    /// Host bits set after the prefix.
    #[error("host bits are set; did you mean {masked}?")]
    HostBitsSet {
        /// The network the author probably meant.
        masked: String,
    },
}

/// Why a text is not a peer endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EndpointError {
    /// Not `host:port` or `[ipv6]:port`.
    #[error("endpoint {0:?} must be host:port, [ipv6]:port or dns-name:port")]
    Format(String),
    /// Host part is neither an address nor a DNS name.
    #[error("endpoint host {0:?} is not an IP address or a DNS name")]
    Host(String),
    /// Port not in 1..=65535.
    #[error("endpoint port {0:?} is not a number between 1 and 65535")]
    Port(String),
}
