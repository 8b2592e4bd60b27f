//! Offline checks of the CRD's validation: the example peer passes both the structural
//! openAPIV3Schema (JSON-schema draft 4, via the `jsonschema` crate) and the CEL rules (via
//! `kube-cel`, a Rust port of the API server's CEL libraries), and bad keys, CIDRs and
//! endpoints are refused with the intended messages. No API server is involved: this shows
//! what the schema says, not that a particular kube-apiserver version enforces it identically.

use kube::CustomResourceExt;
use serde_json::{json, Value};
use wgmesh_api::WireGuardPeer;

fn schema() -> Value {
    let crd = serde_json::to_value(WireGuardPeer::crd()).unwrap_or_default();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn example() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/peer.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn structural_errors(obj: &Value) -> Vec<String> {
    let schema = schema();
    let v = jsonschema::draft4::new(&schema).unwrap_or_else(|e| panic!("schema: {e}"));
    v.iter_errors(obj).map(|e| e.to_string()).collect()
}

fn cel_errors(obj: &Value) -> Vec<String> {
    match kube_cel::Validator::new().validate(&schema(), obj, None) {
        Ok(()) => Vec::new(),
        Err(errs) => errs.iter().map(|e| e.message.clone()).collect(),
    }
}

fn with_spec(field: &str, value: Value) -> Value {
    let mut obj = example();
    obj["spec"][field] = value;
    obj
}

#[test]
fn example_peer_is_valid_for_schema_cel_and_the_operator() {
    let obj = example();
    assert_eq!(structural_errors(&obj), Vec::<String>::new());
    assert_eq!(cel_errors(&obj), Vec::<String>::new());
    // and it deserializes into the Rust type the operator uses
    let peer: WireGuardPeer = serde_json::from_value(obj).unwrap_or_else(|e| panic!("{e}"));
    assert!(peer
        .spec
        .public_key
        .parse::<wgmesh_api::PublicKey>()
        .is_ok());
}

#[test]
fn cel_rules_compile() {
    let compiled = kube_cel::compile_schema(&schema());
    let errs: Vec<String> = compiled
        .compilation_errors()
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    assert_eq!(errs, Vec::<String>::new());
}

#[test]
fn bad_public_keys_are_refused_with_a_clear_message() {
    for bad in [
        json!("not-a-key"),
        json!("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dh="),
        json!("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg"),
    ] {
        let obj = with_spec("publicKey", bad.clone());
        assert!(
            !structural_errors(&obj).is_empty(),
            "{bad} passed the schema"
        );
        let cel = cel_errors(&obj);
        assert!(
            cel.iter()
                .any(|m| m.contains("publicKey must be a WireGuard public key")),
            "{bad}: {cel:?}"
        );
    }
    let zero = with_spec(
        "publicKey",
        json!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
    );
    assert!(cel_errors(&zero).iter().any(|m| m.contains("all-zero")));
}

#[test]
fn bad_cidrs_are_refused_with_a_clear_message() {
    let obj = with_spec("allowedIPs", json!(["192.168.100.7/24"]));
    assert!(
        structural_errors(&obj).is_empty(),
        "host bits are a CEL-only check"
    );
    assert!(cel_errors(&obj)
        .iter()
        .any(|m| m.contains("zero host bits")));

    for bad in [
        "300.0.0.0/8",
        "10.0.0.0/33",
        "fd00::/129",
        "::ffff:10.0.0.0/104",
    ] {
        let obj = with_spec("allowedIPs", json!([bad]));
        assert!(
            cel_errors(&obj)
                .iter()
                .any(|m| m.contains("must be an IPv4 or IPv6 CIDR")),
            "{bad}: {:?}",
            cel_errors(&obj)
        );
    }
    for bad in [json!(["10.0.0.0"]), json!(["example.com/24"]), json!([])] {
        let obj = with_spec("allowedIPs", bad.clone());
        assert!(
            !structural_errors(&obj).is_empty(),
            "{bad} passed the schema"
        );
    }
}

#[test]
fn bad_endpoints_are_refused_with_a_clear_message() {
    let cases = [
        ("vpn.example.com", "endpoint must be host:port"),
        ("2001:db8::1:51820", "endpoint must be host:port"),
        (
            "203.0.113.7:70000",
            "endpoint port must be between 1 and 65535",
        ),
        ("203.0.113.7:0", "endpoint port must be between 1 and 65535"),
        ("[203.0.113.7]:51820", "must be an IPv6 address"),
    ];
    for (bad, msg) in cases {
        let obj = with_spec("endpoint", json!(bad));
        let cel = cel_errors(&obj);
        assert!(cel.iter().any(|m| m.contains(msg)), "{bad}: {cel:?}");
    }
    for good in [
        "[2001:db8::7]:51820",
        "203.0.113.7:51820",
        "vpn.example.com:1",
    ] {
        assert_eq!(
            cel_errors(&with_spec("endpoint", json!(good))),
            Vec::<String>::new(),
            "{good}"
        );
        assert_eq!(
            structural_errors(&with_spec("endpoint", json!(good))),
            Vec::<String>::new(),
            "{good}"
        );
    }
}

#[test]
fn keepalive_range_is_enforced_by_the_schema() {
    assert!(!structural_errors(&with_spec("persistentKeepalive", json!(70000))).is_empty());
    assert!(!structural_errors(&with_spec("persistentKeepalive", json!(-1))).is_empty());
}
