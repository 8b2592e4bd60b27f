//! The committed CRD must be exactly what `wgmesh-operator crdgen` prints from the Rust types.
//! On failure regenerate it: cargo run -p wgmesh-operator -- crdgen > deploy/crds/wireguardpeers.wgmesh.io.yaml

use std::process::Command;

const COMMITTED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/crds/wireguardpeers.wgmesh.io.yaml"
);

fn committed() -> String {
    std::fs::read_to_string(COMMITTED).unwrap_or_else(|e| panic!("{COMMITTED}: {e}"))
}

#[test]
fn committed_crd_matches_the_rust_types() {
    let generated = wgmesh_operator::crdgen::crd_yaml().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        generated == committed(),
        "deploy/crds/wireguardpeers.wgmesh.io.yaml is stale; regenerate it with \
         `cargo run -p wgmesh-operator -- crdgen > deploy/crds/wireguardpeers.wgmesh.io.yaml`"
    );
}

#[test]
fn crdgen_command_prints_the_committed_crd() {
    let out = Command::new(env!("CARGO_BIN_EXE_wgmesh-operator"))
        .arg("crdgen")
        .output()
        .unwrap_or_else(|e| panic!("running crdgen: {e}"));
    assert!(out.status.success());
    // no assert_eq: a diff of two whole CRDs is unreadable; the message says how to fix it
    assert!(
        String::from_utf8_lossy(&out.stdout) == committed(),
        "`wgmesh-operator crdgen` output differs from deploy/crds/wireguardpeers.wgmesh.io.yaml"
    );
}

#[test]
fn committed_crd_has_the_promised_shape() {
    let crd: serde_json::Value =
        serde_yaml::from_str(&committed()).unwrap_or_else(|e| panic!("{e}"));
    let v = &crd["spec"]["versions"][0];
    assert_eq!(crd["spec"]["scope"], "Cluster");
    assert_eq!(crd["spec"]["group"], "wgmesh.io");
    assert_eq!(v["name"], "v1alpha1");
    assert_eq!(v["subresources"]["status"], serde_json::json!({}));
    let cols: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        cols,
        [
            "Endpoint",
            "Allowed IPs",
            "Handshake",
            "Valid",
            "Age",
            "Node",
            "Reason"
        ]
    );
}
