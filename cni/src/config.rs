//! Decoding the network configuration a runtime hands the plugin on stdin.

use std::path::PathBuf;

use rscni_types::{
    types::{Cmd, InterfaceName, NetConf},
    version::SpecVersion,
};
use serde_json::Value;

use crate::{error::CniError, readiness::DEFAULT_READINESS_PATH};

/// The spec versions this plugin speaks: 0.4.0, 1.0.0 and 1.1.0 as issue 5 asks, plus 0.3.x
/// because Calico's and flannel's stock conflists still declare 0.3.1 and the installer
/// keeps the primary's version (0.3.x results share the 0.4.0 layout).
pub const SUPPORTED_VERSIONS: [SpecVersion; 5] = [
    SpecVersion::new(0, 3, 0),
    SpecVersion::new(0, 3, 1),
    SpecVersion::new(0, 4, 0),
    SpecVersion::new(1, 0, 0),
    SpecVersion::new(1, 1, 0),
];

/// Config keys of our plugin entry, spelled once so the installer writes what the parser reads.
pub const KEY_MTU: &str = "mtu";
pub const KEY_UNDERLAY_INTERFACE: &str = "underlayInterface";
pub const KEY_READINESS_PATH: &str = "readinessPath";
pub const KEY_REQUIRE_READINESS: &str = "requireReadiness";

/// The smallest and largest MTU Linux accepts for an IPv4-capable interface.
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=65535;

/// The decoded configuration: the standard part plus our own keys.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub net: NetConf,
    pub version: SpecVersion,
    /// Fixed mesh MTU; `None` means underlay MTU minus the tunnel overhead.
    pub mtu: Option<u32>,
    /// Interface whose MTU is the underlay MTU; `None` means the default-route interfaces.
    pub underlay_interface: Option<String>,
    pub readiness_path: PathBuf,
    pub require_readiness: bool,
}

/// Decodes stdin for `cmd`; never panics, whatever the bytes (see the proptest below).
pub fn parse(stdin: &[u8], cmd: Cmd) -> Result<PluginConfig, CniError> {
    let (net, version) = decode(stdin, cmd)?;
    from_net(net, version)
}

/// First step: the standard part and a version both sides speak.
pub fn decode(stdin: &[u8], cmd: Cmd) -> Result<(NetConf, SpecVersion), CniError> {
    let net: NetConf =
        serde_json::from_slice(stdin).map_err(|e| CniError::Decode(e.to_string()))?;
    let version = negotiate(&net, cmd)?;
    Ok((net, version))
}

/// Second step: the network name and our own keys.
pub fn from_net(net: NetConf, version: SpecVersion) -> Result<PluginConfig, CniError> {
    net.validate_name().map_err(CniError::from)?;
    let custom = &net.custom;
    let mtu = match custom.get(KEY_MTU) {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_mtu(v)?),
    };
    let underlay_interface = match custom.get(KEY_UNDERLAY_INTERFACE) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            InterfaceName::try_from(s.clone())
                .map(|_| s.clone())
                .map_err(|e| invalid(KEY_UNDERLAY_INTERFACE, e.details()))?,
        ),
        Some(_) => return Err(invalid(KEY_UNDERLAY_INTERFACE, "must be a string")),
    };
    let readiness_path = match custom.get(KEY_READINESS_PATH) {
        None | Some(Value::Null) => PathBuf::from(DEFAULT_READINESS_PATH),
        Some(Value::String(s)) if s.starts_with('/') => PathBuf::from(s),
        Some(_) => return Err(invalid(KEY_READINESS_PATH, "must be an absolute path")),
    };
    let require_readiness = match custom.get(KEY_REQUIRE_READINESS) {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid(KEY_REQUIRE_READINESS, "must be true or false")),
    };
    Ok(PluginConfig {
        net,
        version,
        mtu,
        underlay_interface,
        readiness_path,
        require_readiness,
    })
}

/// Checks the declared version against ours and against what `cmd` needs (CHECK ≥ 0.4.0,
/// STATUS/GC ≥ 1.1.0).
fn negotiate(net: &NetConf, cmd: Cmd) -> Result<SpecVersion, CniError> {
    let supported = SUPPORTED_VERSIONS
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if net.cni_version.is_empty() {
        return Err(CniError::IncompatibleVersion(format!(
            "the configuration has no cniVersion; wgmesh-cni supports {supported}"
        )));
    }
    let version = net.version().map_err(CniError::from)?;
    version.allows(cmd).map_err(CniError::from)?;
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(CniError::IncompatibleVersion(format!(
            "the configuration is cniVersion {version}; wgmesh-cni supports {supported}"
        )));
    }
    Ok(version)
}

