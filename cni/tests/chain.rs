//! wgmesh-cni chained after the real reference plugins (bridge + host-local), invoked the
//! way a container runtime invokes a conflist. Needs root and containernetworking-plugins.

mod common;

use common::{ip, link_mtu, Call, Sandbox, WGMESH};
use serde_json::{json, Value};

/// Underlay MTU of the test node, so the mesh MTU (1320) differs from bridge's 1500.
const UNDERLAY: u32 = 1400;
const MESH: u32 = UNDERLAY - 80;

fn without_empty_dns(mut v: Value) -> Value {
    if v["dns"] == json!({}) {
        if let Some(o) = v.as_object_mut() {
            o.remove("dns");
        }
    }
    v
}

#[test]
fn add_gives_the_pod_its_address_from_the_chain_and_the_mesh_mtu_from_us() {
    for version in ["0.4.0", "1.0.0"] {
        let s = Sandbox::new(UNDERLAY);
        s.set_ready(true);
        let (bridge, ours) = s.add_chain(version, json!({}));
        assert!(
            ours.ok,
            "{version}: ADD failed: {} {}",
            ours.stdout, ours.stderr
        );
        // The result is bridge's, passed on unchanged.
        let out = ours.json();
        if version == "0.4.0" {
            assert_eq!(out, bridge, "{version}");
        } else {
            assert_eq!(out, without_empty_dns(bridge.clone()), "{version}");
        }
        // The pod has the address host-local handed out, and the mesh MTU.
        let address = bridge["ips"][0]["address"].as_str().unwrap_or_default();
        let addr_only = address.split('/').next().unwrap_or_default();
        assert!(
            address.starts_with(s.subnet.trim_end_matches("0/24")),
            "{address}"
        );
        let shown = ip(&["-n", &s.pod, "addr", "show", "dev", "eth0"]);
        assert!(shown.contains(addr_only), "{version}: {shown}");
        assert_eq!(s.pod_mtu("eth0"), MESH, "{version}: pod eth0");
        // The host-side veth gets it too; the bridge follows its ports.
        let veth = s.host_veth(&bridge);
        assert_eq!(s.node_mtu(&veth), Some(MESH), "{version}: host veth");
        assert_eq!(s.node_mtu("ul0"), Some(UNDERLAY), "underlay untouched");
    }
}

#[test]
fn add_at_1_1_0_reports_the_mtu_in_the_result() {
    let s = Sandbox::new(UNDERLAY);
    s.set_ready(true);
    // Debian's bridge (1.1.1) speaks up to 1.0.0; the 1.1.0 result layout is the same, so
    // its result is what a 1.1.0 runtime would hand us after converting it.
    let bridge = s.bridge_add("1.0.0");
    let ours = s.invoke(
        WGMESH,
        &s.call("ADD"),
        s.wgmesh_conf("1.1.0", Some(&bridge), json!({}))
            .to_string()
            .as_bytes(),
    );
    assert!(ours.ok, "{} {}", ours.stdout, ours.stderr);
    let out = ours.json();
    assert_eq!(out["cniVersion"], "1.1.0");
    assert_eq!(out["interfaces"][2]["name"], "eth0");
    assert_eq!(out["interfaces"][2]["mtu"], MESH);
    assert_eq!(out["interfaces"][1]["mtu"], MESH, "host veth");
    assert_eq!(out["ips"], bridge["ips"]);
    assert_eq!(s.pod_mtu("eth0"), MESH);
}

