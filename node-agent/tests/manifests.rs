//! deploy/ checked offline (nothing in it was ever applied to a cluster here): every YAML
//! document parses into its Kubernetes type without losing a field, and the node DaemonSet
//! agrees with the agent's and the CNI installer's real command lines, with the RBAC the agent
//! needs and with the host paths its containers must share. Each check reports a problem
//! instead of panicking, so `every_check_can_fail` can break copies of the inputs one way at a
//! time and see the matching check fire.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};
use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, Namespace, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use wgmesh_api::constants::READINESS_PATH;
use wgmesh_api::{IpCidr, WireGuardPeer};
use wgmesh_node_agent::cli::{Cli, Command};
use wgmesh_node_agent::config::{AgentConfig, Source};
use wgmesh_node_agent::engine::EngineMode;
use wgmesh_node_agent::uapi_client::UapiClient;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
/// The image's build context: the repository root, less what .dockerignore names.
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const NODE_FILE: &str = "node-agent/node-agent.yaml";
const OPERATOR_FILE: &str = "operator/operator.yaml";
const CLEANUP_FILE: &str = "cleanup/cleanup.yaml";
const DOCKERFILE: &str = "images/Dockerfile";
/// Stands in for the cluster CIDR a user must fill in before applying.
const SAMPLE_CIDR: &str = "10.244.0.0/16";
/// Stands in for what the downward API puts into `fieldRef` variables.
const SAMPLE_FIELD: &str = "node-under-test";

/// What the kubernetes source calls, as node-agent/README.md lists it: (group, resource, verbs).
const CLUSTER_WIDE: &[(&str, &str, &[&str])] = &[
    ("", "nodes", &["get", "list", "watch", "patch"]),
    ("wgmesh.io", "wireguardpeers", &["get", "list", "watch"]),
    ("wgmesh.io", "wireguardpeers/status", &["patch"]),
];
/// Preshared-key Secrets, read one by one with `get`, only in the namespaces peers name.
const PER_NAMESPACE: &[(&str, &str, &[&str])] = &[("", "secrets", &["get"])];

#[derive(Clone)]
struct Doc {
    /// Path relative to deploy/.
    file: String,
    value: Value,
}

#[derive(Clone)]
struct Inputs {
    docs: Vec<Doc>,
    dockerfile: String,
    dockerignore: String,
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

fn load() -> Inputs {
    let mut files = Vec::new();
    yaml_files(Path::new(DEPLOY), &mut files);
    files.sort();
    let mut docs = Vec::new();
    for path in files {
        let text = read(&path);
        let file = path
            .strip_prefix(DEPLOY)
            .expect("under deploy/")
            .to_string_lossy()
            .into_owned();
        for d in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(d).unwrap_or_else(|e| panic!("{file}: {e}"));
            // a trailing `---` yields an empty document, not an object
            if !value.is_null() {
                docs.push(Doc {
                    file: file.clone(),
                    value,
                });
            }
        }
    }
    Inputs {
        docs,
        dockerfile: read(&Path::new(DEPLOY).join(DOCKERFILE)),
        dockerignore: read(&Path::new(REPO).join(".dockerignore")),
    }
}

/// Where `a` and `b` first differ; the types drop fields they do not know, so this finds them.
fn first_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                let here = format!("{at}.{k}");
                match y.get(k) {
                    None => return Some(format!("{here} is not a field of the type")),
                    Some(vb) => {
                        if let Some(d) = first_difference(va, vb, &here) {
                            return Some(d);
                        }
                    }
                }
            }
            y.keys()
                .find(|k| !x.contains_key(*k))
                .map(|k| format!("{at}.{k} appeared on the way back"))
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (va, vb))| first_difference(va, vb, &format!("{at}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{at}: {a} came back as {b}")),
    }
}

/// Parses `v` as `T` and back: serde ignores unknown fields, the round trip does not.
fn strict<T: DeserializeOwned + Serialize>(v: &Value) -> Result<T, String> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    match first_difference(v, &back, "") {
        Some(d) => Err(d),
        None => Ok(typed),
    }
}

fn typed<T: k8s_openapi::Resource + DeserializeOwned + Serialize>(v: &Value) -> Result<(), String> {
    if v["apiVersion"] != T::API_VERSION {
        return Err(format!("apiVersion is not {}", T::API_VERSION));
    }
    strict::<T>(v).map(|_| ())
}

/// Every document under deploy/ is a known kind that parses into its type with nothing left over.
fn document_problems(inp: &Inputs) -> Vec<String> {
    let mut problems = Vec::new();
    for d in &inp.docs {
        let kind = d.value["kind"].as_str().unwrap_or_default();
        let result = match kind {
            "Namespace" => typed::<Namespace>(&d.value),
            "ServiceAccount" => typed::<ServiceAccount>(&d.value),
            "ClusterRole" => typed::<ClusterRole>(&d.value),
            "ClusterRoleBinding" => typed::<ClusterRoleBinding>(&d.value),
            "Role" => typed::<Role>(&d.value),
            "RoleBinding" => typed::<RoleBinding>(&d.value),
            "Deployment" => typed::<Deployment>(&d.value),
            "DaemonSet" => typed::<DaemonSet>(&d.value),
            "CustomResourceDefinition" => typed::<CustomResourceDefinition>(&d.value),
            "ValidatingAdmissionPolicy" => typed::<ValidatingAdmissionPolicy>(&d.value),
            "ValidatingAdmissionPolicyBinding" => typed::<ValidatingAdmissionPolicyBinding>(&d.value),
            "WireGuardPeer" => {
                let want = <WireGuardPeer as kube::Resource>::api_version(&());
                if d.value["apiVersion"] == *want {
                    strict::<WireGuardPeer>(&d.value).map(|_| ())
                } else {
                    Err(format!("apiVersion is not {want}"))
                }
            }
            _ => Err("a kind this test has no type for; add it".into()),
        };
        if let Err(e) = result {
            let name = d.value["metadata"]["name"].as_str().unwrap_or("?");
            problems.push(format!("{}: {kind} {name}: {e}", d.file));
        }
    }
    for file in [NODE_FILE, OPERATOR_FILE] {
        if !inp.docs.iter().any(|d| d.file == file) {
            problems.push(format!("no documents in deploy/{file}"));
        }
    }
    problems
}

fn find<T: DeserializeOwned + Serialize>(
    inp: &Inputs,
    file: &str,
    kind: &str,
) -> Result<Vec<T>, String> {
    inp.docs
        .iter()
        .filter(|d| d.file == file && d.value["kind"] == kind)
        .map(|d| strict::<T>(&d.value).map_err(|e| format!("{file}: {kind}: {e}")))
        .collect()
}

