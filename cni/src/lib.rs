//! wgmesh-cni: the chained CNI plugin that gives pods the mesh MTU and holds pod starts
//! until the node-agent reports the tunnel up, plus its installer. See cni/README.md.

pub use wgmesh_atomicfile as atomic;
pub mod cli;
pub mod config;
pub mod error;
pub mod install;
pub mod link;
pub mod mtu;
pub mod netns;
pub mod plugin;
pub mod protocol;
pub mod readiness;
pub mod result;