#[test]
fn del_cleans_up_and_succeeds_again_when_everything_is_gone() {
    let s = Sandbox::new(UNDERLAY);
    s.set_ready(true);
    let (bridge, ours) = s.add_chain("1.0.0", json!({}));
    assert!(ours.ok, "{}", ours.stdout);
    let result = ours.json();
    let veth = s.host_veth(&bridge);
    let address = bridge["ips"][0]["address"].as_str().unwrap_or_default();
    let lease = s
        .dir
        .path()
        .join("ipam/wgmesh-test")
        .join(address.split('/').next().unwrap_or_default());
    assert!(lease.exists(), "host-local lease {lease:?}");

    let (del_ours, del_bridge) = s.del_chain("1.0.0", &result, &s.call("DEL"));
    assert!(
        del_ours.ok && del_ours.stdout.is_empty(),
        "{}",
        del_ours.stdout
    );
    assert!(del_bridge.ok, "{}", del_bridge.stdout);
    assert_eq!(link_mtu(&s.pod, "eth0"), None, "pod interface removed");
    assert_eq!(s.node_mtu(&veth), None, "host veth removed");
    assert!(!lease.exists(), "address released");

    // Again: nothing left to delete.
    let (again, _) = s.del_chain("1.0.0", &result, &s.call("DEL"));
    assert!(again.ok, "{}", again.stdout);
    // The netns itself gone, then no CNI_NETNS at all (both allowed for DEL).
    ip(&["netns", "del", &s.pod]);
    let (gone, _) = s.del_chain("1.0.0", &result, &s.call("DEL"));
    assert!(gone.ok, "{}", gone.stdout);
    let no_netns = Call {
        netns: None,
        ..s.call("DEL")
    };
    let (unset, _) = s.del_chain("1.0.0", &result, &no_netns);
    assert!(unset.ok, "{}", unset.stdout);
    // No prevResult on DEL is fine too.
    let bare = s.invoke(
        WGMESH,
        &s.call("DEL"),
        s.wgmesh_conf("1.0.0", None, json!({}))
            .to_string()
            .as_bytes(),
    );
    assert!(bare.ok, "{}", bare.stdout);
}

#[test]
fn check_passes_and_then_fails_after_the_mtu_is_changed_behind_its_back() {
    let s = Sandbox::new(UNDERLAY);
    s.set_ready(true);
    let (bridge, ours) = s.add_chain("1.0.0", json!({}));
    assert!(ours.ok, "{}", ours.stdout);
    let result = ours.json();
    let check = |s: &Sandbox| {
        s.invoke(
            WGMESH,
            &s.call("CHECK"),
            s.wgmesh_conf("1.0.0", Some(&result), json!({}))
                .to_string()
                .as_bytes(),
        )
    };
    let ok = check(&s);
    assert!(ok.ok && ok.stdout.is_empty(), "{} {}", ok.stdout, ok.stderr);

    ip(&["-n", &s.pod, "link", "set", "dev", "eth0", "mtu", "1500"]);
    let bad = check(&s);
    assert_eq!(bad.error_code(), 101);
    let msg = bad.msg();
    assert!(
        msg.contains("eth0") && msg.contains("1500") && msg.contains(&MESH.to_string()),
        "{msg}"
    );

    // Put the pod back; now break the host side instead.
    ip(&[
        "-n",
        &s.pod,
        "link",
        "set",
        "dev",
        "eth0",
        "mtu",
        &MESH.to_string(),
    ]);
    assert!(check(&s).ok);
    let veth = s.host_veth(&bridge);
    ip(&["-n", &s.node, "link", "set", "dev", &veth, "mtu", "1500"]);
    let bad = check(&s);
    assert_eq!(bad.error_code(), 101);
    assert!(bad.msg().contains(&veth), "{}", bad.msg());

    // CHECK also reports the agent going away.
    ip(&[
        "-n",
        &s.node,
        "link",
        "set",
        "dev",
        &veth,
        "mtu",
        &MESH.to_string(),
    ]);
    s.set_ready(false);
    assert_eq!(check(&s).error_code(), 11);
}