fn only<T>(mut v: Vec<T>, what: &str) -> Result<T, String> {
    match v.len() {
        1 => Ok(v.remove(0)),
        n => Err(format!("expected one {what}, found {n}")),
    }
}

/// Kubelet's `$(VAR)` expansion of command and args; `$$` escapes a `$`.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$$") {
            out.push('$');
            rest = t;
        } else if let Some((name, after)) = tail.strip_prefix("$(").and_then(|t| t.split_once(')'))
        {
            match env.iter().find(|(n, _)| n == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&tail[..name.len() + 3]),
            }
            rest = after;
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The container's variables as kubelet sees them, `fieldRef`s filled with a sample value.
fn env_of(c: &Container) -> Vec<(String, String)> {
    c.env
        .iter()
        .flatten()
        .map(|e| {
            let v = match (&e.value, &e.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(_)) => SAMPLE_FIELD.to_owned(),
                (None, None) => String::new(),
            };
            (e.name.clone(), v)
        })
        .collect()
}

/// command + args after expansion, as the process will see its argv.
fn argv(c: &Container, env: &[(String, String)]) -> Vec<String> {
    c.command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .map(|a| expand(a, env))
        .collect()
}

/// The host path behind `path` inside `c` (longest mount containing it) and its hostPath type.
fn host_path(
    spec: &PodSpec,
    c: &Container,
    path: &Path,
) -> Result<(PathBuf, Option<String>), String> {
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| path.starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())
        .ok_or_else(|| format!("{}: nothing is mounted at {}", c.name, path.display()))?;
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .ok_or_else(|| format!("{}: no volume {}", c.name, mount.name))?;
    let hp = volume.host_path.as_ref().ok_or_else(|| {
        format!(
            "{}: {} is not a hostPath volume (other containers and the host cannot see it)",
            c.name, mount.name
        )
    })?;
    let rest = path
        .strip_prefix(&mount.mount_path)
        .expect("prefix checked");
    // join("") would append a slash to a file such as /dev/net/tun
    let host = if rest.as_os_str().is_empty() {
        PathBuf::from(&hp.path)
    } else {
        Path::new(&hp.path).join(rest)
    };
    Ok((host, hp.type_.clone()))
}

/// True if a hostPath mount of `c` contains `host` or lies inside it.
fn sees(spec: &PodSpec, c: &Container, host: &Path) -> bool {
    c.volume_mounts.iter().flatten().any(|m| {
        spec.volumes
            .iter()
            .flatten()
            .find(|v| v.name == m.name)
            .and_then(|v| v.host_path.as_ref())
            .is_some_and(|hp| host.starts_with(&hp.path) || Path::new(&hp.path).starts_with(host))
    })
}

fn capabilities_add(c: &Container) -> Vec<String> {
    c.security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default()
}

fn probe_port(c: &Container, p: &IntOrString) -> Option<i32> {
    match p {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|x| x.name.as_deref() == Some(name.as_str()))
            .map(|x| x.container_port),
    }
}

type Grants = BTreeSet<(String, String, String)>;

fn grants(list: &[(&str, &str, &[&str])]) -> Grants {
    list.iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect()
}

/// The rules of the role a binding refers to, as (group, resource, verb), in `problems` if odd.
fn role_grants(
    inp: &Inputs,
    kind: &str,
    name: &str,
    problems: &mut Vec<String>,
) -> Result<Grants, String> {
    let rules = if kind == "ClusterRole" {
        let roles: Vec<ClusterRole> = find(inp, NODE_FILE, "ClusterRole")?;
        let role = roles
            .into_iter()
            .find(|r| r.metadata.name.as_deref() == Some(name));
        role.ok_or_else(|| format!("{NODE_FILE}: no ClusterRole {name}"))?
            .rules
            .unwrap_or_default()
    } else {
        let roles: Vec<Role> = find(inp, NODE_FILE, "Role")?;
        let role = roles
            .into_iter()
            .find(|r| r.metadata.name.as_deref() == Some(name));
        role.ok_or_else(|| format!("{NODE_FILE}: no Role {name}"))?
            .rules
            .unwrap_or_default()
    };
    let mut out = Grants::new();
    for r in rules {
        if r.resource_names.is_some() || r.non_resource_urls.is_some() {
            problems.push(format!(
                "{kind} {name}: resourceNames/nonResourceURLs are not part of the agent's needs"
            ));
        }
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    out.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    Ok(out)
}

/// The agent's configuration from the manifest's argv, with `cidr` as the cluster CIDR.
fn agent_config(agent: &Container, cidr: &str) -> Result<AgentConfig, String> {
    let env: Vec<(String, String)> = env_of(agent)
        .into_iter()
        .map(|(n, v)| {
            let v = if n == "WGMESH_CLUSTER_CIDR" {
                cidr.to_owned()
            } else {
                v
            };
            (n, v)
        })
        .collect();
    let cli = Cli::try_parse_from(argv(agent, &env)).map_err(|e| e.to_string())?;
    match cli.command {
        Command::Run(run) => (*run).into_config(),
        other => Err(format!("not `run`: {other:?}")),
    }
}

/// The node manifest against the binaries, the RBAC list and the host paths.
fn node_problems(inp: &Inputs) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = node_checks(inp, &mut problems) {
        problems.push(e);
    }
    problems
}

