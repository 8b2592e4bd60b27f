//! What the agent binary does before it runs: nothing here needs root or a network namespace.

use std::process::Command;

const AGENT: &str = env!("CARGO_BIN_EXE_wgmesh-node-agent");

#[test]
fn an_agent_that_cannot_start_removes_the_readiness_file_a_killed_one_left() {
    let dir = tempfile::tempdir().unwrap();
    let (key, ready) = (dir.path().join("private.key"), dir.path().join("ready"));
    std::fs::write(&key, "not a key\n").unwrap();
    std::fs::write(&ready, "4242\n").unwrap();
    let o = Command::new(AGENT)
        .args(["run", "--node-name", "n1", "--cluster-cidr", "10.244.0.0/16", "--engine", "attach"])
        .arg("--peer-dir")
        .arg(dir.path())
        .arg("--private-key")
        .arg(&key)
        .arg("--readiness-path")
        .arg(&ready)
        .output()
        .unwrap();
    assert!(!o.status.success(), "a corrupt key must stop the agent");
    assert!(String::from_utf8_lossy(&o.stderr).contains("private.key"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!ready.exists(), "the stale readiness file would let pods start on a node that is not ready");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "not a key\n", "the key file is left for a human to look at");
}
