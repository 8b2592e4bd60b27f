//! `wgmesh-cni install` / `uninstall`: put the binary in the CNI bin dir and chain the plugin
//! behind the node's CNI config, or write a standalone bridge config when there is none.
//!
//! The primary config is the first `.conf`/`.conflist`/`.json` file in lexical order that
//! parses, the one kubelet and containerd pick. We leave it as it is and write a copy with our
//! entry appended, `FRONT_FILE`, which sorts before it (as Multus does): a primary whose
//! installer rewrites its file at every start (flannel, Calico) cannot drop the chain, so a pod
//! started after a reboot waits for the agent instead of starting unguarded. A primary that
//! sorts before `FRONT_FILE` is chained in place, as earlier versions did with every primary.
//! What we wrote is recorded in `<conf dir>/.wgmesh-backup/` (state, plus the bytes we copied
//! or changed, so uninstall restores them exactly); runtimes ignore that directory.

use std::{
    fs, io,
    path::{Path, PathBuf},
    str::FromStr,
};

use rscni_types::{ipnet::IpNet, version::SpecVersion};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::{atomic, config::SUPPORTED_VERSIONS};

pub const BINARY_NAME: &str = "wgmesh-cni";
/// The `type` of our entry in a conflist; equal to the binary name, as CNI requires.
pub const PLUGIN_TYPE: &str = BINARY_NAME;
/// Lexically late on purpose: a primary CNI installed later wins instead of being shadowed.
pub const STANDALONE_FILE: &str = "99-wgmesh.conflist";
/// The primary with our entry: sorts before every primary we know of but Multus's
/// `00-multus.conf`, which, like any primary that sorts first, is chained in place.
pub const FRONT_FILE: &str = "00-wgmesh.conflist";
pub const BACKUP_DIR: &str = ".wgmesh-backup";
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
const STATE_FILE: &str = "state.json";
const CONFIG_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{0}")]
    Refused(String),
}

/// What `install` needs to know.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// The binary to copy, normally the running one.
    pub source_binary: PathBuf,
    /// Our conflist entry, `type` included (see `plugin_entry`).
    pub plugin: Map<String, Value>,
    pub standalone: StandaloneOptions,
}

/// Only used when the node has no CNI config at all.
#[derive(Debug, Clone)]
pub struct StandaloneOptions {
    pub pod_cidrs: Vec<String>,
    pub cni_version: String,
    pub bridge: String,
    pub ip_masq: bool,
}

impl Default for StandaloneOptions {
    fn default() -> Self {
        Self {
            pod_cidrs: Vec::new(),
            // The newest version Debian 12's reference plugins (1.1.1) accept.
            cni_version: "1.0.0".to_string(),
            bridge: "wgmesh-br0".to_string(),
            ip_masq: false,
        }
    }
}

/// Human-readable lines saying what was done, for the init container's log, and whether
/// anything on disk changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub lines: Vec<String>,
    changed: bool,
}