fn node_checks(inp: &Inputs, problems: &mut Vec<String>) -> Result<(), String> {
    let mut check = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    let namespaces: Vec<Namespace> = find(inp, OPERATOR_FILE, "Namespace")?;
    let namespace = only(namespaces, "Namespace in the operator manifest")?
        .metadata
        .name
        .unwrap_or_default();
    let daemonsets: Vec<DaemonSet> = find(inp, NODE_FILE, "DaemonSet")?;
    let named = |name: &str| {
        daemonsets
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(name))
            .cloned()
            .ok_or_else(|| format!("no DaemonSet {name} (docs use ds/{name})"))
    };
    // the agent and the CNI plugin; the engine in a DaemonSet of its own
    let (ds, tds) = (named("wgmesh-node")?, named("wgmesh-tunnel")?);
    let sa: ServiceAccount = only(find(inp, NODE_FILE, "ServiceAccount")?, "ServiceAccount")?;
    check(daemonsets.len() == 2, format!("{} DaemonSets, not wgmesh-node and wgmesh-tunnel", daemonsets.len()));
    for d in [&ds, &tds] {
        check(
            d.metadata.namespace.as_deref() == Some(namespace.as_str()),
            format!("DaemonSet {:?} is not in the operator's namespace {namespace}", d.metadata.name),
        );
    }
    check(
        sa.metadata.namespace.as_deref() == Some(namespace.as_str()),
        format!("the ServiceAccount is not in {namespace}"),
    );
    let sa_name = sa.metadata.name.clone().unwrap_or_default();
    let ds_spec = ds.spec.clone().unwrap_or_default();
    let strategy = ds_spec.update_strategy.clone().unwrap_or_default();
    check(
        strategy.type_.as_deref() == Some("RollingUpdate")
            && strategy.rolling_update.and_then(|r| r.max_unavailable) == Some(IntOrString::Int(1)),
        "updateStrategy is not RollingUpdate with maxUnavailable 1".into(),
    );
    let spec = ds_spec.template.spec.clone().unwrap_or_default();
    // The engine is what packets pass through: rolling it with every agent or CNI update would
    // cut each node's pod traffic in turn. It is replaced only where its pod is deleted.
    let tds_spec = tds.spec.clone().unwrap_or_default();
    check(
        tds_spec.update_strategy.as_ref().and_then(|u| u.type_.as_deref()) == Some("OnDelete"),
        "wgmesh-tunnel is not updateStrategy OnDelete: every update would stop the data path".into(),
    );
    let tspec = tds_spec.template.spec.clone().unwrap_or_default();
    check(
        tspec.automount_service_account_token == Some(false),
        "the tunnel pod gets an API token it never uses".into(),
    );
    check(
        spec.service_account_name.as_deref() == Some(sa_name.as_str()),
        format!("the pod does not run as ServiceAccount {sa_name}"),
    );
    for (name, s) in [("wgmesh-node", &spec), ("wgmesh-tunnel", &tspec)] {
        check(
            s.host_network == Some(true),
            format!("{name}'s pod is not hostNetwork (TUN, routes and rules must be the node's)"),
        );
        check(
            s.priority_class_name.as_deref() == Some("system-node-critical"),
            format!("{name}'s priorityClassName is not system-node-critical"),
        );
        check(
            s.tolerations.iter().flatten().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()),
            format!("{name} has no toleration for every taint (operator Exists, no key, no effect)"),
        );
    }

    let container = |name: &str, init: bool| {
        let list = if init {
            spec.init_containers.as_deref().unwrap_or_default()
        } else {
            &spec.containers
        };
        list.iter()
            .find(|c| c.name == name)
            .cloned()
            .ok_or_else(|| format!("no {}container {name}", if init { "init " } else { "" }))
    };
    let agent = container("agent", false)?;
    let tunnel = tspec
        .containers
        .iter()
        .find(|c| c.name == "tunnel")
        .cloned()
        .ok_or("no container tunnel in wgmesh-tunnel")?;
    let install = container("install-cni", true)?;

    // the agent: its argv through its real CLI
    let agent_env = env_of(&agent);
    let shipped = argv(&agent, &agent_env);
    check(
        shipped.first().map(String::as_str) == Some("wgmesh-node-agent"),
        format!("agent command is not wgmesh-node-agent: {shipped:?}"),
    );
    check(
        !shipped.iter().any(|a| a.contains("$(")),
        format!("agent args refer to a variable its env does not define: {shipped:?}"),
    );
    match agent_config(&agent, &expand("$(WGMESH_CLUSTER_CIDR)", &agent_env)) {
        Err(e) => check(
            e.contains("--cluster-cidr"),
            format!("the agent fails as shipped, but not for the unset cluster CIDR: {e}"),
        ),
        Ok(_) => check(
            false,
            "the agent starts as shipped: the cluster CIDR must be left for the user to set".into(),
        ),
    }
    let cfg = agent_config(&agent, SAMPLE_CIDR)
        .map_err(|e| format!("agent args with the cluster CIDR set are refused by its CLI: {e}"))?;
    check(
        cfg.source == Source::Kubernetes,
        format!("agent source is {:?}, not kubernetes", cfg.source),
    );
    check(
        cfg.engine_mode == EngineMode::Attach,
        "agent engine mode is not attach (the engine is the wgmesh-tunnel DaemonSet's)".into(),
    );
    check(
        cfg.cluster_cidrs == [SAMPLE_CIDR.parse::<IpCidr>().expect("sample")],
        format!(
            "WGMESH_CLUSTER_CIDR does not become exactly one --cluster-cidr: {:?}",
            cfg.cluster_cidrs
        ),
    );
    let node_env = Cli::command()
        .find_subcommand("run")
        .and_then(|run| {
            run.get_arguments()
                .find(|a| a.get_id() == "node_name")
                .and_then(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        })
        .unwrap_or_default();
    let node_name_from_api = agent.env.iter().flatten().any(|e| {
        e.name == node_env
            && e.value_from
                .as_ref()
                .and_then(|f| f.field_ref.as_ref())
                .is_some_and(|f| f.field_path == "spec.nodeName")
    });
    check(
        node_name_from_api,
        format!("agent env does not set {node_env:?} (read by --node-name) from spec.nodeName"),
    );
    match cfg.http_addr {
        None => check(
            false,
            "agent HTTP is off: no /healthz or /readyz to probe".into(),
        ),
        Some(addr) => {
            for (probe, path) in [
                (&agent.liveness_probe, "/healthz"),
                (&agent.readiness_probe, "/readyz"),
            ] {
                let get = probe.as_ref().and_then(|p| p.http_get.as_ref());
                check(
                    get.and_then(|g| g.path.as_deref()) == Some(path),
                    format!("agent has no probe on {path}"),
                );
                check(
                    get.and_then(|g| probe_port(&agent, &g.port)) == Some(i32::from(addr.port())),
                    format!(
                        "agent probe {path} is not on --http-addr port {}",
                        addr.port()
                    ),
                );
            }
        }
    }

    // the engine: its CLI lives in tunnel/src/main.rs, not in a library, so only its shape is checked
    let t = argv(&tunnel, &env_of(&tunnel));
    check(
        t == ["wgmesh-tunnel", "--foreground", cfg.interface.as_str()],
        format!(
            "tunnel argv is not wgmesh-tunnel --foreground {}: {t:?}",
            cfg.interface
        ),
    );
    for c in [&agent, &tunnel] {
        check(
            capabilities_add(c) == ["NET_ADMIN"],
            format!("{} does not add exactly NET_ADMIN", c.name),
        );
    }
    match host_path(&tspec, &tunnel, Path::new("/dev/net/tun")) {
        Ok((h, ty)) => check(
            h == Path::new("/dev/net/tun") && ty.as_deref() == Some("CharDevice"),
            format!("tunnel's /dev/net/tun is {} ({ty:?})", h.display()),
        ),
        Err(e) => check(false, e),
    }

    // one UAPI socket, seen by both
    let socket = UapiClient::new(&cfg.interface).path().to_owned();
    match (
        host_path(&spec, &agent, &socket),
        host_path(&tspec, &tunnel, &socket),
    ) {
        (Ok((a, _)), Ok((t, _))) => check(
            a == t,
            format!(
                "UAPI socket: agent looks at {}, tunnel creates {}",
                a.display(),
                t.display()
            ),
        ),
        (a, t) => check(
            false,
            format!("UAPI socket {}: {a:?} / {t:?}", socket.display()),
        ),
    }

    // the private key: on the node, kept across restarts, seen by the agent only
    match host_path(&spec, &agent, &cfg.private_key_path) {
        Ok((h, ty)) => {
            check(
                ty.as_deref() == Some("DirectoryOrCreate"),
                format!("private key volume type is {ty:?}, not DirectoryOrCreate"),
            );
            for (pod, other) in [(&tspec, &tunnel), (&spec, &install)] {
                check(
                    !sees(pod, other, h.parent().unwrap_or(&h)),
                    format!("{} can see the private key's directory", other.name),
                );
            }
        }
        Err(e) => check(false, format!("private key: {e}")),
    }

    // the CNI installer: its argv through its real parser
    let i = argv(&install, &env_of(&install));
    check(
        i.first().map(String::as_str) == Some("wgmesh-cni"),
        format!("install-cni command is not wgmesh-cni: {i:?}"),
    );
    let opts = match wgmesh_cni::cli::parse(&i[1.min(i.len())..]) {
        Ok(wgmesh_cni::cli::Command::Install(o)) => o,
        Ok(other) => return Err(format!("install-cni does not install: {other:?}")),
        Err(e) => return Err(format!("install-cni args refused by wgmesh-cni: {e}")),
    };
    for (dir, host) in [
        (&opts.bin_dir, wgmesh_cni::install::DEFAULT_BIN_DIR),
        (&opts.conf_dir, wgmesh_cni::install::DEFAULT_CONF_DIR),
    ] {
        match host_path(&spec, &install, dir) {
            Ok((h, _)) => check(
                h == Path::new(host),
                format!(
                    "install-cni writes {} into {}, not {host}",
                    dir.display(),
                    h.display()
                ),
            ),
            Err(e) => check(false, e),
        }
    }
    check(
        opts.plugin.get("requireReadiness") != Some(&json!(false)),
        "install-cni turns the readiness gate off".into(),
    );

    // the watcher: the same install, run again, so a main plugin's rewrite cannot drop the entry
    let watcher = container("watch-cni", false)?;
    let w = argv(&watcher, &env_of(&watcher));
    check(
        w.first().map(String::as_str) == Some("wgmesh-cni"),
        format!("watch-cni command is not wgmesh-cni: {w:?}"),
    );
    match wgmesh_cni::cli::parse(&w[1.min(w.len())..]) {
        Ok(wgmesh_cni::cli::Command::Watch { opts: wo, .. }) => {
            check(
                wo.plugin == opts.plugin && wo.standalone.pod_cidrs == opts.standalone.pod_cidrs,
                format!("watch-cni installs another entry than install-cni: {:?} vs {:?}", wo.plugin, opts.plugin),
            );
            for (theirs, ours) in [(&wo.bin_dir, &opts.bin_dir), (&wo.conf_dir, &opts.conf_dir)] {
                let (a, b) = (host_path(&spec, &watcher, theirs), host_path(&spec, &install, ours));
                check(
                    a.is_ok() && a.as_ref().map(|x| &x.0) == b.as_ref().map(|x| &x.0),
                    format!("watch-cni writes {} on the host ({a:?}), install-cni {b:?}", theirs.display()),
                );
            }
        }
        Ok(other) => check(false, format!("watch-cni does not run `wgmesh-cni install --watch`: {other:?}")),
        Err(e) => check(false, format!("watch-cni args refused by wgmesh-cni: {e}")),
    }

    // readiness: the agent's file is where the plugin (on the host) looks
    let plugin_looks_at = opts
        .plugin
        .get("readinessPath")
        .and_then(Value::as_str)
        .unwrap_or(wgmesh_cni::readiness::DEFAULT_READINESS_PATH)
        .to_owned();
    match host_path(&spec, &agent, &cfg.readiness_path) {
        Ok((h, _)) => check(
            h == Path::new(&plugin_looks_at) && h == Path::new(READINESS_PATH),
            format!(
                "agent's readiness file lands on {}, wgmesh-cni checks {plugin_looks_at}",
                h.display()
            ),
        ),
        Err(e) => check(false, format!("readiness: {e}")),
    }

    // one image holding every binary the pod runs
    let image = agent.image.clone();
    for c in [&tunnel, &install, &watcher] {
        check(
            c.image == image,
            format!("{} uses another image than agent", c.name),
        );
    }
    for c in [&agent, &tunnel, &install] {
        let bin = c
            .command
            .iter()
            .flatten()
            .next()
            .cloned()
            .unwrap_or_default();
        let copied = inp.dockerfile.lines().any(|l| {
            l.starts_with("COPY --from=build ")
                && l.contains(&format!("/out/{bin} "))
                && l.trim_end().ends_with("/usr/local/bin/")
        });
        check(
            copied,
            format!(
                "{DOCKERFILE} does not copy {bin:?} ({}) into /usr/local/bin/",
                c.name
            ),
        );
    }
    check(
        inp.dockerfile.contains("cargo build --release --locked"),
        format!("{DOCKERFILE} does not build with --release --locked"),
    );

    // RBAC: exactly the README's list, Secrets only per namespace
    let subject_is_sa = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount"
                && s.name == sa_name
                && s.namespace.as_deref() == Some(namespace.as_str())
        })
    };
    let mut cluster = Grants::new();
    for b in find::<ClusterRoleBinding>(inp, NODE_FILE, "ClusterRoleBinding")? {
        if subject_is_sa(&b.subjects) {
            cluster.extend(role_grants(
                inp,
                &b.role_ref.kind,
                &b.role_ref.name,
                problems,
            )?);
        }
    }
    let mut namespaced = BTreeSet::new();
    for b in find::<RoleBinding>(inp, NODE_FILE, "RoleBinding")? {
        if subject_is_sa(&b.subjects) {
            let ns = b.metadata.namespace.clone().unwrap_or_default();
            for g in role_grants(inp, &b.role_ref.kind, &b.role_ref.name, problems)? {
                namespaced.insert((ns.clone(), g));
            }
        }
    }
    let mut check = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    check(
        cluster == grants(CLUSTER_WIDE),
        format!(
            "cluster-wide grants differ from node-agent/README.md: extra {:?}, missing {:?}",
            cluster
                .difference(&grants(CLUSTER_WIDE))
                .collect::<Vec<_>>(),
            grants(CLUSTER_WIDE)
                .difference(&cluster)
                .collect::<Vec<_>>()
        ),
    );
    let per_ns = grants(PER_NAMESPACE);
    check(
        namespaced.iter().all(|(_, g)| per_ns.contains(g)),
        format!("namespaced grants beyond get on secrets: {namespaced:?}"),
    );
    // every Secret namespace an example peer references must be readable by the agent
    for d in inp
        .docs
        .iter()
        .filter(|d| d.value["kind"] == "WireGuardPeer")
    {
        if let Some(ns) = d.value["spec"]["presharedKeySecretRef"]["namespace"].as_str() {
            for g in &per_ns {
                check(
                    namespaced.contains(&(ns.to_owned(), g.clone())),
                    format!(
                        "{}: its Secret's namespace {ns} has no RoleBinding for the agent",
                        d.file
                    ),
                );
            }
        }
    }
    Ok(())
}

