//! `wgmesh-cni install` / `uninstall` on temporary CNI bin and conf dirs, run as the
//! DaemonSet's init container runs them.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::{json, Value};

const WGMESH: &str = env!("CARGO_BIN_EXE_wgmesh-cni");

/// Calico's stock list, deliberately oddly formatted so "byte-exact" means something.
const CALICO: &str = "{\n  \"name\": \"k8s-pod-network\",\n  \"cniVersion\": \"0.3.1\",\n  \"plugins\": [\n    {\"type\": \"calico\", \"log_level\": \"info\", \"ipam\": {\"type\": \"calico-ipam\"}},\n    {\"type\": \"portmap\", \"snat\": true, \"capabilities\": {\"portMappings\": true}}\n  ]\n}\n";
const FLANNEL_CONF: &str = "{\"name\":\"cbr0\",\"cniVersion\":\"0.4.0\",\"type\":\"flannel\",\"delegate\":{\"hairpinMode\":true,\"isDefaultGateway\":true}}";
const OTHER: &str =
    "{\"cniVersion\":\"1.0.0\",\"name\":\"other\",\"plugins\":[{\"type\":\"ptp\"}]}";

struct Node {
    _root: tempfile::TempDir,
    bin: PathBuf,
    conf: PathBuf,
}

impl Node {
    fn new(files: &[(&str, &str)]) -> Self {
        let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let bin = root.path().join("opt/cni/bin");
        let conf = root.path().join("etc/cni/net.d");
        fs::create_dir_all(&conf).unwrap_or_else(|e| panic!("{e}"));
        for (name, body) in files {
            fs::write(conf.join(name), body).unwrap_or_else(|e| panic!("{e}"));
        }
        Self {
            _root: root,
            bin,
            conf,
        }
    }

    fn run(&self, sub: &str, extra: &[&str]) -> (bool, String) {
        let out = Command::new(WGMESH)
            .arg(sub)
            .arg(format!("--cni-bin-dir={}", self.bin.display()))
            .arg(format!("--cni-conf-dir={}", self.conf.display()))
            .args(extra)
            .env_remove("CNI_COMMAND")
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn install(&self, extra: &[&str]) -> String {
        let (ok, text) = self.run("install", extra);
        assert!(ok, "install failed: {text}");
        text
    }

    fn uninstall(&self) -> String {
        let (ok, text) = self.run("uninstall", &[]);
        assert!(ok, "uninstall failed: {text}");
        text
    }

    /// Every visible config file and its bytes (the backup dir is ours, not the runtime's).
    fn files(&self) -> BTreeMap<String, Vec<u8>> {
        let mut m = BTreeMap::new();
        for e in fs::read_dir(&self.conf).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_file() {
                m.insert(name, fs::read(e.path()).unwrap_or_default());
            }
        }
        m
    }