#[test]
fn add_is_refused_while_the_agent_is_not_ready_and_accepted_once_it_is() {
    let s = Sandbox::new(UNDERLAY);
    let bridge = s.bridge_add("1.0.0");
    let veth = s.host_veth(&bridge);
    let conf = s.wgmesh_conf("1.0.0", Some(&bridge), json!({})).to_string();
    let status_conf = s.wgmesh_conf("1.1.0", None, json!({})).to_string();

    let refused = s.invoke(WGMESH, &s.call("ADD"), conf.as_bytes());
    assert_eq!(refused.error_code(), 11, "try again later");
    assert!(refused.msg().contains("not ready"), "{}", refused.msg());
    assert_eq!(s.pod_mtu("eth0"), 1500, "nothing changed while refused");
    assert_eq!(s.node_mtu(&veth), Some(1500));
    let status = s.invoke(WGMESH, &s.call("STATUS"), status_conf.as_bytes());
    assert_eq!(status.error_code(), 50);

    s.set_ready(true);
    let accepted = s.invoke(WGMESH, &s.call("ADD"), conf.as_bytes());
    assert!(accepted.ok, "{}", accepted.stdout);
    assert_eq!(s.pod_mtu("eth0"), MESH);
    let status = s.invoke(WGMESH, &s.call("STATUS"), status_conf.as_bytes());
    assert!(status.ok && status.stdout.is_empty(), "{}", status.stdout);
}

#[test]
fn readiness_can_be_switched_off_in_the_config() {
    let s = Sandbox::new(UNDERLAY);
    let (_, ours) = s.add_chain("1.0.0", json!({ "requireReadiness": false }));
    assert!(ours.ok, "{}", ours.stdout);
    assert_eq!(s.pod_mtu("eth0"), MESH);
}

#[test]
fn every_bad_input_gets_its_error_code_and_leaves_the_pod_unchanged() {
    let mut s = Sandbox::new(UNDERLAY);
    s.set_ready(true);
    let bridge = s.bridge_add("1.0.0");
    let veth = s.host_veth(&bridge);
    let good = s.wgmesh_conf("1.0.0", Some(&bridge), json!({}));
    let with = |extra: Value| {
        let mut c = good.clone();
        if let (Some(o), Value::Object(extra)) = (c.as_object_mut(), extra) {
            o.extend(extra);
        }
        c.to_string()
    };
    let mut ghost_prev = bridge.clone();
    ghost_prev["interfaces"][2]["name"] = json!("ghost0");
    let not_a_netns = s.dir.path().join("plain-file");
    std::fs::write(&not_a_netns, b"").unwrap_or_else(|e| panic!("{e}"));
    let other_pod = s.add_pod("x");
    ip(&["netns", "del", &other_pod]);

    let add = s.call("ADD");
    let cases: Vec<(&str, Call, String, i64)> = vec![
        (
            "bad JSON",
            add.clone(),
            "{\"cniVersion\": \"1.0.0\", ".into(),
            6,
        ),
        ("not even text", add.clone(), "\u{0}\u{1}\u{fffd}".into(), 6),
        ("empty stdin", add.clone(), String::new(), 6),
        (
            "missing prevResult",
            add.clone(),
            s.wgmesh_conf("1.0.0", None, json!({})).to_string(),
            7,
        ),
        (
            "unsupported version",
            add.clone(),
            with(json!({ "cniVersion": "0.2.0" })),
            1,
        ),
        (
            "future version",
            add.clone(),
            with(json!({ "cniVersion": "9.9.9" })),
            1,
        ),
        (
            "no cniVersion",
            add.clone(),
            with(json!({ "cniVersion": null })),
            1,
        ),
        (
            "no network name",
            add.clone(),
            with(json!({ "name": null })),
            7,
        ),
        ("bad mtu", add.clone(), with(json!({ "mtu": "big" })), 7),
        (
            "relative readinessPath",
            add.clone(),
            with(json!({ "readinessPath": "ready" })),
            7,
        ),
        (
            "netns missing",
            Call {
                netns: Some(common::netns_path(&other_pod)),
                ..add.clone()
            },
            with(json!({})),
            3,
        ),
        (
            "CNI_NETNS unset",
            Call {
                netns: None,
                ..add.clone()
            },
            with(json!({})),
            4,
        ),
        (
            "CNI_NETNS not a netns",
            Call {
                netns: Some(not_a_netns.display().to_string()),
                ..add.clone()
            },
            with(json!({})),
            4,
        ),
        (
            "bad CNI_IFNAME",
            Call {
                ifname: "eth0/x",
                ..add.clone()
            },
            with(json!({})),
            4,
        ),
        (
            "unknown CNI_COMMAND",
            Call {
                command: "FROB",
                ..add.clone()
            },
            with(json!({})),
            4,
        ),
        (
            "interface missing in pod",
            add.clone(),
            with(json!({ "prevResult": ghost_prev })),
            103,
        ),
        (
            "CHECK at 0.3.1",
            Call {
                command: "CHECK",
                ..add.clone()
            },
            with(json!({ "cniVersion": "0.3.1" })),
            1,
        ),
        (
            "STATUS before 1.1.0",
            Call {
                command: "STATUS",
                ..add.clone()
            },
            with(json!({})),
            1,
        ),
    ];
    for (name, call, stdin, code) in cases {
        let reply = s.invoke(WGMESH, &call, stdin.as_bytes());
        assert_eq!(reply.error_code(), code, "{name}: {}", reply.stdout);
        assert_eq!(s.pod_mtu("eth0"), 1500, "{name}: pod MTU changed");
        assert_eq!(s.node_mtu(&veth), Some(1500), "{name}: host veth changed");
    }
    // And the same config, valid, still works afterwards.
    let ok = s.invoke(WGMESH, &add, good.to_string().as_bytes());
    assert!(ok.ok, "{}", ok.stdout);
}

