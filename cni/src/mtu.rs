//! The mesh MTU: what a pod's interface may carry so that, once sealed by WireGuard, the
//! packet still fits the underlay.

use std::io::ErrorKind;

use crate::{config::PluginConfig, config::MTU_RANGE, error::CniError, link::LinkSocket};

/// WireGuard's worst-case overhead: IPv6 outer header 40 + UDP 8 + WireGuard 32.
/// Moves to the api crate with the readiness path.
pub const MESH_MTU_OVERHEAD: u32 = 80;

/// The chosen MTU and the reason, for error messages a person can follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshMtu {
    pub value: u32,
    pub reason: String,
}

/// The configured `mtu`, else the smallest underlay MTU minus `MESH_MTU_OVERHEAD`.
/// `host` must be a socket in the host netns.
pub fn mesh_mtu(config: &PluginConfig, host: &LinkSocket) -> Result<MeshMtu, CniError> {
    if let Some(value) = config.mtu {
        return Ok(MeshMtu {
            value,
            reason: "set by \"mtu\" in the CNI config".to_string(),
        });
    }
    let candidates = match &config.underlay_interface {
        Some(name) => vec![name.clone()],
        // The node agent reads the same links for the wg interface's MTU (wgmesh-rtnl).
        None => wgmesh_rtnl::Netlink::new()
            .and_then(|mut nl| nl.underlay_links(None))
            .map_err(|e| CniError::UnderlayUnknown(format!("cannot read the routing table: {e}")))?
            .into_iter()
            .map(|l| l.name)
            .collect(),
    };
    if candidates.is_empty() {
        return Err(CniError::UnderlayUnknown(
            "the host has no default route; set \"underlayInterface\" or \"mtu\" in the \
             wgmesh-cni config"
                .to_string(),
        ));
    }
    let mut smallest: Option<(u32, &str)> = None;
    for name in &candidates {
        let mtu = host.mtu(name).map_err(|e| {
            CniError::UnderlayUnknown(match e.kind() {
                ErrorKind::NotFound => format!("the underlay interface {name} does not exist"),
                _ => format!("cannot read the MTU of the underlay interface {name}: {e}"),
            })
        })?;
        if smallest.is_none_or(|(m, _)| mtu < m) {
            smallest = Some((mtu, name));
        }
    }
    let Some((underlay, name)) = smallest else {
        return Err(CniError::UnderlayUnknown(
            "no underlay interface".to_string(),
        ));
    };
    let value = underlay.saturating_sub(MESH_MTU_OVERHEAD);
    if !MTU_RANGE.contains(&value) {
        return Err(CniError::UnderlayUnknown(format!(
            "the underlay {name} has MTU {underlay}, too small for the tunnel overhead of \
             {MESH_MTU_OVERHEAD}; set \"mtu\" in the wgmesh-cni config"
        )));
    }
    Ok(MeshMtu {
        value,
        reason: format!("underlay {name} MTU {underlay} − {MESH_MTU_OVERHEAD}"),
    })
}