/// Whether the image build leaves `path` (from the repository root) out of its context, as
/// Docker reads .dockerignore: a line matches the path or a folder above it, `!` takes a match
/// back, the last matching line wins. Wildcards: `*`, `?` and `**` (not `[...]`).
fn ignored(dockerignore: &str, path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    let mut out = false;
    for line in dockerignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (keep, pattern) = line.strip_prefix('!').map_or((false, line), |p| (true, p));
        let pattern: Vec<&str> = pattern.trim_matches('/').split('/').collect();
        if (1..=parts.len()).any(|n| glob(&pattern, &parts[..n])) {
            out = !keep;
        }
    }
    out
}

/// Path elements against pattern elements; `**` stands for any number of elements.
fn glob(pattern: &[&str], path: &[&str]) -> bool {
    match (pattern.split_first(), path.split_first()) {
        (None, None) => true,
        (Some((&"**", rest)), _) => glob(rest, path) || (!path.is_empty() && glob(pattern, &path[1..])),
        (Some((p, prest)), Some((e, erest))) => element(p.as_bytes(), e.as_bytes()) && glob(prest, erest),
        _ => false,
    }
}

fn element(p: &[u8], e: &[u8]) -> bool {
    match (p.split_first(), e.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => element(rest, e) || (!e.is_empty() && element(p, &e[1..])),
        (Some((b'?', rest)), Some((_, erest))) => element(rest, erest),
        (Some((a, rest)), Some((b, erest))) => a == b && element(rest, erest),
        _ => false,
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        let name = path.file_name().unwrap_or_default();
        if path.is_dir() && name != "target" && name != "fuzz" {
            files_under(&path, out);
        } else if path.is_file() {
            out.push(path);
        }
    }
}

