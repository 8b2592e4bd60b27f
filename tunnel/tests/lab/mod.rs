//! A tiny lab of network namespaces for black-box tests: each test gets uniquely named
//! namespaces, veths and interfaces, and everything is removed on drop, also on panic.
#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

pub const OURS: &str = env!("CARGO_BIN_EXE_wgmesh-tunnel");
static SEQ: AtomicUsize = AtomicUsize::new(0);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    Ours,
    WireguardGo,
}

pub fn require_root_and_tools() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "netns tests need root (network namespaces, TUN)");
    for tool in ["ip", "wg", "wireguard-go", "ping", "tcpdump", "wg-quick"] {
        let ok = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().map(|o| o.status.success());
        assert!(
            ok.unwrap_or(false),
            "{tool} is missing: apt-get install wireguard-tools wireguard-go iputils-ping tcpdump iproute2"
        );
    }
}

pub fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    out
}

pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh(script: &str) -> Output {
    Command::new("bash").arg("-c").arg(script).output().expect("bash")
}

/// Runs `f` on a thread that has entered the namespace: sockets it opens live there.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let f_ns = std::fs::File::open(&path).expect("netns file");
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let r = unsafe { libc::setns(f_ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}");
        f()
    })
    .join()
    .expect("netns thread")
}

pub struct Lab {
    pub id: String,
    pub namespaces: Vec<String>,
    /// (namespace, interface) of every engine started.
    pub ifaces: Vec<(String, String)>,
}

pub struct Key {
    pub private: String,
    pub public: String,
}

pub fn genkey() -> Key {
    let private = ok(&["wg", "genkey"]).trim().to_string();
    let out = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(private.as_bytes())?;
            c.wait_with_output()
        })
        .expect("wg pubkey");
    Key { private, public: String::from_utf8_lossy(&out.stdout).trim().to_string() }
}

impl Lab {
    pub fn new() -> Lab {
        require_root_and_tools();
        let id = format!("{}{}", std::process::id() % 10000, SEQ.fetch_add(1, Ordering::SeqCst));
        Lab { id, namespaces: Vec::new(), ifaces: Vec::new() }
    }