    fn json(&self, name: &str) -> Value {
        let bytes = fs::read(self.conf.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn backup_dir(&self) -> PathBuf {
        self.conf.join(".wgmesh-backup")
    }
}

fn plugin_types(list: &Value) -> Vec<String> {
    list["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["type"].as_str().map(String::from))
        .collect()
}

fn assert_binary_installed(node: &Node) {
    use std::os::unix::fs::PermissionsExt;
    let target = node.bin.join("wgmesh-cni");
    let meta = fs::metadata(&target).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    assert_eq!(fs::read(&target).ok(), fs::read(WGMESH).ok());
}

fn no_temp_files(dir: &Path) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(!name.contains("wgmesh-tmp"), "temp file left: {name}");
    }
}

/// The config file the runtime loads: the first one in byte order (libcni's ConfFiles).
fn first_config(node: &Node) -> String {
    node.files().into_keys().find(|n| n.ends_with(".conflist") || n.ends_with(".conf")).unwrap_or_default()
}

#[test]
fn copies_the_first_conflist_with_the_chain_into_a_file_that_sorts_first_and_leaves_it_alone() {
    let node = Node::new(&[
        ("05-broken.conflist", "{ not json"),
        ("10-calico.conflist", CALICO),
        ("20-other.conflist", OTHER),
        ("README", "not a config"),
    ]);
    let before = node.files();
    node.install(&[]);
    assert_binary_installed(&node);
    assert_eq!(first_config(&node), "00-wgmesh.conflist", "the runtime loads the copy");
    let list = node.json("00-wgmesh.conflist");
    assert_eq!(plugin_types(&list), ["calico", "portmap", "wgmesh-cni"]);
    assert_eq!(list["cniVersion"], "0.3.1", "primary's cniVersion kept");
    assert_eq!(list["name"], "k8s-pod-network", "same network, so DEL finds what ADD cached");
    assert_eq!(list["plugins"][0], serde_json::from_str::<Value>(CALICO).unwrap()["plugins"][0]);
    let after = node.files();
    for other in ["05-broken.conflist", "10-calico.conflist", "20-other.conflist", "README"] {
        assert_eq!(after[other], before[other], "{other} touched");
    }
    no_temp_files(&node.conf);

    node.uninstall();
    assert_eq!(node.files(), before, "uninstall restores every byte");
    assert!(!node.bin.join("wgmesh-cni").exists());
    assert!(!node.backup_dir().exists());
}

#[test]
fn running_install_again_changes_nothing() {
    for files in [
        vec![("10-calico.conflist", CALICO)],
        vec![("10-flannel.conf", FLANNEL_CONF)],
        vec![],
    ] {
        let node = Node::new(&files);
        node.install(&["--pod-cidr", "10.244.1.0/24", "--mtu", "1380"]);
        let first = node.files();
        let backup: Vec<_> = fs::read_dir(node.backup_dir())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| (e.file_name(), fs::read(e.path()).unwrap_or_default()))
            .collect();
        let text = node.install(&["--pod-cidr", "10.244.1.0/24", "--mtu", "1380"]);
        assert_eq!(
            node.files(),
            first,
            "{files:?}: second run changed files: {text}"
        );
        let backup_again: Vec<_> = fs::read_dir(node.backup_dir())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| (e.file_name(), fs::read(e.path()).unwrap_or_default()))
            .collect();
        assert_eq!(backup, backup_again, "{files:?}: backup changed");
        let list_name = first.keys().next().cloned().unwrap_or_default();
        let entries = plugin_types(&node.json(&list_name));
        assert_eq!(
            entries.iter().filter(|t| *t == "wgmesh-cni").count(),
            1,
            "{files:?}: exactly one entry"
        );
    }
}

#[test]
fn a_single_plugin_conf_is_copied_as_a_list() {
    let node = Node::new(&[
        ("10-flannel.conf", FLANNEL_CONF),
        ("20-other.conflist", OTHER),
    ]);
    let before = node.files();
    node.install(&[]);
    let files = node.files();
    assert_eq!(files["10-flannel.conf"], before["10-flannel.conf"], "the .conf is left alone");
    let list = node.json("00-wgmesh.conflist");
    assert_eq!(list["cniVersion"], "0.4.0");
    assert_eq!(list["name"], "cbr0");
    assert_eq!(plugin_types(&list), ["flannel", "wgmesh-cni"]);
    assert_eq!(list["plugins"][0]["delegate"]["hairpinMode"], true);
    assert_eq!(first_config(&node), "00-wgmesh.conflist");

    node.uninstall();
    assert_eq!(node.files(), before);
    assert!(!node.backup_dir().exists());
}

