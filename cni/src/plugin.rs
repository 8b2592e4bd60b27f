//! What wgmesh-cni does for each CNI operation, once the protocol layer has validated input.

use std::{io::ErrorKind, path::PathBuf};

use rscni_types::types::CNIResult;

use crate::{
    config::PluginConfig,
    error::CniError,
    link::LinkSocket,
    mtu::{mesh_mtu, MeshMtu},
    netns::Netns,
    readiness::{self, Readiness},
    result::{self, Targets},
};

/// One validated invocation: environment plus decoded config.
#[derive(Debug, Clone)]
pub struct Request {
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub config: PluginConfig,
}

const IPV6_MIN_MTU: u32 = 1280;

/// ADD: give the pod's interface(s) and the host-side veth the mesh MTU; pass prevResult on.
pub fn add(req: &Request) -> Result<String, CniError> {
    let prev = prev_result(req)?;
    let netns = open_netns(req)?;
    let targets = result::targets(&prev, &req.ifname);
    let host = host_socket()?;
    let mesh = mesh_mtu(&req.config, &host)?;
    // Below 1280 the kernel turns IPv6 off on a link and drops its addresses (RFC 8200 §5).
    if mesh.value < IPV6_MIN_MTU && prev.ips.iter().any(|ip| ip.address.addr().is_ipv6()) {
        return Err(CniError::InvalidConfig(format!(
            "the mesh MTU {} ({}) is below IPv6's minimum of {IPV6_MIN_MTU}, and the pod has an IPv6 address: the kernel would turn IPv6 off on its interface. Raise the underlay MTU or the \"mtu\" in the config",
            mesh.value, mesh.reason
        )));
    }
    require_ready(req)?;
    let host_veths = host_veths(&host, &targets);
    netns.run(|| {
        let pod = LinkSocket::new().map_err(|e| link_error("open a socket in the pod", &e))?;
        // Look before touching anything, so a bad prevResult changes nothing.
        for name in &targets.pod {
            pod.mtu(name)
                .map_err(|e| missing_in_pod(name, &netns, &e))?;
        }
        for name in &targets.pod {
            pod.set_mtu(name, mesh.value).map_err(|e| {
                link_error(&format!("set MTU {} on {name} in the pod", mesh.value), &e)
            })?;
        }
        Ok(())
    })?;
    for name in &host_veths {
        host.set_mtu(name, mesh.value).map_err(|e| {
            link_error(
                &format!("set MTU {} on the host-side veth {name}", mesh.value),
                &e,
            )
        })?;
    }
    let mut changed = targets.pod.clone();
    changed.extend(host_veths);
    result::add_output(req.config.version, prev, &changed, mesh.value)
}

/// DEL: nothing of ours outlives the interfaces the previous plugin deletes, so DEL only
/// has to succeed, also when the netns or the interfaces are already gone.
pub fn del(_req: &Request) -> Result<(), CniError> {
    Ok(())
}

/// CHECK: the agent is ready and every interface still has the mesh MTU.
pub fn check(req: &Request) -> Result<(), CniError> {
    let prev = prev_result(req)?;
    let netns = open_netns(req)?;
    let targets = result::targets(&prev, &req.ifname);
    let host = host_socket()?;
    let mesh = mesh_mtu(&req.config, &host)?;
    require_ready(req)?;
    netns.run(|| {
        let pod = LinkSocket::new().map_err(|e| link_error("open a socket in the pod", &e))?;
        for name in &targets.pod {
            let mtu = pod
                .mtu(name)
                .map_err(|e| missing_in_pod(name, &netns, &e))?;
            expect_mtu(
                mtu,
                &mesh,
                &format!("{name} in the pod's netns {}", netns.path().display()),
            )?;
        }
        Ok(())
    })?;
    for name in host_veths(&host, &targets) {
        let mtu = host
            .mtu(&name)
            .map_err(|e| link_error(&format!("read the MTU of the host-side veth {name}"), &e))?;
        expect_mtu(mtu, &mesh, &format!("the host-side veth {name}"))?;
    }
    Ok(())
}

/// STATUS (1.1.0): ready unless the agent says otherwise (code 50 = cannot serve ADD).
pub fn status(config: &PluginConfig) -> Result<(), CniError> {
    if !config.require_readiness {
        return Ok(());
    }
    match readiness::check(&config.readiness_path) {
        Readiness::Ready => Ok(()),
        Readiness::NotReady(why) => Err(CniError::NotAvailable(why)),
    }
}

/// GC (1.1.0): we keep no per-attachment state, so there is nothing to collect.
pub fn gc(_config: &PluginConfig) -> Result<(), CniError> {
    Ok(())
}

fn prev_result(req: &Request) -> Result<CNIResult, CniError> {
    req.config.net.prev_result.clone().ok_or_else(|| {
        CniError::InvalidConfig(
            "there is no prevResult: wgmesh-cni is a chained plugin and must come after the \
             plugin that creates the pod's interface (for example bridge) in a .conflist"
                .to_string(),
        )
    })
}

fn open_netns(req: &Request) -> Result<Netns, CniError> {
    let path = req
        .netns
        .as_deref()
        .ok_or_else(|| CniError::InvalidEnv("CNI_NETNS is not set".to_string()))?;
    Netns::open(path)
}

fn host_socket() -> Result<LinkSocket, CniError> {
    LinkSocket::new().map_err(|e| link_error("open a socket in the host netns", &e))
}

fn require_ready(req: &Request) -> Result<(), CniError> {
    if !req.config.require_readiness {
        return Ok(());
    }
    match readiness::check(&req.config.readiness_path) {
        Readiness::Ready => Ok(()),
        Readiness::NotReady(why) => Err(CniError::TryAgainLater(format!(
            "{why}; pods on this node start once it is (set \"requireReadiness\": false to \
             start them unencrypted)"
        ))),
    }
}

/// Host-side interfaces from prevResult that are veths here; bridges, uplinks (macvlan's
/// master) and anything else are left alone, since lowering them would hit other traffic.
fn host_veths(host: &LinkSocket, targets: &Targets) -> Vec<String> {
    targets
        .host
        .iter()
        .filter(|name| host.driver(name).is_ok_and(|d| d == "veth"))
        .cloned()
        .collect()
}

fn expect_mtu(actual: u32, mesh: &MeshMtu, what: &str) -> Result<(), CniError> {
    if actual == mesh.value {
        return Ok(());
    }
    Err(CniError::MtuMismatch(format!(
        "the MTU of {what} is {actual}, but the mesh MTU is {} ({}); it was changed after ADD",
        mesh.value, mesh.reason
    )))
}

fn missing_in_pod(name: &str, netns: &Netns, e: &std::io::Error) -> CniError {
    match e.kind() {
        ErrorKind::NotFound => CniError::InterfaceMissing(format!(
            "interface {name} from prevResult does not exist in the pod's netns {}",
            netns.path().display()
        )),
        _ => link_error(&format!("read the MTU of {name} in the pod"), e),
    }
}

fn link_error(what: &str, e: &std::io::Error) -> CniError {
    CniError::Link(format!("cannot {what}: {e}"))
}
