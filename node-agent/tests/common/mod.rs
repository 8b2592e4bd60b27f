//! Test harness: a mesh of "nodes" (network namespaces on a shared underlay bridge that lives
//! in its own namespace), each running wgmesh-tunnel and wgmesh-node-agent with the file
//! source, and "pods" (namespaces wired by the reference bridge plugin chained with
//! wgmesh-cni). Names carry the pid; only private addresses, only inside namespaces made
//! here. `Drop` kills every process and deletes every namespace and link, also on panic.

#![allow(dead_code)] // each test file uses a different part of the harness

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const AGENT: &str = env!("CARGO_BIN_EXE_wgmesh-node-agent");
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
pub const TABLE: &str = "51820";
pub const UNDERLAY_MTU: u32 = 1500;
pub const MESH_MTU: u32 = UNDERLAY_MTU - 80;

static NEXT: AtomicU32 = AtomicU32::new(0);
/// The scenarios measure timings on a 2-core machine: one mesh at a time.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A binary of another workspace crate: `$ENV`, else next to our own binary (where
/// `cargo build`/`cargo test --workspace` put it).
pub fn sibling(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let dir = Path::new(AGENT).parent().unwrap_or(Path::new("."));
    dir.join(name)
}

pub fn tunnel_bin() -> PathBuf {
    sibling("wgmesh-tunnel", "WGMESH_TUNNEL_BIN")
}

pub fn cni_bin() -> PathBuf {
    sibling("wgmesh-cni", "WGMESH_CNI_BIN")
}

