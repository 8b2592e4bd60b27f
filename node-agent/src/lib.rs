//! wgmesh node agent: turns the mesh's desired state into a configured `wgmesh-tunnel`
//! (over UAPI), an interface, routes and fail-closed drops, and a readiness signal for the CNI
//! plugin. Pure functions (`plan`, `routes`, `mesh_input`) decide; thin modules do the I/O.

pub mod agent;
pub use wgmesh_atomicfile as atomic;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod engine;
pub mod guard;
pub mod http;
pub mod key;
pub mod mesh_input;
pub mod metrics;
pub mod netlink;
pub mod plan;
pub mod psk;
pub mod readiness;
pub mod resolve;
pub mod routes;
pub mod source_file;
pub mod source_kube;
pub mod uapi_client;
