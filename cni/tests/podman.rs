//! A real container through the full chain (podman CNI backend -> bridge -> host-local ->
//! wgmesh-cni), via scripts/podman-e2e.sh. Ignored by default because podman is not part of
//! the CI image; run it with `cargo test -p wgmesh-cni --test podman -- --ignored`.

use std::process::Command;

#[test]
#[ignore = "needs root, podman, runc and busybox-static (apt-get install podman runc busybox-static)"]
fn a_real_container_gets_the_mesh_mtu_only_once_the_agent_is_ready() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/podman-e2e.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_wgmesh-cni"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("PASS"), "{text}");
}
