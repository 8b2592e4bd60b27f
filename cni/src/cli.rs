//! Command-line parsing for `wgmesh-cni install` and `wgmesh-cni uninstall`.

use std::{path::PathBuf, time::Duration};

use crate::{
    config::MTU_RANGE,
    install::{self, InstallOptions, StandaloneOptions},
};

pub const USAGE: &str = "\
wgmesh-cni: chained CNI plugin for wgmesh (run by the container runtime with CNI_COMMAND set)

  wgmesh-cni install   [--cni-bin-dir DIR] [--cni-conf-dir DIR] [--source FILE]
                       [--mtu N] [--underlay-interface IF] [--readiness-path PATH]
                       [--no-require-readiness]
                       [--pod-cidr CIDR]... [--bridge NAME] [--ip-masq] [--cni-version V]
                       [--watch SECONDS]
  wgmesh-cni uninstall [--cni-bin-dir DIR] [--cni-conf-dir DIR]

install copies this binary to the CNI bin dir (default /opt/cni/bin) and appends wgmesh-cni to
the primary config in the CNI conf dir (default /etc/cni/net.d). With no config there, it
writes a standalone bridge + host-local + wgmesh-cni list for --pod-cidr. uninstall reverts.
With --watch, install runs again every SECONDS until SIGTERM, so the entry comes back when the
main plugin rewrites its config; it logs only what changed and never uninstalls on exit.
";

/// A parsed subcommand.
#[derive(Debug, Clone)]
pub enum Command {
    Install(InstallOptions),
    /// `install --watch`: install, then again every `every` until stopped.
    Watch { opts: InstallOptions, every: Duration },
    Uninstall { bin_dir: PathBuf, conf_dir: PathBuf },
}

/// Parses `args` (without the program name); errors are one line for stderr.
pub fn parse(args: &[String]) -> Result<Command, String> {
    let (sub, rest) = args
        .split_first()
        .ok_or_else(|| "missing subcommand".to_string())?;
    let mut bin_dir = PathBuf::from(install::DEFAULT_BIN_DIR);
    let mut conf_dir = PathBuf::from(install::DEFAULT_CONF_DIR);
    let mut source = None;
    let mut mtu = None;
    let mut underlay = None;
    let mut readiness = None;
    let mut require_readiness = true;
    let mut standalone = StandaloneOptions::default();
    let mut watch = None;
    let installing = sub == "install";
    if !installing && sub != "uninstall" {
        return Err(format!("unknown subcommand {sub:?}"));
    }
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match (flag, installing) {
            ("--cni-bin-dir", _) => bin_dir = PathBuf::from(value()?),
            ("--cni-conf-dir", _) => conf_dir = PathBuf::from(value()?),
            ("--source", true) => source = Some(PathBuf::from(value()?)),
            ("--mtu", true) => {
                let v = value()?;
                let n = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| MTU_RANGE.contains(n))
                    .ok_or_else(|| format!("--mtu {v:?} is not an MTU from 68 to 65535"))?;
                mtu = Some(n);
            }
            ("--underlay-interface", true) => underlay = Some(value()?),
            ("--readiness-path", true) => readiness = Some(value()?),
            ("--no-require-readiness", true) => require_readiness = false,
            ("--pod-cidr", true) => standalone.pod_cidrs.push(value()?),
            ("--bridge", true) => standalone.bridge = value()?,
            ("--ip-masq", true) => standalone.ip_masq = true,
            ("--cni-version", true) => standalone.cni_version = value()?,
            ("--watch", true) => {
                let v = value()?;
                let secs = v
                    .parse::<u64>()
                    .ok()
                    .filter(|s| (1..=3600).contains(s))
                    .ok_or_else(|| format!("--watch {v:?} is not a number of seconds from 1 to 3600"))?;
                watch = Some(Duration::from_secs(secs));
            }
            _ => return Err(format!("unknown option {arg:?} for {sub}")),
        }
    }
    if !installing {
        return Ok(Command::Uninstall { bin_dir, conf_dir });
    }
    let source_binary = match source {
        Some(s) => s,
        None => std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?,
    };
    let plugin = install::plugin_entry(mtu, underlay.as_deref(), readiness.as_deref(), require_readiness);
    // A value the plugin would refuse on every ADD (a relative readiness path, a bad interface
    // name) is refused here by the plugin's own parser, before any file changes.
    let mut conf = plugin.clone();
    conf.insert("cniVersion".into(), "1.0.0".into());
    conf.insert("name".into(), "wgmesh-check".into());
    crate::config::parse(serde_json::Value::Object(conf).to_string().as_bytes(), rscni_types::types::Cmd::Add)
        .map_err(|e| format!("the plugin would refuse every pod with these options: {e}"))?;
    let opts = InstallOptions { bin_dir, conf_dir, source_binary, plugin, standalone };
    Ok(match watch {
        Some(every) => Command::Watch { opts, every },
        None => Command::Install(opts),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn values_the_plugin_would_refuse_are_refused_at_install() {
        for (flags, key) in [
            ("install --readiness-path run/wgmesh/ready", "readinessPath"),
            ("install --underlay-interface this-name-is-too-long", "underlayInterface"),
            ("install --underlay-interface a/b", "underlayInterface"),
        ] {
            match parse(&args(flags)) {
                Err(e) => assert!(e.contains(key), "{flags}: {e}"),
                Ok(_) => panic!("{flags}: accepted"),
            }
        }
        assert!(parse(&args("install --readiness-path /run/x --underlay-interface ens3")).is_ok());
    }

    #[test]
    fn install_flags_become_plugin_keys() {
        let Ok(Command::Install(o)) = parse(&args(
            "install --cni-conf-dir=/x --mtu 1380 --no-require-readiness --pod-cidr 10.1.0.0/24",
        )) else {
            panic!("did not parse");
        };
        assert_eq!(o.conf_dir, PathBuf::from("/x"));
        assert_eq!(o.plugin["mtu"], 1380);
        assert_eq!(o.plugin["requireReadiness"], false);
        assert_eq!(o.plugin["type"], "wgmesh-cni");
        assert_eq!(o.standalone.pod_cidrs, vec!["10.1.0.0/24"]);
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(parse(&args("install --mtu 12")).is_err());
        assert!(parse(&args("install --mtu")).is_err());
        assert!(parse(&args("uninstall --mtu 1400")).is_err());
        assert!(parse(&args("frobnicate")).is_err());
        assert!(parse(&[]).is_err());
        assert!(parse(&args("install --watch 0")).is_err());
        assert!(parse(&args("install --watch 1.5")).is_err());
        assert!(parse(&args("uninstall --watch 5")).is_err());
    }

    #[test]
    fn watch_is_install_with_a_period() {
        let Ok(Command::Watch { opts, every }) = parse(&args("install --watch=7 --mtu 1380")) else {
            panic!("did not parse");
        };
        assert_eq!(every, Duration::from_secs(7));
        assert_eq!(opts.plugin["mtu"], 1380);
    }
}