#[test]
fn the_owners_file_mode_is_kept_through_install_conversion_backup_and_uninstall() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777;
    // CIS asks for 0600 CNI configs: chaining must not make one readable to everyone.
    for (name, body) in [("10-calico.conflist", CALICO), ("10-flannel.conf", FLANNEL_CONF)] {
        let node = Node::new(&[(name, body)]);
        let primary = node.conf.join(name);
        fs::set_permissions(&primary, fs::Permissions::from_mode(0o600)).unwrap();
        node.install(&[]);
        assert_eq!(mode(&node.conf.join("00-wgmesh.conflist")), 0o600, "{name}: the copy");
        assert_eq!(mode(&node.backup_dir().join(name)), 0o600, "{name}: backup");
        assert_eq!((fs::read_to_string(&primary).unwrap().as_str(), mode(&primary)), (body, 0o600), "{name}");
        node.uninstall();
        assert_eq!((fs::read_to_string(&primary).unwrap().as_str(), mode(&primary)), (body, 0o600), "{name}");
    }
    // Chained in place (it sorts before the copy): the rewrite keeps the mode too.
    let node = Node::new(&[("00-calico.conflist", CALICO)]);
    let list = node.conf.join("00-calico.conflist");
    fs::set_permissions(&list, fs::Permissions::from_mode(0o600)).unwrap();
    node.install(&[]);
    assert_eq!(plugin_types(&node.json("00-calico.conflist")), ["calico", "portmap", "wgmesh-cni"]);
    assert_eq!(mode(&list), 0o600, "chained list");
    node.uninstall();
    assert_eq!(fs::read_to_string(&list).unwrap(), CALICO);
    assert_eq!(mode(&list), 0o600, "restored list");
}

#[test]
fn writes_a_standalone_bridge_list_when_there_is_no_primary() {
    let node = Node::new(&[("README", "x")]);
    let (ok, text) = node.run("install", &[]);
    assert!(!ok, "no primary and no --pod-cidr must fail");
    assert!(text.contains("--pod-cidr"), "{text}");
    assert_eq!(node.files().len(), 1, "nothing written on failure");

    node.install(&[
        "--pod-cidr",
        "10.244.7.0/24",
        "--readiness-path",
        "/run/wgmesh/ready.sock",
    ]);
    let list = node.json("99-wgmesh.conflist");
    assert_eq!(plugin_types(&list), ["bridge", "wgmesh-cni"]);
    assert_eq!(list["plugins"][0]["ipam"]["type"], "host-local");
    assert_eq!(
        list["plugins"][0]["ipam"]["ranges"],
        json!([[{ "subnet": "10.244.7.0/24" }]])
    );
    assert_eq!(
        list["plugins"][1]["readinessPath"],
        "/run/wgmesh/ready.sock"
    );
    assert_eq!(list["cniVersion"], "1.0.0");

    node.uninstall();
    assert_eq!(node.files().keys().collect::<Vec<_>>(), ["README"]);
}

#[test]
fn follows_the_primary_when_its_owner_rewrites_it_or_a_new_one_appears() {
    // Standalone first, then a real CNI arrives: we move over to it.
    let node = Node::new(&[]);
    node.install(&["--pod-cidr", "10.244.8.0/24"]);
    assert!(node.files().contains_key("99-wgmesh.conflist"));
    fs::write(node.conf.join("10-calico.conflist"), CALICO).unwrap_or_else(|e| panic!("{e}"));
    node.install(&["--pod-cidr", "10.244.8.0/24"]);
    let files = node.files();
    assert!(
        !files.contains_key("99-wgmesh.conflist"),
        "standalone removed"
    );
    assert_eq!(
        plugin_types(&node.json("00-wgmesh.conflist")),
        ["calico", "portmap", "wgmesh-cni"]
    );

    // Calico's installer rewrites its file (at every start): the copy follows, and uninstall
    // leaves Calico's new bytes.
    let rewritten = CALICO.replace("\"info\"", "\"debug\"");
    fs::write(node.conf.join("10-calico.conflist"), &rewritten).unwrap_or_else(|e| panic!("{e}"));
    node.install(&[]);
    let list = node.json("00-wgmesh.conflist");
    assert_eq!(plugin_types(&list), ["calico", "portmap", "wgmesh-cni"]);
    assert_eq!(list["plugins"][0]["log_level"], "debug");
    node.uninstall();
    assert_eq!(
        fs::read_to_string(node.conf.join("10-calico.conflist")).ok(),
        Some(rewritten)
    );
}