/// The image build gets every file it uses: the workspace (manifests, lock file, each member
/// crate but its fuzz targets) and each repository file the Dockerfile's commands name.
fn image_context_problems(inp: &Inputs) -> Vec<String> {
    let root = read(&Path::new(REPO).join("Cargo.toml"));
    let members = root
        .lines()
        .find_map(|l| l.trim().strip_prefix("members = ["))
        .map(|l| l.split('"').skip(1).step_by(2).map(str::to_owned).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut needed = vec!["Cargo.toml".to_owned(), "Cargo.lock".to_owned()];
    for m in &members {
        let mut files = Vec::new();
        files_under(&Path::new(REPO).join(m), &mut files);
        needed.extend(files.iter().filter_map(|f| Some(f.strip_prefix(REPO).ok()?.to_string_lossy().into_owned())));
    }
    // words of RUN and COPY lines that are files here (build outputs under target/ are made in the image)
    let words = inp.dockerfile.lines().filter(|l| !l.trim_start().starts_with('#'));
    let words = words.flat_map(|l| l.split(|c: char| c.is_whitespace() || "\"'$()=".contains(c)));
    needed.extend(
        words
            .filter(|w| w.contains('/') && !w.starts_with('/') && !w.starts_with("target/"))
            .filter(|w| Path::new(REPO).join(w).is_file())
            .map(str::to_owned),
    );
    let mut problems: Vec<String> = needed
        .iter()
        .filter(|f| ignored(&inp.dockerignore, f))
        .map(|f| format!(".dockerignore leaves {f} out of the image build, which needs it"))
        .collect();
    if members.is_empty() {
        problems.push("Cargo.toml names no workspace members".into());
    }
    problems
}

fn all_problems(inp: &Inputs) -> Vec<String> {
    let mut p = document_problems(inp);
    p.extend(node_problems(inp));
    p.extend(image_context_problems(inp));
    if let Err(e) = cleanup_checks(inp, &mut p) {
        p.push(e);
    }
    p
}

/// deploy/cleanup undoes, on every node, what the wgmesh-node DaemonSet put there: checked
/// through both binaries' real parsers against the node manifest's paths and names.
fn cleanup_checks(inp: &Inputs, problems: &mut Vec<String>) -> Result<(), String> {
    let mut check = |ok: bool, what: String| {
        if !ok {
            problems.push(format!("cleanup: {what}"));
        }
    };
    let pod = |file: &str, name: &str| -> Result<PodSpec, String> {
        let all: Vec<DaemonSet> = find(inp, file, "DaemonSet")?;
        let ds = all.into_iter().find(|d| d.metadata.name.as_deref() == Some(name)).ok_or(format!("no DaemonSet {name}"))?;
        Ok(ds.spec.unwrap_or_default().template.spec.unwrap_or_default())
    };
    let (node, spec) = (pod(NODE_FILE, "wgmesh-node")?, pod(CLEANUP_FILE, "wgmesh-cleanup")?);
    check(spec.host_network == Some(true), "not hostNetwork (the rule, table and wgmesh0 are the node's)".into());
    check(
        spec.tolerations.iter().flatten().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "no toleration for every taint".into(),
    );
    let steps = spec.init_containers.clone().unwrap_or_default();
    let names: Vec<&str> = steps.iter().map(|c| c.name.as_str()).collect();
    if names != ["uninstall-cni", "cleanup"] {
        return Err(format!("cleanup: init containers {names:?}: want the CNI uninstalled first, then the node cleaned"));
    }
    let node_container = |name: &str| {
        node.init_containers.iter().flatten().chain(&node.containers).find(|c| c.name == name).cloned()
    };
    let (install, agent) = (node_container("install-cni"), node_container("agent"));
    let (Some(install), Some(agent)) = (install, agent) else {
        return Err("cleanup: the node DaemonSet has no install-cni or agent container to compare with".into());
    };
    // The CNI side: the host directories install-cni wrote.
    let un = &steps[0];
    let a = argv(un, &env_of(un));
    let installed = match wgmesh_cni::cli::parse(&argv(&install, &env_of(&install))[1..]) {
        Ok(wgmesh_cni::cli::Command::Install(o)) => [o.bin_dir, o.conf_dir],
        _ => return Err("cleanup: the node's install-cni does not parse".into()),
    };
    match wgmesh_cni::cli::parse(&a[1.min(a.len())..]) {
        Ok(wgmesh_cni::cli::Command::Uninstall { bin_dir, conf_dir }) if a[0] == "wgmesh-cni" => {
            for (mine, theirs) in [bin_dir, conf_dir].iter().zip(&installed) {
                let m = host_path(&spec, un, mine).map(|h| h.0);
                let t = host_path(&node, &install, theirs).map(|h| h.0);
                check(m.is_ok() && m == t, format!("uninstall-cni works on {m:?}, install-cni wrote {t:?}"));
            }
        }
        other => check(false, format!("uninstall-cni does not run `wgmesh-cni uninstall`: {a:?} {other:?}")),
    }
    // The node side: the agent's interface, table, rule and readiness file.
    let cfg = agent_config(&agent, SAMPLE_CIDR)?;
    let c = &steps[1];
    match Cli::try_parse_from(argv(c, &env_of(c))).map(|cli| cli.command) {
        Ok(Command::Cleanup(args)) => {
            let x = &args.common;
            check(
                (x.interface.as_str(), x.table, x.rule_priority) == (cfg.interface.as_str(), cfg.table, cfg.rule_priority),
                format!("cleans {} / table {} / priority {}, the agent uses {} / {} / {}", x.interface, x.table, x.rule_priority, cfg.interface, cfg.table, cfg.rule_priority),
            );
            let m = host_path(&spec, c, &x.readiness_path).map(|h| h.0);
            let t = host_path(&node, &agent, &cfg.readiness_path).map(|h| h.0);
            check(m.is_ok() && m == t, format!("removes the readiness file at {m:?}, the agent writes {t:?}"));
        }
        other => check(false, format!("the cleanup step does not run `wgmesh-node-agent cleanup`: {other:?}")),
    }
    check(capabilities_add(c).iter().any(|x| x == "NET_ADMIN"), "the cleanup step lacks NET_ADMIN".into());
    Ok(())
}

#[test]
fn deploy_manifests_are_consistent() {
    let inp = load();
    let problems = all_problems(&inp);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // the walk must have found every kind the install uses
    let kinds: BTreeSet<&str> = inp
        .docs
        .iter()
        .filter_map(|d| d.value["kind"].as_str())
        .collect();
    for k in [
        "CustomResourceDefinition",
        "DaemonSet",
        "Deployment",
        "WireGuardPeer",
    ] {
        assert!(kinds.contains(k), "no {k} found under deploy/");
    }
}

fn doc_mut<'a>(inp: &'a mut Inputs, file: &str, kind: &str, name: &str) -> &'a mut Value {
    inp.docs
        .iter_mut()
        .find(|d| d.file == file && d.value["kind"] == kind && d.value["metadata"]["name"] == name)
        .map(|d| &mut d.value)
        .unwrap_or_else(|| panic!("{file}: no {kind} {name}"))
}