impl Report {
    /// A change was made.
    fn say(&mut self, line: String) {
        self.lines.push(line);
        self.changed = true;
    }
    /// Nothing needed doing.
    fn note(&mut self, line: String) {
        self.lines.push(line);
    }
    /// Whether the run wrote or removed anything.
    pub fn changed(&self) -> bool {
        self.changed
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// Our entry appended to the primary conflist, in place.
    Chained,
    /// A `.conf` primary moved to the backup and replaced by `<stem>.conflist`.
    Converted,
    /// A file of our own, `written`: the copy of the primary (`FRONT_FILE`) or, with no
    /// primary, `STANDALONE_FILE`. Versions before the copy know this mode and undo it by
    /// deleting `written`: after a downgrade they chain in place instead of failing.
    Standalone,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct State {
    mode: Mode,
    /// The primary's file name as we found it (absent for standalone).
    primary: Option<String>,
    /// The file we wrote or edited.
    written: String,
}

impl State {
    /// We wrote the copy of `primary`.
    fn front(&self) -> bool {
        self.mode == Mode::Standalone && self.written == FRONT_FILE
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    List,
    Single,
}

#[derive(Debug)]
struct Primary {
    name: String,
    kind: Kind,
    value: Value,
    bytes: Vec<u8>,
}

/// Our conflist entry with only the keys that differ from the plugin's defaults.
pub fn plugin_entry(
    mtu: Option<u32>,
    underlay_interface: Option<&str>,
    readiness_path: Option<&str>,
    require_readiness: bool,
) -> Map<String, Value> {
    use crate::config::{
        KEY_MTU, KEY_READINESS_PATH, KEY_REQUIRE_READINESS, KEY_UNDERLAY_INTERFACE,
    };
    let mut m = Map::new();
    m.insert("type".into(), PLUGIN_TYPE.into());
    if let Some(mtu) = mtu {
        m.insert(KEY_MTU.into(), mtu.into());
    }
    if let Some(i) = underlay_interface {
        m.insert(KEY_UNDERLAY_INTERFACE.into(), i.into());
    }
    if let Some(p) = readiness_path {
        m.insert(KEY_READINESS_PATH.into(), p.into());
    }
    if !require_readiness {
        m.insert(KEY_REQUIRE_READINESS.into(), false.into());
    }
    m
}

/// Installs; running it again with the same options changes nothing.
pub fn install(opts: &InstallOptions) -> Result<Report, InstallError> {
    let mut report = Report::default();
    copy_binary(opts, &mut report)?;
    let conf_dir = &opts.conf_dir;
    let mut state = load_state(conf_dir)?;
    let primary_file = |s: &State| match s.mode {
        Mode::Standalone => s.primary.clone(),
        Mode::Chained | Mode::Converted => Some(s.written.clone()),
    };
    if let Some(name) = state.as_ref().and_then(primary_file) {
        // Being rewritten by its owner (not atomically): deciding now that it is gone would
        // undo our change and, for a round, chain behind whatever config sorts next.
        let path = conf_dir.join(name);
        if path.exists() && read_json(&path)?.is_none() {
            return Err(InstallError::Refused(format!(
                "{} is not valid JSON at the moment; left alone",
                path.display()
            )));
        }
    }
    let mut primary = find_primary(conf_dir)?;
    if let Some(s) = &state {
        let still_ours = match (s.mode, &primary) {
            (Mode::Standalone, None) => !s.front(),
            // Another primary behind the copy: the copy is rewritten in place, never missing.
            (Mode::Standalone, Some(p)) => s.front() && fronts(p),
            (Mode::Chained | Mode::Converted, Some(p)) => p.name == s.written && !fronts(p),
            _ => false,
        };
        if !still_ours {
            // The node's CNI config moved under us (new primary, owner rewrote its file), or
            // an earlier version chained in place: undo the old change first so exactly one
            // config carries our entry.
            report.say(format!(
                "the CNI config wgmesh-cni chains behind changed; reverting {}",
                s.written
            ));
            revert(conf_dir, s, &mut report)?;
            clear_backup(conf_dir)?;
            state = None;
            primary = find_primary(conf_dir)?;
        }
    }
    if let Some(p) = &primary {
        check_version(p)?;
        check_not_alone(p)?;
    }
    let copy = conf_dir.join(FRONT_FILE);
    if !primary.as_ref().is_some_and(fronts) && copy.exists() {
        // A copy no state accounts for (the state was lost) would shadow what we chain now.
        remove_if_exists(&copy)?;
        report.say(format!("removed {}, which no longer copies the primary", copy.display()));
    }
    match primary {
        None => standalone(opts, &mut report)?,
        Some(p) => {
            match p.kind {
                _ if fronts(&p) => front(opts, &p, state.as_ref(), &mut report)?,
                // A primary that sorts before our copy would shadow it: chained in place.
                Kind::List => chain(opts, &p, state.as_ref(), &mut report)?,
                Kind::Single => convert(opts, &p, &mut report)?,
            }
        }
    }
    Ok(report)
}

/// Reverts what `install` did and removes the binary.
pub fn uninstall(bin_dir: &Path, conf_dir: &Path) -> Result<Report, InstallError> {
    let mut report = Report::default();
    let keep_backup = match load_state(conf_dir)? {
        Some(s) => {
            let keep = revert(conf_dir, &s, &mut report)?;
            if s.front() {
                // An entry the primary already had (chained by hand, or an install whose state
                // was lost) would name the binary removed below: every pod would fail.
                strip_loaded(conf_dir, &mut report)?;
            }
            keep
        }
        None => {
            strip_without_state(conf_dir, &mut report)?;
            false
        }
    };
    if keep_backup {
        report.say(format!(
            "kept {} because the config was edited after install",
            conf_dir.join(BACKUP_DIR).display()
        ));
    } else {
        clear_backup(conf_dir)?;
    }
    let bin = bin_dir.join(BINARY_NAME);
    match fs::remove_file(&bin) {
        Ok(()) => report.say(format!("removed {}", bin.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove", &bin, e)),
    }
    Ok(report)
}

fn copy_binary(opts: &InstallOptions, report: &mut Report) -> Result<(), InstallError> {
    let bytes =
        fs::read(&opts.source_binary).map_err(|e| io_err("read", &opts.source_binary, e))?;
    let target = opts.bin_dir.join(BINARY_NAME);
    fs::create_dir_all(&opts.bin_dir).map_err(|e| io_err("create", &opts.bin_dir, e))?;
    if atomic::write_if_changed(&target, &bytes, 0o755).map_err(|e| io_err("write", &target, e))? {
        report.say(format!("installed {}", target.display()));
    }
    Ok(())
}

/// Whether our copy of `p` sorts before it, so the runtime takes the copy.
fn fronts(p: &Primary) -> bool {
    p.name.as_str() > FRONT_FILE
}

/// Writes `FRONT_FILE`: the primary's list (or its single plugin as a list) with our entry.
fn front(
    opts: &InstallOptions,
    p: &Primary,
    state: Option<&State>,
    report: &mut Report,
) -> Result<(), InstallError> {
    let conf_dir = &opts.conf_dir;
    let path = conf_dir.join(FRONT_FILE);
    let primary_path = conf_dir.join(&p.name);
    // While the primary is what we copied, our file is edited, not regenerated: being the
    // first file, it is where another chained plugin (istio-cni) adds itself.
    let copied = read_json(&conf_dir.join(BACKUP_DIR).join(&p.name))?;
    let unchanged = state.is_some_and(|s| s.front() && s.primary.as_ref() == Some(&p.name))
        && copied.is_some_and(|(bytes, _)| bytes == p.bytes);
    let current = read_json(&path)?.map(|(_, v)| v);
    let base = match (&current, p.kind) {
        (Some(v), _) if unchanged => strip(v).0,
        (_, Kind::List) => strip(&p.value).0,
        (_, Kind::Single) => conf_to_list(&p.value),
    };
    if unchanged && current.as_ref().is_some_and(|v| chains_once(v, &opts.plugin)) {
        report.note(format!("{} already chains wgmesh-cni behind {}", path.display(), p.name));
        return Ok(());
    }
    // Order matters for a crash or a failed write at any step: no record of what the copy was
    // made from (one left from an earlier primary would mark a stale copy as current), state,
    // the copy, then the bytes it was made from.
    let mode = mode_of(&primary_path);
    clear_backup(conf_dir)?;
    save_state(
        conf_dir,
        &State {
            mode: Mode::Standalone,
            primary: Some(p.name.clone()),
            written: FRONT_FILE.to_string(),
        },
    )?;
    atomic::write(&path, &pretty(&with_ours(&base, &opts.plugin)), mode)
        .map_err(|e| io_err("write", &path, e))?;
    save_backup(conf_dir, &p.name, &p.bytes, mode)?;
    report.say(format!(
        "wrote {}: {} with wgmesh-cni chained, sorting first ({} itself is left as it is)",
        path.display(),
        p.name,
        primary_path.display()
    ));
    Ok(())
}

fn chain(
    opts: &InstallOptions,
    p: &Primary,
    state: Option<&State>,
    report: &mut Report,
) -> Result<(), InstallError> {
    let (stripped, had_ours) = strip(&p.value);
    let known = state.is_some_and(|s| s.written == p.name);
    if !(known && had_ours) {
        // The file is the owner's original (first install, or the owner rewrote it).
        let original = if had_ours {
            pretty(&stripped)
        } else {
            p.bytes.clone()
        };
        save_backup(&opts.conf_dir, &p.name, &original, mode_of(&opts.conf_dir.join(&p.name)))?;
        save_state(
            &opts.conf_dir,
            &State {
                mode: Mode::Chained,
                primary: Some(p.name.clone()),
                written: p.name.clone(),
            },
        )?;
    }
    let desired = with_ours(&stripped, &opts.plugin);
    let path = opts.conf_dir.join(&p.name);
    if chains_once(&p.value, &opts.plugin) {
        report.note(format!("{} already chains wgmesh-cni", path.display()));
    } else {
        atomic::write(&path, &pretty(&desired), mode_of(&path)).map_err(|e| io_err("write", &path, e))?;
        report.say(format!("chained wgmesh-cni into {}", path.display()));
    }
    Ok(())
}

fn convert(opts: &InstallOptions, p: &Primary, report: &mut Report) -> Result<(), InstallError> {
    let stem = p.name.rsplit_once('.').map_or(p.name.as_str(), |(s, _)| s);
    let list_name = format!("{stem}.conflist");
    let list_path = opts.conf_dir.join(&list_name);
    if list_path.exists() {
        return Err(InstallError::Refused(format!(
            "cannot convert {} into a list: {} already exists",
            p.name,
            list_path.display()
        )));
    }
    // Order matters for a crash at any step: backup, state, new list, then drop the .conf.
    let mode = mode_of(&opts.conf_dir.join(&p.name));
    save_backup(&opts.conf_dir, &p.name, &p.bytes, mode)?;
    save_state(
        &opts.conf_dir,
        &State {
            mode: Mode::Converted,
            primary: Some(p.name.clone()),
            written: list_name,
        },
    )?;
    let desired = with_ours(&conf_to_list(&p.value), &opts.plugin);
    atomic::write(&list_path, &pretty(&desired), mode)
        .map_err(|e| io_err("write", &list_path, e))?;
    let conf_path = opts.conf_dir.join(&p.name);
    fs::remove_file(&conf_path).map_err(|e| io_err("remove", &conf_path, e))?;
    report.say(format!(
        "converted {} into {} with wgmesh-cni chained (original kept in {BACKUP_DIR})",
        conf_path.display(),
        list_path.display()
    ));
    Ok(())
}

fn standalone(opts: &InstallOptions, report: &mut Report) -> Result<(), InstallError> {
    let s = &opts.standalone;
    if s.pod_cidrs.is_empty() {
        return Err(InstallError::Refused(format!(
            "there is no CNI config in {} to chain into, and no --pod-cidr to write a standalone \
             bridge config with",
            opts.conf_dir.display()
        )));
    }
    let mut ranges = Vec::new();
    let mut routes = Vec::new();
    for cidr in &s.pod_cidrs {
        let net = IpNet::from_str(cidr)
            .map_err(|e| InstallError::Refused(format!("--pod-cidr {cidr:?}: {e}")))?;
        ranges.push(json!([{ "subnet": net.to_string() }]));
        routes.push(match net {
            IpNet::V4(_) => json!({ "dst": "0.0.0.0/0" }),
            IpNet::V6(_) => json!({ "dst": "::/0" }),
        });
    }
    SpecVersion::from_str(&s.cni_version)
        .ok()
        .filter(|v| SUPPORTED_VERSIONS.contains(v))
        .ok_or_else(|| {
            InstallError::Refused(format!("unsupported --cni-version {}", s.cni_version))
        })?;
    let list = json!({
        "cniVersion": s.cni_version,
        "name": "wgmesh",
        "plugins": [
            {
                "type": "bridge",
                "bridge": s.bridge,
                "isGateway": true,
                "ipMasq": s.ip_masq,
                "hairpinMode": true,
                "ipam": { "type": "host-local", "ranges": ranges, "routes": routes },
            },
            Value::Object(opts.plugin.clone()),
        ],
    });
    let path = opts.conf_dir.join(STANDALONE_FILE);
    fs::create_dir_all(&opts.conf_dir).map_err(|e| io_err("create", &opts.conf_dir, e))?;
    save_state(
        &opts.conf_dir,
        &State {
            mode: Mode::Standalone,
            primary: None,
            written: STANDALONE_FILE.to_string(),
        },
    )?;
    if atomic::write_if_changed(&path, &pretty(&list), 0o644)
        .map_err(|e| io_err("write", &path, e))?
    {
        report.say(format!(
            "no primary CNI config found; wrote {}",
            path.display()
        ));
    } else {
        report.note(format!("{} is up to date", path.display()));
    }
    Ok(())
}

/// Undoes `state`; returns true when the backup must be kept (someone edited our file).
fn revert(conf_dir: &Path, state: &State, report: &mut Report) -> Result<bool, InstallError> {
    let written = conf_dir.join(&state.written);
    match state.mode {
        Mode::Standalone => {
            remove_if_exists(&written)?;
            report.say(format!("removed {}", written.display()));
            Ok(false)
        }
        Mode::Chained => {
            let Some(current) = read_json(&written)? else {
                report.say(format!("{} is gone; nothing to revert", written.display()));
                return Ok(false);
            };
            let (stripped, had_ours) = strip(&current.1);
            let backup = read_json(&conf_dir.join(BACKUP_DIR).join(&state.written))?;
            match backup {
                Some((bytes, original)) if original == stripped => {
                    atomic::write(&written, &bytes, mode_of(&written))
                        .map_err(|e| io_err("write", &written, e))?;
                    report.say(format!("restored the original {}", written.display()));
                }
                _ if had_ours => {
                    // Edited since install: keep the owner's changes, drop only our entry.
                    atomic::write(&written, &pretty(&stripped), mode_of(&written))
                        .map_err(|e| io_err("write", &written, e))?;
                    report.say(format!("removed wgmesh-cni from {}", written.display()));
                }
                _ => {}
            }
            Ok(false)
        }
        Mode::Converted => {
            let Some(conf_name) = &state.primary else {
                return Ok(false);
            };
            let conf_path = conf_dir.join(conf_name);
            if conf_path.exists() {
                // The owner wrote its .conf again; it is the config now, ours is stale.
                remove_if_exists(&written)?;
                report.say(format!("removed {}", written.display()));
                return Ok(false);
            }
            let backup = conf_dir.join(BACKUP_DIR).join(conf_name);
            let Some((bytes, original)) = read_json(&backup)? else {
                return Ok(false);
            };
            let current = read_json(&written)?;
            let unchanged = current
                .as_ref()
                .is_none_or(|(_, v)| strip(v).0 == conf_to_list(&original));
            if unchanged {
                atomic::write(&conf_path, &bytes, mode_of(&backup))
                    .map_err(|e| io_err("write", &conf_path, e))?;
                remove_if_exists(&written)?;
                report.say(format!(
                    "restored {} and removed {}",
                    conf_path.display(),
                    written.display()
                ));
                return Ok(false);
            }
            if let Some((_, v)) = current {
                atomic::write(&written, &pretty(&strip(&v).0), mode_of(&written))
                    .map_err(|e| io_err("write", &written, e))?;
                report.say(format!(
                    "removed wgmesh-cni from the edited {}",
                    written.display()
                ));
            }
            Ok(true)
        }
    }
}

/// Uninstall without a state file: remove our own files and our entry wherever it is.
fn strip_without_state(conf_dir: &Path, report: &mut Report) -> Result<(), InstallError> {
    for ours in [STANDALONE_FILE, FRONT_FILE] {
        let path = conf_dir.join(ours);
        if path.exists() {
            remove_if_exists(&path)?;
            report.say(format!("removed {}", path.display()));
        }
    }
    strip_loaded(conf_dir, report)
}

/// Removes our entry from the config the runtime loads, if it has one.
fn strip_loaded(conf_dir: &Path, report: &mut Report) -> Result<(), InstallError> {
    if let Some(p) = find_primary(conf_dir)? {
        let (stripped, had_ours) = strip(&p.value);
        if had_ours {
            let path = conf_dir.join(&p.name);
            atomic::write(&path, &pretty(&stripped), mode_of(&path))
                .map_err(|e| io_err("write", &path, e))?;
            report.say(format!("removed wgmesh-cni from {}", path.display()));
        }
    }
    Ok(())
}

/// The first valid config file in lexical (byte) order, as libcni's ConfFiles + kubelet.
fn find_primary(conf_dir: &Path) -> Result<Option<Primary>, InstallError> {
    let entries = match fs::read_dir(conf_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("list", conf_dir, e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != STANDALONE_FILE && n != FRONT_FILE)
        .filter(|n| {
            n.rsplit_once('.')
                .is_some_and(|(_, ext)| CONFIG_EXTENSIONS.contains(&ext))
        })
        .collect();
    names.sort();
    for name in names {
        let path = conf_dir.join(&name);
        if path.is_dir() {
            continue;
        }
        let bytes = fs::read(&path).map_err(|e| io_err("read", &path, e))?;
        let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        let kind = if name.ends_with(".conflist") {
            Kind::List
        } else {
            Kind::Single
        };
        let valid = match kind {
            Kind::List => value
                .get("plugins")
                .and_then(Value::as_array)
                .is_some_and(|p| !p.is_empty() && p.iter().all(Value::is_object)),
            Kind::Single => value
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| !t.is_empty()),
        };
        if valid {
            return Ok(Some(Primary {
                name,
                kind,
                value,
                bytes,
            }));
        }
    }
    Ok(None)
}

/// Refuses to chain into a config whose cniVersion the plugin would reject on every pod.
fn check_version(p: &Primary) -> Result<(), InstallError> {
    let declared = p
        .value
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let ok = SpecVersion::from_str(declared)
        .ok()
        .is_some_and(|v| SUPPORTED_VERSIONS.contains(&v));
    if ok {
        return Ok(());
    }
    Err(InstallError::Refused(format!(
        "the primary CNI config {} declares cniVersion {declared:?}, which wgmesh-cni does not \
         support; chaining it would make every pod start fail",
        p.name
    )))
}

/// Refuses a config whose only plugin is wgmesh-cni: chained behind nothing it has no
/// prevResult, so converting or extending it would only hide that every pod fails.
fn check_not_alone(p: &Primary) -> Result<(), InstallError> {
    let alone = match p.kind {
        Kind::List => p
            .value
            .get("plugins")
            .and_then(Value::as_array)
            .is_some_and(|l| l.iter().all(is_ours)),
        Kind::Single => is_ours(&p.value),
    };
    if !alone {
        return Ok(());
    }
    Err(InstallError::Refused(format!(
        "{} has no plugin but wgmesh-cni, which only chains after a main plugin; remove it or \
         put the cluster's CNI plugin first",
        p.name
    )))
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// The list without our entries, and whether it had any.
fn strip(list: &Value) -> (Value, bool) {
    let mut out = list.clone();
    let mut had = false;
    if let Some(plugins) = out.get_mut("plugins").and_then(Value::as_array_mut) {
        let before = plugins.len();
        plugins.retain(|p| !is_ours(p));
        had = plugins.len() != before;
    }
    (out, had)
}

/// Our entry is in the list once, as configured, behind the main plugin. Where another plugin
/// put itself after it, the order is left alone rather than fought over on every `--watch` round.
fn chains_once(list: &Value, plugin: &Map<String, Value>) -> bool {
    let plugins = list.get("plugins").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    let ours: Vec<(usize, &Value)> = plugins.iter().enumerate().filter(|(_, p)| is_ours(p)).collect();
    matches!(ours.as_slice(), [(i, Value::Object(m))] if *i > 0 && m == plugin)
}

/// The list with our entry appended last (the "at the end of the chain").
fn with_ours(stripped: &Value, plugin: &Map<String, Value>) -> Value {
    let mut out = stripped.clone();
    if let Some(plugins) = out.get_mut("plugins").and_then(Value::as_array_mut) {
        plugins.push(Value::Object(plugin.clone()));
    }
    out
}

/// What libcni's ConfListFromConf makes of a single-plugin config.
fn conf_to_list(conf: &Value) -> Value {
    json!({
        "cniVersion": conf.get("cniVersion").cloned().unwrap_or(Value::Null),
        "name": conf.get("name").cloned().unwrap_or(Value::Null),
        "plugins": [conf],
    })
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

fn read_json(path: &Path) -> Result<Option<(Vec<u8>, Value)>, InstallError> {
    match fs::read(path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok().map(|v| (bytes, v))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path, e)),
    }
}

fn load_state(conf_dir: &Path) -> Result<Option<State>, InstallError> {
    let path = conf_dir.join(BACKUP_DIR).join(STATE_FILE);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            InstallError::Refused(format!(
                "{} is damaged ({e}); remove it and retry",
                path.display()
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", &path, e)),
    }
}

fn save_state(conf_dir: &Path, state: &State) -> Result<(), InstallError> {
    let dir = conf_dir.join(BACKUP_DIR);
    fs::create_dir_all(&dir).map_err(|e| io_err("create", &dir, e))?;
    let path = dir.join(STATE_FILE);
    let bytes = serde_json::to_vec_pretty(state).unwrap_or_default();
    atomic::write_if_changed(&path, &bytes, 0o644)
        .map(drop)
        .map_err(|e| io_err("write", &path, e))
}

/// The permission bits of `path`, or 0644 for a file that does not exist: a rewrite never
/// makes the owner's config (0600 under the CIS benchmark) readable to more users.
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).map_or(0o644, |m| m.permissions().mode() & 0o777)
}

fn save_backup(conf_dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let dir = conf_dir.join(BACKUP_DIR);
    fs::create_dir_all(&dir).map_err(|e| io_err("create", &dir, e))?;
    let path = dir.join(name);
    atomic::write_if_changed(&path, bytes, mode)
        .map(drop)
        .map_err(|e| io_err("write", &path, e))
}

fn clear_backup(conf_dir: &Path) -> Result<(), InstallError> {
    let dir = conf_dir.join(BACKUP_DIR);
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", &dir, e)),
    }
}

fn remove_if_exists(path: &Path) -> Result<(), InstallError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path, e)),
    }
}

fn io_err(what: &'static str, path: &Path, source: io::Error) -> InstallError {
    InstallError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}
