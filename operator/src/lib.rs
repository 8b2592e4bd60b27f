//! wgmesh-operator: keeps a `WireGuardPeer` for every Node whose agent published a key,
//! validates every peer, and reports status and Events. See README.md.

pub mod cli;
pub mod controller;
pub mod crdgen;
pub mod execute;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod reconcile;
pub mod run;
pub mod shutdown;
pub mod status;
pub mod trim;
