//! Hand-written OpenAPI fragments for `WireGuardPeer` fields: patterns that offline JSON-schema
//! checks understand, plus CEL rules (`x-kubernetes-validations`) whose messages the API server
//! returns verbatim, so `kubectl apply` of a bad key or CIDR fails with a readable reason.
//! The IP/CIDR CEL library (`isCIDR`, `cidr`, `isIP`) needs Kubernetes >= 1.31.

use schemars::{json_schema, Schema, SchemaGenerator};
use serde_json::{json, Value};

use crate::cidr::{CIDR_MAX_LEN, CIDR_PATTERN};
use crate::endpoint::{ENDPOINT_MAX_LEN, ENDPOINT_PATTERN};
use crate::key::{KEY_PATTERN, KEY_TEXT_LEN};

/// Most prefixes one peer may carry; bounds the CEL cost the API server estimates.
pub const MAX_ALLOWED_IPS: usize = 256;

fn rule(rule: String, message: &str) -> Value {
    json!({ "rule": rule, "message": message })
}

/// `spec.publicKey`
pub fn public_key(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "WireGuard public key of the peer: 44 base64 characters as printed by `wg pubkey`.",
        "type": "string",
        "minLength": KEY_TEXT_LEN,
        "maxLength": KEY_TEXT_LEN,
        "pattern": KEY_PATTERN,
        "x-kubernetes-validations": [
            rule(
                format!("self.matches(r'{KEY_PATTERN}')"),
                "publicKey must be a WireGuard public key: the base64 encoding of 32 bytes, 44 characters ending in '=', as printed by `wg pubkey`",
            ),
            rule(
                "self != 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA='".into(),
                "publicKey must not be the all-zero key",
            ),
        ]
    })
}

/// `spec.endpoint`
pub fn endpoint(_: &mut SchemaGenerator) -> Schema {
    let port = "int(self.substring(self.lastIndexOf(':') + 1))";
    json_schema!({
        "description": "UDP endpoint the nodes dial: 203.0.113.7:51820, [2001:db8::7]:51820 or vpn.example.com:51820. Omit for peers that only dial in.",
        "type": "string",
        "maxLength": ENDPOINT_MAX_LEN,
        "pattern": ENDPOINT_PATTERN,
        "x-kubernetes-validations": [
            rule(
                format!("self.matches(r'{ENDPOINT_PATTERN}')"),
                "endpoint must be host:port, [ipv6]:port or dns-name:port, e.g. 203.0.113.7:51820",
            ),
            rule(
                format!("!self.matches(r'{ENDPOINT_PATTERN}') || ({port} >= 1 && {port} <= 65535)"),
                "endpoint port must be between 1 and 65535",
            ),
            rule(
                format!("!self.matches(r'{ENDPOINT_PATTERN}') || !self.startsWith('[') || (isIP(self.substring(1, self.lastIndexOf(']'))) && ip(self.substring(1, self.lastIndexOf(']'))).family() == 6)"),
                "the address inside [...] must be an IPv6 address; write IPv4 endpoints without brackets",
            ),
        ]
    })
}

/// `spec.allowedIPs`
pub fn allowed_ips(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "IPv4 and IPv6 prefixes routed to this peer, host bits zero (10.8.0.0/24, fd00:8::/64). Must not overlap another peer's prefixes or the cluster's pod CIDRs.",
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_ALLOWED_IPS,
        "x-kubernetes-list-type": "set",
        "items": {
            "type": "string",
            "maxLength": CIDR_MAX_LEN,
            "pattern": CIDR_PATTERN,
            "x-kubernetes-validations": [
                rule(
                    "isCIDR(self)".into(),
                    "each allowedIPs entry must be an IPv4 or IPv6 CIDR such as 10.8.0.0/24 or fd00:8::/64",
                ),
                rule(
                    "!isCIDR(self) || cidr(self) == cidr(self).masked()".into(),
                    "allowedIPs entries must have zero host bits: write the network address (10.8.0.0/24, not 10.8.0.5/24)",
                ),
            ]
        }
    })
}

/// `spec.persistentKeepalive`
pub fn keepalive(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Seconds between keepalive packets the nodes send to this peer (0 or unset: off); 25 is usual behind NAT.",
        "type": "integer",
        "minimum": 0,
        "maximum": 65535
    })
}

/// `spec.nodeName`
pub fn node_name(gen: &mut SchemaGenerator) -> Schema {
    let mut s = dns_subdomain(gen);
    s.insert(
        "description".into(),
        "Name of the Node this peer represents; set only by wgmesh-operator on node peers.".into(),
    );
    s
}

/// A Kubernetes object name (DNS-1123 subdomain).
pub fn dns_subdomain(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": 253,
        "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    })
}

/// A namespace name (DNS-1123 label).
pub fn dns_label(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": 63,
        "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    })
}

/// A Secret data key.
pub fn secret_key(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": 253,
        "pattern": "^[-._a-zA-Z0-9]+$"
    })
}

/// `status.conditions`: a map list keyed by `type`, so the operator's server-side apply owns
/// its own conditions and never clobbers ones another manager adds.
pub fn conditions(gen: &mut SchemaGenerator) -> Schema {
    let mut s =
        gen.subschema_for::<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>();
    s.insert("x-kubernetes-list-type".into(), "map".into());
    s.insert("x-kubernetes-list-map-keys".into(), json!(["type"]));
    s
}