fn pod_mut(inp: &mut Inputs) -> &mut Value {
    pod_of(inp, "wgmesh-node")
}

fn pod_of<'a>(inp: &'a mut Inputs, daemonset: &str) -> &'a mut Value {
    let ds = doc_mut(inp, NODE_FILE, "DaemonSet", daemonset);
    ds.pointer_mut("/spec/template/spec").expect("pod spec")
}

fn container_mut<'a>(inp: &'a mut Inputs, name: &str) -> &'a mut Value {
    let pod = pod_of(inp, if name == "tunnel" { "wgmesh-tunnel" } else { "wgmesh-node" });
    let list = if name == "install-cni" {
        "initContainers"
    } else {
        "containers"
    };
    pod[list]
        .as_array_mut()
        .expect("container list")
        .iter_mut()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn set_arg(inp: &mut Inputs, container: &str, from: &str, to: &str) {
    let c = container_mut(inp, container);
    let args = c["args"].as_array_mut().expect("args");
    let a = args
        .iter_mut()
        .find(|a| *a == from)
        .unwrap_or_else(|| panic!("{container} has no arg {from}"));
    *a = json!(to);
}

fn env_mut<'a>(inp: &'a mut Inputs, name: &str) -> &'a mut Value {
    container_mut(inp, "agent")["env"]
        .as_array_mut()
        .expect("env")
        .iter_mut()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name}"))
}

fn volume_mut<'a>(inp: &'a mut Inputs, name: &str) -> &'a mut Value {
    pod_of(inp, if name == "dev-net-tun" { "wgmesh-tunnel" } else { "wgmesh-node" })["volumes"]
        .as_array_mut()
        .expect("volumes")
        .iter_mut()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

fn rule_verbs<'a>(inp: &'a mut Inputs, role: &str, resource: &str) -> &'a mut Vec<Value> {
    doc_mut(inp, NODE_FILE, "ClusterRole", role)["rules"]
        .as_array_mut()
        .expect("rules")
        .iter_mut()
        .find(|r| r["resources"][0] == resource)
        .unwrap_or_else(|| panic!("{role}: no rule for {resource}"))["verbs"]
        .as_array_mut()
        .expect("verbs")
}

type Breakage = (&'static str, fn(&mut Inputs), &'static str);

