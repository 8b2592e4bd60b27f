//! Test harness: a throw-away "node" network namespace (with its own underlay and default
//! route) and "pod" namespaces, the real reference plugins, and our binary, all invoked the
//! way a container runtime invokes them. Everything lives in namespaces the test creates and
//! is removed by `Drop`, also when a test panics.

#![allow(dead_code)] // each test file uses a different part of the harness

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use serde_json::{json, Value};

pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
pub const WGMESH: &str = env!("CARGO_BIN_EXE_wgmesh-cni");

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Fails (never skips) when the machine cannot run the real chain.
pub fn require_environment() {
    let bridge = Path::new(REFERENCE_PLUGINS).join("bridge");
    assert!(
        bridge.exists() && Path::new(REFERENCE_PLUGINS).join("host-local").exists(),
        "the CNI reference plugins are missing from {REFERENCE_PLUGINS}: \
         run `apt-get install containernetworking-plugins`"
    );
    assert!(
        nix_is_root(),
        "these tests create network namespaces and must run as root"
    );
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// What a plugin printed and how it exited.
#[derive(Debug, Clone)]
pub struct Reply {
    pub stdout: String,
    pub stderr: String,
    pub ok: bool,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} / {}", self.stdout, self.stderr))
    }

    /// The CNI error code, asserting the error shape the spec requires.
    pub fn error_code(&self) -> i64 {
        assert!(!self.ok, "expected a failure, got {}", self.stdout);
        let v = self.json();
        let msg = v["msg"].as_str().unwrap_or("");
        assert!(msg.len() > 10, "error without a readable msg: {v}");
        v["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("error without code: {v}"))
    }

    pub fn msg(&self) -> String {
        self.json()["msg"].as_str().unwrap_or("").to_string()
    }
}

/// The CNI_* environment of one call.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: Option<String>,
    pub ifname: &'a str,
}

/// One node netns with an underlay and bridge config, plus one pod netns; deleted on drop.
pub struct Sandbox {
    pub id: u32,
    pub node: String,
    pub pod: String,
    pub bridge: String,
    pub subnet: String,
    pub dir: tempfile::TempDir,
    extra_netns: Vec<String>,
}

impl Sandbox {
    /// A node whose default route goes out of a dummy underlay `ul0` with `underlay_mtu`.
    pub fn new(underlay_mtu: u32) -> Self {
        let s = Self::without_default_route(underlay_mtu);
        ip(&["-n", &s.node, "route", "add", "default", "dev", "ul0"]);
        s
    }

    pub fn without_default_route(underlay_mtu: u32) -> Self {
        require_environment();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let s = Self {
            id: n,
            node: format!("wgmcni-node-{pid}-{n}"),
            pod: format!("wgmcni-pod-{pid}-{n}"),
            // Interface names are at most 15 bytes.
            bridge: format!("wgb{}x{n}", pid % 1_000_000),
            // Private range, and only ever configured inside our own namespaces.
            subnet: format!("10.{}.{}.0/24", 100 + n % 100, pid % 250),
            dir,
            extra_netns: Vec::new(),
        };
        // Build the guard first: if any step below panics, Drop still removes what exists.
        ip(&["netns", "add", &s.node]);
        ip(&["netns", "add", &s.pod]);
        ip(&["-n", &s.node, "link", "set", "lo", "up"]);
        // A veth pair stands in for the NIC: the dummy module is not available everywhere.
        add_underlay(&s.node, "ul0", underlay_mtu);
        ip(&["-n", &s.node, "link", "set", "ul0", "up"]);
        s
    }

    /// A second pod netns in the same node, removed with the sandbox.
    pub fn add_pod(&mut self, suffix: &str) -> String {
        let name = format!("{}-{suffix}", self.pod);
        ip(&["netns", "add", &name]);
        self.extra_netns.push(name.clone());
        name
    }

    pub fn pod_path(&self) -> String {
        netns_path(&self.pod)
    }

    /// The readiness file a test controls (absent until `set_ready(true)`).
    pub fn readiness_path(&self) -> PathBuf {
        self.dir.path().join("ready")
    }