#[test]
fn mesh_mtu_follows_the_underlay_or_the_config() {
    // Jumbo underlay: the pod MTU goes up to underlay - 80.
    let s = Sandbox::new(9000);
    s.set_ready(true);
    let (_, ours) = s.add_chain("1.0.0", json!({}));
    assert!(ours.ok, "{}", ours.stdout);
    assert_eq!(s.pod_mtu("eth0"), 8920);
    drop(s);

    // An explicit "mtu" wins.
    let s = Sandbox::new(UNDERLAY);
    s.set_ready(true);
    let (_, ours) = s.add_chain("1.0.0", json!({ "mtu": 1280 }));
    assert!(ours.ok, "{}", ours.stdout);
    assert_eq!(s.pod_mtu("eth0"), 1280);
    drop(s);

    // "underlayInterface" names the underlay when the default route is elsewhere.
    let s = Sandbox::without_default_route(UNDERLAY);
    s.set_ready(true);
    common::add_underlay(&s.node, "ul1", 1600);
    let (bridge, missing) = s.add_chain("1.0.0", json!({}));
    assert_eq!(
        missing.error_code(),
        100,
        "no default route, nothing configured"
    );
    assert!(
        missing.msg().contains("underlayInterface"),
        "{}",
        missing.msg()
    );
    assert_eq!(s.pod_mtu("eth0"), 1500);
    let ours = s.invoke(
        WGMESH,
        &s.call("ADD"),
        s.wgmesh_conf(
            "1.0.0",
            Some(&bridge),
            json!({ "underlayInterface": "ul1" }),
        )
        .to_string()
        .as_bytes(),
    );
    assert!(ours.ok, "{}", ours.stdout);
    assert_eq!(s.pod_mtu("eth0"), 1520);
    let typo = s.invoke(
        WGMESH,
        &s.call("ADD"),
        s.wgmesh_conf(
            "1.0.0",
            Some(&bridge),
            json!({ "underlayInterface": "nope0" }),
        )
        .to_string()
        .as_bytes(),
    );
    assert_eq!(typo.error_code(), 100);
}