#[test]
fn uninstall_keeps_edits_made_after_install() {
    // In place: the owner's edit stays, only our entry goes.
    let node = Node::new(&[("00-calico.conflist", CALICO)]);
    node.install(&[]);
    let mut list = node.json("00-calico.conflist");
    if let Some(p) = list["plugins"].as_array_mut() {
        p.insert(2, json!({ "type": "bandwidth" }));
    }
    fs::write(node.conf.join("00-calico.conflist"), list.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    node.uninstall();
    assert_eq!(
        plugin_types(&node.json("00-calico.conflist")),
        ["calico", "portmap", "bandwidth"]
    );
    // Copied: the owner's edit reaches the copy, ahead of our entry, and stays after uninstall.
    let node = Node::new(&[("10-calico.conflist", CALICO)]);
    node.install(&[]);
    let mut list = node.json("10-calico.conflist");
    if let Some(p) = list["plugins"].as_array_mut() {
        p.push(json!({ "type": "bandwidth" }));
    }
    fs::write(node.conf.join("10-calico.conflist"), list.to_string()).unwrap_or_else(|e| panic!("{e}"));
    node.install(&[]);
    assert_eq!(plugin_types(&node.json("00-wgmesh.conflist")), ["calico", "portmap", "bandwidth", "wgmesh-cni"]);
    node.uninstall();
    assert_eq!(node.files().into_keys().collect::<Vec<_>>(), ["10-calico.conflist"]);
    assert_eq!(node.json("10-calico.conflist"), list);
}

#[test]
fn an_earlier_in_place_install_is_moved_into_the_copy_and_the_primary_restored() {
    // What an earlier version left: our entry in Calico's file, its original in the backup.
    let mut chained: Value = serde_json::from_str(CALICO).unwrap();
    chained["plugins"].as_array_mut().unwrap().push(json!({ "type": "wgmesh-cni" }));
    let node = Node::new(&[("10-calico.conflist", &chained.to_string())]);
    fs::create_dir_all(node.backup_dir()).unwrap();
    fs::write(node.backup_dir().join("10-calico.conflist"), CALICO).unwrap();
    let state = json!({ "mode": "chained", "primary": "10-calico.conflist", "written": "10-calico.conflist" });
    fs::write(node.backup_dir().join("state.json"), state.to_string()).unwrap();
    let text = node.install(&[]);
    assert_eq!(fs::read_to_string(node.conf.join("10-calico.conflist")).ok().as_deref(), Some(CALICO), "{text}");
    assert_eq!(plugin_types(&node.json("00-wgmesh.conflist")), ["calico", "portmap", "wgmesh-cni"]);
    node.uninstall();
    assert_eq!(node.files().into_keys().collect::<Vec<_>>(), ["10-calico.conflist"]);
    assert_eq!(fs::read_to_string(node.conf.join("10-calico.conflist")).ok().as_deref(), Some(CALICO));
}

#[test]
fn a_primary_that_sorts_before_the_copy_is_chained_in_place_and_restored() {
    // Only a name before 00-wgmesh could shadow the copy; that primary is chained in place.
    let node = Node::new(&[("00-aws.conflist", CALICO), ("10-calico.conflist", OTHER)]);
    let before = node.files();
    node.install(&[]);
    assert!(!node.files().contains_key("00-wgmesh.conflist"));
    assert_eq!(plugin_types(&node.json("00-aws.conflist")), ["calico", "portmap", "wgmesh-cni"]);
    assert_eq!(node.files()["10-calico.conflist"], before["10-calico.conflist"]);
    node.uninstall();
    assert_eq!(node.files(), before, "uninstall restores every byte");
}

#[test]
fn refuses_a_primary_whose_version_would_break_every_pod() {
    let old = "{\"cniVersion\":\"0.2.0\",\"name\":\"old\",\"plugins\":[{\"type\":\"bridge\"}]}";
    let node = Node::new(&[("10-old.conflist", old)]);
    let (ok, text) = node.run("install", &[]);
    assert!(!ok);
    assert!(text.contains("0.2.0"), "{text}");
    assert_eq!(
        fs::read_to_string(node.conf.join("10-old.conflist"))
            .ok()
            .as_deref(),
        Some(old)
    );
}

#[test]
fn refuses_a_config_with_nothing_but_wgmesh_cni() {
    // Chained behind nothing, wgmesh-cni has no prevResult and every pod would fail; converting
    // or extending such a file would only hide that (found by tests/install_props.rs).
    for (name, body) in [
        (
            "10-net.conf",
            "{\"cniVersion\":\"1.0.0\",\"name\":\"net\",\"type\":\"wgmesh-cni\"}",
        ),
        (
            "10-net.conflist",
            "{\"cniVersion\":\"1.0.0\",\"name\":\"net\",\"plugins\":[{\"type\":\"wgmesh-cni\"}]}",
        ),
    ] {
        let node = Node::new(&[(name, body)]);
        let before = node.files();
        let (ok, text) = node.run("install", &[]);
        assert!(!ok, "{name}: {text}");
        assert!(
            text.contains(name) && text.contains("no plugin but wgmesh-cni"),
            "{text}"
        );
        assert_eq!(node.files(), before, "{name} touched");
        // uninstall still works on such a node (it only removes what is ours)
        let (ok, text) = node.run("uninstall", &[]);
        assert!(ok, "{name}: {text}");
    }
}

#[test]
fn installed_entry_is_accepted_by_the_plugin_itself() {
    let node = Node::new(&[("10-calico.conflist", CALICO)]);
    node.install(&[
        "--mtu",
        "1380",
        "--underlay-interface",
        "ens5",
        "--readiness-path",
        "/run/wgmesh/other",
        "--no-require-readiness",
    ]);
    let list = node.json("00-wgmesh.conflist");
    let mut entry = list["plugins"][2].clone();
    assert_eq!(
        entry,
        json!({ "type": "wgmesh-cni", "mtu": 1380, "underlayInterface": "ens5",
                "readinessPath": "/run/wgmesh/other", "requireReadiness": false })
    );
    // What the runtime derives from the list for our plugin.
    entry["cniVersion"] = list["cniVersion"].clone();
    entry["name"] = list["name"].clone();
    let parsed =
        wgmesh_cni::config::parse(entry.to_string().as_bytes(), rscni_types::types::Cmd::Add)
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parsed.mtu, Some(1380));
    assert_eq!(parsed.underlay_interface.as_deref(), Some("ens5"));
    assert!(!parsed.require_readiness);
}

