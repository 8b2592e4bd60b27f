//! The CNI network configuration (stdin from the runtime) on arbitrary bytes: every command's
//! parser returns a config or a CNI error with a code, and never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rscni_types::types::Cmd;

fuzz_target!(|data: &[u8]| {
    for cmd in [Cmd::Add, Cmd::Del, Cmd::Check, Cmd::Status, Cmd::Gc, Cmd::Version] {
        let _ = wgmesh_cni::config::parse(data, cmd);
    }
});