#[test]
fn an_mtu_below_1280_is_refused_for_a_pod_with_ipv6() {
    // The kernel turns IPv6 off on a link below 1280 and drops its addresses: the pod would
    // silently lose the IPv6 address prevResult lists.
    let s = Sandbox::new(UNDERLAY);
    s.set_ready(true);
    let bridge = s.bridge_add("1.0.0");
    let mut dual = bridge.clone();
    dual["ips"].as_array_mut().unwrap().push(json!({ "interface": 2, "address": "fd00:44::5/64" }));
    let add = |prev: &Value| {
        s.invoke(WGMESH, &s.call("ADD"), s.wgmesh_conf("1.0.0", Some(prev), json!({ "mtu": 1200 })).to_string().as_bytes())
    };
    let refused = add(&dual);
    assert_eq!(refused.error_code(), 7, "{}", refused.stdout);
    assert!(refused.msg().contains("1280") && refused.msg().contains("IPv6"), "{}", refused.msg());
    assert_eq!(s.pod_mtu("eth0"), 1500, "nothing changed");
    // The same MTU for an IPv4-only pod is fine.
    let ours = add(&bridge);
    assert!(ours.ok, "{}", ours.stdout);
    assert_eq!(s.pod_mtu("eth0"), 1200);
}

#[test]
fn version_and_gc_answer_like_the_spec_says() {
    let s = Sandbox::new(UNDERLAY);
    let v = s.invoke(WGMESH, &s.call("VERSION"), br#"{"cniVersion":"1.1.0"}"#);
    assert!(v.ok);
    assert_eq!(
        v.json()["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    let gc_conf = json!({
        "cniVersion": "1.1.0", "name": "wgmesh-test", "type": "wgmesh-cni",
        "cni.dev/valid-attachments": [{ "containerID": "abc", "ifname": "eth0" }],
    });
    let gc = s.invoke(WGMESH, &s.call("GC"), gc_conf.to_string().as_bytes());
    assert!(gc.ok && gc.stdout.is_empty(), "{}", gc.stdout);
}

#[test]
fn the_installers_standalone_list_runs_with_the_real_plugins() {
    let s = Sandbox::new(UNDERLAY);
    let conf_dir = s.dir.path().join("net.d");
    let opts = wgmesh_cni::install::InstallOptions {
        bin_dir: s.dir.path().join("bin"),
        conf_dir: conf_dir.clone(),
        source_binary: WGMESH.into(),
        plugin: wgmesh_cni::install::plugin_entry(None, None, s.readiness_path().to_str(), true),
        standalone: wgmesh_cni::install::StandaloneOptions {
            pod_cidrs: vec![s.subnet.clone()],
            ..Default::default()
        },
    };
    wgmesh_cni::install::install(&opts).unwrap_or_else(|e| panic!("{e}"));
    let raw = std::fs::read(conf_dir.join(wgmesh_cni::install::STANDALONE_FILE))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut list: Value = serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("{e}"));
    // Only so host-local keeps its leases in the test's temp dir, not /var/lib/cni.
    list["plugins"][0]["ipam"]["dataDir"] = json!(s.dir.path().join("ipam"));

    let refused = s.run_conflist(&list, "ADD", None);
    assert_eq!(refused.error_code(), 11, "agent not ready");
    // The runtime cleans up a failed ADD with DEL before retrying.
    assert!(s.run_conflist(&list, "DEL", None).ok);

    s.set_ready(true);
    let added = s.run_conflist(&list, "ADD", None);
    assert!(added.ok, "{} {}", added.stdout, added.stderr);
    let result = added.json();
    assert_eq!(s.pod_mtu("eth0"), MESH);
    assert!(result["ips"][0]["address"].is_string(), "{result}");
    assert!(s.run_conflist(&list, "CHECK", Some(&result)).ok);
    let del = s.run_conflist(&list, "DEL", Some(&result));
    assert!(del.ok, "{}", del.stdout);
    assert_eq!(link_mtu(&s.pod, "eth0"), None);
}