#[test]
fn bad_arguments_fail_without_touching_anything() {
    let node = Node::new(&[("10-calico.conflist", CALICO)]);
    let before = node.files();
    for args in [vec!["--mtu", "9"], vec!["--frob"], vec!["--pod-cidr"]] {
        let (ok, text) = node.run("install", &args);
        assert!(!ok, "{args:?}: {text}");
    }
    assert_eq!(node.files(), before);
    assert!(!node.bin.join("wgmesh-cni").exists());
}

#[test]
fn an_entry_another_plugin_put_itself_after_is_left_where_it_is() {
    // istio-cni appends itself last to the first file too: moving ours back behind it on
    // every --watch round would start a rewrite war between the two watchers.
    let list = "{\"cniVersion\":\"0.3.1\",\"name\":\"k8s\",\"plugins\":[{\"type\":\"calico\"},{\"type\":\"wgmesh-cni\"},{\"type\":\"istio-cni\"}]}";
    let node = Node::new(&[("00-calico.conflist", list)]);
    let before = node.files();
    let text = node.install(&[]);
    assert_eq!(node.files(), before, "an entry already there as configured is not moved: {text}");
    // Our options changed (an upgrade): the entry is replaced, once, at the end.
    node.install(&["--mtu", "1380"]);
    assert_eq!(plugin_types(&node.json("00-calico.conflist")), ["calico", "istio-cni", "wgmesh-cni"]);

    // The same in our copy, which is the first file istio-cni finds.
    let node = Node::new(&[("10-calico.conflist", CALICO)]);
    node.install(&[]);
    let mut copy = node.json("00-wgmesh.conflist");
    copy["plugins"].as_array_mut().unwrap().push(json!({ "type": "istio-cni" }));
    fs::write(node.conf.join("00-wgmesh.conflist"), copy.to_string()).unwrap();
    let before = node.files();
    let text = node.install(&[]);
    assert_eq!(node.files(), before, "istio-cni's entry in the copy is kept: {text}");
    node.install(&["--mtu", "1380"]);
    assert_eq!(plugin_types(&node.json("00-wgmesh.conflist")), ["calico", "portmap", "istio-cni", "wgmesh-cni"]);
}

