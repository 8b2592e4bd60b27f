//! prevResult: which interfaces it names, and passing it on as our ADD result.

use rscni_types::{
    legacy,
    types::{CNIResult, CNIResultWithVersion},
    version::SpecVersion,
};

use crate::error::CniError;

/// The interfaces a chained plugin should touch, split by namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    /// Interfaces inside the pod's netns (prevResult entries with a sandbox).
    pub pod: Vec<String>,
    /// Host-netns interfaces (no sandbox): bridges, host-side veths, ...
    pub host: Vec<String>,
}

/// Reads the interfaces out of prevResult; falls back to CNI_IFNAME when the previous
/// plugin listed no sandboxed interface, so the pod always gets the mesh MTU.
pub fn targets(prev: &CNIResult, ifname: &str) -> Targets {
    let mut pod = Vec::new();
    let mut host = Vec::new();
    for iface in &prev.interfaces {
        let in_pod = iface.sandbox.as_deref().is_some_and(|s| !s.is_empty());
        let list = if in_pod { &mut pod } else { &mut host };
        if !list.contains(&iface.name) {
            list.push(iface.name.clone());
        }
    }
    if pod.is_empty() {
        pod.push(ifname.to_string());
    }
    Targets { pod, host }
}

/// The prevResult we pass on, in the layout of `version`; from 1.1.0 on the result has an
/// `mtu` per interface, so ours are filled in for the interfaces we set.
pub fn add_output(
    version: SpecVersion,
    mut prev: CNIResult,
    changed: &[String],
    mtu: u32,
) -> Result<String, CniError> {
    if version >= SpecVersion::new(1, 1, 0) {
        for iface in &mut prev.interfaces {
            if changed.contains(&iface.name) {
                iface.mtu = Some(mtu);
            }
        }
    }
    let json = if version.is_legacy() {
        serde_json::to_string(&legacy::CNIResult::new(version, prev))
    } else {
        serde_json::to_string(&CNIResultWithVersion::new(version, prev))
    };
    json.map_err(|e| CniError::Io(format!("cannot encode the result: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn recorded(version: &str) -> (Value, CNIResult) {
        let path = format!(
            "{}/tests/data/bridge-result-{version}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let raw = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{e}"));
        let value: Value = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{e}"));
        let typed: CNIResult = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{e}"));
        (value, typed)
    }

    #[test]
    fn real_bridge_result_splits_pod_and_host_side() {
        let (_, prev) = recorded("1.0.0");
        let t = targets(&prev, "eth9");
        assert_eq!(t.pod, vec!["eth0"]);
        assert_eq!(t.host.len(), 2);
        assert!(t.host[1].starts_with("veth"));
    }

    #[test]
    fn no_sandboxed_interface_falls_back_to_ifname() {
        let t = targets(&CNIResult::default(), "eth0");
        assert_eq!(t.pod, vec!["eth0"]);
        assert!(t.host.is_empty());
    }

    #[test]
    fn legacy_result_passes_through_unchanged() {
        let (value, prev) = recorded("0.4.0");
        let out = add_output(SpecVersion::new(0, 4, 0), prev, &["eth1".into()], 1320)
            .unwrap_or_else(|e| panic!("{e}"));
        let out: Value = serde_json::from_str(&out).unwrap_or_default();
        assert_eq!(out, value);
    }

    #[test]
    fn v1_result_passes_through_without_empty_dns() {
        let (mut value, prev) = recorded("1.0.0");
        let out = add_output(SpecVersion::new(1, 0, 0), prev, &["eth0".into()], 1320)
            .unwrap_or_else(|e| panic!("{e}"));
        let out: Value = serde_json::from_str(&out).unwrap_or_default();
        // libcni drops an all-empty "dns" from 1.x results too; nothing else may change.
        if let Some(o) = value.as_object_mut() {
            o.remove("dns");
        }
        assert_eq!(out, value);
    }

    #[test]
    fn v1_1_result_reports_the_mtu_we_set() {
        let (_, prev) = recorded("1.0.0");
        let out = add_output(SpecVersion::new(1, 1, 0), prev, &["eth0".into()], 1320)
            .unwrap_or_else(|e| panic!("{e}"));
        let out: Value = serde_json::from_str(&out).unwrap_or_default();
        assert_eq!(out["cniVersion"], "1.1.0");
        assert_eq!(out["interfaces"][2]["mtu"], 1320);
        assert_eq!(out["interfaces"][0].get("mtu"), None);
        assert_eq!(out["ips"][0]["address"], "10.244.77.2/24");
    }
}
