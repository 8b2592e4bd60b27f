//! Command line: `wgmesh-operator run [flags]` (default) or `wgmesh-operator crdgen`.

use std::net::SocketAddr;

use wgmesh_api::IpCidr;

/// Usage text.
pub const USAGE: &str = "\
usage: wgmesh-operator [run] [flags]
       wgmesh-operator crdgen        print the WireGuardPeer CRD as YAML

flags (environment variable in brackets):
  --listen ADDR            metrics/health listener (default 0.0.0.0:8080)
  --cluster-cidr CIDRS     comma-separated pod network external peers may not claim [WGMESH_CLUSTER_CIDRS]
  --lease-namespace NS     namespace of the leader Lease [POD_NAMESPACE] (default kube-system)
  --identity ID            this replica's name in the Lease and Events [POD_NAME, HOSTNAME]
  --no-leader-election     write without a Lease (one replica only)
  --log-format json|text   log format (default json); level from RUST_LOG (default info)
";

/// Settings of `run`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunArgs {
    /// Address of the HTTP listener.
    pub listen: SocketAddr,
    /// Reserved pod network.
    pub cluster_cidrs: Vec<IpCidr>,
    /// Lease namespace.
    pub lease_namespace: String,
    /// Replica identity.
    pub identity: String,
    /// Whether to elect a leader.
    pub leader_election: bool,
    /// JSON logs (true) or human-readable text.
    pub json_logs: bool,
}

/// What to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Run the controller.
    Run(RunArgs),
    /// Print the CRD.
    Crdgen,
    /// Print usage.
    Help,
}

/// Bad command line.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    /// Unknown flag or command.
    #[error("unknown argument {0:?}\n{USAGE}")]
    Unknown(String),
    /// Flag without its value.
    #[error("{0} needs a value")]
    MissingValue(String),
    /// Value does not parse.
    #[error("{flag}: {message}")]
    Invalid {
        /// The flag.
        flag: String,
        /// What is wrong.
        message: String,
    },
}

fn cidrs(flag: &str, text: &str) -> Result<Vec<IpCidr>, CliError> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpCidr>().map_err(|e| CliError::Invalid {
                flag: flag.to_owned(),
                message: format!("{s:?}: {e}"),
            })
        })
        .collect()
}

/// Parses arguments (without the program name); `env` looks up environment variables.
pub fn parse(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Command, CliError> {
    let mut it = args.iter().peekable();
    match it.peek().map(|s| s.as_str()) {
        Some("crdgen") => return Ok(Command::Crdgen),
        Some("help" | "-h" | "--help") => return Ok(Command::Help),
        Some("run") => {
            it.next();
        }
        _ => {}
    }
    let mut run = RunArgs {
        listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
        cluster_cidrs: match env("WGMESH_CLUSTER_CIDRS") {
            Some(v) => cidrs("WGMESH_CLUSTER_CIDRS", &v)?,
            None => Vec::new(),
        },
        lease_namespace: env("POD_NAMESPACE").unwrap_or_else(|| "kube-system".into()),
        identity: env("POD_NAME")
            .or_else(|| env("HOSTNAME"))
            .unwrap_or_else(|| format!("wgmesh-operator-{}", std::process::id())),
        leader_election: true,
        json_logs: true,
    };
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| CliError::MissingValue(flag.to_owned()))
        };
        match arg.as_str() {
            "--listen" => {
                let v = value("--listen")?;
                run.listen = v.parse().map_err(|_| CliError::Invalid {
                    flag: "--listen".into(),
                    message: format!("{v:?} is not host:port"),
                })?;
            }
            "--cluster-cidr" => {
                run.cluster_cidrs = cidrs("--cluster-cidr", &value("--cluster-cidr")?)?
            }
            "--lease-namespace" => run.lease_namespace = value("--lease-namespace")?,
            "--identity" => run.identity = value("--identity")?,
            "--no-leader-election" => run.leader_election = false,
            "--log-format" => match value("--log-format")?.as_str() {
                "json" => run.json_logs = true,
                "text" => run.json_logs = false,
                other => {
                    return Err(CliError::Invalid {
                        flag: "--log-format".into(),
                        message: format!("{other:?} is not json or text"),
                    })
                }
            },
            "-h" | "--help" => return Ok(Command::Help),
            other => return Err(CliError::Unknown(other.to_owned())),
        }
    }
    // The agents refuse to run without it; an operator without it would call peers valid
    // that every agent then drops for claiming the pod network.
    if run.cluster_cidrs.is_empty() {
        return Err(CliError::Invalid {
            flag: "--cluster-cidr".into(),
            message: "the cluster's pod network is required (kube-controller-manager \
                      --cluster-cidr; also WGMESH_CLUSTER_CIDRS, comma-separated)"
                .into(),
        });
    }
    Ok(Command::Run(run))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn crdgen_and_defaults() {
        let none = |_: &str| None;
        assert_eq!(parse(&args(&["crdgen"]), &none), Ok(Command::Crdgen));
        let Ok(Command::Run(r)) = parse(&args(&["--cluster-cidr", "10.244.0.0/16"]), &none) else {
            panic!("expected run")
        };
        assert_eq!(r.listen.to_string(), "0.0.0.0:8080");
        assert!(r.leader_election && r.json_logs && r.cluster_cidrs.len() == 1);
        assert_eq!(r.lease_namespace, "kube-system");
    }

    #[test]
    fn flags_and_environment() {
        let env = |k: &str| match k {
            "POD_NAMESPACE" => Some("wgmesh-system".to_owned()),
            "POD_NAME" => Some("op-0".to_owned()),
            "WGMESH_CLUSTER_CIDRS" => Some("10.244.0.0/16, fd00:10:244::/56".to_owned()),
            _ => None,
        };
        let Ok(Command::Run(r)) = parse(
            &args(&[
                "run",
                "--listen",
                "127.0.0.1:9090",
                "--no-leader-election",
                "--log-format",
                "text",
            ]),
            &env,
        ) else {
            panic!("expected run")
        };
        assert_eq!(r.identity, "op-0");
        assert_eq!(r.lease_namespace, "wgmesh-system");
        assert_eq!(r.cluster_cidrs.len(), 2);
        assert!(!r.leader_election && !r.json_logs);
    }

    #[test]
    fn errors_are_specific() {
        let none = |_: &str| None;
        assert_eq!(
            parse(&args(&["--listen"]), &none),
            Err(CliError::MissingValue("--listen".into()))
        );
        assert!(matches!(
            parse(&args(&["--cluster-cidr", "10.0.0.1/8"]), &none),
            Err(CliError::Invalid { .. })
        ));
        assert!(matches!(
            parse(&args(&["--bogus"]), &none),
            Err(CliError::Unknown(_))
        ));
        // no pod network, or an empty one (deploy/'s manifest as shipped): refused, saying which
        let empty = |k: &str| (k == "WGMESH_CLUSTER_CIDRS").then(String::new);
        for env in [&none as &dyn Fn(&str) -> Option<String>, &empty] {
            let e = parse(&args(&["run"]), env).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains("--cluster-cidr") && e.contains("required"), "{e}");
        }
    }
}