    /// A new namespace with loopback up.
    pub fn ns(&mut self, tag: &str) -> String {
        let name = format!("wgt{}{}", self.id, tag);
        ok(&["ip", "netns", "add", &name]);
        self.namespaces.push(name.clone());
        ok(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// A veth between two namespaces with IPv4 10.<net>.0.{1,2}/24 and IPv6 fd<net>::{1,2}/64.
    pub fn link(&mut self, a: &str, b: &str, net: u8) -> (String, String) {
        let (va, vb) = (format!("va{}", self.id), format!("vb{}", self.id));
        ok(&["ip", "link", "add", &va, "netns", a, "type", "veth", "peer", "name", &vb, "netns", b]);
        for (ns, dev, host) in [(a, &va, 1), (b, &vb, 2)] {
            ok(&["ip", "-n", ns, "addr", "add", &format!("10.{net}.0.{host}/24"), "dev", dev]);
            ok(&["ip", "-n", ns, "addr", "add", &format!("fd{net:02x}::{host}/64"), "dev", dev, "nodad"]);
            ok(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        (va, vb)
    }

    /// Starts an engine for interface `name` in `ns` (daemonizing, as wg-quick would).
    pub fn engine(&mut self, ns: &str, which: Impl, tag: &str) -> String {
        self.engine_env(ns, which, tag, &[])
    }

    pub fn engine_env(&mut self, ns: &str, which: Impl, tag: &str, env: &[(&str, &str)]) -> String {
        let name = format!("wg{}{}", self.id, tag);
        let bin = match which {
            Impl::Ours => OURS,
            Impl::WireguardGo => "wireguard-go",
        };
        let out = Command::new("ip")
            .args(["netns", "exec", ns, bin, &name])
            .envs(env.iter().copied())
            .output()
            .expect("start engine");
        assert!(out.status.success(), "{bin} {name}: {}", String::from_utf8_lossy(&out.stderr));
        self.ifaces.push((ns.to_string(), name.clone()));
        name
    }

    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        let mut v = vec!["ip", "netns", "exec", ns];
        v.extend_from_slice(args);
        run(&v)
    }

    pub fn exec_ok(&self, ns: &str, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", ns];
        v.extend_from_slice(args);
        ok(&v)
    }

    /// `wg set` with the private key passed through a file, as `wg` requires.
    pub fn wg_set(&self, ns: &str, iface: &str, private: Option<&str>, rest: &str) {
        let key = match private {
            Some(k) => format!("private-key <(echo {k})"),
            None => String::new(),
        };
        let out = sh(&format!("ip netns exec {ns} wg set {iface} {key} {rest}"));
        assert!(out.status.success(), "wg set {rest}: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn ping(&self, ns: &str, dst: &str, count: u32) -> bool {
        let c = count.to_string();
        self.exec(ns, &["ping", "-c", &c, "-i", "0.2", "-W", "2", dst]).status.success()
    }

    pub fn dump(&self, ns: &str, iface: &str) -> Vec<Vec<String>> {
        self.exec_ok(ns, &["wg", "show", iface, "dump"])
            .lines()
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect()
    }

    /// (rx, tx) of the one peer of `iface`.
    pub fn transfer(&self, ns: &str, iface: &str, peer: &str) -> (u64, u64) {
        let out = self.exec_ok(ns, &["wg", "show", iface, "transfer"]);
        let line = out.lines().find(|l| l.starts_with(peer)).unwrap_or_else(|| panic!("no peer in {out}"));
        let f: Vec<&str> = line.split('\t').collect();
        (f[1].parse().unwrap(), f[2].parse().unwrap())
    }

    pub fn up(&self, ns: &str, iface: &str, addrs: &[&str]) {
        for a in addrs {
            let mut args = vec!["ip", "-n", ns, "addr", "add", a, "dev", iface];
            if a.contains(':') {
                args.push("nodad");
            }
            ok(&args);
        }
        ok(&["ip", "-n", ns, "link", "set", iface, "up"]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting the interface is how an engine is told to exit (wg-quick down does it).
        for (ns, iface) in &self.ifaces {
            let _ = Command::new("ip").args(["-n", ns, "link", "del", iface]).output();
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        for (_, iface) in &self.ifaces {
            let _ = Command::new("pkill").args(["-f", &format!(" {iface}$")]).output();
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{iface}.sock"));
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "pids", ns]).output().map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").arg(pid).output();
                }
            });
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Two namespaces joined by a veth, an engine in each, configured as peers with inner
/// addresses 192.168.241.{1,2} and fd00::{1,2}. `outer6` uses the veth's IPv6 addresses.
pub struct Pair {
    pub lab: Lab,
    pub ns: [String; 2],
    pub iface: [String; 2],
    pub keys: [Key; 2],
    pub ports: [u16; 2],
    pub veth: (String, String),
    pub net: u8,
}

pub fn pair(a: Impl, b: Impl, outer6: bool) -> Pair {
    pair_env(a, b, outer6, &[])
}

/// As `pair`, with extra environment for the engines (e.g. WGMESH_CRYPTO_THREADS).
pub fn pair_env(a: Impl, b: Impl, outer6: bool, env: &[(&str, &str)]) -> Pair {
    let mut lab = Lab::new();
    let n1 = lab.ns("a");
    let n2 = lab.ns("b");
    // Addresses live inside the test's own namespaces, so every test can use the same ones.
    let net = 77;
    let veth = lab.link(&n1, &n2, net);
    let i1 = lab.engine_env(&n1, a, "a", env);
    let i2 = lab.engine_env(&n2, b, "b", env);
    let keys = [genkey(), genkey()];
    let ports = [51001, 51002];
    let ep = |host: u8, port: u16| {
        if outer6 {
            format!("[fd{net:02x}::{host}]:{port}")
        } else {
            format!("10.{net}.0.{host}:{port}")
        }
    };
    lab.wg_set(
        &n1,
        &i1,
        Some(&keys[0].private),
        &format!(
            "listen-port {} peer {} endpoint {} allowed-ips 192.168.241.2/32,fd00::2/128",
            ports[0],
            keys[1].public,
            ep(2, ports[1])
        ),
    );
    lab.wg_set(
        &n2,
        &i2,
        Some(&keys[1].private),
        &format!(
            "listen-port {} peer {} endpoint {} allowed-ips 192.168.241.1/32,fd00::1/128",
            ports[1],
            keys[0].public,
            ep(1, ports[0])
        ),
    );
    lab.up(&n1, &i1, &["192.168.241.1/24", "fd00::1/112"]);
    lab.up(&n2, &i2, &["192.168.241.2/24", "fd00::2/112"]);
    // The engines bind their sockets once they notice link-up: wait for both, however
    // loaded the machine is, so the first packet is never sent into a closed port.
    let t = std::time::Instant::now();
    for (ns, port) in [(&n1, ports[0]), (&n2, ports[1])] {
        while !lab.exec_ok(ns, &["ss", "-Hlun"]).contains(&format!(":{port} ")) {
            assert!(t.elapsed() < std::time::Duration::from_secs(10), "engine in {ns} never bound port {port}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    Pair { lab, ns: [n1, n2], iface: [i1, i2], keys, ports, veth, net }
}