/// Fails (never skips) when the machine cannot run the mesh.
pub fn require_environment() {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    assert!(
        root,
        "these tests create network namespaces and must run as root"
    );
    for (bin, how) in [
        (
            tunnel_bin(),
            "cargo build -p wgmesh-tunnel (or set WGMESH_TUNNEL_BIN)",
        ),
        (
            cni_bin(),
            "cargo build -p wgmesh-cni (or set WGMESH_CNI_BIN)",
        ),
        (
            PathBuf::from(REFERENCE_PLUGINS).join("bridge"),
            "apt-get install containernetworking-plugins",
        ),
        (
            PathBuf::from(REFERENCE_PLUGINS).join("host-local"),
            "apt-get install containernetworking-plugins",
        ),
    ] {
        assert!(bin.exists(), "{} is missing: {how}", bin.display());
    }
    for tool in ["ip", "ping", "tcpdump", "nft"] {
        let ok = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            ok,
            "{tool} is missing: apt-get install iproute2 iputils-ping tcpdump nftables"
        );
    }
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// `ip ARGS`, which must succeed.
pub fn ip(args: &[&str]) -> String {
    let o = run(Command::new("ip").args(args));
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `ip netns exec NS ARGS...`.
pub fn in_ns(ns: &str, args: &[&str]) -> Output {
    run(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

pub fn sysctl(ns: &str, kv: &str) {
    let o = in_ns(ns, &["sysctl", "-qw", kv]);
    assert!(
        o.status.success(),
        "sysctl {kv} in {ns}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// One ICMP echo (with `count` tries) from `ns` to `to`; true if any reply came.
pub fn ping(ns: &str, to: IpAddr, count: u32, wait: &str) -> bool {
    let c = count.to_string();
    in_ns(
        ns,
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            &c,
            "-i",
            "0.2",
            "-W",
            wait,
            &to.to_string(),
        ],
    )
    .status
    .success()
}

/// Polls `f` every 20 ms until it is true or `timeout` passes; returns the time it took.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn netns_path(ns: &str) -> String {
    format!("/var/run/netns/{ns}")
}

/// Runs `f` on a thread that has entered network namespace `ns`.
pub fn in_netns_thread<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<Result<T, String>> {
    let path = netns_path(ns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
        // SAFETY: setns on a descriptor we own; it changes only this thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
        }
        Ok(f())
    })
}

fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A TCP transfer of `len` pseudo-random bytes from a socket in `from` to a listener on `to_ip`
/// in `to`; the receiver's bytes must equal the sender's.
pub fn tcp_transfer(from: &str, to: &str, to_ip: IpAddr, len: usize) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let server = in_netns_thread(to, move || -> Result<Vec<u8>, String> {
        let l = TcpListener::bind((to_ip, 0)).map_err(|e| format!("bind {to_ip}: {e}"))?;
        let port = l.local_addr().map_err(|e| e.to_string())?.port();
        let _ = tx.send(port);
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        let start = Instant::now();
        let (mut s, _) = loop {
            match l.accept() {
                Ok(c) => break c,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        && start.elapsed() < Duration::from_secs(10) =>
                {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        s.set_nonblocking(false).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        s.read_to_end(&mut got).map_err(|e| format!("read: {e}"))?;
        Ok(got)
    });
    let port = rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| "listener did not start".to_string())?;
    let data = payload(len, u64::from(port));
    let sent = data.clone();
    let client = in_netns_thread(from, move || -> Result<(), String> {
        let mut s = TcpStream::connect_timeout(&(to_ip, port).into(), Duration::from_secs(5))
            .map_err(|e| format!("connect {to_ip}:{port}: {e}"))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        s.write_all(&data).map_err(|e| format!("write: {e}"))?;
        s.shutdown(std::net::Shutdown::Write)
            .map_err(|e| e.to_string())
    });
    client
        .join()
        .map_err(|_| "client panicked".to_string())???;
    let got = server
        .join()
        .map_err(|_| "server panicked".to_string())???;
    if got != sent {
        return Err(format!(
            "received {} bytes that differ from the {} sent",
            got.len(),
            sent.len()
        ));
    }
    Ok(())
}

/// `GET path` from the agent's HTTP endpoint inside node namespace `ns`; (status line, body).
pub fn http_get(ns: &str, path: &str) -> (String, String) {
    let path = path.to_owned();
    let r = in_netns_thread(ns, move || -> Result<String, String> {
        let mut s = TcpStream::connect(("127.0.0.1", 9581)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: agent\r\n\r\n").map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
    .join();
    let text = match r {
        Ok(Ok(Ok(t))) => t,
        other => panic!("GET from the agent in {ns}: {other:?}"),
    };
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// One pod: a namespace with eth0 behind the node's bridge.
#[derive(Clone, Debug)]
pub struct Pod {
    pub ns: String,
    pub v4: IpAddr,
    pub v6: IpAddr,
}

/// One node of the mesh.
pub struct Node {
    pub n: u32,
    pub name: String,
    pub ns: String,
    pub ifname: String,
    pub underlay: IpAddr,
    pub public_key: String,
    pub key_path: PathBuf,
    pub readiness: PathBuf,
    pub log: PathBuf,
    pub agent: Option<Child>,
    pub pods: Vec<Pod>,
    /// The engine binary its agent starts.
    pub engine: PathBuf,
    /// Whether its agent is told its pod CIDRs (`--pod-cidr`) or must learn them from its peer.
    pub pod_cidr_flags: bool,
    /// The `--cluster-cidr`s its agent is given.
    pub cluster_cidrs: Vec<String>,
}

impl Node {
    pub fn v4_cidr(&self) -> String {
        format!("10.244.{}.0/24", self.n)
    }
    pub fn v6_cidr(&self) -> String {
        format!("fd00:244:0:{}::/64", self.n)
    }
    pub fn tunnel_v4(&self) -> IpAddr {
        IpAddr::from([10, 244, self.n as u8, 1])
    }
}

/// A packet capture on the underlay bridge.
pub struct Capture {
    child: Child,
    pub file: PathBuf,
}

impl Drop for Capture {
    /// A failing test must not leave tcpdump running: killed unless `stop_capture` reaped it.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The mesh; see the module docs.
pub struct Mesh {
    pub id: u32,
    pub dir: tempfile::TempDir,
    pub ul: String,
    pub nodes: Vec<Node>,
    extra_children: Vec<Child>,
    netns: Vec<String>,
}

impl Mesh {
    /// `nodes` nodes with `pods` pods each, every node published and ready.
    pub fn new(nodes: u32, pods: u32) -> Mesh {
        require_environment();
        let id = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut m = Mesh {
            id,
            ul: format!("wgmna-{pid}-{id}-ul"),
            dir,
            nodes: Vec::new(),
            extra_children: Vec::new(),
            netns: Vec::new(),
        };
        // every step after this is undone by Drop, whatever fails
        m.add_netns(&m.ul.clone());
        let ul = m.ul.clone();
        // an IPv4-only underlay: any IPv6 frame on it would be a leak
        sysctl(&ul, "net.ipv6.conf.all.disable_ipv6=1");
        sysctl(&ul, "net.ipv6.conf.default.disable_ipv6=1");
        ip(&["-n", &ul, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &ul, "link", "set", "br0", "up"]);
        std::fs::create_dir_all(m.peer_dir()).unwrap_or_else(|e| panic!("{e}"));
        for n in 1..=nodes {
            m.add_node(n, true, pods);
        }
        // Each agent was ready when it started; the earlier ones learn the later nodes on a
        // later tick. Tests start sending at once, so wait until every engine has every peer.
        let engines: Vec<(String, String)> = m.nodes.iter().map(|n| (n.ns.clone(), n.ifname.clone())).collect();
        let peers = |(ns, ifname): &(String, String)| {
            String::from_utf8_lossy(&in_ns(ns, &["wg", "show", ifname, "peers"]).stdout).lines().count()
        };
        let all = wait_for(Duration::from_secs(10), || engines.iter().all(|e| peers(e) + 1 == nodes as usize));
        assert!(all.is_some(), "not every engine has every other node as a peer: {:?}", engines.iter().map(peers).collect::<Vec<_>>());
        m
    }

    /// A host on the underlay bridge that is no node (say, an attacker) at 192.168.77.`octet`;
    /// returns its namespace, removed with the mesh.
    pub fn underlay_host(&mut self, octet: u8) -> String {
        let ns = format!("wgmna-{}-{}-h{octet}", std::process::id(), self.id);
        self.add_netns(&ns);
        let ul = self.ul.clone();
        let port = format!("h{octet}");
        ip(&["-n", &ul, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        ip(&["-n", &ul, "link", "set", &port, "master", "br0", "up"]);
        sysctl(&ns, "net.ipv6.conf.eth0.disable_ipv6=1");
        ip(&["-n", &ns, "addr", "add", &format!("192.168.77.{octet}/24"), "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ns
    }

    fn add_netns(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        self.netns.push(name.to_owned());
    }

    pub fn peer_dir(&self) -> PathBuf {
        self.dir.path().join("peers")
    }

    pub fn node(&self, n: u32) -> &Node {
        self.nodes
            .iter()
            .find(|x| x.n == n)
            .unwrap_or_else(|| panic!("no node {n}"))
    }

    pub fn node_mut(&mut self, n: u32) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|x| x.n == n)
            .unwrap_or_else(|| panic!("no node {n}"))
    }

    /// Adds node `n`: namespace, underlay link, key, agent (ready), then its pods.
    /// With `publish` false its peer file is not written (a node joining later).
    pub fn add_node(&mut self, n: u32, publish: bool, pods: u32) {
        let pid = std::process::id();
        let ns = format!("wgmna-{pid}-{}-n{n}", self.id);
        self.add_netns(&ns);
        let ul = self.ul.clone();
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ul,
            "link",
            "add",
            &format!("u{n}"),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ]);
        ip(&[
            "-n",
            &ul,
            "link",
            "set",
            &format!("u{n}"),
            "master",
            "br0",
            "up",
        ]);
        sysctl(&ns, "net.ipv6.conf.eth0.disable_ipv6=1");
        sysctl(&ns, "net.ipv4.ip_forward=1");
        sysctl(&ns, "net.ipv6.conf.all.forwarding=1");
        let underlay: IpAddr = IpAddr::from([192, 168, 77, n as u8]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{underlay}/24"),
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n",
            &ns,
            "link",
            "set",
            "eth0",
            "mtu",
            &UNDERLAY_MTU.to_string(),
            "up",
        ]);
        ip(&["-n", &ns, "route", "add", "default", "dev", "eth0"]);
        let key_path = self.dir.path().join(format!("n{n}/private.key"));
        let o = run(Command::new(AGENT)
            .args(["pubkey", "--private-key"])
            .arg(&key_path));
        assert!(
            o.status.success(),
            "pubkey: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let public_key = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        let node = Node {
            n,
            name: format!("n{n}"),
            ns,
            ifname: format!(
                "wgm{}{}{n}",
                pid % 100_000,
                (b'a' + (self.id % 26) as u8) as char
            ),
            underlay,
            public_key,
            key_path,
            readiness: self.dir.path().join(format!("n{n}/ready")),
            log: self.dir.path().join(format!("n{n}/agent.log")),
            agent: None,
            pods: Vec::new(),
            engine: tunnel_bin(),
            pod_cidr_flags: true,
            cluster_cidrs: vec!["10.244.0.0/16".into(), "fd00:244::/48".into()],
        };
        self.nodes.push(node);
        if publish {
            self.publish(n);
        }
        self.start_agent(n);
        self.wait_ready(n);
        for p in 1..=pods {
            self.add_pod(n, p);
        }
    }

    /// Writes node `n`'s WireGuardPeer (as the operator would keep it) atomically.
    pub fn publish(&self, n: u32) {
        let node = self.node(n);
        let doc = format!(
            "apiVersion: wgmesh.io/v1alpha1\nkind: WireGuardPeer\nmetadata:\n  name: node-{name}\n  labels:\n    app.kubernetes.io/managed-by: wgmesh-operator\nspec:\n  publicKey: \"{key}\"\n  endpoint: \"{ep}:51820\"\n  allowedIPs: [\"{v4}\", \"{v6}\"]\n  nodeName: {name}\n",
            name = node.name,
            key = node.public_key,
            ep = node.underlay,
            v4 = node.v4_cidr(),
            v6 = node.v6_cidr(),
        );
        let tmp = self.peer_dir().join(format!(".node-{}.tmp", node.name));
        std::fs::write(&tmp, doc).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(
            &tmp,
            self.peer_dir().join(format!("node-{}.yaml", node.name)),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn unpublish(&self, n: u32) {
        let name = &self.node(n).name;
        std::fs::remove_file(self.peer_dir().join(format!("node-{name}.yaml")))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts node `n`'s agent (which starts the engine if there is none).
    pub fn start_agent(&mut self, n: u32) {
        self.start_agent_with(n, &[]);
    }

    /// Starts node `n`'s engine the way the wgmesh-tunnel DaemonSet does (`--foreground`, not
    /// the agent's child); returns the handle for `stop_child`.
    pub fn start_engine(&mut self, n: u32) -> usize {
        let node = self.node(n);
        let child = Command::new("ip")
            .args(["netns", "exec", &node.ns])
            .arg(&node.engine)
            .args(["--foreground", &node.ifname])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&node.log)
                    .unwrap_or_else(|e| panic!("{}: {e}", node.log.display())),
            )
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the engine: {e}"));
        self.extra_children.push(child);
        self.extra_children.len() - 1
    }

    /// Kills a process `start_engine` started and waits for it.
    pub fn stop_child(&mut self, i: usize) {
        if let Some(c) = self.extra_children.get_mut(i) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `n`'s agent with `extra` arguments after the usual ones.
    pub fn start_agent_with(&mut self, n: u32, extra: &[&str]) {
        self.start_agent_env(n, extra, &[]);
    }

    /// As `start_agent_with`, with `env` set for the agent (`ip` is found on the test's PATH).
    pub fn start_agent_env(&mut self, n: u32, extra: &[&str], env: &[(&str, &str)]) {
        let ip_bin = std::env::var_os("PATH")
            .and_then(|p| std::env::split_paths(&p).map(|d| d.join("ip")).find(|f| f.exists()))
            .unwrap_or_else(|| PathBuf::from("ip"));
        let peer_dir = self.peer_dir();
        let node = self.node_mut(n);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap_or_else(|e| panic!("{}: {e}", node.log.display()));
        let log2 = log.try_clone().unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(ip_bin)
            .args([
                "netns",
                "exec",
                &node.ns,
                AGENT,
                "run",
                "--node-name",
                &node.name,
                "--interface",
                &node.ifname,
            ])
            .arg("--private-key")
            .arg(&node.key_path)
            .arg("--peer-dir")
            .arg(&peer_dir)
            .arg("--readiness-path")
            .arg(&node.readiness)
            .arg("--engine-binary")
            .arg(&node.engine)
            .args(node.cluster_cidrs.iter().flat_map(|c| ["--cluster-cidr", c]))
            .args(if node.pod_cidr_flags { vec!["--pod-cidr".to_string(), node.v4_cidr(), "--pod-cidr".into(), node.v6_cidr()] } else { vec![] })
            .args(["--interval-ms", "200"])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the agent: {e}"));
        node.agent = Some(child);
    }

    /// SIGKILLs node `n`'s agent (no chance to clean anything up).
    /// Whether node `n`'s agent process is still running.
    pub fn agent_running(&mut self, n: u32) -> bool {
        self.node_mut(n).agent.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn kill_agent(&mut self, n: u32) {
        if let Some(mut c) = self.node_mut(n).agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn wait_ready(&self, n: u32) {
        let node = self.node(n);
        let t = wait_for(Duration::from_secs(20), || node.readiness.exists());
        assert!(
            t.is_some(),
            "node {n} never became ready; agent log:\n{}",
            self.log_tail(n)
        );
    }

    pub fn log_tail(&self, n: u32) -> String {
        let text = std::fs::read_to_string(&self.node(n).log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The pid of the engine serving node `n`'s interface.
    pub fn engine_pid(&self, n: u32) -> Option<i32> {
        engine_pids(&self.node(n).ifname).first().copied()
    }

    /// Pod `p` of node `n`: bridge + host-local ADD, then wgmesh-cni ADD with its result.
    pub fn add_pod(&mut self, n: u32, p: u32) {
        let pid = std::process::id();
        let ns = format!("wgmna-{pid}-{}-n{n}p{p}", self.id);
        self.add_netns(&ns);
        let node = self.node(n);
        let bridge_conf = json!({
            "cniVersion": "1.0.0",
            "name": "wgmesh-e2e",
            "type": "bridge",
            "bridge": "cni0",
            "isDefaultGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": node.v4_cidr()}], [{"subnet": node.v6_cidr()}]],
                "dataDir": self.dir.path().join(format!("n{n}/ipam")),
            },
        });
        let bridge = cni(
            &node.ns,
            &PathBuf::from(REFERENCE_PLUGINS).join("bridge"),
            &ns,
            &bridge_conf,
        );
        let ours_conf = json!({
            "cniVersion": "1.0.0",
            "name": "wgmesh-e2e",
            "type": "wgmesh-cni",
            "readinessPath": node.readiness,
            "prevResult": bridge,
        });
        cni(&node.ns, &cni_bin(), &ns, &ours_conf);
        let addr = |v6: bool| -> IpAddr {
            bridge["ips"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["address"].as_str())
                .filter_map(|a| a.split('/').next()?.parse::<IpAddr>().ok())
                .find(|a| a.is_ipv6() == v6)
                .unwrap_or_else(|| {
                    panic!(
                        "no {} address in {bridge}",
                        if v6 { "IPv6" } else { "IPv4" }
                    )
                })
        };
        let pod = Pod {
            ns,
            v4: addr(false),
            v6: addr(true),
        };
        self.node_mut(n).pods.push(pod);
    }

    /// All pods with the node they run on.
    pub fn pods(&self) -> Vec<(u32, Pod)> {
        self.nodes
            .iter()
            .flat_map(|n| n.pods.iter().map(|p| (n.n, p.clone())))
            .collect()
    }

    /// Starts tcpdump on the underlay bridge.
    pub fn capture(&mut self) -> Capture {
        let file = self
            .dir
            .path()
            .join(format!("underlay-{}.pcap", self.extra_children.len()));
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", &self.ul, "tcpdump", "-i", "br0", "-n", "-U", "-s", "256", "-w",
            ])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("tcpdump: {e}"));
        // tcpdump says "listening on" once the capture is armed
        let stderr = child.stderr.take();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            if let Some(s) = stderr {
                for line in BufReader::new(s).lines().map_while(Result::ok) {
                    if line.contains("listening on") {
                        let _ = tx.send(());
                    }
                }
            }
        });
        let armed = rx.recv_timeout(Duration::from_secs(10)).is_ok();
        let cap = Capture { child, file };
        assert!(armed, "tcpdump did not start");
        cap
    }

    /// Stops a capture (flushing it) and returns what was seen.
    pub fn stop_capture(&mut self, mut cap: Capture) -> CaptureSummary {
        // SAFETY: signalling our own child process by its pid.
        unsafe { libc::kill(cap.child.id() as i32, libc::SIGINT) };
        let done = wait_for(Duration::from_secs(5), || {
            matches!(cap.child.try_wait(), Ok(Some(_)))
        });
        if done.is_none() {
            let _ = cap.child.kill();
            let _ = cap.child.wait();
        }
        let bytes =
            std::fs::read(&cap.file).unwrap_or_else(|e| panic!("{}: {e}", cap.file.display()));
        summarize(&bytes)
    }
}

/// Runs a CNI plugin ADD for pod namespace `pod` inside node namespace `node`.
fn cni(node: &str, plugin: &Path, pod: &str, conf: &Value) -> Value {
    let mut child = Command::new("ip")
        .args(["netns", "exec", node])
        .arg(plugin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", pod)
        .env("CNI_NETNS", netns_path(pod))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", REFERENCE_PLUGINS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", plugin.display()));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(conf.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let o = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{} ADD failed: {out} {}",
        plugin.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("{} printed no JSON ({e}): {out}", plugin.display()))
}

/// Engine processes serving `ifname` (argv: .../wgmesh-tunnel IFNAME); names are unique per test.
pub fn engine_pids(ifname: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
        let is_engine = args
            .first()
            .is_some_and(|a| a.ends_with(b"wgmesh-tunnel") || a.ends_with(b"wireguard-go"));
        if is_engine && args.last() == Some(&ifname.as_bytes()) {
            // a zombie has an empty cmdline, so anything found here is alive
            out.push(pid);
        }
    }
    out
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in self.nodes.iter().map(|n| n.n).collect::<Vec<_>>() {
                eprintln!("---- agent log of node {n} ----\n{}", self.log_tail(n));
            }
        }
        // agents first, so none restarts an engine while we take them down
        for node in &mut self.nodes {
            if let Some(mut c) = node.agent.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for c in &mut self.extra_children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for node in &self.nodes {
            // deleting the TUN makes the engine exit on its own
            let _ = Command::new("ip")
                .args(["-n", &node.ns, "link", "del", &node.ifname])
                .output();
            let gone = wait_for(Duration::from_secs(3), || {
                engine_pids(&node.ifname).is_empty()
            });
            if gone.is_none() {
                for pid in engine_pids(&node.ifname) {
                    // SAFETY: a pid of an engine this test started (unique interface name).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", node.ifname));
        }
        for ns in self.netns.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// What an underlay capture held.
#[derive(Debug, Default)]
pub struct CaptureSummary {
    pub frames: usize,
    pub arp: usize,
    /// WireGuard messages by type (1 initiation, 2 response, 3 cookie, 4 data).
    pub wireguard: [usize; 5],
    /// ICMP port unreachable quoting a WireGuard datagram (an engine was down): headers only.
    pub icmp_port_unreachable: usize,
    /// IGMP membership reports of the underlay hosts themselves (to 224.0.0.0/24).
    pub igmp: usize,
    /// Anything else that is IP: a description of each.
    pub other_ip: Vec<String>,
}

/// Reads a pcap (Ethernet) file: every IPv4 packet must be UDP to or from port 51820 carrying
/// a WireGuard message; anything else IP is listed in `other_ip`.
pub fn summarize(bytes: &[u8]) -> CaptureSummary {
    let mut s = CaptureSummary::default();
    let u32_at = |b: &[u8], o: usize| -> usize {
        b.get(o..o + 4)
            .map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]) as usize)
            .unwrap_or(0)
    };
    assert!(bytes.len() >= 24, "capture file too short");
    let magic = u32_at(bytes, 0);
    assert!(
        magic == 0xa1b2c3d4 || magic == 0xa1b23c4d,
        "not a little-endian pcap file: {magic:#x}"
    );
    assert_eq!(u32_at(bytes, 20), 1, "capture link type is not Ethernet");
    let mut off = 24;
    while off + 16 <= bytes.len() {
        let incl = u32_at(bytes, off + 8);
        let Some(f) = bytes.get(off + 16..off + 16 + incl) else {
            break;
        };
        off += 16 + incl;
        s.frames += 1;
        let ethertype = f
            .get(12..14)
            .map(|x| u16::from_be_bytes([x[0], x[1]]))
            .unwrap_or(0);
        match ethertype {
            0x0806 => {
                s.arp += 1;
                // Underlay hosts ask for each other; a request for any other address means an
                // IP packet was routed onto the underlay: a leak whose frame never left, since
                // nobody answers (the nodes' default route has no gateway).
                let ip4 = |o: usize| f.get(o..o + 4).map(|a| [a[0], a[1], a[2], a[3]]).unwrap_or_default();
                let (spa, tpa) = (ip4(28), ip4(38));
                if spa[..3] != [192, 168, 77] || tpa[..3] != [192, 168, 77] {
                    s.other_ip.push(format!(
                        "ARP for {}.{}.{}.{} from {}.{}.{}.{}: a packet for it was routed onto the underlay",
                        tpa[0], tpa[1], tpa[2], tpa[3], spa[0], spa[1], spa[2], spa[3]
                    ));
                }
            }
            0x0800 => {
                let ip = &f[14.min(f.len())..];
                let ihl = ip.first().map(|b| usize::from(b & 0x0f) * 4).unwrap_or(0);
                let proto = ip.get(9).copied().unwrap_or(0);
                let port = |o: usize| {
                    ip.get(ihl + o..ihl + o + 2)
                        .map(|x| u16::from_be_bytes([x[0], x[1]]))
                        .unwrap_or(0)
                };
                let (sport, dport) = (port(0), port(2));
                let msg_type = ip.get(ihl + 8).copied().unwrap_or(0);
                let src = ip
                    .get(12..16)
                    .map(|a| format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3]))
                    .unwrap_or_default();
                let dst = ip
                    .get(16..20)
                    .map(|a| format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3]))
                    .unwrap_or_default();
                // the quoted header of an ICMP error: type 3 code 3, then the original IPv4 header
                let quoted = ip.get(ihl + 8..).unwrap_or_default();
                let q_ihl = quoted
                    .first()
                    .map(|b| usize::from(b & 0x0f) * 4)
                    .unwrap_or(0);
                let q_dport = quoted
                    .get(q_ihl + 2..q_ihl + 4)
                    .map(|x| u16::from_be_bytes([x[0], x[1]]))
                    .unwrap_or(0);
                let icmp = (ip.get(ihl).copied(), ip.get(ihl + 1).copied());
                if proto == 17 && (sport == 51820 || dport == 51820) && (1..=4).contains(&msg_type)
                {
                    s.wireguard[usize::from(msg_type)] += 1;
                } else if proto == 2 && dst.starts_with("224.0.0.") {
                    s.igmp += 1;
                } else if proto == 1
                    && icmp == (Some(3), Some(3))
                    && quoted.get(9) == Some(&17)
                    && q_dport == 51820
                {
                    s.icmp_port_unreachable += 1;
                } else {
                    s.other_ip
                        .push(format!("IPv4 proto {proto} {src}:{sport} > {dst}:{dport}"));
                }
            }
            0x86dd => s
                .other_ip
                .push("an IPv6 packet on the IPv4-only underlay".into()),
            _ => {}
        }
    }
    s
}
