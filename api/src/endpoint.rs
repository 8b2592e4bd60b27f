//! Peer endpoints: `1.2.3.4:51820`, `[2001:db8::1]:51820` or `vpn.example.com:51820`.
//! DNS names are kept as text; the node agent resolves them, so a changed record is picked up.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::cidr::parse_ip;
use crate::error::EndpointError;

/// Loose pattern used in the CRD; the exact check is this parser plus the CEL rules.
pub const ENDPOINT_PATTERN: &str = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$";

/// Longest endpoint text: a 253-character DNS name, `:` and a 5-digit port.
pub const ENDPOINT_MAX_LEN: usize = 259;

/// Host part of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// A literal address.
    Ip(IpAddr),
    /// A DNS name (lower-cased, without a trailing dot).
    Dns(String),
}

/// A UDP endpoint of a WireGuard peer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// Address or DNS name.
    pub host: Host,
    /// UDP port, never 0.
    pub port: u16,
}

impl Endpoint {
    /// An endpoint at a literal address.
    pub fn ip(ip: IpAddr, port: u16) -> Self {
        Endpoint {
            host: Host::Ip(ip),
            port,
        }
    }

    /// The address, when the host is one rather than a DNS name.
    pub fn literal_ip(&self) -> Option<IpAddr> {
        match self.host {
            Host::Ip(ip) => Some(ip),
            Host::Dns(_) => None,
        }
    }
}

fn parse_port(s: &str) -> Result<u16, EndpointError> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EndpointError::Port(s.to_owned()));
    }
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err(EndpointError::Port(s.to_owned())),
        Ok(p) => Ok(p),
    }
}

/// RFC 1123 host name: labels of 1-63 letters, digits or hyphens, not starting or ending with a
/// hyphen, at most 253 characters; an all-numeric last label is refused since it is a typo'd IP.
fn valid_dns_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels_ok = name.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    let last_numeric = name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && !last_numeric
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix('[') {
            let (host, port) = rest
                .split_once("]:")
                .ok_or_else(|| EndpointError::Format(s.to_owned()))?;
            let ip = parse_ip(host).map_err(|_| EndpointError::Host(host.to_owned()))?;
            if !ip.is_ipv6() {
                return Err(EndpointError::Host(host.to_owned()));
            }
            return Ok(Endpoint::ip(ip, parse_port(port)?));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| EndpointError::Format(s.to_owned()))?;
        if host.contains(':') {
            // a bare IPv6 address is ambiguous with its port; demand brackets like `wg` does
            return Err(EndpointError::Format(s.to_owned()));
        }
        let port = parse_port(port)?;
        if let Ok(ip) = parse_ip(host) {
            return Ok(Endpoint::ip(ip, port));
        }
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if !valid_dns_name(&name) {
            return Err(EndpointError::Host(host.to_owned()));
        }
        Ok(Endpoint {
            host: Host::Dns(name),
            port,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Dns(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms_and_roundtrips() {
        for s in [
            "192.0.2.1:51820",
            "[2001:db8::1]:51820",
            "vpn.example.com:443",
        ] {
            let e: Endpoint = s.parse().unwrap();
            assert_eq!(e.to_string(), s);
        }
        let e: Endpoint = "VPN.Example.com.:1".parse().unwrap();
        assert_eq!(e.host, Host::Dns("vpn.example.com".into()));
    }

    #[test]
    fn rejects_unparsable_endpoints() {
        for bad in [
            "192.0.2.1",
            "192.0.2.1:0",
            "192.0.2.1:65536",
            "192.0.2.1:-1",
            "2001:db8::1:51820",
            "[192.0.2.1]:51820",
            "[2001:db8::1]51820",
            "1.2.3:51820",
            "-bad.example.com:1",
            "under_score.example.com:1",
            ":51820",
            "",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad} accepted");
        }
    }
}