/// Kills the watcher if a test fails before it was stopped.
struct Watcher(std::process::Child);

impl Watcher {
    /// `wgmesh-cni install --watch=1` on `node`'s directories.
    fn start(node: &Node) -> Self {
        use std::process::Stdio;
        Watcher(
            Command::new(WGMESH)
                .arg("install")
                .arg(format!("--cni-bin-dir={}", node.bin.display()))
                .arg(format!("--cni-conf-dir={}", node.conf.display()))
                .arg("--watch=1")
                .env_remove("CNI_COMMAND")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    /// Sends SIGTERM; the exit status (within 3 s) and everything it printed.
    fn stop(&mut self) -> (std::process::ExitStatus, String) {
        use std::io::Read;
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) }, 0);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let status = loop {
            if let Some(s) = self.0.try_wait().unwrap_or_else(|e| panic!("{e}")) {
                break s;
            }
            assert!(std::time::Instant::now() < until, "still running 3 s after SIGTERM");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut log = String::new();
        self.0.stdout.take().map(|mut o| o.read_to_string(&mut log));
        self.0.stderr.take().map(|mut o| o.read_to_string(&mut log));
        (status, log)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ok() {
        assert!(std::time::Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn watch_follows_the_owners_rewrite_and_stops_on_sigterm() {
    let node = Node::new(&[("10-calico.conflist", CALICO)]);
    let copy = || fs::read(node.conf.join("00-wgmesh.conflist")).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let chained = || copy().is_some_and(|c| plugin_types(&c) == ["calico", "portmap", "wgmesh-cni"]);
    let mut w = Watcher::start(&node);
    wait_for("the first install", chained);
    assert_binary_installed(&node);
    // Rounds with nothing to do, then Calico's installer writes its file again without us.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    // Written as installers do (temp file, rename): a round never reads half a file.
    let rewritten = CALICO.replace("\"info\"", "\"debug\"");
    let tmp = node.conf.join("calico.tmp");
    fs::write(&tmp, &rewritten).unwrap_or_else(|e| panic!("{e}"));
    fs::rename(&tmp, node.conf.join("10-calico.conflist")).unwrap_or_else(|e| panic!("{e}"));
    wait_for("the copy to follow", || copy().is_some_and(|c| c["plugins"][0]["log_level"] == "debug"));
    assert!(chained());
    assert_eq!(fs::read_to_string(node.conf.join("10-calico.conflist")).ok(), Some(rewritten), "the owner's file is its own");
    std::thread::sleep(std::time::Duration::from_millis(1500));

    let (status, log) = w.stop();
    assert!(status.success(), "{status:?}: {log}");
    assert!(chained(), "stopping the watcher does not uninstall");
    // Five or more rounds, but only changes are logged: the first install and its calm, the
    // new copy and its calm, then the stop.
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.iter().filter(|l| l.contains("with wgmesh-cni chained, sorting first")).count(), 2, "{log}");
    assert_eq!(lines.iter().filter(|l| l.contains("already chains")).count(), 2, "{log}");
    assert!(lines.len() <= 6 && lines.last().is_some_and(|l| l.contains("stopped watching")), "{log}");
}

#[test]
fn watch_backs_off_from_an_owner_that_keeps_removing_the_entry() {
    use std::sync::{atomic::{AtomicBool, AtomicUsize, Ordering}, Arc};
    for primary in ["00-cilium.conflist", "05-cilium.conflist"] {
    let node = Node::new(&[(primary, CALICO)]);
    let path = node.conf.join(primary);
    let copy = node.conf.join("00-wgmesh.conflist");
    let mut w = Watcher::start(&node);
    // An owner like Cilium's agent: whenever its file differs from what it wants, it writes
    // it again (atomically), without our entry; any other config it renames away.
    let (done, restored) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let owner = {
        let (done, restored, path, copy) = (done.clone(), restored.clone(), path.clone(), copy.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if fs::read_to_string(&path).is_ok_and(|t| t != CALICO) {
                    restored.fetch_add(1, Ordering::Relaxed);
                    let tmp = path.with_extension("tmp");
                    fs::write(&tmp, CALICO).unwrap_or_else(|e| panic!("{e}"));
                    fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("{e}"));
                }
                if fs::rename(&copy, copy.with_extension("cilium_bak")).is_ok() {
                    restored.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_secs(8));
    done.store(true, Ordering::Relaxed);
    owner.join().unwrap_or_else(|_| panic!("owner thread"));
    let (status, log) = w.stop();
    assert!(status.success(), "{log}");
    // The first install, then repairs until the third within a minute: the next try is a
    // minute away. Without the back-off it would be one every second, 8 in all.
    let fights = restored.load(Ordering::Relaxed);
    assert!(fights <= 4, "{primary}: the watcher rewrote the config {fights} times in 8 s: {log}");
    assert!(log.contains("keeps rewriting it") && log.contains("next try in 60s"), "{primary}: {log}");
    }
}

#[test]
fn a_primary_caught_half_written_is_left_alone_for_the_round() {
    let node = Node::new(&[("10-calico.conflist", CALICO), ("20-other.conflist", OTHER)]);
    node.install(&[]);
    let backup = fs::read(node.backup_dir().join("10-calico.conflist")).ok();
    // The owner is halfway through rewriting its file: it does not parse, so the runtime and
    // find_primary would skip it and take 20-other. Treating that as "the primary moved"
    // would undo our change and chain into 20-other for a round.
    fs::write(node.conf.join("10-calico.conflist"), &CALICO[..40]).unwrap_or_else(|e| panic!("{e}"));
    let before = node.files();
    let (ok, text) = node.run("install", &[]);
    assert!(!ok && text.contains("is not valid JSON at the moment"), "{text}");
    assert_eq!(node.files(), before, "nothing touched: {text}");
    assert_eq!(fs::read(node.backup_dir().join("10-calico.conflist")).ok(), backup, "backup kept");
    // The owner finishes: the next round copies its new file.
    let rewritten = CALICO.replace("\"info\"", "\"debug\"");
    fs::write(node.conf.join("10-calico.conflist"), &rewritten).unwrap_or_else(|e| panic!("{e}"));
    node.install(&[]);
    let list = node.json("00-wgmesh.conflist");
    assert_eq!(plugin_types(&list), ["calico", "portmap", "wgmesh-cni"]);
    assert_eq!(list["plugins"][0]["log_level"], "debug");
    assert_eq!(plugin_types(&node.json("20-other.conflist")), ["ptp"]);
}

#[test]
fn the_copy_follows_the_loaded_primary_as_primaries_come_and_go() {
    let node = Node::new(&[("20-calico.conflist", CALICO)]);
    node.install(&[]);
    // A new primary that sorts between the copy and the old one: the copy is rewritten from it
    // in place (never missing), and neither primary is touched.
    fs::write(node.conf.join("10-other.conflist"), OTHER).unwrap();
    node.install(&[]);
    assert_eq!(plugin_types(&node.json("00-wgmesh.conflist")), ["ptp", "wgmesh-cni"]);
    assert_eq!(node.json("00-wgmesh.conflist")["name"], "other");
    assert_eq!(fs::read_to_string(node.conf.join("20-calico.conflist")).ok().as_deref(), Some(CALICO));
    assert_eq!(fs::read_to_string(node.conf.join("10-other.conflist")).ok().as_deref(), Some(OTHER));
    // That primary is removed: back to the next one.
    fs::remove_file(node.conf.join("10-other.conflist")).unwrap();
    node.install(&[]);
    assert_eq!(plugin_types(&node.json("00-wgmesh.conflist")), ["calico", "portmap", "wgmesh-cni"]);
    // A primary that sorts before the copy: the copy goes, the new primary is chained in place.
    fs::write(node.conf.join("00-aws.conflist"), OTHER).unwrap();
    node.install(&[]);
    assert!(!node.files().contains_key("00-wgmesh.conflist"));
    assert_eq!(plugin_types(&node.json("00-aws.conflist")), ["ptp", "wgmesh-cni"]);
    node.uninstall();
    assert_eq!(fs::read_to_string(node.conf.join("00-aws.conflist")).ok().as_deref(), Some(OTHER));
    assert_eq!(fs::read_to_string(node.conf.join("20-calico.conflist")).ok().as_deref(), Some(CALICO));
}

#[test]
fn the_state_is_one_an_earlier_version_undoes_by_deleting_the_copy() {
    // Versions before the copy know the modes chained, converted and standalone, and revert
    // standalone by deleting `written`: after a downgrade they chain in place, not fail.
    let node = Node::new(&[("10-calico.conflist", CALICO)]);
    node.install(&[]);
    let state: Value = serde_json::from_slice(&fs::read(node.backup_dir().join("state.json")).unwrap()).unwrap();
    assert_eq!(state["mode"], "standalone", "{state}");
    assert_eq!(state["written"], "00-wgmesh.conflist", "{state}");
}

#[test]
fn an_entry_the_primary_already_had_is_removed_on_uninstall() {
    // Chained by hand, or by an install whose state was lost: after uninstall the primary is
    // what the runtime loads, and an entry naming the removed binary would fail every pod.
    let mut chained: Value = serde_json::from_str(CALICO).unwrap();
    chained["plugins"].as_array_mut().unwrap().push(json!({ "type": "wgmesh-cni", "mtu": 1300 }));
    let node = Node::new(&[("10-calico.conflist", &chained.to_string())]);
    node.install(&[]);
    assert_eq!(plugin_types(&node.json("00-wgmesh.conflist")), ["calico", "portmap", "wgmesh-cni"]);
    assert_eq!(node.json("00-wgmesh.conflist")["plugins"][2], json!({ "type": "wgmesh-cni" }), "our options, once");
    node.uninstall();
    assert_eq!(plugin_types(&node.json("10-calico.conflist")), ["calico", "portmap"]);
    assert_eq!(node.files().into_keys().collect::<Vec<_>>(), ["10-calico.conflist"]);
}

#[test]
fn a_copy_no_state_accounts_for_is_removed_rather_than_left_shadowing() {
    let node = Node::new(&[("10-calico.conflist", CALICO)]);
    node.install(&[]);
    // The state is lost (the backup dir wiped), then Calico is removed from the node.
    fs::remove_dir_all(node.backup_dir()).unwrap();
    fs::remove_file(node.conf.join("10-calico.conflist")).unwrap();
    node.install(&["--pod-cidr", "10.244.9.0/24"]);
    assert_eq!(node.files().into_keys().collect::<Vec<_>>(), ["99-wgmesh.conflist"], "the stale copy would be loaded first");
    assert_eq!(plugin_types(&node.json("99-wgmesh.conflist")), ["bridge", "wgmesh-cni"]);
}

#[test]
fn only_the_bytes_the_current_copy_was_made_from_are_kept() {
    // The record of what the copy was made from marks it current; one left from an earlier
    // primary would, after a failed write of a new copy, keep a stale copy for good.
    let node = Node::new(&[("10-calico.conflist", CALICO)]);
    node.install(&[]);
    fs::write(node.conf.join("05-other.conflist"), OTHER).unwrap();
    node.install(&[]);
    let kept: Vec<String> = fs::read_dir(node.backup_dir()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(kept.contains(&"05-other.conflist".to_owned()) && !kept.contains(&"10-calico.conflist".to_owned()), "{kept:?}");
}
