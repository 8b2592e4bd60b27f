//! wgmesh-tunnel: a WireGuard engine. The modules below are the sans-IO protocol core: pure
//! state machines that take bytes and a clock and emit datagrams and packets.

pub mod allowed_ips;
pub mod cookie;
pub mod crypto;
pub mod device;
pub mod index;
pub mod ip;
pub mod keypair;
pub mod keys;
pub mod messages;
pub mod noise;
pub mod peer;
pub mod ratelimiter;
pub mod replay;
pub mod shell;
pub mod tai64n;
pub mod timers;
pub mod uapi;

pub use device::{Clock, Device, Drop, Outcome, Output};
pub use keys::{PresharedKey, PrivateKey, PublicKey};