/// One way to break the inputs per check, and the words its problem must contain.
const BREAKAGES: &[Breakage] = &[
    (
        "build script left out of the image context",
        |i| i.dockerignore.push_str("\n/scripts/\n"),
        "leaves scripts/cni-static.sh out",
    ),
    (
        "a crate left out of the image context",
        |i| i.dockerignore.push_str("\nr?nl/**/*.rs\n"),
        "leaves rtnl/src/lib.rs out",
    ),
    (
        "lock file left out of the image context",
        |i| i.dockerignore.push_str("\n*.lock\n"),
        "leaves Cargo.lock out",
    ),
    (
        "cleanup before the CNI uninstall",
        |i| {
            let pod = &mut doc_mut(i, CLEANUP_FILE, "DaemonSet", "wgmesh-cleanup")["spec"]["template"]["spec"];
            pod["initContainers"].as_array_mut().unwrap().reverse();
        },
        "want the CNI uninstalled first",
    ),
    (
        "cleanup of another interface",
        |i| {
            doc_mut(i, CLEANUP_FILE, "DaemonSet", "wgmesh-cleanup")["spec"]["template"]["spec"]["initContainers"][1]["args"][1] =
                json!("--interface=wg9");
        },
        "cleans wg9",
    ),
    (
        "CNI uninstalled from another conf dir",
        |i| {
            doc_mut(i, CLEANUP_FILE, "DaemonSet", "wgmesh-cleanup")["spec"]["template"]["spec"]["volumes"][1]["hostPath"]["path"] =
                json!("/etc/cni/other.d");
        },
        "uninstall-cni works on",
    ),
    (
        "readiness file elsewhere",
        |i| {
            doc_mut(i, CLEANUP_FILE, "DaemonSet", "wgmesh-cleanup")["spec"]["template"]["spec"]["volumes"][2]["hostPath"]["path"] =
                json!("/run/other");
        },
        "removes the readiness file at",
    ),
    (
        "misspelled field",
        |i| pod_mut(i)["hostNetwrok"] = json!(true),
        "hostNetwrok is not a field",
    ),
    (
        "field at the wrong level",
        |i| container_mut(i, "agent")["hostPath"] = json!({"path": "/x"}),
        "hostPath is not a field",
    ),
    (
        "kind without a type",
        |i| {
            i.docs.push(Doc {
                file: NODE_FILE.into(),
                value: json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}),
            })
        },
        "no type for",
    ),
    (
        "wrong apiVersion",
        |i| doc_mut(i, NODE_FILE, "DaemonSet", "wgmesh-node")["apiVersion"] = json!("apps/v1beta2"),
        "apiVersion is not apps/v1",
    ),
    (
        "operator manifest gone",
        |i| i.docs.retain(|d| d.file != OPERATOR_FILE),
        "no documents in deploy/operator/operator.yaml",
    ),
    (
        "DaemonSet renamed",
        |i| {
            doc_mut(i, NODE_FILE, "DaemonSet", "wgmesh-node")["metadata"]["name"] =
                json!("wgmesh-agent")
        },
        "no DaemonSet wgmesh-node (docs use ds/wgmesh-node)",
    ),
    (
        "service account elsewhere",
        |i| {
            doc_mut(i, NODE_FILE, "ServiceAccount", "wgmesh-node")["metadata"]["namespace"] =
                json!("default")
        },
        "ServiceAccount is not in wgmesh-system",
    ),
    (
        "other namespace",
        |i| {
            doc_mut(i, NODE_FILE, "DaemonSet", "wgmesh-node")["metadata"]["namespace"] =
                json!("kube-system")
        },
        "not in the operator's namespace",
    ),
    (
        "other service account",
        |i| pod_mut(i)["serviceAccountName"] = json!("default"),
        "does not run as ServiceAccount",
    ),
    (
        "no hostNetwork",
        |i| pod_mut(i)["hostNetwork"] = json!(false),
        "not hostNetwork",
    ),
    (
        "no priority",
        |i| pod_mut(i)["priorityClassName"] = json!("system-cluster-critical"),
        "system-node-critical",
    ),
    (
        "some taints only",
        |i| pod_mut(i)["tolerations"] = json!([{"operator": "Exists", "effect": "NoSchedule"}]),
        "every taint",
    ),
    (
        "two at a time",
        |i| {
            doc_mut(i, NODE_FILE, "DaemonSet", "wgmesh-node")["spec"]["updateStrategy"]
                ["rollingUpdate"]["maxUnavailable"] = json!(2)
        },
        "maxUnavailable 1",
    ),
    (
        "agent flag typo",
        |i| set_arg(i, "agent", "--engine=attach", "--engin=attach"),
        "refused by its CLI",
    ),
    (
        "agent starts engines",
        |i| set_arg(i, "agent", "--engine=attach", "--engine=auto"),
        "not attach",
    ),
    (
        "agent file source",
        |i| set_arg(i, "agent", "--source=kubernetes", "--source=file"),
        "refused by its CLI",
    ),
    (
        "cluster CIDR preset",
        |i| env_mut(i, "WGMESH_CLUSTER_CIDR")["value"] = json!("10.0.0.0/8"),
        "must be left for the user",
    ),
    (
        "cluster CIDR variable gone",
        |i| env_mut(i, "WGMESH_CLUSTER_CIDR")["name"] = json!("CLUSTER_CIDR"),
        "does not define",
    ),
    (
        "node name from pod name",
        |i| env_mut(i, "NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"] = json!("metadata.name"),
        "from spec.nodeName",
    ),
    (
        "HTTP off",
        |i| set_arg(i, "agent", "--http-addr=0.0.0.0:9581", "--http-addr=off"),
        "HTTP is off",
    ),
    (
        "HTTP port moved",
        |i| {
            set_arg(
                i,
                "agent",
                "--http-addr=0.0.0.0:9581",
                "--http-addr=0.0.0.0:9582",
            )
        },
        "not on --http-addr port 9582",
    ),
    (
        "readiness probes liveness",
        |i| container_mut(i, "agent")["readinessProbe"]["httpGet"]["path"] = json!("/healthz"),
        "no probe on /readyz",
    ),
    (
        "tunnel daemonizes",
        |i| container_mut(i, "tunnel")["args"] = json!(["wgmesh0"]),
        "tunnel argv",
    ),
    (
        "tunnel other interface",
        |i| set_arg(i, "tunnel", "wgmesh0", "wgmesh1"),
        "tunnel argv",
    ),
    (
        "tunnel without NET_ADMIN",
        |i| container_mut(i, "tunnel")["securityContext"]["capabilities"]["add"] = json!([]),
        "tunnel does not add exactly NET_ADMIN",
    ),
    (
        "agent with SYS_ADMIN",
        |i| {
            container_mut(i, "agent")["securityContext"]["capabilities"]["add"] =
                json!(["NET_ADMIN", "SYS_ADMIN"])
        },
        "agent does not add exactly NET_ADMIN",
    ),
    (
        "engine rolled with every update",
        |i| doc_mut(i, NODE_FILE, "DaemonSet", "wgmesh-tunnel")["spec"]["updateStrategy"] = json!({"type": "RollingUpdate"}),
        "not updateStrategy OnDelete",
    ),
    (
        "engine with an API token",
        |i| pod_of(i, "wgmesh-tunnel")["automountServiceAccountToken"] = json!(true),
        "API token it never uses",
    ),
    (
        "engine off the host network",
        |i| pod_of(i, "wgmesh-tunnel")["hostNetwork"] = json!(false),
        "wgmesh-tunnel's pod is not hostNetwork",
    ),
    (
        "no TUN device",
        |i| volume_mut(i, "dev-net-tun")["hostPath"]["type"] = json!("File"),
        "/dev/net/tun is",
    ),
    (
        "sockets not shared",
        |i| container_mut(i, "tunnel")["volumeMounts"][1]["mountPath"] = json!("/run/wireguard"),
        "UAPI socket",
    ),
    (
        "sockets in emptyDir",
        |i| {
            *volume_mut(i, "wireguard-sockets") =
                json!({"name": "wireguard-sockets", "emptyDir": {}})
        },
        "not a hostPath volume",
    ),
    (
        "key must exist already",
        |i| volume_mut(i, "private-key")["hostPath"]["type"] = json!("Directory"),
        "not DirectoryOrCreate",
    ),
    (
        "key seen by the engine",
        |i| {
            let pod = pod_of(i, "wgmesh-tunnel");
            pod["volumes"]
                .as_array_mut()
                .expect("volumes")
                .push(json!({"name": "private-key", "hostPath": {"path": "/var/lib/wgmesh"}}));
            container_mut(i, "tunnel")["volumeMounts"]
                .as_array_mut()
                .expect("mounts")
                .push(json!({"name": "private-key", "mountPath": "/k"}))
        },
        "tunnel can see the private key",
    ),
    (
        "key not mounted",
        |i| container_mut(i, "agent")["volumeMounts"][1]["mountPath"] = json!("/var/lib/other"),
        "private key: agent: nothing is mounted",
    ),
    (
        "readiness elsewhere",
        |i| volume_mut(i, "readiness")["hostPath"]["path"] = json!("/var/run/wgmesh-agent"),
        "readiness file lands on",
    ),
    (
        "installer flag typo",
        |i| {
            set_arg(
                i,
                "install-cni",
                "--cni-bin-dir=/opt/cni/bin",
                "--cni-bindir=/opt/cni/bin",
            )
        },
        "refused by wgmesh-cni",
    ),
    (
        "installer conf dir unmounted",
        |i| {
            set_arg(
                i,
                "install-cni",
                "--cni-conf-dir=/etc/cni/net.d",
                "--cni-conf-dir=/etc/cni",
            )
        },
        "nothing is mounted at /etc/cni",
    ),
    (
        "installer bin dir elsewhere",
        |i| container_mut(i, "install-cni")["volumeMounts"][0]["name"] = json!("cni-conf"),
        "not /opt/cni/bin",
    ),
    (
        "installer gate off",
        |i| {
            container_mut(i, "install-cni")["args"]
                .as_array_mut()
                .expect("args")
                .push(json!("--no-require-readiness"))
        },
        "readiness gate off",
    ),
    (
        "watcher runs once",
        |i| {
            container_mut(i, "watch-cni")["args"].as_array_mut().expect("args").pop();
        },
        "does not run `wgmesh-cni install --watch`",
    ),
    (
        "watcher with another MTU",
        |i| container_mut(i, "watch-cni")["args"].as_array_mut().expect("args").push(json!("--mtu=1300")),
        "another entry than install-cni",
    ),
    (
        "watcher conf dir elsewhere",
        |i| container_mut(i, "watch-cni")["volumeMounts"][1]["name"] = json!("cni-bin"),
        "watch-cni writes /etc/cni/net.d on the host",
    ),
    (
        "other image",
        |i| container_mut(i, "tunnel")["image"] = json!("wgmesh-tunnel:dev"),
        "tunnel uses another image",
    ),
    (
        "binary not in image",
        |i| i.dockerfile = i.dockerfile.replace("/out/wgmesh-cni ", "/out/wgmesh-cnl "),
        "does not copy \"wgmesh-cni\"",
    ),
    (
        "unlocked build",
        |i| i.dockerfile = i.dockerfile.replace("--release --locked", "--release"),
        "--locked",
    ),
    (
        "extra verb",
        |i| rule_verbs(i, "wgmesh-node", "wireguardpeers").push(json!("delete")),
        "extra [(\"wgmesh.io\", \"wireguardpeers\", \"delete\")]",
    ),
    (
        "missing verb",
        |i| rule_verbs(i, "wgmesh-node", "nodes").retain(|v| v != "patch"),
        "missing [(\"\", \"nodes\", \"patch\")]",
    ),
    (
        "secrets listed",
        |i| rule_verbs(i, "wgmesh-node-psk", "secrets").push(json!("list")),
        "beyond get on secrets",
    ),
    (
        "secrets cluster-wide",
        |i| {
            doc_mut(i, NODE_FILE, "ClusterRoleBinding", "wgmesh-node")["roleRef"]["name"] =
                json!("wgmesh-node-psk")
        },
        "extra [(\"\", \"secrets\", \"get\")",
    ),
    (
        "secret namespace not bound",
        |i| {
            doc_mut(i, "examples/peer.yaml", "WireGuardPeer", "office-gateway")["spec"]
                ["presharedKeySecretRef"]["namespace"] = json!("vpn")
        },
        "namespace vpn has no RoleBinding",
    ),
    (
        "named secret only",
        |i| {
            doc_mut(i, NODE_FILE, "ClusterRole", "wgmesh-node-psk")["rules"][0]["resourceNames"] =
                json!(["x"])
        },
        "resourceNames",
    ),
];

