//! The CNI calling convention: CNI_* environment in, config on stdin, JSON on stdout.

use std::{path::PathBuf, str::FromStr};

use rscni_types::{
    types::{Cmd, ContainerId, InterfaceName},
    version::{PluginInfo, SpecVersion},
};

use crate::{
    config::{self, SUPPORTED_VERSIONS},
    error::CniError,
    plugin::{self, Request},
};

/// The CNI_* variables of one invocation; absent and empty are the same (as in libcni).
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub path: Option<String>,
}

impl Invocation {
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            path: var("CNI_PATH"),
        }
    }
}

/// What to print on stdout and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: i32,
}

/// Runs one invocation; every failure becomes error JSON with exit code 1, never a panic.
pub fn run(inv: &Invocation, stdin: &[u8]) -> Outcome {
    let mut version = SpecVersion::CURRENT;
    match dispatch(inv, stdin, &mut version) {
        Ok(stdout) => Outcome {
            stdout,
            exit_code: 0,
        },
        Err(e) => Outcome {
            stdout: serde_json::to_string(&e.to_result(version)).unwrap_or_else(|_| {
                format!(r#"{{"code":{},"msg":"wgmesh-cni failed"}}"#, e.code())
            }),
            exit_code: 1,
        },
    }
}

/// `version` is set as soon as the config declares one, so errors echo it (as the spec asks).
fn dispatch(inv: &Invocation, stdin: &[u8], version: &mut SpecVersion) -> Result<String, CniError> {
    let cmd = parse_command(inv.command.as_deref())?;
    if cmd == Cmd::Version {
        let info = PluginInfo::new(SpecVersion::CURRENT, SUPPORTED_VERSIONS.to_vec());
        return serde_json::to_string(&info).map_err(|e| CniError::Io(e.to_string()));
    }
    let ifname = check_env(inv, cmd)?;
    let (net, declared) = config::decode(stdin, cmd)?;
    *version = declared;
    let config = config::from_net(net, declared)?;
    match cmd {
        Cmd::Status => plugin::status(&config).map(|()| String::new()),
        Cmd::Gc => plugin::gc(&config).map(|()| String::new()),
        Cmd::Add | Cmd::Del | Cmd::Check | Cmd::Version => {
            let req = Request {
                netns: inv.netns.as_ref().map(PathBuf::from),
                ifname,
                config,
            };
            match cmd {
                Cmd::Add => plugin::add(&req),
                Cmd::Check => plugin::check(&req).map(|()| String::new()),
                _ => plugin::del(&req).map(|()| String::new()),
            }
        }
    }
}

fn parse_command(command: Option<&str>) -> Result<Cmd, CniError> {
    let Some(command) = command else {
        return Err(CniError::InvalidEnv(
            "CNI_COMMAND is not set; wgmesh-cni is run by a container runtime (or run \
             `wgmesh-cni install`)"
                .to_string(),
        ));
    };
    Cmd::from_str(command).map_err(CniError::from)
}

/// The variables each operation needs (spec §"Parameters"); returns CNI_IFNAME.
fn check_env(inv: &Invocation, cmd: Cmd) -> Result<String, CniError> {
    if !matches!(cmd, Cmd::Add | Cmd::Del | Cmd::Check) {
        return Ok(String::new());
    }
    let mut missing = Vec::new();
    if inv.container_id.is_none() {
        missing.push("CNI_CONTAINERID");
    }
    if inv.netns.is_none() && cmd != Cmd::Del {
        missing.push("CNI_NETNS");
    }
    if inv.ifname.is_none() {
        missing.push("CNI_IFNAME");
    }
    if !missing.is_empty() {
        return Err(CniError::InvalidEnv(format!(
            "{} must be set for {}",
            missing.join(", "),
            <&str>::from(cmd)
        )));
    }
    if let Some(id) = &inv.container_id {
        ContainerId::try_from(id.clone()).map_err(CniError::from)?;
    }
    let ifname = inv.ifname.clone().unwrap_or_default();
    InterfaceName::try_from(ifname.clone()).map_err(CniError::from)?;
    Ok(ifname)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn code(out: &Outcome) -> i64 {
        serde_json::from_str::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["code"].as_i64())
            .unwrap_or(-1)
    }

    fn inv(cmd: &str) -> Invocation {
        Invocation {
            command: Some(cmd.into()),
            container_id: Some("c1".into()),
            netns: Some("/nonexistent/netns".into()),
            ifname: Some("eth0".into()),
            path: Some("/usr/lib/cni".into()),
        }
    }

    #[test]
    fn version_lists_what_we_speak() {
        let out = run(&inv("VERSION"), b"");
        assert_eq!(out.exit_code, 0);
        assert_eq!(
            out.stdout,
            r#"{"cniVersion":"1.1.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#
        );
    }

    #[test]
    fn environment_errors_are_code_4() {
        assert_eq!(code(&run(&Invocation::default(), b"{}")), 4);
        assert_eq!(code(&run(&inv("FROB"), b"{}")), 4);
        let mut no_netns = inv("ADD");
        no_netns.netns = None;
        assert_eq!(code(&run(&no_netns, b"{}")), 4);
        let mut bad_if = inv("ADD");
        bad_if.ifname = Some("eth/0".into());
        assert_eq!(code(&run(&bad_if, b"{}")), 4);
    }

    #[test]
    fn del_needs_no_netns_and_succeeds_when_it_is_gone() {
        let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"wgmesh-cni"}"#;
        let mut del = inv("DEL");
        assert_eq!(run(&del, conf).exit_code, 0);
        del.netns = None;
        assert_eq!(
            run(&del, conf),
            Outcome {
                stdout: String::new(),
                exit_code: 0
            }
        );
    }

    #[test]
    fn errors_echo_the_configs_version() {
        let conf = br#"{"cniVersion":"0.4.0","name":"n","type":"wgmesh-cni"}"#;
        let out = run(&inv("ADD"), conf);
        assert_eq!(code(&out), 7);
        assert!(
            out.stdout.contains(r#""cniVersion":"0.4.0""#),
            "{}",
            out.stdout
        );
        let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"wgmesh-cni","mtu":1}"#;
        let out = run(&inv("ADD"), conf);
        assert_eq!(code(&out), 7);
        assert!(
            out.stdout.contains(r#""cniVersion":"1.0.0""#),
            "{}",
            out.stdout
        );
    }

    proptest! {
        #[test]
        fn any_stdin_for_any_command_gives_json_not_panic(
            cmd in prop::sample::select(vec!["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION", ""]),
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let out = run(&inv(cmd), &bytes);
            if out.exit_code != 0 {
                prop_assert!(code(&out) > 0, "{}", out.stdout);
            }
        }
    }
}