/// The config a runtime loads from `dir`: the first `.conflist` in byte order that parses
/// (libcni's ConfFiles order; this test writes no `.conf`).
fn loaded_list(dir: &std::path::Path) -> (String, Value) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".conflist"))
        .collect();
    names.sort();
    names
        .into_iter()
        .find_map(|n| Some((n.clone(), serde_json::from_slice(&std::fs::read(dir.join(&n)).ok()?).ok()?)))
        .unwrap_or_else(|| panic!("no conflist in {}", dir.display()))
}

#[test]
fn after_a_reboot_the_primarys_rewrite_keeps_the_chain_and_pods_wait_for_the_agent() {
    let s = Sandbox::new(UNDERLAY);
    let conf_dir = s.dir.path().join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap_or_else(|e| panic!("{e}"));
    // The primary CNI's own list (bridge + host-local), as its installer writes it.
    let mut bridge = s.bridge_conf("1.0.0");
    let primary = json!({ "cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [bridge.take()] });
    let primary_bytes = serde_json::to_vec_pretty(&primary).unwrap_or_default();
    std::fs::write(conf_dir.join("10-bridge.conflist"), &primary_bytes).unwrap_or_else(|e| panic!("{e}"));
    let opts = wgmesh_cni::install::InstallOptions {
        bin_dir: s.dir.path().join("bin"),
        conf_dir: conf_dir.clone(),
        source_binary: WGMESH.into(),
        plugin: wgmesh_cni::install::plugin_entry(None, None, s.readiness_path().to_str(), true),
        standalone: wgmesh_cni::install::StandaloneOptions::default(),
    };
    wgmesh_cni::install::install(&opts).unwrap_or_else(|e| panic!("{e}"));
    s.set_ready(true);
    let (name, list) = loaded_list(&conf_dir);
    assert_eq!(name, wgmesh_cni::install::FRONT_FILE);
    let added = s.run_conflist(&list, "ADD", None);
    assert!(added.ok, "{} {}", added.stdout, added.stderr);
    assert_eq!(s.pod_mtu("eth0"), MESH, "the pod runs behind the mesh");
    assert!(s.run_conflist(&list, "DEL", Some(&added.json())).ok);

    // A reboot: the readiness file (on /run, a tmpfs) is gone, and the primary's installer
    // writes its file again at its start (here with a change, an upgrade), before our agent
    // and watcher are back.
    s.set_ready(false);
    let mut upgraded = primary.clone();
    upgraded["plugins"][0]["hairpinMode"] = json!(true);
    std::fs::write(conf_dir.join("10-bridge.conflist"), serde_json::to_vec(&upgraded).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    let (name, list) = loaded_list(&conf_dir);
    assert_eq!(name, wgmesh_cni::install::FRONT_FILE, "the runtime still loads the chain");
    let refused = s.run_conflist(&list, "ADD", None);
    assert_eq!(refused.error_code(), 11, "a pod waits for the agent: {}", refused.stdout);
    assert!(s.run_conflist(&list, "DEL", None).ok);
    // The watcher is back and copies the upgraded primary; the agent is ready.
    wgmesh_cni::install::install(&opts).unwrap_or_else(|e| panic!("{e}"));
    s.set_ready(true);
    let (name, list) = loaded_list(&conf_dir);
    assert_eq!((name.as_str(), &list["plugins"][0]["hairpinMode"]), (wgmesh_cni::install::FRONT_FILE, &json!(true)));
    let added = s.run_conflist(&list, "ADD", None);
    assert!(added.ok, "{} {}", added.stdout, added.stderr);
    assert_eq!(s.pod_mtu("eth0"), MESH);
    assert!(s.run_conflist(&list, "DEL", Some(&added.json())).ok);
}