#[test]
fn dockerignore_is_read_as_docker_reads_it() {
    let rules = "# comment\n.git\n**/target\nscripts\n!scripts/keep.sh\ndocs/*.md\n";
    assert!(ignored(rules, "scripts/other.sh"), "a folder's line covers what is inside it");
    assert!(!ignored(rules, "scripts/keep.sh"), "a later ! line takes a file back");
    assert!(ignored(rules, "target/release/x") && ignored(rules, "tunnel/fuzz/target/y"), "** spans any depth, none too");
    assert!(ignored(rules, "docs/a.md") && !ignored(rules, "docs/a.txt") && !ignored(rules, "docs/sub/a.md"));
    assert!(!ignored(rules, "tunnel/src/lib.rs") && !ignored(rules, ".gitignore"));
}

#[test]
fn every_check_can_fail() {
    let good = load();
    for (what, breakage, expect) in BREAKAGES {
        let mut inp = good.clone();
        breakage(&mut inp);
        let problems = all_problems(&inp);
        assert!(
            problems.iter().any(|p| p.contains(expect)),
            "{what}: no problem mentions {expect:?}; got:\n{}",
            problems.join("\n")
        );
    }
}

#[test]
fn kubelet_expansion_is_emulated() {
    let env = vec![
        ("A".to_owned(), "x".to_owned()),
        ("E".to_owned(), String::new()),
    ];
    assert_eq!(expand("--f=$(A)", &env), "--f=x");
    assert_eq!(expand("--f=$(E)", &env), "--f=");
    assert_eq!(expand("$(B)/$$(A)/$", &env), "$(B)/$(A)/$");
}
