//! `install` and `uninstall` over generated primary configs (lists and single confs, odd
//! versions, odd plugin entries, stale wgmesh-cni entries): the node's configs are edited the
//! way the runtime needs or left alone with an error, and nothing the owner wrote is lost.

use std::{collections::BTreeMap, fs, path::Path};

use proptest::prelude::*;
use serde_json::{json, Value};
use wgmesh_cni::install::{
    install, plugin_entry, uninstall, InstallOptions, StandaloneOptions, PLUGIN_TYPE,
};

fn plugin() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop::sample::select(vec!["calico", "portmap", "bandwidth", "flannel", PLUGIN_TYPE])
            .prop_map(|t| json!({ "type": t })),
        1 => Just(json!({ "type": "" })),
        1 => Just(json!({ "type": 7 })),
        1 => Just(json!("not an object")),
    ]
}

fn version() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec!["0.3.1", "0.4.0", "1.0.0", "1.1.0", "2.0.0", ""])
            .prop_map(Value::from),
        Just(Value::Null),
    ]
}

/// (file name, contents) of one config the primary CNI might have written.
fn config() -> impl Strategy<Value = (String, Value)> {
    prop_oneof![
        3 => (version(), prop::collection::vec(plugin(), 0..4)).prop_map(|(v, plugins)| {
            ("10-net.conflist".to_owned(), json!({ "cniVersion": v, "name": "net", "plugins": plugins }))
        }),
        2 => (version(), plugin()).prop_map(|(v, mut p)| {
            if let Some(o) = p.as_object_mut() {
                o.insert("cniVersion".into(), v);
                o.insert("name".into(), "net".into());
            }
            ("20-net.conf".to_owned(), p)
        }),
        1 => Just(("05-odd.conflist".to_owned(), json!({ "plugins": "calico" }))),
        // These sort before our copy, so they are chained in place (the `.conf` converted).
        1 => (version(), prop::collection::vec(plugin(), 0..4)).prop_map(|(v, plugins)| {
            ("00-early.conflist".to_owned(), json!({ "cniVersion": v, "name": "early", "plugins": plugins }))
        }),
        1 => (version(), plugin()).prop_map(|(v, mut p)| {
            if let Some(o) = p.as_object_mut() {
                o.insert("cniVersion".into(), v);
                o.insert("name".into(), "early".into());
            }
            ("00-early.conf".to_owned(), p)
        }),
    ]
}

/// Every regular file of the conf dir and its bytes (our backup dir is not a config).
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect()
}

/// A list a runtime can load: a non-empty array of plugin objects (others are skipped, by the
/// runtime and by install alike).
fn loadable(v: &Value) -> bool {
    v.get("plugins")
        .and_then(Value::as_array)
        .is_some_and(|p| !p.is_empty() && p.iter().all(Value::is_object))
}

/// What the runtime loads: the first file in byte order that is a valid list, or a valid
/// single-plugin config (as a list of one).
fn loaded(files: &BTreeMap<String, Vec<u8>>) -> Option<(String, Value)> {
    files.iter().find_map(|(name, bytes)| {
        let v: Value = serde_json::from_slice(bytes).ok()?;
        if name.ends_with(".conflist") {
            loadable(&v).then(|| (name.clone(), v))
        } else if name.ends_with(".conf") && v.get("type").and_then(Value::as_str).is_some_and(|t| !t.is_empty()) {
            Some((name.clone(), json!({ "plugins": [v] })))
        } else {
            None
        }
    })
}

fn plugin_types(v: &Value) -> Vec<Option<String>> {
    v.get("plugins")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| p.get("type").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn install_chains_once_or_refuses_and_uninstall_gives_everything_back(configs in prop::collection::vec(config(), 0..3)) {
        let root = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (bin, conf, source) = (root.path().join("bin"), root.path().join("conf"), root.path().join("wgmesh-cni"));
        fs::create_dir_all(&conf).map_err(|e| TestCaseError::fail(e.to_string()))?;
        fs::write(&source, b"the plugin").map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut stale = false;
        for (name, body) in &configs {
            stale |= plugin_types(body).contains(&Some(PLUGIN_TYPE.to_owned()))
                || body.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE);
            fs::write(conf.join(name), serde_json::to_vec(body).unwrap_or_default())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        let before = files(&conf);
        let opts = InstallOptions {
            bin_dir: bin.clone(),
            conf_dir: conf.clone(),
            source_binary: source,
            plugin: plugin_entry(None, None, None, true),
            standalone: StandaloneOptions { pod_cidrs: vec!["10.244.0.0/24".into()], ..StandaloneOptions::default() },
        };
        match install(&opts) {
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                prop_assert_eq!(files(&conf), before, "a refused install changed the configs: {}", e);
            }
            Ok(_) => {
                // The config the runtime loads chains us once, behind the main plugin (last,
                // unless the list already had our entry there with another plugin after it),
                // whatever else carries a stale entry.
                let after = files(&conf);
                let (name, list) = loaded(&after).ok_or_else(|| TestCaseError::fail("no loadable config"))?;
                let types = plugin_types(&list);
                let at = types.iter().position(|t| t.as_deref() == Some(PLUGIN_TYPE));
                prop_assert!(at.is_some_and(|i| i > 0), "{} chains wgmesh-cni behind nothing: {:?}", name, types);
                prop_assert!(stale || at == Some(types.len() - 1), "a new entry goes last: {:?}", types);
                prop_assert_eq!(types.iter().filter(|t| t.as_deref() == Some(PLUGIN_TYPE)).count(), 1);
                // Nothing else changed, but a primary chained in place (one that sorts before the
                // copy), or its `.conf` converted into that list.
                for (n, b) in &before {
                    let in_place = name.as_str() < "00-wgmesh.conflist";
                    let converted = in_place && !after.contains_key(n) && name.starts_with(n.trim_end_matches(".conf"));
                    prop_assert!(after.get(n) == Some(b) || (in_place && *n == name) || converted, "{} changed", n);
                }
                // Again: nothing changes.
                install(&opts).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(files(&conf), after);
                uninstall(&bin, &conf).map_err(|e| TestCaseError::fail(e.to_string()))?;
                if !stale {
                    prop_assert_eq!(files(&conf), before, "uninstall did not restore every byte");
                }
                // Pods must not be left pointing at the binary just removed.
                let left = loaded(&files(&conf)).map(|(_, l)| plugin_types(&l)).unwrap_or_default();
                prop_assert!(!left.contains(&Some(PLUGIN_TYPE.to_owned())), "still chained after uninstall: {:?}", left);
                prop_assert!(!bin.join(PLUGIN_TYPE).exists());
            }
        }
    }
}