    pub fn set_ready(&self, ready: bool) {
        let p = self.readiness_path();
        if ready {
            std::fs::write(&p, b"").unwrap_or_else(|e| panic!("{e}"));
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }

    /// The reference bridge + host-local config at `version`.
    pub fn bridge_conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "wgmesh-test",
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": self.subnet }]],
                "dataDir": self.dir.path().join("ipam"),
            },
        })
    }

    /// Our plugin's entry as the runtime hands it over: with name, version and prevResult.
    pub fn wgmesh_conf(&self, version: &str, prev: Option<&Value>, extra: Value) -> Value {
        let mut conf = json!({
            "cniVersion": version,
            "name": "wgmesh-test",
            "type": "wgmesh-cni",
            "readinessPath": self.readiness_path(),
        });
        if let (Some(o), Some(prev)) = (conf.as_object_mut(), prev) {
            o.insert("prevResult".into(), prev.clone());
        }
        if let (Some(o), Value::Object(extra)) = (conf.as_object_mut(), extra) {
            o.extend(extra);
        }
        conf
    }

    /// Runs `plugin` inside the node netns, like a runtime on that node would.
    pub fn invoke(&self, plugin: &str, call: &Call, stdin: &[u8]) -> Reply {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node, plugin])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", call.command)
            .env("CNI_CONTAINERID", call.container_id)
            .env("CNI_IFNAME", call.ifname)
            .env(
                "CNI_PATH",
                format!(
                    "{}:{REFERENCE_PLUGINS}",
                    Path::new(WGMESH)
                        .parent()
                        .map(Path::display)
                        .map(|d| d.to_string())
                        .unwrap_or_default()
                ),
            );
        if let Some(ns) = &call.netns {
            cmd.env("CNI_NETNS", ns);
        }
        run_with_stdin(cmd, stdin)
    }

    pub fn call(&self, command: &'static str) -> Call<'static> {
        Call {
            command,
            container_id: "wgmesh-test-container",
            netns: Some(self.pod_path()),
            ifname: "eth0",
        }
    }

    /// bridge ADD, then wgmesh-cni ADD with bridge's result as prevResult.
    pub fn add_chain(&self, version: &str, extra: Value) -> (Value, Reply) {
        let bridge = self.bridge_add(version);
        let ours = self.invoke(
            WGMESH,
            &self.call("ADD"),
            self.wgmesh_conf(version, Some(&bridge), extra)
                .to_string()
                .as_bytes(),
        );
        (bridge, ours)
    }

    pub fn bridge_add(&self, version: &str) -> Value {
        let reply = self.invoke(
            &format!("{REFERENCE_PLUGINS}/bridge"),
            &self.call("ADD"),
            self.bridge_conf(version).to_string().as_bytes(),
        );
        assert!(
            reply.ok,
            "bridge ADD failed: {} {}",
            reply.stdout, reply.stderr
        );
        reply.json()
    }

    /// The chain's DEL in reverse order: wgmesh-cni, then bridge.
    pub fn del_chain(&self, version: &str, result: &Value, call: &Call) -> (Reply, Reply) {
        let ours = self.invoke(
            WGMESH,
            call,
            self.wgmesh_conf(version, Some(result), json!({}))
                .to_string()
                .as_bytes(),
        );
        let mut bridge_conf = self.bridge_conf(version);
        if let Some(o) = bridge_conf.as_object_mut() {
            o.insert("prevResult".into(), result.clone());
        }
        let bridge = self.invoke(
            &format!("{REFERENCE_PLUGINS}/bridge"),
            call,
            bridge_conf.to_string().as_bytes(),
        );
        (ours, bridge)
    }

    /// Runs a whole conflist the way libcni does: ADD in order, each plugin getting the
    /// previous result; CHECK in order and DEL in reverse, each getting the final result.
    pub fn run_conflist(
        &self,
        list: &Value,
        command: &'static str,
        cached: Option<&Value>,
    ) -> Reply {
        let plugins: Vec<Value> = list["plugins"].as_array().cloned().unwrap_or_default();
        let ordered: Vec<Value> = if command == "DEL" {
            plugins.into_iter().rev().collect()
        } else {
            plugins
        };
        let mut prev = cached.cloned();
        let mut last = Reply {
            stdout: String::new(),
            stderr: String::new(),
            ok: true,
        };
        for mut plugin in ordered {
            let kind = plugin["type"].as_str().unwrap_or_default().to_string();
            plugin["cniVersion"] = list["cniVersion"].clone();
            plugin["name"] = list["name"].clone();
            if let Some(p) = &prev {
                plugin["prevResult"] = p.clone();
            }
            let binary = if kind == "wgmesh-cni" {
                WGMESH.to_string()
            } else {
                format!("{REFERENCE_PLUGINS}/{kind}")
            };
            last = self.invoke(&binary, &self.call(command), plugin.to_string().as_bytes());
            if !last.ok {
                return last;
            }
            if command == "ADD" {
                prev = Some(last.json());
            }
        }
        last
    }

    pub fn pod_mtu(&self, ifname: &str) -> u32 {
        link_mtu(&self.pod, ifname).unwrap_or_else(|| panic!("{ifname} missing in pod"))
    }

    pub fn node_mtu(&self, ifname: &str) -> Option<u32> {
        link_mtu(&self.node, ifname)
    }

    /// The host-side veth bridge reported (the interface without sandbox that is not the bridge).
    pub fn host_veth(&self, result: &Value) -> String {
        result["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i.get("sandbox").is_none())
            .filter_map(|i| i["name"].as_str())
            .find(|n| *n != self.bridge)
            .unwrap_or_else(|| panic!("no host veth in {result}"))
            .to_string()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Deleting the node netns takes the bridge and host veths with it.
        for ns in self.extra_netns.iter().chain([&self.pod, &self.node]) {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// An "uplink" `name` with `mtu` in `netns` (a veth whose peer stays in the same netns).
pub fn add_underlay(netns: &str, name: &str, mtu: u32) {
    let mtu = mtu.to_string();
    let peer = format!("{name}p");
    ip(&[
        "-n", netns, "link", "add", name, "mtu", &mtu, "type", "veth", "peer", "name", &peer,
        "mtu", &mtu,
    ]);
}

pub fn netns_path(name: &str) -> String {
    format!("/var/run/netns/{name}")
}

pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip: {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An interface's MTU inside a named netns, or None when it does not exist there.
pub fn link_mtu(netns: &str, ifname: &str) -> Option<u32> {
    let out = Command::new("ip")
        .args(["-n", netns, "-j", "link", "show", "dev", ifname])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v[0]["mtu"].as_u64().and_then(|m| u32::try_from(m).ok())
}

pub fn run_with_stdin(mut cmd: Command, stdin: &[u8]) -> Reply {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin);
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait: {e}"));
    Reply {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        ok: out.status.success(),
    }
}