fn parse_mtu(v: &Value) -> Result<u32, CniError> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| MTU_RANGE.contains(n))
        .ok_or_else(|| {
            invalid(
                KEY_MTU,
                &format!(
                    "must be an integer from {} to {}, got {v}",
                    MTU_RANGE.start(),
                    MTU_RANGE.end()
                ),
            )
        })
}

fn invalid(key: &str, why: &str) -> CniError {
    CniError::InvalidConfig(format!("\"{key}\" {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BASE: &str = r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"wgmesh-cni"}"#;

    fn with(extra: &str) -> Vec<u8> {
        let mut s = BASE.trim_end_matches('}').to_string();
        s.push(',');
        s.push_str(extra);
        s.push('}');
        s.into_bytes()
    }

    #[test]
    fn defaults_require_readiness_at_the_default_path() {
        let c = parse(BASE.as_bytes(), Cmd::Add).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.mtu, None);
        assert_eq!(c.underlay_interface, None);
        assert_eq!(c.readiness_path, PathBuf::from(DEFAULT_READINESS_PATH));
        assert!(c.require_readiness);
    }

    #[test]
    fn own_keys_are_read() {
        let c = parse(
            &with(r#""mtu":1380,"underlayInterface":"ens3","readinessPath":"/tmp/r","requireReadiness":false"#),
            Cmd::Add,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.mtu, Some(1380));
        assert_eq!(c.underlay_interface.as_deref(), Some("ens3"));
        assert_eq!(c.readiness_path, PathBuf::from("/tmp/r"));
        assert!(!c.require_readiness);
    }

    #[test]
    fn bad_values_are_invalid_config() {
        for extra in [
            r#""mtu":"1400""#,
            r#""mtu":40"#,
            r#""mtu":70000"#,
            r#""mtu":-1"#,
            r#""underlayInterface":"much-too-long-interface""#,
            r#""underlayInterface":3"#,
            r#""readinessPath":"relative/path""#,
            r#""requireReadiness":"no""#,
        ] {
            let e = parse(&with(extra), Cmd::Add).err();
            assert_eq!(e.map(|e| e.code()), Some(7), "{extra}");
        }
    }

    #[test]
    fn versions_are_negotiated() {
        let code = |doc: &str, cmd| parse(doc.as_bytes(), cmd).err().map(|e| e.code());
        assert_eq!(code(r#"{"name":"n","type":"t"}"#, Cmd::Add), Some(1));
        assert_eq!(
            code(r#"{"cniVersion":"0.2.0","name":"n","type":"t"}"#, Cmd::Add),
            Some(1)
        );
        assert_eq!(
            code(r#"{"cniVersion":"0.3.1","name":"n","type":"t"}"#, Cmd::Add),
            None
        );
        assert_eq!(
            code(
                r#"{"cniVersion":"0.3.1","name":"n","type":"t"}"#,
                Cmd::Check
            ),
            Some(1)
        );
        assert_eq!(
            code(r#"{"cniVersion":"2.0.0","name":"n","type":"t"}"#, Cmd::Add),
            Some(1)
        );
        assert_eq!(
            code(r#"{"cniVersion":"x.y","name":"n","type":"t"}"#, Cmd::Add),
            Some(6)
        );
        assert_eq!(
            code(
                r#"{"cniVersion":"1.0.0","name":"n","type":"t"}"#,
                Cmd::Status
            ),
            Some(1)
        );
        assert_eq!(
            code(
                r#"{"cniVersion":"1.1.0","name":"n","type":"t"}"#,
                Cmd::Status
            ),
            None
        );
        assert_eq!(
            code(
                r#"{"cniVersion":"0.4.0","name":"n","type":"t"}"#,
                Cmd::Check
            ),
            None
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","type":"t"}"#, Cmd::Add),
            Some(7)
        );
        assert_eq!(code("{not json", Cmd::Add), Some(6));
        assert_eq!(code("", Cmd::Add), Some(6));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes, Cmd::Add);
        }

        #[test]
        fn arbitrary_json_values_for_our_keys_never_panic(
            mtu in any::<i64>(),
            name in ".{0,24}",
            path in ".{0,24}",
            flag in any::<bool>(),
        ) {
            let doc = serde_json::json!({
                "cniVersion": "1.1.0", "name": "n", "type": "wgmesh-cni",
                "mtu": mtu, "underlayInterface": name, "readinessPath": path,
                "requireReadiness": flag,
            });
            let _ = parse(doc.to_string().as_bytes(), Cmd::Check);
        }

        #[test]
        fn mutated_real_configs_never_panic(cut in 0usize..400, byte in any::<u8>()) {
            let mut doc = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/chained-1.0.0.json"))
                .unwrap_or_default();
            if !doc.is_empty() {
                let at = cut % doc.len();
                doc[at] = byte;
            }
            let _ = parse(&doc, Cmd::Add);
        }
    }
}
