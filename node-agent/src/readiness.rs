//! The readiness signal for wgmesh-cni (cni/README.md, "Readiness contract"): a file that
//! exists exactly while the engine is configured and the routes and drops are in place.

use std::io;
use std::path::{Path, PathBuf};

use crate::atomic;

pub struct Readiness {
    path: PathBuf,
    ready: Option<bool>,
}

impl Readiness {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Readiness {
            path: path.into(),
            ready: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates or removes the file. Checked every call, so a file someone deleted comes back.
    /// Returns true if the state changed.
    pub fn set(&mut self, ready: bool) -> io::Result<bool> {
        let exists = self.path.exists();
        if ready && !exists {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                atomic::create_dir_all(dir, 0o755)?;
            }
            atomic::write(
                &self.path,
                format!("{}\n", std::process::id()).as_bytes(),
                0o644,
            )?;
        } else if !ready && exists {
            match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let changed = self.ready != Some(ready);
        self.ready = Some(ready);
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_state_and_recreates_a_deleted_file() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("run/wgmesh/ready");
        let mut r = Readiness::new(&p);
        assert!(r.set(false).expect("set"));
        assert!(!p.exists());
        assert!(r.set(true).expect("set"));
        assert!(p.exists());
        std::fs::remove_file(&p).expect("rm");
        assert!(!r.set(true).expect("set"), "same state");
        assert!(p.exists(), "recreated");
        assert!(r.set(false).expect("set"));
        assert!(!p.exists());
    }
}
